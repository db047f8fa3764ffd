//! What of each record a pipeline reads, so decoding skips the rest: a filter on `value.page`
//! never allocates the record's other fields, and a job that re-keys never decodes the old key.

use super::aggregate::AggKind;
use super::{Op, Step};
use crate::expr::{Program, ValueNeeds, Var};

/// What the source must decode of each record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordNeeds {
    pub value: ValueNeeds,
    pub key: bool,
    pub headers: bool,
}

fn read(n: &mut RecordNeeds, p: &Program, own_value: bool, own_key: bool) {
    if own_value {
        n.value.merge(p.value_needs());
    }
    n.key |= own_key && p.uses(Var::Key);
    n.headers |= p.uses(Var::Headers);
}

/// Adds what an expression over the record as read (`source.eventTime`) needs of it.
pub(super) fn add_program(n: &mut RecordNeeds, p: &Program) {
    read(n, p, true, true);
}

/// Follows the steps while `value` and `key` still mean the record's own: a map or select
/// replaces the value, a keyBy the key, and a barrier (aggregate, window, state) ends the
/// records' path. What reaches the sink is needed too.
pub(super) fn record_needs(steps: &[Step]) -> RecordNeeds {
    let mut n = RecordNeeds {
        value: ValueNeeds::Nothing,
        key: false,
        headers: false,
    };
    let mut own_value = true;
    let mut own_key = true;
    let mut item_is_output = false;
    for step in steps {
        match &step.op {
            Op::Filter(p) => read(&mut n, p, own_value, own_key),
            Op::Map(p) => {
                read(&mut n, p, own_value, own_key);
                own_value = false;
                item_is_output = false;
            }
            Op::Select(fields) => {
                for (_, p) in fields {
                    read(&mut n, p, own_value, own_key);
                }
                own_value = false;
                item_is_output = false;
            }
            Op::FlatMap(p) => {
                read(&mut n, p, own_value, own_key);
                item_is_output = true;
            }
            Op::KeyBy(p) => {
                read(&mut n, p, own_value, own_key);
                own_key = false;
            }
            Op::Join(j) => match &j.on {
                Some(p) => read(&mut n, p, own_value, own_key),
                None => n.key |= own_key,
            },
            Op::Aggregate(kind)
            | Op::Window(super::window::WindowOp { kind, .. })
            | Op::EventWindow(super::event_window::EventWindowOp { kind, .. }) => {
                match kind {
                    AggKind::Count => {}
                    AggKind::Sum(p)
                    | AggKind::Min(p)
                    | AggKind::Max(p)
                    | AggKind::Avg(p)
                    | AggKind::Collect(p) => read(&mut n, p, own_value, own_key),
                    // A reduce folds the records' results.
                    AggKind::Reduce(_) if own_value && !item_is_output => {
                        n.value = ValueNeeds::Whole
                    }
                    AggKind::Reduce(_) => {}
                }
                n.key |= own_key;
                return n;
            }
            Op::Combine(kind) => {
                // Its expression reads the record's result as `value`: after a flatMap that is
                // the item, which needs nothing more of the record.
                if let AggKind::Sum(p) | AggKind::Min(p) | AggKind::Max(p) | AggKind::Avg(p) = kind
                {
                    if !item_is_output {
                        read(&mut n, p, own_value, own_key);
                    }
                }
                n.key |= own_key;
                return n;
            }
            Op::IntervalJoin(j) => {
                // It holds and writes the records' results, and tests their values for the side.
                read(&mut n, &j.left, own_value, own_key);
                if own_value && !item_is_output {
                    n.value = ValueNeeds::Whole;
                }
                n.key |= own_key;
                return n;
            }
            Op::State(_) => {
                // `values` are the records' results.
                if own_value && !item_is_output {
                    n.value = ValueNeeds::Whole;
                }
                n.key |= own_key;
                return n;
            }
        }
    }
    // The sink writes each record's key and result.
    if own_value && !item_is_output {
        n.value = ValueNeeds::Whole;
    }
    n.key |= own_key;
    n
}
