//! The finalizer path: a deleted job's workers are scaled to zero first, so each finishes its
//! batch and commits on SIGTERM, and the finalizer goes only once no worker pod is left.
//! Kubernetes then deletes the children through their owner references.

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use tracing::info;

use crate::context::Context;
use crate::crd::StreamingJob;
use crate::events::publish;
use crate::{apply, Error, Result};

/// The job's finalizer: set on every job the operator has seen.
pub const DRAIN_FINALIZER: &str = "weir.dev/drain";

/// One step of draining a deleted job.
///
/// # Errors
/// [`Error::Draining`] while worker pods remain (the finalizer stays), or an API error.
pub async fn drain(job: &StreamingJob, ctx: &Context) -> Result<Action> {
    let ns = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let (running, _) = apply::running(ctx.cache(), &ns, &name);
    let Some(now) = running else {
        ctx.metrics.forget_job(&ns, &name);
        return Ok(Action::await_change());
    };
    if now.replicas > 0 {
        apply::scale(&ctx.client, &ns, &name, 0).await?;
        info!(workers = now.replicas, "job deleted; draining its workers");
        let note = format!(
            "job deleted: stopping {} workers, each commits its batch before exiting",
            now.replicas
        );
        publish(ctx, job, (EventType::Normal, "Draining", "Delete"), note).await;
    }
    if now.pods > 0 {
        return Err(Error::Draining(now.pods));
    }
    // Removing the finalizer cannot be undone: the store may not have seen a pod yet, so the
    // API server has the last word (one LIST, once per deleted job).
    let live = apply::live_pods(&ctx.client, &ns, &name).await?;
    if live > 0 {
        return Err(Error::Draining(live));
    }
    info!("workers drained; the job can go");
    ctx.metrics.forget_job(&ns, &name);
    Ok(Action::await_change())
}
