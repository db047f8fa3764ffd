//! The engine in-process against librdkafka's mock cluster: offsets, rate limits, dead letters.

mod common;

use common::*;

#[test]
fn rate_limit_caps_batches_and_committed_offsets_equal_the_last_until() {
    let broker = Broker::in_process();
    broker.create_topic("in", 3);
    broker.create_topic("out", 3);
    produce_numbered(&broker, "in", 3, 0, 300);
    let job = r#"
batchInterval: 200ms
source:
  kafka: {bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, maxRatePerPartition: 200, groupId: g1, backpressure: {enabled: false}}
pipeline:
  - {id: even, filter: "value.n % 2 == 0"}
sink: {kafka: {topic: out}}
"#;
    let snap = run(&broker, job, 4);
    // 200 records/s x 0.2 s = 40 per partition per batch; 100 waiting per partition.
    let per_batch: Vec<Vec<i64>> = snap
        .batches
        .iter()
        .map(|b| b.ranges.iter().map(|r| r.until - r.from).collect())
        .collect();
    assert_eq!(
        per_batch,
        vec![
            vec![40, 40, 40],
            vec![40, 40, 40],
            vec![20, 20, 20],
            vec![0, 0, 0]
        ]
    );
    let last = snap.batches.last().expect("batches");
    let untils: Vec<i64> = last.ranges.iter().map(|r| r.until).collect();
    assert_eq!(committed(&broker, "g1", "in", 3), untils);
    assert_eq!(untils, vec![100, 100, 100]);
    assert_eq!(last.lag, Some(0));
    let mut out: Vec<u64> = read_all(&broker, "out")
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.value).expect("json")["n"]
                .as_u64()
                .expect("n")
        })
        .collect();
    out.sort_unstable();
    assert_eq!(out, (0..300).filter(|n| n % 2 == 0).collect::<Vec<_>>());
    assert_eq!(snap.records_in, 300);
    assert_eq!(snap.records_out, 150);
}

/// `n` JSON records of exactly `size` bytes, numbered from `first`, with one of three keys
/// (`k0`, `k1`, `k2`) in `k`.
fn sized_records(first: u64, n: u64, size: usize) -> Vec<String> {
    (first..first + n)
        .map(|i| {
            let head = format!(r#"{{"n":{i},"k":"k{}","pad":""#, i % 3);
            format!("{head}{}\"}}", "x".repeat(size - head.len() - 2))
        })
        .collect()
}

const SIZE: usize = 1000;

/// A broker with `topics` and a backlog of 1.2 MB in topic "in": 4 partitions x 300 records of
/// exactly `SIZE` bytes, numbered 0..1200, keys `k0`-`k2`.
fn broker_with_backlog(topics: &[(&str, i32)]) -> Broker {
    let broker = Broker::in_process();
    broker.create_topic("in", 4);
    for (t, n) in topics {
        broker.create_topic(t, *n);
    }
    for p in 0..4 {
        let records = sized_records(p * 300, 300, SIZE);
        let refs: Vec<&[u8]> = records.iter().map(|r| r.as_bytes()).collect();
        produce_raw(&broker, "in", p as i32, &refs);
    }
    broker
}

/// The values of `topic`, each a number written as text (a map to `value.n`, a count).
fn numbers(broker: &Broker, topic: &str) -> Vec<u64> {
    read_all(broker, topic)
        .iter()
        .map(|r| {
            std::str::from_utf8(&r.value)
                .expect("utf-8")
                .parse()
                .expect("a number")
        })
        .collect()
}

#[test]
fn a_batch_never_holds_more_than_its_budget_and_the_rest_waits_for_the_next_batches() {
    // A backlog of 1.2 MB against a budget of 100 KB: no rate limit and no backpressure, so
    // only the budget keeps a batch from reading it all. The exactly-once sink writes a
    // partition's batch as one transaction, so it takes batches whole and the budget ends
    // each batch.
    let broker = broker_with_backlog(&[("out", 4)]);
    let job = r#"
batchInterval: 100ms
source:
  kafka: {bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: g-budget, backpressure: {enabled: false}}
pipeline:
  - {id: n, map: "value.n"}
sink: {kafka: {topic: out, delivery: exactlyOnce}}
"#;
    let budget = weir_worker::memory::Budget {
        bytes: 100_000,
        records: 10_000,
    };
    let snap = run_within(&broker, job, 16, budget);
    let busy: Vec<_> = snap.batches.iter().filter(|b| b.records_in > 0).collect();
    for b in &busy {
        // What the batch held, from its offsets and the records' known size, not from the
        // worker's own count.
        let records: i64 = b.ranges.iter().map(|r| r.until - r.from).sum();
        assert_eq!(records as u64, b.records_in, "batch {}", b.batch);
        assert!(
            records as usize * SIZE <= 100_000,
            "batch {} held {records} records of {SIZE} bytes, over its budget of 100000 bytes",
            b.batch
        );
    }
    // The first batch met a backlog 12 times its budget: it read what fitted, the rest waited.
    let first = &snap.batches[0];
    assert!(first.records_in > 0, "the first batch read nothing");
    assert_eq!(
        first.lag,
        Some(1200 - first.records_in as i64),
        "the lag says what waits"
    );
    assert!(
        busy.len() >= 12,
        "1.2 MB in batches of 100 KB: {} batches",
        busy.len()
    );
    let held = snap.in_flight.as_ref().expect("the batches' budget report");
    assert_eq!(held.budget, budget);
    assert!(
        held.peak_bytes <= 100_000 && held.peak_bytes >= 90 * SIZE as u64,
        "peak {} bytes against a budget of 100000",
        held.peak_bytes
    );
    // The first batch was planned before any record's size was known and ended at the budget;
    // the next ones were planned within it from the bytes per record it saw.
    assert_eq!(held.capped_batches, 1, "{held:?}");
    assert_eq!(
        held.parted_batches, 0,
        "the exactly-once sink takes batches whole"
    );
    // Capped batches lose nothing and repeat nothing: each record once, offsets at the end.
    assert_eq!(snap.records_in, 1200);
    assert_eq!(snap.batches.last().and_then(|b| b.lag), Some(0));
    assert_eq!(committed(&broker, "g-budget", "in", 4), vec![300; 4]);
    let mut out = numbers(&broker, "out");
    out.sort_unstable();
    assert_eq!(out, (0..1200).collect::<Vec<_>>());
}

#[test]
fn a_backlog_larger_than_the_budget_is_read_in_parts_each_within_the_budget_in_one_batch() {
    // The same 1.2 MB against the same 100 KB, into Kafka without transactions, which takes a
    // batch in parts: the first batch reads a budget at a time, writes each part's outputs
    // and reads on, for up to its interval (2 s; the mock cluster serves 1.2 MB in
    // milliseconds), then commits once. A per-batch count over the parts is still one count
    // per key and partition.
    let broker = broker_with_backlog(&[("out", 4), ("counts", 4)]);
    let job = |group: &str, steps: &str, out: &str| {
        format!(
            r#"
batchInterval: 2s
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: {group}, backpressure: {{enabled: false}}}}
pipeline:
{steps}
sink: {{kafka: {{topic: {out}}}}}
"#
        )
    };
    let budget = weir_worker::memory::Budget {
        bytes: 100_000,
        records: 10_000,
    };
    let snap = run_within(
        &broker,
        &job("g-parts", r#"  - {id: n, map: "value.n"}"#, "out"),
        1,
        budget,
    );
    let batch = &snap.batches[0];
    assert_eq!(
        batch.records_in, 1200,
        "the one batch read the whole backlog"
    );
    assert_eq!(batch.lag, Some(0));
    assert_eq!(
        batch.records_out, 1200,
        "the parts' outputs count with the batch's"
    );
    let held = snap.in_flight.as_ref().expect("the batches' budget report");
    assert!(
        held.peak_bytes <= 100_000 && held.peak_bytes >= 90 * SIZE as u64,
        "no part held more than the budget: peak {} bytes",
        held.peak_bytes
    );
    assert_eq!(held.parted_batches, 1, "{held:?}");
    // 12 reads of 100 KB: each but the last is written as a part before the batch's end.
    assert!(held.last_parts >= 11, "{held:?}");
    assert_eq!(committed(&broker, "g-parts", "in", 4), vec![300; 4]);
    let mut out = numbers(&broker, "out");
    out.sort_unstable();
    assert_eq!(out, (0..1200).collect::<Vec<_>>(), "each record once");

    // An aggregate holds one accumulator per key, not the records: read in parts too, and
    // still one count per key and partition for the batch.
    let counted = job(
        "g-parts-count",
        "  - {id: by-k, keyBy: \"value.k\"}\n  - {id: c, aggregate: {count: {}}, perPartition: true}",
        "counts",
    );
    let snap = run_within(&broker, &counted, 1, budget);
    let held = snap.in_flight.as_ref().expect("the batches' budget report");
    assert_eq!(held.parted_batches, 1, "{held:?}");
    assert_eq!(snap.batches[0].records_in, 1200);
    let counts = numbers(&broker, "counts");
    assert_eq!(counts.len(), 12, "3 keys in each of 4 partitions, once");
    assert_eq!(counts.iter().sum::<u64>(), 1200);

    // A file sink takes the parts into one file per partition, renamed into place at the end.
    let dir = tempfile::tempdir().expect("tempdir");
    let to_files = format!(
        r#"
batchInterval: 2s
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: g-parts-file, backpressure: {{enabled: false}}}}
pipeline:
  - {{id: n, map: "value.n"}}
sink: {{file: {{path: "{}"}}}}
"#,
        dir.path().display()
    );
    let snap = run_within(&broker, &to_files, 1, budget);
    let held = snap.in_flight.as_ref().expect("the batches' budget report");
    assert_eq!(held.parted_batches, 1, "{held:?}");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("sink dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        (0..4)
            .map(|p| format!("in-{p}-{:020}.jsonl", 0))
            .collect::<Vec<_>>(),
        "one file per partition, no temporary left"
    );
    let mut values: Vec<u64> = names
        .iter()
        .flat_map(|n| {
            std::fs::read_to_string(dir.path().join(n))
                .expect("file")
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).expect("json line")["value"]
                        .as_u64()
                        .expect("value")
                })
                .collect::<Vec<_>>()
        })
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..1200).collect::<Vec<_>>());
}

/// The budget of [`run_two_stages`]: 200 KB, 100 KB for each stage.
const TWO_STAGE_BUDGET: weir_worker::memory::Budget = weir_worker::memory::Budget {
    bytes: 200_000,
    records: 100_000,
};

/// Runs a job of two stages over "in" for 40 batches of 100 ms within [`TWO_STAGE_BUDGET`]:
/// keyBy `value.k`, then `step` behind the shuffle, into "out".
fn run_two_stages(broker: &Broker, group: &str, step: &str) -> weir_worker::progress::Snapshot {
    let job = format!(
        r#"
batchInterval: 100ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: {group}, backpressure: {{enabled: false}}}}
pipeline:
  - {{id: by-k, keyBy: "value.k"}}
  - {step}
sink: {{kafka: {{topic: out}}}}
"#
    );
    run_stages_within(broker, &job, 40, TWO_STAGE_BUDGET)
}

#[test]
fn the_shuffle_stage_holds_no_more_than_its_part_of_the_budget() {
    // keyBy + count runs as two stages joined by a repartition topic; the worker's budget of
    // 200 KB is shared, 100 KB each. The first stage meets a backlog of 1.2 MB of 1000-byte
    // records, the second what the first writes to the shuffle (the same records, re-keyed:
    // `combine: false`, or the shuffle would carry one partial per key instead).
    let broker = broker_with_backlog(&[("out", 4), ("t-counts-repartition", 4)]);
    let snap = run_two_stages(
        &broker,
        "g-shuffle",
        "{id: counts, aggregate: {count: {}}, combine: false}",
    );
    let part = TWO_STAGE_BUDGET.split(2);
    let first = snap.in_flight.as_ref().expect("the first stage's report");
    let shuffle = snap.stages[0]
        .in_flight
        .as_ref()
        .expect("the shuffle stage's report");
    for (stage, held) in [("input", first), ("counts", shuffle)] {
        assert_eq!(held.budget, part, "{stage}");
        assert!(
            held.peak_bytes > 0 && held.peak_bytes <= part.bytes,
            "{stage}: {held:?}"
        );
        // Read in parts within a batch, or (when its interval ran out first) capped.
        assert!(
            held.parted_batches + held.capped_batches >= 1,
            "{stage} met a backlog over its budget: {held:?}"
        );
    }
    assert_eq!(snap.records_in, 1200);
    assert_eq!(
        snap.stages[0].records_in, 1200,
        "the shuffle stage read every record once"
    );
    // Per-batch counts of the three keys add up to the input, whatever the batches were.
    assert_eq!(numbers(&broker, "out").iter().sum::<u64>(), 1200);
    assert_eq!(
        committed(&broker, "g-shuffle-counts", "t-counts-repartition", 4),
        high_watermarks(&broker, "t-counts-repartition", 4)
    );
}

#[test]
fn a_stage_before_one_that_takes_batches_whole_takes_its_own_whole_too() {
    // keyBy + a state step: the state step holds every value of its batch, so its stage is
    // capped by its part of the budget; the first stage, which alone could read in parts,
    // is capped too, so that it does not fill the repartition topic faster than the state
    // stage drains it. Both still read every record once.
    let broker = broker_with_backlog(&[("out", 4), ("t-total-repartition", 4)]);
    let snap = run_two_stages(
        &broker,
        "g-whole",
        r#"{id: total, state: {initial: "0", update: "state + size(values)"}}"#,
    );
    let first = snap.in_flight.as_ref().expect("the first stage's report");
    let state = snap.stages[0]
        .in_flight
        .as_ref()
        .expect("the state stage's report");
    for (stage, held) in [("input", first), ("total", state)] {
        assert_eq!(held.parted_batches, 0, "{stage}: {held:?}");
        assert!(held.capped_batches >= 1, "{stage}: {held:?}");
    }
    assert_eq!(snap.records_in, 1200);
    assert_eq!(snap.stages[0].records_in, 1200);
}

#[test]
fn a_budget_of_records_caps_batches_too_and_a_record_larger_than_the_budget_is_read_alone() {
    let broker = Broker::in_process();
    broker.create_topic("in", 2);
    broker.create_topic("big", 1);
    broker.create_topic("out", 1);
    produce_numbered(&broker, "in", 2, 0, 100);
    let records = sized_records(0, 3, 5_000);
    let refs: Vec<&[u8]> = records.iter().map(|r| r.as_bytes()).collect();
    produce_raw(&broker, "big", 0, &refs);
    // The exactly-once sink takes batches whole, so the budget ends each batch.
    let job = |topic: &str, group: &str| {
        format!(
            r#"
batchInterval: 100ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [{topic}], startingOffsets: earliest, groupId: {group}, backpressure: {{enabled: false}}}}
pipeline:
  - {{id: n, map: "value.n"}}
sink: {{kafka: {{topic: out, delivery: exactlyOnce}}}}
"#
        )
    };
    let by_records = weir_worker::memory::Budget {
        bytes: u64::MAX,
        records: 15,
    };
    let snap = run_within(&broker, &job("in", "g-records"), 8, by_records);
    let per_batch: Vec<u64> = snap.batches.iter().map(|b| b.records_in).collect();
    assert_eq!(per_batch, [15, 15, 15, 15, 15, 15, 10, 0]);
    assert_eq!(committed(&broker, "g-records", "in", 2), vec![50, 50]);

    // 5 KB records, a budget of 1 KB: each batch reads one record, so the job still moves.
    let tiny = weir_worker::memory::Budget {
        bytes: 1_000,
        records: 100,
    };
    let snap = run_within(&broker, &job("big", "g-big"), 4, tiny);
    let per_batch: Vec<u64> = snap.batches.iter().map(|b| b.records_in).collect();
    assert_eq!(per_batch, [1, 1, 1, 0]);
    assert_eq!(committed(&broker, "g-big", "big", 1), vec![3]);
}

#[test]
fn malformed_and_failing_records_go_to_the_dead_letter_topic_and_the_job_goes_on() {
    let broker = Broker::in_process();
    broker.create_topic("in", 1);
    broker.create_topic("out", 1);
    broker.create_topic("dlq", 1);
    produce_raw(
        &broker,
        "in",
        0,
        &[br#"{"n":1}"#, br#"{"n":"#, br#"{"n":"x"}"#, br#"{"n":3}"#],
    );
    let job = r#"
batchInterval: 200ms
source:
  kafka: {bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: g2}
pipeline:
  - {id: double, map: "value.n * 2"}
sink: {kafka: {topic: out}}
deadLetter: {topic: dlq}
"#;
    let snap = run(&broker, job, 2);
    let out: Vec<String> = read_all(&broker, "out")
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).to_string())
        .collect();
    assert_eq!(out, ["2", "6"]);
    let dlq = read_all(&broker, "dlq");
    assert_eq!(dlq.len(), 2);
    let h = |r: &ReadRecord, k: &str| {
        r.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(dlq[0].value, br#"{"n":"#);
    assert!(h(&dlq[0], "weir.error")
        .expect("error header")
        .contains("not valid JSON"));
    assert_eq!(h(&dlq[0], "weir.source.offset").as_deref(), Some("1"));
    assert_eq!(h(&dlq[0], "weir.step"), None);
    assert_eq!(dlq[1].value, br#"{"n":"x"}"#);
    assert_eq!(h(&dlq[1], "weir.step").as_deref(), Some("double"));
    assert_eq!(h(&dlq[1], "weir.source.offset").as_deref(), Some("2"));
    assert!(
        h(&dlq[1], "weir.error")
            .expect("error header")
            .contains("no operator *"),
        "{:?}",
        dlq[1].headers
    );
    assert_eq!(committed(&broker, "g2", "in", 1), vec![4]);
    assert_eq!(snap.dead_lettered, 2);
}

#[test]
fn without_a_dead_letter_topic_bad_records_are_counted_and_skipped() {
    let broker = Broker::in_process();
    broker.create_topic("in", 1);
    broker.create_topic("out", 1);
    produce_raw(&broker, "in", 0, &[b"\xc3\x28", b"fine"]);
    let job = r#"
batchInterval: 200ms
source:
  kafka: {bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: g3}
  format: text
sink: {kafka: {topic: out}}
"#;
    let snap = run(&broker, job, 2);
    assert_eq!(snap.dead_lettered, 1);
    assert_eq!(
        read_all(&broker, "out")
            .iter()
            .map(|r| r.value.clone())
            .collect::<Vec<_>>(),
        vec![b"fine".to_vec()]
    );
    assert_eq!(committed(&broker, "g3", "in", 1), vec![2]);
}

#[test]
fn starting_offsets_latest_skips_the_backlog_and_is_remembered() {
    let broker = Broker::in_process();
    broker.create_topic("in", 2);
    broker.create_topic("out", 2);
    produce_numbered(&broker, "in", 2, 0, 10);
    let job = r#"
batchInterval: 200ms
source:
  kafka: {bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: latest, groupId: g4}
sink: {kafka: {topic: out}}
"#;
    let snap = run(&broker, job, 1);
    assert_eq!(snap.records_in, 0);
    // The start position is committed at once, so records written before the first batch with
    // data are not skipped by a restart.
    assert_eq!(committed(&broker, "g4", "in", 2), vec![5, 5]);
    produce_numbered(&broker, "in", 2, 10, 4);
    let snap = run(&broker, job, 2);
    assert_eq!(snap.records_in, 4);
}

#[test]
/// On tansu: librdkafka's mock cluster answers every timestamp lookup with the log end (see
/// the probe below).
fn starting_offsets_by_timestamp_and_explicit_offsets_apply_only_without_a_commit() {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let Some(broker) = Broker::tansu() else {
        return;
    };
    broker.create_topic("in", 2);
    broker.create_topic("out", 2);
    let p: BaseProducer = broker.client().create().expect("producer");
    for (i, ts) in [(0, 1_000i64), (1, 2_000), (2, 3_000), (3, 4_000)] {
        for part in 0..2 {
            let v = format!(r#"{{"n":{i}}}"#);
            p.send(
                BaseRecord::<str, str>::to("in")
                    .payload(&v)
                    .partition(part)
                    .timestamp(ts),
            )
            .expect("send");
        }
    }
    p.flush(std::time::Duration::from_secs(10)).expect("flush");
    // Partition 0 starts at the first record at or after 1970-01-01T00:00:02.5Z (offset 2);
    // partition 1 has an explicit start at offset 1.
    let job = r#"
batchInterval: 200ms
source:
  kafka:
    bootstrapServers: BOOTSTRAP
    topics: [in]
    startingOffsets: "1970-01-01T00:00:02.500Z"
    specificOffsets: [{topic: in, partition: 1, offset: 1}]
    groupId: g5
sink: {kafka: {topic: out}}
"#;
    let snap = run(&broker, job, 1);
    let first: Vec<(i64, i64)> = snap.batches[0]
        .ranges
        .iter()
        .map(|r| (r.from, r.until))
        .collect();
    assert_eq!(first, vec![(2, 4), (1, 4)]);
    assert_eq!(committed(&broker, "g5", "in", 2), vec![4, 4]);
    // A restart resumes from the group, not from the explicit offset again.
    let snap = run(&broker, job, 1);
    assert_eq!(snap.records_in, 0);
}

/// Probe of a gap of librdkafka's mock cluster: ListOffsets ignores the timestamp and answers
/// with the log end, which is why the timestamp test above runs on tansu. If this starts to
/// fail, the mock learned timestamps and the test above can run on it too.
#[test]
fn probe_mock_cluster_answers_timestamp_lookups_with_the_log_end() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let broker = Broker::in_process();
    broker.create_topic("in", 1);
    let p: BaseProducer = broker.client().create().expect("producer");
    for ts in [1_000i64, 2_000, 3_000] {
        p.send(
            BaseRecord::<str, str>::to("in")
                .payload("x")
                .partition(0)
                .timestamp(ts),
        )
        .expect("send");
    }
    p.flush(std::time::Duration::from_secs(10)).expect("flush");
    let c: BaseConsumer = broker
        .client()
        .set("group.id", "probe")
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("in", 0, rdkafka::Offset::Offset(1_500))
        .expect("tpl");
    let r = c
        .offsets_for_times(tpl, std::time::Duration::from_secs(5))
        .expect("offsets_for_times");
    // Kafka answers offset 1 here (the first record at or after 1.5 s).
    assert_eq!(
        r.find_partition("in", 0).map(|e| e.offset()),
        Some(rdkafka::Offset::End)
    );
}

#[test]
fn records_read_ahead_of_a_range_are_kept_or_fetched_again_never_lost() {
    // Two partitions of 45 records of 100 KB, 5 per partition per batch, read by one lane: while
    // it waits for one partition, the other's records arrive past its range and are kept for
    // the next batches, up to a bound (300 KB here); past that they are dropped and fetched again. Each record
    // is written once, in order.
    let broker = Broker::in_process();
    broker.create_topic("in", 2);
    let big = "x".repeat(100_000);
    let payloads: Vec<String> = (0..45)
        .map(|i| format!(r#"{{"n":{i},"pad":"{big}"}}"#))
        .collect();
    let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_bytes()).collect();
    produce_raw(&broker, "in", 0, &refs);
    produce_raw(&broker, "in", 1, &refs);
    let dir = tempfile::tempdir().expect("tempdir");
    let job = format!(
        r#"
batchInterval: 200ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, maxRatePerPartition: 25, groupId: g6, backpressure: {{enabled: false}}, readThreads: 1, readAheadBytes: 300000}}
pipeline:
  - {{id: n, map: "value.n"}}
sink: {{file: {{path: "{}"}}}}
"#,
        dir.path().display()
    );
    let snap = run(&broker, &job, 10);
    assert_eq!(snap.records_in, 90);
    let mut files: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    for partition in ["in-0-", "in-1-"] {
        let ns: Vec<i64> = files
            .iter()
            .filter(|f| {
                f.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(partition))
            })
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .expect("file")
                    .lines()
                    .map(|l| {
                        serde_json::from_str::<serde_json::Value>(l).expect("json")["value"]
                            .as_i64()
                            .expect("n")
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(ns, (0..45).collect::<Vec<_>>(), "{partition}");
    }
    assert_eq!(committed(&broker, "g6", "in", 2), vec![45, 45]);
}

#[test]
fn several_input_topics_are_read_as_one_stream() {
    let broker = Broker::in_process();
    broker.create_topic("clicks", 2);
    broker.create_topic("views", 1);
    broker.create_topic("out", 1);
    produce_numbered(&broker, "clicks", 2, 0, 6);
    produce_numbered(&broker, "views", 1, 100, 3);
    let job = r#"
batchInterval: 200ms
source:
  kafka: {bootstrapServers: BOOTSTRAP, topics: [clicks, views], startingOffsets: earliest, groupId: g7}
pipeline:
  - {id: tag, select: {n: value.n, from: topic}}
sink: {kafka: {topic: out}}
"#;
    let snap = run(&broker, job, 2);
    assert_eq!(snap.records_in, 9);
    let mut out: Vec<(String, u64)> = read_all(&broker, "out")
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).expect("json");
            (
                v["from"].as_str().expect("from").to_string(),
                v["n"].as_u64().expect("n"),
            )
        })
        .collect();
    out.sort();
    let mut want: Vec<(String, u64)> = (0..6)
        .map(|n| ("clicks".to_string(), n))
        .chain((100..103).map(|n| ("views".to_string(), n)))
        .collect();
    want.sort();
    assert_eq!(out, want);
    assert_eq!(committed(&broker, "g7", "clicks", 2), vec![3, 3]);
    assert_eq!(committed(&broker, "g7", "views", 1), vec![3]);
}

/// Produces `{"n":1}`, a 2 MB malformed record with a header, and `{"n":2}` to partition 0.
fn produce_with_a_big_malformed_record(broker: &Broker, topic: &str) -> Vec<u8> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let mut big = b"{\"n\":".to_vec();
    big.resize(2 << 20, b'x');
    let p: BaseProducer = broker
        .client()
        .set("message.max.bytes", "4000000")
        .create()
        .expect("producer");
    let headers = OwnedHeaders::new().insert(Header {
        key: "trace-id",
        value: Some("abc"),
    });
    for (payload, headers) in [
        (&br#"{"n":1}"#[..], None),
        (&big[..], Some(headers)),
        (&br#"{"n":2}"#[..], None),
    ] {
        let mut rec = BaseRecord::<[u8], [u8]>::to(topic)
            .payload(payload)
            .partition(0);
        if let Some(h) = headers {
            rec = rec.headers(h);
        }
        p.send(rec).expect("send");
    }
    p.flush(std::time::Duration::from_secs(30)).expect("flush");
    big
}

const BIG_RECORD_JOB: &str = r#"
batchInterval: 200ms
source:
  kafka: {bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: big}
pipeline:
  - {id: double, map: "value.n * 2"}
sink: {kafka: {topic: out}}
deadLetter: {topic: dlq}
"#;

fn header<'a>(r: &'a ReadRecord, k: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_2mb_malformed_record_goes_whole_to_the_dead_letter_topic_and_outputs_are_written_once() {
    let broker = Broker::in_process();
    for t in ["in", "out", "dlq"] {
        broker.create_topic(t, 1);
    }
    let big = produce_with_a_big_malformed_record(&broker, "in");
    let snap = run(&broker, BIG_RECORD_JOB, 3);
    let out: Vec<String> = read_all(&broker, "out")
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).to_string())
        .collect();
    assert_eq!(out, ["2", "4"], "each output once");
    let dlq = read_all(&broker, "dlq");
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].value, big, "the dead letter is the whole record");
    assert_eq!(header(&dlq[0], "trace-id"), Some("abc"));
    assert_eq!(header(&dlq[0], "weir.source.offset"), Some("1"));
    assert_eq!(header(&dlq[0], "weir.truncated"), None);
    assert_eq!(committed(&broker, "big", "in", 1), vec![3]);
    assert_eq!(snap.dead_lettered, 1);
    assert_eq!(snap.batches_completed, 3);
}

#[test]
fn a_dead_letter_the_broker_refuses_as_too_large_is_written_reduced_and_the_job_goes_on() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let broker = Broker::in_process();
    for t in ["in", "out", "dlq"] {
        broker.create_topic(t, 1);
    }
    let big = produce_with_a_big_malformed_record(&broker, "in");
    // The dead letters are written (and acknowledged) before the batch's outputs, so the next
    // produce request is the dead-letter producer's: the broker refuses it as a broker with a
    // smaller message.max.bytes would.
    let Broker::InProcess(mock) = &broker else {
        unreachable!()
    };
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let snap = run(&broker, BIG_RECORD_JOB, 3);
    let out: Vec<String> = read_all(&broker, "out")
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).to_string())
        .collect();
    assert_eq!(out, ["2", "4"], "each output once: no batch was replayed");
    let dlq = read_all(&broker, "dlq");
    assert_eq!(
        dlq.len(),
        1,
        "{:?}",
        dlq.iter().map(|r| &r.headers).collect::<Vec<_>>()
    );
    let d = &dlq[0];
    assert_eq!(d.value, big[..16 << 10], "a prefix of the value");
    assert_eq!(header(d, "trace-id"), Some("abc"), "the original headers");
    assert_eq!(header(d, "weir.source.offset"), Some("1"));
    assert!(header(d, "weir.error").is_some_and(|e| e.contains("not valid JSON")));
    let cut = header(d, "weir.truncated").expect("a header saying it was cut");
    assert!(
        cut.contains("value 2097152 bytes, kept the first 16384"),
        "{cut}"
    );
    assert!(cut.to_lowercase().contains("too large"), "{cut}");
    assert_eq!(committed(&broker, "big", "in", 1), vec![3]);
    assert_eq!(snap.batches_completed, 3);
}

#[test]
fn an_output_the_broker_refuses_fails_its_batch_which_is_replayed_and_nothing_is_lost() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let broker = Broker::in_process();
    for t in ["in", "out"] {
        broker.create_topic(t, 1);
    }
    produce_raw(
        &broker,
        "in",
        0,
        &[br#"{"n": 1}"#, br#"{"n": 2}"#, br#"{"n": 3}"#],
    );
    // Producers report only failed deliveries: the one refusal must still fail the batch
    // (its offsets uncommitted) rather than pass as acknowledged.
    let Broker::InProcess(mock) = &broker else {
        unreachable!()
    };
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    const JOB: &str = r#"
batchInterval: 200ms
source:
  kafka: {bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: refused}
pipeline:
  - {id: double, map: "value.n * 2"}
sink: {kafka: {topic: out}}
"#;
    let snap = run(&broker, JOB, 2);
    let out: Vec<String> = read_all(&broker, "out")
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).to_string())
        .collect();
    assert_eq!(
        out,
        ["2", "4", "6"],
        "the refused batch was written again, whole"
    );
    assert_eq!(committed(&broker, "refused", "in", 1), vec![3]);
    assert_eq!(snap.batches_completed, 2);
}
