//! A batch's results, as the pipeline left them: per owned partition its range, outputs and
//! state changes, and the records that failed. What the sink, the dead-letter topic and the
//! changelog write, and what the commit step then makes final.

use crate::dead_letter::DeadLetter;
use crate::expr::Val;
use crate::pipeline::{Output, StateChange};
use crate::plan::OffsetRange;

/// One partition's results in a batch.
pub struct PartitionOutput<'a> {
    pub range: &'a OffsetRange,
    pub outputs: &'a [Output],
    /// The partition's keyed-state changes in the batch, in order (none for a stateless job).
    pub changes: &'a [StateChange],
    /// In the stage before a shuffle with event time: the partition's watermark record (key,
    /// value), for every partition of the repartition topic, when it changed.
    pub marker: Option<&'a (Val, Val)>,
}

/// A batch's results.
pub struct BatchOutput<'a> {
    pub batch_time_ms: i64,
    /// Parallel to the worker's owned partitions.
    pub partitions: Vec<PartitionOutput<'a>>,
    /// Records that failed, for a sink that writes them in its own transactions.
    pub dead: &'a [DeadLetter],
}

impl BatchOutput<'_> {
    pub fn records(&self) -> usize {
        self.partitions.iter().map(|p| p.outputs.len()).sum()
    }
}
