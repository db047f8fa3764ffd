//! The real `Controller` against the scripted API server: the requests a real API server
//! would receive for a new job, a changed job and an invalid job.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::context::{Context, Settings};
use crate::controller;
use crate::desired::CONFIG_HASH_ANNOTATION;
use crate::fixtures::{self, ApiServer, DataObserver, Recorded};
use crate::metrics::Metrics;

const JOBS: &str = "/apis/weir.dev/v1alpha1/namespaces/default/streamingjobs";
const CM: &str = "/api/v1/namespaces/default/configmaps/wc";
const SVC: &str = "/api/v1/namespaces/default/services/wc";
const STS: &str = "/apis/apps/v1/namespaces/default/statefulsets/wc";
const PDB: &str = "/apis/policy/v1/namespaces/default/poddisruptionbudgets/wc";
const STATUS: &str = "/apis/weir.dev/v1alpha1/namespaces/default/streamingjobs/wc/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const WAIT: Duration = Duration::from_secs(20);

/// Starts the controller on a scripted server holding `job`, with brokers it cannot reach.
fn start(job: Value) -> (ApiServer, CancellationToken, tokio::task::JoinHandle<()>) {
    start_with(job, Metrics::new().unwrap(), |_| {})
}

/// As [`start`], with the metrics to assert on and failures scripted before the first request.
fn start_with(
    job: Value,
    metrics: Metrics,
    script: impl FnOnce(&ApiServer),
) -> (ApiServer, CancellationToken, tokio::task::JoinHandle<()>) {
    start_observed(
        job,
        metrics,
        script,
        DataObserver::new(None),
        Settings::default(),
    )
}

/// As [`start_with`], with Kafka's answers and the operator's settings.
pub(super) fn start_observed(
    job: Value,
    metrics: Metrics,
    script: impl FnOnce(&ApiServer),
    observer: Arc<DataObserver>,
    settings: Settings,
) -> (ApiServer, CancellationToken, tokio::task::JoinHandle<()>) {
    let (client, server) = fixtures::start();
    server.insert(JOBS, job);
    script(&server);
    let ctx = Arc::new(Context::new(client, settings, metrics).with_observer(observer));
    let token = CancellationToken::new();
    let run = tokio::spawn(controller::run(ctx, token.clone()));
    (server, token, run)
}

/// A plain word-count job against the given Kafka answers: the observed tests' common start.
pub(super) fn start_wc(
    observer: &Arc<DataObserver>,
    settings: Settings,
) -> (ApiServer, CancellationToken, tokio::task::JoinHandle<()>) {
    start_observed(
        fixtures::job("wc", 1, fixtures::spec()),
        Metrics::new().unwrap(),
        |_| {},
        observer.clone(),
        settings,
    )
}

async fn stop(token: CancellationToken, run: tokio::task::JoinHandle<()>) {
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the controller stops when cancelled")
        .unwrap();
}

fn applies<'a>(r: &'a [Recorded], path: &str) -> Vec<&'a Recorded> {
    r.iter().filter(|r| r.is(&Method::PATCH, path)).collect()
}

fn status_patches(r: &[Recorded]) -> Vec<&Recorded> {
    r.iter().filter(|r| r.is(&Method::PATCH, STATUS)).collect()
}

fn assert_server_side_apply(r: &Recorded) {
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/apply-patch+yaml"),
        "{}",
        r.path
    );
    assert!(
        r.query
            .split('&')
            .any(|q| q == "fieldManager=weir-operator"),
        "{}?{}",
        r.path,
        r.query
    );
    assert!(
        r.query.split('&').any(|q| q == "force=true"),
        "{}?{}",
        r.path,
        r.query
    );
}

fn pod_hash(sts_apply: &Recorded) -> String {
    sts_apply.body["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn new_job_applies_its_children_then_writes_status() {
    let (server, token, run) = start(fixtures::job("wc", 1, fixtures::spec()));
    let r = server
        .wait_for(WAIT, |r| !status_patches(r).is_empty())
        .await;
    stop(token, run).await;

    let position = |path: &str| {
        r.iter()
            .position(|x| x.is(&Method::PATCH, path))
            .unwrap_or_else(|| panic!("no PATCH {path}"))
    };
    let order = [CM, SVC, STS, PDB, STATUS].map(position);
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "ConfigMap, Service, StatefulSet, PDB, then status: {order:?}"
    );

    for (path, kind) in [
        (CM, "ConfigMap"),
        (SVC, "Service"),
        (STS, "StatefulSet"),
        (PDB, "PodDisruptionBudget"),
    ] {
        let apply = applies(&r, path)[0];
        assert_server_side_apply(apply);
        assert_eq!(apply.body["kind"], kind);
        let owner = &apply.body["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "StreamingJob");
        assert_eq!(owner["uid"], "uid-wc");
        assert_eq!(owner["controller"], true);
    }
    let sts = applies(&r, STS)[0];
    assert_eq!(
        sts.body["spec"]["replicas"], 2,
        "workers.min = 2 until partitions are known"
    );
    let cm = applies(&r, CM)[0];
    assert!(cm.body["data"]["job.yaml"]
        .as_str()
        .unwrap()
        .contains("flatMap: value.split(' ')"));

    let status = &status_patches(&r)[0].body["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["workers"]["desired"], 2);
    assert_eq!(status["phase"], "Pending");
    assert_eq!(
        status["selector"],
        "app.kubernetes.io/name=weir-worker,weir.dev/job=wc"
    );
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "False");
    // The brokers cannot be reached: Progressing says nothing is known, and one Warning says why.
    let progressing = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap();
    assert_eq!(progressing["status"], "Unknown");
    assert_eq!(progressing["reason"], "KafkaUnreachable");
    let events: Vec<&Recorded> = r.iter().filter(|x| x.method == Method::POST).collect();
    assert_eq!(events.len(), 1, "one event, for the unreachable brokers");
    assert_eq!(events[0].body["type"], "Warning");
    assert_eq!(events[0].body["reason"], "KafkaUnreachable");
}

#[tokio::test]
async fn changed_job_is_reapplied_and_observed_generation_moves() {
    let (server, token, run) = start(fixtures::job("wc", 1, fixtures::spec()));
    server
        .wait_for(WAIT, |r| !status_patches(r).is_empty())
        .await;

    let mut spec = fixtures::spec();
    spec["pipeline"]
        .as_array_mut()
        .unwrap()
        .insert(1, json!({"id": "non-empty", "filter": "item != ''"}));
    spec["workers"]["replicas"] = json!(3);
    server
        .push_event(JOBS, "MODIFIED", fixtures::job("wc", 2, spec))
        .await;
    let r = server
        .wait_for(WAIT, |r| {
            status_patches(r)
                .iter()
                .any(|p| p.body["status"]["observedGeneration"] == 2)
        })
        .await;
    stop(token, run).await;

    let cms = applies(&r, CM);
    let stss = applies(&r, STS);
    assert_eq!((cms.len(), stss.len()), (2, 2), "one apply per generation");
    let new_cm = cms[1].body["data"]["job.yaml"].as_str().unwrap();
    assert!(
        new_cm.contains("non-empty")
            && !cms[0].body["data"]["job.yaml"]
                .as_str()
                .unwrap()
                .contains("non-empty")
    );
    assert_ne!(
        pod_hash(stss[0]),
        pod_hash(stss[1]),
        "the new job file rolls the pods"
    );
    assert_eq!(stss[1].body["spec"]["replicas"], 3);
    assert_server_side_apply(stss[1]);
    let last = status_patches(&r).last().unwrap().body["status"].clone();
    assert_eq!(last["observedGeneration"], 2);
    assert_eq!(last["workers"]["desired"], 3);
    assert_eq!(last["conditions"][0]["observedGeneration"], 2);
}

#[tokio::test]
async fn invalid_job_gets_ready_false_and_an_event_and_no_children() {
    let mut spec = fixtures::spec();
    // 7s is not a multiple of the 5s batch interval: the CRD's CEL rule would refuse it, the
    // controller must too (objects can predate the rule, or come from a cluster without it).
    spec["pipeline"][2]["window"] = json!({"length": "7s"});
    let (server, token, run) = start(fixtures::job("wc", 1, spec));
    let r = server
        .wait_for(WAIT, |r| r.iter().any(|x| x.is(&Method::POST, EVENTS)))
        .await;
    stop(token, run).await;

    let status = &status_patches(&r)[0].body["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["phase"], "Failed");
    let ready = &status["conditions"][0];
    assert_eq!(
        (ready["type"].as_str(), ready["status"].as_str()),
        (Some("Ready"), Some("False"))
    );
    assert_eq!(ready["reason"], "InvalidSpec");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "spec.pipeline[2].window.length: 7s is not a multiple of batchInterval 5s"
        ),
        "{message}"
    );

    let event = r.iter().find(|x| x.is(&Method::POST, EVENTS)).unwrap();
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["reason"], "InvalidSpec");
    assert_eq!(event.body["regarding"]["name"], "wc");
    assert_eq!(event.body["regarding"]["kind"], "StreamingJob");
    assert_eq!(event.body["note"], message);

    for path in [CM, SVC, STS, PDB] {
        assert!(applies(&r, path).is_empty(), "nothing applied to {path}");
    }
}

#[tokio::test]
async fn unchanged_status_is_not_written_again() {
    let (server, token, run) = start(fixtures::job("wc", 1, fixtures::spec()));
    let r = server
        .wait_for(WAIT, |r| !status_patches(r).is_empty())
        .await;
    let status = status_patches(&r)[0].body["status"].clone();
    // The job as the watch would deliver it after our own status write.
    let mut job = fixtures::job("wc", 1, fixtures::spec());
    job["status"] = status;
    let before = server.requests().len();
    server.push_event(JOBS, "MODIFIED", job).await;
    // Let the second reconcile run to its end before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(token, run).await;
    let r2 = server.requests();
    assert_eq!(
        status_patches(&r2).len(),
        1,
        "same observations, no second status write: {:#?}",
        status_patches(&r2)
            .iter()
            .map(|p| p.body.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        applies(&r2, STS).len(),
        1,
        "children as the watch cache holds them: nothing applied again"
    );
    let writes: Vec<String> = r2[before..]
        .iter()
        .filter(|x| x.method != Method::GET)
        .map(|x| format!("{} {}", x.method, x.path))
        .collect();
    assert!(writes.is_empty(), "no request at all: {writes:?}");
}

#[tokio::test]
async fn api_errors_are_retried_after_a_backoff_and_counted() {
    let metrics = Metrics::new().unwrap();
    let (server, token, run) = start_with(
        fixtures::job("wc", 1, fixtures::spec()),
        metrics.clone(),
        |s| {
            // Twice: the first pass's ConfigMap and Service are watch events that start the
            // second pass at once (as on a real server); the third waits out the backoff.
            s.fail(
                Method::PATCH,
                STS,
                http::StatusCode::INTERNAL_SERVER_ERROR,
                2,
            );
        },
    );
    let r = server
        .wait_for(WAIT, |r| !status_patches(r).is_empty())
        .await;
    stop(token, run).await;

    let stss = applies(&r, STS);
    assert_eq!(stss.len(), 3, "the failed apply is retried");
    let waited = stss[2].at - stss[1].at;
    // Less the tenth the jitter may take off.
    let second = crate::requeue::backoff(crate::ErrorClass::Transient, 2) * 9 / 10;
    assert!(
        waited >= second,
        "retried after {waited:?}, before the {second:?} backoff"
    );
    assert!(
        applies(&r, PDB).len() == 1,
        "children after the failed one wait for the retry"
    );
    assert!(
        crate::tests::wc::reconcile_errors(&metrics.render(), Some("kube")) >= 1.0,
        "{}",
        metrics.render()
    );
}

#[tokio::test]
async fn a_throttled_request_pauses_every_reconcile_for_as_long_as_the_server_asks() {
    let metrics = Metrics::new().unwrap();
    let (server, token, run) = start_with(
        fixtures::job("wc", 1, fixtures::spec()),
        metrics.clone(),
        |s| s.fail(Method::PATCH, STS, http::StatusCode::TOO_MANY_REQUESTS, 1),
    );
    let r = server
        .wait_for(WAIT, |r| !status_patches(r).is_empty())
        .await;
    stop(token, run).await;
    let stss = applies(&r, STS);
    assert_eq!(stss.len(), 2, "the throttled apply is retried");
    // The first pass's ConfigMap and Service are watch events that start the next pass at
    // once; it still waits out the second the server asked for.
    let waited = stss[1].at - stss[0].at;
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, before the server's retryAfterSeconds"
    );
    assert!(
        crate::tests::wc::reconcile_errors(&metrics.render(), Some("throttled")) >= 1.0,
        "{}",
        metrics.render()
    );
}

#[test]
fn a_child_is_the_same_when_the_server_only_added_to_it() {
    use crate::apply::covers;
    let want = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
        {"name": "worker", "image": "weir:1", "ports": [{"containerPort": 8080}]}]}}}});
    // What the API server holds: defaults and status added.
    let have = json!({"metadata": {"uid": "u", "generation": 3},
        "spec": {"replicas": 2, "revisionHistoryLimit": 10, "template": {"spec": {"containers": [
        {"name": "worker", "image": "weir:1", "imagePullPolicy": "IfNotPresent",
         "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]}}},
        "status": {"replicas": 2}});
    assert!(covers(&have, &want));
    let mut edited = have.clone();
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("someone-else:2");
    assert!(!covers(&edited, &want), "a hand edit is repaired");
    let mut more = have.clone();
    more["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array_mut()
        .unwrap()
        .push(json!({"containerPort": 9090}));
    assert!(!covers(&more, &want), "lists must match in length");
    let mut scaled = want.clone();
    scaled["spec"]["replicas"] = json!(3);
    assert!(!covers(&have, &scaled), "a new desired value is applied");
}

#[tokio::test]
async fn a_hand_edited_child_is_applied_again_at_once() {
    let (server, token, run) = start(fixtures::job("wc", 1, fixtures::spec()));
    server.wait_for(WAIT, |r| applies(r, STS).len() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // `kubectl edit sts wc`: the watch tells the operator, whose store now differs.
    let mut edited = server.object(STS).unwrap();
    edited["spec"]["replicas"] = json!(7);
    server.insert("/apis/apps/v1/namespaces/default/statefulsets", edited);
    let r = server.wait_for(WAIT, |r| applies(r, STS).len() == 2).await;
    stop(token, run).await;
    assert_ne!(
        applies(&r, STS)[1].body["spec"]["replicas"],
        7,
        "the job's own count is applied back"
    );
}
