//! The PostgreSQL sink against a real server (a throwaway one per test): rows, state and offsets
//! commit together; a restarted worker resumes from `weir_offsets` whatever the Kafka group
//! says and rebuilds its state from `weir_state`; a replayed batch adds nothing; bad settings
//! fail with a message that says what to fix; killed worker processes lose and repeat nothing.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::pg::PgServer;
use common::*;
use weir_worker::expr::Val;

const PARTITIONS: i32 = 2;

/// Lines of words; each partition has words of its own, so a key's state lives in one
/// partition.
fn produce_lines(broker: &Broker, from: usize, n: usize, counts: &mut HashMap<String, i64>) {
    for p in 0..PARTITIONS {
        let lines: Vec<String> = (from..from + n)
            .map(|i| {
                (0..4)
                    .map(|j| format!("p{p}w{}", (i * 7 + j * 13 + i / 3) % 17))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        for w in lines.iter().flat_map(|l| l.split(' ')) {
            *counts.entry(w.to_string()).or_default() += 1;
        }
        let payloads: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        produce_raw(broker, "in", p, &payloads);
    }
}

fn word_count(pg: &PgServer, extra_source: &str) -> String {
    format!(
        r#"
batchInterval: 100ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: wc, backpressure: {{enabled: false}}{extra_source}}}
  format: text
pipeline:
  - {{id: words, flatMap: "value.split(' ')"}}
  - {{id: by-word, keyBy: item}}
  - {{id: counts, state: {{initial: '0', update: 'state + size(values)'}}}}
sink: {{postgres: {{table: word_counts, url: "{}"}}}}
"#,
        pg.url()
    )
}

/// The table's rows as key -> count.
fn table(pg: &PgServer, name: &str) -> HashMap<String, i64> {
    pg.client()
        .query(&format!("SELECT key, value::text FROM {name}"), &[])
        .expect("select")
        .iter()
        .map(|r| {
            let v: String = r.get(1);
            (r.get(0), v.parse().expect("a number"))
        })
        .collect()
}

/// `weir_offsets` of the job, per partition of `in`.
fn stored_offsets(pg: &PgServer) -> Vec<i64> {
    let rows = pg
        .client()
        .query(
            "SELECT partition, until_offset FROM weir_offsets WHERE job = 'wc' AND topic = 'in' ORDER BY partition",
            &[],
        )
        .expect("select");
    rows.iter().map(|r| r.get(1)).collect()
}

/// The `counts` step's state in `weir_state`, decoded.
fn stored_state(pg: &PgServer) -> HashMap<String, i64> {
    pg.client()
        .query(
            "SELECT key, value FROM weir_state WHERE job = 'wc' AND step = 'counts'",
            &[],
        )
        .expect("select")
        .iter()
        .map(|r| {
            let k = weir_worker::value::codec::decode(r.get(0)).expect("key");
            let v = weir_worker::value::codec::decode(r.get(1)).expect("value");
            // A state step keeps the key's state and when it was last seen.
            match (k, v.field("state")) {
                (Val::Str(k), Some(Val::Int(v))) => (k.to_string(), *v),
                other => panic!("unexpected state {other:?}"),
            }
        })
        .collect()
}

fn commit_group(broker: &Broker, offsets: &[i64]) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let c: BaseConsumer = broker
        .client()
        .set("group.id", "wc")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (p, o) in offsets.iter().enumerate() {
        tpl.add_partition_offset("in", p as i32, rdkafka::Offset::Offset(*o))
            .expect("tpl");
    }
    c.commit(&tpl, CommitMode::Sync).expect("commit");
}

fn broker() -> Broker {
    let b = Broker::in_process();
    b.create_topic("in", PARTITIONS);
    b
}

#[test]
fn rows_state_and_offsets_land_together_and_a_restart_resumes_from_weir_offsets_not_the_group() {
    let Some(pg) = PgServer::start() else { return };
    let broker = broker();
    let job = word_count(&pg, "");
    let mut expected = HashMap::new();
    produce_lines(&broker, 0, 60, &mut expected);
    let snap = run(&broker, &job, 3);
    assert_eq!(snap.records_in, 120);
    let ends = high_watermarks(&broker, "in", PARTITIONS);
    assert_eq!(table(&pg, "word_counts"), expected);
    assert_eq!(stored_offsets(&pg), ends, "offsets stored with the rows");
    assert_eq!(stored_state(&pg), expected, "state stored with the rows");
    assert_eq!(
        committed(&broker, "wc", "in", PARTITIONS),
        ends,
        "the group mirrors the stored offsets for lag tools"
    );

    // The group falls behind (a mirror commit lost in a crash): the database wins, and no
    // line is counted twice.
    commit_group(&broker, &[0, 0]);
    produce_lines(&broker, 60, 40, &mut expected);
    let snap = run(&broker, &job, 3);
    assert_eq!(snap.records_in, 80, "only the new lines were read");
    assert_eq!(table(&pg, "word_counts"), expected);
    assert_eq!(stored_state(&pg), expected);

    // The group runs ahead (moved by hand): the database still wins, and no line is lost.
    produce_lines(&broker, 100, 30, &mut expected);
    commit_group(&broker, &high_watermarks(&broker, "in", PARTITIONS));
    let snap = run(&broker, &job, 3);
    assert_eq!(
        snap.records_in, 60,
        "the lines after the stored offsets were read"
    );
    assert_eq!(table(&pg, "word_counts"), expected);
    assert_eq!(stored_state(&pg), expected);
    let ends = high_watermarks(&broker, "in", PARTITIONS);
    assert_eq!(stored_offsets(&pg), ends);
    assert_eq!(committed(&broker, "wc", "in", PARTITIONS), ends);
}

#[test]
fn upserted_rows_equal_the_true_counts_when_every_partition_has_the_same_words() {
    let Some(pg) = PgServer::start() else { return };
    let broker = Broker::in_process();
    // The shuffle the worker inserts before `counts`; the mock cannot create topics for it.
    for (t, n) in [("in", 4), ("t-counts-repartition", 4)] {
        broker.create_topic(t, n);
    }
    let mut totals: HashMap<String, i64> = HashMap::new();
    for p in 0..4 {
        let lines: Vec<String> = (0..40)
            .map(|i| format!("w{} w{}", i % 5, (i + p) % 3))
            .collect();
        for w in lines.iter().flat_map(|l| l.split(' ')) {
            *totals.entry(w.to_string()).or_default() += 1;
        }
        let payloads: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        produce_raw(&broker, "in", p, &payloads);
    }
    // Per input partition, each row would hold one partition's count (about a quarter).
    run_stages_until(&broker, &word_count(&pg, ""), || {
        // The sink creates the table with its first batch.
        let made = pg
            .client()
            .query("SELECT 1 FROM word_counts LIMIT 1", &[])
            .is_ok();
        made && table(&pg, "word_counts") == totals
    });
    assert_eq!(table(&pg, "word_counts"), totals);
}

#[test]
fn state_comes_back_from_weir_state_even_with_the_group_reset_to_the_start() {
    let Some(pg) = PgServer::start() else { return };
    let broker = broker();
    let job = word_count(&pg, "");
    let mut expected = HashMap::new();
    produce_lines(&broker, 0, 50, &mut expected);
    run(&broker, &job, 2);
    // A new engine (as a new worker process) with nothing in Kafka but the input: no
    // changelog topic exists, so the counts can only come from weir_state.
    commit_group(&broker, &[0, 0]);
    produce_lines(&broker, 50, 50, &mut expected);
    let (mut engine, _) = connect(&broker, &job).expect("connect");
    let cancel = tokio_util::sync::CancellationToken::new();
    engine
        .run(
            &weir_worker::engine::Options {
                max_batches: Some(2),
                ..Default::default()
            },
            &cancel,
        )
        .expect("run");
    assert_eq!(table(&pg, "word_counts"), expected);
}

#[test]
fn a_replayed_batch_adds_no_rows_in_insert_mode_and_an_overlapping_one_is_refused() {
    use std::sync::Arc;
    use weir_worker::batch::{BatchOutput, PartitionOutput};
    use weir_worker::pipeline::Output;
    use weir_worker::plan::OffsetRange;

    let Some(pg) = PgServer::start() else { return };
    let yaml = format!(
        r#"
batchInterval: 1s
source: {{kafka: {{bootstrapServers: "127.0.0.1:9", topics: [in], groupId: ins}}}}
sink: {{postgres: {{table: events, mode: insert, url: "{}"}}}}
"#,
        pg.url()
    );
    let job = weir_worker::spec::parse_job(&yaml, "ins").expect("job");
    let id = weir_worker::client::Identity {
        namespace: "test".into(),
        job: "ins".into(),
        ordinal: 0,
        workers: 1,
    };
    let mut sink = weir_worker::sink::build(&job.spec, &id, None).expect("sink");
    assert!(sink.logs_state());
    let owned = [weir_worker::plan::TopicPartition::new("in", 0)];
    let r = sink.take_over(&owned).expect("recover").expect("a record");
    assert_eq!(r.offsets, [None], "nothing stored yet");

    let outputs: Vec<Output> = (0..5)
        .map(|i| Output {
            key: Val::str(&format!("k{i}")),
            value: Val::Int(i),
            source_offset: Some(i),
            event: None,
        })
        .collect();
    let range = |from, until| OffsetRange {
        topic: Arc::from("in"),
        partition: 0,
        from,
        until,
    };
    let first = range(0, 5);
    let batch = |r| BatchOutput {
        batch_time_ms: 1_000,
        dead: &[],
        partitions: vec![PartitionOutput {
            range: r,
            outputs: &outputs,
            changes: &[],
            marker: None,
        }],
    };
    sink.write(&batch(&first)).expect("write");
    // The commit's acknowledgement was lost; the engine runs the same batch again.
    sink.write(&batch(&first)).expect("replay");
    let n: i64 = pg
        .client()
        .query_one("SELECT count(*) FROM events", &[])
        .expect("count")
        .get(0);
    assert_eq!(n, 5, "the replay added no rows");

    // A second writer's batch that overlaps what is stored is refused, not half repeated.
    let overlapping = range(3, 8);
    let err = sink
        .write(&batch(&overlapping))
        .expect_err("overlap refused")
        .to_string();
    assert!(
        err.contains("another worker") && err.contains("at offset 5"),
        "{err}"
    );
    let r = sink.take_over(&owned).expect("recover").expect("a record");
    assert_eq!(r.offsets, [Some(5)]);
}

#[test]
fn a_newer_workers_takeover_fences_the_older_one_in_postgresql() {
    use std::sync::Arc;
    use weir_worker::batch::{BatchOutput, PartitionOutput};
    use weir_worker::pipeline::Output;
    use weir_worker::plan::OffsetRange;

    let Some(pg) = PgServer::start() else { return };
    let yaml = format!(
        r#"
batchInterval: 1s
source: {{kafka: {{bootstrapServers: "127.0.0.1:9", topics: [in], groupId: fence}}}}
sink: {{postgres: {{table: events, mode: insert, url: "{}"}}}}
"#,
        pg.url()
    );
    let job = weir_worker::spec::parse_job(&yaml, "fence").expect("job");
    let id = weir_worker::client::Identity {
        namespace: "test".into(),
        job: "fence".into(),
        ordinal: 0,
        workers: 1,
    };
    let owned = [weir_worker::plan::TopicPartition::new("in", 0)];
    let outputs: Vec<Output> = (0..3)
        .map(|i| Output {
            key: Val::str(&format!("k{i}")),
            value: Val::Int(i),
            source_offset: Some(i),
            event: None,
        })
        .collect();
    let write = |sink: &mut Box<dyn weir_worker::sink::Sink>, from, until| {
        let range = OffsetRange {
            topic: Arc::from("in"),
            partition: 0,
            from,
            until,
        };
        sink.write(&BatchOutput {
            batch_time_ms: 1_000 + from,
            dead: &[],
            partitions: vec![PartitionOutput {
                range: &range,
                outputs: &outputs,
                changes: &[],
                marker: None,
            }],
        })
    };
    let mut older = weir_worker::sink::build(&job.spec, &id, None).expect("sink");
    older.take_over(&owned).expect("older takes over");
    write(&mut older, 0, 3).expect("the older worker's batch");

    // A second worker with the same ordinal starts while the older one still runs.
    let mut newer = weir_worker::sink::build(&job.spec, &id, None).expect("sink");
    let r = newer
        .take_over(&owned)
        .expect("newer takes over")
        .expect("a record");
    assert_eq!(
        r.offsets,
        [Some(3)],
        "the newer worker resumes after the older one's batch"
    );

    let err = write(&mut older, 3, 6).expect_err("the older worker is fenced");
    assert!(matches!(err, weir_worker::error::Error::Fenced(_)), "{err}");
    assert!(
        err.to_string()
            .contains("a newer worker owns this partition"),
        "{err}"
    );
    write(&mut newer, 3, 6).expect("the newer worker's batch");
    let n: i64 = pg
        .client()
        .query_one("SELECT count(*) FROM events", &[])
        .expect("count")
        .get(0);
    assert_eq!(n, 6, "each batch stored once, none by the fenced worker");
}

#[test]
fn bad_settings_fail_with_what_to_fix() {
    // A password in the spec is refused at load, pointing to where it belongs.
    let yaml = |sink: &str| {
        format!(
            "batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: 'b:9092', topics: [in]}}}}\nsink: {{postgres: {sink}}}\n"
        )
    };
    let err = weir_worker::spec::parse_job(
        &yaml("{table: t, url: 'postgresql://app:hunter2@db/app'}"),
        "j",
    )
    .expect_err("password refused")
    .to_string();
    assert!(
        err.contains("sink.postgres.url") && err.contains("urlFile") && !err.contains("hunter2"),
        "{err}"
    );
    let err = weir_worker::spec::parse_job(&yaml("{table: 'drop table x'}"), "j")
        .expect_err("bad table")
        .to_string();
    assert!(err.contains("sink.postgres.table"), "{err}");

    // No connection settings anywhere.
    let job = weir_worker::spec::parse_job(&yaml("{table: t}"), "j").expect("job");
    let id = weir_worker::client::Identity {
        namespace: "test".into(),
        job: "j".into(),
        ordinal: 0,
        workers: 1,
    };
    let err = match weir_worker::sink::PostgresSink::with_env(&job.spec, &id, |_| None) {
        Ok(_) => panic!("a sink without settings was built"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("WEIR_PG_URL") && err.contains("PGHOST"),
        "{err}"
    );

    // A server that is not there: the error names where the worker tried, not the password.
    let (_held, refused) = refused_address();
    let job = weir_worker::spec::parse_job(&yaml("{table: t}"), "j").expect("job");
    let mut sink = weir_worker::sink::PostgresSink::with_env(&job.spec, &id, |k| match k {
        "WEIR_PG_URL" => Some(format!("postgresql://app@{refused}/app")),
        "PGPASSWORD" => Some("hunter2".into()),
        _ => None,
    })
    .expect("settings");
    let err = match weir_worker::sink::Sink::take_over(
        &mut sink,
        &[weir_worker::plan::TopicPartition::new("in", 0)],
    ) {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!("app@{refused}/app")) && !err.contains("hunter2"),
        "{err}"
    );
}

#[test]
fn killed_worker_processes_end_with_each_count_exactly_as_without_kills() {
    let Some(pg) = PgServer::start() else { return };
    let broker = mock_process_with(&[("in", PARTITIONS)]);
    let mut expected = HashMap::new();
    produce_lines(&broker, 0, 400, &mut expected);
    let dir = tempfile::tempdir().expect("tempdir");
    // 500 lines/s x 0.1 s = 50 lines per partition per batch: eight batches to drain.
    // Each partition has words of its own, so a per-partition state is each word's whole
    // state: the test is about kills of one stage, not about the shuffle.
    let yaml = word_count(&pg, ", maxRatePerPartition: 500")
        .replace("BOOTSTRAP", &broker.bootstrap())
        .replace("{id: counts,", "{id: counts, perPartition: true,");
    let file = job_file(dir.path(), &yaml);
    let logs = killed_then_drained(&broker, &pg, &file, 4, 37);
    assert!(
        logs.contains("read offsets and state from PostgreSQL"),
        "the last worker resumed from the database"
    );
    assert_eq!(table(&pg, "word_counts"), expected);
    assert_eq!(stored_state(&pg), expected);
}

/// Runs the job file's worker `kills` times, each killed at a varying moment after its first
/// batch (`step_ms` x the kill's number squared: between batches, or in the middle of one's
/// transaction), then once more until `weir_offsets` holds every input partition's end, and
/// stops it; returns the last worker's logs.
fn killed_then_drained(
    broker: &Broker,
    pg: &PgServer,
    file: &std::path::Path,
    kills: u64,
    step_ms: u64,
) -> String {
    for kill in 0..kills {
        let mut w = WorkerProc::spawn(file, &[]);
        eventually("a batch before the kill", Duration::from_secs(60), || {
            w.count_logs("batch completed") >= 1
        });
        std::thread::sleep(Duration::from_millis(step_ms * kill * kill));
        w.signal("KILL");
        w.wait_exit(Duration::from_secs(10))
            .expect("killed worker exits");
    }
    let mut last = WorkerProc::spawn(file, &[]);
    let ends = high_watermarks(broker, "in", PARTITIONS);
    eventually(
        "the last worker to store every offset",
        Duration::from_secs(120),
        || stored_offsets(pg) == ends,
    );
    last.signal("TERM");
    assert!(last
        .wait_exit(Duration::from_secs(20))
        .expect("exit")
        .success());
    last.all_logs()
}

/// The last value per key of results read in order: what a reader that keeps the latest
/// record per key holds.
fn latest(results: impl IntoIterator<Item = (String, i64)>) -> HashMap<String, i64> {
    results.into_iter().collect()
}

#[test]
fn beside_postgres_a_topic_and_files_get_every_result_at_least_once_across_kills() {
    let Some(pg) = PgServer::start() else { return };
    let broker = mock_process_with(&[("in", PARTITIONS), ("counts-out", PARTITIONS)]);
    let mut expected = HashMap::new();
    produce_lines(&broker, 0, 300, &mut expected);
    let dir = tempfile::tempdir().expect("tempdir");
    let files = dir.path().join("out");
    // PostgreSQL is the record of offsets and commits each batch last: the Kafka topic and the
    // files have a batch before the database does, so a kill repeats output there, never
    // loses it.
    let yaml = word_count(&pg, ", maxRatePerPartition: 500")
        .replace("BOOTSTRAP", &broker.bootstrap())
        .replace("{id: counts,", "{id: counts, perPartition: true,")
        .replace(
            "sink: {postgres: {",
            &format!(
                "sink: {{kafka: {{topic: counts-out}}, file: {{path: {}}}, postgres: {{",
                files.display()
            ),
        );
    let file = job_file(dir.path(), &yaml);
    killed_then_drained(&broker, &pg, &file, 3, 41);
    assert_eq!(table(&pg, "word_counts"), expected);

    let topic = read_all(&broker, "counts-out").into_iter().map(|r| {
        let v: i64 = std::str::from_utf8(&r.value)
            .expect("UTF-8")
            .parse()
            .expect("a count");
        (r.key.expect("a keyed result"), v)
    });
    assert_eq!(latest(topic), expected, "the Kafka sink's latest counts");

    // Batch files sort by partition and first offset: in the order they were written.
    let mut names: Vec<_> = std::fs::read_dir(&files)
        .expect("the sink's directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    names.sort();
    let lines: Vec<(String, i64)> = names
        .iter()
        .flat_map(|p| {
            let text = std::fs::read_to_string(p).expect("a batch file");
            text.lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
                    let key = v["key"].as_str().expect("key").to_string();
                    (key, v["value"].as_i64().expect("count"))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(latest(lines), expected, "the files' latest counts");
}
