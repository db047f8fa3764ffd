//! The Kafka sink in exactly-once mode.
//!
//! Each input partition has its own transactional producer, with a transactional id made of
//! the job's group, the topic and the partition: whichever worker owns a partition next (after
//! a restart or a rescale) starts a producer with the same id, which fences the old one, so a
//! zombie cannot commit. A partition's batch is one transaction: its output records, its state
//! changes and their marker for the changelog, its dead letters, and its source offsets for
//! the job's group. Readers with `isolation.level=read_committed` see each input record's
//! effect once; a restart resumes each partition from the offsets its last committed
//! transaction stored, with the state that transaction logged.

use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::kafka::{send_marker, send_output, Routes};
use super::{Recovery, Sink};
use crate::batch::BatchOutput;
use crate::changelog::LogFormat;
use crate::client::{self, Identity};
use crate::dead_letter::{self, DeadLetter};
use crate::error::{Error, Result};
use crate::plan::TopicPartition;
use crate::producer::{KafkaWriter, TxnTimes};
use crate::record::Codecs;
use crate::spec::{JobSpec, KafkaSource};

pub struct ExactlyOnceSink {
    source: KafkaSource,
    bootstrap: String,
    id: Identity,
    group: String,
    group_meta: ConsumerGroupMetadata,
    /// Where each result goes (the sink's topic, and its routes).
    routes: Routes,
    shuffle: bool,
    partials: Option<&'static str>,
    dead_topic: Option<String>,
    /// How state changes become changelog records, when the pipeline keeps state.
    changelog: Option<Arc<LogFormat>>,
    /// The sink's schema'd format, for every producer's values.
    codecs: Codecs,
    /// Parallel to `owned`; made when the engine says which partitions the worker owns.
    owned: Vec<TopicPartition>,
    txn_timeout: std::time::Duration,
    producers: Vec<KafkaWriter>,
    /// The topic's partition count, once a watermark record needed it.
    partitions: Option<i32>,
}

/// Transactional calls made at once, by [`ExactlyOnceSink::take_over`] (starting producers)
/// and by each batch's commit: each is a few round trips to the transaction coordinator, so a
/// handful of threads hides the latency without hundreds of requests at once.
const MAX_PARALLEL: usize = 16;

/// The transaction timeout for a batch interval: a transaction is open only while a batch's
/// results are produced and committed (the batch is read and run before it begins), so a few
/// intervals are ample. A worker that dies inside a transaction leaves it open until this
/// timeout (or until its successor's producer aborts it): read_committed readers of the output
/// wait that long, so it is kept short, within 10 s to 60 s (Kafka's default is 60 s).
pub fn transaction_timeout(batch_interval: std::time::Duration) -> std::time::Duration {
    (batch_interval * 5).clamp(
        std::time::Duration::from_secs(10),
        std::time::Duration::from_secs(60),
    )
}

/// The transactional id of the producer for an input partition.
fn transactional_id(group: &str, tp: &TopicPartition) -> String {
    format!("{group}-{}-{}", tp.topic, tp.partition)
}

impl ExactlyOnceSink {
    /// # Errors
    /// When the client that describes the job's group cannot be created.
    pub fn new(
        spec: &JobSpec,
        id: &Identity,
        routes: Routes,
        bootstrap: &str,
        shuffle: bool,
        partials: Option<&'static str>,
        codecs: Codecs,
    ) -> Result<Self> {
        let group = spec.group_id(&id.namespace, &id.job);
        let consumer: BaseConsumer = client::consumer(&spec.source.kafka, id, &group)
            .create()
            .map_err(Error::kafka("creating the group's client"))?;
        let group_meta = consumer.group_metadata().ok_or_else(|| {
            Error::Fatal(format!("no group metadata for consumer group {group:?}"))
        })?;
        Ok(Self {
            source: spec.source.kafka.clone(),
            bootstrap: bootstrap.to_string(),
            id: id.clone(),
            group,
            group_meta,
            routes,
            shuffle,
            partials,
            dead_topic: spec.dead_letter.as_ref().map(|d| d.topic.clone()),
            changelog: None,
            codecs,
            owned: Vec::new(),
            txn_timeout: transaction_timeout(spec.batch_interval.as_std()),
            producers: Vec::new(),
            partitions: None,
        })
    }

    /// Begins a transaction for each partition with anything to write and queues its records;
    /// `open` gets the partitions whose transactions began.
    fn send_all(&mut self, batch: &BatchOutput<'_>, open: &mut Vec<usize>) -> Result<()> {
        for (i, (tp, part)) in self.owned.iter().zip(&batch.partitions).enumerate() {
            let dead: Vec<&DeadLetter> = batch
                .dead
                .iter()
                .filter(|d| d.partition == tp.partition && d.topic == tp.topic)
                .collect();
            let idle = part.outputs.is_empty()
                && part.marker.is_none()
                && part.changes.is_empty()
                && dead.is_empty()
                && part.range.until == part.range.from;
            if idle {
                continue;
            }
            let w = &mut self.producers[i];
            w.begin()?;
            open.push(i);
            for o in part.outputs {
                send_output(w, &self.routes, self.shuffle, self.partials, o)?;
            }
            if let Some(m) = part.marker {
                send_marker(w, self.routes.topic(), &mut self.partitions, m)?;
            }
            if let Some(log) = &self.changelog {
                log.send_partition(w, tp, part, batch.batch_time_ms)?;
            }
            if let Some(t) = &self.dead_topic {
                for d in dead {
                    dead_letter::send(w, t, d)?;
                }
            }
        }
        Ok(())
    }

    /// Commits the open transactions side by side, at most [`MAX_PARALLEL`] at once, each with
    /// its partition's until offset for the job's group; returns each partition's result.
    /// Partitions are independent transactions, so their order does not matter; one after
    /// another, a batch of 40 partitions waited for 40 times the coordinator's round trips.
    ///
    /// # Errors
    /// Only when an offset list cannot be built; each commit's own error is in its result.
    fn commit_all(
        &mut self,
        open: &[usize],
        batch: &BatchOutput<'_>,
    ) -> Result<Vec<(usize, Result<TxnTimes>)>> {
        let mut work: Vec<(usize, TopicPartitionList, &mut KafkaWriter)> =
            Vec::with_capacity(open.len());
        let mut open_at = open.iter().peekable();
        for (i, w) in self.producers.iter_mut().enumerate() {
            if open_at.next_if_eq(&&i).is_none() {
                continue;
            }
            let tp = &self.owned[i];
            let mut offsets = TopicPartitionList::new();
            offsets
                .add_partition_offset(
                    &tp.topic,
                    tp.partition,
                    Offset::Offset(batch.partitions[i].range.until),
                )
                .map_err(Error::kafka("building a partition list"))?;
            work.push((i, offsets, w));
        }
        let threads = work.len().clamp(1, MAX_PARALLEL);
        let mut lanes: Vec<Vec<(usize, TopicPartitionList, &mut KafkaWriter)>> =
            (0..threads).map(|_| Vec::new()).collect();
        for (n, item) in work.into_iter().enumerate() {
            lanes[n % threads].push(item);
        }
        let group = &self.group_meta;
        Ok(std::thread::scope(|s| {
            let handles: Vec<_> = lanes
                .into_iter()
                .map(|lane| {
                    let partitions: Vec<usize> = lane.iter().map(|(i, _, _)| *i).collect();
                    let handle = s.spawn(move || {
                        lane.into_iter()
                            .map(|(i, offsets, w)| (i, w.commit(&offsets, group)))
                            .collect::<Vec<_>>()
                    });
                    (partitions, handle)
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|(partitions, h)| {
                    h.join().unwrap_or_else(|_| {
                        partitions
                            .into_iter()
                            .map(|i| {
                                let e = Error::Fatal("committing a transaction panicked".into());
                                (i, Err(e))
                            })
                            .collect()
                    })
                })
                .collect()
        }))
    }

    fn abort(&mut self, partitions: &[usize], batch_time: i64) -> Result<()> {
        for &i in partitions {
            warn!(batch_time, partition = %self.owned[i], "aborting the partition's transaction");
            self.producers[i].abort()?;
        }
        Ok(())
    }
}

impl Sink for ExactlyOnceSink {
    fn logs_state(&self) -> bool {
        true
    }

    fn log_state_as(&mut self, format: Arc<LogFormat>) -> bool {
        self.changelog = Some(format);
        true
    }

    fn writes_dead_letters(&self) -> bool {
        self.dead_topic.is_some()
    }

    /// Starts a transactional producer per owned partition, which fences any earlier one and
    /// aborts the transaction it left open. The producers start side by side: one after
    /// another, 40 partitions took seconds, and an older worker kept committing meanwhile.
    fn take_over(&mut self, owned: &[TopicPartition]) -> Result<Option<Recovery>> {
        let started = std::time::Instant::now();
        let mut producers = Vec::with_capacity(owned.len());
        let (bootstrap, source, id, timeout) =
            (&self.bootstrap, &self.source, &self.id, self.txn_timeout);
        let group = &self.group;
        for chunk in owned.chunks(MAX_PARALLEL) {
            let made: Vec<Result<KafkaWriter>> = std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|tp| {
                        let txn_id = transactional_id(group, tp);
                        s.spawn(move || {
                            KafkaWriter::transactional(
                                bootstrap, source, id, "sink", &txn_id, timeout,
                            )
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::Fatal(
                                "starting a transactional producer panicked".into(),
                            ))
                        })
                    })
                    .collect()
            });
            for p in made {
                producers.push(p?.with_codecs(self.codecs.clone()));
            }
        }
        self.producers = producers;
        self.owned = owned.to_vec();
        info!(
            partitions = owned.len(),
            took_ms = started.elapsed().as_millis() as u64,
            transaction_timeout_ms = self.txn_timeout.as_millis() as u64,
            "transactional producers started; earlier producers of these partitions are fenced"
        );
        Ok(None)
    }

    fn write(&mut self, batch: &BatchOutput<'_>) -> Result<()> {
        if self.producers.len() != batch.partitions.len() {
            return Err(Error::Fatal(
                "the exactly-once sink was not given the worker's partitions".into(),
            ));
        }
        let started = std::time::Instant::now();
        let mut open = Vec::new();
        if let Err(e) = self.send_all(batch, &mut open) {
            // The batch's own error is what stops it; an abort that fails too is logged (the
            // next producer of the partition aborts what is left open when it fences).
            if !matches!(e, Error::Fenced(_)) {
                if let Err(a) = self.abort(&open, batch.batch_time_ms) {
                    warn!(error = %a, cause = %e, "aborting the batch's transactions failed");
                }
            }
            return Err(e);
        }
        let produced = started.elapsed();
        let results = self.commit_all(&open, batch)?;
        let mut times = TxnTimes::default();
        let mut committed = 0;
        let mut failed: Vec<(usize, Error)> = Vec::new();
        for (i, r) in results {
            match r {
                Ok(t) => {
                    committed += 1;
                    times.acks += t.acks;
                    times.offsets += t.offsets;
                    times.end_txn += t.end_txn;
                }
                // A fenced producer can do nothing more, abort included: stop at once.
                Err(e @ Error::Fenced(_)) => return Err(e),
                Err(e) => failed.push((i, e)),
            }
        }
        debug!(
            batch_time = batch.batch_time_ms,
            transactions = open.len(),
            write_ms = started.elapsed().as_millis() as u64,
            produce_ms = produced.as_millis() as u64,
            acks_ms = times.acks.as_millis() as u64,
            offsets_ms = times.offsets.as_millis() as u64,
            end_txn_ms = times.end_txn.as_millis() as u64,
            "transactions ended; acks, offsets and EndTxn are summed over transactions that run side by side"
        );
        let Some((_, first)) = failed.first() else {
            return Ok(());
        };
        let first = first.to_string();
        let failed_at: Vec<usize> = failed.iter().map(|(i, _)| *i).collect();
        self.abort(&failed_at, batch.batch_time_ms)?;
        if committed == 0 {
            return Err(failed.swap_remove(0).1);
        }
        // The committed partitions are done; replaying the whole batch would repeat them. A
        // restart resumes each partition from its own committed offsets.
        Err(Error::Fatal(format!(
            "{first}; {committed} partitions of this batch committed and {} aborted: stopping so that each partition resumes from its own committed offsets",
            failed_at.len()
        )))
    }
}
