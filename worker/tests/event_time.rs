//! Event time through the engine on real brokers: windows by the records' own time, through
//! the shuffle, that are the same read live, as one backlog, and with the worker killed and
//! restarted; a silent partition that stops holding windows open after `idleAfter`, a slow one
//! that holds them (none of its records late); late records where the policy says.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;

const PARTITIONS: i32 = 2;
const DELAY_MS: i64 = 1_000;
const LENGTH_MS: i64 = 2_000;
const BASE: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

/// Per partition, in offset order: (key, event time). Times rise 40 ms a record with up to
/// 800 ms of disorder, and one record in 25 comes 3 to 8 s behind (late).
fn random_input(per_partition: usize, seed: u64) -> Vec<Vec<(String, i64)>> {
    let mut rng = weir_testkit::random::Lcg::new(seed);
    let mut next = move |m: u64| rng.below(m);
    (0..PARTITIONS)
        .map(|_| {
            (0..per_partition)
                .map(|i| {
                    let t = BASE + i as i64 * 40;
                    let t = if next(25) == 0 {
                        t - 3_000 - next(5_000) as i64
                    } else {
                        t - next(800) as i64
                    };
                    (format!("k{}", next(5)), t)
                })
                .collect()
        })
        .collect()
}

fn payloads(records: &[(String, i64)]) -> Vec<String> {
    records
        .iter()
        .map(|(k, t)| format!(r#"{{"k":"{k}","ts":{t}}}"#))
        .collect()
}

fn produce(broker: &Broker, data: &[Vec<(String, i64)>]) {
    for (p, records) in data.iter().enumerate() {
        let payloads = payloads(records);
        let refs: Vec<&[u8]> = payloads.iter().map(|s| s.as_bytes()).collect();
        produce_raw(broker, "in", p as i32, &refs);
    }
}

/// Counts per key in 2 s tumbling windows by `value.ts`, through a shuffle (`keyBy`), into
/// `out` exactly once; group `group`, repartition topic `sh-<group>`.
fn job(group: &str, extra_source: &str) -> String {
    format!(
        r#"
batchInterval: 100ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: {group}, backpressure: {{enabled: false}}{extra_source}}}
  eventTime: value.ts
  watermark: {{delay: 1s}}
pipeline:
  - {{id: by-k, keyBy: value.k}}
  - {{id: sh, repartition: {{topic: sh-{group}}}}}
  - {{id: w, window: {{time: event, length: 2s}}, aggregate: {{count: {{}}}}}}
sink: {{kafka: {{topic: out-{group}, delivery: exactlyOnce}}}}
"#
    )
}

/// The topics a run of [`job`] with `group` needs on the mock cluster, which cannot create
/// them itself.
fn topics(group: &str) -> Vec<(String, i32)> {
    [
        format!("out-{group}"),
        format!("sh-{group}"),
        format!("{group}-changelog"),
        format!("{group}-sh-changelog"),
    ]
    .into_iter()
    .map(|t| (t, PARTITIONS))
    .collect()
}

/// A window as written: key, start (ms), count.
type Window = (String, i64, i64);

/// The windows by definition: each input partition's watermark before a record is the largest
/// earlier event time in that partition minus the delay; a record whose window ended at or
/// before it is late; a window is written once the least of the partitions' final watermarks
/// passed its end.
fn brute_force(data: &[Vec<(String, i64)>]) -> BTreeSet<Window> {
    let mut counts: BTreeMap<(String, i64), i64> = BTreeMap::new();
    let mut finals = Vec::new();
    for records in data {
        let mut max: Option<i64> = None;
        for (k, t) in records {
            let wm = max.map_or(i64::MIN, |m| m - DELAY_MS);
            let start = t - t.rem_euclid(LENGTH_MS);
            if start + LENGTH_MS > wm {
                *counts.entry((k.clone(), start)).or_default() += 1;
            }
            max = max.max(Some(*t));
        }
        finals.push(max.map_or(i64::MIN, |m| m - DELAY_MS));
    }
    let closed = finals.into_iter().min().unwrap_or(i64::MIN);
    counts
        .into_iter()
        .filter(|((_, s), _)| s + LENGTH_MS <= closed)
        .map(|((k, s), n)| (k, s, n))
        .collect()
}

fn ms(text: &serde_json::Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text.as_str().expect("a time"))
        .expect("RFC 3339")
        .timestamp_millis()
}

/// Every window written to `topic`, in order, with what each says it is.
fn written(broker: &Broker, topic: &str) -> Vec<(Window, String)> {
    read_all(broker, topic)
        .into_iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).expect("json");
            let w = &v["window"];
            assert_eq!(
                ms(&w["end"]) - ms(&w["start"]),
                LENGTH_MS,
                "a window spans its length: {v}"
            );
            (
                (
                    r.key.expect("a key"),
                    ms(&w["start"]),
                    v["value"].as_i64().expect("a count"),
                ),
                v["emit"].as_str().expect("emit").to_string(),
            )
        })
        .collect()
}

/// Waits until `topic` holds `want` (at most a minute), then asserts it holds exactly that:
/// each window once, final.
fn assert_windows(broker: &Broker, topic: &str, want: &BTreeSet<Window>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = written(broker, topic);
    while Instant::now() < deadline {
        if got.iter().map(|(w, _)| w.clone()).collect::<BTreeSet<_>>() == *want {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        got = written(broker, topic);
    }
    assert!(got.iter().all(|(_, emit)| emit == "final"), "{got:?}");
    let windows: Vec<Window> = got.into_iter().map(|(w, _)| w).collect();
    let set: BTreeSet<Window> = windows.iter().cloned().collect();
    assert_eq!(&set, want, "{topic}: the windows written");
    assert_eq!(
        windows.len(),
        set.len(),
        "{topic}: a window was written twice"
    );
}

#[test]
fn event_time_windows_are_the_same_read_live_as_one_backlog_and_with_kills() {
    let mut all = vec![("in".to_string(), PARTITIONS)];
    for g in ["live", "backlog", "killed"] {
        all.extend(topics(g));
    }
    let refs: Vec<(&str, i32)> = all.iter().map(|(t, n)| (t.as_str(), *n)).collect();
    let broker = mock_process_with(&refs);
    let data = random_input(600, 7);
    let want = brute_force(&data);
    assert!(want.len() > 40, "{} windows", want.len());
    let late = data.iter().flatten().count() as i64 - want.iter().map(|w| w.2).sum::<i64>();
    assert!(late > 20, "the input has late records: {late}");

    // (a) Live: the records arrive while the job runs, a few per batch.
    let producer = {
        let data = data.clone();
        let client = broker.client();
        std::thread::spawn(move || {
            let p: rdkafka::producer::BaseProducer = client.create().expect("producer");
            for i in (0..600).step_by(15) {
                for (part, records) in data.iter().enumerate() {
                    for payload in payloads(&records[i..(i + 15).min(records.len())]) {
                        p.send(
                            rdkafka::producer::BaseRecord::<[u8], str>::to("in")
                                .payload(&payload)
                                .partition(part as i32),
                        )
                        .expect("queued");
                    }
                }
                rdkafka::producer::Producer::flush(&p, Duration::from_secs(5)).expect("flush");
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    let live = job("live", "");
    let mut done = false;
    run_stages_until(&broker, &live, || {
        done = done || (producer.is_finished() && written(&broker, "out-live").len() >= want.len());
        done
    });
    producer.join().expect("producer");
    assert_windows(&broker, "out-live", &want);

    // (b) The same records as one backlog: the first stage reads it in one batch.
    run_stages_until(&broker, &job("backlog", ""), || {
        written(&broker, "out-backlog").len() >= want.len()
    });
    assert_windows(&broker, "out-backlog", &want);

    // (c) A worker process killed three times while it drains the backlog, 60 records a
    // partition a batch, then run to the end.
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = job("killed", ", maxRatePerPartition: 60")
        .replace("BOOTSTRAP", &broker.bootstrap())
        .replace("batchInterval: 100ms", "batchInterval: 1s");
    let file = dir.path().join("t.yaml");
    std::fs::write(&file, yaml).expect("job file");
    WorkerProc::kill_between_batches(&file, "sh", 3);
    let mut last = WorkerProc::spawn(&file, &[]);
    assert_windows(&broker, "out-killed", &want);
    last.signal("TERM");
    assert!(last
        .wait_exit(Duration::from_secs(20))
        .expect("exit")
        .success());
    let restores = last.all_logs();
    let restores: Vec<&str> = restores
        .lines()
        .filter(|l| l.contains("restored keyed state from the changelog"))
        .collect();
    assert_eq!(
        restores.len(),
        2,
        "both stages restored their state (watermarks; windows): {restores:?}"
    );
    let resumed = last
        .wait_log("resuming", Duration::from_secs(1))
        .expect("resume log");
    assert!(
        !resumed.contains("[600, 600]"),
        "the last worker still had input to read: {resumed}"
    );
}

/// Records on partition 0 only, or on both with partition 1 `behind` ms behind in event time.
fn steady(n: usize, behind: Option<i64>) -> Vec<Vec<(String, i64)>> {
    let first: Vec<(String, i64)> = (0..n)
        .map(|i| (format!("k{}", i % 3), BASE + i as i64 * 100))
        .collect();
    let second = match behind {
        None => Vec::new(),
        Some(b) => first.iter().map(|(k, t)| (k.clone(), t - b)).collect(),
    };
    vec![first, second]
}

fn local_job(extra_watermark: &str) -> String {
    job("g", "")
        .replace(
            "watermark: {delay: 1s}",
            &format!("watermark: {{delay: 1s{extra_watermark}}}"),
        )
        .replace("delivery: exactlyOnce", "delivery: atLeastOnce")
}

fn local_broker() -> Broker {
    let broker = Broker::in_process();
    broker.create_topic("in", PARTITIONS);
    for (t, n) in topics("g") {
        broker.create_topic(&t, n);
    }
    broker
}

#[test]
fn a_silent_partition_holds_windows_open_until_it_is_idle_for_idle_after() {
    let data = steady(100, None);
    let want = brute_force(&data[..1]);
    assert!(want.len() >= 10);

    // Without idleAfter the silent partition holds the watermark: nothing closes.
    let broker = local_broker();
    produce(&broker, &data);
    let snap = run_stages_within(&broker, &local_job(""), 20, Default::default());
    assert!(written(&broker, "out-g").is_empty());
    let stage = &snap.stages[0];
    let last = stage.batches.last().expect("a batch");
    let et = last.event_time.as_ref().expect("event time in progress");
    assert_eq!(et.watermark, None, "{et:?}");

    // With it, the partition is idle after 500 ms of silence and the windows close.
    let broker = local_broker();
    produce(&broker, &data);
    let snap = run_stages_within(
        &broker,
        &local_job(", idleAfter: 500ms"),
        20,
        Default::default(),
    );
    assert_windows(&broker, "out-g", &want);
    let first = snap.batches.last().expect("a batch");
    let et = first.event_time.as_ref().expect("event time in progress");
    let silent = et
        .partitions
        .iter()
        .find(|p| p.partition == 1)
        .expect("partition 1");
    assert!(silent.idle, "{et:?}");
    assert_eq!(silent.watermark, None);
}

#[test]
fn a_slow_partition_holds_windows_open_and_none_of_its_records_is_late() {
    // Partition 1 runs 6 s behind partition 0 in event time, throughout.
    let data = steady(120, Some(6_000));
    let want = brute_force(&data);
    let broker = local_broker();
    produce(&broker, &data);
    let snap = run_stages_within(&broker, &local_job(""), 20, Default::default());
    assert_windows(&broker, "out-g", &want);
    // Every record was on time: each window holds all its records of both partitions.
    let records = data.iter().flatten().count() as i64;
    let fast_end = data[0].last().expect("a record").1;
    let slow_end = data[1].last().expect("a record").1;
    let open: i64 = data
        .iter()
        .flatten()
        .filter(|(_, t)| t - t.rem_euclid(LENGTH_MS) + LENGTH_MS > slow_end - DELAY_MS)
        .count() as i64;
    assert_eq!(want.iter().map(|w| w.2).sum::<i64>(), records - open);
    // Nothing past the slow partition's watermark closed, though the fast one is far ahead.
    assert!(want.iter().all(|w| w.1 + LENGTH_MS <= slow_end - DELAY_MS));
    assert!(fast_end - DELAY_MS > slow_end);
    let late: u64 = snap
        .stages
        .iter()
        .flat_map(|s| &s.batches)
        .filter_map(|b| b.event_time.as_ref())
        .map(|e| e.late_records)
        .sum();
    assert_eq!(late, 0);
}

#[test]
fn late_records_go_to_the_dead_letter_topic_with_the_reason_and_are_counted() {
    let broker = Broker::in_process();
    for t in ["in", "out", "dlq", "g-changelog"] {
        broker.create_topic(t, 1);
    }
    // One partition, no keyBy: no shuffle. 10 s closes [0, 2 s); 1.5 s then comes late.
    let payloads: Vec<String> = [500, 1_200, 10_000, 1_500]
        .iter()
        .map(|t| format!(r#"{{"ts":{}}}"#, BASE + t))
        .collect();
    let refs: Vec<&[u8]> = payloads.iter().map(|s| s.as_bytes()).collect();
    produce_raw(&broker, "in", 0, &refs[..3]);
    let yaml = r#"
batchInterval: 100ms
source:
  kafka: {bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: g, backpressure: {enabled: false}}
  eventTime: value.ts
  watermark: {delay: 0s}
pipeline:
  - {id: w, window: {time: event, length: 2s, late: deadLetter}, aggregate: {count: {}}}
sink: {kafka: {topic: out}}
deadLetter: {topic: dlq}
"#;
    let first = run(&broker, yaml, 3);
    produce_raw(&broker, "in", 0, &refs[3..]);
    let second = run(&broker, yaml, 3);
    let out = read_all(&broker, "out");
    assert_eq!(out.len(), 1, "the first window, once");
    let v: serde_json::Value = serde_json::from_slice(&out[0].value).expect("json");
    assert_eq!(v["value"], 2);
    let dead = read_all(&broker, "dlq");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value, refs[3], "the late record as it was read");
    let error = dead[0]
        .headers
        .iter()
        .find(|(k, _)| k.contains("error"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        error.starts_with("late: event time"),
        "{:?}",
        dead[0].headers
    );
    let late = |s: &weir_worker::progress::Snapshot| -> u64 {
        s.batches
            .iter()
            .filter_map(|b| b.event_time.as_ref())
            .map(|e| e.late_records)
            .sum()
    };
    assert_eq!(late(&first), 0);
    assert_eq!(late(&second), 1);
}
