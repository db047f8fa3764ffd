//! A stalled worker through the real `Controller` and the scripted API: records wait on its
//! partitions and its commits do not move, so the job turns Stalled and the operator deletes
//! the worker's pod (the StatefulSet starts it again from its committed offsets), counting it
//! as a restart.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use weir_contract::progress::ResumedAt;

use super::controller::start_observed;
use crate::context::Settings;
use crate::fixtures::{self, DataObserver, Recorded};
use crate::metrics::Metrics;
use crate::tests::wc::{free_port, refused_port, statuses, worker_binary, EVENTS, PODS, STS, WAIT};

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
    let message = stalled["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("worker 1: records wait and no offsets were committed for ")
            && message.ends_with("ms"),
        "for 2 batches of 100 ms at least: {message}"
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

#[tokio::test]
async fn a_worker_that_cannot_reach_kafka_is_not_stalled_and_its_own_words_are_its_last_failure() {
    // The operator reads Kafka; worker 1 cannot (nothing listens where its job points). It is
    // a real worker process, whose /progress the operator reads as it reads a pod's.
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.yaml");
    let (_held, refused) = refused_port();
    std::fs::write(
        &job,
        format!(
            "batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: '127.0.0.1:{refused}', topics: [lines], \
             retries: {{maxRetries: 1, backoff: 100ms}}}}}}\nsink: {{stdout: {{}}}}\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("termination-log");
    let http = format!("127.0.0.1:{}", free_port());
    let mut child = tokio::process::Command::new(worker_binary())
        .arg("run")
        .arg(&job)
        .args(["--http-addr", &http, "--worker", "1", "--workers", "2"])
        .arg("--termination-log")
        .arg(&log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the worker");

    // Worker 1's partitions (1, 3) wait and its commits never move; worker 0 has caught up.
    let observer = DataObserver::new(Some(fixtures::topic(
        "lines",
        &[
            (0, 100, Some(100)),
            (0, 100, Some(10)),
            (0, 100, Some(100)),
            (0, 100, Some(10)),
        ],
    )));
    let caught_up = Arc::new(super::progress::worker(0, 2));
    caught_up.record(super::progress::batch(1, 5000, 0, 5, 0));
    let stop = CancellationToken::new();
    let (addr, served) = weir_worker::http::serve("127.0.0.1:0", caught_up, stop.clone())
        .await
        .unwrap();
    observer
        .workers
        .lock()
        .unwrap()
        .extend([addr.to_string(), http.clone()]);
    let mut spec = fixtures::spec();
    spec["batchInterval"] = json!("100ms");
    // The worker's own bound, as the operator reads it from the spec.
    spec["source"]["kafka"]["retries"] = json!({"maxRetries": 1, "backoff": "100ms"});
    let settings = Settings {
        observe_every: Duration::from_millis(100),
        stall_batches: 2,
        ..Settings::default()
    };
    let (server, token, run) = start_observed(
        fixtures::job("wc", 1, spec),
        Metrics::new().unwrap(),
        |_| {},
        observer,
        settings,
    );
    server
        .wait_for(WAIT, |r| r.iter().any(|x| x.is(&Method::PATCH, STS)))
        .await;
    // Ready pods (a readiness probe may lag): only the verdict keeps worker 1's pod.
    server.insert(PODS, ready_pod(0));
    server.insert(PODS, ready_pod(1));
    server.insert(
        "/apis/apps/v1/namespaces/default/statefulsets",
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"name": "wc", "namespace": "default"},
               "spec": {"replicas": 2}, "status": {"replicas": 2, "readyReplicas": 2}}),
    );

    // It connects (one request timeout), then retries, then gives up: about 20 s, far more
    // than the 2 observations that make a worker stalled.
    let code = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the worker gives up within its retries")
        .expect("the worker's exit");
    assert_eq!(code.code(), Some(1));
    let words = std::fs::read_to_string(&log).expect("the termination message");
    assert!(!words.contains('\u{1b}'), "no colour codes: {words:?}");
    assert!(
        words.contains("127.0.0.1") && words.contains("nothing accepts connections"),
        "the real cause: {words}"
    );
    let r = server.requests();
    assert!(
        !r.iter()
            .any(|x| x.is(&Method::DELETE, &format!("{PODS}/wc-1"))),
        "a worker that says it is retrying is not restarted"
    );
    let retrying: Vec<&Recorded> = r
        .iter()
        .filter(|x| x.is(&Method::POST, EVENTS) && x.body["reason"] == "WorkerRetrying")
        .collect();
    assert_eq!(retrying.len(), 1, "one Event per retry episode");
    let note = retrying[0].body["note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("worker 1 is retrying the Kafka brokers")
            && note.contains("reading topic metadata failed"),
        "{note}"
    );
    assert!(
        statuses(&r).iter().any(|s| {
            condition(s, "Degraded")["reason"] == "WorkersRetrying"
                && condition(s, "Stalled")["status"] == "False"
        }),
        "Degraded says why, Stalled does not claim a stall"
    );

    // Kubernetes restarts the container and keeps what the worker wrote.
    let mut crashed = ready_pod(1);
    crashed["status"]["containerStatuses"][0]["restartCount"] = json!(1);
    crashed["status"]["containerStatuses"][0]["lastState"] = json!({"terminated": {
        "exitCode": 1, "reason": "Error", "message": words,
        "finishedAt": "2026-01-01T00:00:00Z"}});
    server.insert(PODS, crashed);
    let r = server
        .wait_for(WAIT, |r| statuses(r).iter().any(|s| s["restarts"] == 1))
        .await;
    token.cancel();
    run.await.unwrap();
    stop.cancel();
    served.await.unwrap();
    let s = statuses(&r)
        .into_iter()
        .find(|s| s["restarts"] == 1)
        .unwrap();
    assert_eq!(s["lastFailure"]["message"], words.trim(), "{s}");
    assert_eq!(s["lastFailure"]["exitCode"], 1);
}

#[tokio::test]
async fn an_oom_killed_worker_says_so_in_its_last_failure() {
    let observer = DataObserver::new(Some(fixtures::topic("lines", &[(0, 100, Some(100))])));
    let settings = Settings {
        observe_every: Duration::from_millis(100),
        ..Settings::default()
    };
    let (server, token, run) = start_observed(
        fixtures::job("wc", 1, fixtures::spec()),
        Metrics::new().unwrap(),
        |_| {},
        observer,
        settings,
    );
    server
        .wait_for(WAIT, |r| r.iter().any(|x| x.is(&Method::PATCH, STS)))
        .await;
    let mut killed = ready_pod(0);
    killed["status"]["containerStatuses"][0]["restartCount"] = json!(1);
    // The kubelet's fallback: the log's tail, colour codes and all.
    killed["status"]["containerStatuses"][0]["lastState"] = json!({"terminated": {
        "exitCode": 137, "reason": "OOMKilled",
        "message": "\u{1b}[2m2026-01-01T00:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m batch done\n"}});
    server.insert(PODS, killed);
    let r = server
        .wait_for(WAIT, |r| statuses(r).iter().any(|s| s["restarts"] == 1))
        .await;
    token.cancel();
    run.await.unwrap();
    let s = statuses(&r)
        .into_iter()
        .find(|s| s["restarts"] == 1)
        .unwrap();
    let message = s["lastFailure"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("OOMKilled: the worker used more memory than its limit")
            && message.contains("spec.resources.limits.memory")
            && !message.contains('\u{1b}'),
        "{message}"
    );
    assert_eq!(s["lastFailure"]["exitCode"], 137);
}
