//! Server-side apply of a job's children and the job's status patch.
//!
//! One field manager owns every field Weir sets; `force` takes fields back from anyone who
//! edited them by hand, since the job spec is the single source of truth for its children.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::Cache;
use crate::crd::{StreamingJob, StreamingJobStatus};
use crate::desired::Children;
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

/// Applies `obj` unless `cached` already has every field of it (and `force` is off): at
/// steady state a job's children cost no request. Returns the object as it now is.
async fn apply_if_changed<K>(
    client: &Client,
    ns: &str,
    obj: &K,
    cached: Option<Arc<K>>,
    force: bool,
) -> Result<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    if let Some(c) = cached.filter(|c| !force && same(c.as_ref(), obj)) {
        return Ok((*c).clone());
    }
    apply_one(client, ns, obj).await
}

/// Whether `cached` holds every field `desired` sets, with the same value. The API server
/// adds defaults and its own fields, so the cached object is a superset when nothing
/// changed; a field changed by hand, or a new desired value, makes it differ. PURE.
fn same<K: Serialize>(cached: &K, desired: &K) -> bool {
    match (serde_json::to_value(cached), serde_json::to_value(desired)) {
        (Ok(c), Ok(d)) => covers(&c, &d),
        _ => false,
    }
}

/// Whether `have` contains `want`: objects key by key, arrays element by element (same
/// length), anything else equal. PURE.
pub fn covers(have: &serde_json::Value, want: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w.iter().all(|(k, v)| {
            h.get(k).is_some_and(|x| covers(x, v)) || (v.is_null() && !h.contains_key(k))
        }),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(x, v)| covers(x, v))
        }
        (h, w) => h == w,
    }
}

/// Applies the children that differ from what the stores hold (all of them when `force`),
/// the ConfigMap first so that new pods find their job file. Returns the
/// StatefulSet as it now is, with its status.
///
/// # Errors
/// The first API error; later children are not applied then (the next reconcile retries).
pub async fn children(
    client: &Client,
    cache: &Cache,
    force: bool,
    ns: &str,
    c: &Children,
) -> Result<StatefulSet> {
    let cm = cache.config_map(ns, &c.config_map.name_any());
    apply_if_changed(client, ns, &c.config_map, cm, force).await?;
    let svc = cache.service(ns, &c.service.name_any());
    apply_if_changed(client, ns, &c.service, svc, force).await?;
    let sts = cache.stateful_set(ns, &c.stateful_set.name_any());
    let sts = apply_if_changed(client, ns, &c.stateful_set, sts, force).await?;
    let pdb = cache.pdb(ns, &c.pdb.name_any());
    apply_if_changed(client, ns, &c.pdb, pdb, force).await?;
    Ok(sts)
}

/// Writes `status` through the status subresource, as a merge patch over `stored`, the
/// status the server holds as far as the operator knows (only Weir writes status).
///
/// # Errors
/// When the API server refuses the patch.
pub async fn status(
    client: &Client,
    job: &StreamingJob,
    stored: Option<&StreamingJobStatus>,
    status: &StreamingJobStatus,
) -> Result<()> {
    let api: Api<StreamingJob> =
        Api::namespaced(client.clone(), &job.namespace().unwrap_or_default());
    // Fails only for a status that cannot be JSON, which kube's own patch would refuse too.
    let new = serde_json::to_value(status).map_err(kube::Error::SerdeError)?;
    let old = stored
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

/// The job's workers as they are, from the stores: the StatefulSet's replicas and the
/// worker pods that still exist (terminating ones too: they may still be committing), with
/// the pods themselves for their restart counts. `None` and no pods before the first apply.
pub fn running(cache: &Cache, ns: &str, job: &str) -> (Option<Running>, Vec<Pod>) {
    let Some(sts) = cache.stateful_set(ns, job) else {
        return (None, Vec::new());
    };
    let pods = cache.pods(ns, job);
    let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let created = sts.status.as_ref().map_or(0, |s| s.replicas);
    let running = Running {
        replicas: u32::try_from(replicas).unwrap_or(0),
        pods: u32::try_from(pods.len()).unwrap_or(u32::MAX),
        created: u32::try_from(created).unwrap_or(0),
    };
    (Some(running), pods)
}

/// How many worker pods of `job` the API server lists (not the store): for the one decision
/// that cannot wait for a watch event.
///
/// # Errors
/// When the API server cannot be asked.
pub async fn live_pods(client: &Client, ns: &str, job: &str) -> Result<u32> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let listed = pods
        .list_metadata(&ListParams::default().labels(&crate::desired::selector_string(job)))
        .await?;
    Ok(u32::try_from(listed.items.len()).unwrap_or(u32::MAX))
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
