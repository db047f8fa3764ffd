//! Windows over batch time for an aggregate (reduceByKeyAndWindow, countByWindow, ...).
//!
//! Batch time `t` is the end of the batch's data (the engine plans a batch at tick `t` and reads
//! what had arrived by then), so batch index `b = t / interval` holds data up to `t`, as in Spark.
//! A window of `L = length / interval` batches and slide `S = slide / interval` batches emits at
//! the end of batch `b` when `b % S == 0`, covering batches `b - L + 1 ..= b`: window ends are the
//! multiples of `slide`, whatever the worker's start time, so a replay emits the same windows.
//!
//! State is a ring of `L` per-batch parts per key (slot `b % L`). Invertible kinds (count, sum,
//! avg) also keep a running total per key: each batch adds the entering part and subtracts the
//! leaving one, and a key whose count reaches zero is dropped, so the work per batch follows the
//! batch, not the window. Min, max and reduce cannot subtract, so they fold the ring at emission.

use std::collections::HashMap;
use std::sync::Arc;

use super::aggregate::{total_order, Acc, AggKind};
use super::change::{StateChange, StepUpdate};
use crate::expr::{EvalError, Val};

// The spec's validation refuses a longer window at load, so the bound lives in the contract.
pub use weir_contract::limits::MAX_WINDOW_BATCHES;

/// A compiled `window` on an aggregate step.
#[derive(Debug)]
pub struct WindowOp {
    pub kind: AggKind,
    pub interval_ms: i64,
    /// Window length in batches.
    pub length: i64,
    /// Slide in batches.
    pub slide: i64,
}

impl WindowOp {
    fn invertible(&self) -> bool {
        matches!(
            self.kind,
            AggKind::Count | AggKind::Sum(_) | AggKind::Avg(_)
        )
    }
}

#[derive(Debug, Default)]
struct Bucket {
    /// Batch index whose part this slot holds; `None` when empty.
    batch: Option<i64>,
    keys: HashMap<Val, Acc>,
}

/// What the last batch changed, so that a replay of that batch can take it back.
#[derive(Debug, Default)]
struct Undo {
    evicted: Vec<(usize, Bucket)>,
    written: Option<usize>,
    totals: Vec<(Val, Option<Acc>)>,
}

/// One window step's state in one partition.
#[derive(Debug, Default)]
pub struct WindowState {
    ring: Vec<Bucket>,
    totals: HashMap<Val, Acc>,
    undo: Undo,
    /// Per-key state operations so far (part written or evicted, total updated, part read
    /// when folding): tests assert the incremental form does O(batch) of them per slide.
    pub ops: u64,
}

impl WindowState {
    pub fn new(length: i64) -> WindowState {
        let n = usize::try_from(length.clamp(1, MAX_WINDOW_BATCHES)).unwrap_or(1);
        WindowState {
            ring: (0..n).map(|_| Bucket::default()).collect(),
            ..WindowState::default()
        }
    }

    /// Keys in the running total (invertible kinds only).
    pub fn total_keys(&self) -> usize {
        self.totals.len()
    }

    /// Takes back the last batch (before it is applied again).
    pub(crate) fn rollback(&mut self) {
        let undo = std::mem::take(&mut self.undo);
        for (key, old) in undo.totals.into_iter().rev() {
            match old {
                Some(acc) => self.totals.insert(key, acc),
                None => self.totals.remove(&key),
            };
        }
        if let Some(slot) = undo.written {
            self.ring[slot] = Bucket::default();
        }
        for (slot, bucket) in undo.evicted {
            self.ring[slot] = bucket;
        }
    }

    fn set_total(&mut self, key: &Val, next: Option<Acc>) {
        let old = match next {
            Some(acc) => self.totals.insert(key.clone(), acc),
            None => self.totals.remove(key),
        };
        self.undo.totals.push((key.clone(), old));
        self.ops += 1;
    }

    /// Applies batch `time`'s parts (sorted by key) and returns the window's results when the
    /// window ends at this batch. Records every change of a part in `up.changes`.
    pub(crate) fn apply(
        &mut self,
        op: &WindowOp,
        time: i64,
        parts: Vec<(Val, Acc)>,
        up: &mut StepUpdate<'_>,
    ) -> Vec<(Val, Result<Val, EvalError>)> {
        self.undo = Undo::default();
        let b = time.div_euclid(op.interval_ms.max(1));
        let len = self.ring.len() as i64;
        let slot = b.rem_euclid(len) as usize;
        // Every slot whose batch left the window, not only this batch's slot: after a gap in
        // batch times (a restart) older slots would otherwise stay in the total. This batch's
        // slot is emptied whatever it holds, so that even a clock stepping back cannot leave a
        // part in the total that the ring no longer has.
        for s in 0..self.ring.len() {
            if self.ring[s]
                .batch
                .is_some_and(|x| x <= b - len || s == slot)
            {
                let bucket = std::mem::take(&mut self.ring[s]);
                let mut leaving: Vec<(&Val, &Acc)> = bucket.keys.iter().collect();
                leaving.sort_by(|x, y| total_order(x.0, y.0));
                for (key, part) in leaving {
                    self.ops += 1;
                    // A tombstone even when this batch writes the key to the same slot: the
                    // put comes after it, so the compacted changelog keeps the put.
                    up.changes.push(StateChange {
                        step: up.step.clone(),
                        key: slot_key(s, key),
                        value: None,
                    });
                    if op.invertible() {
                        if let Some(mut total) = self.totals.get(key).cloned() {
                            let empty = total.unmerge(part);
                            self.set_total(key, (!empty).then_some(total));
                        }
                    }
                }
                self.undo.evicted.push((s, bucket));
            }
        }
        let mut bucket = Bucket {
            batch: Some(b),
            keys: HashMap::with_capacity(parts.len()),
        };
        for (key, part) in parts {
            self.ops += 1;
            up.changes.push(StateChange {
                step: up.step.clone(),
                key: slot_key(slot, &key),
                value: Some(Val::Map(Arc::new(vec![
                    (Arc::from("batch"), Val::Int(b)),
                    (Arc::from("acc"), part.to_val()),
                ]))),
            });
            if op.invertible() {
                let next = match self.totals.get(&key) {
                    Some(total) => {
                        let mut t = total.clone();
                        // Invertible kinds cannot fail to merge: no user code runs.
                        let _ = t.merge(&op.kind, &key, &part);
                        t
                    }
                    None => part.clone(),
                };
                self.set_total(&key, Some(next));
            }
            bucket.keys.insert(key, part);
        }
        self.ring[slot] = bucket;
        self.undo.written = Some(slot);

        if b.rem_euclid(op.slide.max(1)) != 0 {
            return Vec::new();
        }
        if op.invertible() {
            let mut out: Vec<(Val, Result<Val, EvalError>)> = self
                .totals
                .iter()
                .map(|(k, acc)| (k.clone(), Ok(acc.result())))
                .collect();
            out.sort_by(|x, y| total_order(&x.0, &y.0));
            return out;
        }
        self.fold(op, b)
    }

    /// Every part the window holds, as the changes that would rebuild it (a snapshot).
    pub(crate) fn dump(&self, step: &Arc<str>, out: &mut Vec<StateChange>) {
        for (slot, bucket) in self.ring.iter().enumerate() {
            let Some(b) = bucket.batch else { continue };
            for (key, part) in &bucket.keys {
                out.push(StateChange {
                    step: step.clone(),
                    key: slot_key(slot, key),
                    value: Some(Val::Map(Arc::new(vec![
                        (Arc::from("batch"), Val::Int(b)),
                        (Arc::from("acc"), part.to_val()),
                    ]))),
                });
            }
        }
    }

    /// Puts back one part read from the changelog. A part of a newer batch replaces what the
    /// slot held, as the batch that wrote it did.
    pub(crate) fn restore_part(
        &mut self,
        slot: usize,
        key: &Val,
        part: Option<(i64, Acc)>,
    ) -> Result<(), &'static str> {
        let bucket = self
            .ring
            .get_mut(slot)
            .ok_or("the window was longer when this state was written")?;
        match part {
            Some((batch, acc)) => {
                if bucket.batch != Some(batch) {
                    *bucket = Bucket {
                        batch: Some(batch),
                        keys: HashMap::new(),
                    };
                }
                bucket.keys.insert(key.clone(), acc);
            }
            None => {
                bucket.keys.remove(key);
            }
        }
        Ok(())
    }

    /// Recomputes the running totals from the restored parts.
    pub(crate) fn rebuild_totals(&mut self, op: &WindowOp) {
        self.totals.clear();
        if !op.invertible() {
            return;
        }
        for bucket in &self.ring {
            for (key, part) in &bucket.keys {
                match self.totals.get_mut(key) {
                    // Invertible kinds run no user code, so merging cannot fail.
                    Some(total) => {
                        let _ = total.merge(&op.kind, key, part);
                    }
                    None => {
                        self.totals.insert(key.clone(), part.clone());
                    }
                }
            }
        }
    }

    /// Recomputes the window from its parts, oldest batch first (a reduce need not commute).
    fn fold(&mut self, op: &WindowOp, b: i64) -> Vec<(Val, Result<Val, EvalError>)> {
        let mut order: Vec<&Bucket> = self
            .ring
            .iter()
            .filter(|x| x.batch.is_some_and(|x| x <= b))
            .collect();
        order.sort_by_key(|x| x.batch);
        let mut acc: HashMap<&Val, Result<Acc, EvalError>> = HashMap::new();
        let mut reads = 0u64;
        for bucket in order {
            for (key, part) in &bucket.keys {
                reads += 1;
                match acc.get_mut(key) {
                    None => {
                        acc.insert(key, Ok(part.clone()));
                    }
                    Some(Ok(a)) => {
                        if let Err(e) = a.merge(&op.kind, key, part) {
                            acc.insert(key, Err(e));
                        }
                    }
                    Some(Err(_)) => {}
                }
            }
        }
        let mut out: Vec<(Val, Result<Val, EvalError>)> = acc
            .into_iter()
            .map(|(k, a)| (k.clone(), a.map(|a| a.result())))
            .collect();
        self.ops += reads;
        out.sort_by(|x, y| total_order(&x.0, &y.0));
        out
    }
}

/// Changelog key of a part: its ring slot and the record key. A slot is reused every window, so
/// a compacted changelog keeps one entry per live part.
fn slot_key(slot: usize, key: &Val) -> Val {
    Val::List(Arc::new(vec![Val::Int(slot as i64), key.clone()]))
}
