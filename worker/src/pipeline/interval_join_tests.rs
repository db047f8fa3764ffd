use std::collections::BTreeMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::tests::rec;
use super::*;
use crate::spec::{parse_job, Format};

const BEFORE: i64 = 2_000;
const AFTER: i64 = 5_000;
const DELAY: i64 = 1_500;

fn pipeline(kind: &str) -> Pipeline {
    let text = format!(
        "batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: 'x:9092', topics: [in]}}, eventTime: value.ts, watermark: {{delay: {DELAY}ms}}}}\nsink: {{stdout: {{}}}}\ndeadLetter: {{topic: dlq}}\npipeline:\n- {{id: k, keyBy: value.k}}\n- {{id: j, intervalJoin: {{left: \"value.side == 'l'\", before: {BEFORE}ms, after: {AFTER}ms, kind: {kind}}}}}\n"
    );
    Pipeline::compile(&parse_job(&text, "t").unwrap().spec).unwrap()
}

#[derive(Clone, Debug)]
struct In {
    k: u8,
    left: bool,
    t: i64,
    id: usize,
}

fn payload(r: &In) -> String {
    format!(
        r#"{{"k": "k{}", "side": "{}", "ts": {}, "id": {}}}"#,
        r.k,
        if r.left { "l" } else { "r" },
        r.t,
        r.id
    )
}

/// A pair as written: key, the left's id and the right's (-1 for none).
type Pair = (String, i64, i64);

fn pairs(out: Vec<Output>) -> Vec<Pair> {
    let id = |v: Option<&Val>| match v.and_then(|s| s.field("id")) {
        Some(Val::Int(n)) => *n,
        _ => -1,
    };
    let mut p: Vec<Pair> = out
        .into_iter()
        .map(|o| {
            (
                o.key.to_string(),
                id(o.value.field("left")),
                id(o.value.field("right")),
            )
        })
        .collect();
    p.sort();
    p
}

/// [`super::tests::drive`] over the records' payloads.
fn drive(
    p: &Pipeline,
    input: &[In],
    sizes: &mut dyn Iterator<Item = usize>,
    replay: bool,
    restart_every: Option<usize>,
) -> (Vec<Pair>, u64) {
    let payloads: Vec<String> = input.iter().map(payload).collect();
    let (out, late) = super::tests::drive(p, &payloads, sizes, replay, restart_every);
    (pairs(out), late)
}

/// Both sides mixed, times rising with jitter inside the delay, one in 15 far behind (late).
fn random_input(rng: &mut StdRng, n: usize) -> Vec<In> {
    let mut t = 1_700_000_000_000i64;
    (0..n)
        .map(|id| {
            t += rng.random_range(0..500);
            let at = if rng.random_range(0..15) == 0 {
                t - rng.random_range(4_000..12_000)
            } else {
                t - rng.random_range(0..1_200)
            };
            In {
                k: rng.random_range(0..3),
                left: rng.random_range(0..2) == 0,
                t: at,
                id,
            }
        })
        .collect()
}

/// The join by definition: a record is late when its time is at or behind the watermark
/// before it (the largest earlier time less the delay); every two on-time records of a key,
/// one of each side, within the bound are a pair; with `kind` left (outer), an on-time left
/// (or right) record with no partner is written alone once the final watermark passed its
/// last possible partner's time.
fn brute(input: &[In], kind: &str) -> (Vec<Pair>, u64) {
    let mut max: Option<i64> = None;
    let mut on_time = Vec::new();
    let mut late = 0;
    for r in input {
        let wm = max.map_or(i64::MIN, |m| m - DELAY);
        if r.t <= wm {
            late += 1;
        } else {
            on_time.push(r.clone());
        }
        max = max.max(Some(r.t));
    }
    let last = max.unwrap() - DELAY;
    let mut out = Vec::new();
    let mut met: BTreeMap<usize, bool> = BTreeMap::new();
    for l in on_time.iter().filter(|r| r.left) {
        for r in on_time.iter().filter(|r| !r.left && r.k == l.k) {
            if r.t >= l.t - BEFORE && r.t <= l.t + AFTER {
                out.push((format!("k{}", l.k), l.id as i64, r.id as i64));
                met.insert(l.id, true);
                met.insert(r.id, true);
            }
        }
    }
    for r in &on_time {
        let alone = !met.contains_key(&r.id);
        if alone && r.left && kind != "inner" && r.t + AFTER <= last {
            out.push((format!("k{}", r.k), r.id as i64, -1));
        }
        if alone && !r.left && kind == "outer" && r.t + BEFORE <= last {
            out.push((format!("k{}", r.k), -1, r.id as i64));
        }
    }
    out.sort();
    (out, late)
}

#[test]
fn an_interval_join_equals_the_definition_however_it_is_batched_replayed_or_restored() {
    for kind in ["inner", "left", "outer"] {
        let p = pipeline(kind);
        for seed in 0..4 {
            let mut rng = StdRng::seed_from_u64(seed);
            let input = random_input(&mut rng, 400);
            let (expected, expected_late) = brute(&input, kind);
            assert!(expected.len() > 50, "{kind}: {}", expected.len());
            assert!(expected_late > 5);
            let runs: Vec<(&str, (Vec<Pair>, u64))> = vec![
                (
                    "one batch",
                    drive(&p, &input, &mut std::iter::repeat(usize::MAX), false, None),
                ),
                (
                    "batches of 3",
                    drive(&p, &input, &mut std::iter::repeat(3), false, None),
                ),
                (
                    "odd batches, replayed, restored",
                    drive(
                        &p,
                        &input,
                        &mut [1, 7, 40, 2].into_iter().cycle(),
                        true,
                        Some(3),
                    ),
                ),
            ];
            for (how, (got, late)) in runs {
                assert_eq!(got, expected, "{kind}, seed {seed}, {how}");
                assert_eq!(late, expected_late, "{kind}, seed {seed}, {how}");
            }
        }
    }
}

#[test]
fn held_records_are_let_go_of_once_the_watermark_passes_their_bound() {
    let p = pipeline("inner");
    let mut st = p.new_state();
    let mut run = p.start(&mut st, 0);
    let t0 = 1_700_000_000_000i64;
    for (i, (left, t)) in [(true, t0), (false, t0 + 1_000)].into_iter().enumerate() {
        let r = In {
            k: 0,
            left,
            t,
            id: i,
        };
        run.push(rec(i as i64, Format::Json, &payload(&r))).unwrap();
    }
    let wm = run.watermark();
    let (out, _) = run.finish(&Arc::from("in"), 0, wm);
    assert_eq!(pairs(out), vec![("k0".to_string(), 0, 1)]);
    let held = |st: &PartitionState| match st.step("j") {
        Some(StepState::IntervalJoin(j)) => j.len(),
        other => panic!("{other:?}"),
    };
    assert_eq!(held(&st), 2);
    // A record far later moves the watermark past both bounds.
    let mut run = p.start(&mut st, 1_000);
    let r = In {
        k: 1,
        left: true,
        t: t0 + 60_000,
        id: 2,
    };
    run.push(rec(2, Format::Json, &payload(&r))).unwrap();
    let wm = run.watermark();
    let _ = run.finish(&Arc::from("in"), 0, wm);
    assert_eq!(held(&st), 1, "only the new record is held");
    // A late record is dead-lettered with the reason when the join says so.
    let text = "batchInterval: 1s\nsource: {kafka: {bootstrapServers: 'x:9092', topics: [in]}, eventTime: value.ts, watermark: {delay: 0s}}\nsink: {stdout: {}}\ndeadLetter: {topic: dlq}\npipeline:\n- {id: k, keyBy: value.k}\n- {id: j, intervalJoin: {left: \"value.side == 'l'\", late: deadLetter}}\n";
    let p = Pipeline::compile(&parse_job(text, "t").unwrap().spec).unwrap();
    let mut st = p.new_state();
    let mut run = p.start(&mut st, 0);
    run.push(rec(
        0,
        Format::Json,
        &payload(&In {
            k: 0,
            left: true,
            t: t0 + 10_000,
            id: 0,
        }),
    ))
    .unwrap();
    let e = run
        .push(rec(
            1,
            Format::Json,
            &payload(&In {
                k: 0,
                left: false,
                t: t0,
                id: 1,
            }),
        ))
        .unwrap_err();
    assert_eq!(&*e.step, "j");
    assert!(e.error.0.contains("late: event time"), "{}", e.error.0);
}
