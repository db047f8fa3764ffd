//! The real `Controller` against the scripted API server with Kafka's answers as data: lag and
//! offsets reach the status patch, and partition counts set the workers, re-read every
//! observation period.

use std::time::Duration;

use http::Method;
use serde_json::Value;

use super::controller::{start_observed, start_wc};
use crate::context::Settings;
use crate::fixtures::{self, DataObserver, Recorded};
use crate::metrics::Metrics;
use crate::tests::wc::{statuses, JOBS, STS, WAIT};

fn sts_replicas(r: &[Recorded]) -> Vec<Value> {
    r.iter()
        .filter(|x| x.is(&Method::PATCH, STS))
        .map(|x| x.body["spec"]["replicas"].clone())
        .collect()
}

/// `n` partitions of "lines", each with 100 records; partition p committed at 10 * p.
fn lines(n: usize) -> crate::observation::KafkaObservation {
    let parts: Vec<_> = (0..n)
        .map(|p| (0, 100, Some(10 * i64::try_from(p).unwrap())))
        .collect();
    fixtures::topic("lines", &parts)
}

fn settings() -> Settings {
    Settings {
        observe_every: Duration::from_millis(200),
        offset_rows: 3,
        ..Settings::default()
    }
}

#[tokio::test]
async fn lag_and_offsets_reach_the_status_patch_and_partitions_set_the_workers() {
    let observer = DataObserver::new(Some(lines(10)));
    let (server, token, run) = start_wc(&observer, settings());
    let r = server.wait_for(WAIT, |r| !statuses(r).is_empty()).await;
    token.cancel();
    run.await.unwrap();

    let asked = observer.asked.lock().unwrap()[0].clone();
    assert_eq!(asked.group, "weir.default.wc");
    assert_eq!(asked.source.topics, ["lines"]);
    assert_eq!(
        sts_replicas(&r)[0],
        3,
        "10 partitions / 4 per worker, rounded up"
    );

    let s = &statuses(&r)[0];
    assert_eq!(s["observedPartitions"], 10);
    let total: i64 = (0..10).map(|p| 100 - 10 * p).sum();
    assert_eq!(s["lag"]["records"], total);
    assert_eq!(s["lag"]["maxPartition"], 100);
    assert_eq!(s["workers"]["desired"], 3);
    assert_eq!(s["workers"]["reason"], "10 partitions / 4 per worker = 3");
    let rows = s["offsets"]["partitions"].as_array().unwrap();
    let firsts: Vec<(i64, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["partition"].as_i64().unwrap(),
                r["committed"].as_i64().unwrap(),
                r["lag"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(firsts, [(0, 0, 100), (1, 10, 90), (2, 20, 80)]);
    assert_eq!(s["offsets"]["omitted"], 7);
    assert!(s["observeError"].is_null());
}

#[tokio::test]
async fn a_grown_topic_is_noticed_within_one_observation_period() {
    let observer = DataObserver::new(Some(lines(8)));
    let (server, token, run) = start_wc(&observer, settings());
    let r = server.wait_for(WAIT, |r| !statuses(r).is_empty()).await;
    assert_eq!(sts_replicas(&r)[0], 2);

    // No test broker can add partitions (no CreatePartitions): the grown topic is data.
    observer.set(Some(lines(20)));
    let grown_at = tokio::time::Instant::now();
    let r = server
        .wait_for(WAIT, |r| {
            statuses(r).iter().any(|s| s["observedPartitions"] == 20)
        })
        .await;
    assert!(
        grown_at.elapsed() < Duration::from_secs(2),
        "noticed after {:?}",
        grown_at.elapsed()
    );
    assert_eq!(sts_replicas(&r).last().unwrap(), 5);
    let last = statuses(&r).last().unwrap().clone();
    assert_eq!(
        last["workers"]["reason"],
        "20 partitions / 4 per worker = 5"
    );

    // The brokers go away: the error is reported, the last numbers and worker count stay.
    let mut job = fixtures::job("wc", 1, fixtures::spec());
    job["status"] = last.clone();
    server.push_event(JOBS, "MODIFIED", job).await;
    observer.set(None);
    let r = server
        .wait_for(WAIT, |r| {
            statuses(r).iter().any(|s| s["observeError"].is_string())
        })
        .await;
    token.cancel();
    run.await.unwrap();
    let failed = statuses(&r)
        .into_iter()
        .find(|s| s["observeError"].is_string())
        .unwrap();
    assert!(
        failed["observeError"]
            .as_str()
            .unwrap()
            .starts_with("reading topic metadata from Kafka failed"),
        "{}",
        failed["observeError"]
    );
    assert_eq!(failed["lag"], last["lag"]);
    assert_eq!(failed["workers"]["desired"], 5, "not back to workers.min");
    assert_eq!(sts_replicas(&r).last().unwrap(), 5);
}

#[tokio::test]
async fn workers_progress_reaches_the_status_patch_and_silent_workers_are_named() {
    let p = std::sync::Arc::new(super::progress::worker(0, 2));
    p.record(super::progress::batch(1, 5000, 10, 40, 0));
    p.record(super::progress::batch(2, 10_000, 25, 70, 3));
    let stop = tokio_util::sync::CancellationToken::new();
    let (addr, task) = weir_worker::http::serve("127.0.0.1:0", p, stop.clone())
        .await
        .unwrap();
    let observer = DataObserver::new(Some(lines(8)));
    // Worker 1 has no address: nothing listens where the operator looks for it.
    observer.workers.lock().unwrap().push(addr.to_string());
    let (server, token, run) = start_observed(
        fixtures::job("wc", 1, fixtures::spec()),
        Metrics::new().unwrap(),
        |s| {
            // Two pods exist, as the StatefulSet's status says after the apply.
            s.insert(
                "/apis/apps/v1/namespaces/default/statefulsets",
                serde_json::json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "metadata": {"name": "wc", "namespace": "default"},
                    "status": {"replicas": 2, "readyReplicas": 1}}),
            );
        },
        observer,
        settings(),
    );
    let r = server.wait_for(WAIT, |r| !statuses(r).is_empty()).await;
    token.cancel();
    run.await.unwrap();
    stop.cancel();
    task.await.unwrap();

    let s = &statuses(&r)[0];
    assert_eq!(s["batchLag"], 3);
    assert_eq!(
        s["lastBatch"],
        serde_json::json!({"time": "t10000", "records": 25, "processingMillis": 70,
                           "schedulingDelayMillis": 35})
    );
    assert_eq!(s["unreachableWorkers"], serde_json::json!([1]));
    assert_eq!(s["phase"], "Degraded", "1 of 2 workers ready");
}

#[tokio::test]
async fn reconciles_within_the_period_reuse_the_observation_and_write_nothing() {
    let observer = DataObserver::new(Some(lines(8)));
    let settings = Settings {
        observe_every: Duration::from_secs(30),
        ..settings()
    };
    let (server, token, run) = start_wc(&observer, settings);
    let r = server.wait_for(WAIT, |r| !statuses(r).is_empty()).await;
    let first = statuses(&r)[0].clone();

    // Kafka moves on, and the job's own status write comes back as a watch event: reading
    // again now would write again, and that write would trigger the next read.
    observer.set(Some(lines(9)));
    let mut job = fixtures::job("wc", 1, fixtures::spec());
    job["status"] = first.clone();
    server.push_event(JOBS, "MODIFIED", job).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(observer.asked.lock().unwrap().len(), 1);
    assert_eq!(statuses(&server.requests()).len(), 1, "no second write");

    // A new generation is observed at once.
    let mut job = fixtures::job("wc", 2, fixtures::spec());
    job["status"] = first;
    server.push_event(JOBS, "MODIFIED", job).await;
    let r = server
        .wait_for(WAIT, |r| {
            statuses(r).iter().any(|s| s["observedPartitions"] == 9)
        })
        .await;
    token.cancel();
    run.await.unwrap();
    assert_eq!(observer.asked.lock().unwrap().len(), 2);
    assert_eq!(statuses(&r).last().unwrap()["observedGeneration"], 2);
}

#[tokio::test]
async fn the_jobs_figures_reach_the_operators_metrics_endpoint() {
    let observer = DataObserver::new(Some(lines(10)));
    let metrics = Metrics::new().unwrap();
    let (server, token, run) = start_observed(
        fixtures::job("wc", 1, fixtures::spec()),
        metrics.clone(),
        |_| {},
        observer,
        settings(),
    );
    server.wait_for(WAIT, |r| !statuses(r).is_empty()).await;
    token.cancel();
    run.await.unwrap();
    let text = metrics.render();
    let total: i64 = (0..10).map(|p| 100 - 10 * p).sum();
    let value = |name: &str| {
        let series = format!("{name}{{job=\"wc\",namespace=\"default\"");
        text.lines()
            .find(|l| l.starts_with(&series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<i64>().ok())
    };
    assert_eq!(value("weir_job_lag_records"), Some(total), "{text}");
    assert_eq!(value("weir_job_workers_desired"), Some(3));
    assert_eq!(value("weir_job_workers_ready"), Some(0));
    assert_eq!(value("weir_job_restarts"), Some(0));
}

#[tokio::test]
async fn scale_reports_pods_that_exist_as_current_and_ready_ones_apart() {
    let observer = DataObserver::new(Some(lines(8)));
    let (server, token, run) = start_observed(
        fixtures::job("wc", 1, fixtures::spec()),
        Metrics::new().unwrap(),
        |s| {
            // Two pods exist and both are still Pending.
            s.insert(
                "/apis/apps/v1/namespaces/default/statefulsets",
                serde_json::json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "metadata": {"name": "wc", "namespace": "default"},
                    "status": {"replicas": 2, "readyReplicas": 0}}),
            );
        },
        observer,
        settings(),
    );
    let r = server.wait_for(WAIT, |r| !statuses(r).is_empty()).await;
    token.cancel();
    run.await.unwrap();
    let s = &statuses(&r)[0];
    // The CRD's /scale reads .status.replicas (tests::crd checks the path): an HPA sees 2.
    assert_eq!(s["replicas"], 2);
    assert_eq!(s["workers"]["ready"], 0);
}

fn events<'a>(r: &'a [Recorded], reason: &str) -> Vec<&'a Recorded> {
    r.iter()
        .filter(|x| x.is(&Method::POST, crate::tests::wc::EVENTS) && x.body["reason"] == reason)
        .collect()
}

fn progressing(status: &Value) -> (String, String) {
    let c = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap();
    (
        c["status"].as_str().unwrap().into(),
        c["reason"].as_str().unwrap().into(),
    )
}

#[tokio::test]
async fn an_unreachable_kafka_makes_progressing_unknown_with_one_warning_per_outage() {
    let observer = DataObserver::new(Some(lines(8)));
    let (server, token, run) = start_wc(&observer, settings());
    let r = server.wait_for(WAIT, |r| !statuses(r).is_empty()).await;
    assert_ne!(
        progressing(statuses(&r).last().unwrap()).1,
        "KafkaUnreachable"
    );

    observer.set(None);
    let r = server
        .wait_for(WAIT, |r| {
            statuses(r)
                .last()
                .is_some_and(|s| progressing(s).1 == "KafkaUnreachable")
        })
        .await;
    let s = statuses(&r).last().unwrap().clone();
    assert_eq!(progressing(&s).0, "Unknown");
    assert!(s["observeError"].is_string());
    assert_eq!(events(&r, "KafkaUnreachable")[0].body["type"], "Warning");
    // The status write comes back as a watch event, as a real API server sends it: later
    // observations of the same outage post no more Events.
    let mut job = fixtures::job("wc", 1, fixtures::spec());
    job["status"] = s;
    server.push_event(JOBS, "MODIFIED", job).await;
    let posted = |r: &[Recorded]| {
        r.iter()
            .filter(|x| x.path.starts_with(crate::tests::wc::EVENTS))
            .count()
    };
    // A pass already under way may still hold the old object: count from the next one.
    let asked = || observer.asked.lock().unwrap().len();
    let now = asked();
    server.wait_for(WAIT, |_| asked() > now + 1).await;
    let before = posted(&server.requests());
    let now = asked();
    server.wait_for(WAIT, |_| asked() >= now + 2).await;
    assert_eq!(
        posted(&server.requests()),
        before,
        "once per outage, not per observation"
    );

    observer.set(Some(lines(8)));
    let r = server
        .wait_for(WAIT, |r| !events(r, "KafkaReachable").is_empty())
        .await;
    token.cancel();
    run.await.unwrap();
    assert_eq!(events(&r, "KafkaReachable")[0].body["type"], "Normal");
    let s = statuses(&r).last().unwrap().clone();
    assert_ne!(progressing(&s).1, "KafkaUnreachable");
    assert!(s["observeError"].is_null());
}

#[tokio::test]
async fn a_new_jobs_children_appear_while_kafka_is_slow_to_answer() {
    let observer = DataObserver::new(None);
    *observer.delay.lock().unwrap() = Duration::from_secs(3);
    let settings = Settings {
        create_before_kafka: Duration::from_millis(100),
        ..settings()
    };
    let (server, token, run) = start_wc(&observer, settings);
    let started = tokio::time::Instant::now();
    let r = server.wait_for(WAIT, |r| !sts_replicas(r).is_empty()).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the StatefulSet waits for no Kafka timeout"
    );
    assert_eq!(
        sts_replicas(&r),
        [0],
        "no workers before their count is known"
    );
    assert!(statuses(&r).is_empty(), "Kafka has not answered yet");
    let r = server.wait_for(WAIT, |r| !statuses(r).is_empty()).await;
    token.cancel();
    run.await.unwrap();
    assert_eq!(
        sts_replicas(&r),
        [0, 2],
        "then workers.min, Kafka being unreachable"
    );
    assert_eq!(
        progressing(&statuses(&r)[0]),
        ("Unknown".into(), "KafkaUnreachable".into())
    );
}

fn condition(status: &Value, type_: &str) -> Option<(String, String, String)> {
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    Some((
        c["status"].as_str()?.into(),
        c["reason"].as_str()?.into(),
        c["message"].as_str()?.into(),
    ))
}

#[tokio::test]
async fn retention_nearing_the_commits_sets_offsets_at_risk_with_a_warning_and_clears_it() {
    // 1000 records retained on each partition; partition 1's commit is 5 from the log start.
    let risky = || {
        fixtures::topic(
            "lines",
            &[(1000, 2000, Some(1500)), (1000, 2000, Some(1005))],
        )
    };
    let observer = DataObserver::new(Some(risky()));
    let (server, token, run) = start_wc(&observer, settings());
    let r = server
        .wait_for(WAIT, |r| !events(r, "OffsetsAtRisk").is_empty())
        .await;
    let s = statuses(&r).last().unwrap().clone();
    let (state, reason, message) = condition(&s, "OffsetsAtRisk").unwrap();
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("True", "RetentionNearCommittedOffsets")
    );
    assert!(
        message.starts_with(
            "lines-1: the next unread record (offset 1005) is 5 records (time unknown"
        ),
        "{message}"
    );
    let warning = &events(&r, "OffsetsAtRisk")[0].body;
    assert_eq!(warning["type"], "Warning");
    assert!(
        warning["note"].as_str().unwrap().contains("lines-1"),
        "{warning}"
    );
    assert_eq!(
        s["lag"]["seconds"],
        Value::Null,
        "no timestamps read: unknown, never 0"
    );

    // The status write comes back through the watch, as a real API server sends it; then the
    // job catches up.
    let mut job = fixtures::job("wc", 1, fixtures::spec());
    job["status"] = s;
    server.push_event(JOBS, "MODIFIED", job).await;
    observer.set(Some(fixtures::topic(
        "lines",
        &[(1000, 2000, Some(1500)), (1000, 2000, Some(1900))],
    )));
    let r = server
        .wait_for(WAIT, |r| !events(r, "OffsetsAtRiskCleared").is_empty())
        .await;
    token.cancel();
    run.await.unwrap();
    assert_eq!(events(&r, "OffsetsAtRiskCleared")[0].body["type"], "Normal");
    let s = statuses(&r).last().unwrap().clone();
    assert_eq!(condition(&s, "OffsetsAtRisk").unwrap().0, "False");
}
