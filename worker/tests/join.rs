//! Stream-table joins through the engine on a real broker (librdkafka's mock cluster): a
//! table topic that changes while the job runs (updates, tombstones) gives each record the
//! row as of its own time, read live, as one backlog, and across a restart; a file table (a
//! blacklist, seed 002's `transform` with a reference RDD) filters what it lists and is
//! reread when the file changes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde_json::{json, Value};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// A table change: at a time, a user's row (None: a tombstone).
type Change = (i64, String, Option<Value>);

fn table_changes() -> Vec<Change> {
    let row = |u: usize, v: usize| Some(json!({"name": format!("n{u}-v{v}"), "tier": v}));
    let mut out: Vec<Change> = (0..10).map(|u| (T0, format!("u{u}"), row(u, 0))).collect();
    for u in 1..4 {
        out.push((T0 + 10_000, format!("u{u}"), row(u, 1)));
    }
    out.push((T0 + 10_000, "u4".into(), None));
    out.push((T0 + 20_000, "u4".into(), row(4, 2)));
    out.push((T0 + 20_000, "u1".into(), row(1, 2)));
    out.push((T0 + 25_000, "u0".into(), None));
    out
}

/// 300 views over 30 s, per partition in time order, of users u0..u11 (u10 and u11 are never
/// in the table).
fn views() -> Vec<(i32, i64, String)> {
    let mut rng = weir_testkit::random::Lcg::new(11);
    (0..300)
        .map(|i| {
            let ts = T0 + i * 100;
            ((i % 2) as i32, ts, format!("u{}", rng.below(12)))
        })
        .collect()
}

fn send(p: &BaseProducer, topic: &str, partition: i32, key: &str, payload: Option<&str>, ts: i64) {
    let mut r = BaseRecord::<str, str>::to(topic)
        .key(key)
        .partition(partition)
        .timestamp(ts);
    if let Some(v) = payload {
        r = r.payload(v);
    }
    p.send(r).map_err(|(e, _)| e).expect("send");
}

fn produce_changes(broker: &Broker, changes: &[Change]) {
    let p: BaseProducer = broker.client().create().expect("producer");
    for (i, (ts, user, row)) in changes.iter().enumerate() {
        let text = row.as_ref().map(Value::to_string);
        // Rows spread over the table's partitions: a global table reads them all.
        send(&p, "users", (i % 3) as i32, user, text.as_deref(), *ts);
    }
    p.flush(Duration::from_secs(10)).expect("flush");
}

fn produce_views(broker: &Broker, views: &[(i32, i64, String)]) {
    let p: BaseProducer = broker.client().create().expect("producer");
    for (partition, ts, user) in views {
        let v = json!({"user": user, "at": ts}).to_string();
        send(&p, "in", *partition, user, Some(&v), *ts);
    }
    p.flush(Duration::from_secs(10)).expect("flush");
}

/// Each view's expected output: the user's row as of the view's time, or null.
fn brute_force(views: &[(i32, i64, String)], changes: &[Change]) -> Vec<Value> {
    let mut out: Vec<Value> = views
        .iter()
        .map(|(_, ts, user)| {
            let row = changes
                .iter()
                .rfind(|(t, u, _)| u == user && t <= ts)
                .and_then(|(_, _, row)| row.clone());
            let name = row.as_ref().map_or(Value::Null, |r| r["name"].clone());
            json!({"user": user, "at": ts, "name": name})
        })
        .collect();
    out.sort_by_key(|v| v.to_string());
    out
}

fn job(group: &str, out: &str, kind: &str) -> String {
    format!(
        r#"
batchInterval: 100ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: {group}, backpressure: {{enabled: false}}}}
pipeline:
  - id: with-user
    join: {{table: {{topic: users}}, on: value.user, kind: {kind}}}
  - id: shape
    select: {{user: value.user, at: value.at, name: "table == null ? null : table.name"}}
sink: {{kafka: {{topic: {out}}}}}
"#
    )
}

fn output(broker: &Broker, topic: &str) -> Vec<Value> {
    let mut rows: Vec<Value> = read_all(broker, topic)
        .iter()
        .map(|r| serde_json::from_slice(&r.value).expect("JSON"))
        .collect();
    rows.sort_by_key(|v| v.to_string());
    rows
}

/// Asserts two outputs equal, naming only the rows that differ.
fn assert_rows(got: Vec<Value>, expected: &[Value], what: &str) {
    let by_at = |rows: &[Value]| -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in rows {
            m.entry(r["at"].to_string())
                .or_default()
                .push(r.to_string());
        }
        m
    };
    let (g, e) = (by_at(&got), by_at(expected));
    let differ: Vec<String> = e
        .keys()
        .chain(g.keys())
        .filter(|k| g.get(*k) != e.get(*k))
        .take(10)
        .map(|k| format!("at {k}: got {:?}, expected {:?}", g.get(k), e.get(k)))
        .collect();
    assert!(
        differ.is_empty(),
        "{what}: {} rows, expected {}:\n{}",
        got.len(),
        expected.len(),
        differ.join("\n")
    );
}

fn broker() -> Broker {
    let broker = Broker::in_process();
    broker.create_topic("in", 2);
    broker.create_topic("users", 3);
    for t in ["live", "backlog", "restarted", "inner", "sql"] {
        broker.create_topic(t, 2);
    }
    broker
}

/// Runs one engine batch by batch while the input arrives: before each 3 s of views, the
/// table changes up to that time. `restart_at`: the engine is dropped and connected anew
/// (re-reading the table from its start) before that chunk.
fn run_live(broker: &Broker, yaml: &str, restart_at: Option<usize>) {
    let changes = table_changes();
    let views = views();
    let cancel = tokio_util::sync::CancellationToken::new();
    let once = weir_worker::engine::Options {
        max_batches: Some(1),
        ..Default::default()
    };
    let mut engine = None;
    let mut sent = 0;
    for (chunk, start) in (0..30_000).step_by(3_000).enumerate() {
        let until = T0 + start + 3_000;
        let due: Vec<Change> = changes
            .iter()
            .skip(sent)
            .take_while(|(t, _, _)| *t < until)
            .cloned()
            .collect();
        sent += due.len();
        produce_changes(broker, &due);
        let chunk_views: Vec<_> = views
            .iter()
            .filter(|(_, t, _)| (T0 + start..until).contains(t))
            .cloned()
            .collect();
        produce_views(broker, &chunk_views);
        if restart_at == Some(chunk) {
            engine = None;
        }
        let e = engine.get_or_insert_with(|| connect(broker, yaml).expect("connect").0);
        e.run(&once, &cancel).expect("a batch");
    }
}

#[test]
fn a_changing_table_gives_each_record_the_row_as_of_its_time_live_backlog_and_restarted() {
    let broker = broker();
    let expected = brute_force(&views(), &table_changes());
    // Rows changed mid-run, deleted, re-added; and users never in the table.
    assert!(expected.iter().any(|v| v["name"] == "n1-v2"));
    assert!(expected
        .iter()
        .any(|v| v["user"] == "u4" && v["name"].is_null()));
    assert!(expected.iter().any(|v| v["name"] == "n4-v2"));

    run_live(&broker, &job("g-live", "live", "left"), None);
    assert_rows(output(&broker, "live"), &expected, "live");

    // The same records as one backlog: the table is read whole first, yet each view sees the
    // row of its own time.
    run(&broker, &job("g-backlog", "backlog", "left"), 3);
    assert_rows(output(&broker, "backlog"), &expected, "backlog");

    // The same join written as SQL compiles to the same steps and writes the same rows.
    let sql = job("g-sql", "sql", "left").replace(
        "  - id: with-user\n    join: {table: {topic: users}, on: value.user, kind: left}\n  - id: shape\n    select: {user: value.user, at: value.at, name: \"table == null ? null : table.name\"}\n",
        "  - id: q\n    sql: \"SELECT v.user, v.at, u.name FROM input AS v LEFT JOIN users AS u ON v.user = u._key\"\n",
    );
    assert!(sql.contains("sql: "), "{sql}");
    run(&broker, &sql, 3);
    assert_rows(output(&broker, "sql"), &expected, "sql");

    // An inner join keeps only the views that found a row.
    run(&broker, &job("g-inner", "inner", "inner"), 3);
    let found: Vec<Value> = expected
        .iter()
        .filter(|v| !v["name"].is_null())
        .cloned()
        .collect();
    assert_rows(output(&broker, "inner"), &found, "inner");
}

#[test]
fn a_restarted_worker_reads_the_table_again_and_joins_as_before() {
    let broker = broker();
    run_live(&broker, &job("g-restart", "restarted", "left"), Some(5));
    assert_rows(
        output(&broker, "restarted"),
        &brute_force(&views(), &table_changes()),
        "restarted",
    );
}

#[test]
fn a_blacklist_file_filters_what_it_lists_and_is_reread_when_it_changes() {
    let broker = Broker::in_process();
    broker.create_topic("in", 2);
    broker.create_topic("out", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("blacklist.txt");
    std::fs::write(&list, "# users whose views are not counted\nu1\nu2\n").expect("write");
    let yaml = format!(
        r#"
batchInterval: 100ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: g, backpressure: {{enabled: false}}}}
pipeline:
  - id: blacklisted
    join: {{table: {{file: {}}}, on: value.user, kind: left}}
  - {{id: allowed, filter: "table == null"}}
  - {{id: by-user, keyBy: value.user}}
  - {{id: views, aggregate: {{count: {{}}}}, perPartition: true}}
sink: {{kafka: {{topic: out}}}}
"#,
        list.display()
    );
    let counts = |rows: Vec<ReadRecord>| -> BTreeMap<String, i64> {
        let mut by = BTreeMap::new();
        for r in rows {
            let n: i64 = std::str::from_utf8(&r.value)
                .expect("utf-8")
                .parse()
                .expect("a count");
            *by.entry(r.key.expect("a key")).or_default() += n;
        }
        by
    };
    let views = views();
    let (first, second) = views.split_at(150);
    produce_views(&broker, first);
    let (mut engine, _) = connect(&broker, &yaml).expect("connect");
    let once = weir_worker::engine::Options {
        max_batches: Some(1),
        ..Default::default()
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    engine.run(&once, &cancel).expect("a batch");
    let got = counts(read_all(&broker, "out"));
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for (_, _, u) in first.iter().filter(|(_, _, u)| u != "u1" && u != "u2") {
        *expected.entry(u.clone()).or_default() += 1;
    }
    assert_eq!(got, expected);

    // The list changes (as a ConfigMap update replaces the mounted file): u1 is let back in,
    // u3 is out, from the next batch on.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&list, "u2\nu3\n").expect("rewrite");
    produce_views(&broker, second);
    engine.run(&once, &cancel).expect("a batch");
    for (_, _, u) in second.iter().filter(|(_, _, u)| u != "u2" && u != "u3") {
        *expected.entry(u.clone()).or_default() += 1;
    }
    assert_eq!(counts(read_all(&broker, "out")), expected);

    // A change that does not parse keeps the list as it was, and the job goes on.
    std::fs::write(&list, "[\"u2\", {\"not\": \"a key\"}]").expect("rewrite");
    produce_views(&broker, &second[..20]);
    engine.run(&once, &cancel).expect("a batch");
    for (_, _, u) in second[..20]
        .iter()
        .filter(|(_, _, u)| u != "u2" && u != "u3")
    {
        *expected.entry(u.clone()).or_default() += 1;
    }
    assert_eq!(counts(read_all(&broker, "out")), expected);
}

/// The table's changes produced as a client library's default partitioner places them (by
/// `partitioner`, librdkafka's name: `murmur2_random` is Java's, `consistent_random` its own).
fn produce_partitioned(broker: &Broker, topic: &str, partitioner: &str, changes: &[Change]) {
    let p: BaseProducer = broker
        .client()
        .set("partitioner", partitioner)
        .create()
        .expect("producer");
    for (ts, user, row) in changes {
        let text = row.as_ref().map(Value::to_string);
        let mut r = BaseRecord::<str, str>::to(topic).key(user).timestamp(*ts);
        if let Some(v) = &text {
            r = r.payload(v);
        }
        p.send(r).map_err(|(e, _)| e).expect("send");
    }
    p.flush(Duration::from_secs(10)).expect("flush");
}

/// The `fields` of a worker's JSON log line containing `needle`.
fn log_fields(w: &WorkerProc, needle: &str) -> Value {
    let line = w
        .wait_log(needle, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no {needle:?} in:\n{}", w.all_logs()));
    serde_json::from_str::<Value>(&line).expect("a JSON log line")["fields"].clone()
}

#[test]
fn a_partitioned_table_is_held_in_parts_and_joins_each_record_as_the_whole_table_does() {
    let broker = mock_process_with(&[
        ("in", 2),
        ("users-j", 3),
        ("users-c", 3),
        ("job-with-user-repartition", 3),
        ("out", 2),
    ]);
    let changes = table_changes();
    produce_partitioned(&broker, "users-j", "murmur2_random", &changes);
    produce_partitioned(&broker, "users-c", "consistent_random", &changes);
    // Weir's partitioners put each key where the clients' own did.
    for (topic, partitioner) in [
        ("users-j", weir_worker::spec::Partitioner::Murmur2),
        ("users-c", weir_worker::spec::Partitioner::Crc32),
    ] {
        for r in read_all(&broker, topic) {
            let key = r.key.expect("a keyed row");
            assert_eq!(
                weir_worker::partitioner::partition(partitioner, key.as_bytes(), 3),
                r.partition,
                "{topic}: key {key}"
            );
        }
    }
    let views = views();
    produce_views(&broker, &views);
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = job("g-part", "out", "left")
        .replace("{topic: users}", "{topic: users-j, partitioned: true}")
        .replace("BOOTSTRAP", &broker.bootstrap());
    let file = job_file(dir.path(), &yaml);
    // Two workers: the stage after the shuffle reads partitions 0 and 2 on worker 0, 1 on
    // worker 1, and each holds only those partitions of the table.
    let mut workers: Vec<WorkerProc> = (0..2)
        .map(|i| WorkerProc::spawn(&file, &["--worker", &i.to_string(), "--workers", "2"]))
        .collect();
    let mut held = Vec::new();
    for w in &workers {
        let f = log_fields(w, "join table loaded (its partitions of this worker)");
        held.push((
            f["partitions"].as_str().unwrap_or_default().to_string(),
            f["rows"].as_u64(),
        ));
    }
    let keys_in = |parts: &[i32]| {
        let mut keys: Vec<String> = read_all(&broker, "users-j")
            .into_iter()
            .filter(|r| parts.contains(&r.partition))
            .filter_map(|r| r.key)
            .collect();
        keys.sort();
        keys.dedup();
        keys.len() as u64
    };
    assert_eq!(held[0], ("[0, 2]".to_string(), Some(keys_in(&[0, 2]))));
    assert_eq!(held[1], ("[1]".to_string(), Some(keys_in(&[1]))));
    let expected = brute_force(&views, &changes);
    eventually("every view joined", Duration::from_secs(60), || {
        read_all(&broker, "out").len() >= expected.len()
    });
    for w in &mut workers {
        w.signal("TERM");
        assert!(w
            .wait_exit(Duration::from_secs(20))
            .expect("exit")
            .success());
    }
    assert_rows(output(&broker, "out"), &expected, "partitioned");

    // A table written by another partitioner than the job says: the worker stops with the row
    // and the fix rather than let records miss their rows.
    let yaml = job("g-wrong", "out", "left")
        .replace("{topic: users}", "{topic: users-c, partitioned: true}")
        .replace("BOOTSTRAP", &broker.bootstrap());
    let file = job_file(dir.path(), &yaml);
    let mut w = WorkerProc::spawn(&file, &[]);
    let status = w
        .wait_exit(Duration::from_secs(30))
        .expect("the worker stops");
    assert!(!status.success());
    let logs = w.all_logs();
    assert!(
        logs.contains("of the join table \\\"users-c\\\" holds key")
            && logs.contains("set join.table.partitioner"),
        "{logs}"
    );
}
