//! Keyed state at a million keys: update rate, memory per key, changelog size, restore rate.
//!
//! `cargo bench -p weir-worker --bench state` prints the figures (`bench/state.sh` runs it);
//! `cargo test` runs it once with 20,000 keys as a smoke test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use weir_worker::expr::Val;
use weir_worker::pipeline::{PartitionState, Pipeline, StateChange};
use weir_worker::record::Record;
use weir_worker::spec::parse_job;
use weir_worker::value::codec;

/// Live heap bytes, to measure what the state holds.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const JOB: &str = r#"
batchInterval: 1s
source: {kafka: {bootstrapServers: "unused:9092", topics: [in]}, format: text}
pipeline:
  - {id: by-word, keyBy: value}
  - {id: counts, state: {initial: '0', update: 'state + size(values)'}}
sink: {stdout: {}}
"#;

fn record(i: u64, value: Val) -> Record {
    Record::new(Arc::from("in"), 0, i as i64, None, Val::Null, value)
}

/// One pass over every key in batches; returns the seconds taken and the changes logged.
fn pass(
    p: &Pipeline,
    st: &mut PartitionState,
    keys: u64,
    batch: u64,
    time: &mut i64,
) -> (f64, Vec<StateChange>) {
    let mut changes = Vec::with_capacity(keys as usize);
    let started = Instant::now();
    for b in 0..keys.div_ceil(batch) {
        let mut run = p.start(st, *time);
        for k in b * batch..((b + 1) * batch).min(keys) {
            let key = Val::Str(Arc::from(format!("key-{k:08}").as_str()));
            if let Err(e) = run.push(record(k, key)) {
                panic!("push: {e:?}");
            }
        }
        *time += 1_000;
        let (out, failures) = run.finish(&Arc::from("in"), 0, None);
        assert!(failures.is_empty());
        drop(out);
        changes.extend(st.take_changes());
    }
    (started.elapsed().as_secs_f64(), changes)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let keys: u64 = if bench { 1_000_000 } else { 20_000 };
    let batch = keys / 10;
    let job = parse_job(JOB, "bench").expect("bench job");
    let p = Pipeline::compile(&job.spec).expect("bench pipeline");

    let mut time = 0;
    let before = LIVE.load(Ordering::Relaxed);
    let mut st = p.new_state();
    let (create_s, changes) = pass(&p, &mut st, keys, batch, &mut time);
    // Measure the state alone, without the batch's change list.
    drop(changes);
    let state_bytes = LIVE.load(Ordering::Relaxed) - before;
    let (update_s, changes) = pass(&p, &mut st, keys, batch, &mut time);
    assert_eq!(changes.len() as u64, keys);

    let mut key = Vec::new();
    let mut value = Vec::new();
    let mut logged = 0usize;
    let started = Instant::now();
    for c in &changes {
        key.clear();
        value.clear();
        codec::encode(
            &Val::List(Arc::new(vec![
                Val::str("in"),
                Val::Str(c.step.clone()),
                c.key.clone(),
            ])),
            &mut key,
        );
        if let Some(v) = &c.value {
            codec::encode(v, &mut value);
        }
        logged += key.len() + value.len();
    }
    let encode_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let restored = p.restore(changes).expect("restore");
    let restore_s = started.elapsed().as_secs_f64();
    drop(restored);

    let k = keys as f64;
    println!("state benchmark: {keys} keys, one state step (running count), batches of {batch}");
    println!("  new keys:       {:>10.0} keys/s", k / create_s);
    println!("  updated keys:   {:>10.0} keys/s", k / update_s);
    println!(
        "  memory:         {:>10.1} bytes/key (live heap of the state, key strings included)",
        state_bytes as f64 / k
    );
    println!(
        "  changelog:      {:>10.1} bytes/key, encoded at {:.0} keys/s",
        logged as f64 / k,
        k / encode_s
    );
    println!("  restore:        {:>10.0} keys/s", k / restore_s);
    assert!(state_bytes > 0);
}
