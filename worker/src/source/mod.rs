//! The direct Kafka stream: this worker's partitions, read range by range.
//!
//! No consumer-group membership: worker i of N owns partition p of every input topic when
//! p mod N == i, so a partition (and its state) has one owner across restarts. Offsets live in
//! the job's consumer group, written only after a batch's output.
//!
//! By idea: [`resume`] (which partitions this worker owns, where each resumes, the log's
//! bounds), [`lanes`] (reading the ranges in parallel lanes, each keeping what it read ahead
//! for the next batch), [`commit`] (the group's offsets after a batch, or a rewind after an
//! aborted one), [`record`] (a record as read, before decoding).

mod commit;
mod lanes;
mod record;
mod resume;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::client::{self, Identity, Link, SourceContext};
use crate::error::{Error, Result};
use crate::plan::TopicPartition;
use crate::progress::Progress;
use crate::spec::{KafkaSource, OutOfRangePolicy, RetrySpec};
pub use lanes::Taken;
use lanes::{keep_ahead_bytes, lane_count, Lane};
pub use record::RawRecord;
pub use resume::assignment;

/// The worker's consumer type.
type SourceConsumer = BaseConsumer<SourceContext>;

// The operator gives up on a worker's broker calls after the same time, so it is shared.
pub use weir_contract::client::REQUEST_TIMEOUT;

/// The job's retry policy for broker calls, stopped early by shutdown.
#[derive(Clone, Debug)]
pub struct Retry {
    pub spec: RetrySpec,
    pub cancel: CancellationToken,
    /// Where a retry in progress is reported (`/progress`, `/healthz`).
    pub report: Option<Arc<Progress>>,
}

impl Retry {
    /// Runs `f` until it succeeds, a non-retriable error occurs, the retries are spent, or the
    /// worker is shutting down.
    ///
    /// # Errors
    /// The last error, or [`Error::Cancelled`].
    pub fn run<T>(&self, what: &str, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        let mut waits = self.spec.waits();
        let mut attempt = 0;
        let result = loop {
            match f() {
                Ok(v) => break Ok(v),
                Err(e) if e.class() == crate::error::Class::Retriable => {
                    let Some(wait) = waits.next() else {
                        break Err(e);
                    };
                    attempt += 1;
                    warn!(error = %e, attempt, max = self.spec.max_retries, "{what} failed; retrying in {wait:?}");
                    if let Some(p) = &self.report {
                        p.retrying(
                            format!("{what} failed: {e}"),
                            attempt,
                            self.spec.max_retries,
                        );
                    }
                    if !crate::shutdown::sleep(wait, &self.cancel) {
                        break Err(Error::Cancelled);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        if let Some(p) = self.report.as_ref().filter(|_| attempt > 0) {
            p.retried();
        }
        result
    }
}

/// This worker's partitions and the consumers that read them.
///
/// Partitions are read in lanes, one consumer and one thread each (partition i in lane
/// i mod lanes), like Spark's one task per partition: decoding and the pipeline run on every
/// core. Lane 0's consumer also makes the worker's metadata, watermark and commit requests.
pub struct Source {
    consumer: SourceConsumer,
    /// Asks the brokers for watermarks each batch. It never fetches, so its requests do not
    /// wait behind a lane's long-polling fetch, and an answer means the brokers are there.
    probe: SourceConsumer,
    /// What the clients last heard from the brokers.
    link: std::sync::Arc<Link>,
    probe_timeout: Duration,
    out_of_range: OutOfRangePolicy,
    /// Lane 0 reads with `consumer`; lanes 1.. have consumers of their own.
    lanes: Vec<Lane>,
    owned: Vec<TopicPartition>,
    /// Owned partitions by partition number, then topic: found per record without allocating.
    by_partition: HashMap<i32, Vec<(std::sync::Arc<str>, usize)>>,
    /// Next offset to process, per owned partition.
    positions: Vec<i64>,
    /// Last committed offset, per owned partition.
    committed: Vec<i64>,
    /// Every input topic with its partition count, as found at connect.
    counts: Vec<(String, i32)>,
    retry: Retry,
    read_timeout: Duration,
    keep_ahead: usize,
}

impl Source {
    /// Connects and finds this worker's partitions. Where each resumes is read by
    /// [`Source::resume`], which the engine calls only after the sink has fenced every older
    /// writer of those partitions: read before, the offsets could be overtaken by an older
    /// worker's last commits.
    ///
    /// # Errors
    /// When the brokers cannot be reached within the retries, or a topic does not exist.
    pub fn connect(
        spec: &KafkaSource,
        id: &Identity,
        group: &str,
        batch_interval: Duration,
        progress: &Arc<Progress>,
        cancel: &CancellationToken,
    ) -> Result<Source> {
        let retry = Retry {
            spec: spec.retries.clone(),
            cancel: cancel.clone(),
            report: Some(progress.clone()),
        };
        let context = SourceContext::default();
        let create = || -> Result<SourceConsumer> {
            client::consumer(spec, id, group)
                .create_with_context(context.clone())
                .map_err(Error::kafka("creating the consumer"))
        };
        let consumer = create()?;
        let probe = create()?;
        let mut counts = Vec::new();
        for topic in &spec.topics {
            let n = retry.run("reading topic metadata", || {
                // A refused login surfaces only as a client event, the request itself as a
                // transport failure or timeout: ask the client, so it is not retried as an outage.
                let md = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT).map_err(|e| {
                    client::auth_failure(&consumer).map_or_else(
                        || with_link_error(&context.link, Error::kafka("metadata")(e), REQUEST_TIMEOUT * 2),
                        |r| Error::authentication(&r),
                    )
                })?;
                match md.topics().iter().find(|t| t.name() == topic) {
                    Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len() as i32),
                    Some(t) => Err(Error::Kafka {
                        op: "metadata",
                        source: KafkaError::MetadataFetch(t.error().map_or(RDKafkaErrorCode::UnknownTopicOrPartition, RDKafkaErrorCode::from)),
                    }),
                    None => Err(Error::Fatal(format!("topic {topic:?} not found"))),
                }
            })
            .map_err(|e| match e {
                Error::Cancelled | Error::Auth(_) => e,
                Error::Kafka { ref source, .. } if crate::error::auth_kind(source).is_some() => Error::Auth(format!("reading input topic {topic:?}: {e}")),
                Error::Unreachable { ref why, .. } => Error::Fatal(format!(
                    "cannot read input topic {topic:?}: the brokers at {} could not be reached ({e}); {}",
                    spec.bootstrap_servers,
                    client::unreachable_fix(why)
                )),
                e => Error::Fatal(format!("input topic {topic:?} is not available ({e}); create it or fix source.kafka.topics")),
            })?;
            counts.push((topic.clone(), n));
        }
        let owned = assignment(&counts, id.ordinal, id.workers);
        let mut by_partition: HashMap<i32, Vec<(std::sync::Arc<str>, usize)>> = HashMap::new();
        for (i, tp) in owned.iter().enumerate() {
            by_partition
                .entry(tp.partition)
                .or_default()
                .push((tp.topic.clone(), i));
        }
        let lanes = (0..lane_count(owned.len(), spec.read_threads))
            .map(|lane| {
                let consumer = match lane {
                    0 => None,
                    _ => Some(create()?),
                };
                Ok(Lane::new(consumer, owned.len()))
            })
            .collect::<Result<Vec<Lane>>>()?;
        let source = Source {
            consumer,
            probe,
            link: context.link.clone(),
            // A batch waits at most this for its watermarks: a dead broker costs each batch
            // about one interval, so the loop (and its reports) go on.
            probe_timeout: batch_interval.clamp(Duration::from_secs(1), REQUEST_TIMEOUT),
            out_of_range: spec.offset_out_of_range,
            lanes,
            positions: vec![0; owned.len()],
            committed: vec![-1; owned.len()],
            owned,
            by_partition,
            counts,
            retry,
            read_timeout: (batch_interval * 10).max(Duration::from_secs(30)),
            keep_ahead: keep_ahead_bytes(spec),
        };
        Ok(source)
    }

    pub fn owned(&self) -> &[TopicPartition] {
        &self.owned
    }

    /// Every input topic with its partition count.
    pub fn partition_counts(&self) -> &[(String, i32)] {
        &self.counts
    }

    /// How many lanes read in parallel; partition i is read by lane `i % lanes()`.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// Each owned partition with its next offset.
    pub fn positions(&self) -> Vec<(TopicPartition, i64)> {
        self.owned
            .iter()
            .cloned()
            .zip(self.positions.iter().copied())
            .collect()
    }

    fn tpl(&self, offsets: impl Iterator<Item = (usize, Offset)>) -> Result<TopicPartitionList> {
        tpl(&self.owned, offsets)
    }
}

/// A request error with what the clients heard from the brokers in the last `within`, which
/// says why (a timeout alone does not).
fn with_link_error(link: &Link, e: Error, within: Duration) -> Error {
    match (e, link.recent_error(within)) {
        (Error::Kafka { op, source }, Some(why)) => Error::Unreachable {
            op,
            why: why.into(),
            source: Box::new(source),
        },
        (e, _) => e,
    }
}

fn tpl(
    owned: &[TopicPartition],
    offsets: impl Iterator<Item = (usize, Offset)>,
) -> Result<TopicPartitionList> {
    let mut tpl = TopicPartitionList::new();
    for (i, o) in offsets {
        let tp = &owned[i];
        tpl.add_partition_offset(&tp.topic, tp.partition, o)
            .map_err(Error::kafka("building a partition list"))?;
    }
    Ok(tpl)
}
