//! Windows over event time: tumbling, sliding and session windows per key, closed by the
//! watermark, whatever batches the records came in.
//!
//! Whether a record is late is decided by the watermark its partition had when the record was
//! read (the largest event time before it, minus the delay) or by the watermark windows were
//! closed at, whichever is further: both depend on the input alone, not on how it was batched,
//! so the same input puts the same records in the same windows live, from a backlog in one
//! batch, or after restarts. A window closes at the end of a batch whose watermark passed its
//! end plus the allowed lateness, and is written once then.
//!
//! A fixed window (tumbling or sliding) of a record at `t` starts at a multiple of the slide in
//! `(t - length, t]`. A session starts as `[t, t + gap)` and joins every open session of its key
//! it overlaps, so a record in the gap between two sessions makes them one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::aggregate::{total_order, Acc, AggKind};
use super::change::{StateChange, StepUpdate};
use crate::expr::{EvalError, Val};
use crate::spec::LatePolicy;

/// The window kinds of event time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Tumbling when `slide == length`.
    Fixed {
        length: i64,
        slide: i64,
    },
    Session {
        gap: i64,
    },
}

/// A compiled event-time `window` on an aggregate step.
#[derive(Debug)]
pub struct EventWindowOp {
    pub kind: AggKind,
    pub shape: Shape,
    /// Milliseconds after the watermark passes a window's end that it still takes records.
    pub lateness: i64,
    pub late: LatePolicy,
    /// Emit a changed window every batch before it closes, too.
    pub every_batch: bool,
}

impl EventWindowOp {
    /// Calls `f` with `(start, end)` of each window a record at `t` falls in that is still
    /// open at watermark `wm`, oldest first; `false` when there is none (the record is late).
    pub(crate) fn each_window(&self, t: i64, wm: i64, mut f: impl FnMut(i64, i64)) -> bool {
        let mut any = false;
        match self.shape {
            Shape::Fixed { length, slide } => {
                let last = t - t.rem_euclid(slide);
                let mut start = last - (length / slide - 1) * slide;
                while start <= last {
                    let end = start.saturating_add(length);
                    if end.saturating_add(self.lateness) > wm {
                        f(start, end);
                        any = true;
                    }
                    start += slide;
                }
            }
            // A session that could take this record has an end after `t`; one closed at `wm`
            // ended at or before `wm - lateness`. So a record at or behind that is late.
            Shape::Session { gap } => {
                if t.saturating_add(self.lateness) > wm {
                    f(t, t.saturating_add(gap));
                    any = true;
                }
            }
        }
        any
    }
}

/// One open window of one key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Win {
    pub start: i64,
    pub end: i64,
    pub acc: Acc,
}

/// What a batch changed, so that a replay of it can take it back.
#[derive(Debug)]
enum Undo {
    /// The window of `key` starting at `start` was `old` (`None`: there was none).
    Win {
        key: Val,
        start: i64,
        old: Option<Win>,
    },
    /// Entries taken from the close index.
    Closed(i64, Vec<(Val, i64)>),
}

/// A part whose reduce failed: its key and the error.
pub(crate) type Failed = (Val, EvalError);

/// A window a batch changed: its key and start.
pub(crate) type Touched = (Val, i64);

/// A window result: key, start, end and the aggregate's result.
pub(crate) type Fired = (Val, i64, i64, Val);

/// One event-time window step's state in one partition.
#[derive(Debug, Default)]
pub struct EventWindowState {
    /// Open windows per key, by start.
    open: HashMap<Val, Vec<Win>>,
    /// Open windows by end (key, start), to close them in order; an entry whose window is
    /// gone or has grown (a session) is skipped.
    ends: BTreeMap<i64, Vec<(Val, i64)>>,
    undo: Vec<Undo>,
}

impl EventWindowState {
    /// Takes back the last batch (before it is applied again).
    pub(crate) fn rollback(&mut self) {
        for u in std::mem::take(&mut self.undo).into_iter().rev() {
            match u {
                Undo::Win { key, start, old } => self.put(&key, start, old),
                Undo::Closed(end, entries) => self.ends.entry(end).or_default().extend(entries),
            }
        }
    }

    /// Starts a batch: what it changes can be taken back.
    pub(crate) fn begin(&mut self) {
        self.undo.clear();
    }

    fn get(&self, key: &Val, start: i64) -> Option<&Win> {
        let wins = self.open.get(key)?;
        wins.binary_search_by_key(&start, |w| w.start)
            .ok()
            .map(|i| &wins[i])
    }

    /// Sets (or with `None` removes) a window, without undo or changelog.
    fn put(&mut self, key: &Val, start: i64, win: Option<Win>) {
        let wins = self.open.entry(key.clone()).or_default();
        match (wins.binary_search_by_key(&start, |w| w.start), win) {
            (Ok(i), Some(w)) => wins[i] = w,
            (Err(i), Some(w)) => wins.insert(i, w),
            (Ok(i), None) => {
                wins.remove(i);
            }
            (Err(_), None) => {}
        }
        if wins.is_empty() {
            self.open.remove(key);
        }
    }

    /// Sets a window, with its undo and its changelog entry.
    fn set(&mut self, key: &Val, start: i64, win: Option<Win>, up: &mut StepUpdate<'_>) {
        let old = self.get(key, start).cloned();
        up.changes.push(StateChange {
            step: up.step.clone(),
            key: part_key(start, key),
            value: win.as_ref().map(win_val),
        });
        if let Some(w) = &win {
            if old.as_ref().is_none_or(|o| o.end != w.end) {
                self.ends
                    .entry(w.end)
                    .or_default()
                    .push((key.clone(), start));
            }
        }
        self.put(key, start, win);
        self.undo.push(Undo::Win {
            key: key.clone(),
            start,
            old,
        });
    }

    /// Adds a batch's parts: per `(start, key)` (a session's: the record's time) the
    /// accumulator of its on-time records, sorted by start and key. Returns the windows the
    /// batch changed, as `(key, start)`.
    ///
    /// # Errors
    /// Only a user's reduce can fail; that part is then left out and reported with its key.
    pub(crate) fn apply(
        &mut self,
        op: &EventWindowOp,
        parts: Vec<(Val, i64, Acc)>,
        up: &mut StepUpdate<'_>,
    ) -> (Vec<Touched>, Vec<Failed>) {
        let mut touched = Vec::with_capacity(parts.len());
        let mut failed = Vec::new();
        for (key, start, part) in parts {
            let r = match op.shape {
                Shape::Fixed { length, .. } => self.add_fixed(op, &key, start, length, part, up),
                Shape::Session { gap } => self.add_session(op, &key, start, gap, part, up),
            };
            match r {
                Ok(s) => touched.push((key, s)),
                Err(e) => failed.push((key, e)),
            }
        }
        (touched, failed)
    }

    fn add_fixed(
        &mut self,
        op: &EventWindowOp,
        key: &Val,
        start: i64,
        length: i64,
        part: Acc,
        up: &mut StepUpdate<'_>,
    ) -> Result<i64, EvalError> {
        let win = match self.get(key, start) {
            Some(w) => {
                let mut w = w.clone();
                w.acc.merge(&op.kind, key, &part)?;
                w
            }
            None => Win {
                start,
                end: start.saturating_add(length),
                acc: part,
            },
        };
        self.set(key, start, Some(win), up);
        Ok(start)
    }

    /// Joins the session `[t, t + gap)` with every open session of `key` it overlaps,
    /// oldest first (a reduce need not commute).
    fn add_session(
        &mut self,
        op: &EventWindowOp,
        key: &Val,
        t: i64,
        gap: i64,
        part: Acc,
        up: &mut StepUpdate<'_>,
    ) -> Result<i64, EvalError> {
        let end = t.saturating_add(gap);
        let mut pieces: Vec<Win> = self
            .open
            .get(key)
            .map(|wins| {
                wins.iter()
                    .filter(|w| w.start < end && t < w.end)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let joined: Vec<i64> = pieces.iter().map(|w| w.start).collect();
        let own = Win {
            start: t,
            end,
            acc: part,
        };
        // Sorted by start, the first piece's start is the session's.
        let at = pieces.partition_point(|w| w.start <= t);
        pieces.insert(at, own);
        let mut pieces = pieces.into_iter();
        let Some(mut merged) = pieces.next() else {
            return Ok(t);
        };
        for w in pieces {
            merged.acc.merge(&op.kind, key, &w.acc)?;
            merged.end = merged.end.max(w.end);
        }
        for s in joined {
            if s != merged.start {
                self.set(key, s, None, up);
            }
        }
        let start = merged.start;
        self.set(key, start, Some(merged), up);
        Ok(start)
    }

    /// Closes every window whose end plus the allowed lateness is at or before `wm`, oldest
    /// end first, and returns their results.
    pub(crate) fn close(
        &mut self,
        op: &EventWindowOp,
        wm: i64,
        up: &mut StepUpdate<'_>,
    ) -> Vec<Fired> {
        let mut out = Vec::new();
        let due: Vec<i64> = self
            .ends
            .range(..=wm.saturating_sub(op.lateness))
            .map(|(e, _)| *e)
            .collect();
        for end in due {
            let Some(entries) = self.ends.remove(&end) else {
                continue;
            };
            let mut closed = Vec::new();
            for (key, start) in &entries {
                if let Some(w) = self.get(key, *start).filter(|w| w.end == end).cloned() {
                    self.set(key, *start, None, up);
                    closed.push((key.clone(), w.start, w.end, w.acc.result()));
                }
            }
            self.undo.push(Undo::Closed(end, entries));
            closed.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| total_order(&a.0, &b.0)));
            out.extend(closed);
        }
        out
    }

    /// The current results of windows a batch changed that are still open (early updates).
    pub(crate) fn peek(&self, touched: &[Touched]) -> Vec<Fired> {
        let mut out: Vec<Fired> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (key, start) in touched {
            if let Some(w) = self.get(key, *start) {
                if seen.insert((key.clone(), *start)) {
                    out.push((key.clone(), w.start, w.end, w.acc.result()));
                }
            }
        }
        out.sort_by(|a, b| {
            a.2.cmp(&b.2)
                .then(a.1.cmp(&b.1))
                .then_with(|| total_order(&a.0, &b.0))
        });
        out
    }

    /// Ends a batch: adds its on-time parts (keyed by [`part_key`]), closes the windows
    /// `watermark` passed, and returns what to write, as (key, window value): the closed
    /// windows (`final`), with `every_batch` the open windows the batch changed (`early`), and
    /// the batch's late records' aggregates (keyed by [`late_key`], `late`). A part whose
    /// reduce fails is returned with its key instead.
    pub(crate) fn end_batch(
        &mut self,
        op: &EventWindowOp,
        parts: Vec<(Val, Acc)>,
        late: Vec<(Val, Acc)>,
        watermark: Option<i64>,
        up: &mut StepUpdate<'_>,
    ) -> (Vec<(Val, Val)>, Vec<Failed>) {
        let parts = parts
            .into_iter()
            .filter_map(|(k, acc)| match k {
                Val::List(l) => match l.as_slice() {
                    [Val::Int(start), key] => Some((key.clone(), *start, acc)),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        let (touched, failed) = self.apply(op, parts, up);
        let mut emitted: Vec<(Fired, &'static str)> = Vec::new();
        if let Some(wm) = watermark {
            emitted.extend(self.close(op, wm, up).into_iter().map(|f| (f, "final")));
        }
        if op.every_batch {
            emitted.extend(self.peek(&touched).into_iter().map(|f| (f, "early")));
        }
        for (k, acc) in late {
            if let Val::List(l) = &k {
                if let [Val::Int(start), Val::Int(end), key] = l.as_slice() {
                    emitted.push(((key.clone(), *start, *end, acc.result()), "late"));
                }
            }
        }
        let results = emitted
            .into_iter()
            .map(|((key, start, end, v), emit)| (key, window_value(start, end, v, emit)))
            .collect();
        (results, failed)
    }

    /// Every open window, as the changes that would rebuild it (a snapshot).
    pub(crate) fn dump(&self, step: &Arc<str>, out: &mut Vec<StateChange>) {
        for (key, wins) in &self.open {
            for w in wins {
                out.push(StateChange {
                    step: step.clone(),
                    key: part_key(w.start, key),
                    value: Some(win_val(w)),
                });
            }
        }
    }

    /// Puts back one window read from the changelog.
    pub(crate) fn restore_win(&mut self, key: &Val, start: i64, win: Option<(i64, Acc)>) {
        match win {
            Some((end, acc)) => {
                self.ends.entry(end).or_default().push((key.clone(), start));
                self.put(key, start, Some(Win { start, end, acc }));
            }
            None => self.put(key, start, None),
        }
    }
}

fn win_val(w: &Win) -> Val {
    Val::Map(Arc::new(vec![
        (Arc::from("end"), Val::Int(w.end)),
        (Arc::from("acc"), w.acc.to_val()),
    ]))
}

/// The key a record's part of a window accumulates under in a batch, and the window's key in
/// the changelog: the window's start and the record's key (a session's start is the record's
/// time).
pub(crate) fn part_key(start: i64, key: &Val) -> Val {
    Val::List(Arc::new(vec![Val::Int(start), key.clone()]))
}

/// The key a late record accumulates under, for a late update: its window and key.
pub(crate) fn late_key(start: i64, end: i64, key: &Val) -> Val {
    Val::List(Arc::new(vec![Val::Int(start), Val::Int(end), key.clone()]))
}

/// The output value of a window: its bounds (RFC 3339), the result, and which emission it is
/// (`final` when it closes, `early` before, `late` for late records after).
fn window_value(start: i64, end: i64, result: Val, emit: &'static str) -> Val {
    Val::Map(Arc::new(vec![
        (
            Arc::from("window"),
            Val::Map(Arc::new(vec![
                (Arc::from("start"), Val::str(&time_text(start))),
                (Arc::from("end"), Val::str(&time_text(end))),
            ])),
        ),
        (Arc::from("value"), result),
        (Arc::from("emit"), Val::str(emit)),
    ]))
}

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds when not whole seconds).
pub fn time_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    )
}
