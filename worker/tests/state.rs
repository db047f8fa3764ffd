//! Keyed state through the engine on real brokers: word counts per batch, state and windows
//! that survive a restart through the changelog, and pipeline changes that keep or refuse it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const PARTITIONS: i32 = 2;

/// Lines of words; each partition has words of its own, so a key's state lives in one
/// partition and its output records keep their order.
fn lines(partition: i32, from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            (0..5)
                .map(|j| format!("p{partition}w{}", (i * 7 + j * 13 + i / 3) % 23))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn produce_lines(broker: &Broker, from: usize, n: usize, counts: &mut HashMap<String, i64>) {
    for p in 0..PARTITIONS {
        let lines = lines(p, from, n);
        for w in lines.iter().flat_map(|l| l.split(' ')) {
            *counts.entry(w.to_string()).or_default() += 1;
        }
        let payloads: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        produce_raw(broker, "in", p, &payloads);
    }
}

/// The last value written for each key: a state step's (or window's) latest result.
fn latest(broker: &Broker) -> HashMap<String, i64> {
    read_all(broker, "out")
        .into_iter()
        .filter_map(|r| {
            let v: i64 = serde_json::from_slice(&r.value).expect("a number");
            Some((r.key?, v))
        })
        .collect()
}

/// The entries of `all` whose keys `of` has.
fn only(all: HashMap<String, i64>, of: &HashMap<String, i64>) -> HashMap<String, i64> {
    all.into_iter()
        .filter(|(k, _)| of.contains_key(k))
        .collect()
}

fn job(pipeline: &str, extra: &str, broker: &Broker) -> String {
    let props = if broker.is_tansu() {
        "properties: {fetch.wait.max.ms: '10'}"
    } else {
        "properties: {}"
    };
    format!(
        r#"
batchInterval: 100ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: wc, backpressure: {{enabled: false}}, {props}}}
  format: text
pipeline:
{pipeline}
sink: {{kafka: {{topic: out}}}}
{extra}
"#
    )
}

const WORDS: &str = r#"  - {id: words, flatMap: "value.split(' ')"}
  - {id: by-word, keyBy: item}
"#;
const RUNNING_COUNT: &str =
    "  - {id: counts, state: {initial: '0', update: 'state + size(values)'}}\n";

fn broker_with_topics(broker: Broker, changelog: bool) -> Broker {
    broker.create_topic("in", PARTITIONS);
    broker.create_topic("out", PARTITIONS);
    // librdkafka's mock cluster cannot create topics through the admin API; tansu can, and
    // there the worker creates its changelog itself.
    if changelog && !broker.is_tansu() {
        broker.create_topic("wc-changelog", PARTITIONS);
    }
    broker
}

#[test]
fn word_count_per_batch_counts_every_word_of_the_batch() {
    let broker = broker_with_topics(Broker::in_process(), false);
    let mut expected = HashMap::new();
    produce_lines(&broker, 0, 50, &mut expected);
    let pipeline = format!("{WORDS}  - {{id: counts, aggregate: {{count: {{}}}}}}\n");
    let snap = run(&broker, &job(&pipeline, "", &broker), 2);
    // Everything waiting was read by the first batch, so its counts are the whole input's.
    assert_eq!(snap.batches[0].records_in, 100);
    assert_eq!(latest(&broker), expected);
}

/// Runs a running word count, restarts it (a new engine, as a new worker process would),
/// and checks that the counts go on from where they were.
fn restart_continues_counts(broker: &Broker, second_pipeline: &str) {
    let mut expected = HashMap::new();
    produce_lines(broker, 0, 100, &mut expected);
    let first = format!("{WORDS}{RUNNING_COUNT}");
    let snap = run(broker, &job(&first, "", broker), 3);
    assert_eq!(snap.records_in, 200);
    assert_eq!(latest(broker), expected);

    produce_lines(broker, 100, 100, &mut expected);
    let snap = run(broker, &job(second_pipeline, "", broker), 3);
    assert_eq!(
        snap.records_in, 200,
        "the restarted worker read only the new lines"
    );
    assert_eq!(
        latest(broker),
        expected,
        "counts after the restart include the lines before it"
    );
}

#[test]
fn a_restarted_worker_rebuilds_keyed_state_from_the_changelog_and_keeps_it_across_a_compatible_change(
) {
    let broker = broker_with_topics(Broker::in_process(), true);
    // A new step before the stateful one; the state step keeps its id and type.
    let changed =
        format!("  - {{id: not-empty, filter: \"size(value) > 0\"}}\n{WORDS}{RUNNING_COUNT}");
    restart_continues_counts(&broker, &changed);
}

#[test]
fn a_restarted_worker_rebuilds_keyed_state_on_tansu() {
    let Some(broker) = Broker::tansu() else {
        return;
    };
    let broker = broker_with_topics(broker, true);
    restart_continues_counts(&broker, &format!("{WORDS}{RUNNING_COUNT}"));
}

#[test]
fn window_state_survives_a_restart() {
    let broker = broker_with_topics(Broker::in_process(), true);
    let mut expected = HashMap::new();
    produce_lines(&broker, 0, 60, &mut expected);
    // A window far longer than the test: every record stays in it.
    let windowed =
        format!("{WORDS}  - {{id: counts, aggregate: {{count: {{}}}}, window: {{length: 60s}}}}\n");
    run(&broker, &job(&windowed, "", &broker), 2);
    produce_lines(&broker, 60, 60, &mut expected);
    run(&broker, &job(&windowed, "", &broker), 2);
    assert_eq!(latest(&broker), expected);
}

#[test]
fn an_incompatible_change_is_refused_naming_the_step_until_its_state_is_reset() {
    let broker = broker_with_topics(Broker::in_process(), true);
    let mut before = HashMap::new();
    produce_lines(&broker, 0, 40, &mut before);
    let counting = format!("{WORDS}{RUNNING_COUNT}");
    run(&broker, &job(&counting, "", &broker), 2);

    // The same step id, now a window: its stored state means something else.
    let windowed =
        format!("{WORDS}  - {{id: counts, aggregate: {{count: {{}}}}, window: {{length: 1s}}}}\n");
    let err = match connect(&broker, &job(&windowed, "", &broker)) {
        Ok(_) => panic!("a changed state type was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("\"counts\"") && err.contains("window(count") && err.contains("resetState"),
        "{err}"
    );
    // Renaming the step is refused the same way: its state would be silently lost.
    let renamed = counting.replace("id: counts", "id: totals");
    let err = match connect(&broker, &job(&renamed, "", &broker)) {
        Ok(_) => panic!("a renamed stateful step was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("\"counts\"") && err.contains("no longer has"),
        "{err}"
    );

    // Resetting the step starts it empty: the counts are those of the new lines only.
    let mut after = HashMap::new();
    produce_lines(&broker, 40, 40, &mut after);
    run(
        &broker,
        &job(&counting, "checkpoint: {resetState: [counts]}", &broker),
        2,
    );
    assert_eq!(only(latest(&broker), &after), after);
    // The reset stays done when the job no longer asks for it.
    produce_lines(&broker, 80, 40, &mut after);
    run(&broker, &job(&counting, "", &broker), 2);
    assert_eq!(only(latest(&broker), &after), after);
}

#[test]
fn a_killed_stateful_worker_process_ends_with_the_counts_of_a_run_without_kills() {
    let broker = mock_process_with(&[
        ("in", PARTITIONS),
        ("out", PARTITIONS),
        ("wc-changelog", PARTITIONS),
    ]);
    let mut expected = HashMap::new();
    produce_lines(&broker, 0, 400, &mut expected);
    let dir = tempfile::tempdir().expect("tempdir");
    // 500 lines/s x 0.1 s = 50 lines per partition per batch: eight batches to drain.
    // Each partition has words of its own, so a per-partition state is each word's whole
    // state: the test is about kills of one stage, not about the shuffle.
    let per_partition = RUNNING_COUNT.replace("{id: counts,", "{id: counts, perPartition: true,");
    let yaml = job(&format!("{WORDS}{per_partition}"), "", &broker)
        .replace("BOOTSTRAP", &broker.bootstrap())
        .replace("groupId: wc,", "groupId: wc, maxRatePerPartition: 500,");
    let file = job_file(dir.path(), &yaml);

    let mut restored = Vec::new();
    for kill in 0..3 {
        let mut w = WorkerProc::spawn(&file, &[]);
        eventually(
            "two batches before the kill",
            Duration::from_secs(60),
            || w.count_logs("batch completed") >= 2,
        );
        w.signal("KILL");
        w.wait_exit(Duration::from_secs(10))
            .expect("killed worker exits");
        if kill > 0 {
            restored.push(w.count_logs("restored keyed state"));
        }
    }
    let mut last = WorkerProc::spawn(&file, &[]);
    let ends = high_watermarks(&broker, "in", PARTITIONS);
    eventually(
        "the last worker to commit everything",
        Duration::from_secs(120),
        || committed(&broker, "wc", "in", PARTITIONS) == ends,
    );
    let log = last
        .wait_log("restored keyed state", Duration::from_secs(5))
        .expect("restore log");
    let log: serde_json::Value = serde_json::from_str(&log).expect("json log");
    assert!(
        log["fields"]["changes"].as_u64().is_some_and(|n| n > 0),
        "state came back from the changelog: {log}"
    );
    last.signal("TERM");
    assert!(last
        .wait_exit(Duration::from_secs(20))
        .expect("exit")
        .success());
    assert_eq!(
        restored,
        [1, 1],
        "every restarted worker restored its state"
    );
    assert_eq!(latest(&broker), expected);
}

/// Sets the group's committed offsets, as a worker killed between logging a batch's state and
/// committing its offsets leaves them.
fn commit_offsets(broker: &Broker, group: &str, offsets: &[(i32, i64)]) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let c: BaseConsumer = broker
        .client()
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for &(p, o) in offsets {
        tpl.add_partition_offset("in", p, rdkafka::Offset::Offset(o))
            .expect("tpl");
    }
    c.commit(&tpl, CommitMode::Sync).expect("commit");
}

#[test]
fn a_batch_whose_state_was_logged_but_whose_offsets_were_not_committed_is_not_counted_twice() {
    let broker = broker_with_topics(Broker::in_process(), true);
    let mut expected = HashMap::new();
    produce_lines(&broker, 0, 50, &mut expected);
    let counting = format!("{WORDS}{RUNNING_COUNT}");
    let snap = run(&broker, &job(&counting, "", &broker), 2);
    let first = &snap.batches[0];
    assert_eq!(first.records_in, 100, "the first batch read everything");
    commit_offsets(
        &broker,
        "wc",
        &first
            .ranges
            .iter()
            .map(|r| (r.partition, r.from))
            .collect::<Vec<_>>(),
    );

    produce_lines(&broker, 50, 50, &mut expected);
    let snap = run(&broker, &job(&counting, "", &broker), 2);
    assert_eq!(snap.records_in, 100, "the logged batch was not read again");
    assert_eq!(latest(&broker), expected);
    assert_eq!(
        committed(&broker, "wc", "in", PARTITIONS),
        high_watermarks(&broker, "in", PARTITIONS)
    );
}

#[test]
fn a_repartition_step_brings_each_word_of_every_input_partition_to_one_state() {
    let broker = Broker::in_process();
    for (t, n) in [
        ("in", PARTITIONS),
        ("out", PARTITIONS),
        ("t-shuffle-repartition", PARTITIONS),
        ("wc-shuffle-changelog", PARTITIONS),
    ] {
        broker.create_topic(t, n);
    }
    // The same words in both input partitions.
    let mut expected: HashMap<String, i64> = HashMap::new();
    for p in 0..PARTITIONS {
        let lines: Vec<String> = (0..50)
            .map(|i| format!("w{} w{} w{}", i % 7, (i * 3 + p as usize) % 11, i % 2))
            .collect();
        for w in lines.iter().flat_map(|l| l.split(' ')) {
            *expected.entry(w.to_string()).or_default() += 1;
        }
        let payloads: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        produce_raw(&broker, "in", p, &payloads);
    }
    let pipeline = format!("{WORDS}  - {{id: shuffle, repartition: {{}}}}\n{RUNNING_COUNT}");
    let ends = high_watermarks(&broker, "in", PARTITIONS);
    run_stages_until(&broker, &job(&pipeline, "", &broker), || {
        committed(&broker, "wc", "in", PARTITIONS) == ends
            && committed(&broker, "wc-shuffle", "t-shuffle-repartition", PARTITIONS)
                == high_watermarks(&broker, "t-shuffle-repartition", PARTITIONS)
            && read_all(&broker, "t-shuffle-repartition").len() == 300
    });
    assert_eq!(latest(&broker), expected);
}

/// Lines with the same words in each of `partitions` input partitions of "in", and each
/// word's true total over all of them.
fn same_words_in_every_partition(broker: &Broker, partitions: i32) -> HashMap<String, i64> {
    let mut totals: HashMap<String, i64> = HashMap::new();
    for p in 0..partitions {
        let lines: Vec<String> = (0..40)
            .map(|i| format!("w{} w{} w{}", i % 7, (i * 3 + p as usize) % 11, i % 2))
            .collect();
        for w in lines.iter().flat_map(|l| l.split(' ')) {
            *totals.entry(w.to_string()).or_default() += 1;
        }
        let payloads: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        produce_raw(broker, "in", p, &payloads);
    }
    totals
}

/// Each output row of "out" as (word, count).
fn rows(broker: &Broker) -> Vec<(String, i64)> {
    read_all(broker, "out")
        .into_iter()
        .map(|r| {
            let n: i64 = serde_json::from_slice(&r.value).expect("a count");
            (r.key.expect("a keyed row"), n)
        })
        .collect()
}

#[test]
fn a_count_by_word_over_four_partitions_is_one_row_per_word_with_its_total_over_all_partitions() {
    let broker = Broker::in_process();
    // The inserted shuffle's topic; the mock cluster cannot create topics for the worker.
    for (t, n) in [("in", 4), ("out", 4), ("t-counts-repartition", 4)] {
        broker.create_topic(t, n);
    }
    let totals = same_words_in_every_partition(&broker, 4);
    let pipeline = format!("{WORDS}  - {{id: counts, aggregate: {{count: {{}}}}}}\n");
    // One batch of each stage: the first reads all four partitions, the second everything the
    // first wrote, so its one batch holds every word's every record.
    let snap = run_stages_in_turn(&broker, &job(&pipeline, "", &broker), 1);
    let mut seen: HashMap<String, i64> = HashMap::new();
    for (word, n) in rows(&broker) {
        assert!(
            seen.insert(word.clone(), n).is_none(),
            "{word} has more than one row in the batch"
        );
    }
    assert_eq!(
        seen, totals,
        "each word once, with its total over all partitions"
    );
    let shuffle = &snap.stages[0];
    assert_eq!(
        (shuffle.stage.as_str(), shuffle.group.as_str()),
        ("counts", "wc-counts")
    );
    assert_eq!(shuffle.batches_completed, 1);
    assert_eq!(shuffle.records_out, totals.len() as u64);
    assert_eq!(snap.records_in, 4 * 40, "the first stage read the input");
    assert_eq!(
        committed(&broker, "wc-counts", "t-counts-repartition", 4),
        high_watermarks(&broker, "t-counts-repartition", 4),
        "the shuffle stage committed what it read in its own group"
    );

    // Asked for per partition, the counts stay per partition: one row per word and partition.
    let broker = Broker::in_process();
    for (t, n) in [("in", 4), ("out", 4)] {
        broker.create_topic(t, n);
    }
    let totals = same_words_in_every_partition(&broker, 4);
    let pipeline =
        format!("{WORDS}  - {{id: counts, perPartition: true, aggregate: {{count: {{}}}}}}\n");
    let snap = run_stages_in_turn(&broker, &job(&pipeline, "", &broker), 1);
    assert!(snap.stages.is_empty(), "no shuffle stage");
    let rows = rows(&broker);
    let mut sums: HashMap<String, i64> = HashMap::new();
    for (word, n) in &rows {
        *sums.entry(word.clone()).or_default() += n;
    }
    assert_eq!(sums, totals);
    let words_per_partition: usize = (0..4)
        .map(|p| {
            let mut words: Vec<String> = (0..40usize)
                .flat_map(|i| {
                    [
                        format!("w{}", i % 7),
                        format!("w{}", (i * 3 + p) % 11),
                        format!("w{}", i % 2),
                    ]
                })
                .collect();
            words.sort();
            words.dedup();
            words.len()
        })
        .sum();
    assert_eq!(
        rows.len(),
        words_per_partition,
        "one row per word per input partition"
    );
}

#[test]
fn per_partition_state_from_before_the_automatic_shuffle_is_refused_until_reset() {
    let broker = Broker::in_process();
    for t in [
        "in",
        "out",
        "wc-changelog",
        "t-counts-repartition",
        "wc-counts-changelog",
    ] {
        broker.create_topic(t, PARTITIONS);
    }
    let mut expected = HashMap::new();
    produce_lines(&broker, 0, 20, &mut expected);
    // How the job ran before Weir inserted shuffles: its state per input partition.
    let before = RUNNING_COUNT.replace("{id: counts,", "{id: counts, perPartition: true,");
    run_stages_in_turn(&broker, &job(&format!("{WORDS}{before}"), "", &broker), 2);

    let now = job(&format!("{WORDS}{RUNNING_COUNT}"), "", &broker);
    let (job_file, id, progress) = (
        weir_worker::spec::parse_job(&now.replace("BOOTSTRAP", &broker.bootstrap()), "t")
            .expect("job"),
        weir_worker::client::Identity {
            namespace: "test".into(),
            job: "t".into(),
            ordinal: 0,
            workers: 1,
        },
        std::sync::Arc::new(weir_worker::progress::Progress::new(
            weir_worker::client::Identity {
                namespace: "test".into(),
                job: "t".into(),
                ordinal: 0,
                workers: 1,
            },
            "wc".into(),
            Duration::from_millis(100),
        )),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let err = match weir_worker::stages::connect(job_file, &id, None, progress, &cancel) {
        Ok(_) => panic!("old per-partition state was taken as per-key state"),
        Err(e) => e.to_string(),
    };
    for says in [
        "\"counts\"",
        "wc-changelog",
        "per input partition",
        "checkpoint.resetState",
        "perPartition: true",
    ] {
        assert!(err.contains(says), "{says} in: {err}");
    }

    // Reset until the step has new state: it starts empty in its new stage, with the records
    // after the change, and later starts need no reset.
    let mut after = HashMap::new();
    produce_lines(&broker, 20, 10, &mut after);
    let reset = job(
        &format!("{WORDS}{RUNNING_COUNT}"),
        "checkpoint: {resetState: [counts]}",
        &broker,
    );
    let snap = run_stages_in_turn(&broker, &reset, 2);
    assert_eq!(snap.records_in, 2 * 10, "the input's offsets were kept");
    assert_eq!(
        only(latest(&broker), &after),
        after,
        "counts start with the records after the change"
    );
    produce_lines(&broker, 30, 10, &mut after);
    run_stages_in_turn(&broker, &now, 2);
    assert_eq!(only(latest(&broker), &after), after);
}

/// The fields of the worker's "restored keyed state" log line.
fn restore_log(w: &WorkerProc) -> serde_json::Value {
    let line = w
        .wait_log("restored keyed state", Duration::from_secs(30))
        .expect("restore log");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json log");
    v["fields"].clone()
}

#[test]
fn a_local_snapshot_shortens_the_replay_and_a_damaged_one_is_ignored() {
    let broker = mock_process_with(&[
        ("in", PARTITIONS),
        ("out", PARTITIONS),
        ("wc-changelog", PARTITIONS),
    ]);
    let state_dir = tempfile::tempdir().expect("state dir");
    let env = [("WEIR_STATE_DIR", state_dir.path())];
    let dir = tempfile::tempdir().expect("tempdir");
    // Per partition, as the kill test above: this is about one stage's snapshots.
    let per_partition = RUNNING_COUNT.replace("{id: counts,", "{id: counts, perPartition: true,");
    let yaml = job(
        &format!("{WORDS}{per_partition}"),
        "checkpoint: {snapshotInterval: 100ms}",
        &broker,
    )
    .replace("BOOTSTRAP", &broker.bootstrap());
    let file = job_file(dir.path(), &yaml);
    let mut expected = HashMap::new();
    let drain = |w: &mut WorkerProc| {
        let ends = high_watermarks(&broker, "in", PARTITIONS);
        eventually(
            "the worker to commit everything",
            Duration::from_secs(60),
            || committed(&broker, "wc", "in", PARTITIONS) == ends,
        );
        // One more batch, so that a snapshot after the last records is written.
        let n = w.count_logs("batch completed");
        eventually("another batch", Duration::from_secs(30), || {
            w.count_logs("batch completed") > n
        });
        w.signal("TERM");
        assert!(w
            .wait_exit(Duration::from_secs(20))
            .expect("exit")
            .success());
    };

    // Several batches of changes, so the changelog holds far more than the state.
    for round in 0..4 {
        produce_lines(&broker, round * 50, 50, &mut expected);
        let mut w = WorkerProc::spawn_with_env(&file, &[], &env);
        drain(&mut w);
    }
    let changelog_records = read_all(&broker, "wc-changelog").len() as u64;
    let mut w = WorkerProc::spawn_with_env(&file, &[], &env);
    let restored = restore_log(&w);
    assert_eq!(restored["from_snapshots"], PARTITIONS, "{restored}");
    assert!(
        restored["replayed"]
            .as_u64()
            .is_some_and(|n| n < changelog_records / 4),
        "the replay after the snapshot is short: {restored}, of {changelog_records}"
    );
    produce_lines(&broker, 200, 50, &mut expected);
    drain(&mut w);
    assert_eq!(latest(&broker), expected);

    // A damaged snapshot is only a lost cache: the whole changelog is read.
    for p in 0..PARTITIONS {
        let path = state_dir
            .path()
            .join("wc-changelog")
            .join(format!("{p}.snapshot"));
        assert!(path.exists(), "{path:?}");
        std::fs::write(&path, b"not a snapshot").expect("damage");
    }
    produce_lines(&broker, 250, 50, &mut expected);
    let mut w = WorkerProc::spawn_with_env(&file, &[], &env);
    let restored = restore_log(&w);
    assert_eq!(restored["from_snapshots"], 0, "{restored}");
    assert!(w.count_logs("ignoring an unreadable local state snapshot") >= 1);
    drain(&mut w);
    assert_eq!(latest(&broker), expected);
}

#[test]
fn a_sliding_window_through_the_engine_equals_a_brute_force_recomputation_of_every_window() {
    // reduceByKeyAndWindow with the issue's proportions (30 s / 10 s over 5 s batches), scaled
    // to 600 ms / 200 ms over 100 ms batches, on records arriving while the job runs.
    const INTERVAL: i64 = 100;
    const LENGTH: i64 = 6;
    const SLIDE: i64 = 2;
    let broker = Broker::in_process();
    broker.create_topic("in", PARTITIONS);
    broker.create_topic("wc-changelog", PARTITIONS);
    let out = tempfile::tempdir().expect("out dir");
    let yaml = format!(
        r#"
batchInterval: 100ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: wc, backpressure: {{enabled: false}}}}
pipeline:
  - {{id: by-k, keyBy: value.k}}
  - {{id: sums, aggregate: {{sum: value.v}}, window: {{length: 600ms, slide: 200ms}}}}
sink: {{file: {{path: "{}"}}}}
"#,
        out.path().display()
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producer = {
        let client = broker.client();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let p: rdkafka::producer::BaseProducer = client.create().expect("producer");
            let mut rng = weir_testkit::random::Lcg::new(42);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..20 {
                    let x = rng.raw();
                    let payload =
                        format!(r#"{{"k":"k{}","v":{}}}"#, (x >> 33) % 6, (x >> 40) % 100);
                    let part = ((x >> 20) % PARTITIONS as u64) as i32;
                    let _ = p.send(
                        rdkafka::producer::BaseRecord::<[u8], str>::to("in")
                            .payload(&payload)
                            .partition(part),
                    );
                }
                rdkafka::producer::Producer::flush(&p, Duration::from_secs(5)).expect("flush");
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
    let snap = run(&broker, &yaml, 20);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    producer.join().expect("producer");

    // Each input record by partition and offset.
    let mut records: HashMap<(i32, i64), (String, i64)> = HashMap::new();
    for r in read_all(&broker, "in") {
        let v: serde_json::Value = serde_json::from_slice(&r.value).expect("json");
        records.insert(
            (r.partition, r.offset),
            (
                v["k"].as_str().expect("k").to_string(),
                v["v"].as_i64().expect("v"),
            ),
        );
    }
    // Brute force: for every batch that ends a window, the window's sum per key, from the
    // offset ranges the engine reports for each batch.
    let mut expected = std::collections::BTreeMap::new();
    for b in &snap.batches {
        let end = b.batch_time_ms / INTERVAL;
        if end % SLIDE != 0 {
            continue;
        }
        for p in 0..PARTITIONS {
            let mut sums: HashMap<String, i64> = HashMap::new();
            for w in &snap.batches {
                let idx = w.batch_time_ms / INTERVAL;
                if idx <= end - LENGTH || idx > end {
                    continue;
                }
                for r in w.ranges.iter().filter(|r| r.partition == p) {
                    for o in r.from..r.until {
                        let (k, v) = &records[&(p, o)];
                        *sums.entry(k.clone()).or_default() += v;
                    }
                }
            }
            for (k, v) in sums {
                expected.insert((p, b.batch_time_ms, k), v);
            }
        }
    }
    let mut got = std::collections::BTreeMap::new();
    for f in std::fs::read_dir(out.path()).expect("out dir") {
        let path = f.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string();
        let p: i32 = name
            .split('-')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("partition");
        for line in std::fs::read_to_string(&path).expect("file").lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("json line");
            got.insert(
                (
                    p,
                    v["batchTime"].as_i64().expect("batch time"),
                    v["key"].as_str().expect("key").to_string(),
                ),
                v["value"].as_i64().expect("sum"),
            );
        }
    }
    assert!(
        expected.len() > 20,
        "the run emitted windows: {}",
        expected.len()
    );
    assert_eq!(got, expected);
}
