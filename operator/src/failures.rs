//! The I/O side of restarts and stalls, between observing and applying: counts the workers'
//! restarts, restarts stalled workers (deleting the pod; the StatefulSet makes a new one, which
//! resumes from the committed offsets), and announces both with Events.
//!
//! Counting happens on fresh observations only, so each restart is counted and announced
//! once; in between, the last decision stands (a stopped job can still be resumed at once).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use tracing::{info, warn};

use crate::conditions::{self, Health, WorkerOffsets};
use crate::controller::{Context, Observed};
use crate::crd::StreamingJob;
use crate::observe::PartitionOffsets;
use crate::reconcile::publish;
use crate::restarts::{self, Outcome, Record, WorkerPod, RESTART_ANNOTATION};
use crate::scaling::Running;
use crate::Result;

/// What one pass decided about the job's failures.
#[derive(Clone, Debug, Default)]
pub struct Watched {
    pub record: Record,
    pub progress_by_worker: Vec<WorkerOffsets>,
    pub still: Vec<u32>,
    pub health: Health,
}

/// The workers as they are now, and what was read of them.
pub struct Seen<'a> {
    pub running: Option<Running>,
    pub pods: &'a [Pod],
    /// Every input partition; empty when Kafka could not be read.
    pub offsets: &'a [PartitionOffsets],
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
        partitions: seen.offsets,
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
        let record = announce(ctx, job, outcome, None).await;
        let (progress_by_worker, still, health) = seen
            .recent
            .map(|r| {
                (
                    r.progress_by_worker.clone(),
                    r.still.clone(),
                    r.health.clone(),
                )
            })
            .unwrap_or_default();
        return Ok(Watched {
            record,
            progress_by_worker,
            still,
            health,
        });
    };
    let (progress_by_worker, mut still, health) = fresh;
    let name = job.name_any();
    let pods: Vec<WorkerPod> = seen
        .pods
        .iter()
        .filter_map(|p| WorkerPod::from_pod(p, &name))
        .collect();
    let outcome = restarts::decide(previous, &policy, &pods, now);
    let mut record = announce(ctx, job, outcome, None).await;

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
        let observations = still.get(w as usize).copied().unwrap_or(0);
        let why = format!(
            "worker {w} stalled: records wait and no offsets were committed for {observations} observations; its pod was deleted"
        );
        warn!(worker = w, pod = %pod, "stalled worker restarted");
        let outcome = restarts::record_stalled(record, &policy, w, why.clone(), now);
        record = announce(ctx, job, outcome, Some(why)).await;
        if let Some(s) = still.get_mut(w as usize) {
            *s = 0;
        }
    }
    Ok(Watched {
        record,
        progress_by_worker,
        still,
        health,
    })
}

/// Per-worker progress against the job's last observation, on a fresh observation of a job
/// whose workers all run at their count; `None` when this pass reuses an observation.
fn fresh_progress(
    ctx: &Context,
    job: &StreamingJob,
    seen: &Seen<'_>,
    workers: u32,
) -> Option<(Vec<WorkerOffsets>, Vec<u32>, Health)> {
    if seen.recent.is_some() {
        return None;
    }
    let last = ctx.last(job);
    let steady = seen
        .running
        .is_some_and(|r| r.pods == r.replicas && r.replicas > 0);
    if seen.offsets.is_empty() || !steady {
        // Nothing to compare: Kafka was not read, or workers come and go.
        let workers = workers as usize;
        return Some((
            vec![WorkerOffsets::default(); workers],
            vec![0; workers],
            Health::default(),
        ));
    }
    let starting = &job.spec.job.source.kafka.starting_offsets;
    let now = conditions::per_worker(seen.offsets, starting, workers);
    let (before, counts) = last
        .as_ref()
        .map(|l| (l.progress_by_worker.as_slice(), l.still.as_slice()))
        .unwrap_or_default();
    let still = conditions::still(before, counts, &now);
    let total = |w: &[WorkerOffsets]| {
        w.iter()
            .map(|o| o.committed)
            .fold(0i64, i64::saturating_add)
    };
    let advanced = (before.len() == now.len()).then(|| total(&now) > total(before));
    let threshold = conditions::stall_threshold(
        ctx.settings.stall_batches,
        job.spec.job.batch_interval.as_std(),
        ctx.settings.observe_every,
    );
    let stalled = conditions::stalled(&still, threshold);
    let still_for = stalled
        .iter()
        .filter_map(|w| still.get(*w as usize))
        .copied()
        .max()
        .unwrap_or(0);
    let health = Health {
        advanced,
        lag: now.iter().map(|o| o.lag).fold(0i64, i64::saturating_add),
        stalled,
        still_for,
    };
    Some((now, still, health))
}

/// Keeps `outcome`'s record and publishes its Events; `stalled` replaces the note of an
/// operator-made restart.
async fn announce(
    ctx: &Context,
    job: &StreamingJob,
    outcome: Outcome,
    stalled: Option<String>,
) -> Record {
    ctx.keep_restart_record(job, outcome.record.clone());
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
