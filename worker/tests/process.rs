//! Worker processes against a broker in another process: crash and resume, SIGTERM, load
//! errors. Run on librdkafka's mock cluster and on tansu's sqlite engine.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;

const PARTITIONS: i32 = 4;
/// 400 records/s x 0.3 s = 120 per partition, 480 per batch.
const MAX_BATCH: usize = 480;

fn pass_through_job(dir: &std::path::Path, broker: &Broker, group: &str) -> std::path::PathBuf {
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
    maxRatePerPartition: 400
    groupId: {group}
    backpressure: {{enabled: false}}
    {props}
pipeline:
  - {{id: tag, select: {{n: value.n, p: partition}}}}
sink: {{kafka: {{topic: out}}}}
"#,
            broker.bootstrap()
        ),
    )
}

fn numbers_out(broker: &Broker) -> Vec<u64> {
    read_all(broker, "out")
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.value).expect("json")["n"]
                .as_u64()
                .expect("n")
        })
        .collect()
}

fn crash_and_resume(broker: &Broker, total: u64) {
    produce_numbered(broker, "in", PARTITIONS, 0, total);
    let dir = tempfile::tempdir().expect("tempdir");
    let job = pass_through_job(dir.path(), broker, "crash");

    let mut first = WorkerProc::spawn(&job, &[]);
    eventually(
        "two batches before the kill",
        Duration::from_secs(60),
        || first.count_logs("batch completed") >= 2,
    );
    first.signal("KILL");
    first
        .wait_exit(Duration::from_secs(10))
        .expect("killed worker exits");
    let at_kill = committed(broker, "crash", "in", PARTITIONS);
    assert!(
        at_kill.iter().sum::<i64>() > 0,
        "offsets were committed before the kill: {at_kill:?}"
    );

    let mut second = WorkerProc::spawn(&job, &[]);
    let ends = high_watermarks(broker, "in", PARTITIONS);
    eventually(
        "the restarted worker to commit everything",
        Duration::from_secs(120),
        || committed(broker, "crash", "in", PARTITIONS) == ends,
    );
    let resumed = second
        .wait_log("resuming", Duration::from_secs(5))
        .expect("resume log");
    let resumed: serde_json::Value = serde_json::from_str(&resumed).expect("json log");
    assert_eq!(
        resumed["fields"]["offsets"]
            .as_str()
            .map(|s| s.contains(&at_kill[0].to_string())),
        Some(true),
        "resumed from the committed offsets {at_kill:?}: {resumed}"
    );
    second.signal("TERM");
    assert!(second
        .wait_exit(Duration::from_secs(20))
        .expect("exit")
        .success());

    let out = numbers_out(broker);
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for n in &out {
        *seen.entry(*n).or_default() += 1;
    }
    let lost: Vec<u64> = (0..total).filter(|n| !seen.contains_key(n)).collect();
    assert!(
        lost.is_empty(),
        "lost {} records, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let duplicated: usize = seen.values().map(|c| c - 1).sum();
    assert!(
        duplicated <= MAX_BATCH,
        "{duplicated} records were output twice; at most the batch in flight ({MAX_BATCH}) may be"
    );
    assert_eq!(out.len(), total as usize + duplicated);
}

#[test]
fn a_killed_worker_resumes_from_committed_offsets_on_the_mock_cluster() {
    let broker = mock_process_with(&[("in", PARTITIONS), ("out", PARTITIONS)]);
    crash_and_resume(&broker, 4_000);
}

#[test]
fn a_killed_worker_resumes_from_committed_offsets_on_tansu() {
    let Some(broker) = Broker::tansu() else {
        return;
    };
    broker.create_topic("in", PARTITIONS);
    broker.create_topic("out", PARTITIONS);
    crash_and_resume(&broker, 2_000);
}

#[test]
fn sigterm_finishes_the_batch_commits_and_exits_zero() {
    let broker = mock_process_with(&[("in", PARTITIONS), ("out", PARTITIONS)]);
    produce_numbered(&broker, "in", PARTITIONS, 0, 20_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let job = pass_through_job(dir.path(), &broker, "term");
    let mut w = WorkerProc::spawn(&job, &[]);
    eventually("a batch", Duration::from_secs(60), || {
        w.count_logs("batch completed") >= 2
    });
    let progress = w.progress().expect("GET /progress");
    assert!(
        progress["batches"]
            .as_array()
            .is_some_and(|b| !b.is_empty()),
        "{progress}"
    );
    assert_eq!(w.get("/healthz").map(|r| r.0), Some(200));
    let metrics = w.get("/metrics").expect("GET /metrics").1;
    assert!(metrics.contains("weir_offset_lag"), "{metrics}");
    w.signal("TERM");
    let status = w
        .wait_exit(Duration::from_secs(30))
        .expect("exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", w.all_logs());
    assert!(w.wait_log("SIGTERM", Duration::ZERO).is_some());
    // Everything below the committed offsets was written, and nothing above them: the last
    // batch was committed after its output, and before the exit.
    let committed = committed(&broker, "term", "in", PARTITIONS);
    let out = read_all(&broker, "out");
    assert_eq!(
        out.len() as i64,
        committed.iter().sum::<i64>(),
        "output records vs committed offsets {committed:?}"
    );
    assert!(
        committed.iter().all(|c| *c < 5_000),
        "the worker stopped before draining: {committed:?}"
    );
    for r in &out {
        let v: serde_json::Value = serde_json::from_slice(&r.value).expect("json");
        let (n, p) = (v["n"].as_i64().expect("n"), v["p"].as_i64().expect("p"));
        assert!(
            n / i64::from(PARTITIONS) < committed[p as usize],
            "record {n} of partition {p} is beyond the committed offset"
        );
    }
}

#[test]
fn a_bad_expression_fails_at_load_with_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = job_file(
        dir.path(),
        "batchInterval: 1s\nsource: {kafka: {bootstrapServers: 'localhost:1', topics: [in]}}\npipeline:\n  - {id: f, filter: \"value.n >\"}\nsink: {stdout: {}}\n",
    );
    let out = std::process::Command::new(WORKER)
        .arg("run")
        .arg(&job)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pipeline[0].filter") && err.contains("line 1 column"),
        "{err}"
    );
    let out = std::process::Command::new(WORKER)
        .arg("validate")
        .arg(&job)
        .output()
        .expect("validate");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_fatal_error_goes_to_the_termination_log_and_exits_non_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = job_file(dir.path(), "batchInterval: 1s\nsource: {kafka: {bootstrapServers: 'localhost:1', topics: [in]}}\nsink: {stdout: {}}\n");
    let log = dir.path().join("termination-log");
    let out = std::process::Command::new(WORKER)
        .arg("run")
        .arg(&job)
        .args(["--worker", "3", "--workers", "2", "--termination-log"])
        .arg(&log)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let msg = std::fs::read_to_string(&log).expect("termination log written");
    assert!(
        msg.contains("ordinal 3 is not below the worker count 2"),
        "{msg}"
    );
}

#[test]
fn sigterm_while_the_broker_is_unreachable_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_held, refused) = refused_address();
    let job = job_file(dir.path(), &format!("batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: '{refused}', topics: [in]}}}}\nsink: {{stdout: {{}}}}\n"));
    let mut w = WorkerProc::spawn(&job, &[]);
    eventually("a failed metadata request", Duration::from_secs(30), || {
        w.count_logs("retrying in") >= 1
    });
    w.signal("TERM");
    let status = w
        .wait_exit(Duration::from_secs(30))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", w.all_logs());
}

/// Runs the worker binary with `args` and returns (exit code, stderr).
fn worker(args: &[&std::ffi::OsStr]) -> (Option<i32>, String) {
    let out = std::process::Command::new(WORKER)
        .args(args)
        .output()
        .expect("weir-worker");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn every_refusal_of_run_before_the_first_record_is_a_refusal_of_validate_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let head =
        "batchInterval: 1s\nsource: {kafka: {bootstrapServers: '127.0.0.1:1', topics: [in], ";
    let cases = [
        (
            "props-unknown",
            format!("{head}properties: {{fetch.wait.max.mss: '10'}}}}}}\nsink: {{stdout: {{}}}}\n"),
            "No such configuration property",
        ),
        (
            "props-range",
            format!("{head}properties: {{linger.ms: '-5'}}}}}}\nsink: {{stdout: {{}}}}\n"),
            "linger.ms",
        ),
        (
            "window",
            "batchInterval: 10ms\nsource: {kafka: {bootstrapServers: '127.0.0.1:1', topics: [in]}}\npipeline:\n  - {id: k, keyBy: value}\n  - {id: c, window: {length: 2h}, aggregate: {count: {}}}\nsink: {stdout: {}}\n".to_string(),
            "at most 100000 are kept",
        ),
        (
            "cel-type",
            format!("{head}}}}}\npipeline:\n  - {{id: m, map: '1 + \"a\"'}}\nsink: {{stdout: {{}}}}\n"),
            "fails on every record: no operator +",
        ),
        (
            "cel-div",
            format!("{head}}}}}\npipeline:\n  - {{id: m, map: 'value.n / (1 / 0)'}}\nsink: {{stdout: {{}}}}\n"),
            "division by zero",
        ),
        (
            "sql",
            format!("{head}}}}}\npipeline:\n  - {{id: q, sql: 'SELECT page FROM input LIMIT 5'}}\nsink: {{stdout: {{}}}}\n"),
            "pipeline[0].sql: line 1, column 30: LIMIT is not supported",
        ),
        (
            "avro-schema",
            format!("{head}}}, format: avro, avro: {{schema: {{file: {}}}}}}}\nsink: {{stdout: {{}}}}\n", dir.path().join("not-a-schema.avsc").display()),
            "not-a-schema.avsc is not a schema",
        ),
    ];
    std::fs::write(
        dir.path().join("not-a-schema.avsc"),
        "{\"type\": \"recrod\"}",
    )
    .expect("write");
    for (name, yaml, why) in cases {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).expect("write job");
        let (code, err) = worker(&["validate".as_ref(), path.as_os_str()]);
        assert_eq!(code, Some(2), "validate {name}: {err}");
        assert!(err.contains(why), "validate {name}: {err}");
        let (code, err) = worker(&[
            "run".as_ref(),
            path.as_os_str(),
            "--http-addr".as_ref(),
            "127.0.0.1:0".as_ref(),
        ]);
        assert_eq!(code, Some(2), "run {name}: {err}");
        assert!(err.contains(why), "run {name}: {err}");
    }
}

#[test]
fn a_batch_budget_that_cannot_work_is_refused_before_anything_is_read_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = job_file(
        dir.path(),
        "batchInterval: 1s\nsource: {kafka: {bootstrapServers: 'localhost:1', topics: [in]}}\nsink: {stdout: {}}\n",
    );
    for (flags, says) in [
        (&["--batch-bytes", "1Ki"][..], "set at least 64Ki"),
        (&["--batch-bytes", "64MB"][..], "use Ki, Mi, Gi"),
        (
            &["--batch-records", "0"][..],
            "--batch-records must be at least 1",
        ),
    ] {
        let mut args: Vec<&std::ffi::OsStr> = vec!["run".as_ref(), job.as_os_str()];
        args.extend(flags.iter().map(std::ffi::OsStr::new));
        let (code, err) = worker(&args);
        assert_eq!(code, Some(2), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
    }
}

#[test]
fn an_invalid_log_level_is_refused_and_logs_to_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = job_file(dir.path(), "batchInterval: 1s\nsource: {kafka: {bootstrapServers: 'localhost:1', topics: [in]}}\nsink: {stdout: {}}\n");
    let (code, err) = worker(&[
        "--log-level".as_ref(),
        "weir_worker=loud".as_ref(),
        "validate".as_ref(),
        job.as_os_str(),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("invalid --log-level"), "{err}");
    // stderr is a pipe here, as when it goes to a file or a log collector.
    let (code, err) = worker(&[
        "run".as_ref(),
        job.as_os_str(),
        "--workers".as_ref(),
        "0".as_ref(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(!err.contains('\u{1b}'), "ANSI codes in {err:?}");
}

#[test]
fn an_unwritable_termination_log_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = job_file(dir.path(), "batchInterval: 1s\nsource: {kafka: {bootstrapServers: 'localhost:1', topics: [in]}}\nsink: {stdout: {}}\n");
    let log = dir.path().join("no-such-dir/termination-log");
    let (code, err) = worker(&[
        "run".as_ref(),
        job.as_os_str(),
        "--workers".as_ref(),
        "0".as_ref(),
        "--termination-log".as_ref(),
        log.as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("termination log is not writable"), "{err}");
    assert!(err.contains("cannot write the termination log"), "{err}");
}

#[test]
fn mock_kafka_refuses_a_negative_partition_count_without_aborting() {
    let (code, err) = worker(&["mock-kafka".as_ref(), "--topic".as_ref(), "x:-3".as_ref()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("1 to 10000 partitions"), "{err}");
}

#[test]
fn promtool_finds_the_live_metrics_clean() {
    let Some(promtool) = weir_testkit::tools::promtool() else {
        return;
    };
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/word-count.yaml");
    let mut w = WorkerProc::spawn(&example, &["--embedded", "--max-batches", "100"]);
    eventually("two batches", Duration::from_secs(60), || {
        w.count_logs("batch completed") >= 2
    });
    let metrics = w.get("/metrics").expect("GET /metrics").1;
    w.signal("TERM");
    let _ = w.wait_exit(Duration::from_secs(30));
    for name in [
        "weir_batch_processing_seconds_bucket",
        "weir_batch_total_delay_seconds_bucket",
        "weir_worker_offset_lag",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    promtool_check(&promtool, &metrics);
}

#[test]
fn the_event_time_example_runs_embedded_and_shows_its_watermark() {
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/page-views-by-minute.yaml");
    let mut w = WorkerProc::spawn(&example, &["--embedded", "--max-batches", "100"]);
    eventually("two batches of each stage", Duration::from_secs(60), || {
        w.count_logs("batch completed") >= 4
    });
    let progress = w.progress().expect("progress");
    let metrics = w.get("/metrics").expect("GET /metrics").1;
    w.signal("TERM");
    assert!(w
        .wait_exit(Duration::from_secs(30))
        .expect("exit")
        .success());
    // The first stage's watermark: each partition's latest view time less 5 s, the least.
    let et = &progress["batches"][progress["batches"].as_array().expect("batches").len() - 1]
        ["eventTime"];
    let wm = chrono::DateTime::parse_from_rfc3339(et["watermark"].as_str().expect("watermark"))
        .expect("RFC 3339");
    let behind = chrono::Utc::now().signed_duration_since(wm).num_seconds();
    assert!(
        (4..60).contains(&behind),
        "watermark {wm}, {behind} s behind: {et}"
    );
    assert_eq!(
        et["partitions"].as_array().expect("partitions").len(),
        4,
        "{et}"
    );
    // The windows' stage reads its watermark from the first stage's.
    let windows = &progress["stages"][0];
    assert_eq!(windows["stage"], "views");
    for name in ["weir_watermark_lag_seconds", "weir_late_records_total"] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    if let Some(promtool) = weir_testkit::tools::promtool() {
        promtool_check(&promtool, &metrics);
    }
}

/// `promtool check metrics` finds nothing to say of `metrics`.
fn promtool_check(promtool: &Path, metrics: &str) {
    let mut check = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.as_bytes())
        .expect("write metrics");
    let out = check.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}\n{metrics}"
    );
}

#[test]
fn the_sql_example_runs_embedded_and_writes_closed_windows() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/page-stats-sql.yaml");
    let mut w = WorkerProc::spawn(&example, &["--embedded", "--max-batches", "200"]);
    // Ten-second windows of the views' own time, closed 5 s after they end.
    let written = || {
        w.all_logs()
            .lines()
            .filter(|l| l.contains("batch completed") && l.contains("\"stage\":\"stats\""))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["fields"]["records_out"].as_u64())
            .sum::<u64>()
    };
    eventually("the first windows written", Duration::from_secs(90), || {
        written() > 0
    });
    w.signal("TERM");
    assert!(w
        .wait_exit(Duration::from_secs(30))
        .expect("exit")
        .success());
}

#[test]
fn explain_prints_the_compiled_steps_and_refuses_a_bad_query_with_its_position() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/page-stats-sql.yaml");
    let out = std::process::Command::new(WORKER)
        .arg("explain")
        .arg(&example)
        .output()
        .expect("weir-worker explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "event time: value.ts",
        "stats-where   filter: ((value.page != \"/health\") && (value.ms > 0))",
        "stats-key     keyBy: value.page",
        "-> page-stats-sql-stats-repartition (repartition topic: every record, atLeastOnce)",
        "stage stats: reads page-stats-sql-stats-repartition",
    ] {
        assert!(text.contains(line), "{line:?} missing:\n{text}");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let job = job_file(
        dir.path(),
        "batchInterval: 1s\nsource: {kafka: {bootstrapServers: 'k:9092', topics: [in]}}\nsink: {stdout: {}}\npipeline:\n- id: q\n  sql: |\n    SELECT page, COUNT(*) AS n\n    FROM input ORDER BY page\n",
    );
    for command in ["explain", "validate"] {
        let (code, err) = worker(&[command.as_ref(), job.as_os_str()]);
        assert_eq!(code, Some(2), "{command}: {err}");
        assert!(
            err.contains("pipeline[0].sql: line 2, column 21: ORDER BY is not supported"),
            "{command}: {err}"
        );
    }
}

#[test]
fn the_join_example_runs_embedded_against_its_sample_table() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/views-by-plan.yaml");
    let mut w = WorkerProc::spawn(&example, &["--embedded", "--max-batches", "200"]);
    eventually(
        "a batch of the per-plan counts",
        Duration::from_secs(60),
        || w.completed("views") >= 1,
    );
    let loaded = w
        .wait_log("join table loaded", Duration::from_secs(5))
        .expect("the table's load is logged");
    let line: serde_json::Value = serde_json::from_str(&loaded).expect("a JSON log line");
    assert_eq!(line["fields"]["rows"], 40, "{loaded}");
    assert_eq!(line["fields"]["step"], "with-user", "{loaded}");
    w.signal("TERM");
    assert!(w
        .wait_exit(Duration::from_secs(30))
        .expect("exit")
        .success());
}
