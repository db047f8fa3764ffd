//! Keyed state's durability: every batch's state changes go to a compacted changelog topic
//! before the batch's offsets are committed, and a starting worker rebuilds its partitions'
//! state from it.
//!
//! One topic per job, `<group>-changelog`, with a partition per input partition number; within
//! it each stateful step keeps its own keys. One ordered log per partition is what lets a batch's
//! changes of every step be applied or dropped together: after a batch's changes comes a marker
//! with the offsets the batch covered, and a restart applies changes only up to the last
//! marker. A crash after the marker but before the offset commit leaves state one batch ahead
//! of the committed offsets; the marker says so, and the worker resumes after that batch
//! instead of counting it twice.
//!
//! Records: key `[input topic, step id, state key]` with the new value or a tombstone;
//! marker key `[input topic]` with `{from, until, batch, types}` (`types`: each stateful step's
//! state type, so a changed pipeline is refused instead of misreading old state).

mod read;
pub mod snapshot;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::{info, warn};

use crate::batch::{BatchOutput, PartitionOutput};
use crate::client::Identity;
use crate::error::{Error, Result};
use crate::expr::Val;
use crate::pipeline::{PartitionState, Pipeline, StateChange};
use crate::plan::TopicPartition;
use crate::producer::KafkaWriter;
use crate::spec::JobSpec;

// Named with the stages' topics and groups, in the contract.
pub use weir_contract::stages::changelog_topic as topic_name;

/// What a partition's last marker says.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub from: i64,
    pub until: i64,
    pub batch: i64,
    /// Step id -> state type, of the pipeline that wrote it.
    pub types: Vec<(String, String)>,
}

/// A marker as the changelog (and a snapshot) stores it; [`Marker::from_val`] reads it back.
fn marker_val(from: i64, until: i64, batch: i64, types: Val) -> Val {
    Val::Map(Arc::new(vec![
        (Arc::from("from"), Val::Int(from)),
        (Arc::from("until"), Val::Int(until)),
        (Arc::from("batch"), Val::Int(batch)),
        (Arc::from("types"), types),
    ]))
}

impl Marker {
    pub(crate) fn to_val(&self) -> Val {
        let types = self
            .types
            .iter()
            .map(|(s, t)| (Arc::from(s.as_str()), Val::str(t)))
            .collect();
        marker_val(self.from, self.until, self.batch, Val::Map(Arc::new(types)))
    }

    pub(crate) fn from_val(v: &Val) -> std::result::Result<Marker, String> {
        let int = |name: &str| match v.field(name) {
            Some(Val::Int(i)) => Ok(*i),
            _ => Err(format!("a marker has no {name}")),
        };
        let types = match v.field("types") {
            Some(Val::Map(m)) => m
                .iter()
                .map(|(step, ty)| match ty {
                    Val::Str(t) => Ok((step.to_string(), t.to_string())),
                    _ => Err("a marker's state type is not a string".to_string()),
                })
                .collect::<std::result::Result<Vec<_>, String>>()?,
            _ => return Err("a marker has no state types".into()),
        };
        Ok(Marker {
            from: int("from")?,
            until: int("until")?,
            batch: int("batch")?,
            types,
        })
    }
}

/// Where an owned partition starts, given its committed offset and its state's last marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// State and offsets agree.
    AtCommitted,
    /// The marked batch was applied to the state but its offsets were never committed.
    AfterLoggedBatch(i64),
    /// The offsets were moved outside the job (a rewind, a reset): state is kept as it is.
    OffsetsMoved { state_until: i64 },
}

/// Decides [`Resume`] for one partition. PURE.
pub fn resume(position: i64, marker: Option<&Marker>) -> Resume {
    match marker {
        None => Resume::AtCommitted,
        Some(m) if m.until == position => Resume::AtCommitted,
        Some(m) if m.from == position => Resume::AfterLoggedBatch(m.until),
        Some(m) => Resume::OffsetsMoved {
            state_until: m.until,
        },
    }
}

/// State rebuilt for a worker's partitions.
pub struct Restored {
    /// Parallel to the owned partitions.
    pub states: Vec<PartitionState>,
    /// (owned index, offset) for partitions to resume after a logged, uncommitted batch.
    pub moves: Vec<(usize, i64)>,
    /// Changes applied, for the log and the tests.
    pub changes: usize,
    /// Changelog records read (after the snapshots, where there were any).
    pub replayed: usize,
    /// Changelog partitions whose replay started from a local snapshot.
    pub from_snapshots: usize,
}

/// How a job's state changes become changelog records: the topic and the state types that
/// each batch's marker carries. Shared by the changelog writer and a transactional sink (given
/// it through [`crate::sink::Sink::log_state_as`]).
pub struct LogFormat {
    topic: String,
    types: Val,
}

impl LogFormat {
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Queues one partition's changes of a batch, then its marker. Nothing is queued for a
    /// partition with no changes and no records.
    ///
    /// # Errors
    /// When a record is refused.
    pub fn send_partition(
        &self,
        w: &mut KafkaWriter,
        tp: &TopicPartition,
        part: &PartitionOutput<'_>,
        batch_time: i64,
    ) -> Result<()> {
        let range = part.range;
        if part.changes.is_empty() && range.until == range.from {
            return Ok(());
        }
        for c in part.changes {
            self.send_change(w, tp, &c.step, &c.key, c.value.as_ref())?;
        }
        let marker = marker_val(range.from, range.until, batch_time, self.types.clone());
        let key = Val::List(Arc::new(vec![Val::Str(tp.topic.clone())]));
        w.send_encoded(&self.topic, Some(tp.partition), &key, Some(&marker))
    }

    fn send_change(
        &self,
        w: &mut KafkaWriter,
        tp: &TopicPartition,
        step: &Arc<str>,
        key: &Val,
        value: Option<&Val>,
    ) -> Result<()> {
        let key = Val::List(Arc::new(vec![
            Val::Str(tp.topic.clone()),
            Val::Str(step.clone()),
            key.clone(),
        ]));
        w.send_encoded(&self.topic, Some(tp.partition), &key, value)
    }
}

/// The changelog of a worker with stateful steps.
pub struct Changelog {
    format: Arc<LogFormat>,
    writer: KafkaWriter,
    /// Each stateful step's id and state type, for the markers a snapshot keeps.
    types: Vec<(String, String)>,
    /// The last marker of each owned partition, parallel to the owned partitions.
    markers: Vec<Option<Marker>>,
    snapshots: Option<Snapshots>,
}

/// Where and how often local snapshots are written.
struct Snapshots {
    dir: PathBuf,
    interval_ms: i64,
    last_ms: i64,
}

// The operator sets it on the pod, so its name is the contract's.
pub use weir_contract::env::STATE_DIR_ENV;

impl Changelog {
    /// The job's changelog, created if missing (compacted, one partition per input partition
    /// number); `None` when the pipeline keeps no state.
    ///
    /// # Errors
    /// When the topic is missing and cannot be created, or has too few partitions.
    pub fn open(
        spec: &JobSpec,
        id: &Identity,
        group: &str,
        pipeline: &Pipeline,
        inputs: &[(String, i32)],
    ) -> Result<Option<Changelog>> {
        let types = pipeline.state_types();
        if types.is_empty() {
            return Ok(None);
        }
        let topic = topic_name(group);
        let needed = inputs.iter().map(|(_, n)| *n).max().unwrap_or(1);
        crate::topics::ensure(
            spec,
            &topic,
            crate::topics::Partitions::AtLeast(needed),
            true,
        )?;
        let writer = KafkaWriter::new(
            &spec.source.kafka.bootstrap_servers,
            &spec.source.kafka,
            id,
            "changelog",
        )?;
        let type_list = types
            .iter()
            .map(|(s, t)| (s.to_string(), t.clone()))
            .collect();
        let types = Val::Map(Arc::new(
            types
                .into_iter()
                .map(|(step, ty)| (step, Val::str(&ty)))
                .collect(),
        ));
        let snapshots = match (
            spec.checkpoint.as_ref().and_then(|c| c.snapshot_interval),
            std::env::var_os(STATE_DIR_ENV),
        ) {
            (Some(every), Some(dir)) => Some(Snapshots {
                dir: PathBuf::from(dir),
                interval_ms: every.as_millis() as i64,
                last_ms: 0,
            }),
            (Some(_), None) => {
                warn!("checkpoint.snapshotInterval is set but {STATE_DIR_ENV} is not: no local snapshots; state is rebuilt from the whole changelog");
                None
            }
            _ => None,
        };
        Ok(Some(Changelog {
            format: Arc::new(LogFormat { topic, types }),
            writer,
            types: type_list,
            markers: Vec::new(),
            snapshots,
        }))
    }

    /// Shared, so a batch can hand it to the sink while the writer is in use.
    pub fn format(&self) -> Arc<LogFormat> {
        Arc::clone(&self.format)
    }

    /// Rebuilds the state of `owned` partitions, dropping the state of steps in `reset`
    /// (and writing tombstones for it, so it stays dropped).
    ///
    /// # Errors
    /// The changelog cannot be read, or holds state that does not fit the pipeline: the
    /// error names the step and says what to do.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &mut self,
        spec: &JobSpec,
        id: &Identity,
        group: &str,
        pipeline: &Pipeline,
        owned: &[TopicPartition],
        positions: &[i64],
        reset: &[String],
    ) -> Result<Restored> {
        let mut seeds = HashMap::new();
        if let Some(snaps) = &self.snapshots {
            for tp in owned {
                if seeds.contains_key(&tp.partition) {
                    continue;
                }
                let path = snapshot::path(&snaps.dir, &self.format.topic, tp.partition);
                match snapshot::load(&path) {
                    Ok(Some(snap)) => {
                        seeds.insert(tp.partition, snap);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "ignoring an unreadable local state snapshot; reading the whole changelog");
                    }
                }
            }
        }
        let from_snapshots = seeds.len();
        let (logs, replayed) =
            read::partition_logs(spec, id, group, &self.format.topic, owned, seeds)?;
        self.markers = logs.iter().map(|l| l.marker.clone()).collect();
        let types = pipeline.state_types();
        let mut restored = Restored {
            states: Vec::with_capacity(owned.len()),
            moves: Vec::new(),
            changes: 0,
            replayed,
            from_snapshots,
        };
        for (i, (tp, log)) in owned.iter().zip(logs).enumerate() {
            if let Some(m) = &log.marker {
                check_types(&self.format.topic, tp, m, &types, reset)?;
            }
            if log.dropped_tail > 0 {
                warn!(partition = %tp, changes = log.dropped_tail, "dropping state changes of a batch that did not finish logging; it runs again");
            }
            let (keep, dropped): (Vec<StateChange>, Vec<StateChange>) = log
                .changes
                .into_iter()
                .partition(|c| !reset.iter().any(|r| **r == *c.step));
            for c in &dropped {
                self.format
                    .send_change(&mut self.writer, tp, &c.step, &c.key, None)?;
            }
            if !dropped.is_empty() {
                info!(partition = %tp, keys = dropped.len(), "dropped the state of steps listed under checkpoint.resetState");
            }
            restored.changes += keep.len();
            let state = pipeline.restore(keep).map_err(|e| {
                Error::Fatal(format!(
                    "{e} (changelog topic {:?}, {tp})",
                    self.format.topic
                ))
            })?;
            restored.states.push(state);
            match resume(positions[i], log.marker.as_ref()) {
                Resume::AtCommitted => {}
                Resume::AfterLoggedBatch(until) => {
                    info!(partition = %tp, committed = positions[i], resume = until, "the last batch's state was logged but its offsets not committed; resuming after it");
                    restored.moves.push((i, until));
                }
                Resume::OffsetsMoved { state_until } => {
                    warn!(partition = %tp, offset = positions[i], state_until, "the group's offsets were moved outside the job; keyed state is kept as it was at offset {state_until} (list steps under checkpoint.resetState to rebuild them from here)");
                }
            }
        }
        self.writer.flush()?;
        Ok(restored)
    }

    /// Logs a batch's state changes and markers; returns once the broker acknowledged them.
    /// The engine calls this after the sink and before committing offsets.
    ///
    /// # Errors
    /// When a record is refused or not acknowledged: the batch is then replayed.
    pub fn write(&mut self, owned: &[TopicPartition], batch: &BatchOutput<'_>) -> Result<()> {
        for (tp, part) in owned.iter().zip(&batch.partitions) {
            self.format
                .send_partition(&mut self.writer, tp, part, batch.batch_time_ms)?;
        }
        self.writer.flush()
    }
}

impl Changelog {
    /// After a batch's offsets are committed: remembers each partition's marker and, when one
    /// is due, writes the local snapshots. A snapshot that cannot be written is logged and
    /// skipped: it is only a cache.
    pub fn batch_done(
        &mut self,
        owned: &[TopicPartition],
        batch: &BatchOutput<'_>,
        states: &[PartitionState],
    ) {
        // The markers are kept only for the snapshots that carry them.
        let Some(snaps) = &mut self.snapshots else {
            return;
        };
        self.markers.resize(owned.len(), None);
        for (m, part) in self.markers.iter_mut().zip(&batch.partitions) {
            if !part.changes.is_empty() || part.range.until != part.range.from {
                *m = Some(Marker {
                    from: part.range.from,
                    until: part.range.until,
                    batch: batch.batch_time_ms,
                    types: self.types.clone(),
                });
            }
        }
        if batch.batch_time_ms - snaps.last_ms < snaps.interval_ms {
            return;
        }
        snaps.last_ms = batch.batch_time_ms;
        let mut partitions: Vec<i32> = owned.iter().map(|tp| tp.partition).collect();
        partitions.sort_unstable();
        partitions.dedup();
        for p in partitions {
            let offset = match self.writer.high_watermark(&self.format.topic, p) {
                Ok(o) => o,
                Err(e) => {
                    warn!(partition = p, error = %e, "skipping a local state snapshot");
                    continue;
                }
            };
            let inputs = owned
                .iter()
                .enumerate()
                .filter(|(_, tp)| tp.partition == p)
                .map(|(i, tp)| snapshot::InputState {
                    topic: tp.topic.clone(),
                    marker: self.markers[i].clone(),
                    changes: states[i].dump(),
                })
                .collect();
            let path = snapshot::path(&snaps.dir, &self.format.topic, p);
            if let Err(e) = snapshot::write(&path, &snapshot::Snapshot { offset, inputs }) {
                warn!(path = %path.display(), error = %e, "could not write a local state snapshot");
            }
        }
    }
}

/// Refuses state written by a step of another type, or by a step this pipeline lacks.
fn check_types(
    topic: &str,
    tp: &TopicPartition,
    marker: &Marker,
    types: &[(Arc<str>, String)],
    reset: &[String],
) -> Result<()> {
    let now: HashMap<&str, &str> = types.iter().map(|(s, t)| (&**s, t.as_str())).collect();
    for (step, old) in &marker.types {
        if reset.contains(step) {
            continue;
        }
        match now.get(step.as_str()) {
            Some(new) if new == old => {}
            Some(new) => {
                return Err(Error::Fatal(format!(
                    "pipeline step {step:?} keeps {new} state, but its state in changelog topic {topic:?} ({tp}) is {old}: keep the step as it was, or list {step:?} under checkpoint.resetState to drop its state and start it empty"
                )))
            }
            None => {
                return Err(Error::Fatal(format!(
                    "changelog topic {topic:?} ({tp}) holds the state of pipeline step {step:?} ({old}), which this pipeline no longer has: if the step was renamed, give it back its id {step:?}; to drop its state, list {step:?} under checkpoint.resetState"
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(from: i64, until: i64) -> Marker {
        Marker {
            from,
            until,
            batch: 0,
            types: vec![],
        }
    }

    #[test]
    fn a_logged_but_uncommitted_batch_is_not_run_again() {
        assert_eq!(resume(100, None), Resume::AtCommitted);
        assert_eq!(resume(100, Some(&marker(40, 100))), Resume::AtCommitted);
        // Crash after the marker, before the commit: the group still says 40.
        assert_eq!(
            resume(40, Some(&marker(40, 100))),
            Resume::AfterLoggedBatch(100)
        );
        // Offsets rewound (or reset) by hand: state is not moved, and neither are offsets.
        assert_eq!(
            resume(10, Some(&marker(40, 100))),
            Resume::OffsetsMoved { state_until: 100 }
        );
        assert_eq!(
            resume(500, Some(&marker(40, 100))),
            Resume::OffsetsMoved { state_until: 100 }
        );
    }
}
