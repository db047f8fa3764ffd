//! Server-side apply of a job's children and the job's status patch.
//!
//! One field manager owns every field Weir sets; `force` takes fields back from anyone who
//! edited them by hand, since the job spec is the single source of truth for its children.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::crd::{StreamingJob, StreamingJobStatus};
use crate::desired::{self, Children};
use crate::scaling::Running;
use crate::Result;

pub const FIELD_MANAGER: &str = "weir-operator";

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

async fn apply_one<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api
        .patch(&obj.name_any(), &params(), &Patch::Apply(obj))
        .await?)
}

/// Applies all children, the ConfigMap first so that new pods find their job file.
/// Returns the StatefulSet as the server stored it, with its current status.
///
/// # Errors
/// The first API error; later children are not applied then (the next reconcile retries).
pub async fn children(client: &Client, ns: &str, c: &Children) -> Result<StatefulSet> {
    apply_one(client, ns, &c.config_map).await?;
    apply_one(client, ns, &c.service).await?;
    let sts = apply_one(client, ns, &c.stateful_set).await?;
    apply_one(client, ns, &c.pdb).await?;
    Ok(sts)
}

/// Writes `status` through the status subresource (a merge patch: only Weir writes status).
///
/// # Errors
/// When the API server refuses the patch.
pub async fn status(
    client: &Client,
    job: &StreamingJob,
    status: &StreamingJobStatus,
) -> Result<()> {
    let api: Api<StreamingJob> =
        Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    // Fails only for a status that cannot be JSON, which kube's own patch would refuse too.
    let new = serde_json::to_value(status).map_err(kube::Error::SerdeError)?;
    let old = job
        .status
        .as_ref()
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(serde_json::Value::Null);
    let patch = serde_json::json!({ "status": clearing(&old, new) });
    api.patch_status(
        &job.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// `new` as a merge patch over `old`: every field `old` has and `new` leaves out is sent as
/// null, which removes it. Without that, a field the status no longer has (a failure's exit
/// code, a rewind's capped offsets) would keep its old value beside the new ones. PURE.
pub fn clearing(old: &serde_json::Value, new: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(before), Value::Object(mut after)) => {
            for (key, was) in before {
                match after.remove(key) {
                    Some(now) => {
                        after.insert(key.clone(), clearing(was, now));
                    }
                    None => {
                        after.insert(key.clone(), Value::Null);
                    }
                }
            }
            Value::Object(after)
        }
        (_, new) => new,
    }
}

/// The job's workers as they are: the StatefulSet's replicas and the worker pods that still
/// exist (terminating ones too: they may still be committing), with the pods themselves for
/// their restart counts. `None` and no pods before the first apply.
///
/// # Errors
/// When the API server cannot be asked.
pub async fn running(client: &Client, ns: &str, job: &str) -> Result<(Option<Running>, Vec<Pod>)> {
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let Some(sts) = sets.get_opt(job).await? else {
        return Ok((None, Vec::new()));
    };
    let replicas = sts.spec.and_then(|s| s.replicas).unwrap_or(0);
    let created = sts.status.map_or(0, |s| s.replicas);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let listed = pods
        .list(&ListParams::default().labels(&desired::selector_string(job)))
        .await?;
    let running = Running {
        replicas: u32::try_from(replicas).unwrap_or(0),
        pods: u32::try_from(listed.items.len()).unwrap_or(u32::MAX),
        created: u32::try_from(created).unwrap_or(0),
    };
    Ok((Some(running), listed.items))
}

/// Sets the StatefulSet's replicas alone, with a merge patch: a server-side apply of only this
/// field would drop every other field Weir owns.
///
/// # Errors
/// When the API server refuses the patch.
pub async fn scale(client: &Client, ns: &str, job: &str, replicas: u32) -> Result<()> {
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({ "spec": { "replicas": replicas } });
    sets.patch(job, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}
