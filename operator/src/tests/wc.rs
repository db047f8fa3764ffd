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

/// The worker binary of this workspace, beside the test executable (`cargo test --workspace`
/// builds it, as `scripts/test.sh` runs it).
pub fn worker_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the target directory")
        .join("weir-worker");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p weir-worker` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The operator binary of this workspace, beside the test executable. `cargo test` builds no
/// binary of this crate (it has no integration tests): `scripts/test.sh` builds it first.
pub fn operator_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the target directory")
        .join("weir-operator");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p weir-operator` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A loopback port where every connection is refused while the socket lives (bound, not
/// listening: nothing else can start a server there meanwhile).
pub fn refused_port() -> (socket2::Socket, u16) {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("an address");
    s.bind(&any.into()).expect("bind");
    let port = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("the bound address")
        .port();
    (s, port)
}
