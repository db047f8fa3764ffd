//! What each batch did, for logs, `GET /progress`, health, and metrics.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry::metrics::{Counter, Gauge, Histogram, MeterProvider};
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use serde::Serialize;

use crate::client::Identity;
use crate::memory::Budget;
// What the operator reads back (and the grace it gives a starting worker) is the contract's.
pub use weir_contract::progress::{
    stall_limit, startup_grace, BatchInfo, EventTimeInfo, PartitionWatermark, RangeInfo, ResumedAt,
    Retrying,
};

/// Batches kept for `GET /progress`.
pub const KEPT_BATCHES: usize = 100;

/// Milliseconds since the Unix epoch, by the wall clock (batch times, report times).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `ms` since the epoch as RFC 3339; empty when out of range.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_default()
}

/// What a stage's batches held against their memory budget: the bytes (keys and values as
/// read) and records taken into a batch, which the source never lets pass the budget (but
/// for a single record larger than it, read alone).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InFlight {
    pub budget: Budget,
    pub last_bytes: u64,
    pub last_records: u64,
    /// The most one batch held since the worker started (a batch read in parts holds one
    /// part at a time).
    pub peak_bytes: u64,
    pub peak_records: u64,
    /// Batches that ended before their planned offsets because the budget was spent; the
    /// next batches read on from there (the lag says how much waits).
    pub capped_batches: u64,
    /// Batches larger than the budget that were read and written in parts, a budget at a
    /// time, and the parts the last one took before its end.
    pub parted_batches: u64,
    pub last_parts: u64,
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
    /// When this worker process started: a report from before a restart is told apart by it.
    pub started_at: String,
    pub started_at_ms: i64,
    /// Where the first stage began reading each of its partitions; empty until it has.
    pub resumed_from: Vec<ResumedAt>,
    /// Set while the worker waits on the brokers (in any stage): what failed and since when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrying: Option<Retrying>,
    pub batches_completed: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub dead_lettered: u64,
    /// Most recent last.
    pub batches: Vec<BatchInfo>,
    /// The first stage's batches against their memory budget; absent before its first batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<InFlight>,
    /// The job's later stages (after each repartition step), with their own groups, offsets
    /// and batches; the fields above are the first stage's, which reads the job's input.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageSnapshot>,
}

/// A later stage's part of `GET /progress`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageSnapshot {
    /// The repartition step the stage reads after (the step's id).
    pub stage: String,
    pub group: String,
    pub batches_completed: u64,
    /// Records read from the repartition topic, partials included: with a combined shuffle
    /// (see the README) one partial per key and batch of each partition of the stage before.
    pub records_in: u64,
    /// How many of `records_in` were partials; absent when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub partials_in: u64,
    /// The input records of the stage before that `records_in` stand for (a plain record
    /// one, a partial the records it combined); absent when no partial was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub represented_in: Option<u64>,
    pub records_out: u64,
    pub dead_lettered: u64,
    /// Most recent last; the ranges are of the stage's repartition topic.
    pub batches: Vec<BatchInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<InFlight>,
}

#[derive(Default)]
struct State {
    batches: VecDeque<BatchInfo>,
    completed: u64,
    records_in: u64,
    partials_in: u64,
    represented_in: u64,
    records_out: u64,
    dead_lettered: u64,
    last_completed: Option<Instant>,
    last_lag: i64,
    /// Since when (and why) batches find the brokers silent; `None` while they answer. The
    /// wall-clock time (ms) goes in `/progress`.
    source_down: Option<(Instant, i64, String)>,
    /// A broker call being retried, from its first failure until it succeeds or gives up.
    retrying: Option<Retrying>,
    resumed_from: Vec<ResumedAt>,
    in_flight: Option<InFlight>,
}

/// Bucket bounds of the batch-time histograms, in seconds: from a 5 ms batch to a minute.
/// OpenTelemetry's default bounds (0, 5, 10 ... 10000) are meant for milliseconds; with
/// seconds, every batch fell in the first bucket and quantiles read about half of 5 s.
pub const BATCH_SECONDS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];

#[derive(Clone)]
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
    total_delay: Histogram<f64>,
    batches: Counter<u64>,
    source_up: Gauge<u64>,
    watermark_lag: Gauge<f64>,
    late_records: Counter<u64>,
}

/// Progress of this worker, shared between the engine and the HTTP server.
pub struct Progress {
    id: Identity,
    group: String,
    interval: Duration,
    started: Instant,
    started_ms: i64,
    state: Mutex<State>,
    registry: prometheus::Registry,
    instruments: Instruments,
    _provider: SdkMeterProvider,
    /// The `stage` attribute of every metric: "input", or the repartition step a later stage
    /// reads after. Step ids are few (a pipeline has at most 64 steps), so series stay few.
    stage: KeyValue,
    /// The later stages, reported with this one (only the first stage has any).
    stages: Mutex<Vec<Arc<Progress>>>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("worker", &self.id.ordinal)
            .field("group", &self.group)
            .field("stage", &self.stage.value)
            .finish_non_exhaustive()
    }
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
            // Not `_total`: Prometheus keeps that suffix for counters, and this is a gauge.
            lag_total: m
                .i64_gauge("weir_worker_offset_lag")
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
                .with_boundaries(BATCH_SECONDS.to_vec())
                .build(),
            scheduling: m
                .f64_histogram("weir_batch_scheduling_delay")
                .with_unit("s")
                .with_description("Time a batch waited for its turn")
                .with_boundaries(BATCH_SECONDS.to_vec())
                .build(),
            total_delay: m
                .f64_histogram("weir_batch_total_delay")
                .with_unit("s")
                .with_description(
                    "Scheduling delay plus processing time: from the batch's time to its commit",
                )
                .with_boundaries(BATCH_SECONDS.to_vec())
                .build(),
            batches: m
                .u64_counter("weir_batches")
                .with_description("Completed batches")
                .build(),
            source_up: m
                .u64_gauge("weir_source_up")
                .with_description(
                    "1 when the last batch got the input's watermarks from the brokers, 0 when they did not answer",
                )
                .build(),
            watermark_lag: m
                .f64_gauge("weir_watermark_lag")
                .with_unit("s")
                .with_description(
                    "Wall time minus the stage's event-time watermark after its last batch: how far windows lag behind now",
                )
                .build(),
            late_records: m
                .u64_counter("weir_late_records")
                .with_description(
                    "Records behind every event-time window they fall in (dropped, dead-lettered or late updates, per the window's late policy)",
                )
                .build(),
        };
        Self {
            id,
            group,
            interval,
            started: Instant::now(),
            started_ms: now_ms(),
            state: Mutex::new(State::default()),
            registry,
            instruments,
            _provider: provider,
            stage: KeyValue::new("stage", "input"),
            stages: Mutex::new(Vec::new()),
        }
    }

    /// The progress of the job's later stage `stage` (its repartition step's id) with consumer
    /// group `group`: its batches appear under this one's `/progress` (`stages`), its metrics
    /// in the same registry with `stage` set, and its stalls in this one's health.
    pub fn stage(&self, stage: &str, group: String) -> Arc<Progress> {
        let p = Arc::new(Progress {
            id: self.id.clone(),
            group,
            interval: self.interval,
            started: Instant::now(),
            started_ms: now_ms(),
            state: Mutex::new(State::default()),
            registry: self.registry.clone(),
            instruments: self.instruments.clone(),
            _provider: self._provider.clone(),
            stage: KeyValue::new("stage", stage.to_string()),
            stages: Mutex::new(Vec::new()),
        });
        self.stages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(p.clone());
        p
    }

    fn later_stages(&self) -> Vec<Arc<Progress>> {
        self.stages
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn identity(&self) -> &Identity {
        &self.id
    }

    /// Records a completed batch.
    pub fn record(&self, b: BatchInfo) {
        // Labels are the stage and the partition only: one worker serves one job, and the
        // scrape adds the pod's identity, so series stay few.
        let i = &self.instruments;
        let stage = std::slice::from_ref(&self.stage);
        // An unknown lag is left out of the series (absent, not 0), so it cannot read as
        // caught up; weir_source_up says why.
        for r in &b.ranges {
            if let Some(lag) = r.lag {
                i.lag.record(
                    lag,
                    &[
                        self.stage.clone(),
                        KeyValue::new("topic", r.topic.clone()),
                        KeyValue::new("partition", i64::from(r.partition)),
                    ],
                );
            }
        }
        if let Some(lag) = b.lag {
            i.lag_total.record(lag, stage);
        }
        i.source_up
            .record(u64::from(b.source_error.is_none()), stage);
        if let Some(et) = &b.event_time {
            i.late_records.add(et.late_records, stage);
            // Absent until the watermark is known, never a made-up lag.
            if let Some(w) = et.watermark_ms {
                i.watermark_lag
                    .record((now_ms() - w) as f64 / 1000.0, stage);
            }
        }
        i.batch_lag.record(b.pending_batches, stage);
        if b.processing_ms > 0 {
            i.rate
                .record(b.records_in as f64 * 1000.0 / b.processing_ms as f64, stage);
        }
        i.records_in.add(b.records_in, stage);
        i.records_out.add(b.records_out, stage);
        i.dead_letters.add(b.dead_lettered, stage);
        i.processing.record(b.processing_ms as f64 / 1000.0, stage);
        i.scheduling
            .record(b.scheduling_delay_ms as f64 / 1000.0, stage);
        i.total_delay
            .record(b.total_delay_ms as f64 / 1000.0, stage);
        i.batches.add(1, stage);
        let Ok(mut s) = self.state.lock() else { return };
        s.completed += 1;
        s.records_in += b.records_in;
        s.partials_in += b.partials_in;
        s.represented_in += b.represented_in.unwrap_or(b.records_in);
        s.records_out += b.records_out;
        s.dead_lettered += b.dead_lettered;
        s.last_completed = Some(Instant::now());
        match (&b.source_error, &s.source_down) {
            (None, _) => s.source_down = None,
            (Some(why), None) => s.source_down = Some((Instant::now(), now_ms(), why.clone())),
            (Some(why), Some((since, ms, _))) => s.source_down = Some((*since, *ms, why.clone())),
        }
        if let Some(lag) = b.lag {
            s.last_lag = lag;
        }
        if s.batches.len() == KEPT_BATCHES {
            s.batches.pop_front();
        }
        s.batches.push_back(b);
    }

    /// Records what a batch held (`bytes`, `records`) against its `budget`; `capped` when
    /// the budget ended it before its planned offsets.
    pub fn held(&self, budget: Budget, bytes: u64, records: u64, capped: bool, parts: u64) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let f = s.in_flight.get_or_insert_with(InFlight::default);
        f.budget = budget;
        f.last_bytes = bytes;
        f.last_records = records;
        f.peak_bytes = f.peak_bytes.max(bytes);
        f.peak_records = f.peak_records.max(records);
        f.capped_batches += u64::from(capped);
        f.parted_batches += u64::from(parts > 0);
        f.last_parts = parts;
    }

    pub fn snapshot(&self, last: usize) -> Snapshot {
        let later = self.later_stages();
        let stages = later.iter().map(|p| p.stage_snapshot(last)).collect();
        // The first stage's wait, else a later stage's: the worker waits either way.
        let retrying = std::iter::once(self)
            .chain(later.iter().map(AsRef::as_ref))
            .find_map(Progress::waiting_on);
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
            started_at: rfc3339(self.started_ms),
            started_at_ms: self.started_ms,
            resumed_from: s.resumed_from.clone(),
            retrying,
            batches_completed: s.completed,
            records_in: s.records_in,
            records_out: s.records_out,
            dead_lettered: s.dead_lettered,
            batches: s.batches.iter().rev().take(last).rev().cloned().collect(),
            in_flight: s.in_flight.clone(),
            stages,
        }
    }

    /// What this stage waits on: a call being retried, else batches finding the brokers silent.
    fn waiting_on(&self) -> Option<Retrying> {
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.retrying.clone().or_else(|| {
            s.source_down.as_ref().map(|(_, ms, why)| Retrying {
                reason: why.clone(),
                since: rfc3339(*ms),
                since_ms: *ms,
                attempt: None,
                max_retries: None,
            })
        })
    }

    /// A broker call failed and will be tried again (attempt `attempt` of `1 + max_retries`):
    /// `/progress` says so until [`Progress::retried`]. An ongoing wait keeps its start.
    pub fn retrying(&self, reason: String, attempt: u32, max_retries: u32) {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let since_ms = s.retrying.as_ref().map_or_else(now_ms, |r| r.since_ms);
        s.retrying = Some(Retrying {
            reason,
            since: rfc3339(since_ms),
            since_ms,
            attempt: Some(attempt),
            max_retries: Some(max_retries),
        });
    }

    /// The call being retried succeeded, or gave up (the error then ends the worker).
    pub fn retried(&self) {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retrying = None;
    }

    /// Where the first stage began reading, once it has resumed.
    pub fn resumed(&self, at: Vec<ResumedAt>) {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .resumed_from = at;
    }

    fn stage_snapshot(&self, last: usize) -> StageSnapshot {
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        StageSnapshot {
            stage: self.stage.value.to_string(),
            group: self.group.clone(),
            batches_completed: s.completed,
            records_in: s.records_in,
            partials_in: s.partials_in,
            represented_in: (s.partials_in > 0).then_some(s.represented_in),
            records_out: s.records_out,
            dead_lettered: s.dead_lettered,
            batches: s.batches.iter().rev().take(last).rev().cloned().collect(),
            in_flight: s.in_flight.clone(),
        }
    }

    /// Readiness (`/healthz`): live, and the brokers answer, in every stage of the job. Fails,
    /// with the client's reason, once batches have found the brokers silent for three
    /// intervals (at least 5 s): a dead broker must not look like a caught-up job.
    pub fn health(&self) -> Result<(), String> {
        self.in_every_stage(Self::health_at)
    }

    /// `check` of this stage and then of each later one, naming the stage that fails.
    fn in_every_stage(
        &self,
        check: fn(&Progress, Instant) -> Result<(), String>,
    ) -> Result<(), String> {
        let now = Instant::now();
        check(self, now)?;
        for p in self.later_stages() {
            check(&p, now).map_err(|e| format!("stage {}: {e}", p.stage.value))?;
        }
        Ok(())
    }

    fn health_at(&self, now: Instant) -> Result<(), String> {
        self.liveness_at(now)?;
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(r) = &s.retrying {
            return Err(format!(
                "retrying the Kafka brokers since {} (attempt {} of {}): {}",
                r.since,
                r.attempt.unwrap_or(0),
                r.max_retries.map_or(0, |m| m + 1),
                r.reason
            ));
        }
        match &s.source_down {
            Some((since, _, why))
                if now.saturating_duration_since(*since)
                    >= (self.interval * 3).max(Duration::from_secs(5)) =>
            {
                Err(format!(
                    "the Kafka brokers have not answered for {:?}: {why}",
                    now.saturating_duration_since(*since)
                ))
            }
            _ => Ok(()),
        }
    }

    /// Liveness (`/livez`): unhealthy when input is waiting but no batch completed for
    /// several intervals (or none at all within the start-up grace period). A batch that
    /// found the brokers silent still counts: restarting the worker would not bring them back.
    pub fn liveness(&self) -> Result<(), String> {
        self.in_every_stage(Self::liveness_at)
    }

    fn liveness_at(&self, now: Instant) -> Result<(), String> {
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let limit = stall_limit(self.interval);
        let since = |t: Instant| now.saturating_duration_since(t);
        match s.last_completed {
            // A worker retrying the brokers is not hung: its retries are bounded, and it
            // exits with the broker's error (its termination message) when they are spent.
            None if s.retrying.is_none() && since(self.started) > startup_grace(self.interval) => {
                Err(format!(
                    "no batch completed in {:?} since start",
                    since(self.started)
                ))
            }
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

/// The value of the first sample of `name` in a Prometheus text exposition (`/metrics`), for
/// the checks and tools that read it.
pub fn sample_value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .and_then(|l| l.rsplit(' ').next())
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
            partials_in: 0,
            represented_in: None,
            records_out: 1,
            dead_lettered: 0,
            scheduling_delay_ms: 0,
            processing_ms: 1,
            total_delay_ms: 1,
            pending_batches: 0,
            lag: Some(lag),
            rate_limit: None,
            event_time: None,
            source_error: None,
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
    fn a_later_stage_reports_its_batches_lag_and_metrics_beside_the_first() {
        let p = progress();
        let shuffle = p.stage("counts", "g-counts".into());
        let mut b = batch(7);
        b.ranges.push(RangeInfo {
            topic: "j-counts-repartition".into(),
            partition: 3,
            from: 0,
            until: 5,
            high_watermark: Some(12),
            lag: Some(7),
        });
        shuffle.record(b);
        p.record(batch(0));
        let json = serde_json::to_value(p.snapshot(10)).expect("json");
        assert_eq!(json["batchesCompleted"], 1);
        let stage = &json["stages"][0];
        assert_eq!(stage["stage"], "counts");
        assert_eq!(stage["group"], "g-counts");
        assert_eq!(stage["batchesCompleted"], 1);
        assert_eq!(stage["batches"][0]["lag"], 7);
        assert_eq!(
            stage["batches"][0]["ranges"][0]["topic"],
            "j-counts-repartition"
        );
        let text = p.metrics_text();
        let lag = text
            .lines()
            .find(|l| l.starts_with("weir_offset_lag{") && l.contains("stage=\"counts\""))
            .unwrap_or_else(|| panic!("no lag of stage counts in:\n{text}"));
        assert!(
            lag.contains("partition=\"3\"") && lag.ends_with(" 7"),
            "{lag}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with("weir_batches") && l.contains("stage=\"input\"")),
            "{text}"
        );
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

    #[test]
    fn silent_brokers_make_the_worker_unready_but_not_dead_and_lag_unknown() {
        let p = progress();
        p.record(batch(7));
        let mut down = batch(0);
        down.lag = None;
        down.records_in = 0;
        down.source_error = Some(
            "Kafka listing offsets failed: timed out; the client reports: Connection refused"
                .into(),
        );
        p.record(down.clone());
        let at = Instant::now();
        assert!(
            p.health_at(at + Duration::from_secs(1)).is_ok(),
            "a blip is not a failure"
        );
        let e = p.health_at(at + Duration::from_secs(6)).unwrap_err();
        assert!(
            e.contains("have not answered") && e.contains("Connection refused"),
            "{e}"
        );
        assert!(p.liveness_at(at + Duration::from_secs(6)).is_ok());
        let text = p.metrics_text();
        assert_eq!(sample_value(&text, "weir_source_up"), Some("0"), "{text}");
        assert_eq!(
            sample_value(&text, "weir_worker_offset_lag"),
            Some("7"),
            "the last known lag, not 0: {text}"
        );
        let json = serde_json::to_value(p.snapshot(1)).expect("json");
        assert_eq!(json["batches"][0]["lag"], serde_json::Value::Null);
        // The brokers answer again.
        p.record(batch(0));
        assert!(p
            .health_at(Instant::now() + Duration::from_secs(60))
            .is_ok());
        assert_eq!(sample_value(&p.metrics_text(), "weir_source_up"), Some("1"));
        let json = serde_json::to_value(p.snapshot(1)).expect("json");
        assert!(json.get("retrying").is_none(), "{json}");
    }

    #[test]
    fn a_worker_retrying_the_brokers_says_so_and_is_unready_but_live() {
        let p = progress();
        let before = now_ms();
        p.retrying("reading topic metadata failed: refused".into(), 1, 5);
        p.retrying("reading topic metadata failed: refused again".into(), 2, 5);
        let json = serde_json::to_value(p.snapshot(1)).expect("json");
        let r = &json["retrying"];
        assert_eq!(r["reason"], "reading topic metadata failed: refused again");
        assert_eq!(
            (r["attempt"].as_u64(), r["maxRetries"].as_u64()),
            (Some(2), Some(5))
        );
        let since = r["sinceMs"].as_i64().expect("sinceMs");
        assert!(
            since >= before && since <= now_ms(),
            "the first failure's time: {r}"
        );
        let e = p.health_at(Instant::now()).unwrap_err();
        assert!(
            e.contains("attempt 2 of 6") && e.contains("refused again"),
            "{e}"
        );
        // Past the start-up grace with no batch: still live, because it is retrying.
        assert!(p
            .liveness_at(Instant::now() + Duration::from_secs(600))
            .is_ok());
        p.retried();
        let json = serde_json::to_value(p.snapshot(1)).expect("json");
        assert!(json.get("retrying").is_none(), "{json}");
        assert!(p
            .liveness_at(Instant::now() + Duration::from_secs(600))
            .is_err());
    }

    #[test]
    fn a_later_stage_waiting_on_the_brokers_shows_in_the_workers_report() {
        let p = progress();
        let shuffle = p.stage("counts", "g-counts".into());
        let mut down = batch(0);
        down.source_error = Some("listing offsets timed out".into());
        shuffle.record(down);
        let json = serde_json::to_value(p.snapshot(1)).expect("json");
        assert_eq!(json["retrying"]["reason"], "listing offsets timed out");
        assert!(json["retrying"].get("attempt").is_none(), "{json}");
    }

    #[test]
    fn the_report_says_when_the_worker_started_and_where_it_resumed() {
        let before = now_ms();
        let p = progress();
        let json = serde_json::to_value(p.snapshot(1)).expect("json");
        assert_eq!(json["resumedFrom"], serde_json::json!([]));
        let started = json["startedAtMs"].as_i64().expect("startedAtMs");
        assert!(started >= before && started <= now_ms());
        assert_eq!(json["startedAt"], rfc3339(started));
        p.resumed(vec![ResumedAt {
            topic: "in".into(),
            partition: 3,
            offset: 9600,
        }]);
        let json = serde_json::to_value(p.snapshot(1)).expect("json");
        assert_eq!(
            json["resumedFrom"],
            serde_json::json!([{"topic": "in", "partition": 3, "offset": 9600}])
        );
    }
}

#[cfg(test)]
mod metric_tests {
    use super::*;

    /// Prometheus' histogram_quantile over one series' cumulative buckets (linear within a
    /// bucket), as the dashboard's panels compute it.
    fn quantile(text: &str, name: &str, q: f64) -> f64 {
        let mut buckets: Vec<(f64, f64)> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
            .filter_map(|l| {
                let le = l.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
                Some((le, count))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last().map_or(0.0, |b| b.1);
        let rank = q * total;
        let mut prev = (0.0, 0.0);
        for (le, count) in buckets {
            if count >= rank {
                return prev.0 + (le - prev.0) * (rank - prev.1) / (count - prev.1);
            }
            prev = (le, count);
        }
        f64::NAN
    }

    #[test]
    fn batch_time_quantiles_read_the_magnitudes_of_the_batches() {
        let id = Identity {
            namespace: "n".into(),
            job: "j".into(),
            ordinal: 0,
            workers: 1,
        };
        let p = Progress::new(id, "g".into(), Duration::from_millis(100));
        for _ in 0..100 {
            p.record(BatchInfo {
                batch: 0,
                batch_time: String::new(),
                batch_time_ms: 0,
                ranges: Vec::new(),
                records_in: 1,
                partials_in: 0,
                represented_in: None,
                records_out: 1,
                dead_lettered: 0,
                scheduling_delay_ms: 1,
                processing_ms: 4,
                total_delay_ms: 5,
                pending_batches: 0,
                lag: Some(0),
                rate_limit: None,
                event_time: None,
                source_error: None,
            });
        }
        let text = p.metrics_text();
        // 4 ms batches: with millisecond bounds on seconds these read 2.5 s and 4.95 s.
        let p50 = quantile(&text, "weir_batch_processing_seconds", 0.5);
        let p99 = quantile(&text, "weir_batch_processing_seconds", 0.99);
        assert!((0.0..=0.005).contains(&p50), "p50 {p50}\n{text}");
        assert!((0.0..=0.005).contains(&p99), "p99 {p99}");
        let total = quantile(&text, "weir_batch_total_delay_seconds", 0.99);
        assert!((0.0025..=0.005).contains(&total), "total delay p99 {total}");
        // A gauge does not take a counter's suffix.
        assert!(text.contains("\nweir_worker_offset_lag{"), "{text}");
        assert!(!text.contains("weir_offset_lag_total"), "{text}");
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
