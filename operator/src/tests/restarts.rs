//! The restart policy's decisions, as tables: which restarts count, what the last failure
//! says, when the budget stops the job and what starts it again.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use weir_contract::spec::Duration;

use crate::crd::{RestartBudgetStatus, RestartPolicySpec, StoppedStatus};
use crate::fixtures;
use crate::progress::{ProgressSummary, WorkerReport, WorkerResumed};
use crate::restarts::{
    backoff_over, decide, fill_resumed, Exit, Job, Record, SeenRestarts, WorkerPod,
};

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(secs).unwrap()
}

fn policy() -> RestartPolicySpec {
    RestartPolicySpec {
        max_restarts: 2,
        window: Duration::from_secs(600),
        backoff: Duration::from_secs(10),
        max_backoff: Duration::from_secs(60),
    }
}

fn pod(worker: u32, uid: &str, restarts: u32) -> WorkerPod {
    WorkerPod {
        worker,
        uid: uid.into(),
        restarts,
        ready: false,
        last_exit: (restarts > 0).then(|| Exit {
            exit_code: 1,
            message: Some(format!("worker {worker}: sink refused the batch")),
            finished_at: None,
        }),
    }
}

fn seen(worker: u32, uid: &str, count: u32) -> SeenRestarts {
    SeenRestarts {
        worker,
        pod: uid.into(),
        count,
    }
}

fn budget(start: i64, used: u32) -> Option<RestartBudgetStatus> {
    Some(RestartBudgetStatus {
        window_start: Time(t(start)),
        used,
    })
}

fn job(policy: &RestartPolicySpec) -> Job<'_> {
    Job {
        policy,
        generation: Some(1),
        annotation: None,
        workers: 2,
    }
}

#[test]
fn new_restarts_are_counted_once_per_pod() {
    let p = policy();
    // (case, seen before, pods now, new restarts, seen after); the total starts at 10.
    type Case = (
        &'static str,
        Vec<SeenRestarts>,
        Vec<WorkerPod>,
        u32,
        Vec<SeenRestarts>,
    );
    let cases: Vec<Case> = vec![
        ("a healthy job", vec![], vec![pod(0, "a", 0)], 0, vec![]),
        (
            "a first restart",
            vec![],
            vec![pod(0, "a", 1), pod(1, "b", 0)],
            1,
            vec![seen(0, "a", 1)],
        ),
        (
            "the same count again",
            vec![seen(0, "a", 1)],
            vec![pod(0, "a", 1)],
            0,
            vec![seen(0, "a", 1)],
        ),
        (
            "two more of one pod, one of another",
            vec![seen(0, "a", 1)],
            vec![pod(0, "a", 3), pod(1, "b", 1)],
            3,
            vec![seen(0, "a", 3), seen(1, "b", 1)],
        ),
        (
            "a recreated pod counts from zero",
            vec![seen(0, "a", 4)],
            vec![pod(0, "a2", 1)],
            1,
            vec![seen(0, "a2", 1)],
        ),
        (
            "a recreated pod that has not restarted",
            vec![seen(0, "a", 4)],
            vec![pod(0, "a2", 0)],
            0,
            vec![],
        ),
    ];
    for (case, before, pods, new, after) in cases {
        let previous = Record {
            restarts: 10,
            seen: before,
            ..Record::default()
        };
        let out = decide(previous, &job(&p), &pods, t(1000));
        let counted: u32 = out.restarted.iter().map(|r| r.count).sum();
        assert_eq!(counted, new, "{case}");
        assert_eq!(out.record.restarts, 10 + new, "{case}");
        assert_eq!(out.record.seen, after, "{case}");
        assert_eq!(out.record.last_failure.is_some(), new > 0, "{case}");
    }
}

#[test]
fn the_budget_stops_the_job_when_spent_within_the_window() {
    let p = policy();
    // (case, budget before, restarts now, budget after (start, used), stopped now)
    let cases = [
        (
            "first restart opens a window",
            None,
            1,
            Some((1000, 1)),
            false,
        ),
        (
            "within the window",
            budget(900, 1),
            1,
            Some((900, 2)),
            false,
        ),
        (
            "one more than maxRestarts",
            budget(900, 2),
            1,
            Some((900, 3)),
            true,
        ),
        ("many at once", None, 3, Some((1000, 3)), true),
        (
            "after the window: a new one",
            budget(100, 2),
            1,
            Some((1000, 1)),
            false,
        ),
        ("a healthy window clears it", budget(100, 2), 0, None, false),
        (
            "a window still open stays",
            budget(900, 2),
            0,
            Some((900, 2)),
            false,
        ),
    ];
    for (case, before, restarts, after, stopped) in cases {
        let previous = Record {
            budget: before,
            seen: vec![seen(0, "a", 5)],
            ..Record::default()
        };
        let out = decide(previous, &job(&p), &[pod(0, "a", 5 + restarts)], t(1000));
        let got = out
            .record
            .budget
            .as_ref()
            .map(|b| (b.window_start.0.as_second(), b.used));
        assert_eq!(got, after, "{case}");
        assert_eq!(out.stopped_now, stopped, "{case}");
        assert_eq!(out.record.stopped.is_some(), stopped, "{case}");
    }
}

#[test]
fn the_stop_names_the_reason_and_holds_until_the_spec_or_the_annotation_changes() {
    let p = policy();
    let out = decide(Record::default(), &job(&p), &[pod(0, "a", 3)], t(1000));
    let stopped = out.record.stopped.clone().unwrap();
    assert_eq!(
        stopped.reason,
        "3 worker restarts within 10m, more than restartPolicy.maxRestarts 2"
    );
    assert_eq!(stopped.generation, Some(1));

    let held = |generation, annotation| {
        let j = Job {
            generation,
            annotation,
            ..job(&p)
        };
        let out = decide(out.record.clone(), &j, &[], t(2000));
        (out.record.stopped.is_some(), out.resumed)
    };
    assert_eq!(held(Some(1), None), (true, false), "nothing changed");
    assert_eq!(held(Some(2), None), (false, true), "a new generation");
    assert_eq!(
        held(Some(1), Some("now")),
        (false, true),
        "the annotation set"
    );

    let annotated = Record {
        stopped: Some(StoppedStatus {
            restart_annotation: Some("a".into()),
            ..stopped
        }),
        budget: budget(1000, 3),
        ..Record::default()
    };
    let j = Job {
        annotation: Some("a"),
        ..job(&p)
    };
    let again = decide(annotated.clone(), &j, &[], t(1100));
    assert!(again.record.stopped.is_some(), "the same annotation value");
    let j = Job {
        annotation: Some("b"),
        ..job(&p)
    };
    let resumed = decide(annotated, &j, &[], t(1100));
    assert!(resumed.resumed && resumed.record.stopped.is_none());
    assert_eq!(
        resumed.record.budget, None,
        "a resumed job gets its whole budget"
    );
}

/// What worker `worker` said at `/progress`: started at `started` (s), resumed `rows`.
fn report(worker: u32, started: i64, rows: &[(&str, i32, i64)]) -> ProgressSummary {
    ProgressSummary {
        reports: vec![WorkerReport {
            worker,
            ran_batches: true,
            started_at_ms: Some(started * 1000),
            resumed_from: rows
                .iter()
                .map(|(topic, partition, offset)| WorkerResumed {
                    topic: (*topic).into(),
                    partition: *partition,
                    offset: *offset,
                })
                .collect(),
            retrying: None,
        }],
        ..ProgressSummary::default()
    }
}

#[test]
fn last_failure_has_the_message_and_resumes_where_the_worker_says() {
    let p = policy();
    let j = Job {
        workers: 3,
        ..job(&p)
    };
    let mut crashed = pod(1, "b", 1);
    if let Some(e) = crashed.last_exit.as_mut() {
        e.finished_at = Some(t(990));
    }
    let mut out = decide(Record::default(), &j, &[crashed], t(1000));
    let f = out.record.last_failure.clone().unwrap();
    assert_eq!(f.worker, 1);
    assert_eq!(f.message, "worker 1: sink refused the batch");
    assert_eq!(f.exit_code, Some(1));
    assert_eq!(f.time, Time(t(990)), "when the failed run ended");
    assert!(f.resumed_from.is_empty(), "unknown until the worker says");

    // The failed run's own report (started before it ended) and another worker's are not
    // where worker 1 resumed.
    assert!(!fill_resumed(
        &mut out.record,
        &report(1, 900, &[("lines", 1, 5)])
    ));
    assert!(!fill_resumed(
        &mut out.record,
        &report(0, 995, &[("lines", 0, 5)])
    ));
    assert!(
        !fill_resumed(&mut out.record, &report(1, 995, &[])),
        "not resumed yet"
    );
    // The new run's report: its offsets, in partition order, whatever the group says now.
    let new_run = report(1, 995, &[("lines", 4, 9600), ("lines", 1, 9600)]);
    assert!(fill_resumed(&mut out.record, &new_run));
    let f = out.record.last_failure.clone().unwrap();
    let resumed: Vec<(i32, Option<i64>)> = f
        .resumed_from
        .iter()
        .map(|r| (r.partition, r.offset))
        .collect();
    assert_eq!(resumed, [(1, Some(9600)), (4, Some(9600))]);
    assert_eq!(f.resumed_from_omitted, 0);
    assert_eq!(
        crate::restarts::resumed_note(&f),
        "worker 1 resumed from lines/1@9600, lines/4@9600"
    );
    assert!(
        !fill_resumed(&mut out.record, &report(1, 999, &[("lines", 1, 10_000)])),
        "filled once, from the run that resumed"
    );

    // A wide worker: the first rows, and how many more.
    let j = Job {
        workers: 1,
        ..job(&p)
    };
    let mut out = decide(Record::default(), &j, &[pod(0, "a", 1)], t(1000));
    let rows: Vec<(&str, i32, i64)> = (0..100).map(|i| ("lines", i, 7)).collect();
    assert!(fill_resumed(&mut out.record, &report(0, 1001, &rows)));
    let f = out.record.last_failure.unwrap();
    assert_eq!((f.resumed_from.len(), f.resumed_from_omitted), (20, 80));
}

#[test]
fn a_pod_gives_its_worker_restarts_and_termination_message() {
    let parse = |status: serde_json::Value| {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "wc-2", "uid": "5f1c2e7a-0b1d-4c3e-9f00-123456789abc"},
            "status": status,
        }))
        .unwrap();
        WorkerPod::from_pod(&pod, "wc").unwrap()
    };
    let terminated = |message: Option<&str>| {
        json!({"containerStatuses": [{
            "name": "worker", "image": "w", "imageID": "", "ready": true, "restartCount": 2,
            "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": message}}
        }]})
    };
    let w = parse(terminated(Some("state store full\n")));
    assert_eq!(
        (w.worker, w.uid.as_str(), w.restarts, w.ready),
        (2, "5f1c2e7a", 2, true),
        "the start of the uid names the pod"
    );
    let exit = w.last_exit.unwrap();
    assert_eq!(exit.exit_code, 137);
    let said = exit.message.unwrap();
    assert!(
        said.starts_with("OOMKilled: the worker used more memory than its limit")
            && said.contains("spec.resources.limits.memory")
            && said.ends_with("(its last words: state store full)"),
        "an OOM kill says so, with the fix: {said}"
    );
    let w = parse(terminated(None));
    assert!(
        w.last_exit
            .unwrap()
            .message
            .unwrap()
            .starts_with("OOMKilled:"),
        "no message: still named"
    );
    let error = |message: &str| {
        json!({"containerStatuses": [{
            "name": "worker", "image": "w", "imageID": "", "ready": false, "restartCount": 1,
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": message}}
        }]})
    };
    // FallbackToLogsOnError: the log's tail, coloured, of a worker killed mid-batch.
    let tail = "\u{1b}[2m2026-12-01T10:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m batch completed records_in=5\n\
                \u{1b}[2m2026-12-01T10:00:01Z\u{1b}[0m \u{1b}[31mERROR\u{1b}[0m worker failed error=Kafka commit failed\n\
                \u{1b}[2m2026-12-01T10:00:01Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m closing\n";
    let said = parse(error(tail)).last_exit.unwrap().message.unwrap();
    assert_eq!(
        said, "2026-12-01T10:00:01Z ERROR worker failed error=Kafka commit failed",
        "the line that reports the error, without colour codes"
    );
    let said = parse(error("weir-worker: input topic \"lines\" is not available"))
        .last_exit
        .unwrap()
        .message;
    assert_eq!(
        said.as_deref(),
        Some("weir-worker: input topic \"lines\" is not available"),
        "the worker's own message as it wrote it"
    );
    let w = parse(json!({}));
    assert_eq!(
        (w.restarts, w.last_exit),
        (0, None),
        "a pod not started yet"
    );

    let other: Pod =
        serde_json::from_value(json!({"metadata": {"name": "wcx-0", "uid": "u"}})).unwrap();
    assert_eq!(WorkerPod::from_pod(&other, "wc"), None, "another job's pod");
}

#[test]
fn operator_restarts_wait_a_backoff_that_doubles_up_to_the_cap() {
    let p = policy();
    let last = |at: i64| {
        let out = decide(Record::default(), &job(&p), &[pod(0, "a", 1)], t(at));
        out.record.last_failure.unwrap()
    };
    let f = last(1000);
    // (restarts in the window, seconds since the last one, may restart)
    let cases = [
        (1, 9, false),
        (1, 10, true),
        (2, 19, false),
        (2, 20, true),
        (3, 40, true),
        (9, 59, false),
        (9, 60, true),
    ];
    for (used, after, ok) in cases {
        let b = budget(1000, used);
        assert_eq!(
            backoff_over(&p, b.as_ref(), Some(&f), t(1000 + after)),
            ok,
            "{used} restarts, {after}s later"
        );
    }
    assert!(backoff_over(&p, None, None, t(0)), "no restart yet");
}

#[test]
fn seen_restarts_round_trip_through_status() {
    let record = Record {
        seen: vec![seen(0, "5f1c2e7a", 3), seen(12, "a", 1)],
        ..Record::default()
    };
    let mut status = crate::crd::StreamingJobStatus::default();
    record.clone().write(&mut status);
    assert_eq!(status.seen_restarts, ["0/5f1c2e7a/3", "12/a/1"]);
    assert_eq!(Record::of(Some(&status)), record);
    status.seen_restarts.push("garbage".into());
    assert_eq!(
        Record::of(Some(&status)).seen.len(),
        2,
        "what does not parse is dropped"
    );
}

#[test]
fn the_restart_record_keeps_the_status_small_at_its_largest() {
    use crate::lag::summarize;
    use crate::status::{self, Observation};
    use weir_contract::spec::StartingOffsets;

    // The worst case: 1000 workers that all restarted, the longest topic names Kafka allows,
    // every capped list full.
    let topic = "t".repeat(249);
    let obs = fixtures::topic(&topic, &vec![(0, 100, Some(1)); 1000]);
    let pods: Vec<WorkerPod> = (0..1000)
        // As `WorkerPod::from_pod` names a pod: the start of its uid.
        .map(|w| pod(w, &format!("{w:08}"), 7))
        .collect();
    let p = policy();
    let j = Job {
        workers: 50,
        ..job(&p)
    };
    let mut out = decide(Record::default(), &j, &pods, t(1000));
    let rows: Vec<(&str, i32, i64)> = (0..1000).map(|i| (topic.as_str(), i, 1)).collect();
    assert!(fill_resumed(&mut out.record, &report(999, 1001, &rows)));
    assert_eq!(out.record.seen.len(), 1000);
    let applied = Observation::Applied {
        desired: 1000,
        reason: "x".repeat(200),
        suspended: false,
        stopped: None,
        current: 1000,
        ready: 1000,
        selector: "weir.dev/job=j".into(),
    };
    let mut st = status::with_kafka(
        status::compute(None, Some(1), &applied, t(0)),
        Ok(&summarize(&obs, &StartingOffsets::Latest, 1_000_000)),
    );
    out.record.write(&mut st);
    let big = crate::crd::RewindSpec {
        id: "r".repeat(253),
        to_timestamp: None,
        offsets: Some(vec![
            crate::crd::RewindOffset {
                topic: "t".repeat(249),
                partition: 0,
                offset: 0,
            };
            50
        ]),
        to_earliest: false,
        to_latest: false,
    };
    let capped = vec!["x".repeat(200); 50];
    let mut rewound = crate::rewind::status(
        &big,
        crate::rewind::Rewound {
            offsets: st.last_failure.clone().unwrap().resumed_from,
            capped,
        },
        t(0),
    );
    rewound.ignored = Some("i".repeat(2000));
    st.rewind = Some(rewound);
    let bytes = serde_json::to_vec(&st).unwrap().len();
    assert!(bytes < 100 * 1024, "status is {bytes} bytes");
}

#[test]
fn a_status_write_clears_what_the_new_status_no_longer_has() {
    // The last failure was a crash with an exit code; the new one, a stalled worker the
    // operator restarted, has none: the merge patch must remove the old one.
    let old = json!({"phase": "Running", "lastFailure": {"worker": 1, "exitCode": 137,
                     "resumedFrom": [{"topic": "t", "partition": 1, "offset": 5}],
                     "resumedFromOmitted": 3}, "rewind": {"id": "a"}});
    let new = json!({"phase": "Degraded", "lastFailure": {"worker": 0, "resumedFrom": []}});
    let patch = crate::apply::clearing(&old, new);
    assert_eq!(
        patch,
        json!({"phase": "Degraded", "rewind": null, "lastFailure": {"worker": 0,
               "resumedFrom": [], "exitCode": null, "resumedFromOmitted": null}})
    );
    let mut stored = old.clone();
    json_patch::merge(&mut stored, &patch);
    assert_eq!(
        stored,
        json!({"phase": "Degraded", "lastFailure": {"worker": 0, "resumedFrom": []}})
    );
}
