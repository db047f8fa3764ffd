//! Keyed state of one partition, owned by the caller and kept across batches.
//!
//! Each stateful step's state sits under the step's id. Every batch records the state it
//! changed as (step id, key, new value or tombstone): data a changelog writer can send to a
//! compacted topic, and from which a restart can rebuild the state.
//!
//! The engine replays a batch whose output or commit failed, with the same batch time. The
//! state keeps an undo log of the last batch, and a batch finishing with the time of the last
//! one first takes that one back: a replay never counts a batch twice.

use std::sync::Arc;

use super::change::StateChange;
use super::event_time::Clock;
use super::event_window::EventWindowState;
use super::interval_join::IntervalJoinState;
use super::keyed::KeyedState;
use super::window::WindowState;

/// A stateful step's state.
#[derive(Debug, Default)]
pub enum StepState {
    /// A stateless step, or an aggregate of single batches.
    #[default]
    None,
    Window(WindowState),
    EventWindow(EventWindowState),
    IntervalJoin(IntervalJoinState),
    Keyed(KeyedState),
}

/// All keyed state of one input partition.
#[derive(Debug, Default)]
pub struct PartitionState {
    /// Parallel to the pipeline's steps, each with the step's id.
    pub(crate) steps: Vec<(Arc<str>, StepState)>,
    pub(crate) changes: Vec<StateChange>,
    /// Batch time of the last batch applied.
    last_batch: Option<i64>,
    /// The partition's event-time clock, and what it was before the last batch.
    pub(crate) clock: Clock,
    clock_before: Clock,
    /// The step the clock is logged under, when it is.
    pub(crate) clock_step: Option<Arc<str>>,
}

impl PartitionState {
    pub(crate) fn new(
        steps: Vec<(Arc<str>, StepState)>,
        clock_step: Option<Arc<str>>,
    ) -> PartitionState {
        PartitionState {
            steps,
            changes: Vec::new(),
            last_batch: None,
            clock: Clock::default(),
            clock_before: Clock::default(),
            clock_step,
        }
    }

    /// The state changes of the last batch, in the order they happened.
    pub fn changes(&self) -> &[StateChange] {
        &self.changes
    }

    /// Takes the last batch's changes, e.g. to hand them to a changelog writer.
    pub fn take_changes(&mut self) -> Vec<StateChange> {
        std::mem::take(&mut self.changes)
    }

    /// The whole state as changes that rebuild it through [`super::Pipeline::restore`]: what
    /// a local snapshot holds.
    pub fn dump(&self) -> Vec<StateChange> {
        let mut out = Vec::new();
        for (id, s) in &self.steps {
            match s {
                StepState::Window(w) => w.dump(id, &mut out),
                StepState::Keyed(k) => k.dump(id, &mut out),
                StepState::EventWindow(w) => w.dump(id, &mut out),
                StepState::IntervalJoin(j) => j.dump(id, &mut out),
                StepState::None => {}
            }
        }
        if let Some(step) = &self.clock_step {
            out.push(self.clock.change(step));
        }
        out
    }

    /// Whether the clock moved since the batch began.
    pub(crate) fn clock_moved(&self) -> bool {
        self.clock != self.clock_before
    }

    /// The partition's event-time clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The state of the step with this id.
    pub fn step(&self, id: &str) -> Option<&StepState> {
        self.steps.iter().find(|(s, _)| &**s == id).map(|(_, s)| s)
    }

    /// Starts batch `time`, before its first record: a replay of the last batch first takes
    /// it back, so that its records are read against the state they were read against before.
    pub(crate) fn begin(&mut self, time: i64) {
        self.changes.clear();
        let replay = self.last_batch == Some(time);
        if replay {
            self.clock = self.clock_before.clone();
        }
        for (_, s) in &mut self.steps {
            match s {
                StepState::Window(w) if replay => w.rollback(),
                StepState::Keyed(k) if replay => k.rollback(),
                StepState::EventWindow(w) if replay => w.rollback(),
                StepState::IntervalJoin(j) if replay => j.rollback(),
                _ => {}
            }
            match s {
                StepState::EventWindow(w) => w.begin(),
                StepState::IntervalJoin(j) => j.begin(),
                _ => {}
            }
        }
        self.clock_before = self.clock.clone();
    }

    /// Ends batch `time`: the state now holds it, and starting that batch again replays it.
    pub(crate) fn applied(&mut self, time: i64) {
        self.last_batch = Some(time);
    }
}
