//! A record's event time, and a partition's watermark: the largest event time read from it,
//! minus the out-of-orderness bound. Kept with the partition's state, and logged with it, so
//! that a restart neither reopens closed windows nor calls a record on time that was late.

use std::sync::Arc;

use super::change::StateChange;
use crate::expr::{EvalError, Program, Val};
use crate::record::Record;

/// How a record's event time is found, and how far behind it the watermark runs.
pub struct EventTime {
    /// `source.eventTime`; `None`: the Kafka timestamp.
    pub program: Option<Program>,
    /// `source.watermark.delay`, in milliseconds.
    pub delay: i64,
}

impl EventTime {
    /// The record's event time in milliseconds since the epoch.
    ///
    /// # Errors
    /// The expression failed or gave something that is not a time, or (without an expression)
    /// the record has no timestamp.
    pub fn of(&self, rec: &Record) -> Result<i64, EvalError> {
        let Some(p) = &self.program else {
            return rec.timestamp.ok_or_else(|| {
                EvalError("the record has no timestamp; set source.eventTime to compute one from the record".into())
            });
        };
        let v = p.eval(rec)?;
        match &*v {
            Val::Int(ms) => Ok(*ms),
            Val::UInt(ms) => i64::try_from(*ms)
                .map_err(|_| EvalError(format!("event time {ms} ms is out of range"))),
            Val::Float(ms) if ms.is_finite() => Ok(*ms as i64),
            Val::Str(s) => chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|e| {
                    EvalError(format!(
                        "event time {s:?} is not an RFC 3339 timestamp ({e}); give one such as 2026-11-01T12:00:00Z, or milliseconds since the epoch"
                    ))
                }),
            other => Err(EvalError(format!(
                "source.eventTime gave {} ({other}); it must give milliseconds since the epoch or an RFC 3339 timestamp",
                other.type_name()
            ))),
        }
    }
}

/// A partition's event-time clock.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    /// The largest event time read, in the partition's order.
    pub max_event: Option<i64>,
    /// The watermark windows were last closed at.
    pub closed: Option<i64>,
}

impl Clock {
    /// The partition's own watermark: the largest event time read minus `delay`.
    pub fn watermark(&self, delay: i64) -> Option<i64> {
        self.max_event.map(|m| m.saturating_sub(delay))
    }

    /// What a record is judged late against: the partition's watermark before it, or the
    /// watermark windows closed at when that is further (windows may close past a partition's
    /// own watermark while it is idle).
    pub fn late_against(&self, seen: Option<i64>, delay: i64) -> i64 {
        let own = self.max_event.max(seen).map(|m| m.saturating_sub(delay));
        own.max(self.closed).unwrap_or(i64::MIN)
    }

    /// The clock as a changelog entry under the event-time window step `step`.
    pub(crate) fn change(&self, step: &Arc<str>) -> StateChange {
        let opt = |v: Option<i64>| v.map_or(Val::Null, Val::Int);
        StateChange {
            step: step.clone(),
            key: Val::str(CLOCK_KEY),
            value: Some(Val::Map(Arc::new(vec![
                (Arc::from("maxEvent"), opt(self.max_event)),
                (Arc::from("closed"), opt(self.closed)),
            ]))),
        }
    }

    /// The clock from its changelog entry.
    pub(crate) fn from_val(v: &Val) -> Result<Clock, &'static str> {
        let get = |name| match v.field(name) {
            None | Some(Val::Null) => Ok(None),
            Some(Val::Int(i)) => Ok(Some(*i)),
            _ => Err("the watermark clock is not numbers"),
        };
        Ok(Clock {
            max_event: get("maxEvent")?,
            closed: get("closed")?,
        })
    }
}

/// The changelog key of the clock, beside the window entries (which are lists).
pub(crate) const CLOCK_KEY: &str = "watermark";
