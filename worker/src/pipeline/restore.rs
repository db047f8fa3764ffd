//! Rebuilds a partition's keyed state from its changelog: the state changes of every batch, in
//! order, as a compacted topic would return them (the last value per key, or none).
//!
//! The changelog holds plain values under the step's id, never code, so a new build of the
//! worker reads what an older one wrote. A change that does not fit the step it names (a
//! removed step, another window length, another aggregation) is refused with the step's id.

use std::sync::Arc;

use super::aggregate::{Acc, AggKind};
use super::event_time::{Clock, CLOCK_KEY, CLOCK_STEP};
use super::event_window::{EventWindowOp, EventWindowState, Shape};
use super::keyed::{Entry, KeyedState};
use super::window::{WindowOp, WindowState};
use super::{Op, PartitionState, Pipeline, StateChange, StepState};
use crate::expr::Val;

/// A changelog record that does not fit the pipeline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state of pipeline step {step:?} (key {key}) does not fit the pipeline: {reason}; keep the step as it was, or list it under checkpoint.resetState to drop its state")]
pub struct RestoreError {
    pub step: String,
    pub key: String,
    pub reason: String,
}

impl Pipeline {
    /// Each stateful step's id and the type of its state. A changelog written under one type
    /// is read back only by a step with the same id and type: the type names what the stored
    /// values mean (an aggregation's kind, a window's slots in batches of a given interval).
    pub fn state_types(&self) -> Vec<(Arc<str>, String)> {
        self.steps
            .iter()
            .filter_map(|s| {
                let ty = match &s.op {
                    Op::Window(w) => format!(
                        "window({}, {} batches of {} ms, sliding {})",
                        w.kind.name(),
                        w.length,
                        w.interval_ms,
                        w.slide
                    ),
                    Op::State(_) => "state".to_string(),
                    Op::EventWindow(w) => format!(
                        "eventWindow({}, {}, lateness {} ms)",
                        w.kind.name(),
                        match w.shape {
                            Shape::Fixed { length, slide } =>
                                format!("{length} ms sliding {slide} ms"),
                            Shape::Session { gap } => format!("sessions of gap {gap} ms"),
                        },
                        w.lateness
                    ),
                    Op::IntervalJoin(j) => format!(
                        "intervalJoin({} ms before, {} ms after, {:?})",
                        j.before, j.after, j.kind
                    ),
                    _ => return None,
                };
                Some((s.id.clone(), ty))
            })
            .chain(
                self.clock_step
                    .as_ref()
                    .filter(|s| &***s == CLOCK_STEP)
                    .map(|s| (s.clone(), "clock".to_string())),
            )
            .collect()
    }

    /// A partition's state rebuilt from its changes, oldest first.
    ///
    /// # Errors
    /// A change naming no stateful step, or whose data does not match that step.
    pub fn restore(
        &self,
        changes: impl IntoIterator<Item = StateChange>,
    ) -> Result<PartitionState, RestoreError> {
        let mut state = self.new_state();
        for c in changes {
            let err = |reason: &str| RestoreError {
                step: c.step.to_string(),
                key: c.key.to_string(),
                reason: reason.to_string(),
            };
            // The clock, under the event-time window's id or its own (`@watermark`).
            if self.clock_step.as_ref() == Some(&c.step) && c.key == Val::str(CLOCK_KEY) {
                state.clock = match &c.value {
                    Some(v) => Clock::from_val(v).map_err(err)?,
                    None => Clock::default(),
                };
                continue;
            }
            let Some(i) = self.steps.iter().position(|s| s.id == c.step) else {
                return Err(err("no step has this id"));
            };
            match (&self.steps[i].op, &mut state.steps[i].1) {
                (Op::Window(w), StepState::Window(ws)) => {
                    ws.restore(w, &c.key, c.value.as_ref()).map_err(err)?;
                }
                (Op::State(_), StepState::Keyed(ks)) => {
                    ks.restore(&c.key, c.value.as_ref()).map_err(err)?;
                }
                (Op::EventWindow(w), StepState::EventWindow(ws)) => {
                    ws.restore(w, &c.key, c.value.as_ref()).map_err(err)?;
                }
                (Op::IntervalJoin(_), StepState::IntervalJoin(js)) => {
                    js.restore(&c.key, c.value.as_ref()).map_err(err)?;
                }
                _ => return Err(err("the step keeps no state")),
            }
        }
        for (s, (_, st)) in self.steps.iter().zip(&mut state.steps) {
            if let (Op::Window(w), StepState::Window(ws)) = (&s.op, st) {
                ws.rebuild_totals(w);
            }
        }
        Ok(state)
    }
}

fn int(v: Option<&Val>) -> Result<i64, &'static str> {
    match v {
        Some(Val::Int(i)) => Ok(*i),
        Some(Val::UInt(u)) => i64::try_from(*u).map_err(|_| "a count is out of range"),
        _ => Err("a number is missing"),
    }
}

/// The inverse of [`Acc::to_val`] for the step's aggregation.
pub(crate) fn acc_from_val(kind: &AggKind, v: &Val) -> Result<Acc, &'static str> {
    Ok(match kind {
        AggKind::Count => Acc::Count(int(Some(v))?),
        AggKind::Sum(_) => Acc::Sum {
            sum: v.field("sum").cloned().ok_or("a sum is missing")?,
            n: int(v.field("n"))?,
        },
        AggKind::Avg(_) => Acc::Avg {
            sum: match v.field("sum") {
                Some(Val::Float(f)) => *f,
                _ => return Err("an average's sum is missing"),
            },
            n: u64::try_from(int(v.field("n"))?).map_err(|_| "a count is negative")?,
        },
        AggKind::Min(_) | AggKind::Max(_) | AggKind::Reduce(_) | AggKind::Collect(_) => {
            Acc::Value(v.clone())
        }
    })
}

impl WindowState {
    fn restore(
        &mut self,
        op: &WindowOp,
        key: &Val,
        value: Option<&Val>,
    ) -> Result<(), &'static str> {
        let Val::List(parts) = key else {
            return Err("a window key is not [slot, key]");
        };
        let [slot, key] = parts.as_slice() else {
            return Err("a window key is not [slot, key]");
        };
        let slot = usize::try_from(int(Some(slot))?).map_err(|_| "a slot is negative")?;
        let value = match value {
            None => None,
            Some(v) => Some((
                int(v.field("batch"))?,
                acc_from_val(&op.kind, v.field("acc").ok_or("a part is missing")?)?,
            )),
        };
        self.restore_part(slot, key, value)
    }
}

impl EventWindowState {
    fn restore(
        &mut self,
        op: &EventWindowOp,
        key: &Val,
        value: Option<&Val>,
    ) -> Result<(), &'static str> {
        let Val::List(parts) = key else {
            return Err("an event window key is not [start, key]");
        };
        let [start, key] = parts.as_slice() else {
            return Err("an event window key is not [start, key]");
        };
        let start = int(Some(start))?;
        let win = match value {
            None => None,
            Some(v) => Some((
                int(v.field("end"))?,
                acc_from_val(
                    &op.kind,
                    v.field("acc").ok_or("a window's aggregate is missing")?,
                )?,
            )),
        };
        self.restore_win(key, start, win);
        Ok(())
    }
}

impl KeyedState {
    fn restore(&mut self, key: &Val, value: Option<&Val>) -> Result<(), &'static str> {
        let entry = match value {
            None => None,
            Some(v) => Some(Entry {
                state: v.field("state").cloned().ok_or("a state is missing")?,
                seen: int(v.field("seen"))?,
            }),
        };
        self.restore_entry(key, entry);
        Ok(())
    }
}
