//! One reconcile of one job: the finalizer's dispatch, then validate -> observe (Kafka — a
//! new job's children are applied without workers meanwhile if that is slow —, the pods, the
//! workers' own reports, failures, a pending rewind) -> decide the children (pure) -> apply
//! them -> the status, computed in one pure step from what the pass saw -> its Events (or,
//! for a deleted job, [`crate::cleanup`]).
//!
//! Level-triggered: every pass recomputes everything from the job as it is now. An invalid
//! spec is reported (status and an Event), never returned as an error, so a typo does not
//! turn into a retry loop; the children keep running the last valid spec. Kafka is read before
//! the workers are counted because partition counts set the worker count; a failed read is
//! reported in status, not retried as an error, and scaling keeps the last known count.

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::{Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};
use weir_contract::spec::FieldError;

use crate::cleanup::{self, DRAIN_FINALIZER};
use crate::context::{Context, Observed, Watched};
use crate::crd::{AutoscaleStatus, RewindStatus, StreamingJob, StreamingJobStatus};
use crate::events::publish;
use crate::lag::{self, LagSummary};
use crate::metrics::JobFigures;
use crate::observation::{KafkaTarget, PartitionOffsets};
use crate::observe;
use crate::progress::{self, ProgressSummary};
use crate::scaling::{self, PartitionCounts};
use crate::status::{self, Observation};
use crate::{
    apply, autoscale, conditions, desired, failures, rewind, rewind_step, Error, ErrorClass, Result,
};

/// Checks the job spec the way the worker will (`JobSpec::validate`), plus what the operator
/// needs. Field paths are relative to `spec`.
pub fn validate(job: &StreamingJob) -> Vec<FieldError> {
    let mut errors = match job.spec.job.validate() {
        Ok(()) => Vec::new(),
        Err(e) => e.0,
    };
    let w = &job.spec.workers;
    // The CRD rule says the same; this catches objects stored before the rule existed.
    if w.min > w.max {
        errors.push(FieldError {
            field: "workers.min".into(),
            message: format!(
                "{} exceeds workers.max {}; lower min or raise max",
                w.min, w.max
            ),
        });
    }
    if let Some(Err(message)) = job
        .spec
        .rewind
        .as_ref()
        .map(|r| rewind::target(r, &job.spec.job.source.kafka.topics))
    {
        errors.push(FieldError {
            field: "rewind".into(),
            message,
        });
    }
    if job
        .spec
        .image
        .as_deref()
        .is_some_and(|i| i.trim().is_empty())
    {
        errors.push(FieldError {
            field: "image".into(),
            message: "is empty; leave it out for the operator's default worker image".into(),
        });
    }
    errors
}

#[instrument(skip_all, fields(job = %job.name_any(), namespace = job.namespace().as_deref().unwrap_or_default()))]
pub async fn reconcile(job: Arc<StreamingJob>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    ctx.api_pause().await;
    // An empty store before its first LIST would read as "no pods": restarts would be
    // counted again and children applied for nothing.
    if !ctx.cache().ready().await {
        return Err(Error::CacheNotReady);
    }
    let api: Api<StreamingJob> =
        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let inner = ctx.clone();
    let result = finalizer(&api, DRAIN_FINALIZER, job.clone(), |event| async move {
        match event {
            FinalizerEvent::Apply(job) => {
                let outcome = reconcile_inner(&job, &inner).await?;
                inner.metrics.reconciled(outcome, started.elapsed());
                // Valid jobs come back every observation period, so lag and partition counts
                // follow the brokers; an invalid one has nothing to observe until it changes.
                let period = match outcome {
                    "applied" => inner.settings.observe_every.min(inner.settings.resync),
                    _ => inner.settings.resync,
                };
                Ok(Action::requeue(crate::requeue::jittered(period, &job)))
            }
            FinalizerEvent::Cleanup(job) => {
                let action = cleanup::drain(&job, &inner).await?;
                inner.metrics.reconciled("drained", started.elapsed());
                Ok(action)
            }
        }
    })
    .await;
    // A racing reconcile (or the API server's garbage collector) may already have removed the
    // job: its finalizer is then gone with it, which is what this pass wanted.
    let result = match result {
        Err(kube::runtime::finalizer::Error::RemoveFinalizer(kube::Error::Api(s)))
            if s.code == 404 =>
        {
            debug!("the job was gone before its finalizer was removed");
            Ok(Action::await_change())
        }
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
    };
    // Not a failure: the namespace is being deleted, and with it the job. Nothing is applied
    // there again; the job's deletion runs its finalizer.
    let result = match result {
        Err(e) if e.namespace_terminating() => {
            let ns = job.namespace().unwrap_or_default();
            info!(namespace = %ns, "the namespace is being deleted; its jobs' children are no longer applied");
            ctx.mark_terminating(&ns);
            Ok(Action::requeue(ctx.settings.observe_every))
        }
        other => other,
    };
    match &result {
        Ok(_) => ctx.forget_failures(&job),
        Err(e) if e.class() == ErrorClass::Waiting => {}
        Err(e) => ctx.metrics.failed(e, started.elapsed()),
    }
    result
}

/// One pass over a job that exists: observe -> decide -> act (children, then status), and
/// the Events of what changed. Returns a fixed outcome name for the metrics.
async fn reconcile_inner(job: &StreamingJob, ctx: &Context) -> Result<&'static str> {
    let errors = validate(job);
    // What this operator last wrote is the status the server holds (only Weir writes it),
    // even when the cached job does not show it yet: a child's watch event can start this
    // pass before our last status write has come back.
    let written = ctx.written(job);
    let previous = written.as_ref().or(job.status.as_ref());
    let (observation, pass, outcome) = if errors.is_empty() {
        let (observation, pass) = run(job, ctx, previous).await?;
        (observation, Some(pass), "applied")
    } else {
        (Observation::Invalid(errors), None, "invalid")
    };
    let generation = job.meta().generation;
    let (new, refusal) = status_of(previous, generation, &observation, pass, Timestamp::now());
    ctx.metrics.job(
        &job.namespace().unwrap_or_default(),
        &job.name_any(),
        figures(&new),
    );
    if !status::changed(previous, &new) {
        return Ok(outcome);
    }
    apply::status(&ctx.client, job, previous, &new).await?;
    ctx.keep_written(job, new.clone());
    announce(ctx, job, previous, &new, &observation, refusal).await;
    Ok(outcome)
}

/// What a pass over a valid job saw and did: everything its status is computed from.
struct Pass {
    kafka: Result<LagSummary, String>,
    /// One moment for the observation and its `observedAt`.
    observed_at: Timestamp,
    workers: ProgressSummary,
    watched: Watched,
    rewound: Option<RewindStatus>,
    /// Why a pending rewind was refused; `None` when nothing was.
    refused: Option<String>,
    autoscale: Option<AutoscaleStatus>,
}

/// Observe (Kafka, the pods, the workers' own reports, failures, a pending rewind), decide
/// the children, apply them, and remember the observation for the passes of its period.
async fn run(
    job: &StreamingJob,
    ctx: &Context,
    previous: Option<&StreamingJobStatus>,
) -> Result<(Observation, Pass)> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let recent = ctx.recent(job);
    let (partitions, read, offsets) = match &recent {
        Some(o) => (o.partitions, o.kafka.clone(), o.offsets.clone()),
        None => {
            // Apply first when Kafka is slow to answer: a quick answer costs no extra write.
            let observing = observe_kafka(ctx, job, &ns, previous);
            tokio::pin!(observing);
            tokio::select! {
                read = &mut observing => read,
                () = tokio::time::sleep(ctx.settings.create_before_kafka) => {
                    create_children(ctx, job, &ns, &name).await?;
                    observing.await
                }
            }
        }
    };
    let (now, pods) = apply::running(ctx.cache(), &ns, &name);
    // The workers' own reports come before the restart and stall checks: a worker that says
    // it is retrying the brokers is not stalled, and a restarted one says where it resumed.
    let progress = match &recent {
        Some(o) => o.progress.clone(),
        None => {
            let asked = now.map_or(0, |r| r.pods.max(r.created));
            observe_workers(ctx, &ns, &name, asked).await
        }
    };
    let seen = failures::Seen {
        running: now,
        pods: &pods,
        offsets: &offsets,
        progress: &progress,
        recent: recent.as_ref(),
    };
    let watched = failures::watch(ctx, job, &seen).await?;
    let stopped = watched.record.stopped.as_ref().map(|s| s.reason.clone());
    let step = rewind_step::step(ctx, job, &ns, now, &offsets).await?;
    let floor = scaling::desired_workers(partitions, &job.spec.workers, job.spec.suspend);
    let autoscale = autoscale_step(ctx, job, partitions, &read, recent.as_ref(), floor.0);

    let held = match (&stopped, &step.stopping) {
        (Some(_), _) => Some("stopped by the restart policy".to_string()),
        (None, Some(id)) => Some(format!("rewind {id:?}: stopping the workers")),
        (None, None) => None,
    };
    let count = autoscale
        .as_ref()
        .map_or(floor, |a| (a.workers, a.reason.clone()));
    let (children, rescaling) = decide(job, &ctx.settings.defaults, count, held, now)?;

    if let Some(note) = rescaling {
        info!(%note, "rescaling through zero");
        publish(ctx, job, (EventType::Normal, "Rescaling", "Scale"), note).await;
    }
    let sts = if ctx.terminating(&ns) {
        // The namespace goes: its controller removes the children; the job's own deletion
        // and finalizer follow. Status still says what is left.
        ctx.cache()
            .stateful_set(&ns, &name)
            .map(|s| (*s).clone())
            .unwrap_or_default()
    } else {
        let force = ctx.resync_due(job);
        apply::children(&ctx.client, ctx.cache(), force, &ns, &children).await?
    };
    let st = sts.status.unwrap_or_default();
    let count = |n: Option<i32>| u32::try_from(n.unwrap_or(0)).unwrap_or(0);
    let at_time = recent.as_ref().map_or_else(Timestamp::now, |o| o.at_time);
    if recent.is_none() {
        ctx.remember(
            job,
            Observed {
                at: std::time::Instant::now(),
                at_time,
                generation: job.metadata.generation,
                partitions,
                kafka: read.clone(),
                progress: progress.clone(),
                offsets,
                watched: watched.clone(),
                autoscale: autoscale.clone(),
            },
        );
    }
    let observation = Observation::Applied {
        desired: children.workers.0,
        reason: children.workers.1,
        suspended: job.spec.suspend,
        stopped,
        current: u32::try_from(st.replicas).unwrap_or(0),
        ready: count(st.ready_replicas),
        selector: desired::selector_string(&name),
    };
    let pass = Pass {
        kafka: read,
        observed_at: at_time,
        workers: progress,
        watched,
        rewound: step.done,
        refused: step.refused,
        autoscale,
    };
    Ok((observation, pass))
}

/// The children to apply, from the worker count and why (`count`), unless the restart
/// policy or a rewind holds the workers at zero (`held`, why); and, when the count changes
/// through zero, the note that says so. Pure.
fn decide(
    job: &StreamingJob,
    defaults: &desired::Defaults,
    count: (u32, String),
    held: Option<String>,
    now: Option<scaling::Running>,
) -> Result<(desired::Children, Option<String>)> {
    let mut children = desired::children_for(job, defaults, count)?;
    if let Some(why) = held {
        children.workers = (0, why);
    }
    let next = scaling::next_replicas(children.workers.0, now);
    let rescaling = now
        .filter(|n| next == 0 && n.replicas > 0 && children.workers.0 > 0)
        .map(|n| {
            format!(
                "stopping {} workers to start {}: {}",
                n.replicas, children.workers.0, children.workers.1
            )
        });
    Ok((desired::with_replicas(children, next), rescaling))
}

/// The job's new status from the last one and what this pass saw (none for an invalid
/// spec), in one place; with the note of a rewind refused now. Pure.
fn status_of(
    previous: Option<&StreamingJobStatus>,
    generation: Option<i64>,
    observation: &Observation,
    pass: Option<Pass>,
    now: Timestamp,
) -> (StreamingJobStatus, Option<String>) {
    let mut new = status::compute(previous, generation, observation, now);
    let Some(pass) = pass else {
        return (new, None);
    };
    new = status::with_kafka(new, pass.kafka.as_ref().map_err(String::as_str));
    new.observed_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        pass.observed_at,
    ));
    new = status::with_progress(new, &pass.workers, pass.observed_at);
    if pass.rewound.is_some() {
        new.rewind = pass.rewound;
    }
    new.autoscale = pass.autoscale;
    let refusal =
        rewind::record_refusal(&mut new, previous, pass.refused.as_deref(), generation, now);
    pass.watched.record.clone().write(&mut new);
    new = conditions::apply(new, &pass.watched.health, generation, now);
    (new, refusal)
}

/// The per-job figures the operator's `/metrics` carries.
fn figures(new: &StreamingJobStatus) -> JobFigures {
    JobFigures {
        lag: new.lag.as_ref().map(|l| l.records),
        lag_seconds: new.lag.as_ref().and_then(|l| l.seconds),
        batch_lag: new.batch_lag,
        workers_desired: new.workers.desired,
        workers_ready: new.workers.ready,
        restarts: new.restarts,
        observed_at: new.observed_at.as_ref().map(|t| t.0.as_second()),
        ..JobFigures::default()
    }
    .with_status(new)
}

/// The Events (and log lines) of a status just written: a rewind refused, each condition's
/// transition, an invalid spec.
async fn announce(
    ctx: &Context,
    job: &StreamingJob,
    previous: Option<&StreamingJobStatus>,
    new: &StreamingJobStatus,
    observation: &Observation,
    refusal: Option<String>,
) {
    if let Some(note) = refusal {
        warn!(%note, "rewind refused; the workers keep running");
        publish(
            ctx,
            job,
            (EventType::Warning, "RewindRefused", "Rewind"),
            note,
        )
        .await;
    }
    for t in conditions::transitions(previous, new) {
        let type_ = if t.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        info!(reason = %t.reason, note = %t.note, "condition changed");
        publish(ctx, job, (type_, &t.reason, "Observe"), t.note).await;
    }
    if let Observation::Invalid(_) = observation {
        let message = status::ready_condition(new).map(|c| c.message.clone());
        warn!(
            message = message.as_deref().unwrap_or_default(),
            "invalid spec; children left as they were"
        );
        let note = message.unwrap_or_default();
        publish(
            ctx,
            job,
            (EventType::Warning, "InvalidSpec", "Validate"),
            note,
        )
        .await;
    } else {
        let lag = new.lag.as_ref().map(|l| l.records);
        info!(phase = ?new.phase, desired = new.workers.desired, ready = new.workers.ready, lag, "status updated");
    }
}

/// Applies a new job's children with no workers while Kafka has not answered: reading an
/// unreachable broker takes its timeout, and until then `kubectl` would show a job without
/// children. No workers, because their count comes from the partitions; the pass goes on to
/// set it. A job whose StatefulSet exists keeps it as it is until then.
async fn create_children(ctx: &Context, job: &StreamingJob, ns: &str, name: &str) -> Result<()> {
    if ctx.terminating(ns) || apply::running(ctx.cache(), ns, name).0.is_some() {
        return Ok(());
    }
    let children = desired::children_for(
        job,
        &ctx.settings.defaults,
        (0, "waiting for the partition count".into()),
    )?;
    let none = desired::with_replicas(children, 0);
    apply::children(&ctx.client, ctx.cache(), false, ns, &none).await?;
    debug!("children created before Kafka is read");
    Ok(())
}

/// The autoscaler's decision, for a job that autoscales: a new one on a fresh observation,
/// else the last one. `floor` is the partition-derived count.
fn autoscale_step(
    ctx: &Context,
    job: &StreamingJob,
    partitions: Option<PartitionCounts>,
    read: &Result<LagSummary, String>,
    recent: Option<&Observed>,
    floor: u32,
) -> Option<AutoscaleStatus> {
    let w = &job.spec.workers;
    let spec = w
        .autoscale
        .as_ref()
        .filter(|_| w.replicas.is_none() && !job.spec.suspend)?;
    if let Some(o) = recent {
        return o.autoscale.clone();
    }
    let previous = ctx
        .last(job)
        .and_then(|o| o.autoscale)
        .or_else(|| job.status.as_ref().and_then(|s| s.autoscale.clone()));
    let mut ceiling = w.max.max(w.min);
    if let Some(p) = partitions {
        ceiling = ceiling.min(p.widest.max(1));
    }
    let inputs = autoscale::Inputs {
        floor,
        ceiling,
        lag: read.as_ref().ok().map(|s| s.lag.records),
        now: Timestamp::now(),
    };
    Some(autoscale::decide(spec, previous.as_ref(), inputs))
}

/// Reads the job's offsets from Kafka. Returns the partition counts to scale by, what
/// status shows (the lag summary, or why the read failed) and every partition's offsets.
async fn observe_kafka(
    ctx: &Context,
    job: &StreamingJob,
    ns: &str,
    previous: Option<&StreamingJobStatus>,
) -> (
    Option<PartitionCounts>,
    Result<LagSummary, String>,
    Arc<[PartitionOffsets]>,
) {
    let target = KafkaTarget::of(job, ns, &job.name_any());
    let starting = target.source.starting_offsets.clone();
    match observe::kafka_with_credentials(&ctx.credentials(), ctx.observer.clone(), ns, target)
        .await
    {
        Ok(obs) => (
            Some(obs.partition_counts()),
            Ok(lag::summarize(&obs, &starting, ctx.settings.offset_rows)),
            obs.partitions.into(),
        ),
        Err(e) => {
            warn!(error = %e, "cannot read the job's offsets from Kafka");
            ctx.metrics.observe_failed(&e);
            // The last known total stands in for both counts: its cap is never tighter than
            // the widest topic's, and the worker count does not flap to workers.min.
            let last = previous
                .and_then(|s| s.observed_partitions)
                .map(|n| PartitionCounts {
                    total: n,
                    widest: n,
                });
            (last, Err(e.to_string()), Arc::new([]))
        }
    }
}

/// Asks the `pods` workers that exist for their progress, all at once, each within the
/// progress timeout.
async fn observe_workers(ctx: &Context, ns: &str, job: &str, pods: u32) -> ProgressSummary {
    let timeout = ctx.settings.progress_timeout;
    let asks = (0..pods).map(|i| {
        let addr = ctx.observer.worker_address(ns, job, i);
        async move { (i, progress::fetch(&addr, timeout).await) }
    });
    let answers = futures::future::join_all(asks).await;
    for (i, a) in &answers {
        if let Err(e) = a {
            debug!(worker = i, error = %e, "no progress from worker");
        }
    }
    progress::fold(&answers)
}
