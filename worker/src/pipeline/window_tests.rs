use std::collections::BTreeMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::tests::{job_every, rec};
use super::*;
use crate::spec::Format;

const INTERVAL_MS: i64 = 5_000;

/// Runs one batch of JSON payloads at batch index `b` and returns (key, value) pairs.
fn batch(p: &Pipeline, st: &mut PartitionState, b: i64, payloads: &[String]) -> Vec<(Val, Val)> {
    let mut run = p.start(st, b * INTERVAL_MS);
    for (i, payload) in payloads.iter().enumerate() {
        run.push(rec(i as i64, Format::Json, payload)).unwrap();
    }
    let (out, failures) = run.finish(&Arc::from("in"), 0, None);
    assert!(failures.is_empty(), "{failures:?}");
    out.into_iter().map(|o| (o.key, o.value)).collect()
}

fn window_ops(st: &PartitionState, id: &str) -> u64 {
    match st.step(id) {
        Some(StepState::Window(w)) => w.ops,
        _ => panic!("no window state for {id}"),
    }
}

fn windowed(agg: &str, length: &str, slide: &str) -> Pipeline {
    let steps = format!(
        "- {{id: k, keyBy: 'value.k'}}\n- {{id: n, map: 'value.n'}}\n- {{id: w, window: {{length: {length}, slide: {slide}}}, aggregate: {agg}}}\n"
    );
    Pipeline::compile(&job_every("5s", &steps, "json")).unwrap()
}

/// The window's results computed from scratch: what the incremental form must equal.
fn brute_force(
    agg: &str,
    batches: &[Vec<(String, i64)>],
    last: usize,
    len: usize,
) -> Vec<(Val, Val)> {
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for batch in &batches[(last + 1).saturating_sub(len)..=last] {
        for (k, n) in batch {
            per_key.entry(k.clone()).or_default().push(*n);
        }
    }
    per_key
        .into_iter()
        .map(|(k, ns)| {
            let v = match agg {
                "count" => Val::Int(ns.len() as i64),
                "sum" | "reduce" => Val::Int(ns.iter().sum()),
                "min" => Val::Int(*ns.iter().min().unwrap()),
                "max" => Val::Int(*ns.iter().max().unwrap()),
                _ => Val::Float(ns.iter().sum::<i64>() as f64 / ns.len() as f64),
            };
            (Val::str(&k), v)
        })
        .collect()
}

#[test]
fn reduce_by_key_and_window_equals_brute_force_for_every_window() {
    let mut rng = StdRng::seed_from_u64(4);
    // Batch index 1000 onwards: 5 s batches, so a 30 s / 10 s window is 6 batches sliding 2.
    let batches: Vec<Vec<(String, i64)>> = (0..40)
        .map(|_| {
            (0..rng.random_range(0..25))
                .map(|_| {
                    (
                        format!("k{}", rng.random_range(0..8)),
                        rng.random_range(-50..50),
                    )
                })
                .collect()
        })
        .collect();
    let aggs = [
        ("count", "{count: {}}"),
        ("sum", "{sum: value}"),
        ("avg", "{avg: value}"),
        ("min", "{min: value}"),
        ("max", "{max: value}"),
        ("reduce", "{reduce: 'a + b'}"),
    ];
    for (name, agg) in aggs {
        let p = windowed(agg, "30s", "10s");
        let mut st = p.new_state();
        let mut windows = 0;
        for (i, records) in batches.iter().enumerate() {
            let b = 1000 + i as i64;
            let payloads: Vec<String> = records
                .iter()
                .map(|(k, n)| format!(r#"{{"k":"{k}","n":{n}}}"#))
                .collect();
            let got = batch(&p, &mut st, b, &payloads);
            if b % 2 == 0 {
                assert_eq!(
                    got,
                    brute_force(name, &batches, i, 6),
                    "{name} window at batch {b}"
                );
                windows += 1;
            } else {
                assert!(got.is_empty(), "{name}: batch {b} ends no window");
            }
        }
        assert_eq!(windows, 20, "{name}");
    }
}

#[test]
fn incremental_window_work_follows_the_batch_not_the_window_length() {
    // Every batch brings 10 new keys, so every batch also retires 10 keys once the window is
    // full: per batch, 10 parts in and 10 out, each touching the total once.
    let per_batch = |length: &str| -> Vec<u64> {
        let p = windowed("{count: {}}", length, "5s");
        let mut st = p.new_state();
        let mut deltas = Vec::new();
        for b in 0..80i64 {
            let payloads: Vec<String> = (0..10)
                .map(|j| format!(r#"{{"k":"b{b}-{j}","n":1}}"#))
                .collect();
            let before = window_ops(&st, "w");
            let out = batch(&p, &mut st, b, &payloads);
            deltas.push(window_ops(&st, "w") - before);
            assert_eq!(
                out.len() as i64,
                10 * (b + 1).min(match length {
                    "30s" => 6,
                    _ => 60,
                })
            );
        }
        deltas
    };
    let short = per_batch("30s");
    let long = per_batch("300s");
    // Past the longer window's fill-up, both do the same work per slide.
    assert_eq!(short[70..], long[70..]);
    assert!(short[70..].iter().all(|&d| d == 40), "{short:?}");
}

#[test]
fn count_sum_and_avg_windows_drop_keys_that_reach_zero() {
    for agg in ["{count: {}}", "{sum: value}", "{avg: value}"] {
        let p = windowed(agg, "15s", "5s");
        let mut st = p.new_state();
        let once = |k: &str, n: i64| vec![format!(r#"{{"k":"{k}","n":{n}}}"#)];
        // "gone" is only in batch 0; "zero" sums to 0 while it still has records, and stays.
        let mut inputs = vec![once("gone", 3), once("zero", 5), once("zero", -5)];
        inputs.extend((0..3).map(|_| Vec::new()));
        let mut keys = Vec::new();
        for (b, payloads) in inputs.iter().enumerate() {
            let out = batch(&p, &mut st, b as i64, payloads);
            keys.push(out.iter().map(|(k, _)| k.to_string()).collect::<Vec<_>>());
        }
        assert_eq!(keys[2], ["gone", "zero"], "{agg}");
        assert_eq!(
            keys[3],
            ["zero"],
            "{agg}: gone left the window with batch 0"
        );
        assert_eq!(keys[4], ["zero"], "{agg}");
        assert!(keys[5].is_empty(), "{agg}");
        let Some(StepState::Window(w)) = st.step("w") else {
            panic!("no window state");
        };
        assert_eq!(
            w.total_keys(),
            0,
            "{agg}: no key is kept once its records left"
        );
    }
}

#[test]
fn window_changes_name_the_step_and_a_replayed_batch_counts_once() {
    let p = windowed("{count: {}}", "10s", "5s");
    let mut st = p.new_state();
    let one = vec![r#"{"k":"a","n":1}"#.to_string()];
    batch(&p, &mut st, 0, &one);
    let changes = st.changes().to_vec();
    assert_eq!(changes.len(), 1);
    assert_eq!(&*changes[0].step, "w");
    assert_eq!(changes[0].key.to_string(), r#"[0,"a"]"#);
    assert_eq!(
        changes[0].value.as_ref().map(Val::to_string).as_deref(),
        Some(r#"{"batch":0,"acc":1}"#)
    );
    assert_eq!(batch(&p, &mut st, 1, &one), [(Val::str("a"), Val::Int(2))]);
    // The output or commit of batch 1 failed: the engine runs batch 1 again.
    assert_eq!(batch(&p, &mut st, 1, &one), [(Val::str("a"), Val::Int(2))]);
    // Batch 0 leaves: a tombstone for its part, then the put of batch 2's part.
    assert_eq!(batch(&p, &mut st, 2, &one), [(Val::str("a"), Val::Int(2))]);
    let kinds: Vec<bool> = st.changes().iter().map(|c| c.value.is_some()).collect();
    assert_eq!(kinds, [false, true]);
}

#[test]
fn window_results_flow_through_the_steps_after_it() {
    let steps = "- {id: k, keyBy: 'value.k'}\n- {id: w, window: {length: 10s}, aggregate: {count: {}}}\n- {id: busy, filter: 'value >= 2'}\n- {id: label, map: 'key + \":\" + string(value)'}\n";
    let p = Pipeline::compile(&job_every("5s", steps, "json")).unwrap();
    let mut st = p.new_state();
    let recs =
        |ks: &[&str]| -> Vec<String> { ks.iter().map(|k| format!(r#"{{"k":"{k}"}}"#)).collect() };
    assert!(batch(&p, &mut st, 0, &recs(&["a", "b"])).is_empty());
    assert_eq!(
        batch(&p, &mut st, 1, &recs(&["a", "c"])),
        [(Val::str("a"), Val::str("a:2"))]
    );
}

#[test]
fn a_collect_window_lists_the_values_of_its_batches_oldest_first() {
    let p = windowed("{collect: 'value'}", "15s", "5s");
    let mut st = p.new_state();
    let rec = |k: &str, n: i64| format!(r#"{{"k":"{k}","n":{n}}}"#);
    batch(&p, &mut st, 1, &[rec("a", 1), rec("a", 2)]);
    batch(&p, &mut st, 2, &[rec("a", 3)]);
    let out = batch(&p, &mut st, 3, &[rec("a", 4)]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.to_string(), "[1,2,3,4]");
    // The first batch leaves the window.
    let out = batch(&p, &mut st, 4, &[]);
    assert_eq!(out[0].1.to_string(), "[3,4]");
}
