//! PURE: observations over time -> the Progressing, Stalled and Degraded conditions, which
//! workers are stalled, and the Events their transitions deserve.
//!
//! Progress is judged per worker from the committed offsets of the partitions it owns
//! (`p mod workers == i`), because one stuck worker hides behind others that advance. A worker
//! is stalled when records wait for it (lag > 0) and its committed offsets have not moved for
//! `stallBatches` batch intervals (at least as many observation periods), by the clock.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use weir_contract::spec::StartingOffsets;

use crate::crd::{Phase, StreamingJobStatus};
use crate::lag::partition_lag;
use crate::observation::PartitionOffsets;

pub const PROGRESSING: &str = "Progressing";
pub const STALLED: &str = "Stalled";
pub const DEGRADED: &str = "Degraded";
/// Progressing's reason while the job's offsets cannot be read from Kafka.
pub const KAFKA_UNREACHABLE: &str = "KafkaUnreachable";

/// One worker's partitions, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerOffsets {
    /// Committed offsets summed; a partition without a commit counts as 0.
    pub committed: i64,
    pub lag: i64,
}

/// Sums `partitions` per owning worker among `workers`.
pub fn per_worker(
    partitions: &[PartitionOffsets],
    starting: &StartingOffsets,
    workers: u32,
) -> Vec<WorkerOffsets> {
    let mut out = vec![WorkerOffsets::default(); workers as usize];
    for p in partitions {
        let Some(w) = u32::try_from(p.partition)
            .ok()
            .and_then(|n| n.checked_rem(workers))
        else {
            continue;
        };
        if let Some(o) = out.get_mut(w as usize) {
            o.committed = o.committed.saturating_add(p.committed.unwrap_or(0));
            o.lag = o.lag.saturating_add(partition_lag(p, starting));
        }
    }
    out
}

/// Observations in a row each worker has had lag waiting and no committed progress.
/// A new worker count (a rescale) starts every count again.
pub fn still(before: &[WorkerOffsets], counts: &[u32], now: &[WorkerOffsets]) -> Vec<u32> {
    if before.len() != now.len() || counts.len() != now.len() {
        return vec![0; now.len()];
    }
    now.iter()
        .zip(before)
        .zip(counts)
        .map(|((n, b), c)| {
            if n.lag > 0 && n.committed <= b.committed {
                c.saturating_add(1)
            } else {
                0
            }
        })
        .collect()
}

/// How long a worker may have records waiting and commit nothing before it is stalled:
/// `batches` batch intervals, and never less than `batches` observation periods (a shorter
/// stall cannot be told from a slow batch at the operator's pace). Time, not a count of
/// observations: an operator whose observations come late (many jobs) judges no later.
pub fn stall_after(
    batches: u32,
    batch_interval: std::time::Duration,
    observe_every: std::time::Duration,
) -> std::time::Duration {
    batch_interval
        .saturating_mul(batches)
        .max(observe_every.saturating_mul(batches))
}

/// Workers that have gone `after` or longer without progress while records wait, ascending:
/// `quiet_for[w]` is how long worker w has (`None`: it progressed or is caught up).
pub fn stalled(quiet_for: &[Option<std::time::Duration>], after: std::time::Duration) -> Vec<u32> {
    (0u32..)
        .zip(quiet_for)
        .filter(|(_, q)| q.is_some_and(|q| q >= after))
        .map(|(w, _)| w)
        .collect()
}

/// What a worker's own report says of it, for the stall verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Said {
    /// It answered, claiming to run batches.
    Running,
    /// It answered that it waits on the brokers.
    Retrying,
    /// It has said nothing of batches for this long: it does not answer, or it is still
    /// starting (connecting, fencing, restoring state).
    Quiet(std::time::Duration),
}

/// Of the workers without progress for the threshold (`candidates`), the stalled ones: those
/// that claim to run batches, and those quiet for longer than `bound` (the worker's own
/// retry bound and start-up grace, by which it would have exited with its error or run a
/// batch). A worker that says it is retrying is not stalled: a restart cannot bring the
/// brokers back, spends the restart budget, and would replace the worker's own account
/// with "stalled".
pub fn judge(
    candidates: &[u32],
    said: impl Fn(u32) -> Said,
    bound: std::time::Duration,
) -> Vec<u32> {
    candidates
        .iter()
        .copied()
        .filter(|w| match said(*w) {
            Said::Running => true,
            Said::Retrying => false,
            Said::Quiet(d) => d > bound,
        })
        .collect()
}

/// What the conditions are computed from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Committed offsets moved since the last observation; `None` before a second one.
    pub advanced: Option<bool>,
    pub lag: i64,
    pub stalled: Vec<u32>,
    /// How long the stalled workers have gone without progress (the longest).
    pub still_for: std::time::Duration,
    /// Workers that say they wait on the brokers: (ordinal, their account).
    pub retrying: Vec<(u32, String)>,
}

/// Sets Progressing, Stalled and Degraded on `status` (which has its workers, unreachable
/// workers, restart budget and Kafka's observation filled in), moves a Running phase to
/// Degraded when the job is unwell, and makes Ready agree with the phase.
///
/// Degraded is judged of a running job (and of a pending one whose workers restart); a job
/// not yet running gets Degraded=False `NotRunning`, never "all workers are ready".
/// The invariants, which `tests::conditions` checks over a table of observations:
/// Ready is True exactly when the phase is Running; the phase is Degraded exactly when
/// Degraded is True; a failed read of Kafka makes Progressing Unknown (`KafkaUnreachable`),
/// since nothing is known of the offsets, and a running job Degraded.
pub fn apply(
    mut status: StreamingJobStatus,
    h: &Health,
    generation: Option<i64>,
    now: Timestamp,
) -> StreamingJobStatus {
    let running = status.phase == Some(Phase::Running) || status.phase == Some(Phase::Degraded);
    let progressing = match (status.observe_error.as_deref(), h.advanced, h.lag) {
        // The figures in status are the last known ones: no claim about progress holds.
        (Some(e), ..) => (
            "Unknown",
            KAFKA_UNREACHABLE,
            format!("cannot read the job's offsets: {e}"),
        ),
        (None, Some(true), _) => (
            "True",
            "OffsetsAdvancing",
            "committed offsets advanced".to_string(),
        ),
        (None, _, 0) => ("False", "CaughtUp", "no records are waiting".to_string()),
        (None, Some(false), lag) => (
            "False",
            "OffsetsNotAdvancing",
            format!("{lag} records wait and committed offsets did not advance"),
        ),
        (None, None, _) => (
            "Unknown",
            "FirstObservation",
            "offsets observed once so far".to_string(),
        ),
    };
    let stalled = if h.stalled.is_empty() || !running {
        ("False", "NotStalled", "no worker is stalled".to_string())
    } else {
        (
            "True",
            "OffsetsNotAdvancing",
            format!(
                "{} {}: records wait and no offsets were committed for {}",
                if h.stalled.len() == 1 {
                    "worker"
                } else {
                    "workers"
                },
                list(&h.stalled),
                human(h.still_for)
            ),
        )
    };
    let w = &status.workers;
    let mut unwell = Vec::new();
    if running && w.ready < w.desired {
        unwell.push((
            "WorkersNotReady",
            format!("{}/{} workers ready", w.ready, w.desired),
        ));
    }
    if let Some(e) = status.observe_error.as_deref().filter(|_| running) {
        unwell.push((
            KAFKA_UNREACHABLE,
            format!("cannot read the job's offsets from Kafka: {e}"),
        ));
    }
    if let Some(u) = status
        .unreachable_workers
        .as_ref()
        .filter(|u| !u.is_empty())
    {
        unwell.push((
            "WorkersUnreachable",
            // A person reads "no progress from workers 0" as "no workers made progress".
            if u.len() == 1 {
                format!("worker {} does not answer at /progress", list(u))
            } else {
                format!("workers {} do not answer at /progress", list(u))
            },
        ));
    }
    if let Some(b) = &status.restart_budget {
        unwell.push((
            "WorkersRestarted",
            format!(
                "{} worker {} since {}",
                b.used,
                if b.used == 1 { "restart" } else { "restarts" },
                b.window_start.0
            ),
        ));
    }
    if stalled.0 == "True" {
        unwell.push(("WorkersStalled", stalled.2.clone()));
    }
    for (_, said) in &h.retrying {
        unwell.push(("WorkersRetrying", said.clone()));
    }
    // Before the job runs (Pending, Rescaling) unreachable workers are expected, and without
    // workers (Suspended, Failed) there is nothing to degrade: Ready and the phase say why.
    // Workers that restart before they ever get ready (a crash loop), or that say they
    // cannot reach the brokers, do make a pending job Degraded.
    let pending = status.phase == Some(Phase::Pending);
    if !running {
        unwell.retain(|(reason, _)| {
            pending && matches!(*reason, "WorkersRestarted" | "WorkersRetrying")
        });
    }
    let degraded = match unwell.first() {
        None if !running => (
            "False",
            "NotRunning",
            format!(
                "{}/{} workers ready; judged once the job runs",
                w.ready, w.desired
            ),
        ),
        None => (
            "False",
            "WorkersHealthy",
            "all workers are ready and progressing".to_string(),
        ),
        Some((reason, _)) => (
            "True",
            *reason,
            unwell
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    for (type_, (s, reason, message)) in [
        (PROGRESSING, progressing),
        (STALLED, stalled),
        (DEGRADED, degraded),
    ] {
        crate::status::set_condition(
            &mut status.conditions,
            Condition {
                type_: type_.into(),
                status: s.into(),
                reason: reason.into(),
                message: crate::status::cut_message(message),
                observed_generation: generation,
                last_transition_time: Time(now),
            },
        );
    }
    if (status.phase == Some(Phase::Running) || pending) && condition_is(&status, DEGRADED, "True")
    {
        status.phase = Some(Phase::Degraded);
    }
    // Ready means able to make progress: a Degraded job is not, whatever its pods say, so
    // `kubectl wait --for=condition=Ready` does not pass for a job that processes nothing.
    if let Some(d) = status
        .conditions
        .iter()
        .find(|c| c.type_ == DEGRADED && c.status == "True")
        .cloned()
    {
        if condition_is(&status, crate::status::READY, "True") {
            crate::status::set_condition(
                &mut status.conditions,
                Condition {
                    type_: crate::status::READY.into(),
                    status: "False".into(),
                    reason: d.reason,
                    message: d.message,
                    observed_generation: generation,
                    last_transition_time: Time(now),
                },
            );
        }
    }
    status
}

/// A duration as `kubectl` shows ages (`1m15s`), milliseconds under a second.
pub fn human(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

fn list(workers: &[u32]) -> String {
    workers
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn condition_is(status: &StreamingJobStatus, type_: &str, s: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == s)
}

/// The conditions whose flips get an Event of their own.
const FLIPS: [&str; 3] = [STALLED, DEGRADED, crate::status::OFFSETS_AT_RISK];

/// An Event for a condition that flipped: (warning, reason, note).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// The Stalled, Degraded and OffsetsAtRisk flips from `previous` to `new`, and Kafka becoming
/// unreadable or readable again: a warning when one turns bad, a normal Event when it clears.
/// Once per flip, not per observation.
pub fn transitions(
    previous: Option<&StreamingJobStatus>,
    new: &StreamingJobStatus,
) -> Vec<Transition> {
    let was = |type_: &str| previous.is_some_and(|p| condition_is(p, type_, "True"));
    let unreachable = |s: &StreamingJobStatus| {
        s.conditions
            .iter()
            .any(|c| c.type_ == PROGRESSING && c.reason == KAFKA_UNREACHABLE)
    };
    let kafka = new
        .conditions
        .iter()
        .find(|c| c.type_ == PROGRESSING)
        .and_then(
            |c| match (previous.is_some_and(unreachable), unreachable(new)) {
                (false, true) => Some(Transition {
                    warning: true,
                    reason: KAFKA_UNREACHABLE.into(),
                    note: c.message.clone(),
                }),
                (true, false) => Some(Transition {
                    warning: false,
                    reason: "KafkaReachable".into(),
                    note: format!("offsets read again; {}", c.message),
                }),
                _ => None,
            },
        );
    kafka
        .into_iter()
        .chain(FLIPS.into_iter().filter_map(|type_| {
            let c = new.conditions.iter().find(|c| c.type_ == type_)?;
            match (was(type_), c.status == "True") {
                (false, true) => Some(Transition {
                    warning: true,
                    reason: type_.into(),
                    note: c.message.clone(),
                }),
                (true, false) => Some(Transition {
                    warning: false,
                    reason: format!("{type_}Cleared"),
                    note: c.message.clone(),
                }),
                _ => None,
            }
        }))
        .collect()
}
