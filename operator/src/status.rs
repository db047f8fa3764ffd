//! PURE: what the operator observed (children, Kafka, workers' progress) -> the job's status
//! and its Ready condition.
//!
//! `lastTransitionTime` moves only when a condition's status flips, as Kubernetes conventions
//! ask, so recomputing an unchanged status yields an equal value and no write.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use weir_contract::spec::FieldError;

use crate::crd::{EventTimeStatus, Phase, StreamingJobStatus, WorkersStatus};
use crate::lag::LagSummary;
use crate::progress::ProgressSummary;

pub const READY: &str = "Ready";

/// What one reconcile saw.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// The spec failed validation; nothing was applied.
    Invalid(Vec<FieldError>),
    /// The children were applied; this is the StatefulSet's state.
    Applied {
        desired: u32,
        reason: String,
        suspended: bool,
        /// Why the restart policy stopped the job, if it did.
        stopped: Option<String>,
        /// `status.replicas` of the StatefulSet: pods that exist.
        current: u32,
        ready: u32,
        selector: String,
    },
}

/// The status for `observation`, keeping what `previous` knew that this reconcile did not
/// look at (Kafka and the workers' progress: added by [`with_kafka`] and [`with_progress`]).
pub fn compute(
    previous: Option<&StreamingJobStatus>,
    generation: Option<i64>,
    observation: &Observation,
    now: Timestamp,
) -> StreamingJobStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = generation;
    let (phase, ready_status, reason, message) = match observation {
        Observation::Invalid(errors) => {
            status.workers.reason = None;
            (
                Phase::Failed,
                "False",
                "InvalidSpec",
                invalid_message(errors),
            )
        }
        Observation::Applied {
            desired,
            reason,
            suspended,
            stopped,
            current,
            ready,
            selector,
        } => {
            status.workers = WorkersStatus {
                desired: *desired,
                ready: *ready,
                reason: Some(reason.clone()),
            };
            status.selector = Some(selector.clone());
            status.replicas = *current;
            let (d, r, c) = (*desired, *ready, *current);
            if *suspended {
                (
                    Phase::Suspended,
                    "False",
                    "Suspended",
                    "spec.suspend is true; workers are scaled to zero".to_string(),
                )
            } else if let Some(why) = stopped {
                (
                    Phase::Failed,
                    "False",
                    "RestartBudgetSpent",
                    format!("{why}; workers scaled to zero, offsets kept"),
                )
            } else if c != 0 && c != d {
                // Before Running: while draining, more workers than desired may be ready.
                (
                    Phase::Rescaling,
                    "False",
                    "Rescaling",
                    format!("moving from {c} to {d} workers ({reason})"),
                )
            } else if r >= d {
                (
                    Phase::Running,
                    "True",
                    "WorkersReady",
                    format!("{r}/{d} workers ready"),
                )
            } else if r == 0 {
                (
                    Phase::Pending,
                    "False",
                    "WorkersNotReady",
                    format!("0/{d} workers ready"),
                )
            } else {
                (
                    Phase::Degraded,
                    "False",
                    "WorkersNotReady",
                    format!("{r}/{d} workers ready"),
                )
            }
        }
    };
    status.phase = Some(phase);
    set_condition(
        &mut status.conditions,
        Condition {
            type_: READY.into(),
            status: ready_status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: Time(now),
        },
    );
    status
}

/// One line naming every bad field from the manifest's root (`spec.…`), with what to set.
pub fn invalid_message(errors: &[FieldError]) -> String {
    let mut msg = errors
        .iter()
        .map(|e| format!("spec.{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ");
    cut(&mut msg);
    msg
}

/// `msg`, cut to a length status can hold.
pub fn cut_message(mut msg: String) -> String {
    cut(&mut msg);
    msg
}

/// Messages are shown in `kubectl describe`; keep them readable and the status small.
pub(crate) fn cut(msg: &mut String) {
    if msg.len() > 1024 {
        let mut at = 1024;
        while !msg.is_char_boundary(at) {
            at -= 1;
        }
        msg.truncate(at);
        msg.push('…');
    }
}

/// The condition that says a committed offset is outside its partition's log.
pub const OFFSETS_OUT_OF_RANGE: &str = "OffsetsOutOfRange";

/// The condition that says retention is about to delete records the job has not read
/// ([`crate::lag::at_risk`]).
pub const OFFSETS_AT_RISK: &str = "OffsetsAtRisk";

/// Adds what was read from Kafka. A failed read keeps the last known numbers and says why, so
/// a broker outage shows as an error next to stale figures instead of as zero lag.
pub fn with_kafka(
    mut status: StreamingJobStatus,
    kafka: Result<&LagSummary, &str>,
) -> StreamingJobStatus {
    match kafka {
        Ok(s) => {
            status.observed_partitions = Some(s.partitions);
            status.lag = Some(s.lag.clone());
            status.offsets = Some(s.offsets.clone());
            status.observe_error = None;
            let (state, reason, message) = if s.out_of_range.is_empty() {
                (
                    "False",
                    "OffsetsInLog",
                    "every committed offset is within its partition's log".to_string(),
                )
            } else {
                (
                    "True",
                    "CommittedOffsetsOutsideLog",
                    format!(
                        "{}. Workers stop on such a partition unless source.kafka.offsetOutOfRange is earliest or latest; or rewind the job (spec.rewind)",
                        s.out_of_range.join("; ")
                    ),
                )
            };
            let mut message = message;
            cut(&mut message);
            set_condition(
                &mut status.conditions,
                Condition {
                    type_: OFFSETS_OUT_OF_RANGE.into(),
                    status: state.into(),
                    reason: reason.into(),
                    message,
                    // Kept while the condition does not change (set_condition).
                    last_transition_time: Time(Timestamp::now()),
                    observed_generation: None,
                },
            );
            set_condition(&mut status.conditions, at_risk_condition(&s.at_risk));
        }
        Err(e) => {
            let mut msg = e.to_string();
            cut(&mut msg);
            status.observe_error = Some(msg);
        }
    }
    status
}

/// OffsetsAtRisk from the partitions at risk: the margins, and what to do about them.
fn at_risk_condition(at_risk: &[String]) -> Condition {
    let (state, reason, message) = if at_risk.is_empty() {
        (
            "False",
            "RetentionMarginKept",
            format!(
                "no partition's next unread record is within {}% of its retained log from the log start",
                crate::lag::AT_RISK_PERCENT
            ),
        )
    } else {
        (
            "True",
            "RetentionNearCommittedOffsets",
            format!(
                "{}. Retention deletes from the log start: these records go unread unless the job catches up (more workers, a higher maxRatePerPartition) or the topic keeps more (retention.ms, retention.bytes)",
                at_risk.join("; ")
            ),
        )
    };
    Condition {
        type_: OFFSETS_AT_RISK.into(),
        status: state.into(),
        reason: reason.into(),
        message: cut_message(message),
        // Kept while the condition does not change (set_condition).
        last_transition_time: Time(Timestamp::now()),
        observed_generation: None,
    }
}

/// Replaces the condition of the same type, keeping its transition time if status is unchanged.
pub(crate) fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            *old = new;
        }
        None => conditions.push(new),
    }
}

/// Adds what the workers said. Batch figures stay as last known when no worker answered with
/// a batch (all unreachable, or none has run one yet since it started).
pub fn with_progress(
    mut status: StreamingJobStatus,
    progress: &ProgressSummary,
    observed_at: Timestamp,
) -> StreamingJobStatus {
    if progress.batch_lag.is_some() {
        status.batch_lag = progress.batch_lag;
    }
    if progress.last_batch.is_some() {
        status.last_batch = progress.last_batch.clone();
        status.event_time = progress.watermark_ms.and_then(|w| {
            let at = k8s_openapi::jiff::Timestamp::from_millisecond(w).ok()?;
            Some(EventTimeStatus {
                watermark: at.to_string(),
                lag_seconds: (observed_at.as_millisecond() - w) / 1000,
            })
        });
    }
    status.unreachable_workers =
        (!progress.unreachable.is_empty()).then(|| progress.unreachable.clone());
    status
}

/// Whether the status must be written: any difference at all.
pub fn changed(previous: Option<&StreamingJobStatus>, new: &StreamingJobStatus) -> bool {
    previous != Some(new)
}

/// The Ready condition, if any.
pub fn ready_condition(status: &StreamingJobStatus) -> Option<&Condition> {
    status.conditions.iter().find(|c| c.type_ == READY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(desired: u32, current: u32, ready: u32) -> Observation {
        Observation::Applied {
            desired,
            reason: "test".into(),
            suspended: false,
            stopped: None,
            current,
            ready,
            selector: "weir.dev/job=j".into(),
        }
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn the_watermark_shows_with_its_lag_and_goes_when_the_job_has_none() {
        let progress = ProgressSummary {
            last_batch: Some(crate::crd::LastBatchStatus::default()),
            watermark_ms: Some(1_767_225_600_000),
            ..ProgressSummary::default()
        };
        let s = with_progress(
            StreamingJobStatus::default(),
            &progress,
            t(1_767_225_600 + 42),
        );
        assert_eq!(
            s.event_time,
            Some(EventTimeStatus {
                watermark: "2026-01-01T00:00:00Z".into(),
                lag_seconds: 42,
            })
        );
        // A report without event time clears it, and the merge patch carries the null.
        let none = ProgressSummary {
            watermark_ms: None,
            ..progress
        };
        let s = with_progress(s, &none, t(1_767_225_700));
        assert_eq!(s.event_time, None);
        let json = serde_json::to_value(&s).unwrap();
        assert!(
            json["eventTime"].is_null() && json.get("eventTime").is_some(),
            "{json}"
        );
    }

    #[test]
    fn phase_follows_the_statefulset() {
        let phase = |o| compute(None, Some(1), &o, t(0)).phase.unwrap();
        assert_eq!(phase(applied(3, 3, 3)), Phase::Running);
        assert_eq!(phase(applied(3, 3, 0)), Phase::Pending);
        assert_eq!(phase(applied(3, 3, 1)), Phase::Degraded);
        assert_eq!(phase(applied(4, 3, 3)), Phase::Rescaling);
        assert_eq!(
            phase(applied(2, 3, 3)),
            Phase::Rescaling,
            "draining 3 workers to start 2"
        );
        assert_eq!(
            phase(applied(3, 0, 0)),
            Phase::Pending,
            "a new job has no pods yet"
        );
        let suspended = Observation::Applied {
            desired: 0,
            reason: "suspended".into(),
            suspended: true,
            stopped: None,
            current: 0,
            ready: 0,
            selector: String::new(),
        };
        assert_eq!(phase(suspended), Phase::Suspended);
    }

    #[test]
    fn running_job_is_ready_with_counts() {
        let s = compute(None, Some(7), &applied(2, 2, 2), t(0));
        assert_eq!(s.observed_generation, Some(7));
        assert_eq!((s.workers.desired, s.workers.ready), (2, 2));
        let c = ready_condition(&s).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "WorkersReady")
        );
        assert_eq!(c.observed_generation, Some(7));
    }

    #[test]
    fn invalid_spec_names_the_field_from_spec() {
        let errors = vec![FieldError {
            field: "pipeline[1].window.length".into(),
            message: "7s is not a multiple of batchInterval 5s".into(),
        }];
        let s = compute(None, Some(2), &Observation::Invalid(errors), t(0));
        assert_eq!(s.phase, Some(Phase::Failed));
        let c = ready_condition(&s).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(
            c.message.starts_with("spec.pipeline[1].window.length: 7s"),
            "{}",
            c.message
        );
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = compute(None, Some(1), &applied(2, 2, 1), t(100));
        let same = compute(Some(&first), Some(1), &applied(2, 2, 1), t(200));
        assert!(
            !changed(Some(&first), &same),
            "recomputing must not cause a write"
        );
        let flipped = compute(Some(&same), Some(1), &applied(2, 2, 2), t(300));
        assert!(changed(Some(&same), &flipped));
        assert_eq!(
            ready_condition(&flipped).unwrap().last_transition_time,
            Time(t(300))
        );
        let degraded_again = compute(Some(&flipped), Some(1), &applied(2, 2, 1), t(400));
        assert_eq!(
            ready_condition(&degraded_again)
                .unwrap()
                .last_transition_time,
            Time(t(400))
        );
    }

    #[test]
    fn long_messages_are_cut() {
        let errors: Vec<_> = (0..200)
            .map(|i| FieldError {
                field: format!("pipeline[{i}].id"),
                message: "is used by an earlier step".into(),
            })
            .collect();
        assert!(invalid_message(&errors).len() <= 1024 + '…'.len_utf8());
    }
}
