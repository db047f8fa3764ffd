//! Faults as they happen, against brokers in their own processes: a broker killed and brought
//! back, a broker frozen during SIGTERM, positions outside the log. What is asserted is what a
//! user sees: `/healthz`, `/livez`, `/metrics`, log lines, exit codes and committed offsets.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 2;

fn job(dir: &std::path::Path, broker: &Broker, group: &str, extra: &str) -> std::path::PathBuf {
    let props = if broker.is_tansu() {
        "properties: {fetch.wait.max.ms: '10'}"
    } else {
        "properties: {}"
    };
    job_file(
        dir,
        &format!(
            r#"
batchInterval: 300ms
source:
  kafka:
    bootstrapServers: {}
    topics: [in]
    startingOffsets: earliest
    groupId: {group}
    {props}
    {extra}
pipeline:
  - {{id: tag, select: {{n: value.n}}}}
sink: {{kafka: {{topic: out}}}}
"#,
            broker.bootstrap()
        ),
    )
}

#[test]
fn a_killed_broker_makes_the_worker_unready_with_the_cause_and_nothing_is_lost_when_it_returns() {
    let Some(mut broker) = Broker::tansu() else {
        return;
    };
    broker.create_topic("in", PARTITIONS);
    broker.create_topic("out", PARTITIONS);
    produce_numbered(&broker, "in", PARTITIONS, 0, 200);
    let dir = tempfile::tempdir().expect("tempdir");
    let job = job(dir.path(), &broker, "dead", "");
    let mut w = WorkerProc::spawn(&job, &[]);
    let ends = high_watermarks(&broker, "in", PARTITIONS);
    eventually("caught up", Duration::from_secs(60), || {
        committed(&broker, "dead", "in", PARTITIONS) == ends
    });
    assert_eq!(w.get("/healthz").map(|(s, _)| s), Some(200));

    broker.signal("KILL");
    let lost_at = Instant::now();
    eventually(
        "/healthz to fail with the reason",
        Duration::from_secs(30),
        || matches!(w.get("/healthz"), Some((503, body)) if body.contains("have not answered")),
    );
    let noticed = lost_at.elapsed();
    // Unready, but alive: a restart would not bring the broker back.
    assert_eq!(w.get("/livez").map(|(s, _)| s), Some(200));
    let logs = w.all_logs();
    assert!(
        logs.contains("batch not planned")
            && logs.contains("Kafka client error")
            && logs.contains("Connection refused"),
        "a warning says the brokers are gone, and why, when it happens:\n{logs}"
    );
    let metrics = w.get("/metrics").expect("metrics").1;
    assert_eq!(
        weir_worker::progress::sample_value(&metrics, "weir_source_up"),
        Some("0")
    );
    let last = w.progress().expect("progress")["batches"]
        .as_array()
        .and_then(|b| b.last().cloned())
        .expect("a batch");
    assert!(
        last["lag"].is_null() && last["sourceError"].is_string(),
        "lag is unknown, not 0: {last}"
    );
    eprintln!("the worker reported the lost broker after {noticed:?}");

    broker.restart_tansu(Duration::ZERO);
    produce_numbered(&broker, "in", PARTITIONS, 200, 200);
    let ends = high_watermarks(&broker, "in", PARTITIONS);
    eventually(
        "caught up after the broker came back",
        Duration::from_secs(90),
        || committed(&broker, "dead", "in", PARTITIONS) == ends,
    );
    eventually("ready again", Duration::from_secs(30), || {
        w.get("/healthz").map(|(s, _)| s) == Some(200)
    });
    assert!(w.all_logs().contains("the brokers answer again"));
    w.signal("TERM");
    assert!(w
        .wait_exit(Duration::from_secs(30))
        .expect("exit")
        .success());
    let mut seen: Vec<u64> = read_all(&broker, "out")
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.value).expect("json")["n"]
                .as_u64()
                .expect("n")
        })
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (0..400).collect::<Vec<u64>>(), "nothing lost");
}

/// SIGTERMs `w` while `broker` is frozen, waits at most 20 s for its exit, then lets the
/// broker go on: the exit status and how long the worker took.
fn terminate_then_thaw(
    w: &mut WorkerProc,
    broker: &Broker,
) -> (std::process::ExitStatus, Duration) {
    let asked = Instant::now();
    w.signal("TERM");
    let status = w.wait_exit(Duration::from_secs(20));
    let took = asked.elapsed();
    broker.signal("CONT");
    let status =
        status.unwrap_or_else(|| panic!("still running 20 s after SIGTERM:\n{}", w.all_logs()));
    (status, took)
}

#[test]
fn sigterm_with_the_broker_frozen_exits_within_the_shutdown_timeout() {
    let broker = mock_process_with(&[("in", PARTITIONS), ("out", PARTITIONS)]);
    produce_numbered(&broker, "in", PARTITIONS, 0, 100);
    let dir = tempfile::tempdir().expect("tempdir");
    let job = job(dir.path(), &broker, "frozen", "");
    let mut w = WorkerProc::spawn(&job, &["--shutdown-timeout", "3s"]);
    eventually("a batch", Duration::from_secs(60), || {
        w.count_logs("batch completed") >= 1
    });
    broker.signal("STOP");
    // Let the worker get stuck on the frozen broker.
    std::thread::sleep(Duration::from_secs(2));
    let (status, took) = terminate_then_thaw(&mut w, &broker);
    // Within the shutdown timeout (3 s) and the time to notice it, far below a pod's 30 s.
    assert!(took < Duration::from_secs(10), "took {took:?}: {status:?}");
    eprintln!("exited {took:?} after SIGTERM with {status:?}");
}

#[test]
fn sigterm_while_a_call_waits_on_a_frozen_broker_exits_at_the_deadline_without_committing() {
    let broker = mock_process_with(&[("in", PARTITIONS), ("out", PARTITIONS)]);
    produce_numbered(&broker, "in", PARTITIONS, 0, 100);
    // Frozen before the worker connects: its metadata request waits on the broker.
    broker.signal("STOP");
    let dir = tempfile::tempdir().expect("tempdir");
    let job = job(dir.path(), &broker, "deadline", "");
    let log = dir.path().join("termination-log");
    let mut w = WorkerProc::spawn(
        &job,
        &[
            "--shutdown-timeout",
            "1s",
            "--termination-log",
            log.to_str().expect("path"),
        ],
    );
    std::thread::sleep(Duration::from_secs(1));
    let (status, took) = terminate_then_thaw(&mut w, &broker);
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(status.code(), Some(1), "{}", w.all_logs());
    let msg = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(msg.contains("did not stop within 1s"), "{msg}");
    assert_eq!(
        committed(&broker, "deadline", "in", PARTITIONS),
        vec![-1, -1],
        "nothing committed"
    );
    eprintln!("exited {took:?} after SIGTERM at the deadline");
}

/// Commits `offset` for every partition of "in" in `group`.
fn commit_offsets(broker: &Broker, group: &str, offset: i64) {
    let c: BaseConsumer = broker
        .client()
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("in", p, Offset::Offset(offset))
            .expect("tpl");
    }
    c.commit(&tpl, CommitMode::Sync).expect("commit");
}

fn run_to_exit(job: &std::path::Path, dir: &std::path::Path) -> (Option<i32>, String, String) {
    let log = dir.join("termination-log");
    let out = std::process::Command::new(WORKER)
        .arg("run")
        .arg(job)
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--max-batches",
            "3",
            "--termination-log",
        ])
        .arg(&log)
        .output()
        .expect("run");
    (
        out.status.code(),
        std::fs::read_to_string(&log).unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_offset_past_the_log_end_stops_the_worker_with_the_numbers_unless_the_policy_says_where_to_go_on(
) {
    // A topic deleted and created again (or a broker back without its data) leaves the
    // group's offsets above the new log end.
    let broker = mock_process_with(&[("in", PARTITIONS), ("out", PARTITIONS)]);
    produce_numbered(&broker, "in", PARTITIONS, 0, 20);
    commit_offsets(&broker, "recreated", 1000);
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, msg, logs) = run_to_exit(&job(dir.path(), &broker, "recreated", ""), dir.path());
    assert_eq!(code, Some(1), "{msg}{logs}");
    assert!(
        msg.contains("offset 1000 is past the log end")
            && msg.contains("log end 10")
            && msg.contains("offsetOutOfRange"),
        "{msg}"
    );
    assert_eq!(
        committed(&broker, "recreated", "in", PARTITIONS),
        vec![1000, 1000],
        "nothing moved"
    );
    assert!(read_all(&broker, "out").is_empty(), "nothing read");

    let (code, msg, logs) = run_to_exit(
        &job(
            dir.path(),
            &broker,
            "recreated",
            "offsetOutOfRange: earliest",
        ),
        dir.path(),
    );
    assert_eq!(code, Some(0), "{msg}{logs}");
    assert!(logs.contains("going on from offset 0"), "{logs}");
    assert_eq!(
        committed(&broker, "recreated", "in", PARTITIONS),
        vec![10, 10]
    );
    assert_eq!(read_all(&broker, "out").len(), 20, "the new log read whole");
}

#[test]
fn retention_overtaking_the_job_stops_it_by_default_with_the_records_it_lost() {
    let broker = mock_process_with(&[("in", PARTITIONS), ("out", PARTITIONS)]);
    commit_offsets(&broker, "slow", 0);
    // The mock cluster keeps about 5 MiB per partition: 7 MiB in one partition moves its log
    // start past offset 0, as retention would.
    let big = vec![b'x'; 1024];
    let payloads: Vec<&[u8]> = (0..7 * 1024).map(|_| big.as_slice()).collect();
    produce_raw(&broker, "in", 0, &payloads);
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, msg, logs) = run_to_exit(&job(dir.path(), &broker, "slow", ""), dir.path());
    assert_eq!(code, Some(1), "{msg}{logs}");
    assert!(
        msg.contains("in-0: offset 0 is before the log start")
            && msg.contains("retention deleted records"),
        "{msg}"
    );
}

/// Runs a job against `bootstrap` with a short retry budget until it gives up.
fn unreachable_run(bootstrap: &str) -> (Option<i32>, String, String, std::time::Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = job_file(
        dir.path(),
        &format!(
            "batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: '{bootstrap}', topics: [in], retries: {{maxRetries: 1, backoff: 100ms}}}}}}\nsink: {{stdout: {{}}}}\n"
        ),
    );
    let started = Instant::now();
    let (code, msg, logs) = run_to_exit(&job, dir.path());
    (code, msg, logs, started.elapsed())
}

#[test]
fn an_unresolvable_host_and_a_refused_connection_are_told_apart_each_with_its_fix() {
    let (code, msg, logs, took) = unreachable_run("no-such-host.invalid:9092");
    assert_eq!(code, Some(1), "{logs}");
    assert!(msg.contains("does not resolve"), "{msg}");
    assert!(
        logs.contains("Kafka client error") && logs.contains("resolve"),
        "the cause is logged when it happens:\n{logs}"
    );
    eprintln!("unresolvable host: gave up after {took:?}");

    let (_held, refused) = refused_address();
    let (code, msg, logs, took) = unreachable_run(&refused);
    assert_eq!(code, Some(1), "{logs}");
    assert!(
        msg.contains("nothing accepts connections there") && !msg.contains("create it"),
        "{msg}"
    );
    assert!(logs.contains("Connection refused"), "{logs}");
    eprintln!("refused connection: gave up after {took:?}");
}
