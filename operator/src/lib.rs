//! weir-operator: runs `StreamingJob`s as StatefulSets of Weir workers.
//!
//! Modules in the order a job flows through them (watch -> reconcile -> observe -> desired ->
//! apply -> status):
//! - [`crd`]: the `StreamingJob` API (spec, status, conditions) and its CRD.
//! - [`controller`]: the kube-runtime `Controller`, its error policy and shutdown.
//! - [`context`]: what reconciles share: settings, clients, stores, and what survives from one
//!   pass of a job to the next; [`requeue`] (PURE): backoff and jitter.
//! - [`reconcile`]: one pass over one job: validate, build children, apply, write status.
//! - [`observation`] (PURE): what an observation of Kafka is: target, partitions, offsets, why
//!   a read failed.
//! - [`observe`], [`progress`]: reading the job's partitions and offsets from Kafka and setting
//!   them for a rewind (behind a trait, with [`clients`] kept open between observations and
//!   [`topic_reads`] shared by the jobs of a cluster) and its workers' `/progress`.
//! - [`cache`]: the watch-fed stores of children and pods reconciles read.
//! - [`desired`], [`scaling`], [`lag`], [`status`]: PURE functions from a job (and
//!   observations) to children, worker counts, lag and status.
//! - [`restarts`]: PURE: worker pods' restarts -> restart count, last failure, the restart
//!   policy's budget and whether it stops the job.
//! - [`conditions`]: PURE: per-worker progress over observations -> Progressing, Stalled,
//!   Degraded, and the Events their flips deserve.
//! - [`failures`]: the I/O side of restarts and stalls: Events, deleting a stalled worker.
//! - [`rewind`] (PURE): declarative rewind's plan; [`rewind_step`]: a pass's part of it (stop
//!   the workers, set the group's offsets, start again).
//! - [`events`]: the Events posted beside the status.
//! - [`autoscale`]: PURE: optional lag-driven autoscaling above the partition-derived count.
//! - [`apply`]: server-side apply of the children and the status patch.
//! - [`cleanup`]: the finalizer: a deleted job's workers drain (commit, exit) before it goes.
//! - [`leader`]: Lease-based leader election, so only one operator replica reconciles.
//! - [`metrics`], [`telemetry`], [`http`]: OpenTelemetry metrics, logs, `/metrics` and `/healthz`.

pub mod apply;
pub mod autoscale;
pub mod cache;
pub mod cleanup;
pub mod clients;
pub mod conditions;
pub mod context;
pub mod controller;
pub mod crd;
pub mod desired;
pub mod events;
pub mod failures;
pub mod http;
pub mod lag;
pub mod leader;
pub mod metrics;
pub mod observation;
pub mod observe;
pub mod progress;
pub mod rbac;
pub mod reconcile;
pub mod requeue;
pub mod restarts;
pub mod rewind;
pub mod rewind_step;
pub mod scaling;
pub mod status;
pub mod telemetry;
pub mod topic_reads;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

use kube::runtime::finalizer::Error as FinalizerError;

/// Everything a reconcile can fail with. Each variant has a fixed metric label and a retry
/// class, so `error_policy` can back off per kind of failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot serialize the job spec for the workers: {0}")]
    SerializeSpec(#[source] serde_yaml::Error),
    #[error("the job has no {0}; it was not read from the API server")]
    MissingField(&'static str),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("cannot set the job's offsets for the rewind: {0}")]
    Rewind(#[source] observation::ObserveError),
    /// The watches behind the stores of children and pods have not listed once yet (an
    /// API server that does not answer, or RBAC without `list`/`watch` on them): reading
    /// empty stores would take every worker for gone.
    #[error("the operator's watches of StatefulSets, ConfigMaps, Services, PodDisruptionBudgets and worker pods have not listed yet; check that its role may list and watch them")]
    CacheNotReady,
    /// Not a failure: a deleted job waits for its workers to commit and exit.
    #[error("waiting for {0} worker pods to finish their batch and exit")]
    Draining(u32),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How a failed reconcile is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Someone else wrote first (409): retry almost at once.
    Conflict,
    /// Network trouble, 5xx: the server will recover; back off exponentially.
    Transient,
    /// 429: the API server's fair queuing refused the request; wait at least as long as it
    /// asks (`retryAfterSeconds`), then back off like a transient failure.
    Throttled,
    /// 4xx other than conflicts (forbidden, invalid): a person must act; retry slowly.
    Rejected,
    /// A bug or a malformed object: retrying soon will not help.
    Permanent,
    /// Nothing failed; something is under way (workers draining): look again soon.
    Waiting,
}

impl Error {
    /// Every value [`Error::metric_label`] gives: the error counter starts at 0 for each, so
    /// a healthy operator's error rate reads 0, not "no data".
    pub const METRIC_LABELS: [&'static str; 8] = [
        "kube",
        "throttled",
        "serialize_spec",
        "missing_field",
        "finalizer",
        "draining",
        "cache_not_ready",
        "rewind",
    ];

    /// The metric label: a fixed variant name, never object data.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(s)) if s.code == 429 => "throttled",
            Self::Kube(_) => "kube",
            Self::SerializeSpec(_) => "serialize_spec",
            Self::MissingField(_) => "missing_field",
            Self::Finalizer(e) => match e.as_ref() {
                FinalizerError::ApplyFailed(inner) | FinalizerError::CleanupFailed(inner) => {
                    inner.metric_label()
                }
                _ => "finalizer",
            },
            Self::Draining(_) => "draining",
            Self::CacheNotReady => "cache_not_ready",
            Self::Rewind(_) => "rewind",
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Kube(e) => kube_class(e),
            Self::SerializeSpec(_) | Self::MissingField(_) => ErrorClass::Permanent,
            Self::Finalizer(e) => match e.as_ref() {
                FinalizerError::ApplyFailed(inner) | FinalizerError::CleanupFailed(inner) => {
                    inner.class()
                }
                FinalizerError::AddFinalizer(k) | FinalizerError::RemoveFinalizer(k) => {
                    kube_class(k)
                }
                _ => ErrorClass::Permanent,
            },
            Self::Draining(_) => ErrorClass::Waiting,
            Self::CacheNotReady => ErrorClass::Transient,
            // A refused login or ACL waits for a person, like a 403.
            Self::Rewind(observation::ObserveError::Auth { .. }) => ErrorClass::Rejected,
            Self::Rewind(_) => ErrorClass::Transient,
        }
    }
}

impl Error {
    /// The API server refused to create an object because its namespace is being deleted
    /// (403, cause `NamespaceTerminating`): nothing should be applied there any more.
    pub fn namespace_terminating(&self) -> bool {
        let kube = match self {
            Self::Kube(e) => e,
            Self::Finalizer(f) => match f.as_ref() {
                FinalizerError::ApplyFailed(inner) | FinalizerError::CleanupFailed(inner) => {
                    return inner.namespace_terminating()
                }
                _ => return false,
            },
            _ => return false,
        };
        matches!(kube, kube::Error::Api(s) if s.code == 403
            && s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating")))
    }

    /// How long the API server asked to wait before the next request (a 429's
    /// `retryAfterSeconds`).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        let kube = match self {
            Self::Kube(e) => e,
            Self::Finalizer(f) => match f.as_ref() {
                FinalizerError::ApplyFailed(inner) | FinalizerError::CleanupFailed(inner) => {
                    return inner.retry_after()
                }
                FinalizerError::AddFinalizer(k) | FinalizerError::RemoveFinalizer(k) => k,
                _ => return None,
            },
            _ => return None,
        };
        match kube {
            kube::Error::Api(s) => s
                .details
                .as_ref()
                .map(|d| d.retry_after_seconds)
                .filter(|s| *s > 0)
                .map(|s| std::time::Duration::from_secs(u64::from(s))),
            _ => None,
        }
    }
}

fn kube_class(e: &kube::Error) -> ErrorClass {
    match e {
        kube::Error::Api(s) if s.code == 409 => ErrorClass::Conflict,
        kube::Error::Api(s) if s.code == 429 => ErrorClass::Throttled,
        kube::Error::Api(s) if s.code >= 500 => ErrorClass::Transient,
        kube::Error::Api(_) => ErrorClass::Rejected,
        _ => ErrorClass::Transient,
    }
}

/// The CRD as YAML, exactly as `weir-operator crd` prints it and `crds/` holds it.
///
/// # Errors
/// Only if the CRD cannot be serialized, which would be a bug.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(&crd::definition())?;
    Ok(format!(
        "# Generated by `weir-operator crd` from operator/src/crd.rs; do not edit.\n{body}"
    ))
}
