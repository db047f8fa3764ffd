//! A record's event time, and a partition's watermark: the largest event time read from it,
//! minus the out-of-orderness bound. Kept with the partition's state, and logged with it, so
//! that a restart neither reopens closed windows nor calls a record on time that was late.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::change::StateChange;
use crate::expr::{EvalError, Program, Val};
use crate::record::Record;
use weir_contract::stages::EVENT_TIME_HEADER;

/// How a record's event time is found, and how far behind it the watermark runs.
pub struct EventTime {
    /// `source.eventTime`; `None`: the Kafka timestamp.
    pub program: Option<Program>,
    /// `source.watermark.delay`, in milliseconds.
    pub delay: i64,
    /// The stage reads a repartition topic: records carry their time from the stage before,
    /// and the watermark is the least of that stage's partitions'.
    pub from_shuffle: bool,
    /// The stage logs its clock as state of its own (it has no event-time window, and writes
    /// a repartition topic for one).
    pub logs_clock: bool,
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

/// An input partition's watermark, as the stage before a shuffle reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub watermark: Option<i64>,
    /// The partition has read nothing for `idleAfter`: it holds nothing back.
    pub idle: bool,
}

/// What the stage before a shuffle reported of each of its input partitions, as a stage after
/// it reads them from one of its partitions.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Input partitions of the stage before (`topic/partition`) and their last mark.
    pub marks: BTreeMap<Arc<str>, Mark>,
    /// How many input partitions the stage before has.
    pub partitions: usize,
}

impl Upstream {
    /// The least watermark of the partitions that are not idle, once every one has reported;
    /// the largest when all are idle (as Flink's idleness: a stream that stopped closes its
    /// last windows).
    pub fn watermark(&self) -> Option<i64> {
        if self.partitions == 0 || self.marks.len() < self.partitions {
            return None;
        }
        least_active(self.marks.values().copied())
    }
}

/// The watermark over partitions: the least of the ones that are not idle, `None` while one of
/// those has none (it could still be behind); when every one is idle, the largest (as Flink's
/// idleness: a stream that stopped closes its last windows).
pub fn least_active(marks: impl Iterator<Item = Mark>) -> Option<i64> {
    let mut active = false;
    let mut least = Some(i64::MAX);
    let mut largest = None;
    for m in marks {
        largest = largest.max(m.watermark);
        if !m.idle {
            active = true;
            least = least.zip(m.watermark).map(|(a, b)| a.min(b));
        }
    }
    if active {
        least
    } else {
        largest
    }
}

/// A partition's event-time clock.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Clock {
    /// The largest event time read, in the partition's order.
    pub max_event: Option<i64>,
    /// The watermark windows were last closed at.
    pub closed: Option<i64>,
    /// In a stage after a shuffle: the marks of the stage before's partitions.
    pub upstream: Upstream,
}

impl Clock {
    /// What a record is judged late against: the partition's watermark before it, or the
    /// watermark windows closed at when that is further (windows may close past a partition's
    /// own watermark while it is idle).
    pub fn late_against(&self, seen: Option<i64>, delay: i64) -> i64 {
        self.own(seen, delay).max(self.closed).unwrap_or(i64::MIN)
    }

    /// The partition's own watermark, with `seen` the largest event time read since the clock
    /// last moved: the largest event time read minus `delay`.
    pub fn own(&self, seen: Option<i64>, delay: i64) -> Option<i64> {
        self.max_event.max(seen).map(|m| m.saturating_sub(delay))
    }

    /// The clock as a changelog entry under step `step`.
    pub(crate) fn change(&self, step: &Arc<str>) -> StateChange {
        let opt = |v: Option<i64>| v.map_or(Val::Null, Val::Int);
        let marks = self
            .upstream
            .marks
            .iter()
            .map(|(id, m)| (id.clone(), mark_val(*m)))
            .collect();
        StateChange {
            step: step.clone(),
            key: Val::str(CLOCK_KEY),
            value: Some(Val::Map(Arc::new(vec![
                (Arc::from("maxEvent"), opt(self.max_event)),
                (Arc::from("closed"), opt(self.closed)),
                (Arc::from("upstream"), Val::Map(Arc::new(marks))),
                (
                    Arc::from("partitions"),
                    Val::Int(self.upstream.partitions as i64),
                ),
            ]))),
        }
    }

    /// The clock from its changelog entry.
    pub(crate) fn from_val(v: &Val) -> Result<Clock, &'static str> {
        let get = |v: &Val, name| match v.field(name) {
            None | Some(Val::Null) => Ok(None),
            Some(Val::Int(i)) => Ok(Some(*i)),
            _ => Err("the watermark clock is not numbers"),
        };
        let mut upstream = Upstream {
            marks: BTreeMap::new(),
            partitions: usize::try_from(get(v, "partitions")?.unwrap_or(0))
                .map_err(|_| "a partition count is negative")?,
        };
        if let Some(Val::Map(marks)) = v.field("upstream") {
            for (id, m) in marks.iter() {
                upstream.marks.insert(id.clone(), mark_from_val(m)?);
            }
        }
        Ok(Clock {
            max_event: get(v, "maxEvent")?,
            closed: get(v, "closed")?,
            upstream,
        })
    }
}

/// A mark as the value of a repartition topic's watermark record (and of the changelog).
pub fn mark_val(m: Mark) -> Val {
    Val::Map(Arc::new(mark_fields(m)))
}

fn mark_fields(m: Mark) -> Vec<(Arc<str>, Val)> {
    vec![
        (
            Arc::from("watermark"),
            m.watermark.map_or(Val::Null, Val::Int),
        ),
        (Arc::from("idle"), Val::Bool(m.idle)),
    ]
}

/// The inverse of [`mark_val`].
///
/// # Errors
/// A value that is not a mark.
pub fn mark_from_val(v: &Val) -> Result<Mark, &'static str> {
    Ok(Mark {
        watermark: match v.field("watermark") {
            None | Some(Val::Null) => None,
            Some(Val::Int(i)) => Some(*i),
            _ => return Err("a watermark is not a number"),
        },
        idle: matches!(v.field("idle"), Some(Val::Bool(true))),
    })
}

/// A partition's watermark record for the stage after a shuffle: key `topic/partition`, value
/// its mark and the number of input partitions of the stage before.
pub fn marker(topic: &str, partition: i32, mark: Mark, partitions: usize) -> (Val, Val) {
    let mut v = mark_fields(mark);
    v.push((Arc::from("partitions"), Val::Int(partitions as i64)));
    (
        Val::str(&format!("{topic}/{partition}")),
        Val::Map(Arc::new(v)),
    )
}

/// The inverse of [`marker`]: the partition, its mark, and the partition count.
///
/// # Errors
/// A record that is not a watermark record.
pub fn read_marker(key: Val, value: &Val) -> Result<(Arc<str>, Mark, usize), &'static str> {
    let Val::Str(id) = key else {
        return Err("a watermark record's key is not a partition");
    };
    let n = match value.field("partitions") {
        Some(Val::Int(n)) if *n > 0 => {
            usize::try_from(*n).map_err(|_| "a partition count is out of range")?
        }
        _ => return Err("a watermark record has no partition count"),
    };
    Ok((id, mark_from_val(value)?, n))
}

/// The event-time header of a repartition record: `<event ms>:<watermark ms>`.
pub fn event_header(time: i64, against: i64) -> String {
    format!("{time}:{against}")
}

/// The inverse of [`event_header`].
///
/// # Errors
/// A header that is not `<event ms>:<watermark ms>`, with what it should be.
pub fn read_event_header(h: &[u8]) -> Result<(i64, i64), String> {
    let parsed = std::str::from_utf8(h).ok().and_then(|s| {
        let (t, w) = s.split_once(':')?;
        Some((t.parse().ok()?, w.parse().ok()?))
    });
    parsed.ok_or_else(|| format!("the {EVENT_TIME_HEADER} header is not <event ms>:<watermark ms>"))
}

/// The changelog key of the clock, beside the window entries (which are lists).
pub(crate) const CLOCK_KEY: &str = "watermark";

/// The step id the clock is logged under in a stage without an event-time window (the stage
/// before a shuffle): no step id can start with `@`.
pub const CLOCK_STEP: &str = "@watermark";
