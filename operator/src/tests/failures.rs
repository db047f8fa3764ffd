//! Worker restarts through the real `Controller` and the scripted API: a restarted pod yields
//! `restarts`, `lastFailure` with the offsets it resumes from and an Event; spending the
//! restart budget fails the job and scales its StatefulSet to zero until the restart
//! annotation gets a new value.

use std::time::Duration;

use http::Method;
use serde_json::{json, Value};

use super::controller::start_observed;
use crate::context::Settings;
use crate::fixtures::{self, DataObserver, Recorded};
use crate::metrics::Metrics;
use crate::tests::wc::{replicas, statuses, EVENTS, JOBS, PODS, STS, WAIT};

/// Events published: the first of a reason is created, repeats patch it (an event series).
fn events<'a>(r: &'a [Recorded], reason: &str) -> Vec<&'a Recorded> {
    r.iter()
        .filter(|x| {
            let repeat = x.method == Method::PATCH && x.path.starts_with(&format!("{EVENTS}/"));
            (x.is(&Method::POST, EVENTS) || repeat) && x.body["reason"] == reason
        })
        .collect()
}

/// Worker `i`'s pod after `restarts` restarts, the last with `message`.
fn pod(i: u32, restarts: u32, message: &str) -> Value {
    let last = if restarts == 0 {
        json!({})
    } else {
        json!({"terminated": {"exitCode": 1, "reason": "Error", "message": message,
                              "finishedAt": "2026-01-01T00:00:00Z"}})
    };
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": format!("wc-{i}"), "namespace": "default", "uid": format!("pod-{i}"),
                        "labels": {"app.kubernetes.io/name": "weir-worker", "weir.dev/job": "wc"}},
           "status": {"containerStatuses": [{
               "name": "worker", "image": "weir", "imageID": "", "ready": restarts == 0,
               "restartCount": restarts, "lastState": last}]}})
}

fn job(annotation: Option<&str>) -> Value {
    let mut spec = fixtures::spec();
    spec["restartPolicy"] = json!({"maxRestarts": 2, "window": "1h"});
    let mut job = fixtures::job("wc", 1, spec);
    if let Some(a) = annotation {
        job["metadata"]["annotations"] = json!({"weir.dev/restart": a});
    }
    job
}

#[tokio::test]
async fn restarts_are_recorded_and_a_spent_budget_fails_the_job_until_restarted() {
    // 8 partitions, 2 workers. The restarted worker 1 resumed partitions 1, 3, 5, 7 at 9600
    // and has committed a batch since: the group's offsets (10,000 + p) are past that.
    let parts: Vec<_> = (0..8).map(|p| (0, 20_000, Some(10_000 + p))).collect();
    let observer = DataObserver::new(Some(fixtures::topic("lines", &parts)));
    let worker = std::sync::Arc::new(super::progress::worker(1, 2));
    worker.resumed(
        [1, 3, 5, 7]
            .map(|partition| weir_contract::progress::ResumedAt {
                topic: "lines".into(),
                partition,
                offset: 9600,
            })
            .to_vec(),
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, http) = weir_worker::http::serve("127.0.0.1:0", worker, stop.clone())
        .await
        .unwrap();
    observer
        .workers
        .lock()
        .unwrap()
        .extend(["127.0.0.1:9".to_string(), addr.to_string()]);
    let settings = Settings {
        observe_every: Duration::from_millis(100),
        ..Settings::default()
    };
    let (server, token, run) = start_observed(
        job(None),
        Metrics::new().unwrap(),
        |_| {},
        observer,
        settings,
    );
    server.wait_for(WAIT, |r| !replicas(r).is_empty()).await;
    server.insert(PODS, pod(0, 0, ""));
    server.insert(PODS, pod(1, 1, "sink refused the batch: broker down"));

    let r = server
        .wait_for(WAIT, |r| !events(r, "WorkerRestarted").is_empty())
        .await;
    let s = server
        .wait_for(WAIT, |r| statuses(r).iter().any(|s| s["restarts"] == 1))
        .await;
    let s = statuses(&s)
        .into_iter()
        .find(|s| s["restarts"] == 1)
        .unwrap();
    let failure = &s["lastFailure"];
    assert_eq!(failure["worker"], 1);
    assert_eq!(failure["message"], "sink refused the batch: broker down");
    assert_eq!(failure["exitCode"], 1);
    let resumed: Vec<(i64, i64)> = failure["resumedFrom"]
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
    assert_eq!(
        resumed,
        [(1, 9600), (3, 9600), (5, 9600), (7, 9600)],
        "where the worker says it resumed, not where the group is now"
    );
    assert_eq!(s["restartBudget"]["used"], 1);
    assert_ne!(s["phase"], "Failed", "one restart is within the budget");
    let degraded = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap();
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "WorkersRestarted");
    let event = events(&r, "WorkerRestarted")[0];
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(
        event.body["note"],
        "worker 1 restarted (exit code 1): sink refused the batch: broker down; \
         resumed from lines/1@9600, lines/3@9600, lines/5@9600, lines/7@9600"
    );

    // Two more restarts: three within the hour, more than maxRestarts 2.
    server.insert(PODS, pod(1, 3, "sink refused the batch: disk full"));
    let r = server
        .wait_for(WAIT, |r| replicas(r).last() == Some(&0))
        .await;
    let s = server
        .wait_for(WAIT, |r| statuses(r).iter().any(|s| s["phase"] == "Failed"))
        .await;
    let failed = statuses(&s)
        .into_iter()
        .find(|s| s["phase"] == "Failed")
        .unwrap();
    assert_eq!(failed["restarts"], 3);
    let ready = &failed["conditions"][0];
    assert_eq!(
        (ready["type"].as_str(), ready["status"].as_str()),
        (Some("Ready"), Some("False"))
    );
    assert_eq!(ready["reason"], "RestartBudgetSpent");
    assert_eq!(
        failed["stopped"]["reason"],
        "3 worker restarts within 1h, more than restartPolicy.maxRestarts 2"
    );
    assert_eq!(failed["workers"]["desired"], 0);
    let restarted = events(&r, "WorkerRestarted");
    assert_eq!(restarted.len(), 2, "one Event per new restart seen");
    // Each restart with its own cause is an Event of its own (kube's recorder alone would
    // fold the second into the first one's series and show only the first cause).
    assert!(
        restarted.iter().all(|e| e.is(&Method::POST, EVENTS)),
        "two Events, not a series"
    );
    let notes: Vec<&str> = restarted
        .iter()
        .map(|e| e.body["note"].as_str().unwrap())
        .collect();
    assert!(notes[0].contains("broker down"), "{notes:?}");
    assert!(notes[1].contains("disk full"), "{notes:?}");
    let r = server
        .wait_for(WAIT, |r| !events(r, "RestartBudgetSpent").is_empty())
        .await;
    let note = events(&r, "RestartBudgetSpent")[0].body["note"].clone();
    assert!(
        note.as_str()
            .unwrap()
            .ends_with("set the weir.dev/restart annotation to a new value to start again"),
        "{note}"
    );

    // The workers exit; the job stays stopped through several observations (nothing is
    // applied again: the stopped StatefulSet is what the job wants).
    let stopped_at = replicas(&server.requests()).len();
    server.remove(PODS, "wc-0");
    server.remove(PODS, "wc-1");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let since = replicas(&server.requests()).split_off(stopped_at);
    assert!(since.iter().all(|n| *n == 0), "still stopped: {since:?}");
    assert_eq!(server.object(STS).unwrap()["spec"]["replicas"], 0);

    server.push_event(JOBS, "MODIFIED", job(Some("1"))).await;
    let r = server
        .wait_for(WAIT, |r| replicas(r).last() == Some(&2))
        .await;
    token.cancel();
    run.await.unwrap();
    stop.cancel();
    http.await.unwrap();
    assert_eq!(events(&r, "Resumed").len(), 1);
    let last = statuses(&r).pop().unwrap();
    assert_ne!(last["phase"], "Failed");
    assert!(last["stopped"].is_null(), "{last}");
    assert_eq!(last["restarts"], 3, "the count of the job's life stays");
}
