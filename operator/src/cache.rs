//! What the operator knows of the cluster between reconciles: watch-fed stores of the jobs'
//! children and worker pods, read instead of the API server.
//!
//! At a thousand jobs a live GET of each StatefulSet and a LIST of each job's pods per
//! observation made most of the operator's requests, and none was needed: the watches that
//! trigger reconciles already carry every change. Each kind is watched once (per namespace
//! the operator serves) and the same stream both fills the store and triggers the owner's
//! reconcile. A reconcile waits until the stores have had their first LIST, so it never
//! takes an empty store for "no pods" (which would count every restart again).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// Labels every child of a job carries (`desired::labels`), and the worker pods' label.
const CHILDREN: &str = "app.kubernetes.io/managed-by=weir-operator";
const WORKER_PODS: &str = "app.kubernetes.io/name=weir-worker";
/// The label naming a worker pod's job.
const JOB_LABEL: &str = "weir.dev/job";

/// The stores of one scope (all namespaces, or one).
#[derive(Clone)]
pub struct Stores {
    pub stateful_sets: Store<StatefulSet>,
    pub config_maps: Store<ConfigMap>,
    pub services: Store<Service>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub pods: Store<Pod>,
}

/// A watch that fills a store; polled by whoever consumes it (the controller, for children).
pub type Feed<K> = std::pin::Pin<Box<dyn Stream<Item = Result<K, watcher::Error>> + Send>>;

/// The watches behind [`Stores`]: the children's trigger the controller, the pods' only fill
/// their store and must be driven ([`Feeds::pods`]).
pub struct Feeds {
    pub stateful_sets: Feed<StatefulSet>,
    pub config_maps: Feed<ConfigMap>,
    pub services: Feed<Service>,
    pub pdbs: Feed<PodDisruptionBudget>,
    pub pods: Feed<Pod>,
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A store of `K` with the labels `selector`, and its feed. Managed fields are dropped on
/// the way in: nothing reads them, and they are most of an object's size.
fn watched<K>(client: &Client, ns: Option<&str>, selector: &str) -> (Store<K>, Feed<K>)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let feed = watcher(
        api::<K>(client, ns),
        watcher::Config::default().labels(selector),
    )
    .default_backoff()
    .modify(|o| o.managed_fields_mut().clear())
    .reflect(writer)
    .touched_objects()
    .boxed();
    (reader, feed)
}

/// The stores of one scope and the watches that fill them.
pub fn start(client: &Client, ns: Option<&str>) -> (Stores, Feeds) {
    let (stateful_sets, sts) = watched(client, ns, CHILDREN);
    let (config_maps, cms) = watched(client, ns, CHILDREN);
    let (services, svcs) = watched(client, ns, CHILDREN);
    let (pdbs, pdb) = watched(client, ns, CHILDREN);
    let (pods, pod_feed) = watched(client, ns, WORKER_PODS);
    (
        Stores {
            stateful_sets,
            config_maps,
            services,
            pdbs,
            pods,
        },
        Feeds {
            stateful_sets: sts,
            config_maps: cms,
            services: svcs,
            pdbs: pdb,
            pods: pod_feed,
        },
    )
}

impl Feeds {
    /// Drives a feed that triggers nothing, so its store stays current.
    pub fn drive<K: Send + 'static>(feed: Feed<K>) -> impl Future<Output = ()> + Send {
        feed.for_each(|_| std::future::ready(()))
    }
}

/// Every scope's stores; a namespace's objects are in exactly one of them.
#[derive(Clone, Default)]
pub struct Cache {
    scopes: Vec<Stores>,
}

/// How long a reconcile waits for the first LIST of every store before it gives up (and is
/// retried with backoff, counted as `cache_not_ready`).
const READY_WAIT: Duration = Duration::from_secs(30);

impl Cache {
    pub fn new(scopes: Vec<Stores>) -> Self {
        Self { scopes }
    }

    /// Waits until every store has been filled once (or [`READY_WAIT`] passed). Returns
    /// whether they were.
    pub async fn ready(&self) -> bool {
        let all = self.scopes.iter().map(|s| async move {
            s.stateful_sets.wait_until_ready().await.is_ok()
                && s.config_maps.wait_until_ready().await.is_ok()
                && s.services.wait_until_ready().await.is_ok()
                && s.pdbs.wait_until_ready().await.is_ok()
                && s.pods.wait_until_ready().await.is_ok()
        });
        tokio::time::timeout(READY_WAIT, futures::future::join_all(all))
            .await
            .is_ok_and(|r| r.into_iter().all(|ok| ok))
    }

    fn get<K>(&self, pick: impl Fn(&Stores) -> &Store<K>, ns: &str, name: &str) -> Option<Arc<K>>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let key = ObjectRef::new(name).within(ns);
        self.scopes.iter().find_map(|s| pick(s).get(&key))
    }

    pub fn stateful_set(&self, ns: &str, name: &str) -> Option<Arc<StatefulSet>> {
        self.get(|s| &s.stateful_sets, ns, name)
    }

    pub fn config_map(&self, ns: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.get(|s| &s.config_maps, ns, name)
    }

    pub fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
        self.get(|s| &s.services, ns, name)
    }

    pub fn pdb(&self, ns: &str, name: &str) -> Option<Arc<PodDisruptionBudget>> {
        self.get(|s| &s.pdbs, ns, name)
    }

    /// The worker pods of `job` in `ns`, terminating ones too, by name.
    pub fn pods(&self, ns: &str, job: &str) -> Vec<Pod> {
        let mut pods: Vec<Pod> = self
            .scopes
            .iter()
            .flat_map(|s| {
                s.pods.state_filter(|p| {
                    p.namespace().as_deref() == Some(ns)
                        && p.labels().get(JOB_LABEL).map(String::as_str) == Some(job)
                })
            })
            .map(|p| (*p).clone())
            .collect();
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        pods
    }
}
