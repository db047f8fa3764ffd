//! Event time: what a record's own time is, how far it may run out of order (the watermark),
//! and how an event-time window closes and treats records that come after it closed.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Duration;

/// How far event time may run behind the largest event time seen, per input partition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatermarkSpec {
    /// The out-of-orderness bound: a partition's watermark is the largest event time read from
    /// it minus this. A window closes when the watermark passes its end.
    pub delay: Duration,
    /// A partition that has read no record for this long (and has none waiting) stops holding
    /// the job's watermark back, so its silence does not keep every window open. Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_after: Option<Duration>,
}

/// What a window's time is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WindowTime {
    /// Batch time, as Spark Streaming's windows: a window is a number of batches.
    #[default]
    Batch,
    /// Each record's event time (`source.eventTime`), closed by the watermark: the same input
    /// gives the same windows however it is batched.
    Event,
}

/// What becomes of a record that comes after its window closed (behind the watermark by more
/// than `allowedLateness`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LatePolicy {
    /// Counted (`weir_late_records_total`, `/progress`) and dropped.
    #[default]
    Drop,
    /// Sent to the dead-letter topic with a `late` reason (needs `deadLetter`).
    DeadLetter,
    /// Emitted as a late update of its closed window (`emit: late`): the aggregate of the
    /// batch's late records of that window and key, for the reader to add to the closed one.
    Update,
}

/// When an event-time window is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum EmitMode {
    /// Once, when the watermark passes the window's end (plus `allowedLateness`).
    #[default]
    OnClose,
    /// Also every batch that changed it, before it closes (`emit: early`), as Structured
    /// Streaming's update mode; the closing record is still `emit: final`.
    EveryBatch,
}

/// The most windows one record may fall in (length / slide of a sliding window).
pub const MAX_WINDOWS_PER_RECORD: u128 = 100;
