//! A stalled worker through the real `Controller` and the scripted API: records wait on its
//! partitions and its commits do not move, so the job turns Stalled and the operator deletes
//! the worker's pod (the StatefulSet starts it again from its committed offsets), counting it
//! as a restart.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use weir_worker::progress::ResumedAt;

use super::controller::start_observed;
use crate::controller::Settings;
use crate::fixtures::{self, DataObserver, Recorded};
use crate::metrics::Metrics;
use crate::tests::wc::{statuses, EVENTS, PODS, STS, WAIT};

fn event_reasons(r: &[Recorded]) -> Vec<String> {
    r.iter()
        .filter(|x| x.is(&Method::POST, EVENTS))
        .map(|x| x.body["reason"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn ready_pod(i: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("wc-{i}"), "namespace": "default", "uid": format!("pod-{i}"),
                        "labels": {"app.kubernetes.io/name": "weir-worker", "weir.dev/job": "wc"}},
           "status": {"containerStatuses": [{
               "name": "worker", "image": "weir", "imageID": "", "ready": true, "restartCount": 0}]}})
}

/// Rows of the status's `lastFailure.resumedFrom` (absent or empty: 0).
fn resumed_rows(status: &Value) -> usize {
    status["lastFailure"]["resumedFrom"]
        .as_array()
        .map_or(0, Vec::len)
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_stalled_worker_is_restarted_and_counted() {
    // Two workers. Worker 0 (partitions 0, 2) has caught up; worker 1 (1, 3) has 90 records
    // waiting on each partition and its commits never move.
    let observer = DataObserver::new(Some(fixtures::topic(
        "lines",
        &[
            (0, 100, Some(100)),
            (0, 100, Some(10)),
            (0, 100, Some(100)),
            (0, 100, Some(10)),
        ],
    )));
    // Worker 1 answers and claims to run batches (its last one read nothing): a stall. Worker
    // 0 does not answer, for less than its retry bound: not judged yet.
    let claims = Arc::new(super::progress::worker(1, 2));
    claims.record(super::progress::batch(1, 5000, 0, 5, 0));
    let stop = CancellationToken::new();
    let (addr, http) = weir_worker::http::serve("127.0.0.1:0", claims, stop.clone())
        .await
        .unwrap();
    observer
        .workers
        .lock()
        .unwrap()
        .extend(["127.0.0.1:9".to_string(), addr.to_string()]);
    let mut spec = fixtures::spec();
    // Two observations of 100 ms cover two batches of 100 ms.
    spec["batchInterval"] = json!("100ms");
    let settings = Settings {
        observe_every: Duration::from_millis(100),
        stall_batches: 2,
        ..Settings::default()
    };
    let (server, token, run) = start_observed(
        fixtures::job("wc", 1, spec),
        Metrics::new().unwrap(),
        |_| {},
        observer.clone(),
        settings,
    );
    server
        .wait_for(WAIT, |r| r.iter().any(|x| x.is(&Method::PATCH, STS)))
        .await;
    server.insert(PODS, ready_pod(0));
    server.insert(PODS, ready_pod(1));
    // What the StatefulSet controller would report once both pods are ready.
    server.insert(
        "/apis/apps/v1/namespaces/default/statefulsets",
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"name": "wc", "namespace": "default"},
               "spec": {"replicas": 2}, "status": {"replicas": 2, "readyReplicas": 2}}),
    );

    let r = server
        .wait_for(WAIT, |r| {
            r.iter()
                .any(|x| x.is(&Method::DELETE, &format!("{PODS}/wc-1")))
        })
        .await;
    assert!(
        !r.iter()
            .any(|x| x.is(&Method::DELETE, &format!("{PODS}/wc-0"))),
        "the worker that keeps up is left alone"
    );
    // The new pod's worker says where it resumed.
    let resumed = Arc::new(super::progress::worker(1, 2));
    resumed.resumed(
        [1, 3]
            .map(|partition| ResumedAt {
                topic: "lines".into(),
                partition,
                offset: 10,
            })
            .to_vec(),
    );
    let (addr, http2) = weir_worker::http::serve("127.0.0.1:0", resumed, stop.clone())
        .await
        .unwrap();
    observer.workers.lock().unwrap()[1] = addr.to_string();
    let r = server
        .wait_for(WAIT, |r| {
            statuses(r)
                .iter()
                .any(|s| s["restarts"] == 1 && resumed_rows(s) > 0)
        })
        .await;
    token.cancel();
    run.await.unwrap();
    stop.cancel();
    http.await.unwrap();
    http2.await.unwrap();

    let s = statuses(&r)
        .into_iter()
        .find(|s| s["restarts"] == 1)
        .unwrap();
    let stalled = condition(&s, "Stalled");
    assert_eq!(stalled["status"], "True", "{s}");
    assert_eq!(
        stalled["message"],
        "worker 1: records wait and no offsets were committed for 2 observations"
    );
    assert_eq!(
        condition(&s, "Progressing")["reason"],
        "OffsetsNotAdvancing"
    );
    assert_eq!(condition(&s, "Degraded")["status"], "True");
    let failure = &s["lastFailure"];
    assert_eq!(failure["worker"], 1);
    assert!(
        failure["message"]
            .as_str()
            .unwrap()
            .starts_with("worker 1 stalled"),
        "{failure}"
    );
    assert_eq!(resumed_rows(&s), 0, "until the new run says: {failure}");
    let filled = statuses(&r)
        .into_iter()
        .find(|s| resumed_rows(s) > 0)
        .unwrap();
    let resumed: Vec<(i64, i64)> = filled["lastFailure"]["resumedFrom"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["partition"].as_i64().unwrap(),
                o["offset"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(resumed, [(1, 10), (3, 10)]);
    let reasons = event_reasons(&r);
    for reason in ["WorkerRestarted", "Stalled", "Degraded", "WorkerResumed"] {
        assert!(
            reasons.iter().any(|x| x == reason),
            "{reason} in {reasons:?}"
        );
    }
}
