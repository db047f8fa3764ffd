//! Combine before the shuffle: the last step of a stage whose next stage begins with a
//! decomposable aggregate folds the batch per key, as that aggregate would, and writes one
//! partial per key per partition batch to the repartition topic (the contract's
//! `stages::combinable` says which aggregates, and why those). Here: what the combine sees
//! of a record, and a partial's form on the wire.

use std::borrow::Cow;
use std::sync::Arc;

use super::aggregate::{Acc, AggKind};
use crate::expr::{EvalError, Val, Var, Vars};

/// A record as the next stage reads it from the repartition topic, for the combine's
/// aggregate expression: the key, and the record's result as `value`. The combine runs only
/// for expressions of `key` and `value`, so nothing else is asked for.
pub(super) struct Shuffled<'a> {
    pub key: &'a Val,
    pub value: &'a Val,
}

impl Vars for Shuffled<'_> {
    fn var(&self, v: Var) -> Option<Cow<'_, Val>> {
        match v {
            Var::Key => Some(Cow::Borrowed(self.key)),
            Var::Value => Some(Cow::Borrowed(self.value)),
            _ => None,
        }
    }
}

/// A partial as the repartition topic carries it (in the worker's own encoding, under the
/// key): `[accumulator, records]`, the accumulator as the changelog writes it
/// ([`Acc::to_val`]) and the number of input records it stands for.
pub fn encode(acc: &Acc, records: u64) -> Val {
    Val::List(Arc::new(vec![acc.to_val(), Val::UInt(records)]))
}

/// The inverse of [`encode`] for an aggregate of `kind`.
///
/// # Errors
/// A value that is not a partial of that aggregation.
pub fn decode(kind: &AggKind, v: &Val) -> Result<(Acc, u64), EvalError> {
    let bad = |why: &str| {
        EvalError(format!(
            "a partial of a {} aggregate is malformed: {why}",
            kind.name()
        ))
    };
    let Val::List(parts) = v else {
        return Err(bad("not [accumulator, records]"));
    };
    let [acc, records] = parts.as_slice() else {
        return Err(bad("not [accumulator, records]"));
    };
    let records = match records {
        Val::UInt(n) => *n,
        Val::Int(n) => u64::try_from(*n).map_err(|_| bad("a negative record count"))?,
        _ => return Err(bad("no record count")),
    };
    let acc = super::restore::acc_from_val(kind, acc).map_err(bad)?;
    Ok((acc, records))
}
