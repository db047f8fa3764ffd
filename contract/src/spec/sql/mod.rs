//! SQL steps: `sql: "SELECT page, COUNT(*) AS views FROM input WHERE status = 200 GROUP BY
//! page"` is compiled, when the job loads, to the steps a user would write by hand (filter,
//! keyBy, aggregate, window, select), so it runs, shuffles, combines, keeps state and restores
//! exactly as they do. What the plan cannot express is refused with its position and the
//! reason: never a partial plan.
//!
//! Windows are Flink SQL's group windows over event time: `GROUP BY TUMBLE(ts, INTERVAL '1'
//! MINUTE), page` with `TUMBLE_START(...)`/`window_start` in the select list; the window's
//! time column becomes the job's `source.eventTime`.

mod cel;
mod plan;

use std::fmt;

use sqlparser::ast::{Expr as Sql, Spanned, Value};

use super::{is_dns_label, Duration, FieldError, JobSpec, StepSpec, ValidationErrors};

/// The longest query a SQL step holds (the CRD's `maxLength` says the same).
pub const MAX_SQL_BYTES: usize = 16 * 1024;

/// Why a query was refused: where (1-based, in the query's text) and what to do instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SqlError {
    pub line: u64,
    pub column: u64,
    pub reason: String,
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.reason
        )
    }
}

impl SqlError {
    fn new(line: u64, column: u64, reason: impl Into<String>) -> Self {
        Self {
            line,
            column,
            reason: reason.into(),
        }
    }
}

/// A refusal at a node of the query (at its start; the query's start when it has no position).
fn at(node: &impl Spanned, reason: impl Into<String>) -> SqlError {
    let s = node.span().start;
    let (line, column) = if s.line == 0 {
        (1, 1)
    } else {
        (s.line, s.column)
    };
    SqlError::new(line, column, reason)
}

/// The time a query's window groups by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TimeColumn {
    /// `_timestamp`: the Kafka record's timestamp (the job's default event time).
    Kafka,
    /// A CEL expression over the record: what `source.eventTime` must be.
    Expr(String),
}

/// What a query compiles to.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    pub steps: Vec<StepSpec>,
    /// The event time its window needs, when it has one.
    pub time: Option<TimeColumn>,
}

pub use plan::compile;

impl JobSpec {
    /// Whether any step is a SQL step.
    pub fn has_sql(&self) -> bool {
        self.pipeline.iter().any(|s| s.sql.is_some())
    }

    /// The spec with each SQL step replaced by the steps it compiles to (and
    /// `source.eventTime` set from a window's time column when the job sets none): the spec
    /// that runs. A spec without SQL steps is returned as it is.
    ///
    /// # Errors
    /// Every SQL step that does not compile, at `pipeline[i].sql` with the query's line and
    /// column.
    pub fn expand_sql(&self) -> Result<JobSpec, ValidationErrors> {
        expand(self).map(|(spec, _)| spec)
    }
}

/// The expanded spec, and for each of its steps the index of the step it came from.
pub(super) fn expand(spec: &JobSpec) -> Result<(JobSpec, Vec<usize>), ValidationErrors> {
    let mut out = spec.clone();
    out.pipeline.clear();
    let mut origin = Vec::with_capacity(spec.pipeline.len());
    let mut errors = Vec::new();
    for (i, step) in spec.pipeline.iter().enumerate() {
        let Some(sql) = &step.sql else {
            out.pipeline.push(step.clone());
            origin.push(i);
            continue;
        };
        let field = format!("pipeline[{i}].sql");
        let mut refuse = |message: String| {
            errors.push(FieldError {
                field: field.clone(),
                message,
            })
        };
        let ops = step.operations();
        if ops.len() > 1 || step.window.is_some() {
            refuse(format!(
                "a SQL step holds only its query (and id, combine, perPartition); move {} into the query or a step of its own",
                ops.iter().copied().filter(|o| *o != "sql").chain(step.window.as_ref().map(|_| "window")).collect::<Vec<_>>().join(" and ")
            ));
            continue;
        }
        if !is_dns_label(&step.id) || step.id.len() > 56 {
            refuse(format!("the step's id {:?} names the steps it compiles to ({0:?}-where, ...): use lower-case letters, digits and '-', at most 56 characters", step.id));
            continue;
        }
        if sql.len() > MAX_SQL_BYTES {
            refuse(format!(
                "the query is {} bytes; the limit is {MAX_SQL_BYTES}: split it into several steps",
                sql.len()
            ));
            continue;
        }
        match compile(sql, &step.id) {
            Ok(compiled) => {
                if let Err(why) = set_time(&mut out, compiled.time.as_ref()) {
                    refuse(why);
                }
                for mut s in compiled.steps {
                    if s.aggregate.is_some() {
                        s.combine = step.combine;
                        s.per_partition = step.per_partition;
                    }
                    out.pipeline.push(s);
                    origin.push(i);
                }
            }
            Err(e) => refuse(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok((out, origin))
    } else {
        Err(ValidationErrors(errors))
    }
}

/// Makes the job's event time the one a query's window groups by.
fn set_time(spec: &mut JobSpec, time: Option<&TimeColumn>) -> Result<(), String> {
    let current = spec.source.event_time.as_deref().map(str::trim);
    match (time, current) {
        (None, _) | (Some(TimeColumn::Kafka), None) => Ok(()),
        (Some(TimeColumn::Expr(e)), None) => {
            spec.source.event_time = Some(e.clone());
            Ok(())
        }
        (Some(TimeColumn::Expr(e)), Some(c)) if e == c => Ok(()),
        (Some(TimeColumn::Expr(e)), Some(c)) => Err(format!(
            "the window's time column is {e} but source.eventTime is {c}: a job has one event time; group by the same time or remove source.eventTime"
        )),
        (Some(TimeColumn::Kafka), Some(c)) => Err(format!(
            "the window groups by _timestamp (the Kafka timestamp) but source.eventTime is {c}: a job has one event time; group by the same time or remove source.eventTime"
        )),
    }
}

/// Problems found in an expanded spec, named by the step the user wrote: a compiled step's
/// problem is its SQL step's (`pipeline[i].sql`, with the compiled step's id).
pub(super) fn remap(
    errors: ValidationErrors,
    origin: &[usize],
    spec: &JobSpec,
    expanded: &JobSpec,
) -> ValidationErrors {
    let remapped = errors
        .0
        .into_iter()
        .map(|e| {
            let Some(rest) = e.field.strip_prefix("pipeline[") else {
                return e;
            };
            let Some((n, tail)) = rest.split_once(']') else {
                return e;
            };
            let Ok(n) = n.parse::<usize>() else {
                return e;
            };
            let (Some(&i), Some(step)) = (origin.get(n), expanded.pipeline.get(n)) else {
                return e;
            };
            if spec.pipeline[i].sql.is_none() {
                return FieldError {
                    field: format!("pipeline[{i}]{tail}"),
                    message: e.message,
                };
            }
            let id = &step.id;
            FieldError {
                field: format!("pipeline[{i}].sql"),
                message: format!(
                    "its compiled step {id}{tail}: {} (`weir-worker explain` prints the compiled steps)",
                    e.message
                ),
            }
        })
        .collect();
    ValidationErrors(remapped)
}

/// An INTERVAL's length in milliseconds: `INTERVAL '1' MINUTE`, `INTERVAL '90' SECOND`,
/// `INTERVAL '1 minute'` or `INTERVAL '90s'`.
fn interval(e: &Sql) -> Result<u64, SqlError> {
    let usage = "write an interval such as INTERVAL '1' MINUTE";
    let Sql::Interval(iv) = e else {
        return Err(at(e, format!("expected an interval here; {usage}")));
    };
    if iv.last_field.is_some() {
        return Err(at(
            e,
            format!("INTERVAL ... TO ... is not supported; {usage}"),
        ));
    }
    let text = match iv.value.as_ref() {
        Sql::Value(v) => match &v.value {
            Value::Number(n, _) => n.clone(),
            other => other.clone().into_string().unwrap_or_default(),
        },
        _ => String::new(),
    };
    let (amount, unit) = match &iv.leading_field {
        Some(f) => (text.trim().to_string(), f.to_string()),
        None => match text.trim().split_once(char::is_whitespace) {
            Some((a, u)) => (a.to_string(), u.trim().to_string()),
            None => {
                return match Duration::parse(text.trim()) {
                    Ok(d) if d.as_millis() > 0 => {
                        Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                    }
                    _ => Err(at(e, format!("{e} is not an interval Weir reads; {usage}"))),
                };
            }
        },
    };
    let unit_ms: f64 = match unit.to_ascii_uppercase().trim_end_matches('S') {
        "MILLISECOND" => 1.0,
        "SECOND" => 1_000.0,
        "MINUTE" => 60_000.0,
        "HOUR" => 3_600_000.0,
        "DAY" => 86_400_000.0,
        _ => {
            return Err(at(
                e,
                format!("the interval unit {unit} is not supported; use MILLISECOND, SECOND, MINUTE, HOUR or DAY"),
            ))
        }
    };
    match amount.parse::<f64>() {
        Ok(a) if a.is_finite() && a > 0.0 && a * unit_ms >= 1.0 && a * unit_ms < 1e15 => {
            Ok((a * unit_ms).round() as u64)
        }
        _ => Err(at(
            e,
            format!("{e}: the amount must be a positive number; {usage}"),
        )),
    }
}

#[cfg(test)]
mod tests;
