//! Workers' `GET /progress`: fetching each worker's recent batches, and (PURE) folding them
//! into the job's batch lag and last batch.
//!
//! The wire types mirror the fields of `weir_worker::progress::Snapshot` the operator needs;
//! the worker's type only serializes, and a contract test keeps the two in step. A worker that
//! does not answer is reported by ordinal, never an error of the reconcile.

use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::crd::LastBatchStatus;

/// Batches asked of each worker; the latest is what status needs, a few more cover a worker
/// that ran ahead of the others.
pub const LAST_BATCHES: usize = 3;
/// A `/progress` answer larger than this is refused (a worker keeps few batches).
const MAX_BODY: u64 = 4 << 20;

/// The part of a worker's `/progress` answer the operator reads.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSnapshot {
    pub worker: u32,
    /// When the worker process started (ms since the epoch); absent from older workers.
    #[serde(default)]
    pub started_at_ms: Option<i64>,
    /// Where the worker began reading its partitions; empty until it has.
    #[serde(default)]
    pub resumed_from: Vec<WorkerResumed>,
    /// Set while the worker waits on the brokers, with why.
    #[serde(default)]
    pub retrying: Option<WorkerRetrying>,
    /// Most recent last.
    #[serde(default)]
    pub batches: Vec<WorkerBatch>,
    /// The job's later stages (after each repartition step) in this worker, each with its
    /// own batches; absent from workers of jobs with one stage.
    #[serde(default)]
    pub stages: Vec<WorkerStage>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerResumed {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerRetrying {
    pub reason: String,
    pub since_ms: i64,
    #[serde(default)]
    pub attempt: Option<u32>,
    #[serde(default)]
    pub max_retries: Option<u32>,
}

impl WorkerRetrying {
    /// The worker's own account, for a condition and an Event.
    pub fn describe(&self, worker: u32) -> String {
        let attempt = match (self.attempt, self.max_retries) {
            (Some(a), Some(m)) => format!(", attempt {a} of {}", m.saturating_add(1)),
            _ => String::new(),
        };
        let since = k8s_openapi::jiff::Timestamp::from_millisecond(self.since_ms)
            .map_or_else(|_| "a while".to_string(), |t| t.to_string());
        format!(
            "worker {worker} is retrying the Kafka brokers (since {since}{attempt}): {}",
            self.reason
        )
    }
}

/// What one worker said of itself, kept for the restart and stall decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerReport {
    pub worker: u32,
    /// It has run batches since it started (it is past connecting and restoring).
    pub ran_batches: bool,
    pub started_at_ms: Option<i64>,
    pub resumed_from: Vec<WorkerResumed>,
    pub retrying: Option<WorkerRetrying>,
}

/// A later stage's part of a worker's `/progress`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStage {
    pub stage: String,
    /// Most recent last.
    #[serde(default)]
    pub batches: Vec<WorkerBatch>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerBatch {
    pub batch_time: String,
    pub batch_time_ms: i64,
    pub records_in: u64,
    pub processing_ms: u64,
    pub scheduling_delay_ms: u64,
    pub pending_batches: u64,
    /// Where event time stands after the batch, when the job has a watermark.
    #[serde(default)]
    pub event_time: Option<WorkerEventTime>,
}

/// The part of a batch's `eventTime` the operator reads.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerEventTime {
    /// The stage's watermark (ms since the epoch); `null` until every partition has one.
    #[serde(default)]
    pub watermark_ms: Option<i64>,
}

/// The least of the workers' watermarks, each from the latest batch of its last stage that
/// reports event time; `None` when no worker reports one, or one does not know it yet.
fn job_watermark(snapshots: &[&WorkerSnapshot]) -> Option<i64> {
    let mut least: Option<Option<i64>> = None;
    for s in snapshots {
        let latest = s
            .stages
            .iter()
            .rev()
            .filter_map(|st| st.batches.last())
            .chain(s.batches.last())
            .find_map(|b| b.event_time.as_ref());
        if let Some(et) = latest {
            least = Some(match least {
                None => et.watermark_ms,
                Some(w) => w.zip(et.watermark_ms).map(|(a, b)| a.min(b)),
            });
        }
    }
    least.flatten()
}

#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    #[error("cannot reach the worker: {0}")]
    Io(#[from] std::io::Error),
    #[error("the worker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the worker answered {0:?}")]
    Status(String),
    #[error("the worker's answer is not an HTTP response or too large")]
    Malformed,
    #[error("the worker's progress is not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// `GET /progress?last=N` from `addr` (host:port), within `timeout`. HTTP/1.0, so the worker
/// answers with a plain body and closes: no chunked decoding and no HTTP client needed.
///
/// # Errors
/// When the worker cannot be reached, is slow, or answers something else than its progress.
pub async fn fetch(addr: &str, timeout: Duration) -> Result<WorkerSnapshot, ProgressError> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "GET /progress?last={LAST_BATCHES} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        s.take(MAX_BODY + 1).read_to_end(&mut answer).await?;
        Ok::<_, ProgressError>(answer)
    };
    let answer = tokio::time::timeout(timeout, get)
        .await
        .map_err(|_| ProgressError::Timeout(timeout))??;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .filter(|_| answer.len() as u64 <= MAX_BODY)
        .ok_or(ProgressError::Malformed)?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(ProgressError::Status(status.chars().take(80).collect()));
    }
    Ok(serde_json::from_slice(&answer[split + 4..])?)
}

/// What status shows of the workers' progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgressSummary {
    /// Pending batches summed over the workers that answered; `None`: no batch seen yet.
    pub batch_lag: Option<u64>,
    pub last_batch: Option<LastBatchStatus>,
    /// The job's event-time watermark: the least of the workers' (each its last stage's, the
    /// one whose windows close by it); `None` without event time, or while one is unknown.
    pub watermark_ms: Option<i64>,
    /// Ordinals that did not answer, ascending.
    pub unreachable: Vec<u32>,
    /// The workers that answered, by ordinal.
    pub reports: Vec<WorkerReport>,
}

impl ProgressSummary {
    pub fn report(&self, worker: u32) -> Option<&WorkerReport> {
        self.reports.iter().find(|r| r.worker == worker)
    }
}

/// PURE: the job's view of its workers' answers. Batches are planned on the same wall-clock
/// ticks, so the job's last batch is the workers' batches of the latest batch time: records
/// add up, and the slowest worker's times are the batch's times.
pub fn fold<E>(answers: &[(u32, Result<WorkerSnapshot, E>)]) -> ProgressSummary {
    let mut unreachable: Vec<u32> = answers
        .iter()
        .filter(|(_, a)| a.is_err())
        .map(|(i, _)| *i)
        .collect();
    unreachable.sort_unstable();
    let snapshots: Vec<&WorkerSnapshot> = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .collect();
    let latest: Vec<&WorkerBatch> = snapshots.iter().filter_map(|s| s.batches.last()).collect();
    // Every stage's queue is the job's: a shuffle stage that falls behind delays the results
    // as much as the first stage would.
    let stage_pending: u64 = snapshots
        .iter()
        .flat_map(|s| &s.stages)
        .filter_map(|s| s.batches.last())
        .map(|b| b.pending_batches)
        .sum();
    let batch_lag = (!latest.is_empty())
        .then(|| latest.iter().map(|b| b.pending_batches).sum::<u64>() + stage_pending);
    let last_batch = latest.iter().max_by_key(|b| b.batch_time_ms).map(|newest| {
        let same: Vec<&WorkerBatch> = snapshots
            .iter()
            .flat_map(|s| {
                s.batches
                    .iter()
                    .filter(|b| b.batch_time_ms == newest.batch_time_ms)
            })
            .collect();
        LastBatchStatus {
            time: newest.batch_time.clone(),
            records: same.iter().map(|b| b.records_in).sum(),
            processing_millis: same.iter().map(|b| b.processing_ms).max().unwrap_or(0),
            scheduling_delay_millis: same
                .iter()
                .map(|b| b.scheduling_delay_ms)
                .max()
                .unwrap_or(0),
        }
    });
    let watermark_ms = job_watermark(&snapshots);
    let mut reports: Vec<WorkerReport> = answers
        .iter()
        .filter_map(|(i, a)| a.as_ref().ok().map(|s| (*i, s)))
        .map(|(worker, s)| WorkerReport {
            worker,
            ran_batches: !s.batches.is_empty(),
            started_at_ms: s.started_at_ms,
            resumed_from: s.resumed_from.clone(),
            retrying: s.retrying.clone(),
        })
        .collect();
    reports.sort_by_key(|r| r.worker);
    ProgressSummary {
        batch_lag,
        last_batch,
        watermark_ms,
        unreachable,
        reports,
    }
}
