//! The scripted API's paths for the job "wc" in namespace default, and readers of what the
//! controller sent there: shared by the controller tests.

use std::time::Duration;

use http::Method;
use serde_json::Value;

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
