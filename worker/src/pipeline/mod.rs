//! The job's steps, compiled once and run per partition per batch.
//!
//! Stateless steps (filter, map, select, flatMap, keyBy) run record by record as the records
//! are read. An aggregate is a barrier: it accumulates the batch, and its results flow through
//! the steps after it when the partition's batch ends. Every step is pure: records in, records
//! out, so a replayed batch produces the same output.

pub mod aggregate;

use std::sync::Arc;

use crate::expr::{EvalError, ExprError, Program, Val, Var};
use crate::record::Record;
use crate::spec::{JobSpec, StepSpec};

use aggregate::{Accumulators, AggKind};

enum Op {
    Filter(Program),
    Map(Program),
    Select(Vec<(Arc<str>, Program)>),
    FlatMap(Program),
    KeyBy(Program),
    Aggregate(AggKind),
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
}

/// A record that failed a step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepFailure {
    pub step: Arc<str>,
    pub error: EvalError,
}

/// A compiled pipeline.
pub struct Pipeline {
    steps: Vec<Step>,
}

impl Pipeline {
    /// Compiles the spec's steps.
    ///
    /// # Errors
    /// An expression that does not compile, or a step kind this worker cannot run.
    pub fn compile(spec: &JobSpec) -> Result<Pipeline, PipelineError> {
        let mut steps = Vec::with_capacity(spec.pipeline.len());
        let mut vars = vec![
            Var::Key,
            Var::Value,
            Var::Partition,
            Var::Offset,
            Var::Timestamp,
            Var::Headers,
            Var::Topic,
        ];
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
                StepSpec {
                    aggregate: Some(_),
                    window: Some(_),
                    ..
                } => return Err(unsupported("window")),
                StepSpec {
                    aggregate: Some(a), ..
                } => Op::Aggregate(AggKind::compile(a, &vars).map_err(e)?),
                StepSpec { state: Some(_), .. } => return Err(unsupported("state")),
                StepSpec {
                    repartition: Some(_),
                    ..
                } => return Err(unsupported("repartition")),
                _ => return Err(unsupported("no operation")),
            };
            steps.push(Step {
                id: Arc::from(s.id.as_str()),
                op,
            });
        }
        Ok(Pipeline { steps })
    }

    /// A fresh run for one partition's batch.
    pub fn start(&self) -> PartitionRun<'_> {
        PartitionRun {
            pipeline: self,
            accs: self.steps.iter().map(|_| Accumulators::default()).collect(),
            out: Vec::new(),
            scratch: Vec::new(),
        }
    }
}

/// An output record.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub key: Val,
    pub value: Val,
    /// Source offset of the record it came from; `None` for aggregate results.
    pub source_offset: Option<i64>,
}

/// What a record contributes to the first aggregate, staged until the record passes every
/// step: a failing record then changes nothing.
enum Effect {
    Emit(Output),
    Accumulate { step: usize, key: Val, input: Val },
}

/// One partition's batch in progress.
pub struct PartitionRun<'p> {
    pipeline: &'p Pipeline,
    accs: Vec<Accumulators>,
    out: Vec<Output>,
    scratch: Vec<Effect>,
}

impl PartitionRun<'_> {
    /// Runs a record through the steps. On failure nothing of the record is kept.
    ///
    /// # Errors
    /// The step that failed and its CEL error.
    pub fn push(&mut self, rec: Record) -> Result<(), StepFailure> {
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
                    let Op::Aggregate(kind) = &self.pipeline.steps[step].op else {
                        continue;
                    };
                    if let Err(error) = self.accs[step].add(kind, key, input) {
                        result = Err(StepFailure {
                            step: self.pipeline.steps[step].id.clone(),
                            error,
                        });
                    }
                }
            }
        }
        self.scratch = effects;
        result
    }

    /// Ends the batch: flushes aggregates through the steps after them.
    /// Returns the outputs and the failures of aggregate results in later steps.
    pub fn finish(
        mut self,
        topic: &Arc<str>,
        partition: i32,
        batch_time_ms: i64,
    ) -> (Vec<Output>, Vec<(Output, StepFailure)>) {
        let mut failures = Vec::new();
        for i in 0..self.pipeline.steps.len() {
            if self.accs[i].keys.is_empty() {
                continue;
            }
            for (key, value) in self.accs[i].drain_sorted() {
                let rec = Record {
                    topic: topic.clone(),
                    partition,
                    offset: -1,
                    timestamp: Some(batch_time_ms),
                    key: key.clone(),
                    value: value.clone(),
                    headers: Val::Null,
                    item: Val::Null,
                    item_is_output: false,
                };
                let mut effects = Vec::new();
                match run(&self.pipeline.steps, i + 1, rec, &mut effects) {
                    Ok(()) => {
                        for effect in effects {
                            match effect {
                                Effect::Emit(o) => self.out.push(o),
                                Effect::Accumulate { step, key, input } => {
                                    let Op::Aggregate(kind) = &self.pipeline.steps[step].op else {
                                        continue;
                                    };
                                    if let Err(error) =
                                        self.accs[step].add(kind, key.clone(), input)
                                    {
                                        let step = self.pipeline.steps[step].id.clone();
                                        failures.push((
                                            Output {
                                                key,
                                                value: value.clone(),
                                                source_offset: None,
                                            },
                                            StepFailure { step, error },
                                        ));
                                    }
                                }
                            }
                        }
                    }
                    Err(f) => failures.push((
                        Output {
                            key,
                            value,
                            source_offset: None,
                        },
                        f,
                    )),
                }
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
            Op::Aggregate(kind) => {
                let input = kind.input(&rec).map_err(fail)?;
                let key = rec.key.clone();
                effects.push(Effect::Accumulate {
                    step: i,
                    key,
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
    }));
    Ok(())
}

#[cfg(test)]
mod tests;
