//! The I/O side of restarts and stalls, between observing and applying: counts the workers'
//! restarts, restarts stalled workers (deleting the pod; the StatefulSet makes a new one, which
//! resumes from the committed offsets), and announces both with Events.
//!
//! Counting happens on fresh observations only, so each restart is counted and announced
//! once; in between, the last decision stands (a stopped job can still be resumed at once).

use std::time::Instant;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use tracing::{info, warn};

use crate::conditions::{self, Health, Said, WorkerOffsets};
use crate::context::{Context, Observed, Watched};
use crate::crd::StreamingJob;
use crate::events::publish;
use crate::observation::PartitionOffsets;
use crate::progress::ProgressSummary;
use crate::restarts::{self, Outcome, Record, WorkerPod, RESTART_ANNOTATION};
use crate::scaling::Running;
use crate::Result;

/// The workers as they are now, and what was read of them.
pub struct Seen<'a> {
    pub running: Option<Running>,
    pub pods: &'a [Pod],
    /// Every input partition; empty when Kafka could not be read.
    pub offsets: &'a [PartitionOffsets],
    /// What the workers said of themselves (`/progress`).
    pub progress: &'a ProgressSummary,
    /// The observation this pass reuses, if it is not a fresh one.
    pub recent: Option<&'a Observed>,
}

/// Applies the restart policy and the stall check.
///
/// # Errors
/// When a stalled worker's pod cannot be deleted.
pub async fn watch(ctx: &Context, job: &StreamingJob, seen: &Seen<'_>) -> Result<Watched> {
    let previous = ctx
        .restart_record(job)
        .unwrap_or_else(|| Record::of(job.status.as_ref()));
    let annotation = job
        .annotations()
        .get(RESTART_ANNOTATION)
        .map(String::as_str);
    let workers = seen.running.map_or(0, |n| n.replicas);
    let policy = restarts::Job {
        policy: &job.spec.restart_policy,
        generation: job.metadata.generation,
        annotation,
        workers,
    };
    let now = Timestamp::now();
    let Some(fresh) = fresh_progress(ctx, job, seen, workers) else {
        let mut record = previous;
        let resumed = restarts::resume(&mut record, &policy);
        let outcome = Outcome {
            record,
            restarted: Vec::new(),
            stopped_now: false,
            resumed,
        };
        let record = announce(ctx, job, outcome, None, seen.progress).await;
        let mut watched = seen.recent.map(|r| r.watched.clone()).unwrap_or_default();
        watched.record = record;
        return Ok(watched);
    };
    let Watched {
        progress_by_worker,
        mut still,
        health,
        quiet_since,
        mut moving_at,
        ..
    } = fresh;
    let name = job.name_any();
    let pods: Vec<WorkerPod> = seen
        .pods
        .iter()
        .filter_map(|p| WorkerPod::from_pod(p, &name))
        .collect();
    let outcome = restarts::decide(previous, &policy, &pods, now);
    let mut record = announce(ctx, job, outcome, None, seen.progress).await;

    for &w in &health.stalled {
        let ready = pods.iter().any(|p| p.worker == w && p.ready);
        let waited = restarts::backoff_over(
            &job.spec.restart_policy,
            record.budget.as_ref(),
            record.last_failure.as_ref(),
            now,
        );
        if !ready || !waited || record.stopped.is_some() || job.spec.suspend {
            continue;
        }
        let pod = format!("{name}-{w}");
        let api: Api<Pod> =
            Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
        api.delete(&pod, &DeleteParams::default()).await?;
        let why = format!(
            "worker {w} stalled: records wait and no offsets were committed for {}; its pod was deleted",
            conditions::human(health.still_for)
        );
        warn!(worker = w, pod = %pod, "stalled worker restarted");
        let outcome = restarts::record_stalled(record, &policy, w, why.clone(), Timestamp::now());
        record = announce(ctx, job, outcome, Some(why), seen.progress).await;
        if let Some(s) = still.get_mut(w as usize) {
            *s = 0;
        }
        if let Some(t) = moving_at.get_mut(w as usize) {
            *t = Instant::now();
        }
    }
    let retries_told = tell_retries(ctx, job, seen, &health).await;
    Ok(Watched {
        record,
        progress_by_worker,
        still,
        health,
        quiet_since,
        retries_told,
        moving_at,
    })
}

/// A Warning Event for each worker that says it waits on the brokers, once per episode (a
/// new `since`), with the worker's own account.
async fn tell_retries(
    ctx: &Context,
    job: &StreamingJob,
    seen: &Seen<'_>,
    health: &Health,
) -> Vec<(u32, i64)> {
    let before = ctx
        .last(job)
        .map(|l| l.watched.retries_told)
        .unwrap_or_default();
    let mut told = Vec::new();
    for (w, said) in &health.retrying {
        let Some(since) = seen
            .progress
            .report(*w)
            .and_then(|r| r.retrying.as_ref())
            .map(|r| r.since_ms)
        else {
            continue;
        };
        told.push((*w, since));
        if !before.contains(&(*w, since)) {
            warn!(worker = w, note = %said, "worker retrying the brokers");
            publish(
                ctx,
                job,
                (EventType::Warning, "WorkerRetrying", "Retry"),
                said.clone(),
            )
            .await;
        }
    }
    told
}

/// Per-worker progress against the job's last observation, on a fresh observation of a job
/// whose workers all run at their count, with what the workers say of themselves; `None`
/// when this pass reuses an observation. The record is left for the caller.
fn fresh_progress(
    ctx: &Context,
    job: &StreamingJob,
    seen: &Seen<'_>,
    workers: u32,
) -> Option<Watched> {
    if seen.recent.is_some() {
        return None;
    }
    let last = ctx.last(job);
    let at = Instant::now();
    // Since when each worker that says nothing of batches has been quiet.
    let starting = seen
        .progress
        .reports
        .iter()
        .filter(|r| !r.ran_batches && r.retrying.is_none())
        .map(|r| &r.worker);
    let quiet_since: Vec<(u32, Instant)> = seen
        .progress
        .unreachable
        .iter()
        .chain(starting)
        .map(|w| {
            let since = last
                .as_ref()
                .and_then(|l| l.watched.quiet_since.iter().find(|(x, _)| x == w))
                .map_or(at, |(_, t)| *t);
            (*w, since)
        })
        .collect();
    let retrying: Vec<(u32, String)> = seen
        .progress
        .reports
        .iter()
        .filter_map(|r| {
            r.retrying
                .as_ref()
                .map(|x| (r.worker, x.describe(r.worker)))
        })
        .collect();
    let steady = seen
        .running
        .is_some_and(|r| r.pods == r.replicas && r.replicas > 0);
    if seen.offsets.is_empty() || !steady {
        // Nothing to compare: Kafka was not read, or workers come and go.
        let workers = workers as usize;
        return Some(Watched {
            progress_by_worker: vec![WorkerOffsets::default(); workers],
            still: vec![0; workers],
            health: Health {
                retrying,
                ..Health::default()
            },
            quiet_since,
            ..Watched::default()
        });
    }
    let starting = &job.spec.job.source.kafka.starting_offsets;
    let now = conditions::per_worker(seen.offsets, starting, workers);
    let (before, counts) = last
        .as_ref()
        .map(|l| {
            (
                l.watched.progress_by_worker.as_slice(),
                l.watched.still.as_slice(),
            )
        })
        .unwrap_or_default();
    let mut still = conditions::still(before, counts, &now);
    // The stall clock of a worker that says it waits on the brokers starts when it stops.
    for (w, _) in &retrying {
        if let Some(c) = still.get_mut(*w as usize) {
            *c = 0;
        }
    }
    let total = |w: &[WorkerOffsets]| {
        w.iter()
            .map(|o| o.committed)
            .fold(0i64, i64::saturating_add)
    };
    let advanced = (before.len() == now.len()).then(|| total(&now) > total(before));
    let after = conditions::stall_after(
        ctx.settings.stall_batches,
        job.spec.job.batch_interval.as_std(),
        ctx.settings.observe_every,
    );
    let before_moving = last
        .as_ref()
        .map(|l| l.watched.moving_at.as_slice())
        .filter(|m| m.len() == still.len())
        .unwrap_or_default();
    let moving_at: Vec<Instant> = still
        .iter()
        .enumerate()
        .map(|(w, c)| match (c, before_moving.get(w)) {
            (0, _) | (_, None) => at,
            (_, Some(t)) => *t,
        })
        .collect();
    let quiet_for: Vec<Option<std::time::Duration>> = still
        .iter()
        .zip(&moving_at)
        .map(|(c, t)| (*c > 0).then(|| at.saturating_duration_since(*t)))
        .collect();
    let bound = quiet_bound(job);
    let said = |w: u32| match quiet_since.iter().find(|(x, _)| *x == w) {
        Some((_, since)) => Said::Quiet(at.saturating_duration_since(*since)),
        None if retrying.iter().any(|(x, _)| *x == w) => Said::Retrying,
        None => Said::Running,
    };
    let stalled = conditions::judge(&conditions::stalled(&quiet_for, after), said, bound);
    let still_for = stalled
        .iter()
        .filter_map(|w| quiet_for.get(*w as usize).copied().flatten())
        .max()
        .unwrap_or_default();
    let health = Health {
        advanced,
        lag: now.iter().map(|o| o.lag).fold(0i64, i64::saturating_add),
        stalled,
        still_for,
        retrying,
    };
    Some(Watched {
        progress_by_worker: now,
        still,
        health,
        quiet_since,
        moving_at,
        ..Watched::default()
    })
}

/// How long a worker may say nothing of batches before it is judged: its retry bound for a
/// broker call, or its start-up grace (liveness), whichever is longer. By then the worker
/// has exited with its own error, been restarted by its liveness probe, or run a batch.
fn quiet_bound(job: &StreamingJob) -> std::time::Duration {
    let spec = &job.spec.job;
    let retries = spec
        .source
        .kafka
        .retries
        .give_up_within(weir_contract::client::REQUEST_TIMEOUT);
    retries.max(weir_contract::progress::startup_grace(
        spec.batch_interval.as_std(),
    ))
}

/// Keeps `outcome`'s record and publishes its Events; `stalled` replaces the note of an
/// operator-made restart.
///
/// A last failure whose worker has since reported where it resumed gets `resumedFrom` from
/// that report: in the restart's Event when the report came with it, else in an Event of its
/// own.
async fn announce(
    ctx: &Context,
    job: &StreamingJob,
    mut outcome: Outcome,
    stalled: Option<String>,
    progress: &ProgressSummary,
) -> Record {
    let filled = restarts::fill_resumed(&mut outcome.record, progress);
    ctx.keep_restart_record(job, outcome.record.clone());
    if let Some(f) = outcome.record.last_failure.as_ref().filter(|f| {
        filled && stalled.is_none() && !outcome.restarted.iter().any(|r| r.worker == f.worker)
    }) {
        let note = restarts::resumed_note(f);
        info!(worker = f.worker, %note, "worker resumed");
        publish(
            ctx,
            job,
            (EventType::Normal, "WorkerResumed", "Resume"),
            note,
        )
        .await;
    }
    for r in &outcome.restarted {
        let note = match &stalled {
            Some(why) => why.clone(),
            None => restarts::restarted_note(r, outcome.record.last_failure.as_ref()),
        };
        warn!(worker = r.worker, restarts = r.count, %note, "worker restarted");
        publish(
            ctx,
            job,
            (EventType::Warning, "WorkerRestarted", "Restart"),
            note,
        )
        .await;
    }
    if let Some(s) = outcome
        .record
        .stopped
        .as_ref()
        .filter(|_| outcome.stopped_now)
    {
        let note = format!(
            "{}; workers scaled to zero, offsets kept; change the spec or set the {RESTART_ANNOTATION} annotation to a new value to start again",
            s.reason
        );
        warn!(reason = %s.reason, "restart budget spent; stopping the job");
        publish(
            ctx,
            job,
            (EventType::Warning, "RestartBudgetSpent", "Stop"),
            note,
        )
        .await;
    }
    if outcome.resumed {
        info!("stopped job started again");
        let note = "the spec or the restart annotation changed; starting the workers again";
        publish(
            ctx,
            job,
            (EventType::Normal, "Resumed", "Start"),
            note.into(),
        )
        .await;
    }
    outcome.record
}
