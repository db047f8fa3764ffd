//! The checks of a join step: one source for the table, and the record's side of the join.

use super::Checker;
use crate::expr;
use crate::spec::{IntervalJoinSpec, JobSpec, JoinSpec, LatePolicy};

pub(super) fn check(c: &mut Checker, at: &str, j: &JoinSpec, vars: &[&str]) {
    let t = &j.table;
    let sources = [t.topic.is_some(), t.file.is_some(), t.config_map.is_some()];
    if sources.iter().filter(|s| **s).count() != 1 {
        c.err(
            format!("{at}.join.table"),
            "sets exactly one of topic (a compacted Kafka topic of rows), file and configMap (a file of rows)",
        );
    }
    if let Some(topic) = &t.topic {
        c.topic(format!("{at}.join.table.topic"), topic);
    } else {
        for (field, set) in [
            ("bootstrapServers", t.bootstrap_servers.is_some()),
            ("history", t.history.is_some()),
        ] {
            if set {
                c.err(
                    format!("{at}.join.table.{field}"),
                    "belongs to a table read from a topic; remove it for a file or ConfigMap",
                );
            }
        }
    }
    if t.file.as_deref().is_some_and(|f| f.trim().is_empty()) {
        c.err(
            format!("{at}.join.table.file"),
            "is empty; name the file of rows",
        );
    }
    if let Some(cm) = &t.config_map {
        c.config_map(&format!("{at}.join.table.configMap"), cm);
    }
    if t.history.is_some_and(|h| h.as_millis() == 0) {
        c.err(format!("{at}.join.table.history"), "must be longer than 0s");
    }
    if t.partitioned && t.topic.is_none() {
        c.err(
            format!("{at}.join.table.partitioned"),
            "applies to a table read from a topic; a file or ConfigMap table is held whole by every worker",
        );
    }
    if t.partitioner.is_some() && !t.partitioned {
        c.err(
            format!("{at}.join.table.partitioner"),
            "says how a partitioned table's producers placed its keys; set partitioned: true or remove it",
        );
    }
    match &j.on {
        // A partitioned join runs behind the shuffle to the table's partitioning, where the
        // record's topic, partition, offset and headers are the repartition record's.
        Some(e) if t.partitioned => c.expr(format!("{at}.join.on"), e, &["key", "value"]),
        Some(e) => c.expr(format!("{at}.join.on"), e, vars),
        None => {}
    }
}

/// An interval join: the watermark it needs, its side test (over what survives the shuffle
/// before it), and its late policy.
pub(super) fn interval(c: &mut Checker, spec: &JobSpec, at: &str, j: &IntervalJoinSpec) {
    if spec.source.watermark.is_none() {
        c.err(
            format!("{at}.intervalJoin"),
            "joins in event time: set source.watermark (its delay bounds how out of order records may be)",
        );
    }
    if let Err(e) = expr::check(&j.left, &["key", "value"]) {
        let why = e.to_string();
        let hint = if why.contains("unknown variable") {
            "; the join runs behind the shuffle that brings both streams' keys together, where topic, partition, offset, timestamp and headers are the repartition record's: test the value (has(value.clickId)) or tag each side with a select before the keyBy"
        } else {
            ""
        };
        c.err(format!("{at}.intervalJoin.left"), format!("{why}{hint}"));
    }
    match j.late {
        LatePolicy::Update => c.err(
            format!("{at}.intervalJoin.late"),
            "update applies to windows; an interval join drops or dead-letters late records",
        ),
        LatePolicy::DeadLetter if spec.dead_letter.is_none() => c.err(
            format!("{at}.intervalJoin.late"),
            "is deadLetter but the job has no deadLetter topic; set deadLetter.topic",
        ),
        _ => {}
    }
}
