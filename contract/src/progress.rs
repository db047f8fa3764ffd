//! The parts of a worker's `GET /progress` the operator reads back: a batch and its ranges,
//! where the worker resumed, what it retries; and how long a starting worker may take before
//! either side calls it stalled. The worker's recorder (and the whole document) is the
//! worker's `progress`.

use std::time::Duration;

use serde::Serialize;

/// One partition's part of a batch.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RangeInfo {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub until: i64,
    /// `null` when the brokers gave no watermarks for the batch.
    pub high_watermark: Option<i64>,
    /// Records waiting after this batch: high watermark - until; `null` when unknown.
    pub lag: Option<i64>,
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
    /// Records read, partials included (a combined shuffle's: one per key and batch of each
    /// partition of the stage before).
    pub records_in: u64,
    /// How many of `records_in` were partials; absent when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub partials_in: u64,
    /// The input records of the stage before that `records_in` stand for: a plain record
    /// counts one, a partial the records it combined; absent when no partial was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub represented_in: Option<u64>,
    pub records_out: u64,
    pub dead_lettered: u64,
    pub scheduling_delay_ms: u64,
    pub processing_ms: u64,
    pub total_delay_ms: u64,
    /// Batches whose time has come but that have not run yet: the batch lag.
    pub pending_batches: u64,
    /// Records waiting across the worker's partitions; `null` when unknown (the brokers did
    /// not answer), never a made-up 0.
    pub lag: Option<i64>,
    /// Why the batch read nothing: the brokers did not answer for its watermarks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_error: Option<String>,
    /// Records/s the backpressure estimator allowed, when it limited the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<f64>,
    /// Event time, when the job has a watermark: where it stands after this batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_time: Option<EventTimeInfo>,
}

/// A stage's event time after a batch: its watermark, each partition's, and the records that
/// came behind their windows.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EventTimeInfo {
    /// The least watermark of the partitions that are not idle (RFC 3339); windows close when
    /// it passes their end. `null` until every such partition has read a record.
    pub watermark: Option<String>,
    pub watermark_ms: Option<i64>,
    pub partitions: Vec<PartitionWatermark>,
    /// Records of this batch behind every window they fall in (per the window's `late`).
    pub late_records: u64,
}

/// One input partition's watermark: the largest event time read from it minus the delay.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PartitionWatermark {
    pub topic: String,
    pub partition: i32,
    pub watermark: Option<String>,
    pub watermark_ms: Option<i64>,
    /// No record for `idleAfter`: the partition does not hold the stage's watermark back.
    pub idle: bool,
}

/// Where the worker's first stage began reading one of its input partitions when it started:
/// the committed offset, or where the starting policy (or the sink's stored offsets, or the
/// changelog) put a partition. The operator shows these as a restart's `resumedFrom`: they are
/// the worker's fact, which the group's offsets no longer are once it has committed a batch.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResumedAt {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// What the worker is waiting on: a broker call it retries (with the attempt and the bound of
/// its retries), or batches that find the brokers silent (retried every batch). The operator
/// reads it so a worker that says why it waits is not taken for a stalled one.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Retrying {
    /// What failed, with the client's cause.
    pub reason: String,
    pub since: String,
    pub since_ms: i64,
    /// Attempts so far and the retries allowed; absent while batches retry the brokers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// How long a worker may go without completing a batch while records wait before it is
/// not live: five batch intervals, at least 30 s.
pub fn stall_limit(interval: Duration) -> Duration {
    (interval * 5).max(Duration::from_secs(30))
}

/// How long a worker may take from its start to its first batch (connecting, fencing,
/// restoring state) before it is not live; the operator waits as long before it calls a
/// starting worker stalled.
pub fn startup_grace(interval: Duration) -> Duration {
    stall_limit(interval) * 4
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}
