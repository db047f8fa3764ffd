//! Allocations per record on the per-record path: decoding a record's value as the pipeline
//! needs it and pushing it through the drain benchmark's steps. Counted, not timed, so the
//! figure is the same on every machine: a change that adds an allocation per record fails
//! here, and one that removes some lowers the bound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use weir_worker::expr::Val;
use weir_worker::pipeline::Pipeline;
use weir_worker::record::{decode_value, Record};
use weir_worker::spec::{parse_job, Format};

/// Counts allocations (and reallocations) made by this process.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(p, l, size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The tests of this file count one process-wide counter: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Allocations per record of decoding and running `steps` over `n` records in one batch,
/// the batch's outputs taken as the engine takes each part's.
fn per_record(steps: &str, n: u64) -> f64 {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let text = format!(
        "batchInterval: 1s\nsource: {{kafka: {{bootstrapServers: 'x:9092', topics: [in]}}}}\nsink: {{stdout: {{limit: 0}}}}\npipeline:\n{steps}"
    );
    let spec = parse_job(&text, "t").expect("the job parses").spec;
    let pipeline = Pipeline::compile(&spec).expect("the pipeline compiles");
    let needs = pipeline.needs().clone();
    let payloads: Vec<String> = (0..n).map(weir_testkit::kafka::drain_record).collect();
    let topic: Arc<str> = Arc::from("in");
    let mut state = pipeline.new_state();
    let mut run = pipeline.start(&mut state, 1_000);
    // The outputs' vector grows while the batch runs, as it does in the engine: its
    // doublings are counted too, a few for the whole batch.
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for (offset, p) in payloads.iter().enumerate() {
        let value = decode_value(Format::Json, Some(p.as_bytes()), &needs.value)
            .expect("the record decodes");
        let rec = Record::new(
            topic.clone(),
            0,
            offset as i64,
            Some(1_000),
            Val::Null,
            value,
        );
        run.push(rec).expect("the record passes the steps");
    }
    let outputs = run.take_outputs();
    let counted = ALLOCATIONS.load(Ordering::Relaxed) - before;
    drop(outputs);
    counted as f64 / n as f64
}

const RECORDS: u64 = 20_000;

#[test]
fn a_stateless_record_costs_at_most_its_decoded_field_and_its_output() {
    // bench/drain.sh's stateless job. Per record: the decoded value's map (its Arc and its
    // vector) and the field's string; the output's map (its Arc and its vector); the outputs'
    // vector grows by doubling, a few allocations for the whole batch.
    let n = per_record(
        "  - {id: valid, filter: \"has(value.page) && value.page != ''\"}\n  - {id: page, map: \"{'page': value.page}\"}\n",
        RECORDS,
    );
    println!("stateless: {n:.3} allocations per record");
    assert!(
        n <= 5.01,
        "{n:.3} allocations per record; at most 5 expected"
    );
}

#[test]
fn a_counted_record_costs_at_most_its_decoded_field() {
    // bench/drain.sh's windowed job without the window (the same accumulator): the decoded
    // value's map and field; the key is the field's string, shared, and the count per key
    // allocates only for a key first seen.
    let n = per_record(
        "  - {id: valid, filter: \"has(value.page) && value.page != ''\"}\n  - {id: by-page, keyBy: \"value.page\"}\n  - {id: views, aggregate: {count: {}}}\n",
        RECORDS,
    );
    println!("keyed count: {n:.3} allocations per record");
    assert!(
        n <= 3.01,
        "{n:.3} allocations per record; at most 3 expected"
    );
}
