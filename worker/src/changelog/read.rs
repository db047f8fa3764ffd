//! Reading a worker's partitions of the changelog from the log start to the end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::snapshot::Snapshot;
use super::Marker;
use crate::client::{self, Identity, SourceContext};
use crate::error::{Error, Result};
use crate::expr::Val;
use crate::pipeline::StateChange;
use crate::plan::TopicPartition;
use crate::spec::JobSpec;
use crate::value::codec;

/// Longest wait for the next changelog record before the restore fails (and is retried by
/// the worker's restart).
const STALL: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One owned input partition's part of the changelog.
#[derive(Default)]
pub(super) struct PartitionLog {
    /// Changes up to the last marker, oldest first.
    pub changes: Vec<StateChange>,
    pub marker: Option<Marker>,
    /// Changes after the last marker: a batch that did not finish logging.
    pub dropped_tail: usize,
}

#[derive(Default)]
struct Building {
    log: PartitionLog,
    pending: Vec<StateChange>,
}

/// The changelog of each owned partition, parallel to `owned`, and how many changelog
/// records were read. A snapshot of a changelog partition (see [`super::snapshot`]) seeds its
/// inputs' logs and the reading starts at its offset, when that offset is inside the log.
pub(super) fn partition_logs(
    spec: &JobSpec,
    id: &Identity,
    group: &str,
    topic: &str,
    owned: &[TopicPartition],
    mut snapshots: HashMap<i32, Snapshot>,
) -> Result<(Vec<PartitionLog>, usize)> {
    let consumer: BaseConsumer<SourceContext> = client::consumer(&spec.source.kafka, id, group)
        .set("client.id", id.client_id("restore"))
        .create_with_context(SourceContext::default())
        .map_err(Error::kafka("creating the changelog reader"))?;
    let index: HashMap<(&str, i32), usize> = owned
        .iter()
        .enumerate()
        .map(|(i, tp)| ((&*tp.topic, tp.partition), i))
        .collect();
    let mut partitions: Vec<i32> = owned.iter().map(|tp| tp.partition).collect();
    partitions.sort_unstable();
    partitions.dedup();

    // Each partition is read up to the end it had when the worker started: nothing else
    // writes to this worker's partitions of the changelog.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    let mut built: Vec<Building> = owned.iter().map(|_| Building::default()).collect();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, REQUEST_TIMEOUT)
            .map_err(Error::kafka("changelog watermarks"))?;
        let mut start = low;
        if let Some(snap) = snapshots.remove(&p) {
            if (low..=high).contains(&snap.offset) {
                start = snap.offset;
                for input in snap.inputs {
                    if let Some(&i) = index.get(&(&*input.topic, p)) {
                        built[i].log.changes = input.changes;
                        built[i].log.marker = input.marker;
                    }
                }
            } else {
                tracing::warn!(topic, partition = p, snapshot = snap.offset, low, high, "ignoring a local state snapshot outside the changelog (was the topic recreated?); reading the whole changelog");
            }
        }
        if high > start {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset(start))
                .map_err(Error::kafka("building a partition list"))?;
        }
    }
    let mut read = 0usize;
    if ends.is_empty() {
        return Ok((built.into_iter().map(|b| b.log).collect(), read));
    }
    consumer
        .assign(&tpl)
        .map_err(Error::kafka("assigning the changelog"))?;
    let mut last = Instant::now();
    while !ends.is_empty() {
        if last.elapsed() > STALL {
            return Err(Error::Fatal(format!(
                "reading changelog topic {topic:?}: no record for {STALL:?} with partitions {:?} unfinished",
                ends.keys().collect::<Vec<_>>()
            )));
        }
        let m = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ends.remove(&p);
                continue;
            }
            Some(Err(e)) => return Err(Error::kafka("reading the changelog")(e)),
            Some(Ok(m)) => m,
        };
        last = Instant::now();
        read += 1;
        let (p, offset) = (m.partition(), m.offset());
        if ends.get(&p).is_some_and(|&end| offset + 1 >= end) {
            ends.remove(&p);
        }
        let at = || format!("changelog topic {topic:?} partition {p} offset {offset}");
        let key = m
            .key()
            .ok_or_else(|| unreadable(&at(), "a record has no key"))
            .and_then(|k| codec::decode(k).map_err(|e| unreadable(&at(), &e.to_string())))?;
        let Val::List(parts) = &key else {
            return Err(unreadable(&at(), "a key is not a list"));
        };
        let Some(Val::Str(input)) = parts.first() else {
            return Err(unreadable(&at(), "a key names no input topic"));
        };
        let Some(&i) = index.get(&(&**input, p)) else {
            continue;
        };
        let b = &mut built[i];
        match parts.as_slice() {
            [_] => {
                let value = m
                    .payload()
                    .ok_or_else(|| unreadable(&at(), "a marker has no value"))?;
                let marker = decode_marker(value).map_err(|e| unreadable(&at(), &e))?;
                b.log.changes.append(&mut b.pending);
                b.log.marker = Some(marker);
            }
            [_, Val::Str(step), state_key] => {
                let value = match m.payload() {
                    None => None,
                    Some(v) => {
                        Some(codec::decode(v).map_err(|e| unreadable(&at(), &e.to_string()))?)
                    }
                };
                b.pending.push(StateChange {
                    step: Arc::clone(step),
                    key: state_key.clone(),
                    value,
                });
            }
            _ => return Err(unreadable(&at(), "a key has an unknown shape")),
        }
    }
    let logs = built
        .into_iter()
        .map(|mut b| {
            b.log.dropped_tail = b.pending.len();
            b.log
        })
        .collect();
    Ok((logs, read))
}

fn unreadable(at: &str, what: &str) -> Error {
    Error::Fatal(format!(
        "{at} cannot be read ({what}): the topic was written by something other than this job's workers, or by a newer weir-worker; run a worker that can read it, or delete the topic to start all keyed state empty"
    ))
}

fn decode_marker(bytes: &[u8]) -> std::result::Result<Marker, String> {
    Marker::from_val(&codec::decode(bytes).map_err(|e| e.to_string())?)
}
