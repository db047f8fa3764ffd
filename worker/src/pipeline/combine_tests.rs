//! Combine before the shuffle, without a broker: the first stage's combine writes partials,
//! the second stage's aggregate merges them (mixed with plain records, as a repartition topic
//! written before an upgrade holds), and the results equal a brute-force computation.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::spec::parse_job;
use crate::stages::split;

/// A job reading JSON `{page, n}` records, keyed by page, then `agg`: its two stages'
/// pipelines, and the aggregation's name the first stage's partials carry.
fn stages(agg: &str) -> (Pipeline, Pipeline, &'static str) {
    let job = parse_job(
        &format!("batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: 'k:9092', topics: [in]}}}}\npipeline:\n- {{id: k, keyBy: value.page}}\n- {{id: a, {agg}}}\nsink: {{stdout: {{}}}}\n"),
        "t",
    )
    .unwrap();
    let stages = split(&job);
    assert_eq!(stages.len(), 2, "{agg}");
    let kind = stages[0]
        .job
        .spec
        .sink
        .kafka
        .as_ref()
        .unwrap()
        .partials
        .unwrap();
    (
        Pipeline::compile(&stages[0].job.spec).unwrap(),
        Pipeline::compile(&stages[1].job.spec).unwrap(),
        kind,
    )
}

fn record(topic: &str, partition: i32, offset: i64, key: Val, value: Val) -> Record {
    Record::new(Arc::from(topic), partition, offset, Some(0), key, value)
}

/// `n` records over `keys` pages with integer amounts, from a fixed seed.
fn input(n: usize, keys: u64, seed: u64) -> Vec<(String, i64)> {
    let mut rng = weir_testkit::random::Lcg::new(seed);
    let mut next = move || rng.bits();
    (0..n)
        .map(|_| (format!("p{}", next() % keys), (next() % 201) as i64 - 100))
        .collect()
}

fn json(page: &str, n: i64) -> Val {
    Val::Map(Arc::new(vec![
        (Arc::from("page"), Val::str(page)),
        (Arc::from("n"), Val::Int(n)),
    ]))
}

/// Brute force over the input, as the results print.
fn expected(agg: &str, data: &[(String, i64)]) -> BTreeMap<String, String> {
    let mut by: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (k, n) in data {
        by.entry(k.clone()).or_default().push(*n);
    }
    by.into_iter()
        .map(|(k, ns)| {
            let v = match agg {
                "count" => Val::Int(ns.len() as i64),
                "sum" => Val::Int(ns.iter().sum()),
                "min" => Val::Int(*ns.iter().min().unwrap()),
                "max" => Val::Int(*ns.iter().max().unwrap()),
                _ => Val::Float(ns.iter().sum::<i64>() as f64 / ns.len() as f64),
            };
            (k, v.to_string())
        })
        .collect()
}

const AGGS: [(&str, &str); 5] = [
    ("count", "aggregate: {count: {}}"),
    ("sum", "aggregate: {sum: value.n}"),
    ("min", "aggregate: {min: value.n}"),
    ("max", "aggregate: {max: value.n}"),
    ("avg", "aggregate: {avg: value.n}"),
];

#[test]
fn partials_of_each_kind_merge_to_the_brute_force_result_even_mixed_with_plain_records() {
    let data = input(3_000, 37, 7);
    for (name, agg) in AGGS {
        let (first, second, kind) = stages(agg);
        assert_eq!(kind, name);
        // The first stage over 4 input partitions: one partial per key each.
        let partitions = 4;
        let mut partials = Vec::new();
        // A quarter of the input reaches the second stage as plain shuffled records.
        let (plain, combined) = data.split_at(data.len() / 4);
        for p in 0..partitions {
            let mut st = first.new_state();
            let mut run = first.start(&mut st, 1_000);
            let mine: Vec<&(String, i64)> = combined
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as i32 % partitions == p)
                .map(|(_, r)| r)
                .collect();
            for (i, (page, n)) in mine.iter().enumerate() {
                run.push(record("in", p, i as i64, Val::Null, json(page, *n)))
                    .unwrap();
            }
            let (out, failures) = run.finish(&Arc::from("in"), p, None);
            assert!(failures.is_empty(), "{failures:?}");
            let keys: std::collections::HashSet<&str> =
                mine.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(out.len(), keys.len(), "{name}: one partial per key");
            partials.extend(out);
        }
        let mut st = second.new_state();
        let mut run = second.start(&mut st, 1_000);
        let mut represented = 0;
        for (i, (page, n)) in plain.iter().enumerate() {
            let r = record("rp", 0, i as i64, Val::str(page), json(page, *n));
            run.push(r).unwrap();
        }
        for o in partials {
            represented += run.push_partial(kind.as_bytes(), o.key, &o.value).unwrap();
        }
        assert_eq!(represented as usize, combined.len(), "{name}");
        let (out, failures) = run.finish(&Arc::from("rp"), 0, None);
        assert!(failures.is_empty(), "{failures:?}");
        let got: BTreeMap<String, String> = out
            .into_iter()
            .map(|o| (o.key.to_string(), o.value.to_string()))
            .collect();
        assert_eq!(got, expected(name, &data), "{name}");
    }
}

#[test]
fn a_windowed_aggregate_merges_partials_and_subtracts_leaving_batches() {
    // Batches of 1 s, a window of 3: every batch's output is the last three batches' input.
    let data = input(2_000, 11, 3);
    let batches: Vec<&[(String, i64)]> = data.chunks(250).collect();
    for (name, agg) in AGGS {
        let windowed = format!("window: {{length: 3s}}, {agg}");
        let (first, second, kind) = stages(&windowed);
        let (mut st1, mut st2) = (first.new_state(), second.new_state());
        for (b, batch) in batches.iter().enumerate() {
            let time = (b as i64 + 1) * 1_000;
            let mut run = first.start(&mut st1, time);
            for (i, (page, n)) in batch.iter().enumerate() {
                run.push(record("in", 0, i as i64, Val::Null, json(page, *n)))
                    .unwrap();
            }
            let (partials, _) = run.finish(&Arc::from("in"), 0, None);
            let mut run = second.start(&mut st2, time);
            for o in partials {
                run.push_partial(kind.as_bytes(), o.key, &o.value).unwrap();
            }
            let (out, failures) = run.finish(&Arc::from("rp"), 0, None);
            assert!(failures.is_empty(), "{failures:?}");
            let got: BTreeMap<String, String> = out
                .into_iter()
                .map(|o| (o.key.to_string(), o.value.to_string()))
                .collect();
            let window: Vec<(String, i64)> = batches[b.saturating_sub(2)..=b]
                .iter()
                .flat_map(|c| c.iter().cloned())
                .collect();
            assert_eq!(got, expected(name, &window), "{name}, batch {b}");
        }
    }
}

#[test]
fn a_record_that_fails_the_combine_fails_under_the_aggregates_id_as_before() {
    // A record whose amount is not a number fails the combine, under the aggregate's id, as
    // it failed the aggregate before: the engine makes it a dead letter with the reason.
    let (first, _, _) = stages("aggregate: {sum: value.n}");
    let mut st = first.new_state();
    let mut run = first.start(&mut st, 1_000);
    let bad = Val::Map(Arc::new(vec![
        (Arc::from("page"), Val::str("a")),
        (Arc::from("n"), Val::str("x")),
    ]));
    let f = run.push(record("in", 0, 0, Val::Null, bad)).unwrap_err();
    assert_eq!(&*f.step, "a");
    assert!(
        f.error.0.contains("sum and avg need numbers"),
        "{}",
        f.error.0
    );
    run.push(record("in", 0, 1, Val::Null, json("a", 2)))
        .unwrap();
    let (out, _) = run.finish(&Arc::from("in"), 0, None);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].value.to_string(), "[{\"sum\":2,\"n\":1},1]");
}

#[test]
fn a_partial_of_another_aggregation_or_malformed_is_refused_with_the_reason() {
    let (_, second, _) = stages("aggregate: {sum: value.n}");
    let mut st = second.new_state();
    let mut run = second.start(&mut st, 1_000);
    let f = run
        .push_partial(
            b"count",
            Val::str("a"),
            &Val::List(Arc::new(vec![Val::Int(3), Val::UInt(3)])),
        )
        .unwrap_err();
    assert_eq!(&*f.step, "a");
    assert!(
        f.error
            .0
            .contains("a partial of a count aggregate reached step \"a\""),
        "{}",
        f.error.0
    );
    let f = run
        .push_partial(b"sum", Val::str("a"), &Val::Int(3))
        .unwrap_err();
    assert!(
        f.error
            .0
            .contains("a partial of a sum aggregate is malformed"),
        "{}",
        f.error.0
    );
    let (out, _) = run.finish(&Arc::from("rp"), 0, None);
    assert!(out.is_empty());
}
