//! A stream-table join: each record looks up the row of its join key in a table every worker
//! holds whole (a global table), as of the record's own time.
//!
//! A table read from a topic keeps, per key, the versions written within its history, each
//! with the Kafka timestamp it was written at; a record of time `t` sees the latest version
//! at or before `t` (a tombstone is "no row"). So a record sees the table as it was when the
//! record happened, whichever was read first, and a replayed batch sees what it saw the first
//! time. A file table has one version per key, replaced whole when the file changes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use crate::expr::{Program, Val};
use crate::spec::JoinKind;

/// The time a version without one (a file's rows, a record without a timestamp) is at.
pub const ALWAYS: i64 = i64::MIN;

/// A key's versions, oldest first: the time each was written at, and the row (None: deleted).
type Versions = Vec<(i64, Option<Val>)>;

/// A table's rows by key.
#[derive(Default)]
pub struct Table {
    rows: RwLock<HashMap<Arc<str>, Versions>>,
    /// The largest record time looked up: versions older than it by the history are let go.
    newest_lookup: AtomicI64,
}

impl Table {
    /// Adds a version of `key`'s row (None: deleted) written at `at`; versions of one time
    /// keep their order of arrival, the last winning.
    pub fn put(&self, key: &str, at: i64, row: Option<Val>) {
        let mut rows = self.rows.write().unwrap_or_else(|e| e.into_inner());
        let versions = rows.entry(Arc::from(key)).or_default();
        let i = versions.partition_point(|(t, _)| *t <= at);
        versions.insert(i, (at, row));
    }

    /// Replaces every row with `rows`, valid at any time (a file's rows).
    pub fn replace(&self, rows: HashMap<Arc<str>, Val>) {
        let new = rows
            .into_iter()
            .map(|(k, v)| (k, vec![(ALWAYS, Some(v))]))
            .collect();
        *self.rows.write().unwrap_or_else(|e| e.into_inner()) = new;
    }

    /// The row of `key` as of `at`: its latest version at or before it.
    pub fn lookup(&self, key: &str, at: i64) -> Option<Val> {
        self.newest_lookup.fetch_max(at, Ordering::Relaxed);
        let rows = self.rows.read().unwrap_or_else(|e| e.into_inner());
        let versions = rows.get(key)?;
        let i = versions.partition_point(|(t, _)| *t <= at);
        versions[..i].last().and_then(|(_, row)| row.clone())
    }

    /// Lets go of versions no lookup within `history` of the newest one can see: per key,
    /// all but the latest version at or before the cutoff (and a key whose last word before
    /// it is a deletion, with nothing after). That version then answers for any earlier
    /// time too: a record older than the history sees the table as of the cutoff.
    pub fn prune(&self, history_ms: i64) {
        let newest = self.newest_lookup.load(Ordering::Relaxed);
        if newest == ALWAYS {
            return;
        }
        let cutoff = newest.saturating_sub(history_ms);
        let mut rows = self.rows.write().unwrap_or_else(|e| e.into_inner());
        rows.retain(|_, versions| {
            let seen = versions.partition_point(|(t, _)| *t <= cutoff);
            if seen > 0 {
                versions.drain(..seen - 1);
                versions[0].0 = ALWAYS;
            }
            !(versions.len() == 1 && versions[0].1.is_none() && versions[0].0 == ALWAYS)
        });
    }

    /// Keys with a version, for the table's size in logs.
    pub fn len(&self) -> usize {
        self.rows.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A compiled join step.
pub struct JoinOp {
    /// The record's side of the join; None: the record's key.
    pub on: Option<Program>,
    pub kind: JoinKind,
    pub table: Arc<Table>,
}

/// A join key as the table's keys are written: text, a number as its digits. Null, lists
/// and maps match no row.
pub fn key_text(v: &Val) -> Option<Cow<'_, str>> {
    match v {
        Val::Str(s) => Some(Cow::Borrowed(&**s)),
        Val::Int(n) => Some(Cow::Owned(n.to_string())),
        Val::UInt(n) => Some(Cow::Owned(n.to_string())),
        Val::Bool(b) => Some(Cow::Owned(b.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: i64) -> Option<Val> {
        Some(Val::Int(n))
    }

    #[test]
    fn a_lookup_sees_the_latest_version_at_or_before_its_time() {
        let t = Table::default();
        t.put("u", 100, row(1));
        t.put("u", 300, None);
        t.put("u", 200, row(2));
        // Two versions of one time: the later arrival wins.
        t.put("u", 400, row(3));
        t.put("u", 400, row(4));
        assert_eq!(t.lookup("u", 99), None);
        assert_eq!(t.lookup("u", 100), row(1));
        assert_eq!(t.lookup("u", 250), row(2));
        assert_eq!(t.lookup("u", 300), None);
        assert_eq!(t.lookup("u", 400), row(4));
        assert_eq!(t.lookup("v", 400), None);
        assert_eq!(key_text(&Val::Int(7)).as_deref(), Some("7"));
        assert_eq!(key_text(&Val::Null), None);
    }

    #[test]
    fn pruning_keeps_what_a_lookup_within_the_history_can_see() {
        let t = Table::default();
        t.put("u", 100, row(1));
        t.put("u", 200, row(2));
        t.put("u", 900, row(9));
        t.put("gone", 100, row(1));
        t.put("gone", 150, None);
        t.lookup("u", 1_000);
        t.prune(700);
        // The cutoff is 300: the version of 200 still answers a lookup at 300 to 899.
        assert_eq!(t.lookup("u", 300), row(2));
        assert_eq!(t.lookup("u", 950), row(9));
        // Older than the history: the table as of the cutoff.
        assert_eq!(t.lookup("u", 150), row(2));
        assert_eq!(t.len(), 1, "a key deleted before the cutoff is let go");
        let file = Table::default();
        file.replace([(Arc::from("k"), Val::Bool(true))].into_iter().collect());
        assert_eq!(file.lookup("k", i64::MIN + 1), Some(Val::Bool(true)));
    }
}
