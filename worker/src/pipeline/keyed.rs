//! Per-key state updated every batch (mapWithState, updateStateByKey).
//!
//! For each key with records in a batch, in key order: when the key has state and `remove`
//! holds for it, the key ends: its state is deleted and the batch's values for it are not added
//! to any state (seed 004's mapping function: a word seen more than N times is dropped the next
//! time it shows up); the step emits the key's final record. Otherwise `update` computes the new
//! state from `key`, `values` (the batch's values in record order) and `state` (the previous
//! one, or `initial`, or null), and the step emits (key, new state). A key not seen for
//! `timeout` of batch time ends in the first batch at or after its expiry (so at most one batch
//! late, every batch, not on checkpoints), and the step emits its final record too.
//!
//! A final record is (key, last state), unless `update` names `timingOut` or `removing`: then
//! it is what `update` returns with `timingOut` (no values, as Spark's `isTimingOut`) or
//! `removing` (the batch's values) set to true, so a job can mark its final records, e.g.
//! `timingOut || removing ? {'final': state} : state + size(values)`. Both are false in every
//! ordinary update. With `snapshots`, the step emits the whole state every batch instead of the
//! updated keys, plus the final records of timeouts; a removed key just leaves the snapshot.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::aggregate::total_order;
use super::change::{StateChange, StepUpdate};
use crate::expr::{EvalError, Program, Val, Var, Vars};

/// A compiled `state` step.
#[derive(Debug)]
pub struct StateOp {
    pub initial: Option<Program>,
    pub update: Program,
    pub remove: Option<Program>,
    pub timeout_ms: Option<i64>,
    pub snapshots: bool,
}

impl StateOp {
    /// Whether `update` computes final records (it names `timingOut` or `removing`).
    fn updates_finals(&self) -> bool {
        self.update.uses(Var::TimingOut) || self.update.uses(Var::Removing)
    }

    /// A key's final record: what `update` says with the flag set, or its last state.
    fn final_record(
        &self,
        key: &Val,
        values: &Val,
        last: &Val,
        timing_out: bool,
    ) -> Result<Val, EvalError> {
        if !self.updates_finals() {
            return Ok(last.clone());
        }
        let vars = StateVars {
            key,
            values,
            state: last,
            timing_out,
            removing: !timing_out,
        };
        Ok(self.update.eval(&vars)?.into_owned())
    }
}

/// What a key with records in a batch becomes.
enum Next {
    Update(Entry),
    /// `remove` held: the key ends with this final record.
    Removed(Val),
}

/// A key's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub state: Val,
    /// Batch time of the last batch with records for the key.
    pub seen: i64,
}

impl Entry {
    fn to_val(&self) -> Val {
        Val::Map(Arc::new(vec![
            (Arc::from("state"), self.state.clone()),
            (Arc::from("seen"), Val::Int(self.seen)),
        ]))
    }
}

#[derive(Debug, Default)]
struct Undo {
    entries: Vec<(Val, Option<Entry>)>,
    expired: Vec<(i64, Vec<Val>)>,
    indexed: Option<i64>,
}

/// One state step's state in one partition.
#[derive(Debug, Default)]
pub struct KeyedState {
    entries: HashMap<Val, Entry>,
    /// Keys by a batch time at or before their last one, for timeouts without a scan of every
    /// key: a key is filed when it is created, and re-filed under its last batch when the
    /// time it is filed under comes due while it is still live.
    by_seen: BTreeMap<i64, Vec<Val>>,
    undo: Undo,
}

struct StateVars<'a> {
    key: &'a Val,
    values: &'a Val,
    state: &'a Val,
    timing_out: bool,
    removing: bool,
}

impl Vars for StateVars<'_> {
    fn var(&self, v: Var) -> Option<Cow<'_, Val>> {
        match v {
            Var::Key => Some(Cow::Borrowed(self.key)),
            Var::Values => Some(Cow::Borrowed(self.values)),
            Var::State => Some(Cow::Borrowed(self.state)),
            Var::TimingOut => Some(Cow::Owned(Val::Bool(self.timing_out))),
            Var::Removing => Some(Cow::Owned(Val::Bool(self.removing))),
            _ => None,
        }
    }
}

/// What a state step produced in a batch.
#[derive(Debug, Default)]
pub(crate) struct StateOutput {
    /// (key, state), sorted by key.
    pub records: Vec<(Val, Val)>,
    /// (key, the key's values, error) of keys whose expressions failed; their state is unchanged.
    pub failures: Vec<(Val, Val, EvalError)>,
}

impl KeyedState {
    pub fn get(&self, key: &Val) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every key's state, as the changes that would rebuild it (a snapshot).
    pub(crate) fn dump(&self, step: &Arc<str>, out: &mut Vec<StateChange>) {
        for (key, e) in &self.entries {
            out.push(StateChange {
                step: step.clone(),
                key: key.clone(),
                value: Some(e.to_val()),
            });
        }
    }

    /// Puts back one key's state read from the changelog.
    pub(crate) fn restore_entry(&mut self, key: &Val, entry: Option<Entry>) {
        match entry {
            Some(e) => {
                let seen = e.seen;
                if self.entries.insert(key.clone(), e).is_none() {
                    self.by_seen.entry(seen).or_default().push(key.clone());
                }
            }
            None => {
                self.entries.remove(key);
            }
        }
    }

    /// Entries in the timeout index: about one per key, whatever the update rate.
    pub fn indexed(&self) -> usize {
        self.by_seen.values().map(Vec::len).sum()
    }

    pub(crate) fn rollback(&mut self) {
        let undo = std::mem::take(&mut self.undo);
        // Bucket `t` got this batch's new keys and keys re-filed under this batch; the keys
        // re-filed elsewhere stay as extra entries, which expiry skips or re-files again.
        if let Some(t) = undo.indexed {
            self.by_seen.remove(&t);
        }
        for (t, keys) in undo.expired {
            self.by_seen.insert(t, keys);
        }
        for (key, old) in undo.entries.into_iter().rev() {
            match old {
                Some(e) => self.entries.insert(key, e),
                None => self.entries.remove(&key),
            };
        }
    }

    fn set(&mut self, up: &mut StepUpdate<'_>, key: &Val, next: Option<Entry>) {
        up.changes.push(StateChange {
            step: up.step.clone(),
            key: key.clone(),
            value: next.as_ref().map(Entry::to_val),
        });
        let old = match next {
            Some(e) => self.entries.insert(key.clone(), e),
            None => self.entries.remove(key),
        };
        self.undo.entries.push((key.clone(), old));
    }

    /// Applies batch `time`: `batch` holds each key's values in record order.
    pub(crate) fn apply(
        &mut self,
        op: &StateOp,
        time: i64,
        batch: HashMap<Val, Vec<Val>>,
        up: &mut StepUpdate<'_>,
    ) -> StateOutput {
        self.undo = Undo::default();
        let mut out = StateOutput::default();
        let mut keys: Vec<(Val, Vec<Val>)> = batch.into_iter().collect();
        keys.sort_by(|a, b| total_order(&a.0, &b.0));
        let mut seen_now = Vec::new();
        for (key, values) in keys {
            let values = Val::List(Arc::new(values));
            match self.step_key(op, time, &key, &values) {
                Ok(Next::Update(entry)) => {
                    if !op.snapshots {
                        out.records.push((key.clone(), entry.state.clone()));
                    }
                    // A key already indexed is re-filed when its old slot comes due, so each
                    // key is in the index about once, however often it is updated.
                    if op.timeout_ms.is_some() && !self.entries.contains_key(&key) {
                        seen_now.push(key.clone());
                    }
                    self.set(up, &key, Some(entry));
                }
                Ok(Next::Removed(last)) => {
                    if !op.snapshots {
                        out.records.push((key.clone(), last));
                    }
                    self.set(up, &key, None);
                }
                Err(e) => out.failures.push((key, values, e)),
            }
        }
        if !seen_now.is_empty() {
            self.by_seen.entry(time).or_default().extend(seen_now);
            self.undo.indexed = Some(time);
        }
        if let Some(timeout) = op.timeout_ms {
            self.expire(op, time, timeout, up, &mut out);
        }
        if op.snapshots {
            out.records.extend(
                self.entries
                    .iter()
                    .map(|(k, e)| (k.clone(), e.state.clone())),
            );
        }
        out.records.sort_by(|a, b| total_order(&a.0, &b.0));
        out
    }

    /// The key's next state, or its final record when `remove` ends it.
    fn step_key(
        &self,
        op: &StateOp,
        time: i64,
        key: &Val,
        values: &Val,
    ) -> Result<Next, EvalError> {
        let existing = self.entries.get(key);
        if let (Some(e), Some(remove)) = (existing, &op.remove) {
            let vars = StateVars {
                key,
                values: &Val::Null,
                state: &e.state,
                timing_out: false,
                removing: false,
            };
            if remove.eval_bool(&vars)? {
                return op
                    .final_record(key, values, &e.state, false)
                    .map(Next::Removed);
            }
        }
        let initial;
        let prev = match (existing, &op.initial) {
            (Some(e), _) => &e.state,
            (None, Some(p)) => {
                let vars = StateVars {
                    key,
                    values: &Val::Null,
                    state: &Val::Null,
                    timing_out: false,
                    removing: false,
                };
                initial = p.eval(&vars)?.into_owned();
                &initial
            }
            (None, None) => &Val::Null,
        };
        let vars = StateVars {
            key,
            values,
            state: prev,
            timing_out: false,
            removing: false,
        };
        let state = op.update.eval(&vars)?.into_owned();
        Ok(Next::Update(Entry { state, seen: time }))
    }

    /// Removes keys last seen at or before `time - timeout`, emitting their final records. A
    /// key whose final record fails is removed all the same (its failure goes to the dead
    /// letters): a timeout that could be refused would keep the key for ever.
    fn expire(
        &mut self,
        op: &StateOp,
        time: i64,
        timeout: i64,
        up: &mut StepUpdate<'_>,
        out: &mut StateOutput,
    ) {
        let cutoff = time.saturating_sub(timeout);
        let due: Vec<i64> = self.by_seen.range(..=cutoff).map(|(t, _)| *t).collect();
        let mut expired = Vec::new();
        for t in due {
            let Some(keys) = self.by_seen.remove(&t) else {
                continue;
            };
            for key in &keys {
                match self.entries.get(key).map(|e| e.seen) {
                    Some(seen) if seen <= cutoff => expired.push(key.clone()),
                    // Seen since it was filed here: file it under its last batch, once.
                    Some(seen) => self.by_seen.entry(seen).or_default().push(key.clone()),
                    None => {}
                }
            }
            self.undo.expired.push((t, keys));
        }
        // Key order, not index order: the index differs between a live and a restored state.
        expired.sort_by(total_order);
        expired.dedup();
        let no_values = Val::List(Arc::new(Vec::new()));
        for key in expired {
            if let Some(e) = self.entries.get(&key) {
                match op.final_record(&key, &no_values, &e.state, true) {
                    Ok(last) => out.records.push((key.clone(), last)),
                    Err(err) => out.failures.push((key.clone(), no_values.clone(), err)),
                }
                self.set(up, &key, None);
            }
        }
    }
}
