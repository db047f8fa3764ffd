//! The controller: watches jobs and their children, runs [`reconcile`], retries with backoff
//! per error class, and stops cleanly when told to (SIGTERM, or a lost leader lease).

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::controller::Action;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::{watcher, Controller};
use kube::Api;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::cache::{self, Cache, Feeds};
use crate::context::{Context, Scope};
use crate::crd::StreamingJob;
use crate::reconcile::reconcile;
use crate::requeue::{backoff, jittered};
use crate::{Error, ErrorClass};

pub fn error_policy(job: Arc<StreamingJob>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempt = ctx.count_failure(&job);
    let mut wait = backoff(error.class(), attempt);
    if error.class() == ErrorClass::Waiting {
        debug!(%error, retry_in = ?wait, "waiting");
        return Action::requeue(wait);
    }
    if let Some(asked) = error.retry_after() {
        ctx.pause_api(asked);
        wait = wait.max(asked);
    }
    // Spread: jobs refused together (a throttled burst) must not all come back together.
    let wait = jittered(wait, &job);
    warn!(error = %error, class = ?error.class(), attempt, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

fn controller(api: Api<StreamingJob>, feeds: Feeds, concurrency: u16) -> Controller<StreamingJob> {
    Controller::new(api, watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .owns_stream(feeds.stateful_sets)
        .owns_stream(feeds.config_maps)
        .owns_stream(feeds.services)
        .owns_stream(feeds.pdbs)
}

/// Runs until `shutdown` is cancelled; reconciles in flight finish first.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let scopes: Vec<(Api<StreamingJob>, Option<String>)> = match &ctx.settings.scope {
        Scope::All => vec![(Api::all(client.clone()), None)],
        Scope::Namespaces(list) => list
            .iter()
            .map(|ns| (Api::namespaced(client.clone(), ns), Some(ns.clone())))
            .collect(),
    };
    let mut stores = Vec::new();
    let mut runs = Vec::new();
    let mut pods = Vec::new();
    for (api, ns) in scopes {
        let (s, mut feeds) = cache::start(&client, ns.as_deref());
        stores.push(s);
        let pod_feed = std::mem::replace(&mut feeds.pods, futures::stream::empty().boxed());
        pods.push(Feeds::drive(pod_feed));
        let token = shutdown.clone();
        runs.push(
            controller(api, feeds, ctx.settings.concurrency)
                .graceful_shutdown_on(async move { token.cancelled().await })
                .run(reconcile, error_policy, ctx.clone())
                .for_each(|result| async move {
                    match result {
                        Ok((job, _)) => debug!(job = %job.name, "reconciled"),
                        Err(e) => debug!(error = %e, "controller event"),
                    }
                }),
        );
    }
    if ctx.cache.set(Cache::new(stores)).is_err() {
        warn!("the controller runs once per context; the first one's stores are kept");
    }
    // The pods' watch triggers nothing (restarts are read each observation); it only keeps
    // the store current, until the controllers have stopped.
    let pods = futures::future::join_all(pods);
    tokio::select! {
        _ = futures::future::join_all(runs) => {}
        _ = pods => {}
    }
}
