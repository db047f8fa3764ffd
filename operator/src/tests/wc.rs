//! The scripted API's paths for the job "wc" in namespace default, and readers of what the
//! controller sent there, and the processes and ports the tests start: shared by the controller
//! tests.

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use crate::fixtures::Recorded;

pub const JOBS: &str = "/apis/weir.dev/v1alpha1/namespaces/default/streamingjobs";
pub const STS: &str = "/apis/apps/v1/namespaces/default/statefulsets/wc";
pub const PODS: &str = "/api/v1/namespaces/default/pods";
pub const STATUS: &str = "/apis/weir.dev/v1alpha1/namespaces/default/streamingjobs/wc/status";
pub const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
/// How long a test waits for the controller to do something.
pub const WAIT: Duration = Duration::from_secs(20);

/// Every status the controller patched onto wc, in order.
pub fn statuses(r: &[Recorded]) -> Vec<Value> {
    r.iter()
        .filter(|x| x.is(&Method::PATCH, STATUS))
        .map(|x| x.body["status"].clone())
        .collect()
}

/// The StatefulSet's replicas in each apply the controller sent, in order.
pub fn replicas(r: &[Recorded]) -> Vec<i64> {
    r.iter()
        .filter(|x| x.is(&Method::PATCH, STS))
        .map(|x| x.body["spec"]["replicas"].as_i64().unwrap())
        .collect()
}

/// A worker pod of wc as the API server lists it.
pub fn pod(i: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("wc-{i}"), "namespace": "default", "uid": format!("pod-{i}"),
                        "labels": {"app.kubernetes.io/name": "weir-worker", "weir.dev/job": "wc"}}})
}

/// Failed reconciles counted under `error` (all kinds when `None`) in the operator's
/// `/metrics` text: every kind has a series from the start, at 0.
pub fn reconcile_errors(text: &str, error: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("weir_operator_reconcile_errors_total{"))
        .filter(|l| error.is_none_or(|e| l.contains(&format!("error=\"{e}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The worker binary of this workspace, beside the test executable.
pub fn worker_binary() -> std::path::PathBuf {
    weir_testkit::tools::workspace_binary("weir-worker")
}

/// The operator binary of this workspace, beside the test executable. `cargo test` builds no
/// binary of this crate (it has no integration tests): `scripts/test.sh` builds it first.
pub fn operator_binary() -> std::path::PathBuf {
    weir_testkit::tools::workspace_binary("weir-operator")
}

pub use weir_testkit::{free_port, refused_port};
