//! `spec.suspend` through the real `Controller` and the scripted API: the StatefulSet goes to
//! zero and the job shows Suspended; clearing it brings back the worker count.

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use super::controller::start_wc;
use crate::context::Settings;
use crate::fixtures::{self, DataObserver, Recorded};
use crate::tests::wc::{pod, replicas, JOBS, PODS, STATUS, WAIT};

fn last_status(r: &[Recorded]) -> Value {
    r.iter()
        .rev()
        .find(|x| x.is(&Method::PATCH, STATUS))
        .map(|x| x.body["status"].clone())
        .unwrap_or_default()
}

fn job(generation: i64, suspend: bool) -> Value {
    let mut spec = fixtures::spec();
    spec["suspend"] = json!(suspend);
    fixtures::job("wc", generation, spec)
}

#[tokio::test]
async fn suspend_scales_to_zero_and_resume_restores_the_count() {
    // 12 partitions / 4 per worker: 3 workers.
    let observer = DataObserver::new(Some(fixtures::topic("lines", &[(0, 10, Some(5)); 12])));
    let settings = Settings {
        observe_every: Duration::from_millis(100),
        ..Settings::default()
    };
    let (server, token, run) = start_wc(&observer, settings);
    server
        .wait_for(WAIT, |r| replicas(r).last() == Some(&3))
        .await;
    for i in 0..3 {
        server.insert(PODS, pod(i));
    }

    server.push_event(JOBS, "MODIFIED", job(2, true)).await;
    let r = server
        .wait_for(WAIT, |r| {
            replicas(r).last() == Some(&0) && last_status(r)["observedGeneration"] == 2
        })
        .await;
    let s = last_status(&r);
    assert_eq!(s["phase"], "Suspended");
    assert_eq!(s["workers"]["desired"], 0);
    assert_eq!(s["conditions"][0]["reason"], "Suspended");

    // The workers commit and exit; then the job is resumed.
    for i in 0..3 {
        server.remove(PODS, &format!("wc-{i}"));
    }
    server.push_event(JOBS, "MODIFIED", job(3, false)).await;
    let r = server
        .wait_for(WAIT, |r| {
            replicas(r).last() == Some(&3) && last_status(r)["observedGeneration"] == 3
        })
        .await;
    token.cancel();
    run.await.unwrap();
    let s = last_status(&r);
    assert_eq!(s["workers"]["desired"], 3);
    assert_ne!(s["phase"], "Suspended");
}
