//! An interval join of two streams in event time (Flink's interval join): per key, a left
//! record at time t meets every right record with a time from t - before to t + after.
//!
//! Both sides are held per key until the stage's watermark passes the last time a partner of
//! theirs could have: a left record's t + after, a right record's t + before. A record at or
//! behind its watermark is late (dropped or dead-lettered): an on-time record therefore finds
//! every partner it has still held, and one let go of can no longer meet an on-time record,
//! so the pairs written are the same however the input is batched or replayed. A left (or
//! outer) join writes a record that met none when it is let go of.
//!
//! State: per key the held records, logged under `[key]` after every batch that changed it;
//! an undo log takes a replayed batch back.

use std::collections::HashMap;
use std::sync::Arc;

use super::aggregate::total_order;
use super::change::{StateChange, StepUpdate};
use crate::expr::{Program, Val};
use crate::spec::{IntervalJoinKind, LatePolicy};

/// A compiled interval join.
pub struct IntervalJoinOp {
    /// True for the left side's records.
    pub left: Program,
    pub before: i64,
    pub after: i64,
    pub kind: IntervalJoinKind,
    pub late: LatePolicy,
}

/// One held record.
#[derive(Clone, Debug, PartialEq)]
struct Held {
    left: bool,
    time: i64,
    value: Val,
    /// Whether it met a partner (a left or outer join writes it alone otherwise).
    matched: bool,
}

/// A record of a batch for the join: its side, its event time and its value.
pub struct Arrival {
    pub left: bool,
    pub time: i64,
    pub value: Val,
}

/// A record as the batch holds it until its end: `[left, time, value]`.
pub(super) fn arrival_val(left: bool, time: i64, value: Val) -> Val {
    Val::List(Arc::new(vec![Val::Bool(left), Val::Int(time), value]))
}

/// The batch's records per key, back from [`arrival_val`].
pub(super) fn arrivals(values: HashMap<Val, Vec<Val>>) -> HashMap<Val, Vec<Arrival>> {
    values
        .into_iter()
        .map(|(k, vs)| {
            let a = vs
                .into_iter()
                .filter_map(|v| match v {
                    Val::List(parts) => match parts.as_slice() {
                        [Val::Bool(left), Val::Int(time), value] => Some(Arrival {
                            left: *left,
                            time: *time,
                            value: value.clone(),
                        }),
                        _ => None,
                    },
                    _ => None,
                })
                .collect();
            (k, a)
        })
        .collect()
}

#[derive(Debug, Default)]
pub struct IntervalJoinState {
    held: HashMap<Val, Vec<Held>>,
    /// The keys the last batch changed, as they were before it.
    undo: HashMap<Val, Option<Vec<Held>>>,
}

impl IntervalJoinOp {
    /// Whether `left`'s partner may be at `right`'s time.
    fn meets(&self, left: i64, right: i64) -> bool {
        right >= left.saturating_sub(self.before) && right <= left.saturating_add(self.after)
    }

    /// The watermark at which a held record can meet no on-time record any more.
    fn expiry(&self, h: &Held) -> i64 {
        h.time
            .saturating_add(if h.left { self.after } else { self.before })
    }
}

impl IntervalJoinState {
    /// Starts a batch: the last batch's undo log is let go of.
    pub fn begin(&mut self) {
        self.undo.clear();
    }

    /// Takes the last batch back (it is being read again).
    pub fn rollback(&mut self) {
        for (k, before) in self.undo.drain() {
            match before {
                Some(v) => {
                    self.held.insert(k, v);
                }
                None => {
                    self.held.remove(&k);
                }
            }
        }
    }

    fn touch(&mut self, key: &Val) {
        if !self.undo.contains_key(key) {
            self.undo.insert(key.clone(), self.held.get(key).cloned());
        }
    }

    /// Applies a batch: each key's arrivals, in the order read, meet what is held and are
    /// held; then what the watermark has passed is let go of. Returns the joined records
    /// (key, `{"left", "right"}`), in key order.
    pub(crate) fn end_batch(
        &mut self,
        op: &IntervalJoinOp,
        arrivals: HashMap<Val, Vec<Arrival>>,
        watermark: Option<i64>,
        up: &mut StepUpdate<'_>,
    ) -> Vec<(Val, Val)> {
        let mut out: Vec<(Val, Val)> = Vec::new();
        let mut changed: Vec<Val> = Vec::new();
        let mut keys: Vec<(Val, Vec<Arrival>)> = arrivals.into_iter().collect();
        keys.sort_by(|a, b| total_order(&a.0, &b.0));
        for (key, records) in keys {
            self.touch(&key);
            let held = self.held.entry(key.clone()).or_default();
            for a in records {
                let mut matched = false;
                for h in held.iter_mut().filter(|h| h.left != a.left) {
                    let (l, r) = if a.left {
                        (a.time, h.time)
                    } else {
                        (h.time, a.time)
                    };
                    if op.meets(l, r) {
                        matched = true;
                        h.matched = true;
                        let pair = if a.left {
                            pair(a.value.clone(), h.value.clone())
                        } else {
                            pair(h.value.clone(), a.value.clone())
                        };
                        out.push((key.clone(), pair));
                    }
                }
                held.push(Held {
                    left: a.left,
                    time: a.time,
                    value: a.value,
                    matched,
                });
            }
            changed.push(key);
        }
        if let Some(wm) = watermark {
            let mut expired: Vec<Val> = self
                .held
                .iter()
                .filter(|(_, hs)| hs.iter().any(|h| op.expiry(h) <= wm))
                .map(|(k, _)| k.clone())
                .collect();
            expired.sort_by(total_order);
            for key in expired {
                self.touch(&key);
                let Some(hs) = self.held.get_mut(&key) else {
                    continue;
                };
                let mut kept = Vec::with_capacity(hs.len());
                for h in hs.drain(..) {
                    if op.expiry(&h) > wm {
                        kept.push(h);
                        continue;
                    }
                    let alone = match (h.left, op.kind) {
                        (_, IntervalJoinKind::Inner) => false,
                        (true, _) => true,
                        (false, IntervalJoinKind::Outer) => true,
                        (false, IntervalJoinKind::Left) => false,
                    };
                    if alone && !h.matched {
                        let value = if h.left {
                            pair(h.value, Val::Null)
                        } else {
                            pair(Val::Null, h.value)
                        };
                        out.push((key.clone(), value));
                    }
                }
                *hs = kept;
                changed.push(key);
            }
        }
        changed.sort_by(total_order);
        changed.dedup();
        for key in changed {
            let value = match self.held.get(&key) {
                Some(hs) if !hs.is_empty() => Some(held_val(hs)),
                _ => {
                    self.held.remove(&key);
                    None
                }
            };
            up.changes.push(StateChange {
                step: up.step.clone(),
                key: state_key(&key),
                value,
            });
        }
        out
    }

    /// The whole state as changes, for a snapshot.
    pub(crate) fn dump(&self, step: &Arc<str>, out: &mut Vec<StateChange>) {
        for (key, hs) in &self.held {
            out.push(StateChange {
                step: step.clone(),
                key: state_key(key),
                value: Some(held_val(hs)),
            });
        }
    }

    /// Puts back one key's held records read from the changelog.
    pub(crate) fn restore(&mut self, key: &Val, value: Option<&Val>) -> Result<(), &'static str> {
        let Val::List(k) = key else {
            return Err("an interval join key is not [key]");
        };
        let [key] = k.as_slice() else {
            return Err("an interval join key is not [key]");
        };
        let Some(value) = value else {
            self.held.remove(key);
            return Ok(());
        };
        let Val::List(items) = value else {
            return Err("an interval join's records are not a list");
        };
        let mut hs = Vec::with_capacity(items.len());
        for item in items.iter() {
            let Val::List(parts) = item else {
                return Err("a held record is not [left, time, matched, value]");
            };
            match parts.as_slice() {
                [Val::Bool(left), Val::Int(time), Val::Bool(matched), value] => hs.push(Held {
                    left: *left,
                    time: *time,
                    value: value.clone(),
                    matched: *matched,
                }),
                _ => return Err("a held record is not [left, time, matched, value]"),
            }
        }
        self.held.insert(key.clone(), hs);
        Ok(())
    }

    /// Records held, over every key.
    pub fn len(&self) -> usize {
        self.held.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key a key's held records are logged under: in a list, so that no key can be the
/// clock's.
fn state_key(key: &Val) -> Val {
    Val::List(Arc::new(vec![key.clone()]))
}

fn held_val(hs: &[Held]) -> Val {
    Val::List(Arc::new(
        hs.iter()
            .map(|h| {
                Val::List(Arc::new(vec![
                    Val::Bool(h.left),
                    Val::Int(h.time),
                    Val::Bool(h.matched),
                    h.value.clone(),
                ]))
            })
            .collect(),
    ))
}

fn pair(left: Val, right: Val) -> Val {
    Val::Map(Arc::new(vec![
        (Arc::from("left"), left),
        (Arc::from("right"), right),
    ]))
}
