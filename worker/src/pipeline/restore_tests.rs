use std::collections::HashMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::tests::{job_every, rec};
use super::*;
use crate::spec::Format;

fn run_batch(p: &Pipeline, st: &mut PartitionState, t: i64, payloads: &[String]) -> Vec<Output> {
    let mut run = p.start(st, t);
    for (i, payload) in payloads.iter().enumerate() {
        run.push(rec(i as i64, Format::Json, payload)).unwrap();
    }
    let (out, failures) = run.finish(&Arc::from("in"), 0, None);
    assert!(failures.is_empty(), "{failures:?}");
    out
}

/// A compacted changelog: the last change per (step, key), in the order they were last written.
fn compact(log: &[StateChange]) -> Vec<StateChange> {
    let mut last: HashMap<(Arc<str>, Val), usize> = HashMap::new();
    for (i, c) in log.iter().enumerate() {
        last.insert((c.step.clone(), c.key.clone()), i);
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    keep.into_iter().map(|i| log[i].clone()).collect()
}

#[test]
fn state_rebuilt_from_the_compacted_changelog_continues_like_the_original() {
    let pipelines = [
        "- {id: k, keyBy: 'value.k'}\n- {id: n, map: 'value.n'}\n- {id: w, window: {length: 30s, slide: 10s}, aggregate: {sum: value}}\n",
        "- {id: k, keyBy: 'value.k'}\n- {id: n, map: 'value.n'}\n- {id: w, window: {length: 20s}, aggregate: {avg: value}}\n",
        "- {id: k, keyBy: 'value.k'}\n- {id: n, map: 'value.n'}\n- {id: w, window: {length: 15s}, aggregate: {reduce: 'a * 2 + b'}}\n",
        "- {id: k, keyBy: 'value.k'}\n- {id: s, state: {initial: '0', update: 'state + size(values)', remove: 'state > 6', timeout: 20s}}\n",
    ];
    let mut rng = StdRng::seed_from_u64(44);
    let batches: Vec<Vec<String>> = (0..30)
        .map(|_| {
            (0..rng.random_range(0..12))
                .map(|_| {
                    let (k, n) = (rng.random_range(0..10), rng.random_range(-9..10));
                    format!(r#"{{"k":"k{k}","n":{n}}}"#)
                })
                .collect()
        })
        .collect();
    for steps in pipelines {
        let p = Pipeline::compile(&job_every("5s", steps, "json")).unwrap();
        let mut live = p.new_state();
        let mut log = Vec::new();
        for (i, payloads) in batches.iter().enumerate() {
            run_batch(&p, &mut live, i as i64 * 5_000, payloads);
            log.extend(live.take_changes());
            if i == 14 {
                break;
            }
        }
        // The worker restarts after batch 14 with only the changelog.
        let mut restored = p.restore(compact(&log)).unwrap();
        for (i, payloads) in batches.iter().enumerate().skip(15) {
            let t = i as i64 * 5_000;
            let want = run_batch(&p, &mut live, t, payloads);
            let got = run_batch(&p, &mut restored, t, payloads);
            assert_eq!(got, want, "{steps} at batch {i}");
            assert_eq!(restored.changes(), live.changes(), "{steps} at batch {i}");
        }
    }
}

#[test]
fn a_changelog_that_does_not_fit_names_the_step() {
    let p = Pipeline::compile(&job_every(
        "5s",
        "- {id: w, window: {length: 10s}, aggregate: {count: {}}}\n",
        "json",
    ))
    .unwrap();
    let change = |step: &str, slot: i64| StateChange {
        step: Arc::from(step),
        key: Val::List(Arc::new(vec![Val::Int(slot), Val::str("a")])),
        value: Some(Val::Map(Arc::new(vec![
            (Arc::from("batch"), Val::Int(3)),
            (Arc::from("acc"), Val::Int(1)),
        ]))),
    };
    assert!(p.restore([change("w", 1)]).is_ok());
    let e = p.restore([change("gone", 1)]).unwrap_err().to_string();
    assert!(e.contains("\"gone\"") && e.contains("resetState"), "{e}");
    // Slot 5 exists only in a longer window.
    let e = p.restore([change("w", 5)]).unwrap_err().to_string();
    assert!(e.contains("\"w\"") && e.contains("longer"), "{e}");
}
