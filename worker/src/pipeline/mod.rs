//! The job's steps, compiled once and run per partition per batch.
//!
//! Stateless steps (filter, map, select, flatMap, keyBy) run record by record as the records
//! are read. An aggregate, a window and a state step are barriers: they collect the batch, and
//! their results flow through the steps after them when the partition's batch ends. Windows and
//! state steps keep their state in a [`PartitionState`] the caller owns, across batches. Every
//! step is deterministic: the same records and batch time give the same output, in key order.

pub mod aggregate;
mod change;
pub mod combine;
mod compile;
pub mod event_time;
pub mod event_window;
pub mod interval_join;
pub mod join;
pub mod keyed;
mod needs;
mod restore;
pub mod store;
pub mod window;

use std::collections::HashMap;
use std::sync::Arc;

use crate::expr::{EvalError, ExprError, Program, Val};
use crate::record::Record;

use aggregate::{Accumulators, AggKind};
pub use change::StateChange;
use change::StepUpdate;
use event_time::{EventTime, Mark, Upstream};
use event_window::{late_key, part_key, EventWindowOp, EventWindowState};
use keyed::{KeyedState, StateOp};
pub use restore::RestoreError;
pub use store::{PartitionState, StepState};
use window::{WindowOp, WindowState};

enum Op {
    Filter(Program),
    Map(Program),
    Select(Vec<(Arc<str>, Program)>),
    FlatMap(Program),
    KeyBy(Program),
    /// A lookup of the record's row in a table.
    Join(join::JoinOp),
    Aggregate(AggKind),
    /// An aggregate's first half, at the end of a stage: one partial per key and batch for
    /// the next stage's aggregate of the same id to merge ([`combine`]).
    Combine(AggKind),
    Window(WindowOp),
    /// A window over the records' event time, closed by the watermark.
    EventWindow(EventWindowOp),
    /// Two streams joined in event time within a bound, per key.
    IntervalJoin(interval_join::IntervalJoinOp),
    State(StateOp),
}

struct Step {
    id: Arc<str>,
    op: Op,
}

/// Why a pipeline could not be built from a valid spec.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("pipeline step {step:?}: {source}")]
    Expr { step: String, source: ExprError },
    #[error("pipeline step {step:?} uses {what}, which this version of weir-worker does not run yet; remove the step or use a worker that supports it")]
    Unsupported { step: String, what: &'static str },
    #[error("pipeline step {step:?}: {reason}")]
    Invalid { step: String, reason: String },
}

/// A record that failed a step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepFailure {
    pub step: Arc<str>,
    pub error: EvalError,
}

pub use needs::RecordNeeds;

/// A compiled pipeline.
pub struct Pipeline {
    steps: Vec<Step>,
    needs: RecordNeeds,
    /// Each record's event time and the watermark's delay, when the job has a watermark.
    event: Option<EventTime>,
    /// The step the partition's event-time clock is logged under, when it is logged.
    clock_step: Option<Arc<str>>,
    /// Before a shuffle to a join, in a job without event time: each record's Kafka timestamp
    /// goes along as its event time, the time the join looks its row up at.
    keeps_time: bool,
}

impl Pipeline {
    /// The tables of the join steps, by step id, for the engine to fill.
    pub fn tables(&self) -> Vec<(Arc<str>, Arc<join::Table>)> {
        self.steps
            .iter()
            .filter_map(|s| match &s.op {
                Op::Join(j) => Some((s.id.clone(), j.table.clone())),
                _ => None,
            })
            .collect()
    }

    /// What the source must decode of each record.
    pub fn needs(&self) -> &RecordNeeds {
        &self.needs
    }

    /// Whether a batch's barrier steps hold every value they are given until the batch ends
    /// (a state step's values per key, a `collect`): then what a batch holds grows with the
    /// records it reads, and it cannot be read in parts. Other barriers hold one accumulator
    /// per key, whatever the number of records.
    pub fn holds_values(&self) -> bool {
        self.steps.iter().any(|s| {
            matches!(
                &s.op,
                Op::State(_)
                    | Op::IntervalJoin(_)
                    | Op::Aggregate(AggKind::Collect(_))
                    | Op::Combine(AggKind::Collect(_))
                    | Op::Window(WindowOp {
                        kind: AggKind::Collect(_),
                        ..
                    })
                    | Op::EventWindow(EventWindowOp {
                        kind: AggKind::Collect(_),
                        ..
                    })
            )
        })
    }

    /// Empty keyed state for one partition; create it once per partition and keep it.
    pub fn new_state(&self) -> PartitionState {
        PartitionState::new(
            self.steps
                .iter()
                .map(|s| (s.id.clone(), fresh_state(&s.op)))
                .collect(),
            self.clock_step.clone(),
        )
    }

    /// Whether the stage writes each input partition's watermark for the stage after it.
    pub fn reports_watermarks(&self) -> bool {
        self.event.as_ref().is_some_and(|e| e.logs_clock)
    }

    /// A run of one partition's batch at `batch_time_ms` over that partition's state. Starting
    /// the same batch time again replays that batch: the state first takes it back.
    pub fn start<'p>(
        &'p self,
        state: &'p mut PartitionState,
        batch_time_ms: i64,
    ) -> PartitionRun<'p> {
        // State made for another pipeline would put one step's state under another's id.
        let fits = state.steps.len() == self.steps.len()
            && state.steps.iter().zip(&self.steps).all(|((id, st), s)| {
                *id == s.id
                    && match &s.op {
                        Op::Window(_) => matches!(st, StepState::Window(_)),
                        Op::State(_) => matches!(st, StepState::Keyed(_)),
                        Op::EventWindow(_) => matches!(st, StepState::EventWindow(_)),
                        Op::IntervalJoin(_) => matches!(st, StepState::IntervalJoin(_)),
                        _ => matches!(st, StepState::None),
                    }
            });
        if !fits {
            *state = self.new_state();
        }
        state.begin(batch_time_ms);
        PartitionRun {
            pipeline: self,
            pending: self
                .steps
                .iter()
                .map(|s| match s.op {
                    Op::State(_) | Op::IntervalJoin(_) => Pending::Values(HashMap::new()),
                    _ => Pending::Agg(Accumulators::default()),
                })
                .collect(),
            state,
            out: Vec::new(),
            scratch: Vec::new(),
            batch_time_ms,
            seen: None,
            late: 0,
            late_parts: Accumulators::default(),
            marks: Vec::new(),
        }
    }
}

fn fresh_state(op: &Op) -> StepState {
    match op {
        Op::Window(w) => StepState::Window(WindowState::new(w.length)),
        Op::State(_) => StepState::Keyed(KeyedState::default()),
        Op::EventWindow(_) => StepState::EventWindow(EventWindowState::default()),
        Op::IntervalJoin(_) => StepState::IntervalJoin(Default::default()),
        _ => StepState::None,
    }
}

/// An output record.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub key: Val,
    pub value: Val,
    /// Source offset of the record it came from; `None` for aggregate and state results.
    pub source_offset: Option<i64>,
    /// The record's event time and the watermark it is judged late against, when the job has
    /// a watermark: what a repartition record carries to the next stage.
    pub event: Option<(i64, i64)>,
}

/// What a record contributes to the first barrier step, staged until the record passes every
/// step: a failing record then changes nothing.
enum Effect {
    Emit(Output),
    Accumulate {
        step: usize,
        key: Val,
        input: Val,
    },
    /// A record behind every window it falls in, at event window `step`.
    Late {
        step: usize,
        key: Val,
        input: Val,
        time: i64,
        against: i64,
    },
}

/// A barrier step's share of the batch so far.
enum Pending {
    /// An aggregate's, or a window's part for this batch.
    Agg(Accumulators),
    /// A state step's values per key, in record order.
    Values(HashMap<Val, Vec<Val>>),
}

/// One partition's batch in progress.
pub struct PartitionRun<'p> {
    pipeline: &'p Pipeline,
    pending: Vec<Pending>,
    state: &'p mut PartitionState,
    out: Vec<Output>,
    scratch: Vec<Effect>,
    batch_time_ms: i64,
    /// The largest event time read in this batch so far.
    seen: Option<i64>,
    /// Records behind their windows in this batch.
    late: u64,
    /// With `late: update`: the late records' aggregate per `[start, end, key]`.
    late_parts: Accumulators,
    /// Watermarks of the stage before's partitions read in this batch.
    marks: Vec<(Arc<str>, Mark, usize)>,
}

fn merge_marks(up: &mut Upstream, marks: &[(Arc<str>, Mark, usize)]) {
    for (id, m, n) in marks {
        up.partitions = *n;
        // A replayed mark of the stage before never takes its watermark back.
        let e = up.marks.entry(id.clone()).or_insert(*m);
        e.watermark = e.watermark.max(m.watermark);
        e.idle = m.idle;
    }
}

/// Adds a staged contribution to its barrier step.
fn accumulate(
    steps: &[Step],
    pending: &mut [Pending],
    step: usize,
    key: Val,
    input: Val,
) -> Result<(), StepFailure> {
    let r = match (&steps[step].op, &mut pending[step]) {
        (Op::Aggregate(kind) | Op::Combine(kind), Pending::Agg(accs)) => accs.add(kind, key, input),
        (Op::Window(w), Pending::Agg(accs)) => accs.add(&w.kind, key, input),
        (Op::EventWindow(w), Pending::Agg(accs)) => accs.add(&w.kind, key, input),
        (Op::State(_) | Op::IntervalJoin(_), Pending::Values(values)) => {
            values.entry(key).or_default().push(input);
            Ok(())
        }
        _ => Ok(()),
    };
    r.map_err(|error| StepFailure {
        step: steps[step].id.clone(),
        error,
    })
}

impl PartitionRun<'_> {
    /// Runs a record through the steps. On failure nothing of the record is kept.
    ///
    /// # Errors
    /// The step that failed and its CEL error.
    pub fn push(&mut self, mut rec: Record) -> Result<(), StepFailure> {
        if let Some(ev) = &self.pipeline.event {
            if ev.from_shuffle {
                // The stage before judged the record by its input partition's watermark; windows
                // closed here since then make it late too.
                if rec.event_time.is_none() {
                    return Err(StepFailure {
                        step: Arc::from("eventTime"),
                        error: EvalError("a record of the repartition topic carries no event time: it was written before the job had a watermark; it cannot be placed in an event-time window".into()),
                    });
                }
                rec.late_against = rec
                    .late_against
                    .max(self.state.clock.closed.unwrap_or(i64::MIN));
            } else {
                let t = ev.of(&rec).map_err(|error| StepFailure {
                    step: Arc::from("eventTime"),
                    error,
                })?;
                rec.late_against = self.state.clock.late_against(self.seen, ev.delay);
                rec.event_time = Some(t);
                // The watermark follows every record read, whatever becomes of it later.
                self.seen = self.seen.max(Some(t));
            }
        } else if self.pipeline.keeps_time {
            rec.event_time = rec.event_time.or(rec.timestamp);
        }
        let mut effects = std::mem::take(&mut self.scratch);
        let r = run(&self.pipeline.steps, 0, rec, &mut effects);
        if let Err(e) = r {
            effects.clear();
            self.scratch = effects;
            return Err(e);
        }
        let mut result = Ok(());
        for effect in effects.drain(..) {
            match effect {
                Effect::Emit(o) => self.out.push(o),
                Effect::Accumulate { step, key, input } => {
                    if let Err(f) =
                        accumulate(&self.pipeline.steps, &mut self.pending, step, key, input)
                    {
                        result = Err(f);
                    }
                }
                Effect::Late {
                    step,
                    key,
                    input,
                    time,
                    against,
                } => {
                    if let Err(f) = self.late_record(step, key, input, time, against) {
                        result = Err(f);
                    }
                }
            }
        }
        self.scratch = effects;
        result
    }

    /// A record behind every window it falls in: counted, and then what the step's policy
    /// says (dropped, a dead letter, or added to a late update of its windows).
    fn late_record(
        &mut self,
        step: usize,
        key: Val,
        input: Val,
        time: i64,
        against: i64,
    ) -> Result<(), StepFailure> {
        self.late += 1;
        let s = &self.pipeline.steps[step];
        let fail = |error| StepFailure {
            step: s.id.clone(),
            error,
        };
        let w = match &s.op {
            Op::EventWindow(w) => w,
            Op::IntervalJoin(j) => {
                return match j.late {
                    crate::spec::LatePolicy::DeadLetter => Err(fail(EvalError(format!(
                        "late: event time {} is at or behind the watermark {} the join had reached; the partners it could have met may be gone",
                        event_window::time_text(time),
                        event_window::time_text(against)
                    )))),
                    _ => Ok(()),
                };
            }
            _ => return Ok(()),
        };
        match w.late {
            crate::spec::LatePolicy::Drop => Ok(()),
            crate::spec::LatePolicy::DeadLetter => Err(fail(EvalError(format!(
                "late: event time {} is behind the windows it falls in, closed at watermark {}",
                event_window::time_text(time),
                event_window::time_text(against)
            )))),
            crate::spec::LatePolicy::Update => {
                let mut r = Ok(());
                let parts = &mut self.late_parts;
                w.each_window(time, i64::MIN, |start, end| {
                    if let Err(e) = parts.add(&w.kind, late_key(start, end, &key), input.clone()) {
                        r = Err(fail(e));
                    }
                });
                r
            }
        }
    }

    /// Records read in this batch that were behind their windows.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// The partition's watermark with this batch's records read so far: after a shuffle, the
    /// least of the stage before's partitions' as marked so far.
    pub fn watermark(&self) -> Option<i64> {
        let ev = self.pipeline.event.as_ref()?;
        if ev.from_shuffle {
            let mut up = self.state.clock.upstream.clone();
            merge_marks(&mut up, &self.marks);
            return up.watermark();
        }
        self.state.clock.own(self.seen, ev.delay)
    }

    /// A watermark the stage before wrote for its input partition `id` (of `partitions`):
    /// taken at the batch's end, so that a batch read again reads its marks again.
    pub fn mark(&mut self, id: Arc<str>, mark: Mark, partitions: usize) {
        self.marks.push((id, mark, partitions));
    }

    /// Takes the outputs of the records pushed so far that passed every step (barrier
    /// results come at [`finish`](Self::finish)): a batch read in parts writes them before it
    /// reads on, so that they are not held to its end.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// Merges a partial of aggregation `kind` (a combine's, from the stage before) into the
    /// first step, the aggregate it was combined for. Returns the input records it stands for.
    ///
    /// # Errors
    /// The first step is not an aggregate of that kind (the job changed while its
    /// repartition topic held partials), the partial is malformed, or a reduce failed.
    pub fn push_partial(&mut self, kind: &[u8], key: Val, value: &Val) -> Result<u64, StepFailure> {
        let steps = &self.pipeline.steps;
        let Some(first) = steps.first() else {
            return Err(StepFailure {
                step: Arc::from("input"),
                error: EvalError(format!(
                    "a partial of a {} aggregate reached a stage with no steps; the job changed while its repartition topic held partials",
                    String::from_utf8_lossy(kind)
                )),
            });
        };
        let fail = |error| StepFailure {
            step: first.id.clone(),
            error,
        };
        let agg = match &first.op {
            Op::Aggregate(k) | Op::Window(WindowOp { kind: k, .. })
                if k.name().as_bytes() == kind =>
            {
                k
            }
            _ => {
                return Err(fail(EvalError(format!(
                    "a partial of a {} aggregate reached step {:?}, which is not that aggregate; the job changed while its repartition topic held partials",
                    String::from_utf8_lossy(kind),
                    first.id
                ))))
            }
        };
        let (acc, records) = combine::decode(agg, value).map_err(fail)?;
        match &mut self.pending[0] {
            Pending::Agg(accs) => accs.merge_part(agg, key, acc, records).map_err(fail)?,
            Pending::Values(_) => {}
        }
        Ok(records)
    }

    /// Ends the batch: applies it to the partition's state, closes the event-time windows the
    /// `watermark` (the stage's, over its partitions) has passed, and flushes barrier results
    /// through the steps after them. Returns the outputs and the failures of barrier results
    /// (in their own step or a later one). The state changes are then in
    /// [`PartitionState::changes`].
    pub fn finish(
        mut self,
        topic: &Arc<str>,
        partition: i32,
        watermark: Option<i64>,
    ) -> (Vec<Output>, Vec<(Output, StepFailure)>) {
        let pipeline = self.pipeline;
        let steps = &pipeline.steps;
        let batch_time_ms = self.batch_time_ms;
        let mut failures = Vec::new();
        self.state.clock.max_event = self.state.clock.max_event.max(self.seen);
        merge_marks(&mut self.state.clock.upstream, &self.marks);
        for i in 0..steps.len() {
            let fail = |key: Val, value: Val, error| {
                (
                    Output {
                        key,
                        value,
                        source_offset: None,
                        event: None,
                    },
                    StepFailure {
                        step: steps[i].id.clone(),
                        error,
                    },
                )
            };
            let pending = std::mem::replace(&mut self.pending[i], Pending::Values(HashMap::new()));
            let mut up = StepUpdate {
                step: &steps[i].id,
                changes: &mut self.state.changes,
            };
            let results: Vec<(Val, Val)> = match (&steps[i].op, pending, &mut self.state.steps[i].1)
            {
                (Op::Aggregate(_), Pending::Agg(mut accs), _) => accs.drain_sorted(),
                (Op::Combine(_), Pending::Agg(mut accs), _) => accs
                    .drain_counted()
                    .into_iter()
                    .map(|(k, acc, records)| (k, combine::encode(&acc, records)))
                    .collect(),
                (Op::Window(w), Pending::Agg(mut accs), StepState::Window(ws)) => ws
                    .apply(w, batch_time_ms, accs.drain_parts(), &mut up)
                    .into_iter()
                    .filter_map(|(k, r)| match r {
                        Ok(v) => Some((k, v)),
                        Err(e) => {
                            failures.push(fail(k, Val::Null, e));
                            None
                        }
                    })
                    .collect(),
                (Op::State(op), Pending::Values(values), StepState::Keyed(ks)) => {
                    let o = ks.apply(op, batch_time_ms, values, &mut up);
                    failures.extend(o.failures.into_iter().map(|(k, v, e)| fail(k, v, e)));
                    o.records
                }
                (Op::IntervalJoin(j), Pending::Values(values), StepState::IntervalJoin(js)) => {
                    let arrivals = interval_join::arrivals(values);
                    let results = js.end_batch(j, arrivals, watermark, &mut up);
                    if watermark.is_some() {
                        self.state.clock.closed = self.state.clock.closed.max(watermark);
                    }
                    results
                }
                (Op::EventWindow(w), Pending::Agg(mut accs), StepState::EventWindow(ws)) => {
                    let late = self.late_parts.drain_parts();
                    let (results, failed) =
                        ws.end_batch(w, accs.drain_parts(), late, watermark, &mut up);
                    if watermark.is_some() {
                        self.state.clock.closed = self.state.clock.closed.max(watermark);
                    }
                    failures.extend(failed.into_iter().map(|(k, e)| fail(k, Val::Null, e)));
                    results
                }
                _ => continue,
            };
            for (key, value) in results {
                let rec = Record::new(
                    topic.clone(),
                    partition,
                    -1,
                    Some(batch_time_ms),
                    key.clone(),
                    value.clone(),
                );
                let mut effects = std::mem::take(&mut self.scratch);
                let failed = |f| {
                    (
                        Output {
                            key: key.clone(),
                            value: value.clone(),
                            source_offset: None,
                            event: None,
                        },
                        f,
                    )
                };
                match run(steps, i + 1, rec, &mut effects) {
                    Ok(()) => {
                        for effect in effects.drain(..) {
                            match effect {
                                Effect::Emit(o) => self.out.push(o),
                                Effect::Accumulate { step, key, input } => {
                                    if let Err(f) =
                                        accumulate(steps, &mut self.pending, step, key, input)
                                    {
                                        failures.push(failed(f));
                                    }
                                }
                                // Validation keeps event-time windows before every other
                                // barrier: a barrier's result is never late.
                                Effect::Late { .. } => {}
                            }
                        }
                    }
                    Err(f) => {
                        effects.clear();
                        failures.push(failed(f));
                    }
                }
                self.scratch = effects;
            }
        }
        self.state.applied(batch_time_ms);
        if let Some(step) = &pipeline.clock_step {
            if self.state.clock_moved() {
                self.state.changes.push(self.state.clock.change(step));
            }
        }
        (self.out, failures)
    }
}

/// Runs `rec` from step `from`, staging its effects.
fn run(
    steps: &[Step],
    from: usize,
    mut rec: Record,
    effects: &mut Vec<Effect>,
) -> Result<(), StepFailure> {
    for (i, step) in steps.iter().enumerate().skip(from) {
        let fail = |error| StepFailure {
            step: step.id.clone(),
            error,
        };
        match &step.op {
            Op::Filter(p) => {
                if !p.eval_bool(&rec).map_err(fail)? {
                    return Ok(());
                }
            }
            Op::Map(p) => {
                rec.value = p.eval(&rec).map_err(fail)?.into_owned();
                rec.item_is_output = false;
            }
            Op::Select(fields) => {
                let mut obj = Vec::with_capacity(fields.len());
                for (name, p) in fields {
                    obj.push((name.clone(), p.eval(&rec).map_err(fail)?.into_owned()));
                }
                rec.value = Val::Map(Arc::new(obj));
                rec.item_is_output = false;
            }
            Op::KeyBy(p) => rec.key = p.eval(&rec).map_err(fail)?.into_owned(),
            Op::Join(j) => {
                // The row as of the record's own time; a record without one sees the latest.
                let at = rec.event_time.or(rec.timestamp).unwrap_or(i64::MAX);
                let row = {
                    let on = match &j.on {
                        Some(p) => p.eval(&rec).map_err(fail)?,
                        None => std::borrow::Cow::Borrowed(&rec.key),
                    };
                    join::key_text(&on).and_then(|k| j.table.lookup(&k, at))
                };
                match (row, j.kind) {
                    (Some(row), _) => rec.table = row,
                    (None, crate::spec::JoinKind::Left) => rec.table = Val::Null,
                    (None, crate::spec::JoinKind::Inner) => return Ok(()),
                }
            }
            Op::FlatMap(p) => {
                let items = match p.eval(&rec).map_err(fail)?.into_owned() {
                    Val::List(items) => items,
                    other => {
                        return Err(fail(EvalError(format!(
                            "flatMap needs a list, got {}",
                            other.type_name()
                        ))))
                    }
                };
                for item in items.iter() {
                    let mut r = rec.clone();
                    r.item = item.clone();
                    r.item_is_output = true;
                    run(steps, i + 1, r, effects)?;
                }
                return Ok(());
            }
            Op::Aggregate(kind) | Op::Window(WindowOp { kind, .. }) => {
                let input = kind.input(&rec).map_err(fail)?;
                let key = rec.key.clone();
                effects.push(Effect::Accumulate {
                    step: i,
                    key,
                    input,
                });
                return Ok(());
            }
            Op::EventWindow(w) => {
                let input = w.kind.input(&rec).map_err(fail)?;
                // The pipeline sets an event time on every record when it has an event window.
                let time = rec.event_time.unwrap_or(i64::MIN);
                let key = &rec.key;
                let on_time = w.each_window(time, rec.late_against, |start, _| {
                    effects.push(Effect::Accumulate {
                        step: i,
                        key: part_key(start, key),
                        input: input.clone(),
                    });
                });
                if !on_time {
                    effects.push(Effect::Late {
                        step: i,
                        key: rec.key,
                        input,
                        time,
                        against: rec.late_against,
                    });
                }
                return Ok(());
            }
            Op::IntervalJoin(j) => {
                let left = j.left.eval_bool(&rec).map_err(fail)?;
                // The pipeline sets an event time on every record when the job has a watermark.
                let time = rec.event_time.unwrap_or(i64::MIN);
                let input = interval_join::arrival_val(left, time, rec.output().clone());
                if time <= rec.late_against {
                    effects.push(Effect::Late {
                        step: i,
                        key: rec.key,
                        input,
                        time,
                        against: rec.late_against,
                    });
                } else {
                    effects.push(Effect::Accumulate {
                        step: i,
                        key: rec.key,
                        input,
                    });
                }
                return Ok(());
            }
            Op::Combine(kind) => {
                let output = rec.output();
                let view = combine::Shuffled {
                    key: &rec.key,
                    value: output,
                };
                let input = kind.input_of(&view, output).map_err(fail)?;
                effects.push(Effect::Accumulate {
                    step: i,
                    key: rec.key,
                    input,
                });
                return Ok(());
            }
            Op::State(_) => {
                let input = rec.output().clone();
                effects.push(Effect::Accumulate {
                    step: i,
                    key: rec.key,
                    input,
                });
                return Ok(());
            }
        }
    }
    let value = if rec.item_is_output {
        rec.item
    } else {
        rec.value
    };
    effects.push(Effect::Emit(Output {
        key: rec.key,
        value,
        source_offset: Some(rec.offset),
        event: rec.event_time.map(|t| (t, rec.late_against)),
    }));
    Ok(())
}

#[cfg(test)]
mod combine_tests;
#[cfg(test)]
mod event_window_tests;
#[cfg(test)]
mod interval_join_tests;
#[cfg(test)]
mod keyed_tests;
#[cfg(test)]
mod restore_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod window_tests;
