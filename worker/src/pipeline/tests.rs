use std::sync::Arc;

use super::*;
use crate::record::decode_value;
use crate::spec::{parse_job, Format, JobSpec};

pub(super) fn job(pipeline: &str, format: &str) -> JobSpec {
    job_every("1s", pipeline, format)
}

pub(super) fn job_every(interval: &str, pipeline: &str, format: &str) -> JobSpec {
    let text = format!(
        "batchInterval: {interval}\nsource: {{kafka: {{bootstrapServers: 'x:9092', topics: [in]}}, format: {format}}}\nsink: {{stdout: {{}}}}\npipeline:\n{pipeline}"
    );
    parse_job(&text, "t").unwrap().spec
}

pub(super) fn rec(offset: i64, format: Format, payload: &str) -> Record {
    let value = decode_value(
        format,
        Some(payload.as_bytes()),
        &crate::expr::ValueNeeds::Whole,
    )
    .unwrap();
    Record::new(Arc::from("in"), 0, offset, Some(1_000), Val::Null, value)
}

/// Runs JSON payloads through `p` in batches of the given sizes, as the engine does with one
/// partition (whose watermark is the stage's). With `replay`, every batch is run twice, the
/// first attempt thrown away; with `restart_every`, the state is rebuilt from its snapshot
/// that often. Returns the outputs and the late count.
pub(super) fn drive(
    p: &Pipeline,
    payloads: &[String],
    sizes: &mut dyn Iterator<Item = usize>,
    replay: bool,
    restart_every: Option<usize>,
) -> (Vec<Output>, u64) {
    let mut st = p.new_state();
    let (mut out, mut late, mut at, mut batch) = (Vec::new(), 0, 0, 0);
    while at < payloads.len() {
        let n = sizes.next().unwrap_or(1).max(1).min(payloads.len() - at);
        let attempts = if replay { 2 } else { 1 };
        for attempt in 0..attempts {
            let mut run = p.start(&mut st, 1_000 * batch);
            for (i, payload) in payloads[at..at + n].iter().enumerate() {
                let _ = run.push(rec((at + i) as i64, Format::Json, payload));
            }
            let wm = run.watermark();
            let this_late = run.late();
            let (o, failures) = run.finish(&Arc::from("in"), 0, wm);
            assert!(failures.is_empty(), "{failures:?}");
            if attempt + 1 == attempts {
                out.extend(o);
                late += this_late;
            }
        }
        at += n;
        batch += 1;
        if restart_every.is_some_and(|e| (batch as usize).is_multiple_of(e)) {
            st = p.restore(st.dump()).unwrap();
        }
    }
    (out, late)
}

const WORD_COUNT: &str = "- {id: words, flatMap: \"value.split(' ')\"}\n- {id: non-empty, filter: \"item != ''\"}\n- {id: by-word, keyBy: item}\n- {id: counts, aggregate: {count: {}}}\n";

#[test]
fn word_count_per_batch() {
    let p = Pipeline::compile(&job(WORD_COUNT, "text")).unwrap();
    let mut st = p.new_state();
    let mut run = p.start(&mut st, 5_000);
    for (i, line) in ["the cat", "the  dog", "a cat the"].iter().enumerate() {
        run.push(rec(i as i64, Format::Text, line)).unwrap();
    }
    let (out, failures) = run.finish(&Arc::from("in"), 0, None);
    assert!(failures.is_empty());
    let got: Vec<(String, Val)> = out
        .into_iter()
        .map(|o| (o.key.to_string(), o.value))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a".to_string(), Val::Int(1)),
            ("cat".to_string(), Val::Int(2)),
            ("dog".to_string(), Val::Int(1)),
            ("the".to_string(), Val::Int(3)),
        ]
    );
}

#[test]
fn stateless_steps_keep_offsets_and_items_become_output() {
    let steps = "- {id: big, filter: 'value.n > 1'}\n- {id: shape, select: {n: 'value.n', page: 'value.page'}}\n- {id: k, keyBy: 'value.page'}\n";
    let p = Pipeline::compile(&job(steps, "json")).unwrap();
    let mut st = p.new_state();
    let mut run = p.start(&mut st, 0);
    run.push(rec(7, Format::Json, r#"{"n":1,"page":"a"}"#))
        .unwrap();
    run.push(rec(8, Format::Json, r#"{"n":5,"page":"b","x":0}"#))
        .unwrap();
    let (out, _) = run.finish(&Arc::from("in"), 0, None);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].key, Val::str("b"));
    assert_eq!(out[0].source_offset, Some(8));
    assert_eq!(out[0].value.to_string(), r#"{"n":5,"page":"b"}"#);

    let p = Pipeline::compile(&job("- {id: tags, flatMap: 'value.tags'}\n", "json")).unwrap();
    let mut st = p.new_state();
    let mut run = p.start(&mut st, 0);
    run.push(rec(1, Format::Json, r#"{"tags":["x","y"]}"#))
        .unwrap();
    let (out, _) = run.finish(&Arc::from("in"), 0, None);
    assert_eq!(
        out.iter().map(|o| o.value.to_string()).collect::<Vec<_>>(),
        ["x", "y"]
    );
}

#[test]
fn a_failing_record_changes_nothing_and_names_the_step() {
    let steps = "- {id: words, flatMap: 'value.words'}\n- {id: lengths, map: 'size(item) * value.factor'}\n- {id: total, aggregate: {sum: value}}\n";
    let p = Pipeline::compile(&job(steps, "json")).unwrap();
    let mut st = p.new_state();
    let mut run = p.start(&mut st, 0);
    run.push(rec(0, Format::Json, r#"{"words":["ab","c"],"factor":2}"#))
        .unwrap();
    // The second word fails (factor is a string): the first word's contribution must not count.
    let f = run
        .push(rec(1, Format::Json, r#"{"words":["abc", 5],"factor":1}"#))
        .unwrap_err();
    assert_eq!(&*f.step, "lengths");
    let (out, _) = run.finish(&Arc::from("in"), 0, None);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].value, Val::Int(6));
}

#[test]
fn aggregates_sum_min_max_avg_reduce_collect() {
    let cases = [
        (
            "{collect: 'value.n'}",
            Val::List(Arc::new(vec![Val::Int(3), Val::Int(1), Val::Int(5)])),
        ),
        ("{sum: 'value.n'}", Val::Int(9)),
        ("{min: 'value.n'}", Val::Int(1)),
        ("{max: 'value.n'}", Val::Int(5)),
        ("{avg: 'value.n'}", Val::Float(3.0)),
        (
            "{reduce: '{\"n\": a.n * b.n}'}",
            Val::Map(Arc::new(vec![(Arc::from("n"), Val::Int(15))])),
        ),
    ];
    for (agg, want) in cases {
        let steps = format!("- {{id: k, keyBy: \"'all'\"}}\n- {{id: agg, aggregate: {agg}}}\n");
        let p = Pipeline::compile(&job(&steps, "json")).unwrap();
        let mut st = p.new_state();
        let mut run = p.start(&mut st, 0);
        for (i, n) in [3, 1, 5].iter().enumerate() {
            run.push(rec(i as i64, Format::Json, &format!(r#"{{"n":{n}}}"#)))
                .unwrap();
        }
        let (out, _) = run.finish(&Arc::from("in"), 0, None);
        assert_eq!(out.len(), 1, "{agg}");
        assert_eq!(out[0].value, want, "{agg}");
    }
}

#[test]
fn a_stage_cannot_compile_a_repartition_step() {
    let steps = "- {id: k, keyBy: 'value.page'}\n- {id: shuffle, repartition: {}}\n";
    let e = Pipeline::compile(&job(steps, "json"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("\"shuffle\"") && e.contains("ends a stage"),
        "{e}"
    );
}

#[test]
fn decoding_keeps_only_what_the_steps_and_the_sink_read() {
    use crate::expr::ValueNeeds;
    let fields = |f: &[&str]| ValueNeeds::Fields(f.iter().map(|s| Arc::from(*s)).collect());
    let needs = |steps: &str| {
        Pipeline::compile(&job(steps, "json"))
            .unwrap()
            .needs()
            .clone()
    };
    let n = needs("- {id: v, filter: \"has(value.page) && value.page != ''\"}\n- {id: k, keyBy: value.page}\n- {id: c, aggregate: {count: {}}}\n");
    assert_eq!(
        (n.value, n.key, n.headers),
        (fields(&["page"]), false, false)
    );
    // Without steps the sink writes each record as it came.
    let n = needs("  []\n");
    assert_eq!((n.value, n.key), (ValueNeeds::Whole, true));
    // After a select, `value` is the new object: only the select's reads count.
    let n =
        needs("- {id: s, select: {p: value.page}}\n- {id: f, filter: \"value.p != headers.x\"}\n");
    assert_eq!((n.value, n.key, n.headers), (fields(&["page"]), true, true));
    // A reduce folds whole values; an aggregate without keyBy groups by the record's key.
    let n = needs("- {id: r, aggregate: {reduce: 'a + b'}}\n");
    assert_eq!((n.value, n.key), (ValueNeeds::Whole, true));
}
