//! PURE: the worker pods' restart counts -> the job's restart record (count, last failure,
//! budget) and whether the restart policy stops the job.
//!
//! Kubernetes restarts a crashed worker, which resumes from its committed offsets; this module
//! only counts. A pod's `restartCount` only grows, so a restart is the difference to the count
//! last seen for the same pod (by uid: a recreated pod starts from zero). The budget is a fixed
//! window that opens at the first restart; a window without restarts clears it.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::{
    LastFailureStatus, RestartBudgetStatus, RestartPolicySpec, ResumedOffset, StoppedStatus,
    StreamingJobStatus,
};
use crate::progress::ProgressSummary;

/// Setting this annotation to a new value starts a job the restart policy stopped.
pub const RESTART_ANNOTATION: &str = "weir.dev/restart";
/// Rows of `lastFailure.resumedFrom`.
pub const RESUMED_ROWS: usize = 20;
/// The worker's container, as `desired` names it.
const CONTAINER: &str = "worker";

/// Characters of a pod's uid that name it in `seenRestarts`: a uid's start is random, and
/// only a worker's old and new pod need telling apart.
const UID_CHARS: usize = 8;

/// One restarted pod's restart count as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRestarts {
    pub worker: u32,
    /// The start of the pod's uid.
    pub pod: String,
    pub count: u32,
}

impl SeenRestarts {
    /// `worker/pod/count`, as status keeps it.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('/');
        let (w, pod, n) = (parts.next()?, parts.next()?, parts.next()?);
        Some(Self {
            worker: w.parse().ok()?,
            pod: pod.to_string(),
            count: n.parse().ok()?,
        })
    }

    pub fn format(&self) -> String {
        format!("{}/{}/{}", self.worker, self.pod, self.count)
    }
}

/// What the operator needs of one worker pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerPod {
    pub worker: u32,
    /// The start of the pod's uid.
    pub uid: String,
    pub restarts: u32,
    pub ready: bool,
    /// How the container's previous run ended, if it was restarted.
    pub last_exit: Option<Exit>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub exit_code: i32,
    /// The termination message, else Kubernetes' reason (e.g. OOMKilled).
    pub message: Option<String>,
    /// When the failed run ended: the run that reports after it is the one that resumed.
    pub finished_at: Option<Timestamp>,
}

impl WorkerPod {
    /// The worker behind `pod` of `job`'s StatefulSet; `None` for a pod that is not one
    /// (a name without an ordinal, no uid).
    pub fn from_pod(pod: &Pod, job: &str) -> Option<Self> {
        let name = pod.metadata.name.as_deref()?;
        let worker = name.strip_prefix(job)?.strip_prefix('-')?.parse().ok()?;
        let uid: String = pod
            .metadata
            .uid
            .as_deref()?
            .chars()
            .take(UID_CHARS)
            .collect();
        let statuses = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or_default();
        let Some(c) = statuses.iter().find(|c| c.name == CONTAINER) else {
            return Some(Self {
                worker,
                uid,
                restarts: 0,
                ready: false,
                last_exit: None,
            });
        };
        let last_exit = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| Exit {
                exit_code: t.exit_code,
                message: exit_message(t.reason.as_deref(), t.message.as_deref()),
                finished_at: t.finished_at.as_ref().map(|f| f.0),
            });
        Some(Self {
            worker,
            uid,
            restarts: u32::try_from(c.restart_count).unwrap_or(0),
            ready: c.ready,
            last_exit,
        })
    }
}

/// What a container's last run said, for a person. PURE. An OOM kill says so, with what to
/// change (the worker cannot: the kernel killed it). Otherwise the worker's own termination
/// message, or, where Kubernetes fell back to the log's tail (a kill the worker could not
/// report), its last meaningful line without colour codes; else Kubernetes' reason.
pub fn exit_message(reason: Option<&str>, message: Option<&str>) -> Option<String> {
    let said = message.map(last_words).filter(|m| !m.is_empty());
    match (reason, said) {
        (Some("OOMKilled"), said) => Some(format!(
            "OOMKilled: the worker used more memory than its limit; raise spec.resources.limits.memory, or lower source.kafka.maxRatePerPartition so that batches hold less{}",
            said.map_or_else(String::new, |s| format!(" (its last words: {s})"))
        )),
        (_, Some(s)) => Some(s),
        (r, None) => r.map(str::to_string),
    }
}

/// The line of a message worth reading: the message itself when it is one line (the worker's
/// termination message), else the last line of the log tail that reports an error (or its
/// last line), without ANSI colour codes.
fn last_words(message: &str) -> String {
    let plain = strip_ansi(message);
    let lines: Vec<&str> = plain
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let line = lines
        .iter()
        .rev()
        .find(|l| l.contains("ERROR") || l.starts_with("error:") || l.contains("panicked"))
        .or(lines.last());
    line.map_or_else(String::new, |l| (*l).to_string())
}

/// `s` without ANSI escape sequences (ESC [ ... final byte).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for f in chars.by_ref() {
                    if ('@'..='~').contains(&f) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The part of the status this module owns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    pub restarts: u32,
    pub last_failure: Option<LastFailureStatus>,
    pub budget: Option<RestartBudgetStatus>,
    pub stopped: Option<StoppedStatus>,
    pub seen: Vec<SeenRestarts>,
}

impl Record {
    pub fn of(status: Option<&StreamingJobStatus>) -> Self {
        status.map_or_else(Self::default, |s| Self {
            restarts: s.restarts,
            last_failure: s.last_failure.clone(),
            budget: s.restart_budget.clone(),
            stopped: s.stopped.clone(),
            // An entry that does not parse is forgotten: at worst one restart counted again.
            seen: s
                .seen_restarts
                .iter()
                .filter_map(|x| SeenRestarts::parse(x))
                .collect(),
        })
    }

    pub fn write(self, status: &mut StreamingJobStatus) {
        status.restarts = self.restarts;
        status.last_failure = self.last_failure;
        status.restart_budget = self.budget;
        status.stopped = self.stopped;
        status.seen_restarts = self.seen.iter().map(SeenRestarts::format).collect();
    }
}

/// The job as the restart policy sees it.
#[derive(Clone, Debug)]
pub struct Job<'a> {
    pub policy: &'a RestartPolicySpec,
    pub generation: Option<i64>,
    /// The `weir.dev/restart` annotation's value.
    pub annotation: Option<&'a str>,
    /// The worker count the pods run with: worker i owns partitions `p mod workers == i`.
    pub workers: u32,
}

/// One worker's restarts found by this observation, for an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restarted {
    pub worker: u32,
    pub count: u32,
    pub exit: Option<Exit>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub record: Record,
    pub restarted: Vec<Restarted>,
    /// The budget was spent by this observation's restarts.
    pub stopped_now: bool,
    /// A stopped job was started again (new generation or restart annotation).
    pub resumed: bool,
}

/// Starts a stopped job again if its spec changed or the restart annotation got a new value,
/// with its whole budget. Returns whether it did.
pub fn resume(record: &mut Record, job: &Job<'_>) -> bool {
    let resumed = record.stopped.as_ref().is_some_and(|s| {
        s.generation != job.generation || s.restart_annotation.as_deref() != job.annotation
    });
    if resumed {
        record.stopped = None;
        record.budget = None;
    }
    resumed
}

/// [`resume`]s, then counts new restarts of `pods`, updates the last failure and the budget,
/// and stops the job when the budget is spent.
pub fn decide(previous: Record, job: &Job<'_>, pods: &[WorkerPod], now: Timestamp) -> Outcome {
    let mut record = previous;
    let resumed = resume(&mut record, job);
    let restarted: Vec<Restarted> = pods
        .iter()
        .filter_map(|p| {
            let before = record
                .seen
                .iter()
                .find(|s| s.worker == p.worker && s.pod == p.uid)
                .map_or(0, |s| s.count);
            let count = p.restarts.saturating_sub(before);
            (count > 0).then(|| Restarted {
                worker: p.worker,
                count,
                exit: p.last_exit.clone(),
            })
        })
        .collect();
    let mut seen: Vec<SeenRestarts> = pods
        .iter()
        .filter(|p| p.restarts > 0)
        .map(|p| SeenRestarts {
            worker: p.worker,
            pod: p.uid.clone(),
            count: p.restarts,
        })
        .collect();
    seen.sort_by_key(|s| s.worker);
    record.seen = seen;

    let stopped_now = count(&mut record, job, &restarted, now);
    Outcome {
        record,
        restarted,
        stopped_now,
        resumed,
    }
}

/// Adds `restarted` to the count, the last failure and the budget; returns whether this
/// spent the budget and stopped the job.
fn count(record: &mut Record, job: &Job<'_>, restarted: &[Restarted], now: Timestamp) -> bool {
    let window =
        SignedDuration::try_from(job.policy.window.as_std()).unwrap_or(SignedDuration::MAX);
    let window_over = |b: &RestartBudgetStatus| now.duration_since(b.window_start.0) >= window;
    let new: u32 = restarted
        .iter()
        .map(|r| r.count)
        .fold(0, u32::saturating_add);
    if new == 0 {
        if record.budget.as_ref().is_some_and(window_over) {
            record.budget = None;
        }
        return false;
    }
    record.restarts = record.restarts.saturating_add(new);
    if let Some(last) = restarted.last() {
        record.last_failure = Some(failure(last, now));
    }
    let budget = match record.budget.take() {
        Some(b) if !window_over(&b) => RestartBudgetStatus {
            used: b.used.saturating_add(new),
            ..b
        },
        _ => RestartBudgetStatus {
            window_start: Time(now),
            used: new,
        },
    };
    let spent = budget.used > job.policy.max_restarts && record.stopped.is_none();
    if spent {
        record.stopped = Some(StoppedStatus {
            time: Time(now),
            reason: format!(
                "{} worker restarts within {}, more than restartPolicy.maxRestarts {}",
                budget.used, job.policy.window, job.policy.max_restarts
            ),
            generation: job.generation,
            restart_annotation: job.annotation.map(str::to_string),
        });
    }
    record.budget = Some(budget);
    spent
}

/// The failure of `r`'s last run. `resumedFrom` stays empty until the worker's next run
/// reports where it resumed ([`fill_resumed`]): the group's offsets read now may already be
/// past that, once the new run has committed a batch.
fn failure(r: &Restarted, now: Timestamp) -> LastFailureStatus {
    let message = r
        .exit
        .as_ref()
        .and_then(|e| e.message.clone())
        .unwrap_or_else(|| "the worker restarted without a termination message".into());
    LastFailureStatus {
        time: Time(r.exit.as_ref().and_then(|e| e.finished_at).unwrap_or(now)),
        worker: r.worker,
        message: crate::status::cut_message(message),
        exit_code: r.exit.as_ref().map(|e| e.exit_code),
        resumed_from: Vec::new(),
        resumed_from_omitted: 0,
    }
}

/// A report from a run that started before `failure` ended is the failed run's, not the one
/// that resumed. Kubernetes gives the end in whole seconds and the operator's clock may be a
/// little off the worker's: a second of slack, far less than any run lives before it fails
/// and is restarted.
const SAME_RUN_SLACK_MS: i64 = 1000;

/// Fills the last failure's `resumedFrom` from its worker's report, once a run that started
/// after the failure says where it resumed. Returns whether it did. PURE.
pub fn fill_resumed(record: &mut Record, progress: &ProgressSummary) -> bool {
    let Some(f) = record
        .last_failure
        .as_mut()
        .filter(|f| f.resumed_from.is_empty())
    else {
        return false;
    };
    let ended = f.time.0.as_millisecond();
    let Some(report) = progress.report(f.worker).filter(|r| {
        !r.resumed_from.is_empty()
            && r.started_at_ms
                .is_some_and(|s| s >= ended.saturating_sub(SAME_RUN_SLACK_MS))
    }) else {
        return false;
    };
    let mut rows: Vec<ResumedOffset> = report
        .resumed_from
        .iter()
        .map(|o| ResumedOffset {
            topic: o.topic.clone(),
            partition: o.partition,
            offset: Some(o.offset),
        })
        .collect();
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    f.resumed_from_omitted =
        u32::try_from(rows.len().saturating_sub(RESUMED_ROWS)).unwrap_or(u32::MAX);
    rows.truncate(RESUMED_ROWS);
    f.resumed_from = rows;
    true
}

/// The Event note for a worker that resumed after its last failure.
pub fn resumed_note(failure: &LastFailureStatus) -> String {
    let more = match failure.resumed_from_omitted {
        0 => String::new(),
        n => format!(" and {n} more partitions"),
    };
    crate::status::cut_message(format!(
        "worker {} resumed from {}{more}",
        failure.worker,
        offsets(&failure.resumed_from)
    ))
}

fn offsets(rows: &[ResumedOffset]) -> String {
    rows.iter()
        .map(|o| match o.offset {
            Some(n) => format!("{}/{}@{n}", o.topic, o.partition),
            None => format!("{}/{}@start", o.topic, o.partition),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `budget`'s job may have a worker restarted by the operator now: the wait after
/// the last restart doubles with each one in the window, from `backoff` up to `maxBackoff`.
pub fn backoff_over(
    policy: &RestartPolicySpec,
    budget: Option<&RestartBudgetStatus>,
    last: Option<&LastFailureStatus>,
    now: Timestamp,
) -> bool {
    let (Some(b), Some(l)) = (budget, last) else {
        return true;
    };
    let doublings = b.used.saturating_sub(1).min(16);
    let wait = policy
        .backoff
        .as_std()
        .saturating_mul(1 << doublings)
        .min(policy.max_backoff.as_std());
    let wait = SignedDuration::try_from(wait).unwrap_or(SignedDuration::MAX);
    now.duration_since(l.time.0) >= wait
}

/// The Event note for one worker's restarts: what it said and where it resumes.
pub fn restarted_note(r: &Restarted, failure: Option<&LastFailureStatus>) -> String {
    let times = if r.count == 1 {
        String::new()
    } else {
        format!(" {} times", r.count)
    };
    let mut note = format!("worker {} restarted{times}", r.worker);
    if let Some(e) = &r.exit {
        note.push_str(&format!(" (exit code {})", e.exit_code));
        if let Some(m) = &e.message {
            note.push_str(&format!(": {m}"));
        }
    }
    if let Some(f) = failure.filter(|f| f.worker == r.worker && !f.resumed_from.is_empty()) {
        note.push_str(&format!("; resumed from {}", offsets(&f.resumed_from)));
    }
    crate::status::cut_message(note)
}

/// Records a restart the operator made itself (a stalled worker's pod deleted), counted
/// against the same budget as crashes.
pub fn record_stalled(
    previous: Record,
    job: &Job<'_>,
    worker: u32,
    why: String,
    now: Timestamp,
) -> Outcome {
    let mut record = previous;
    let r = Restarted {
        worker,
        count: 1,
        exit: None,
    };
    let stopped_now = count(&mut record, job, std::slice::from_ref(&r), now);
    if let Some(f) = record.last_failure.as_mut() {
        f.message = crate::status::cut_message(why);
    }
    Outcome {
        record,
        restarted: vec![r],
        stopped_now,
        resumed: false,
    }
}
