use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::event_window::time_text;
use super::tests::rec;
use super::*;
use crate::spec::{parse_job, Format};

/// A job reading `{k, n, ts}` records with event time `value.ts`, a watermark of `delay`, and
/// one event-time window step `w` (the window's settings in YAML flow form).
fn pipeline(window: &str, agg: &str, delay: &str) -> Pipeline {
    let text = format!(
        "batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: 'x:9092', topics: [in]}}, eventTime: value.ts, watermark: {{delay: {delay}}}}}\nsink: {{stdout: {{}}}}\ndeadLetter: {{topic: dlq}}\npipeline:\n- {{id: k, keyBy: value.k}}\n- {{id: w, window: {{time: event, {window}}}, aggregate: {agg}}}\n"
    );
    Pipeline::compile(&parse_job(&text, "t").unwrap().spec).unwrap()
}

#[derive(Clone, Debug)]
struct In {
    k: String,
    t: i64,
    n: i64,
}

fn payload(r: &In) -> String {
    format!(r#"{{"k": "{}", "ts": {}, "n": {}}}"#, r.k, r.t, r.n)
}

/// A window as written: key, start, end, value, emission.
type Emitted = (String, String, String, String, String);

fn emitted(out: Vec<Output>) -> Vec<Emitted> {
    out.into_iter()
        .map(|o| {
            let w = o.value.field("window").unwrap();
            (
                o.key.to_string(),
                w.field("start").unwrap().to_string(),
                w.field("end").unwrap().to_string(),
                o.value.field("value").unwrap().to_string(),
                o.value.field("emit").unwrap().to_string(),
            )
        })
        .collect()
}

/// [`super::tests::drive`] over the records' payloads.
fn drive(
    p: &Pipeline,
    input: &[In],
    sizes: &mut dyn Iterator<Item = usize>,
    replay: bool,
    restart_every: Option<usize>,
) -> (Vec<Emitted>, u64) {
    let payloads: Vec<String> = input.iter().map(payload).collect();
    let (out, late) = super::tests::drive(p, &payloads, sizes, replay, restart_every);
    (emitted(out), late)
}

/// Mostly rising times with jitter inside the delay, and now and then a record far behind.
fn random_input(rng: &mut StdRng, n: usize) -> Vec<In> {
    let mut t = 1_700_000_000_000i64;
    (0..n)
        .map(|_| {
            t += rng.random_range(0..400);
            let at = if rng.random_range(0..20) == 0 {
                t - rng.random_range(5_000..20_000)
            } else {
                t - rng.random_range(0..1_500)
            };
            In {
                k: format!("k{}", rng.random_range(0..4)),
                t: at,
                n: rng.random_range(1..10),
            }
        })
        .collect()
}

/// The windows by definition: a record is in every window of its time that had not closed at
/// the watermark before it (largest earlier time minus the delay); a window is written once
/// the final watermark passed its end. Values are sums of `n`.
fn brute_fixed(input: &[In], length: i64, slide: i64, delay: i64) -> BTreeSet<Emitted> {
    let mut max: Option<i64> = None;
    let mut sums: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for r in input {
        let wm = max.map_or(i64::MIN, |m| m - delay);
        let mut start = r.t - r.t.rem_euclid(slide);
        while start > r.t - length {
            if start + length > wm {
                *sums.entry((r.k.clone(), start)).or_default() += r.n;
            }
            start -= slide;
        }
        max = max.max(Some(r.t));
    }
    let last = max.unwrap() - delay;
    sums.into_iter()
        .filter(|((_, s), _)| s + length <= last)
        .map(|((k, s), v)| {
            (
                k.clone(),
                (time_text(s)),
                (time_text(s + length)),
                v.to_string(),
                "final".to_string(),
            )
        })
        .collect()
}

/// Sessions by definition: the on-time records' spans `[t, t + gap)` per key, joined where
/// they overlap.
fn brute_sessions(input: &[In], gap: i64, delay: i64) -> BTreeSet<Emitted> {
    let mut max: Option<i64> = None;
    let mut on_time: BTreeMap<String, Vec<(i64, i64)>> = BTreeMap::new();
    for r in input {
        let wm = max.map_or(i64::MIN, |m| m - delay);
        if r.t > wm {
            on_time.entry(r.k.clone()).or_default().push((r.t, r.n));
        }
        max = max.max(Some(r.t));
    }
    let last = max.unwrap() - delay;
    let mut out = BTreeSet::new();
    for (k, mut recs) in on_time {
        recs.sort();
        let mut cur: Option<(i64, i64, i64)> = None;
        let mut close = |c: (i64, i64, i64)| {
            if c.1 <= last {
                out.insert((
                    k.clone(),
                    (time_text(c.0)),
                    (time_text(c.1)),
                    c.2.to_string(),
                    "final".to_string(),
                ));
            }
        };
        for (t, n) in recs {
            cur = match cur {
                Some((s, e, v)) if t < e => Some((s, e.max(t + gap), v + n)),
                Some(c) => {
                    close(c);
                    Some((t, t + gap, n))
                }
                None => Some((t, t + gap, n)),
            };
        }
        if let Some(c) = cur {
            close(c);
        }
    }
    out
}

fn as_set(v: Vec<Emitted>) -> BTreeSet<Emitted> {
    let n = v.len();
    let s: BTreeSet<Emitted> = v.into_iter().collect();
    assert_eq!(s.len(), n, "a window was written twice");
    s
}

#[test]
fn tumbling_and_sliding_windows_equal_the_definition_however_the_input_is_batched() {
    for (window, length, slide) in [
        ("length: 5s", 5_000, 5_000),
        ("length: 6s, slide: 2s", 6_000, 2_000),
    ] {
        let p = pipeline(window, "{sum: value.n}", "2s");
        for seed in 0..5 {
            let mut rng = StdRng::seed_from_u64(seed);
            let input = random_input(&mut rng, 400);
            let want = brute_fixed(&input, length, slide, 2_000);
            assert!(want.len() > 10, "{window}: too few windows to mean much");
            let one = drive(&p, &input, &mut std::iter::once(input.len()), false, None);
            let small = drive(&p, &input, &mut std::iter::repeat(3), false, None);
            let mut sizes = (0..).map(|i| [1usize, 7, 40, 2][i % 4]);
            let replayed = drive(&p, &input, &mut sizes, true, Some(3));
            assert_eq!(as_set(one.0), want, "{window}, seed {seed}: one batch");
            assert_eq!(
                as_set(small.0),
                want,
                "{window}, seed {seed}: small batches"
            );
            assert_eq!(
                as_set(replayed.0),
                want,
                "{window}, seed {seed}: replays and restarts"
            );
            assert_eq!(one.1, small.1, "{window}: late counts differ");
            assert_eq!(one.1, replayed.1, "{window}: late counts differ");
        }
    }
}

#[test]
fn session_windows_equal_the_definition_however_the_input_is_batched() {
    let p = pipeline("gap: 1500ms", "{sum: value.n}", "2s");
    for seed in 0..5 {
        let mut rng = StdRng::seed_from_u64(100 + seed);
        let input = random_input(&mut rng, 300);
        let want = brute_sessions(&input, 1_500, 2_000);
        assert!(want.len() > 10, "too few sessions to mean much");
        let one = drive(&p, &input, &mut std::iter::once(input.len()), false, None);
        let mut sizes = (0..).map(|i| [1usize, 5, 30][i % 3]);
        let replayed = drive(&p, &input, &mut sizes, true, Some(2));
        assert_eq!(as_set(one.0), want, "seed {seed}: one batch");
        assert_eq!(
            as_set(replayed.0),
            want,
            "seed {seed}: replays and restarts"
        );
    }
}

fn at(k: &str, t: i64) -> In {
    In {
        k: k.into(),
        t,
        n: 1,
    }
}

#[test]
fn a_record_in_the_gap_between_two_sessions_joins_them_and_a_wider_gap_splits_them() {
    let p = pipeline("gap: 10s", "{count: {}}", "10s");
    // Two sessions of "a": [0, 10s) and [15s, 25s); then 8s, whose span [8s, 18s) overlaps
    // both (the watermark is 5s, so it is on time); then 100s closes everything.
    let input = [
        at("a", 0),
        at("a", 15_000),
        at("a", 8_000),
        at("a", 100_000),
    ];
    let (out, late) = drive(&p, &input, &mut std::iter::repeat(1), false, None);
    assert_eq!(late, 0);
    assert_eq!(
        out,
        vec![(
            "a".into(),
            (time_text(0)),
            (time_text(25_000)),
            "3".into(),
            "final".into()
        )]
    );
    // Without the bridge the two stay apart.
    let input = [at("a", 0), at("a", 15_000), at("a", 100_000)];
    let (out, _) = drive(&p, &input, &mut std::iter::repeat(1), false, None);
    let spans: Vec<(String, String)> = out.into_iter().map(|e| (e.1, e.2)).collect();
    assert_eq!(
        spans,
        vec![
            ((time_text(0)), (time_text(10_000))),
            ((time_text(15_000)), (time_text(25_000))),
        ]
    );
}

#[test]
fn sessions_of_other_keys_never_join() {
    let p = pipeline("gap: 10s", "{count: {}}", "0s");
    let input = [at("a", 0), at("b", 5_000), at("a", 100_000)];
    let (out, _) = drive(&p, &input, &mut std::iter::once(3), false, None);
    let keys: Vec<String> = out.into_iter().map(|e| e.0).collect();
    assert_eq!(keys, vec!["a".to_string(), "b".to_string()]);
}

/// One batch of payloads through a pipeline, returning outputs, failures and the late count.
fn one_batch(
    p: &Pipeline,
    st: &mut PartitionState,
    time: i64,
    input: &[In],
) -> (Vec<Emitted>, Vec<StepFailure>, u64) {
    let mut run = p.start(st, time);
    let mut failed = Vec::new();
    for (i, r) in input.iter().enumerate() {
        if let Err(f) = run.push(rec(i as i64, Format::Json, &payload(r))) {
            failed.push(f);
        }
    }
    let wm = run.watermark();
    let late = run.late();
    let (out, failures) = run.finish(&Arc::from("in"), 0, wm);
    assert!(failures.is_empty(), "{failures:?}");
    (emitted(out), failed, late)
}

#[test]
fn late_records_are_counted_and_go_where_the_policy_says() {
    // The window [0, 10s) closes once 10s is read (delay 0); 3s then comes late.
    let input = [at("a", 1_000), at("a", 10_000)];
    let late = [at("a", 3_000), at("a", 4_000)];
    for policy in ["drop", "deadLetter", "update"] {
        let p = pipeline(&format!("length: 10s, late: {policy}"), "{count: {}}", "0s");
        let mut st = p.new_state();
        let (out, failed, n) = one_batch(&p, &mut st, 1_000, &input);
        assert_eq!(n, 0);
        assert!(failed.is_empty());
        assert_eq!(out.len(), 1, "{policy}: the window closes: {out:?}");
        assert_eq!(out[0].3, "1");
        let (out, failed, n) = one_batch(&p, &mut st, 2_000, &late);
        assert_eq!(n, 2, "{policy}: late records are counted");
        match policy {
            "drop" => {
                assert!(out.is_empty(), "{out:?}");
                assert!(failed.is_empty());
            }
            "deadLetter" => {
                assert!(out.is_empty(), "{out:?}");
                assert_eq!(failed.len(), 2);
                assert!(
                    failed[0].error.0.starts_with("late: event time"),
                    "{:?}",
                    failed[0]
                );
                assert_eq!(&*failed[0].step, "w");
            }
            _ => {
                assert!(failed.is_empty());
                assert_eq!(
                    out,
                    vec![(
                        "a".into(),
                        (time_text(0)),
                        (time_text(10_000)),
                        "2".into(),
                        "late".into()
                    )],
                    "the late update carries the late records' own count"
                );
            }
        }
    }
}

#[test]
fn allowed_lateness_keeps_a_window_open_past_the_watermark() {
    let p = pipeline("length: 10s, allowedLateness: 5s", "{count: {}}", "0s");
    let mut st = p.new_state();
    let (out, _, _) = one_batch(&p, &mut st, 1_000, &[at("a", 1_000), at("a", 12_000)]);
    assert!(out.is_empty(), "still open until 15s: {out:?}");
    let (out, _, late) = one_batch(&p, &mut st, 2_000, &[at("a", 2_000), at("a", 15_000)]);
    assert_eq!(late, 0, "2s came within the allowed lateness");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].3, "2");
}

#[test]
fn early_firing_writes_open_windows_every_batch_then_the_final_one() {
    let p = pipeline("length: 10s, emit: everyBatch", "{count: {}}", "0s");
    let mut st = p.new_state();
    let (out, _, _) = one_batch(&p, &mut st, 1_000, &[at("a", 1_000)]);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].3.as_str(), out[0].4.as_str()), ("1", "early"));
    let (out, _, _) = one_batch(&p, &mut st, 2_000, &[at("a", 2_000), at("a", 11_000)]);
    let kinds: Vec<(&str, &str)> = out.iter().map(|e| (e.3.as_str(), e.4.as_str())).collect();
    assert_eq!(kinds, vec![("2", "final"), ("1", "early")], "{out:?}");
}

#[test]
fn a_record_without_an_event_time_is_a_failure_that_says_why() {
    let p = pipeline("length: 10s", "{count: {}}", "0s");
    let mut st = p.new_state();
    let mut run = p.start(&mut st, 1_000);
    let err = run
        .push(rec(0, Format::Json, r#"{"k": "a", "ts": "yesterday"}"#))
        .unwrap_err();
    assert_eq!(&*err.step, "eventTime");
    assert!(err.error.0.contains("RFC 3339"), "{}", err.error);
    let ok = run.push(rec(
        1,
        Format::Json,
        r#"{"k": "a", "ts": "2026-11-01T12:00:00Z"}"#,
    ));
    assert!(ok.is_ok(), "{ok:?}");
    let noon = chrono::DateTime::parse_from_rfc3339("2026-11-01T12:00:00Z").unwrap();
    assert_eq!(run.watermark(), Some(noon.timestamp_millis()));
}

#[test]
fn a_restart_neither_reopens_a_closed_window_nor_forgets_the_watermark() {
    let p = pipeline("length: 10s", "{count: {}}", "0s");
    let mut st = p.new_state();
    let (out, _, _) = one_batch(&p, &mut st, 1_000, &[at("a", 1_000), at("a", 10_500)]);
    assert_eq!(out.len(), 1);
    let mut restored = p.restore(st.dump()).unwrap();
    assert_eq!(restored.clock(), st.clock());
    let (out, _, late) = one_batch(&p, &mut restored, 2_000, &[at("a", 2_000)]);
    assert_eq!(late, 1, "the window closed before the restart");
    assert!(out.is_empty());
}
