use std::sync::Arc;

use super::tests::{job, rec};
use super::*;
use crate::spec::Format;

/// Runs one batch of text lines at batch time `t` (ms) and returns "key=value" strings.
fn batch(p: &Pipeline, st: &mut PartitionState, t: i64, lines: &[&str]) -> Vec<String> {
    let mut run = p.start(st, t);
    for (i, line) in lines.iter().enumerate() {
        run.push(rec(i as i64, Format::Text, line)).unwrap();
    }
    let (out, failures) = run.finish(&Arc::from("in"), 0, None);
    assert!(failures.is_empty(), "{failures:?}");
    out.iter()
        .map(|o| format!("{}={}", o.key, o.value))
        .collect()
}

fn words(state: &str) -> Pipeline {
    let steps = format!(
        "- {{id: words, flatMap: \"value.split(' ')\"}}\n- {{id: by-word, keyBy: item}}\n- {{id: counts, state: {state}}}\n"
    );
    Pipeline::compile(&job(&steps, "text")).unwrap()
}

/// Seed 004's word count: a word whose count went past 10 is dropped the next time it shows up.
const SEED_004: &str = "{initial: '0', update: 'state + size(values)', remove: 'state > 10'";

#[test]
fn seed_004_threshold_removal_gives_the_seeds_output() {
    let b56 = "B".repeat(56);
    let b28 = "B".repeat(28);
    let first = format!(
        "AAAAAAAA BBBBBBBBBBBBBB BBBBBBBBBBBBBB {b56} {b28} {}",
        ["BBBBBBB"; 11].join(" ")
    );
    let p = words(&format!("{SEED_004}, snapshots: true}}"));
    let mut st = p.new_state();
    // The seed prints the state after each batch (its stateSnapshots).
    let seed_first = [
        "AAAAAAAA=1".to_string(),
        "BBBBBBB=11".to_string(),
        "BBBBBBBBBBBBBB=2".to_string(),
        format!("{b28}=1"),
        format!("{b56}=1"),
    ];
    assert_eq!(batch(&p, &mut st, 1_000, &[&first]), seed_first);
    // BBBBBBB shows up again past the threshold: it disappears, the other words stay.
    let second: Vec<String> = seed_first
        .iter()
        .filter(|w| !w.starts_with("BBBBBBB="))
        .cloned()
        .collect();
    assert_eq!(batch(&p, &mut st, 2_000, &["BBBBBBB"]), second);
    assert_eq!(st.changes().len(), 1);
    assert_eq!(st.changes()[0].key, Val::str("BBBBBBB"));
    assert_eq!(st.changes()[0].value, None);
    // Seen once more, it starts again from the initial state.
    let third = batch(&p, &mut st, 3_000, &["BBBBBBB"]);
    assert!(third.contains(&"BBBBBBB=1".to_string()), "{third:?}");

    // Without snapshots, the step emits the keys it updated, and a removed key's last state
    // as its final record.
    let p = words(&format!("{SEED_004}}}"));
    let mut st = p.new_state();
    assert_eq!(batch(&p, &mut st, 1_000, &[&first]), seed_first);
    assert_eq!(batch(&p, &mut st, 2_000, &["BBBBBBB"]), ["BBBBBBB=11"]);
    assert_eq!(batch(&p, &mut st, 3_000, &["AAAAAAAA"]), ["AAAAAAAA=2"]);
}

#[test]
fn state_survives_across_batches_and_each_change_is_recorded() {
    let p = words("{update: 'state == null ? size(values) : state + size(values)'}");
    let mut st = p.new_state();
    assert_eq!(batch(&p, &mut st, 1_000, &["a b a"]), ["a=2", "b=1"]);
    assert_eq!(batch(&p, &mut st, 2_000, &[]), Vec::<String>::new());
    assert_eq!(batch(&p, &mut st, 3_000, &["a", "c"]), ["a=3", "c=1"]);
    let changes: Vec<String> = st
        .changes()
        .iter()
        .map(|c| {
            format!(
                "{} {} {}",
                c.step,
                c.key,
                c.value.as_ref().map_or("-".into(), Val::to_string)
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            r#"counts a {"state":3,"seen":3000}"#,
            r#"counts c {"state":1,"seen":3000}"#
        ]
    );
    // The sink failed and batch 3000 runs again: it replaces, not adds to, the first run.
    assert_eq!(batch(&p, &mut st, 3_000, &["a", "c"]), ["a=3", "c=1"]);
    let Some(StepState::Keyed(k)) = st.step("counts") else {
        panic!("no state");
    };
    assert_eq!(k.len(), 3);
    assert_eq!(
        k.get(&Val::str("a")).map(|e| e.state.clone()),
        Some(Val::Int(3))
    );
}

#[test]
fn timeouts_fire_within_one_batch_of_expiry_with_a_final_record() {
    // 1 s batches; "a" is last seen at 10 s. With a 3 s timeout it expires at 13 s exactly;
    // with 2.5 s at 12.5 s, and the first batch after that is 13 s.
    for timeout in ["3s", "2500ms"] {
        let p = words(&format!(
            "{{initial: '0', update: 'state + size(values)', timeout: {timeout}}}"
        ));
        let mut st = p.new_state();
        assert_eq!(batch(&p, &mut st, 9_000, &["a b"]), ["a=1", "b=1"]);
        assert_eq!(batch(&p, &mut st, 10_000, &["a"]), ["a=2"]);
        assert!(batch(&p, &mut st, 11_000, &[]).is_empty());
        // "b" (seen at 9 s) expires at 12 s or 11.5 s: no input needed for it to fire.
        assert_eq!(batch(&p, &mut st, 12_000, &[]), ["b=1"], "{timeout}");
        assert_eq!(batch(&p, &mut st, 13_000, &[]), ["a=2"], "{timeout}");
        // A replay of the batch takes the expiry back and makes it again, once.
        assert_eq!(batch(&p, &mut st, 13_000, &[]), ["a=2"], "{timeout}");
        assert_eq!(st.changes().len(), 1);
        assert_eq!(st.changes()[0].value, None);
        assert!(batch(&p, &mut st, 14_000, &[]).is_empty());
        // A key seen again starts over.
        assert_eq!(batch(&p, &mut st, 15_000, &["a"]), ["a=1"]);
    }
}

#[test]
fn a_busy_key_is_indexed_for_timeout_about_once() {
    let p = words("{initial: '0', update: 'state + size(values)', timeout: 5s}");
    let mut st = p.new_state();
    for t in 1..=200 {
        assert_eq!(
            batch(&p, &mut st, t * 1_000, &["hot"]),
            [format!("hot={t}")]
        );
    }
    let Some(StepState::Keyed(k)) = st.step("counts") else {
        panic!("no state");
    };
    assert!(
        k.indexed() <= 2,
        "{} index entries for one key",
        k.indexed()
    );
    // Idle from 200 s: it expires at 205 s, not earlier.
    for t in 201..=204 {
        assert!(batch(&p, &mut st, t * 1_000, &[]).is_empty(), "{t}");
    }
    assert_eq!(batch(&p, &mut st, 205_000, &[]), ["hot=200"]);
}

#[test]
fn snapshots_emit_the_whole_state_every_batch() {
    let p = words("{initial: '0', update: 'state + size(values)', snapshots: true}");
    let mut st = p.new_state();
    assert_eq!(batch(&p, &mut st, 1_000, &["x y"]), ["x=1", "y=1"]);
    assert_eq!(batch(&p, &mut st, 2_000, &[]), ["x=1", "y=1"]);
    assert_eq!(batch(&p, &mut st, 3_000, &["y"]), ["x=1", "y=2"]);
    // Only the updated key is a state change.
    assert_eq!(st.changes().len(), 1);
}

#[test]
fn a_failing_update_keeps_the_key_state_and_names_the_step() {
    let p = words("{initial: '0', update: 'values[0] == \"bad\" ? state / 0 : state + 1'}");
    let mut st = p.new_state();
    batch(&p, &mut st, 1_000, &["ok"]);
    let mut run = p.start(&mut st, 2_000);
    run.push(rec(0, Format::Text, "bad ok")).unwrap();
    let (out, failures) = run.finish(&Arc::from("in"), 0, None);
    assert_eq!(out.len(), 1);
    assert_eq!(failures.len(), 1);
    assert_eq!(&*failures[0].1.step, "counts");
    assert_eq!(failures[0].0.key, Val::str("bad"));
}

#[test]
fn a_removed_key_emits_its_last_state_as_a_timeout_does() {
    let p = words("{initial: '0', update: 'state + size(values)', remove: 'state >= 2'}");
    let mut st = p.new_state();
    assert_eq!(batch(&p, &mut st, 1_000, &["a a b"]), ["a=2", "b=1"]);
    // "a" is at the threshold: it ends with its last state, and this batch's "a"s are not
    // counted into any state; "b" goes on.
    assert_eq!(batch(&p, &mut st, 2_000, &["a b"]), ["a=2", "b=2"]);
    // Seen again, "a" starts over from the initial state.
    assert_eq!(batch(&p, &mut st, 3_000, &["a"]), ["a=1"]);
}

#[test]
fn update_knows_when_a_key_is_timing_out_or_removed_and_marks_its_final_record() {
    let p = words(
        "{initial: '0', update: \"timingOut ? 'timed out at ' + string(state) : removing ? 'removed at ' + string(state) + ' with ' + string(size(values)) : state + size(values)\", remove: 'state >= 3', timeout: 2s}",
    );
    let mut st = p.new_state();
    assert_eq!(batch(&p, &mut st, 1_000, &["a a a b"]), ["a=3", "b=1"]);
    // An ordinary update sees timingOut and removing false; "a" ends by remove.
    assert_eq!(
        batch(&p, &mut st, 2_000, &["a a"]),
        ["a=removed at 3 with 2"]
    );
    // "b", last seen at 1 s, times out at 3 s with a record that says so.
    assert_eq!(batch(&p, &mut st, 3_000, &[]), ["b=timed out at 1"]);
    assert_eq!(batch(&p, &mut st, 4_000, &[]), Vec::<String>::new());
}
