//! What each batch did, for logs, `GET /progress`, health, and metrics.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use opentelemetry::metrics::{Counter, Gauge, Histogram, MeterProvider};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use serde::Serialize;

use crate::client::Identity;

/// Batches kept for `GET /progress`.
pub const KEPT_BATCHES: usize = 100;

/// One partition's part of a batch.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RangeInfo {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub until: i64,
    pub high_watermark: i64,
    /// Records waiting after this batch: high watermark - until.
    pub lag: i64,
}

/// Spark's BatchInfo, for one worker's batch.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BatchInfo {
    /// Sequence number since the worker started.
    pub batch: u64,
    pub batch_time: String,
    pub batch_time_ms: i64,
    pub ranges: Vec<RangeInfo>,
    pub records_in: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
    pub scheduling_delay_ms: u64,
    pub processing_ms: u64,
    pub total_delay_ms: u64,
    /// Batches whose time has come but that have not run yet: the batch lag.
    pub pending_batches: u64,
    pub lag: i64,
    /// Records/s the backpressure estimator allowed, when it limited the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
}

/// The body of `GET /progress`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub job: String,
    pub namespace: String,
    pub worker: u32,
    pub workers: u32,
    pub group: String,
    pub batches_completed: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
    /// Most recent last.
    pub batches: Vec<BatchInfo>,
}

struct State {
    batches: VecDeque<BatchInfo>,
    completed: u64,
    records_in: u64,
    records_out: u64,
    dead_lettered: u64,
    last_completed: Option<Instant>,
    last_lag: i64,
}

struct Instruments {
    lag: Gauge<i64>,
    lag_total: Gauge<i64>,
    batch_lag: Gauge<u64>,
    rate: Gauge<f64>,
    records_in: Counter<u64>,
    records_out: Counter<u64>,
    dead_letters: Counter<u64>,
    processing: Histogram<f64>,
    scheduling: Histogram<f64>,
    batches: Counter<u64>,
}

/// Progress of this worker, shared between the engine and the HTTP server.
pub struct Progress {
    id: Identity,
    group: String,
    interval: Duration,
    started: Instant,
    state: Mutex<State>,
    registry: prometheus::Registry,
    instruments: Instruments,
    _provider: SdkMeterProvider,
}

impl Progress {
    pub fn new(id: Identity, group: String, interval: Duration) -> Self {
        let registry = prometheus::Registry::new();
        let provider = match opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .build()
        {
            Ok(exporter) => SdkMeterProvider::builder().with_reader(exporter).build(),
            // Without the exporter, metrics are recorded nowhere; the worker itself still runs.
            Err(_) => SdkMeterProvider::builder().build(),
        };
        let m = provider.meter("weir-worker");
        let instruments = Instruments {
            lag: m
                .i64_gauge("weir_offset_lag")
                .with_description(
                    "Records waiting per partition: high watermark - last batch's until offset",
                )
                .build(),
            lag_total: m
                .i64_gauge("weir_offset_lag_total")
                .with_description("Records waiting across this worker's partitions")
                .build(),
            batch_lag: m
                .u64_gauge("weir_batch_lag")
                .with_description("Batches whose time has come but have not run")
                .build(),
            rate: m
                .f64_gauge("weir_records_per_second")
                .with_description("Input records per second of the last batch's processing")
                .build(),
            records_in: m
                .u64_counter("weir_records_in")
                .with_description("Records read")
                .build(),
            records_out: m
                .u64_counter("weir_records_out")
                .with_description("Records written to the sink")
                .build(),
            dead_letters: m
                .u64_counter("weir_dead_letters")
                .with_description("Records that could not be decoded or processed")
                .build(),
            processing: m
                .f64_histogram("weir_batch_processing")
                .with_unit("s")
                .with_description("Batch processing time")
                .build(),
            scheduling: m
                .f64_histogram("weir_batch_scheduling_delay")
                .with_unit("s")
                .with_description("Time a batch waited for its turn")
                .build(),
            batches: m
                .u64_counter("weir_batches")
                .with_description("Completed batches")
                .build(),
        };
        Self {
            id,
            group,
            interval,
            started: Instant::now(),
            state: Mutex::new(State {
                batches: VecDeque::with_capacity(KEPT_BATCHES),
                completed: 0,
                records_in: 0,
                records_out: 0,
                dead_lettered: 0,
                last_completed: None,
                last_lag: 0,
            }),
            registry,
            instruments,
            _provider: provider,
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.id
    }

    /// Records a completed batch.
    pub fn record(&self, b: BatchInfo) {
        // Labels are the partition only: one worker serves one job, and the scrape adds the
        // pod's identity, so series stay few.
        let i = &self.instruments;
        for r in &b.ranges {
            i.lag.record(
                r.lag,
                &[
                    KeyValue::new("topic", r.topic.clone()),
                    KeyValue::new("partition", i64::from(r.partition)),
                ],
            );
        }
        i.lag_total.record(b.lag, &[]);
        i.batch_lag.record(b.pending_batches, &[]);
        if b.processing_ms > 0 {
            i.rate
                .record(b.records_in as f64 * 1000.0 / b.processing_ms as f64, &[]);
        }
        i.records_in.add(b.records_in, &[]);
        i.records_out.add(b.records_out, &[]);
        i.dead_letters.add(b.dead_lettered, &[]);
        i.processing.record(b.processing_ms as f64 / 1000.0, &[]);
        i.scheduling
            .record(b.scheduling_delay_ms as f64 / 1000.0, &[]);
        i.batches.add(1, &[]);
        let Ok(mut s) = self.state.lock() else { return };
        s.completed += 1;
        s.records_in += b.records_in;
        s.records_out += b.records_out;
        s.dead_lettered += b.dead_lettered;
        s.last_completed = Some(Instant::now());
        s.last_lag = b.lag;
        if s.batches.len() == KEPT_BATCHES {
            s.batches.pop_front();
        }
        s.batches.push_back(b);
    }

    pub fn snapshot(&self, last: usize) -> Snapshot {
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Snapshot {
            job: self.id.job.clone(),
            namespace: self.id.namespace.clone(),
            worker: self.id.ordinal,
            workers: self.id.workers,
            group: self.group.clone(),
            batches_completed: s.completed,
            records_in: s.records_in,
            records_out: s.records_out,
            dead_lettered: s.dead_lettered,
            batches: s.batches.iter().rev().take(last).rev().cloned().collect(),
        }
    }

    /// Unhealthy when input is waiting but no batch completed for several intervals (or
    /// none at all within the start-up grace period).
    pub fn health(&self) -> Result<(), String> {
        self.health_at(Instant::now())
    }

    fn health_at(&self, now: Instant) -> Result<(), String> {
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let limit = (self.interval * 5).max(Duration::from_secs(30));
        let since = |t: Instant| now.saturating_duration_since(t);
        match s.last_completed {
            None if since(self.started) > limit * 4 => Err(format!(
                "no batch completed in {:?} since start",
                since(self.started)
            )),
            Some(t) if since(t) > limit && s.last_lag > 0 => Err(format!(
                "no batch completed for {:?} while {} records are waiting",
                since(t),
                s.last_lag
            )),
            _ => Ok(()),
        }
    }

    /// Prometheus text exposition of the worker's metrics.
    pub fn metrics_text(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(lag: i64) -> BatchInfo {
        BatchInfo {
            batch: 0,
            batch_time: String::new(),
            batch_time_ms: 0,
            ranges: Vec::new(),
            records_in: 1,
            records_out: 1,
            dead_lettered: 0,
            scheduling_delay_ms: 0,
            processing_ms: 1,
            total_delay_ms: 1,
            pending_batches: 0,
            lag,
            rate_limit: None,
        }
    }

    fn progress() -> Progress {
        let id = Identity {
            namespace: "n".into(),
            job: "j".into(),
            ordinal: 0,
            workers: 1,
        };
        Progress::new(id, "g".into(), Duration::from_secs(1))
    }

    #[test]
    fn unhealthy_only_when_batches_stop_while_records_wait() {
        let p = progress();
        let now = Instant::now();
        // Start-up gets a grace period (four times the stall limit of 30 s).
        assert!(p.health_at(now + Duration::from_secs(100)).is_ok());
        assert!(p
            .health_at(now + Duration::from_secs(121))
            .unwrap_err()
            .contains("since start"));
        p.record(batch(0));
        // Caught up: a quiet job stays healthy however long it waits.
        assert!(p
            .health_at(Instant::now() + Duration::from_secs(3600))
            .is_ok());
        p.record(batch(500));
        let at = Instant::now();
        assert!(p.health_at(at + Duration::from_secs(20)).is_ok());
        let e = p.health_at(at + Duration::from_secs(31)).unwrap_err();
        assert!(e.contains("500 records are waiting"), "{e}");
    }
}
