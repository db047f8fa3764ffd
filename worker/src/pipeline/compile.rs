//! Builds a [`Pipeline`] from a job spec's steps: CEL compiled once, windows in batches.

use std::sync::Arc;

use super::aggregate::AggKind;
use super::event_time::{EventTime, CLOCK_STEP};
use super::event_window::{EventWindowOp, Shape};
use super::interval_join::IntervalJoinOp;
use super::join::JoinOp;
use super::keyed::StateOp;
use super::window::{WindowOp, MAX_WINDOW_BATCHES};
use super::{Op, Pipeline, PipelineError, Step};
use crate::expr::{ExprError, Program, Var};
use crate::spec::{Format, JobSpec, StateStepSpec, StepSpec, WindowSpec, WindowTime};

impl Pipeline {
    /// Compiles the spec's steps.
    ///
    /// # Errors
    /// An expression that does not compile, or a step kind this worker cannot run.
    pub fn compile(spec: &JobSpec) -> Result<Pipeline, PipelineError> {
        let mut steps = Vec::with_capacity(spec.pipeline.len());
        let mut vars = Var::RECORD.to_vec();
        for s in &spec.pipeline {
            let e = |source| PipelineError::Expr {
                step: s.id.clone(),
                source,
            };
            let unsupported = |what| PipelineError::Unsupported {
                step: s.id.clone(),
                what,
            };
            let op = match s {
                StepSpec {
                    filter: Some(x), ..
                } => Op::Filter(Program::compile(x, &vars).map_err(e)?),
                StepSpec { map: Some(x), .. } => Op::Map(Program::compile(x, &vars).map_err(e)?),
                StepSpec {
                    select: Some(fields),
                    ..
                } => Op::Select(
                    fields
                        .iter()
                        .map(|(k, x)| Ok((Arc::from(k.as_str()), Program::compile(x, &vars)?)))
                        .collect::<Result<_, ExprError>>()
                        .map_err(e)?,
                ),
                StepSpec {
                    flat_map: Some(x), ..
                } => {
                    let p = Program::compile(x, &vars).map_err(e)?;
                    if !vars.contains(&Var::Item) {
                        vars.push(Var::Item);
                    }
                    Op::FlatMap(p)
                }
                StepSpec {
                    key_by: Some(x), ..
                } => Op::KeyBy(Program::compile(x, &vars).map_err(e)?),
                StepSpec { join: Some(j), .. } => {
                    let on = j.on.as_deref().map(|x| Program::compile(x, &vars));
                    let op = Op::Join(JoinOp {
                        on: on.transpose().map_err(e)?,
                        kind: j.kind,
                        table: Arc::default(),
                    });
                    if !vars.contains(&Var::Table) {
                        vars.push(Var::Table);
                    }
                    op
                }
                StepSpec {
                    aggregate: Some(a),
                    partial: true,
                    ..
                } => Op::Combine(AggKind::compile(a, &vars).map_err(e)?),
                StepSpec {
                    aggregate: Some(a),
                    window: Some(w),
                    ..
                } if w.time == WindowTime::Event => {
                    let kind = AggKind::compile(a, &vars).map_err(e)?;
                    Op::EventWindow(event_window_op(spec, s, w, kind)?)
                }
                StepSpec {
                    aggregate: Some(a),
                    window: Some(w),
                    ..
                } => {
                    let kind = AggKind::compile(a, &vars).map_err(e)?;
                    Op::Window(window_op(spec, s, w, kind)?)
                }
                StepSpec {
                    aggregate: Some(a), ..
                } => Op::Aggregate(AggKind::compile(a, &vars).map_err(e)?),
                StepSpec {
                    state: Some(st), ..
                } => Op::State(state_op(st).map_err(e)?),
                StepSpec {
                    interval_join: Some(j),
                    ..
                } => Op::IntervalJoin(IntervalJoinOp {
                    left: Program::compile(&j.left, &[Var::Key, Var::Value]).map_err(e)?,
                    before: j.before.map_or(0, |d| d.as_millis_i64()),
                    after: j.after.map_or(0, |d| d.as_millis_i64()),
                    kind: j.kind,
                    late: j.late,
                }),
                StepSpec {
                    repartition: Some(_),
                    ..
                } => {
                    // The worker splits a job at its repartition steps (crate::stages) before
                    // compiling each stage's steps.
                    return Err(PipelineError::Invalid {
                        step: s.id.clone(),
                        reason: "a repartition step ends a stage; run the job through weir_worker::stages".into(),
                    });
                }
                _ => return Err(unsupported("no operation")),
            };
            steps.push(Step {
                id: Arc::from(s.id.as_str()),
                op,
            });
        }
        let mut needs = super::needs::record_needs(&steps);
        let event_step = |op: &Op| matches!(op, Op::EventWindow(_) | Op::IntervalJoin(_));
        let has_window = steps.iter().any(|s| event_step(&s.op));
        let writes_shuffle = spec.sink.kafka.as_ref().is_some_and(|k| k.shuffle);
        let event = match &spec.source.watermark {
            None => None,
            Some(w) => {
                let program = spec
                    .source
                    .event_time
                    .as_deref()
                    .map(|x| Program::compile(x, &Var::RECORD))
                    .transpose()
                    .map_err(|source| PipelineError::Expr {
                        step: "source.eventTime".into(),
                        source,
                    })?;
                if let Some(p) = &program {
                    super::needs::add_program(&mut needs, p);
                }
                Some(EventTime {
                    program,
                    delay: w.delay.as_millis_i64(),
                    from_shuffle: spec.source.format == Format::Shuffle,
                    logs_clock: !has_window && writes_shuffle,
                })
            }
        };
        // The clock is logged with the event-time window's state, or on its own in the stage
        // before a shuffle: each partition's watermark there is what the next stage closes by.
        let clock_step = match steps.iter().find(|s| event_step(&s.op)) {
            Some(s) => Some(s.id.clone()),
            None => event
                .as_ref()
                .filter(|e| e.logs_clock)
                .map(|_| Arc::from(CLOCK_STEP)),
        };
        let keeps_time = spec.sink.kafka.as_ref().is_some_and(|k| k.keeps_time);
        Ok(Pipeline {
            steps,
            needs,
            event,
            clock_step,
            keeps_time,
        })
    }
}

/// An event-time window; the spec's validation already says what to fix.
fn event_window_op(
    spec: &JobSpec,
    s: &StepSpec,
    w: &WindowSpec,
    kind: AggKind,
) -> Result<EventWindowOp, PipelineError> {
    let ms = crate::spec::Duration::as_millis_i64;
    let bad = |reason: &str| PipelineError::Invalid {
        step: s.id.clone(),
        reason: reason.into(),
    };
    if spec.source.watermark.is_none() {
        return Err(bad("an event-time window needs source.watermark"));
    }
    let shape = match (w.length, w.gap) {
        (Some(length), None) => {
            let length = ms(length);
            let slide = w.slide.map_or(length, ms);
            if length <= 0 || slide <= 0 || slide > length || length % slide != 0 {
                return Err(bad("window length and slide must be positive, slide <= length, and length a multiple of slide"));
            }
            Shape::Fixed { length, slide }
        }
        (None, Some(gap)) if ms(gap) > 0 => Shape::Session { gap: ms(gap) },
        _ => return Err(bad("an event-time window has a length or a positive gap")),
    };
    Ok(EventWindowOp {
        kind,
        shape,
        lateness: w.allowed_lateness.map_or(0, ms),
        late: w.late,
        every_batch: w.emit == crate::spec::EmitMode::EveryBatch,
    })
}

fn state_op(st: &StateStepSpec) -> Result<StateOp, ExprError> {
    Ok(StateOp {
        initial: st
            .initial
            .as_deref()
            .map(|x| Program::compile(x, &[Var::Key]))
            .transpose()?,
        update: Program::compile(
            &st.update,
            &[
                Var::Key,
                Var::Values,
                Var::State,
                Var::TimingOut,
                Var::Removing,
            ],
        )?,
        remove: st
            .remove
            .as_deref()
            .map(|x| Program::compile(x, &[Var::Key, Var::State]))
            .transpose()?,
        timeout_ms: st.timeout.map(|t| t.as_millis_i64().max(1)),
        snapshots: st.snapshots,
    })
}

/// Window length and slide in batches; the spec's validation already says what to fix, this
/// only keeps an unvalidated spec from building a wrong window.
fn window_op(
    spec: &JobSpec,
    s: &StepSpec,
    w: &WindowSpec,
    kind: AggKind,
) -> Result<WindowOp, PipelineError> {
    let ms = crate::spec::Duration::as_millis_i64;
    let interval = ms(spec.batch_interval);
    let length = w.length.map_or(0, ms);
    let slide = w.slide.map_or(interval, ms);
    let bad = |reason: String| PipelineError::Invalid {
        step: s.id.clone(),
        reason,
    };
    if interval <= 0 || length <= 0 || slide <= 0 || length % interval != 0 || slide % interval != 0
    {
        return Err(bad(format!(
            "window length {} and slide must be positive multiples of batchInterval {}",
            w.length.unwrap_or_default(),
            spec.batch_interval
        )));
    }
    if length / interval > MAX_WINDOW_BATCHES {
        return Err(bad(format!(
            "window length {} is {} batches; at most {MAX_WINDOW_BATCHES} are kept, use a longer batchInterval",
            w.length.unwrap_or_default(),
            length / interval
        )));
    }
    Ok(WindowOp {
        kind,
        interval_ms: interval,
        length: length / interval,
        slide: slide / interval,
    })
}
