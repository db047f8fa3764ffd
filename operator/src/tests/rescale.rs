//! A grown topic rescales through zero: the StatefulSet first goes to zero and stays there
//! while any worker pod exists, then goes to the new count, whose pods know it.

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use super::controller::start_wc;
use crate::context::Settings;
use crate::fixtures::{self, DataObserver, Recorded};

const STS: &str = "/apis/apps/v1/namespaces/default/statefulsets/wc";
const PODS: &str = "/api/v1/namespaces/default/pods";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const WAIT: Duration = Duration::from_secs(20);

fn sts_applies(r: &[Recorded]) -> Vec<&Recorded> {
    r.iter().filter(|x| x.is(&Method::PATCH, STS)).collect()
}

fn replicas(r: &[Recorded]) -> Vec<i64> {
    sts_applies(r)
        .iter()
        .map(|x| x.body["spec"]["replicas"].as_i64().unwrap())
        .collect()
}

fn workers_env(apply: &Recorded) -> Value {
    let env = apply.body["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    env.iter().find(|e| e["name"] == "WEIR_WORKERS").unwrap()["value"].clone()
}

fn pod(i: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("wc-{i}"), "namespace": "default",
                        "labels": {"app.kubernetes.io/name": "weir-worker", "weir.dev/job": "wc"}}})
}

fn lines(n: usize) -> crate::observation::KafkaObservation {
    fixtures::topic("lines", &vec![(0, 100, Some(100)); n])
}

#[tokio::test]
async fn a_grown_topic_rescales_through_zero_once_the_workers_are_gone() {
    let observer = DataObserver::new(Some(lines(8)));
    let settings = Settings {
        observe_every: Duration::from_millis(100),
        ..Settings::default()
    };
    let (server, token, run) = start_wc(&observer, settings);
    let r = server.wait_for(WAIT, |r| !sts_applies(r).is_empty()).await;
    assert_eq!(replicas(&r), [2], "a new job starts at its count at once");
    server.insert(PODS, pod(0));
    server.insert(PODS, pod(1));

    observer.set(Some(lines(20)));
    let r = server.wait_for(WAIT, |r| replicas(r).contains(&0)).await;
    // Several observation periods while the workers commit and exit: still zero.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let draining = server.requests();
    let since = replicas(&draining).split_off(replicas(&r).len());
    assert!(since.iter().all(|n| *n == 0), "{since:?}");
    assert_eq!(
        server.object(STS).unwrap()["spec"]["replicas"],
        0,
        "still zero while the workers exit"
    );
    let events: Vec<&Recorded> = draining
        .iter()
        .filter(|x| x.is(&Method::POST, EVENTS))
        .collect();
    assert_eq!(events.len(), 1, "one event when the drain starts");
    assert_eq!(events[0].body["reason"], "Rescaling");
    assert_eq!(
        events[0].body["note"],
        "stopping 2 workers to start 5: 20 partitions / 4 per worker = 5"
    );

    server.remove(PODS, "wc-1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        replicas(&server.requests()).last(),
        Some(&0),
        "one pod is left"
    );
    server.remove(PODS, "wc-0");
    let r = server
        .wait_for(WAIT, |r| replicas(r).last() == Some(&5))
        .await;
    token.cancel();
    run.await.unwrap();
    let last = *sts_applies(&r).last().unwrap();
    assert_eq!(
        workers_env(last),
        "5",
        "the new pods start with the new count"
    );
    let seen = replicas(&r);
    let first_five = seen.iter().position(|n| *n == 5).unwrap();
    assert!(seen[..first_five].ends_with(&[0]), "{seen:?}");
}
