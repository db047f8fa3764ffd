//! Per-key aggregation of one batch of one partition (reduceByKey, count, sum, min, max, avg).

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::expr::{EvalError, Program, Var, Vars};
use crate::spec::AggregateSpec;
use crate::value::Val;

/// What an aggregate computes.
#[derive(Debug)]
pub enum AggKind {
    Count,
    Sum(Program),
    Min(Program),
    Max(Program),
    Avg(Program),
    Reduce(Program),
    /// groupByKey: every value, in record order.
    Collect(Program),
}

impl AggKind {
    /// The aggregation's name as the spec writes it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::Sum(_) => "sum",
            AggKind::Min(_) => "min",
            AggKind::Max(_) => "max",
            AggKind::Avg(_) => "avg",
            AggKind::Reduce(_) => "reduce",
            AggKind::Collect(_) => "collect",
        }
    }

    pub(crate) fn compile(
        a: &AggregateSpec,
        vars: &[Var],
    ) -> Result<AggKind, crate::expr::ExprError> {
        let c = |e: &str| Program::compile(e, vars);
        Ok(match a {
            AggregateSpec { sum: Some(e), .. } => AggKind::Sum(c(e)?),
            AggregateSpec { min: Some(e), .. } => AggKind::Min(c(e)?),
            AggregateSpec { max: Some(e), .. } => AggKind::Max(c(e)?),
            AggregateSpec { avg: Some(e), .. } => AggKind::Avg(c(e)?),
            AggregateSpec {
                reduce: Some(e), ..
            } => AggKind::Reduce(Program::compile(e, &[Var::A, Var::B, Var::Key])?),
            AggregateSpec {
                collect: Some(e), ..
            } => AggKind::Collect(c(e)?),
            _ => AggKind::Count,
        })
    }

    /// The value a record contributes, checked so that accumulating it cannot fail.
    pub(crate) fn input(&self, rec: &crate::record::Record) -> Result<Val, EvalError> {
        self.input_of(rec, rec.output())
    }

    /// [`AggKind::input`] of what `vars` names, whose result (what a reduce folds) is `output`.
    pub(crate) fn input_of(&self, vars: &dyn Vars, output: &Val) -> Result<Val, EvalError> {
        match self {
            AggKind::Count => Ok(Val::Null),
            AggKind::Sum(p) | AggKind::Avg(p) => {
                let v = p.eval(vars)?.into_owned();
                match v {
                    Val::Int(_) | Val::UInt(_) | Val::Float(_) => Ok(v),
                    other => Err(EvalError(format!(
                        "sum and avg need numbers, got {}",
                        other.type_name()
                    ))),
                }
            }
            AggKind::Min(p) | AggKind::Max(p) | AggKind::Collect(p) => {
                Ok(p.eval(vars)?.into_owned())
            }
            AggKind::Reduce(_) => Ok(output.clone()),
        }
    }
}

/// One key's running value. Invertible kinds carry their record count, so that a window can
/// subtract a leaving batch and drop a key whose count reaches zero.
#[derive(Debug, Clone, PartialEq)]
pub enum Acc {
    Count(i64),
    Sum { sum: Val, n: i64 },
    Value(Val),
    Avg { sum: f64, n: u64 },
}

impl Acc {
    /// The result a sink sees.
    pub fn result(&self) -> Val {
        match self {
            Acc::Count(n) => Val::Int(*n),
            Acc::Sum { sum, .. } => sum.clone(),
            Acc::Value(v) => v.clone(),
            Acc::Avg { sum, n } => Val::Float(if *n == 0 { 0.0 } else { sum / *n as f64 }),
        }
    }

    /// The accumulator as data, for the state changelog: plain values, never code.
    pub fn to_val(&self) -> Val {
        let obj = |sum: Val, n: Val| {
            Val::Map(std::sync::Arc::new(vec![
                (std::sync::Arc::from("sum"), sum),
                (std::sync::Arc::from("n"), n),
            ]))
        };
        match self {
            Acc::Count(n) => Val::Int(*n),
            Acc::Sum { sum, n } => obj(sum.clone(), Val::Int(*n)),
            Acc::Value(v) => v.clone(),
            Acc::Avg { sum, n } => obj(Val::Float(*sum), Val::UInt(*n)),
        }
    }

    /// Folds `other` (a later part of the same key) into `self`.
    ///
    /// # Errors
    /// Only a user's reduce expression can fail; `self` is then unchanged.
    pub fn merge(&mut self, kind: &AggKind, key: &Val, other: &Acc) -> Result<(), EvalError> {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => *a += b,
            (Acc::Sum { sum, n }, Acc::Sum { sum: s, n: m }) => {
                *sum = add_numbers(sum, s);
                *n += m;
            }
            (Acc::Avg { sum, n }, Acc::Avg { sum: s, n: m }) => {
                *sum += s;
                *n += m;
            }
            (Acc::Value(cur), Acc::Value(b)) => {
                let next = match kind {
                    AggKind::Min(_) => std::cmp::min_by(cur.clone(), b.clone(), total_order),
                    AggKind::Max(_) => std::cmp::max_by(cur.clone(), b.clone(), total_order),
                    AggKind::Reduce(p) => p.eval(&ReduceVars { a: cur, b, key })?.into_owned(),
                    AggKind::Collect(_) => match (&*cur, b) {
                        (Val::List(x), Val::List(y)) => Val::List(std::sync::Arc::new(
                            x.iter().chain(y.iter()).cloned().collect(),
                        )),
                        _ => return Ok(()),
                    },
                    _ => return Ok(()),
                };
                *cur = next;
            }
            // Parts of one step always have one shape; a mismatch cannot come from records.
            (me, other) => *me = other.clone(),
        }
        Ok(())
    }

    /// Takes an invertible part back out. Returns whether no record is left, so the caller can
    /// drop the key.
    pub fn unmerge(&mut self, other: &Acc) -> bool {
        match (self, other) {
            (Acc::Count(a), Acc::Count(b)) => {
                *a -= b;
                *a <= 0
            }
            (Acc::Sum { sum, n }, Acc::Sum { sum: s, n: m }) => {
                *sum = sub_numbers(sum, s);
                *n -= m;
                *n <= 0
            }
            (Acc::Avg { sum, n }, Acc::Avg { sum: s, n: m }) => {
                *sum -= s;
                *n = n.saturating_sub(*m);
                *n == 0
            }
            _ => false,
        }
    }
}

/// Accumulators of one aggregate step for one partition's batch.
#[derive(Debug, Default)]
pub struct Accumulators {
    keys: HashMap<Val, Part>,
}

/// One key's accumulator, and how many input records it stands for: a combined shuffle
/// carries the count with each partial, so the next stage can say what its partials mean.
#[derive(Debug)]
struct Part {
    acc: Acc,
    records: u64,
}

struct ReduceVars<'a> {
    a: &'a Val,
    b: &'a Val,
    key: &'a Val,
}

impl Vars for ReduceVars<'_> {
    fn var(&self, v: Var) -> Option<std::borrow::Cow<'_, Val>> {
        match v {
            Var::A => Some(std::borrow::Cow::Borrowed(self.a)),
            Var::B => Some(std::borrow::Cow::Borrowed(self.b)),
            Var::Key => Some(std::borrow::Cow::Borrowed(self.key)),
            _ => None,
        }
    }
}

impl Accumulators {
    /// Adds a checked input. Only a user's reduce expression can fail here; the key then keeps
    /// its previous value.
    pub fn add(&mut self, kind: &AggKind, key: Val, input: Val) -> Result<(), EvalError> {
        use std::collections::hash_map::Entry;
        let mut e = match self.keys.entry(key) {
            Entry::Vacant(e) => {
                let acc = match kind {
                    AggKind::Count => Acc::Count(1),
                    AggKind::Sum(_) => Acc::Sum { sum: input, n: 1 },
                    AggKind::Avg(_) => Acc::Avg {
                        sum: crate::value::num(&input).map_or(0.0, |n| n.as_f64()),
                        n: 1,
                    },
                    AggKind::Collect(_) => Acc::Value(Val::List(std::sync::Arc::new(vec![input]))),
                    AggKind::Min(_) | AggKind::Max(_) | AggKind::Reduce(_) => Acc::Value(input),
                };
                e.insert(Part { acc, records: 1 });
                return Ok(());
            }
            Entry::Occupied(e) => e,
        };
        if let AggKind::Reduce(p) = kind {
            let key = e.key().clone();
            let part = e.get_mut();
            if let Acc::Value(cur) = &mut part.acc {
                *cur = p
                    .eval(&ReduceVars {
                        a: cur,
                        b: &input,
                        key: &key,
                    })?
                    .into_owned();
            }
            part.records += 1;
            return Ok(());
        }
        match (kind, &mut e.get_mut().acc) {
            (AggKind::Count, Acc::Count(n)) => *n += 1,
            (AggKind::Sum(_), Acc::Sum { sum, n }) => {
                *sum = add_numbers(sum, &input);
                *n += 1;
            }
            (AggKind::Avg(_), Acc::Avg { sum, n }) => {
                *sum += crate::value::num(&input).map_or(0.0, |n| n.as_f64());
                *n += 1;
            }
            (AggKind::Collect(_), Acc::Value(Val::List(items))) => {
                // The list is this key's alone until the batch ends: no copy.
                std::sync::Arc::make_mut(items).push(input);
            }
            // As std's min_by and max_by: the earlier value wins a tie for min, the later for max.
            (AggKind::Min(_), Acc::Value(cur)) => {
                if total_order(&input, cur).is_lt() {
                    *cur = input;
                }
            }
            (AggKind::Max(_), Acc::Value(cur)) => {
                if !total_order(&input, cur).is_lt() {
                    *cur = input;
                }
            }
            // Parts of one step always have one shape; a mismatch cannot come from records.
            _ => return Ok(()),
        }
        e.get_mut().records += 1;
        Ok(())
    }

    /// Merges a partial accumulator of the same aggregation, standing for `records` input
    /// records (a combined shuffle's). Only a user's reduce expression can fail here; the key
    /// then keeps its previous value.
    pub fn merge_part(
        &mut self,
        kind: &AggKind,
        key: Val,
        acc: Acc,
        records: u64,
    ) -> Result<(), EvalError> {
        use std::collections::hash_map::Entry;
        match self.keys.entry(key) {
            Entry::Vacant(e) => {
                e.insert(Part { acc, records });
            }
            Entry::Occupied(mut e) => {
                let key = e.key().clone();
                let part = e.get_mut();
                part.acc.merge(kind, &key, &acc)?;
                part.records += records;
            }
        }
        Ok(())
    }

    /// The batch's results, ordered by key so that a replayed batch writes the same output.
    pub fn drain_sorted(&mut self) -> Vec<(Val, Val)> {
        self.drain_parts()
            .into_iter()
            .map(|(k, acc)| {
                let v = match acc {
                    Acc::Value(v) | Acc::Sum { sum: v, .. } => v,
                    other => other.result(),
                };
                (k, v)
            })
            .collect()
    }

    /// The batch's accumulators, ordered by key: a window folds them in a fixed order, so
    /// floating-point totals are the same when a batch is replayed.
    pub fn drain_parts(&mut self) -> Vec<(Val, Acc)> {
        self.drain_counted()
            .into_iter()
            .map(|(k, acc, _)| (k, acc))
            .collect()
    }

    /// The batch's accumulators with the input records each stands for, ordered by key.
    pub fn drain_counted(&mut self) -> Vec<(Val, Acc, u64)> {
        let mut out: Vec<(Val, Acc, u64)> = self
            .keys
            .drain()
            .map(|(k, p)| (k, p.acc, p.records))
            .collect();
        out.sort_by(|a, b| total_order(&a.0, &b.0));
        out
    }
}

/// Sums that stay integers while they fit, and turn into doubles when they do not.
fn add_numbers(a: &Val, b: &Val) -> Val {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => x
            .checked_add(*y)
            .map_or(Val::Float(*x as f64 + *y as f64), Val::Int),
        (Val::UInt(x), Val::UInt(y)) => x
            .checked_add(*y)
            .map_or(Val::Float(*x as f64 + *y as f64), Val::UInt),
        _ => {
            let f = |v: &Val| crate::value::num(v).map_or(0.0, |n| n.as_f64());
            Val::Float(f(a) + f(b))
        }
    }
}

/// The inverse of [`add_numbers`]: exact while the operands are integers.
fn sub_numbers(a: &Val, b: &Val) -> Val {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => x
            .checked_sub(*y)
            .map_or(Val::Float(*x as f64 - *y as f64), Val::Int),
        (Val::UInt(x), Val::UInt(y)) => x.checked_sub(*y).map_or_else(
            || Val::Int(-((*y - *x).min(i64::MAX as u64) as i64)),
            Val::UInt,
        ),
        _ => {
            let f = |v: &Val| crate::value::num(v).map_or(0.0, |n| n.as_f64());
            Val::Float(f(a) - f(b))
        }
    }
}

/// A total order over values: by type (null, bool, number, string, bytes, list, map), then
/// value. Gives min/max and output order a meaning for any mix of types.
pub fn total_order(a: &Val, b: &Val) -> Ordering {
    fn rank(v: &Val) -> u8 {
        match v {
            Val::Null => 0,
            Val::Bool(_) => 1,
            Val::Int(_) | Val::UInt(_) | Val::Float(_) => 2,
            Val::Str(_) => 3,
            Val::Bytes(_) => 4,
            Val::List(_) => 5,
            Val::Map(_) => 6,
        }
    }
    match rank(a).cmp(&rank(b)) {
        Ordering::Equal => match (a, b) {
            (Val::List(x), Val::List(y)) => x
                .iter()
                .zip(y.iter())
                .map(|(p, q)| total_order(p, q))
                .find(|o| o.is_ne())
                .unwrap_or_else(|| x.len().cmp(&y.len())),
            (Val::Map(_), Val::Map(_)) => a.to_string().cmp(&b.to_string()),
            _ => crate::expr::compare(a, b).unwrap_or(Ordering::Equal),
        },
        o => o,
    }
}
