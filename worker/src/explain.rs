//! `weir-worker explain`: the steps a job runs, as the worker will run them: SQL steps
//! compiled, the shuffles Weir inserts, each stage with its input, consumer group, steps and
//! where it writes.

use std::fmt::Write;

use crate::spec::{JobFile, StepSpec};

/// The job's plan as text, one stage after another.
pub fn explain(job: &JobFile) -> String {
    let spec = &job.spec;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "job {} (namespace {}), batch interval {}",
        job.name, job.namespace, spec.batch_interval
    );
    if let Some(t) = &spec.source.event_time {
        let _ = writeln!(out, "event time: {t}");
    }
    for stage in crate::stages::split(job) {
        let s = &stage.job.spec;
        let k = &s.source.kafka;
        let _ = writeln!(
            out,
            "\nstage {}: reads {} ({}, from {}), group {}",
            stage.name,
            k.topics.join(", "),
            name(&s.source.format).unwrap_or_else(|| "the worker's own encoding".into()),
            k.starting_offsets,
            s.group_id(&job.namespace, &job.name),
        );
        let width = s.pipeline.iter().map(|p| p.id.len()).max().unwrap_or(0);
        for step in &s.pipeline {
            let _ = writeln!(out, "  {:width$}  {}", step.id, describe(step));
        }
        match (&stage.writes, &s.sink.kafka) {
            (Some(topic), Some(k)) => {
                let what = match (k.partials, &k.partition_by) {
                    (Some(agg), _) => format!("one {agg} partial per key and batch"),
                    (None, Some(by)) => format!(
                        "every record, in the partition of table {} that holds its join key {} ({})",
                        by.table,
                        by.on.as_deref().unwrap_or("key"),
                        by.partitioner
                    ),
                    (None, None) => "every record".into(),
                };
                let delivery = name(&k.delivery).unwrap_or_default();
                let _ = writeln!(out, "  -> {topic} (repartition topic: {what}, {delivery})");
            }
            _ => {
                let sink = serde_json::to_string(&s.sink).unwrap_or_default();
                let _ = writeln!(out, "  -> sink {sink}");
            }
        }
    }
    out
}

/// A step's operation as the spec writes it (without its id), in one line.
fn describe(step: &StepSpec) -> String {
    let mut v = serde_json::to_value(step).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.remove("id");
    }
    let fields = v
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}: {s}"),
                    other => format!("{k}: {other}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    if step.partial {
        format!("{fields} (partials: combined per key before the shuffle)")
    } else {
        fields
    }
}

/// An enum's name as the spec writes it.
fn name<T: serde::Serialize>(v: &T) -> Option<String> {
    match serde_json::to_value(v).ok()? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}
