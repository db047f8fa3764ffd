//! SQL steps through the engine on a real broker (librdkafka's mock cluster): each query's
//! output equals a brute-force evaluation of the query over the same random input, and the
//! SQL example's output equals its hand-written pipeline's.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{json, Value};

const PARTITIONS: i32 = 4;
const BASE: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const PAGES: [&str; 6] = ["/a", "/about", "/b", "/Home", "/home", "/health"];
const STATUSES: [i64; 6] = [200, 200, 200, 304, 404, 500];

#[derive(Clone, Debug)]
struct View {
    partition: i32,
    page: &'static str,
    status: i64,
    ms: i64,
    /// Event time: rising 50 ms a record in each partition, so none is late.
    ts: i64,
}

fn random_views(per_partition: usize, seed: u64) -> Vec<View> {
    let mut rng = weir_testkit::random::Lcg::new(seed);
    let mut out = Vec::new();
    for p in 0..PARTITIONS {
        for i in 0..per_partition {
            out.push(View {
                partition: p,
                page: PAGES[rng.below(PAGES.len() as u64) as usize],
                status: STATUSES[rng.below(STATUSES.len() as u64) as usize],
                ms: rng.below(1_000) as i64,
                ts: BASE + i as i64 * 50 + p as i64 * 7,
            });
        }
    }
    out
}

fn time_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("a time")
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

fn produce(broker: &Broker, views: &[View]) {
    for p in 0..PARTITIONS {
        let payloads: Vec<String> = views
            .iter()
            .filter(|v| v.partition == p)
            .map(|v| {
                json!({"page": v.page, "status": v.status, "ms": v.ms, "ts": time_text(v.ts)})
                    .to_string()
            })
            .collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|s| s.as_bytes()).collect();
        produce_raw(broker, "in", p, &refs);
    }
}

fn broker(extra_topics: &[&str]) -> Broker {
    let broker = Broker::in_process();
    for t in ["in", "dlq"].iter().chain(extra_topics) {
        broker.create_topic(t, PARTITIONS);
    }
    broker
}

fn job(group: &str, out: &str, source_extra: &str, pipeline: &str) -> String {
    format!(
        r#"
batchInterval: 100ms
source:
  kafka: {{bootstrapServers: BOOTSTRAP, topics: [in], startingOffsets: earliest, groupId: {group}, backpressure: {{enabled: false}}}}
  {source_extra}
pipeline:
{pipeline}
sink: {{kafka: {{topic: {out}}}}}
deadLetter: {{topic: dlq}}
"#
    )
}

fn sql_step(id: &str, sql: &str) -> String {
    format!(
        "  - id: {id}\n    sql: {}\n",
        serde_json::to_string(sql).expect("json")
    )
}

/// The records of `topic` as (key, value), sorted: the multiset a query wrote.
fn output(broker: &Broker, topic: &str) -> Vec<(String, Value)> {
    let mut rows: Vec<(String, Value)> = read_all(broker, topic)
        .into_iter()
        .map(|r| {
            let v = serde_json::from_slice(&r.value).expect("a JSON value");
            (r.key.unwrap_or_default(), v)
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, a.1.to_string()).cmp(&(&b.0, b.1.to_string())));
    rows
}

fn sorted(mut rows: Vec<(String, Value)>) -> Vec<(String, Value)> {
    rows.sort_by(|a, b| (&a.0, a.1.to_string()).cmp(&(&b.0, b.1.to_string())));
    rows
}

#[test]
fn grouped_queries_equal_brute_force_batch_by_batch() {
    type Brute = fn(&[View]) -> Vec<(String, Value)>;
    let queries: [(&str, Brute); 3] = [
        (
            "SELECT page, COUNT(*) AS views FROM input WHERE status = 200 GROUP BY page",
            |views| {
                let mut by: BTreeMap<&str, i64> = BTreeMap::new();
                for v in views.iter().filter(|v| v.status == 200) {
                    *by.entry(v.page).or_default() += 1;
                }
                by.into_iter()
                    .map(|(p, n)| (p.to_string(), json!({"page": p, "views": n})))
                    .collect()
            },
        ),
        (
            "SELECT page, COUNT(*) AS n, SUM(ms) AS total, MIN(ms) AS fastest, MAX(ms) AS slowest, AVG(ms) AS mean \
             FROM input WHERE status <> 500 GROUP BY page HAVING MIN(ms) < 10",
            |views| {
                let mut by: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
                for v in views.iter().filter(|v| v.status != 500) {
                    by.entry(v.page).or_default().push(v.ms);
                }
                by.into_iter()
                    .filter(|(_, ms)| ms.iter().min().is_some_and(|m| *m < 10))
                    .map(|(p, ms)| {
                        let total: i64 = ms.iter().sum();
                        let value = json!({
                            "page": p,
                            "n": ms.len(),
                            "total": total,
                            "fastest": ms.iter().min(),
                            "slowest": ms.iter().max(),
                            "mean": total as f64 / ms.len() as f64,
                        });
                        (p.to_string(), value)
                    })
                    .collect()
            },
        ),
        (
            "SELECT LOWER(page) AS page, status, COUNT(*) AS n FROM input GROUP BY LOWER(page), status",
            |views| {
                let mut by: BTreeMap<(String, i64), i64> = BTreeMap::new();
                for v in views {
                    *by.entry((v.page.to_lowercase(), v.status)).or_default() += 1;
                }
                by.into_iter()
                    .map(|((p, s), n)| {
                        (json!([p, s]).to_string(), json!({"page": p, "status": s, "n": n}))
                    })
                    .collect()
            },
        ),
    ];
    for (i, (sql, brute)) in queries.iter().enumerate() {
        let out = format!("out{i}");
        let broker = broker(&[&out, "t-q-repartition"]);
        let yaml = job(&format!("g{i}"), &out, "", &sql_step("q", sql));
        let mut before = 0;
        let mut expected = Vec::new();
        for round in 0..2u64 {
            let views = random_views(150, i as u64 * 10 + round);
            produce(&broker, &views);
            // One batch of each stage in turn: the first reads the round's input, the second
            // everything the first wrote, so its batch is the round's whole result.
            run_stages_in_turn(&broker, &yaml, 1);
            expected.extend(brute(&views));
            let got = output(&broker, &out);
            assert!(got.len() > before, "{sql}: round {round} wrote nothing");
            before = got.len();
        }
        assert_eq!(output(&broker, &out), sorted(expected), "{sql}");
    }
}

#[test]
fn a_row_query_writes_each_matching_record_reshaped() {
    let broker = broker(&["out"]);
    let views = random_views(200, 7);
    produce(&broker, &views);
    let sql = "SELECT page, ms * 2 AS double_ms, CASE WHEN status >= 500 THEN 'error' ELSE 'ok' END AS kind \
               FROM input WHERE page LIKE '/a%' AND ms BETWEEN 100 AND 500";
    let yaml = job("g", "out", "", &sql_step("q", sql));
    run(&broker, &yaml, 2);
    let expected: Vec<(String, Value)> = views
        .iter()
        .filter(|v| v.page.starts_with("/a") && (100..=500).contains(&v.ms))
        .map(|v| {
            let kind = if v.status >= 500 { "error" } else { "ok" };
            (
                String::new(),
                json!({"page": v.page, "double_ms": v.ms * 2, "kind": kind}),
            )
        })
        .collect();
    assert!(!expected.is_empty());
    let dlq: Vec<_> = read_all(&broker, "dlq")
        .into_iter()
        .take(2)
        .map(|r| r.headers)
        .collect();
    assert!(dlq.is_empty(), "{dlq:?}");
    assert_eq!(output(&broker, "out"), sorted(expected));
}

/// The example's job, reading this test's broker and writing `out` under group `g`.
fn example_job(out: &str) -> String {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/page-stats-sql.yaml");
    let text = std::fs::read_to_string(path).expect("the example");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let steps = serde_yaml::to_string(&doc["spec"]["pipeline"]).expect("steps");
    let steps: String = steps.lines().map(|l| format!("  {l}\n")).collect();
    job(
        "g-sql",
        out,
        "format: json\n  watermark: {delay: 5s}",
        &steps,
    )
}

/// The example's query written by hand, as a user without SQL would.
const HAND_WRITTEN: &str = r#"
  - {id: real-pages, filter: "value.page != '/health' && value.ms > 0"}
  - {id: by-page, keyBy: value.page}
  - {id: fields, map: "{'views': 1, 'slowest': value.ms}"}
  - id: per-window
    window: {time: event, length: 10s}
    aggregate: {reduce: "{'views': a.views + b.views, 'slowest': a.slowest > b.slowest ? a.slowest : b.slowest}"}
  - id: shape
    select:
      page: key
      window_start: value.window.start
      window_end: value.window.end
      views: value.value.views
      slowest_ms: value.value.slowest
"#;

#[test]
fn the_sql_example_writes_what_its_hand_written_pipeline_writes_and_what_brute_force_says() {
    let broker = broker(&[
        "out-sql",
        "out-hand",
        "t-stats-repartition",
        "t-per-window-repartition",
        "g-sql-changelog",
        "g-sql-stats-changelog",
        "g-hand-changelog",
        "g-hand-per-window-changelog",
    ]);
    // 600 views a partition over 30 s of event time: 10 s windows, closed by a watermark 5 s
    // behind the latest time of the slowest partition.
    let views = random_views(600, 3);
    produce(&broker, &views);
    let watermark = (0..PARTITIONS)
        .map(|p| {
            views
                .iter()
                .filter(|v| v.partition == p)
                .map(|v| v.ts)
                .max()
                .expect("views")
        })
        .min()
        .expect("partitions")
        - 5_000;
    let mut windows: BTreeMap<(&str, i64), (i64, i64)> = BTreeMap::new();
    for v in views.iter().filter(|v| v.page != "/health" && v.ms > 0) {
        let start = v.ts - v.ts.rem_euclid(10_000);
        if start + 10_000 <= watermark {
            let w = windows.entry((v.page, start)).or_insert((0, i64::MIN));
            w.0 += 1;
            w.1 = w.1.max(v.ms);
        }
    }
    let expected: Vec<(String, Value)> = windows
        .into_iter()
        .map(|((page, start), (views, slowest))| {
            let value = json!({
                "page": page,
                "window_start": time_text(start),
                "window_end": time_text(start + 10_000),
                "views": views,
                "slowest_ms": slowest,
            });
            (page.to_string(), value)
        })
        .collect();
    assert!(expected.len() >= 10, "{expected:?}");

    let hand = job(
        "g-hand",
        "out-hand",
        "format: json\n  eventTime: value.ts\n  watermark: {delay: 5s}",
        HAND_WRITTEN,
    );
    for (yaml, out) in [(example_job("out-sql"), "out-sql"), (hand, "out-hand")] {
        run_stages_until(&broker, &yaml, || {
            read_all(&broker, out).len() >= expected.len()
        });
        // A few batches more: nothing else closes, and nothing is written twice.
        run_stages_in_turn(&broker, &yaml, 3);
    }
    let sql = output(&broker, "out-sql");
    assert_eq!(sql, sorted(expected.clone()));
    assert_eq!(output(&broker, "out-hand"), sql);
    assert!(read_all(&broker, "dlq").is_empty());
    // The windows' time came from the query: `ts` became the job's event time.
    let job = weir_worker::spec::parse_job(&example_job("x").replace("BOOTSTRAP", "k:9092"), "t")
        .expect("job");
    assert_eq!(job.spec.source.event_time.as_deref(), Some("value.ts"));
}
