//! PURE: Kafka offsets -> lag per partition (in records and in seconds), totals, the
//! partitions retention is about to overtake (OffsetsAtRisk), and the capped rows status shows.
//!
//! Lag is what every Kafka tool computes (end offset minus the group's committed offset), so
//! `kafka-consumer-groups`, Burrow or KEDA agree with `kubectl get sj`. Two refinements: records
//! already deleted by retention cannot be read, so they are not lag; and a partition the job has
//! not committed yet counts from where the worker will start it (the startingOffsets policy).

use std::cmp::Reverse;

use weir_contract::spec::StartingOffsets;

use crate::crd::{LagStatus, OffsetsStatus, PartitionOffsetStatus};
use crate::observation::{KafkaObservation, PartitionOffsets};

/// Default number of per-partition rows in status.
pub const DEFAULT_ROWS: usize = 20;
/// Rows never exceed this, whatever is configured: 200 rows of the longest topic names Kafka
/// allows (249 characters) still keep the object far below etcd's object size limit.
pub const MAX_ROWS: usize = 200;

/// Where the job reads `p` next: its committed offset, or where the startingOffsets policy
/// starts a partition without one; never before the log start (those records are gone, the
/// worker resumes at the log start).
pub fn position(p: &PartitionOffsets, starting: &StartingOffsets) -> i64 {
    let from = match (p.committed, starting) {
        (Some(c), _) => c,
        (None, StartingOffsets::Earliest) => p.log_start,
        (None, StartingOffsets::Latest) => p.end,
        // The worker starts at the first record at or after the time; none: at the end.
        (None, StartingOffsets::Timestamp(_)) => p.offset_for_time.unwrap_or(p.end),
    };
    from.max(p.log_start)
}

/// Records between where the job is (or will start) and the end of the log.
pub fn partition_lag(p: &PartitionOffsets, starting: &StartingOffsets) -> i64 {
    // Past the end (a recreated topic): nothing is waiting.
    (p.end - position(p, starting)).max(0)
}

/// The offset of the next record the job has not read, when records wait; the observer reads
/// its timestamp for the lag in seconds.
pub fn next_unread(p: &PartitionOffsets, starting: &StartingOffsets) -> Option<i64> {
    (partition_lag(p, starting) > 0).then(|| position(p, starting))
}

/// How far behind the head `p` is in time, in whole seconds at `now_millis`: how much older
/// the next unread record's timestamp is. 0 when nothing waits (and when the record's
/// timestamp is ahead of the clock); `None` when records wait and the next one's timestamp
/// (or the time of the read) is unknown: a made-up 0 would say the job is caught up.
pub fn partition_lag_seconds(
    p: &PartitionOffsets,
    starting: &StartingOffsets,
    now_millis: Option<i64>,
) -> Option<i64> {
    if partition_lag(p, starting) == 0 {
        return Some(0);
    }
    let behind = now_millis?.saturating_sub(p.next_timestamp?).max(0);
    Some(behind / 1000)
}

/// The job's lag in seconds: the most over every partition of every stage, `None` if any
/// partition with records waiting has no figure (the most over the others could understate).
pub fn lag_seconds(obs: &KafkaObservation, starting: &StartingOffsets) -> Option<i64> {
    stage_partitions(obs, starting)
        .map(|(p, s)| partition_lag_seconds(p, s, obs.read_at_millis))
        .try_fold(0i64, |most, s| Some(most.max(s?)))
}

/// Every partition with the policy a partition without a commit starts by: the input's, then
/// each later stage's (whose group starts at the earliest offset of its repartition topic).
fn stage_partitions<'a>(
    obs: &'a KafkaObservation,
    starting: &'a StartingOffsets,
) -> impl Iterator<Item = (&'a PartitionOffsets, &'a StartingOffsets)> + 'a {
    obs.partitions.iter().map(move |p| (p, starting)).chain(
        obs.stages
            .iter()
            .flat_map(|s| &s.partitions)
            .map(|p| (p, &StartingOffsets::Earliest)),
    )
}

/// OffsetsAtRisk's threshold: a partition is at risk when the records between its log start
/// and the job's next unread record are fewer than this percentage of the records it retains.
/// Retention deletes from the log start, so that margin is what retention has left to delete
/// before it deletes records the job has not read; once the unread backlog fills nine tenths of
/// the retained log, a little more input (or a little more time) loses records.
pub const AT_RISK_PERCENT: i64 = 10;

/// A partition whose unread records retention is about to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AtRisk {
    pub topic: String,
    pub partition: i32,
    /// The job's next unread record.
    pub position: i64,
    pub log_start: i64,
    pub end: i64,
    /// Records retention deletes before it reaches `position`.
    pub margin: i64,
    /// The time between the log start's record and the next unread one: about how long, at
    /// the rate the partition was written, before retention reaches `position`. `None` when
    /// either timestamp could not be read.
    pub margin_millis: Option<i64>,
}

/// Whether retention is about to delete records of `p` the job has not read. PURE.
///
/// At risk: records wait (lag > 0), retention has deleted records of the partition before
/// (its log start is past 0: until then nothing says how close retention is), the job's
/// position is inside the log (outside it is OffsetsOutOfRange: the records are gone already),
/// and fewer than [`AT_RISK_PERCENT`] percent of the retained records lie before the position.
pub fn at_risk(p: &PartitionOffsets, starting: &StartingOffsets) -> Option<AtRisk> {
    if partition_lag(p, starting) == 0 || p.log_start <= 0 || out_of_range(p).is_some() {
        return None;
    }
    let position = position(p, starting);
    let retained = p.end - p.log_start;
    let margin = position - p.log_start;
    (margin.saturating_mul(100) < retained.saturating_mul(AT_RISK_PERCENT)).then(|| AtRisk {
        topic: p.topic.clone(),
        partition: p.partition,
        position,
        log_start: p.log_start,
        end: p.end,
        margin,
        margin_millis: p
            .next_timestamp
            .zip(p.log_start_timestamp)
            .map(|(next, start)| next.saturating_sub(start).max(0)),
    })
}

impl AtRisk {
    /// The partition, the margin in records and time, said for a person.
    pub fn describe(&self) -> String {
        let time = match self.margin_millis {
            Some(ms) => format!("about {} of input", duration(ms)),
            None => "time unknown: a record's timestamp could not be read".to_string(),
        };
        format!(
            "{}-{}: the next unread record (offset {}) is {} records ({time}) from the log start {}, under {AT_RISK_PERCENT}% of the {} records retained",
            self.topic,
            self.partition,
            self.position,
            self.margin,
            self.log_start,
            self.end - self.log_start
        )
    }
}

/// `ms` as a short duration for a person: "2h5m", "3m20s", "45s", "800ms".
pub fn duration(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
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
    /// Partitions whose unread records retention is about to delete ([`at_risk`]), said for a
    /// person, the least margin first (at most [`MAX_OUT_OF_RANGE`], then the count of the rest).
    pub at_risk: Vec<String>,
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
        seconds: lag_seconds(obs, starting),
    };
    let mut at_risk: Vec<AtRisk> = stage_partitions(obs, starting)
        .filter_map(|(p, s)| at_risk(p, s))
        .collect();
    at_risk
        .sort_by(|a, b| (a.margin, &a.topic, a.partition).cmp(&(b.margin, &b.topic, b.partition)));
    let at_risk = capped(at_risk.iter().map(AtRisk::describe).collect());
    all.sort_by(|a, b| {
        (Reverse(a.lag), &a.topic, a.partition).cmp(&(Reverse(b.lag), &b.topic, b.partition))
    });
    let out_of_range = capped(
        obs.partitions
            .iter()
            .chain(obs.stages.iter().flat_map(|s| &s.partitions))
            .filter_map(out_of_range)
            .collect(),
    );
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
        at_risk,
    }
}

/// At most [`MAX_OUT_OF_RANGE`] lines, then how many more partitions there are.
fn capped(mut lines: Vec<String>) -> Vec<String> {
    if lines.len() > MAX_OUT_OF_RANGE {
        let more = lines.len() - MAX_OUT_OF_RANGE;
        lines.truncate(MAX_OUT_OF_RANGE);
        lines.push(format!("and {more} more partitions"));
    }
    lines
}
