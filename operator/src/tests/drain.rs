//! The `weir.dev/drain` finalizer through the real `Controller` and the scripted API: a new
//! job gets it before anything is applied; a deleted job's StatefulSet goes to zero and the
//! finalizer stays until no worker pod is left.

use std::time::Duration;

use http::Method;
use serde_json::json;

use super::controller::start_observed;
use crate::context::Settings;
use crate::fixtures::{self, DataObserver, Recorded};
use crate::metrics::Metrics;
use crate::tests::wc::{pod, EVENTS, JOBS, PODS, STS, WAIT};
const JOB: &str = "/apis/weir.dev/v1alpha1/namespaces/default/streamingjobs/wc";

fn json_patches(r: &[Recorded]) -> Vec<&Recorded> {
    r.iter()
        .filter(|x| {
            x.is(&Method::PATCH, JOB)
                && x.content_type.as_deref() == Some("application/json-patch+json")
        })
        .collect()
}

fn ops(patch: &Recorded) -> Vec<(String, String)> {
    patch
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|op| {
            (
                op["op"].as_str().unwrap().to_string(),
                op["path"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_deleted_job_drains_its_workers_before_its_finalizer_goes() {
    let mut job = fixtures::job("wc", 1, fixtures::spec());
    job["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("finalizers");
    let metrics = Metrics::new().unwrap();
    let observer = DataObserver::new(Some(fixtures::topic("lines", &[(0, 10, Some(10)); 8])));
    let settings = Settings {
        observe_every: Duration::from_millis(100),
        ..Settings::default()
    };
    let (server, token, run) = start_observed(job, metrics.clone(), |_| {}, observer, settings);
    let r = server
        .wait_for(WAIT, |r| r.iter().any(|x| x.is(&Method::PATCH, STS)))
        .await;
    let added = json_patches(&r);
    assert_eq!(added.len(), 1);
    assert_eq!(
        ops(added[0]),
        [
            ("test".into(), "/metadata/finalizers".into()),
            ("add".into(), "/metadata/finalizers".into())
        ]
    );
    assert_eq!(added[0].body[1]["value"], json!(["weir.dev/drain"]));
    let first_sts = r.iter().position(|x| x.is(&Method::PATCH, STS)).unwrap();
    let first_patch = r.iter().position(|x| x.is(&Method::PATCH, JOB)).unwrap();
    assert!(
        first_patch < first_sts,
        "the finalizer is set before any child exists"
    );
    server.insert(PODS, pod(0));
    server.insert(PODS, pod(1));

    server.delete(JOBS, "wc");
    let r = server
        .wait_for(WAIT, |r| {
            r.iter().any(|x| {
                x.is(&Method::PATCH, STS)
                    && x.content_type.as_deref() == Some("application/merge-patch+json")
                    && x.body["spec"]["replicas"] == 0
            })
        })
        .await;
    let draining: Vec<&Recorded> = r
        .iter()
        .filter(|x| x.is(&Method::POST, EVENTS) && x.body["reason"] == "Draining")
        .collect();
    assert_eq!(draining.len(), 1);
    assert_eq!(
        draining[0].body["note"],
        "job deleted: stopping 2 workers, each commits its batch before exiting"
    );
    // The workers are still committing: the finalizer stays through another drain step
    // (one comes every 2 s while pods are left).
    tokio::time::sleep(crate::requeue::backoff(crate::ErrorClass::Waiting, 1) * 3 / 2).await;
    let r = server.requests();
    assert_eq!(json_patches(&r).len(), 1, "the finalizer stays");

    server.remove(PODS, "wc-0");
    server.remove(PODS, "wc-1");
    let r = server.wait_for(WAIT, |r| json_patches(r).len() == 2).await;
    token.cancel();
    run.await.unwrap();
    let removed = json_patches(&r)[1];
    assert_eq!(
        ops(removed),
        [
            ("test".into(), "/metadata/finalizers/0".into()),
            ("remove".into(), "/metadata/finalizers/0".into())
        ]
    );
    let applies_after_delete = r
        .iter()
        .skip_while(|x| !(x.is(&Method::PATCH, STS) && x.body["spec"]["replicas"] == 0))
        .filter(|x| {
            x.is(&Method::PATCH, STS)
                && x.content_type.as_deref() == Some("application/apply-patch+yaml")
        })
        .count();
    assert_eq!(
        applies_after_delete, 0,
        "a deleted job's children are not applied again"
    );
    assert!(
        !metrics.render().contains("job=\"wc\""),
        "a deleted job's gauges go with it"
    );
}

#[tokio::test]
async fn a_finalizer_already_gone_with_its_job_is_not_a_failure() {
    let mut job = fixtures::job("wc", 1, fixtures::spec());
    job["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
    let metrics = Metrics::new().unwrap();
    let observer = DataObserver::new(Some(fixtures::topic("lines", &[(0, 10, Some(10)); 8])));
    // A racing reconcile removed the job first: the finalizer's removal finds nothing.
    let (server, token, run) = start_observed(
        job,
        metrics.clone(),
        |s| s.fail(Method::PATCH, JOB, http::StatusCode::NOT_FOUND, 1),
        observer,
        Settings::default(),
    );
    let r = server.wait_for(WAIT, |r| !json_patches(r).is_empty()).await;
    // Give a retry (which a failure would cause) the time to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel();
    run.await.unwrap();
    assert_eq!(ops(json_patches(&r)[0])[1].0, "remove");
    assert_eq!(
        json_patches(&server.requests()).len(),
        1,
        "a 404 on the finalizer's removal is not retried"
    );
    let text = metrics.render();
    assert_eq!(
        crate::tests::wc::reconcile_errors(&text, None),
        0.0,
        "{text}"
    );
}

#[tokio::test]
async fn a_job_in_a_namespace_being_deleted_is_not_applied_again_and_its_finalizer_completes() {
    let metrics = Metrics::new().unwrap();
    let observer = DataObserver::new(Some(fixtures::topic("lines", &[(0, 10, Some(10)); 8])));
    let settings = Settings {
        observe_every: Duration::from_millis(100),
        ..Settings::default()
    };
    let job = fixtures::job("wc", 1, fixtures::spec());
    let (server, token, run) = start_observed(job, metrics.clone(), |_| {}, observer, settings);
    server
        .wait_for(WAIT, |r| r.iter().any(|x| x.is(&Method::PATCH, STS)))
        .await;

    // `kubectl delete namespace default`: the namespace controller removes the StatefulSet
    // (a watch event for the job) before it gets to the job itself.
    server.terminate_namespace("default");
    let before = server.requests().len();
    server.remove("/apis/apps/v1/namespaces/default/statefulsets", "wc");
    // Ten observation periods.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tried: Vec<Recorded> = server.requests()[before..]
        .iter()
        .filter(|x| x.is(&Method::PATCH, STS))
        .cloned()
        .collect();
    assert!(
        tried.len() <= 1,
        "one refused create tells the operator; it does not try again: {} tries",
        tried.len()
    );
    assert!(server.object(STS).is_none(), "nothing was re-created");

    server.delete(JOBS, "wc");
    let r = server
        .wait_for(WAIT, |r| {
            json_patches(r)
                .iter()
                .any(|p| ops(p).iter().any(|(op, _)| op == "remove"))
        })
        .await;
    token.cancel();
    run.await.unwrap();
    assert!(server.object(JOB).is_none(), "the job is gone: {r:?}");
    let text = metrics.render();
    assert_eq!(
        crate::tests::wc::reconcile_errors(&text, None),
        0.0,
        "a terminating namespace is not a failure: {text}"
    );
}
