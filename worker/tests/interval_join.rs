//! An interval join of two streams through the engine on a real broker (librdkafka's mock
//! cluster in its own process): views and clicks, out of order, keyed by user and brought
//! together through a shuffle, joined when a click is from 200 ms before to 500 ms after a view;
//! the pairs (and the views with no click, a left join) equal a brute-force join read live,
//! as one backlog, and with the worker process killed three times.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;

const PARTITIONS: i32 = 2;
const BASE: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const DELAY: i64 = 1_000;
const BEFORE: i64 = 200;
const AFTER: i64 = 500;

/// A record: its id, user and event time.
#[derive(Clone, Debug)]
struct Ev {
    id: usize,
    user: String,
    t: i64,
}

/// Per topic (views, clicks) and partition, in offset order: times rising 50 ms a record with
/// up to 600 ms of disorder, one in 30 from 2 to 5 s behind (late).
fn random_input(per_partition: usize, seed: u64) -> [Vec<Vec<Ev>>; 2] {
    let mut rng = weir_testkit::random::Lcg::new(seed);
    let mut id = 0;
    let mut side = || {
        (0..PARTITIONS)
            .map(|_| {
                (0..per_partition)
                    .map(|i| {
                        let t = BASE + i as i64 * 50;
                        let t = if rng.below(30) == 0 {
                            t - 2_000 - rng.below(3_000) as i64
                        } else {
                            t - rng.below(600) as i64
                        };
                        id += 1;
                        Ev {
                            id,
                            user: format!("u{}", rng.below(40)),
                            t,
                        }
                    })
                    .collect()
            })
            .collect()
    };
    let views = side();
    let clicks = side();
    [views, clicks]
}

fn payload(side: &str, e: &Ev) -> String {
    format!(
        r#"{{"side": "{side}", "id": {}, "user": "{}", "ts": {}}}"#,
        e.id, e.user, e.t
    )
}

/// Produces records `from..until` of every partition of both topics.
fn produce(client: &rdkafka::ClientConfig, data: &[Vec<Vec<Ev>>; 2], from: usize, until: usize) {
    for (side, topic) in [("view", "views"), ("click", "clicks")] {
        let parts = &data[usize::from(side == "click")];
        for (p, records) in parts.iter().enumerate() {
            let end = until.min(records.len());
            let payloads: Vec<String> = records[from.min(end)..end]
                .iter()
                .map(|e| payload(side, e))
                .collect();
            let refs: Vec<&[u8]> = payloads.iter().map(|s| s.as_bytes()).collect();
            weir_testkit::kafka::produce_raw(client, topic, p as i32, &refs)
                .unwrap_or_else(|e| panic!("producing to {topic}: {e}"));
        }
    }
}

/// A pair as written: user, view id, click id (0: a view that met no click).
type Pair = (String, i64, i64);

/// The join by definition: a record is late when its time is at or behind its partition's
/// watermark before it (the largest earlier time there, less the delay); every on-time view
/// and click of a user with the click from BEFORE before to AFTER after the view is a pair;
/// an on-time view with none is written alone once the least final watermark passed its
/// bound.
fn brute_force(data: &[Vec<Vec<Ev>>; 2]) -> BTreeSet<Pair> {
    let on_time = |parts: &Vec<Vec<Ev>>| -> Vec<Ev> {
        let mut out = Vec::new();
        for records in parts {
            let mut max: Option<i64> = None;
            for e in records {
                if max.is_none_or(|m| e.t > m - DELAY) {
                    out.push(e.clone());
                }
                max = max.max(Some(e.t));
            }
        }
        out
    };
    let (views, clicks) = (on_time(&data[0]), on_time(&data[1]));
    let last = data
        .iter()
        .flatten()
        .map(|records| records.iter().map(|e| e.t).max().expect("records") - DELAY)
        .min()
        .expect("partitions");
    let mut out = BTreeSet::new();
    for v in &views {
        let mut met = false;
        for c in clicks.iter().filter(|c| c.user == v.user) {
            if c.t >= v.t - BEFORE && c.t <= v.t + AFTER {
                out.insert((v.user.clone(), v.id as i64, c.id as i64));
                met = true;
            }
        }
        if !met && v.t + AFTER <= last {
            out.insert((v.user.clone(), v.id as i64, 0));
        }
    }
    out
}

fn job(group: &str, extra_source: &str) -> String {
    format!(
        r#"
batchInterval: 100ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [views, clicks], startingOffsets: earliest, groupId: {group}, backpressure: {{enabled: false}}{extra_source}}}
  eventTime: value.ts
  watermark: {{delay: {DELAY}ms}}
pipeline:
  - {{id: by-user, keyBy: value.user}}
  - {{id: sh, repartition: {{topic: sh-{group}}}}}
  - id: j
    intervalJoin: {{left: "value.side == 'view'", before: {BEFORE}ms, after: {AFTER}ms, kind: left}}
sink: {{kafka: {{topic: out-{group}, delivery: exactlyOnce}}}}
"#
    )
}

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

fn written(broker: &Broker, topic: &str) -> Vec<Pair> {
    read_all(broker, topic)
        .into_iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.value).expect("JSON");
            let id = |side: &str| v[side]["id"].as_i64().unwrap_or(0);
            (r.key.expect("a key"), id("left"), id("right"))
        })
        .collect()
}

fn assert_pairs(broker: &Broker, topic: &str, want: &BTreeSet<Pair>) {
    let got = written(broker, topic);
    let set: BTreeSet<Pair> = got.iter().cloned().collect();
    assert_eq!(got.len(), set.len(), "{topic}: a pair written twice");
    let missing: Vec<_> = want.difference(&set).take(5).collect();
    let extra: Vec<_> = set.difference(want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{topic}: {} pairs, want {}; missing {missing:?}, extra {extra:?}",
        set.len(),
        want.len()
    );
}

#[test]
fn an_interval_join_is_the_same_read_live_as_one_backlog_and_with_kills() {
    let mut all = vec![
        ("views".to_string(), PARTITIONS),
        ("clicks".to_string(), PARTITIONS),
    ];
    for g in ["live", "backlog", "killed"] {
        all.extend(topics(g));
    }
    let refs: Vec<(&str, i32)> = all.iter().map(|(t, n)| (t.as_str(), *n)).collect();
    let broker = mock_process_with(&refs);
    let data = random_input(400, 5);
    let want = brute_force(&data);
    let pairs = want.iter().filter(|p| p.2 != 0).count();
    assert!(
        pairs > 200 && want.len() > pairs,
        "{pairs} pairs of {}",
        want.len()
    );

    // (a) Live: the records arrive while the job runs, 20 a partition at a time.
    let producer = {
        let data = data.clone();
        let client = broker.client();
        std::thread::spawn(move || {
            for i in (0..400).step_by(20) {
                produce(&client, &data, i, i + 20);
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
    let mut done = false;
    run_stages_until(&broker, &job("live", ""), || {
        done = done || (producer.is_finished() && written(&broker, "out-live").len() >= want.len());
        done
    });
    producer.join().expect("producer");
    assert_pairs(&broker, "out-live", &want);

    // (b) The same records as one backlog.
    run_stages_until(&broker, &job("backlog", ""), || {
        written(&broker, "out-backlog").len() >= want.len()
    });
    assert_pairs(&broker, "out-backlog", &want);

    // (c) A worker process killed three times while it drains the backlog, 40 records a
    // partition a batch, then run to the end: both sides' held records restored each time.
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = job("killed", ", maxRatePerPartition: 40")
        .replace("BOOTSTRAP", &broker.bootstrap())
        .replace("batchInterval: 100ms", "batchInterval: 1s");
    let file = dir.path().join("t.yaml");
    std::fs::write(&file, yaml).expect("job file");
    WorkerProc::kill_between_batches(&file, "sh", 3);
    let mut last = WorkerProc::spawn(&file, &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while written(&broker, "out-killed").len() < want.len() {
        let exited = last.child.try_wait().ok().flatten();
        assert!(
            Instant::now() < deadline && exited.is_none(),
            "{} of {} pairs; the worker {}; its logs:\n{}",
            written(&broker, "out-killed").len(),
            want.len(),
            exited.map_or("still runs".to_string(), |s| format!("exited: {s}")),
            last.all_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_pairs(&broker, "out-killed", &want);
    last.signal("TERM");
    assert!(last
        .wait_exit(Duration::from_secs(20))
        .expect("exit")
        .success());
    let logs = last.all_logs();
    let restores = logs
        .lines()
        .filter(|l| l.contains("restored keyed state from the changelog"))
        .count();
    assert_eq!(restores, 2, "both stages restored their state");
}
