//! PURE: Kafka offsets -> lag per partition, totals, and the capped rows status shows.
//!
//! Lag is what every Kafka tool computes (end offset minus the group's committed offset), so
//! `kafka-consumer-groups`, Burrow or KEDA agree with `kubectl get sj`. Two refinements: records
//! already deleted by retention cannot be read, so they are not lag; and a partition the job has
//! not committed yet counts from where the worker will start it (the startingOffsets policy).

use std::cmp::Reverse;

use weir_worker::spec::StartingOffsets;

use crate::crd::{LagStatus, OffsetsStatus, PartitionOffsetStatus};
use crate::observe::{KafkaObservation, PartitionOffsets};

/// Default number of per-partition rows in status.
pub const DEFAULT_ROWS: usize = 20;
/// Rows never exceed this, whatever is configured: 200 rows of the longest topic names Kafka
/// allows (249 characters) still keep the object far below etcd's object size limit.
pub const MAX_ROWS: usize = 200;

/// Records between where the job is (or will start) and the end of the log.
pub fn partition_lag(p: &PartitionOffsets, starting: &StartingOffsets) -> i64 {
    let from = match (p.committed, starting) {
        (Some(c), _) => c,
        (None, StartingOffsets::Earliest) => p.log_start,
        (None, StartingOffsets::Latest) => p.end,
        // The worker starts at the first record at or after the time; none: at the end.
        (None, StartingOffsets::Timestamp(_)) => p.offset_for_time.unwrap_or(p.end),
    };
    // Below the log start: those records are gone, the worker resumes at the log start. Past
    // the end (a recreated topic): nothing is waiting.
    (p.end - from.max(p.log_start)).max(0)
}

/// What status shows of one Kafka observation.
#[derive(Clone, Debug, PartialEq)]
pub struct LagSummary {
    pub partitions: u32,
    pub lag: LagStatus,
    pub offsets: OffsetsStatus,
    /// Partitions whose committed offset is outside the log, said for a person (at most
    /// [`MAX_OUT_OF_RANGE`]); the workers stop on them unless the job's policy says otherwise.
    pub out_of_range: Vec<String>,
}

/// Out-of-range partitions named in the status; the count of the rest follows them.
pub const MAX_OUT_OF_RANGE: usize = 5;

/// Why a committed offset is outside its partition's log, if it is. PURE.
pub fn out_of_range(p: &PartitionOffsets) -> Option<String> {
    let c = p.committed?;
    let (t, n) = (&p.topic, p.partition);
    if c > p.end {
        Some(format!(
            "{t}-{n}: committed offset {c} is past the log end {} (the topic was recreated, or a broker lost its data)",
            p.end
        ))
    } else if c < p.log_start {
        Some(format!(
            "{t}-{n}: committed offset {c} is before the log start {} (retention deleted {} records the job had not read)",
            p.log_start,
            p.log_start - c
        ))
    } else {
        None
    }
}

/// Totals over every partition of every stage (the input's, then each later stage's
/// repartition topic, whose rows the topic name tells apart), and at most `rows` (within
/// [`MAX_ROWS`]) rows, laggiest first; ties go by topic and partition so that a quiet job
/// yields the same status every time. `partitions` counts the input's partitions only: what
/// the workers are scaled by.
pub fn summarize(obs: &KafkaObservation, starting: &StartingOffsets, rows: usize) -> LagSummary {
    let row = |p: &PartitionOffsets, starting: &StartingOffsets| PartitionOffsetStatus {
        topic: p.topic.clone(),
        partition: p.partition,
        committed: p.committed,
        end: p.end,
        lag: partition_lag(p, starting),
    };
    // A later stage's group starts at the earliest offset of its repartition topic.
    let mut all: Vec<PartitionOffsetStatus> = obs
        .partitions
        .iter()
        .map(|p| row(p, starting))
        .chain(
            obs.stages
                .iter()
                .flat_map(|s| &s.partitions)
                .map(|p| row(p, &StartingOffsets::Earliest)),
        )
        .collect();
    let lag = LagStatus {
        records: all.iter().map(|r| r.lag).fold(0i64, i64::saturating_add),
        max_partition: all.iter().map(|r| r.lag).max().unwrap_or(0),
    };
    all.sort_by(|a, b| {
        (Reverse(a.lag), &a.topic, a.partition).cmp(&(Reverse(b.lag), &b.topic, b.partition))
    });
    let mut out_of_range: Vec<String> = obs
        .partitions
        .iter()
        .chain(obs.stages.iter().flat_map(|s| &s.partitions))
        .filter_map(out_of_range)
        .collect();
    if out_of_range.len() > MAX_OUT_OF_RANGE {
        let more = out_of_range.len() - MAX_OUT_OF_RANGE;
        out_of_range.truncate(MAX_OUT_OF_RANGE);
        out_of_range.push(format!("and {more} more partitions"));
    }
    let keep = rows.min(MAX_ROWS).min(all.len());
    let omitted = u32::try_from(all.len() - keep).unwrap_or(u32::MAX);
    all.truncate(keep);
    LagSummary {
        partitions: u32::try_from(obs.partitions.len()).unwrap_or(u32::MAX),
        lag,
        offsets: OffsetsStatus {
            partitions: all,
            omitted,
        },
        out_of_range,
    }
}
