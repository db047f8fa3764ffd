//! The direct Kafka stream: this worker's partitions, read range by range.
//!
//! No consumer-group membership: worker i of N owns partition p of every input topic when
//! p mod N == i, so a partition (and its state) has one owner across restarts. Offsets live in
//! the job's consumer group, written only after a batch's output.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};

use crate::client::SourceContext;

/// The worker's consumer type.
type SourceConsumer = BaseConsumer<SourceContext>;
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::client::{self, Identity, Link};
use crate::error::{Error, Result};
use crate::expr::Val;
use crate::memory::Budget;
use crate::plan::{OffsetRange, TopicPartition};
use crate::progress::Progress;
use crate::spec::{KafkaSource, OutOfRangePolicy, RetrySpec, StartingOffsets};

// The operator gives up on a worker's broker calls after the same time, so it is shared.
pub use weir_contract::client::REQUEST_TIMEOUT;

/// Which partitions of `partitions_per_topic` worker `ordinal` of `workers` owns.
pub fn assignment(
    partitions_per_topic: &[(String, i32)],
    ordinal: u32,
    workers: u32,
) -> Vec<TopicPartition> {
    let mut owned: Vec<TopicPartition> = partitions_per_topic
        .iter()
        .flat_map(|(topic, n)| {
            (0..*n)
                .filter(move |p| (*p as u32) % workers.max(1) == ordinal)
                .map(move |p| TopicPartition::new(topic, p))
        })
        .collect();
    owned.sort();
    owned
}

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

/// A record as read from the broker, before decoding.
pub struct RawRecord<'a> {
    /// Index of the partition in [`Source::owned`].
    pub index: usize,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    headers: Option<HeaderRef<'a>>,
}

/// A record's headers, from a message just polled or one kept for the next batch.
#[derive(Clone, Copy)]
enum HeaderRef<'a> {
    Borrowed(&'a rdkafka::message::BorrowedHeaders),
    Owned(&'a rdkafka::message::OwnedHeaders),
}

fn headers_val<H: Headers>(h: &H) -> Val {
    let fields = h
        .iter()
        .map(|h| {
            (
                std::sync::Arc::from(h.key),
                crate::record::decode_key(h.value),
            )
        })
        .collect();
    Val::Map(std::sync::Arc::new(fields))
}

impl<'a> RawRecord<'a> {
    fn of<M: Message>(index: usize, m: &'a M, headers: Option<HeaderRef<'a>>) -> Self {
        RawRecord {
            index,
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key(),
            payload: m.payload(),
            headers,
        }
    }

    /// The record's headers as a map of strings (bytes when not UTF-8).
    pub fn headers(&self) -> Val {
        match self.headers {
            None => Val::Map(Default::default()),
            Some(HeaderRef::Borrowed(h)) => headers_val(h),
            Some(HeaderRef::Owned(h)) => headers_val(h),
        }
    }

    /// The record's headers as they came, for a dead letter to keep.
    pub fn header_pairs(&self) -> Vec<(String, Option<Vec<u8>>)> {
        fn pairs<H: Headers>(h: &H) -> Vec<(String, Option<Vec<u8>>)> {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                .collect()
        }
        match self.headers {
            None => Vec::new(),
            Some(HeaderRef::Borrowed(h)) => pairs(h),
            Some(HeaderRef::Owned(h)) => pairs(h),
        }
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

    /// Moves partitions (index into `owned()`, offset) forward to where their keyed state was
    /// last logged, and commits there: the batch before a crash logged its state changes but
    /// did not commit its offsets, and running it again would count it twice in the state.
    ///
    /// # Errors
    /// When the commit fails after the retries.
    pub fn resume_at(&mut self, moves: &[(usize, i64)]) -> Result<()> {
        if moves.is_empty() {
            return Ok(());
        }
        let tpl = self.tpl(moves.iter().map(|&(i, o)| (i, Offset::Offset(o))))?;
        self.commit_tpl(&tpl)?;
        for &(i, o) in moves {
            self.positions[i] = o;
            self.committed[i] = o;
        }
        self.reassign();
        Ok(())
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

    /// (low, high) watermarks of every owned partition, asked of the brokers.
    ///
    /// # Errors
    /// When the broker does not answer within the retries.
    fn watermarks(&self) -> Result<Vec<(i64, i64)>> {
        (0..self.owned.len())
            .map(|i| self.fetch_watermarks(i))
            .collect()
    }

    fn fetch_watermarks(&self, i: usize) -> Result<(i64, i64)> {
        let tp = &self.owned[i];
        self.retry.run("reading watermarks", || {
            self.consumer
                .fetch_watermarks(&tp.topic, tp.partition, REQUEST_TIMEOUT)
                .map_err(Error::kafka("watermarks"))
        })
    }

    /// (low, high) watermarks of every owned partition for planning a batch: asked of the
    /// brokers in one request per broker for each end, with a timeout of about one batch
    /// interval and no retry (the next batch asks again). Client errors that came since the
    /// last batch are logged first, so a dead broker is said when it happens.
    ///
    /// # Errors
    /// When the brokers do not answer in time: the batch is planned without fresh
    /// watermarks, and the error says why.
    pub fn fresh_watermarks(&self) -> Result<Vec<(i64, i64)>> {
        // The probe is never assigned: what polling it returns are the client's errors.
        while let Some(r) = self.probe.poll(Duration::ZERO) {
            if let Err(e) = r {
                self.link.report_kafka(&e, "");
            }
        }
        let ask = |at: Offset| -> Result<TopicPartitionList> {
            let list = self.tpl((0..self.owned.len()).map(|i| (i, at)))?;
            self.probe
                .offsets_for_times(list, self.probe_timeout)
                .map_err(|e| self.with_link_error(Error::kafka("listing offsets")(e)))
        };
        let lows = ask(Offset::Beginning)?;
        let highs = ask(Offset::End)?;
        let find = |list: &TopicPartitionList, tp: &TopicPartition| -> Result<i64> {
            let e = list
                .find_partition(&tp.topic, tp.partition)
                .ok_or_else(|| Error::Fatal(format!("the brokers answered no offsets for {tp}")))?;
            e.error().map_err(Error::kafka("listing offsets"))?;
            match e.offset() {
                Offset::Offset(o) => Ok(o),
                other => Err(Error::Fatal(format!(
                    "the brokers answered {other:?} as an end of {tp}"
                ))),
            }
        };
        self.owned
            .iter()
            .map(|tp| Ok((find(&lows, tp)?, find(&highs, tp)?)))
            .collect()
    }

    fn with_link_error(&self, e: Error) -> Error {
        with_link_error(&self.link, e, self.probe_timeout * 3)
    }

    /// Handles positions outside their partition's log by the job's `offsetOutOfRange`
    /// policy: `fail` is an error with the numbers and the fix; `earliest` and `latest` move
    /// (and commit) the partition there, with a warning that gives the numbers.
    ///
    /// # Errors
    /// [`Error::Fatal`] under `fail`, or when moving cannot be committed.
    pub fn check_log_bounds(&mut self, marks: &[(i64, i64)]) -> Result<()> {
        let mut moves = Vec::new();
        for (i, &(low, high)) in marks.iter().enumerate() {
            let (tp, pos) = (&self.owned[i], self.positions[i]);
            let why = if pos < low {
                "before the log start: retention deleted records this job has not read"
            } else if pos > high {
                "past the log end: the topic was recreated, or a broker came back without its data"
            } else {
                continue;
            };
            let to = match self.out_of_range {
                OutOfRangePolicy::Fail => {
                    return Err(Error::Fatal(format!(
                        "{tp}: offset {pos} is {why} (log start {low}, log end {high}). Nothing was read from it. \
                         To go on, set source.kafka.offsetOutOfRange to earliest (read what the log holds) \
                         or latest (skip to its end), or rewind the job's offsets"
                    )))
                }
                OutOfRangePolicy::Earliest => low,
                OutOfRangePolicy::Latest => high,
            };
            warn!(partition = %tp, offset = pos, log_start = low, log_end = high, resume = to, policy = ?self.out_of_range, "offset is {why}; going on from offset {to} as source.kafka.offsetOutOfRange says");
            moves.push((i, to));
        }
        self.resume_at(&moves)
    }

    /// Reads where each owned partition resumes: the committed offset, an explicit offset
    /// from the spec, or the starting-offsets policy.
    ///
    /// # Errors
    /// When the brokers do not answer within the retries.
    pub fn resume(&mut self, spec: &KafkaSource) -> Result<()> {
        let all = self.tpl((0..self.owned.len()).map(|i| (i, Offset::Invalid)))?;
        let committed = self.retry.run("reading committed offsets", || {
            self.consumer
                .committed_offsets(all.clone(), REQUEST_TIMEOUT)
                .map_err(Error::kafka("committed offsets"))
        })?;
        let marks = self.watermarks()?;
        let mut fresh = Vec::new();
        for (i, tp) in self.owned.iter().enumerate() {
            let (low, high) = marks[i];
            let explicit = spec
                .specific_offsets
                .iter()
                .find(|o| *o.topic == *tp.topic && o.partition == tp.partition);
            let stored = committed
                .find_partition(&tp.topic, tp.partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            self.committed[i] = stored.unwrap_or(-1);
            // A committed offset always wins: explicit offsets only say where a partition the
            // group has never read starts, so a restart never rewinds.
            let pos = match (stored, explicit) {
                (Some(o), _) => o,
                (None, Some(o)) => {
                    fresh.push(i);
                    o.offset
                }
                (None, None) => {
                    fresh.push(i);
                    match &spec.starting_offsets {
                        StartingOffsets::Earliest => low,
                        StartingOffsets::Latest => high,
                        StartingOffsets::Timestamp(t) => {
                            self.offset_for_time(tp, t.timestamp_millis(), high)?
                        }
                    }
                }
            };
            self.positions[i] = pos;
        }
        // Checked before anything is read, by the job's policy: never a silent skip.
        self.check_log_bounds(&marks)?;
        // Record where fresh partitions start, so a restart before the first batch resumes
        // there instead of re-applying the policy to a moved log end.
        if !fresh.is_empty() {
            let tpl = self.tpl(
                fresh
                    .iter()
                    .map(|&i| (i, Offset::Offset(self.positions[i]))),
            )?;
            self.commit_tpl(&tpl)?;
            for i in fresh {
                self.committed[i] = self.positions[i];
            }
        }
        info!(
            partitions = %self.owned.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
            offsets = ?self.positions,
            "resuming"
        );
        Ok(())
    }

    fn offset_for_time(&self, tp: &TopicPartition, ms: i64, high: i64) -> Result<i64> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(ms))
            .map_err(Error::kafka("offsets for times"))?;
        let r = self.retry.run("looking up offsets for a timestamp", || {
            self.consumer
                .offsets_for_times(tpl.clone(), REQUEST_TIMEOUT)
                .map_err(Error::kafka("offsets for times"))
        })?;
        Ok(
            match r
                .find_partition(&tp.topic, tp.partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(o)) => o,
                _ => high,
            },
        )
    }

    /// Reads each range, calling `f` for every record in it, in offset order per partition,
    /// until the batch holds its `budget`: then every lane stops where it is, and the ranges
    /// end at [`Source::positions`] (the rest is read by the next batches). Lanes run in
    /// parallel, each with its own `states[lane]`. Returns what the batch took in.
    ///
    /// # Errors
    /// A broker error, or a timeout when a range cannot be read completely.
    pub fn read<S: Send>(
        &mut self,
        ranges: &[OffsetRange],
        budget: Budget,
        states: &mut [S],
        f: &(impl Fn(&mut S, RawRecord<'_>) + Sync),
    ) -> Result<Taken> {
        let until: Vec<i64> = ranges.iter().map(|r| r.until).collect();
        let count = self.lanes.len();
        let deadline = Instant::now() + self.read_timeout;
        let held = Held::new(budget);
        let ctx = LaneCtx {
            owned: &self.owned,
            by_partition: &self.by_partition,
            until: &until,
            deadline,
            lanes: count,
            keep_ahead: self.keep_ahead,
            lane_keeps: lane_keeps(budget, count),
            held: &held,
            cancel: &self.retry.cancel,
            link: &self.link,
        };
        let (main, positions) = (&self.consumer, &self.positions);
        let results: Vec<Result<Vec<i64>>> = std::thread::scope(|scope| {
            let mut handles = Vec::new();
            let mut first = None;
            for (index, (state, lane)) in states.iter_mut().zip(self.lanes.iter_mut()).enumerate() {
                let (ctx, f) = (&ctx, &f);
                let mut pos = positions.clone();
                let run = move || {
                    let consumer = lane.consumer.as_ref().unwrap_or(main);
                    LaneRead {
                        consumer,
                        state: &mut lane.state,
                        index,
                        positions: &mut pos,
                    }
                    .read(ctx, &mut |raw| f(state, raw))
                    .map(|()| pos)
                };
                if index == 0 {
                    first = Some(run);
                } else {
                    handles.push(scope.spawn(run));
                }
            }
            let mut results = vec![first.map_or(Ok(Vec::new()), |run| run())];
            results.extend(handles.into_iter().map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Fatal("a source lane panicked".into())))
            }));
            results
        });
        let mut error = None;
        for (lane, r) in results.into_iter().enumerate() {
            match r {
                Ok(pos) => {
                    for i in (lane..self.owned.len()).step_by(count) {
                        self.positions[i] = pos[i];
                    }
                }
                Err(e) => error = error.or(Some(e)),
            }
        }
        error.map_or(Ok(held.taken()), Err)
    }

    /// The ranges as read: each ends where its partition's reading stopped, which is before
    /// the planned `until` when the batch's budget was spent.
    pub fn read_ranges(&self, mut planned: Vec<OffsetRange>) -> Vec<OffsetRange> {
        for (r, at) in planned.iter_mut().zip(&self.positions) {
            r.until = r.until.min(*at).max(r.from);
        }
        planned
    }

    /// Commits the batch's until-offsets to the job's group. Call only after the batch's
    /// output is acknowledged.
    ///
    /// # Errors
    /// When the commit fails after the retries.
    pub fn commit(&mut self, ranges: &[OffsetRange]) -> Result<()> {
        let changed: Vec<usize> = (0..self.owned.len())
            .filter(|&i| ranges[i].until != self.committed[i] && ranges[i].until > ranges[i].from)
            .collect();
        if changed.is_empty() {
            return Ok(());
        }
        let tpl = self.tpl(
            changed
                .iter()
                .map(|&i| (i, Offset::Offset(ranges[i].until))),
        )?;
        self.commit_tpl(&tpl)?;
        for i in changed {
            self.committed[i] = ranges[i].until;
        }
        Ok(())
    }

    fn commit_tpl(&self, tpl: &TopicPartitionList) -> Result<()> {
        self.retry.run("committing offsets", || {
            self.consumer
                .commit(tpl, CommitMode::Sync)
                .map_err(Error::kafka("commit"))
        })
    }

    /// Positions moved outside the read path: every lane assigns afresh before reading again.
    fn reassign(&mut self) {
        for lane in &mut self.lanes {
            lane.state.assigned = false;
        }
    }

    /// Forgets the progress of an aborted batch: the next read starts at the committed offsets.
    pub fn rewind(&mut self, ranges: &[OffsetRange]) {
        for (i, r) in ranges.iter().enumerate() {
            self.positions[i] = r.from;
        }
        self.reassign();
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

/// How many lanes read a worker's partitions: `source.kafka.readThreads`, else one per core;
/// at most one per partition.
fn lane_count(partitions: usize, threads: Option<u32>) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let wanted = threads.map_or(cores, |t| t as usize);
    wanted.clamp(1, partitions.max(1))
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

/// Bytes of records read past a partition's range that a lane keeps for the next batch
/// (`source.kafka.readAheadBytes`, default 1 MiB); past it, the lane drops them and seeks back
/// instead.
fn keep_ahead_bytes(spec: &KafkaSource) -> usize {
    spec.read_ahead_bytes
        .map_or(1 << 20, |b| usize::try_from(b).unwrap_or(usize::MAX))
}

/// The least a lane keeps ahead, whatever the budget: a few records, so that it does not
/// seek back for every record that came early.
const MIN_LANE_KEEPS: usize = 64 << 10;

/// What one of `lanes` keeps ahead, all its partitions together, in a batch of `budget`: the
/// lanes together keep at most half the budget's bytes, so that many partitions cannot hold
/// more than the batch does. Shared by the lane's partitions (rather than split evenly), a
/// partition that finished its range early keeps what the others do not need.
fn lane_keeps(budget: Budget, lanes: usize) -> usize {
    let share = budget.bytes / 2 / lanes.max(1) as u64;
    usize::try_from(share)
        .unwrap_or(usize::MAX)
        .max(MIN_LANE_KEEPS)
}

fn size_of_record(m: &impl Message) -> usize {
    m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len)
}

/// What a batch took in: the bytes (keys and values as read) and the records handed to the
/// pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Taken {
    pub bytes: u64,
    pub records: u64,
}

/// The bytes and records a batch holds, shared by its lanes, against its budget.
struct Held {
    bytes: AtomicU64,
    records: AtomicU64,
    budget: Budget,
    /// A record did not fit: every lane stops.
    full: AtomicBool,
}

impl Held {
    fn new(budget: Budget) -> Self {
        Held {
            bytes: AtomicU64::new(0),
            records: AtomicU64::new(0),
            budget,
            full: AtomicBool::new(false),
        }
    }

    /// Takes a record of `bytes` into the batch if it fits the budget. The batch's first
    /// record always fits, so a record larger than the whole budget is read alone.
    fn take(&self, bytes: usize) -> bool {
        let bytes = bytes as u64;
        let records = self.records.fetch_add(1, Ordering::Relaxed);
        let before = self.bytes.fetch_add(bytes, Ordering::Relaxed);
        if records == 0
            || (records < self.budget.records && before.saturating_add(bytes) <= self.budget.bytes)
        {
            return true;
        }
        self.records.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.full.store(true, Ordering::Relaxed);
        false
    }

    fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    fn taken(&self) -> Taken {
        Taken {
            bytes: self.bytes.load(Ordering::Relaxed),
            records: self.records.load(Ordering::Relaxed),
        }
    }
}

/// A lane: its consumer (none for lane 0, which uses the source's) and what it keeps between
/// batches.
struct Lane {
    consumer: Option<SourceConsumer>,
    state: LaneState,
}

impl Lane {
    fn new(consumer: Option<SourceConsumer>, partitions: usize) -> Self {
        Lane {
            consumer,
            state: LaneState {
                assigned: false,
                ahead: (0..partitions).map(|_| Ahead::default()).collect(),
                kept: 0,
            },
        }
    }
}

/// The assignment stays in place across batches, so fetching never stops and restarts (a
/// pause, a resume or a new assignment each cost librdkafka up to a second). Records that
/// arrive past a range are kept, up to a bound, for the next batch.
struct LaneState {
    assigned: bool,
    /// Per partition (indexed like the source's), records read past the range.
    ahead: Vec<Ahead>,
    /// Bytes kept in `ahead`, all partitions together.
    kept: usize,
}

impl LaneState {
    /// Keeps a record that came before its partition's turn, or, when the partition's or the
    /// lane's bound would be passed, drops it and every later one of its partition, which is
    /// then read again from its position.
    fn keep(&mut self, i: usize, m: &rdkafka::message::BorrowedMessage<'_>, ctx: &LaneCtx<'_>) {
        let size = size_of_record(m);
        let ahead = &mut self.ahead[i];
        if ahead.bytes + size <= ctx.keep_ahead && self.kept + size <= ctx.lane_keeps {
            ahead.bytes += size;
            self.kept += size;
            ahead.records.push_back(m.detach());
        } else {
            ahead.seek = true;
        }
    }
}

#[derive(Default)]
struct Ahead {
    records: std::collections::VecDeque<rdkafka::message::OwnedMessage>,
    bytes: usize,
    /// Records were dropped: seek back to the position before reading on.
    seek: bool,
}

/// What every lane of a batch shares.
struct LaneCtx<'a> {
    owned: &'a [TopicPartition],
    by_partition: &'a HashMap<i32, Vec<(std::sync::Arc<str>, usize)>>,
    until: &'a [i64],
    deadline: Instant,
    lanes: usize,
    /// Bytes a partition keeps ahead.
    keep_ahead: usize,
    /// Bytes a lane keeps ahead, all its partitions together.
    lane_keeps: usize,
    /// What the batch holds; once full, the lanes stop.
    held: &'a Held,
    /// Shutdown: a read that waits (a broker that stopped answering) gives up the batch,
    /// uncommitted, rather than hold the worker past its grace period.
    cancel: &'a CancellationToken,
    link: &'a Link,
}

impl LaneCtx<'_> {
    fn index_of(&self, topic: &str, partition: i32) -> Option<usize> {
        self.by_partition
            .get(&partition)?
            .iter()
            .find(|(t, _)| &**t == topic)
            .map(|(_, i)| *i)
    }
}

/// One lane's read of one batch.
struct LaneRead<'a> {
    consumer: &'a SourceConsumer,
    state: &'a mut LaneState,
    index: usize,
    positions: &'a mut Vec<i64>,
}

impl LaneRead<'_> {
    fn mine(&self, ctx: &LaneCtx<'_>) -> Vec<usize> {
        (self.index..ctx.owned.len()).step_by(ctx.lanes).collect()
    }

    fn read(&mut self, ctx: &LaneCtx<'_>, f: &mut dyn FnMut(RawRecord<'_>)) -> Result<()> {
        let until = ctx.until;
        let mine = self.mine(ctx);
        if mine.is_empty() {
            return Ok(());
        }
        if !self.state.assigned {
            let list = tpl(
                ctx.owned,
                mine.iter().map(|&i| (i, Offset::Offset(self.positions[i]))),
            )?;
            self.consumer
                .assign(&list)
                .map_err(Error::kafka("assign"))?;
            for &i in &mine {
                self.state.ahead[i] = Ahead::default();
            }
            self.state.kept = 0;
            self.state.assigned = true;
        }
        for &i in &mine {
            let LaneState { ahead, kept, .. } = &mut *self.state;
            let ahead = &mut ahead[i];
            // Records kept from the last batch come first, in offset order.
            while let Some(m) = ahead.records.front() {
                let off = m.offset();
                if off >= self.positions[i] && off >= until[i] {
                    break;
                }
                let size = size_of_record(m);
                if off >= self.positions[i] {
                    if !ctx.held.take(size) {
                        // The budget is spent: the record stays for the next batch.
                        return Ok(());
                    }
                    f(RawRecord::of(i, m, m.headers().map(HeaderRef::Owned)));
                    self.positions[i] = off + 1;
                }
                ahead.bytes -= size;
                *kept -= size;
                ahead.records.pop_front();
            }
            if ahead.seek && ahead.records.is_empty() {
                let tp = &ctx.owned[i];
                self.consumer
                    .seek(
                        &tp.topic,
                        tp.partition,
                        Offset::Offset(self.positions[i]),
                        REQUEST_TIMEOUT,
                    )
                    .map_err(Error::kafka("seek"))?;
                ahead.seek = false;
            }
        }
        let todo: Vec<usize> = mine
            .iter()
            .copied()
            .filter(|&i| self.positions[i] < until[i])
            .collect();
        let mut remaining = todo.len();
        let mut polls = 0u32;
        let mut idle_polls = 0u32;
        while remaining > 0 {
            if ctx.held.is_full() {
                // Another lane spent the budget: this lane's ranges end where it is.
                return Ok(());
            }
            let Some(next) = self.consumer.poll(Duration::from_millis(100)) else {
                if Instant::now() > ctx.deadline {
                    return Err(self.timeout(ctx, &todo));
                }
                idle_polls += 1;
                // A second without a record during shutdown: the read waits on the broker.
                if idle_polls >= 10 && ctx.cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                continue;
            };
            idle_polls = 0;
            // While records flow, the clock is read every few hundred, not per record.
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(512) && Instant::now() > ctx.deadline {
                return Err(self.timeout(ctx, &todo));
            }
            let m = match next {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(p)) => {
                    // Offsets held by transaction markers or removed by compaction never arrive
                    // as records: at the log end, a range is complete.
                    remaining -= self.complete_at_eof(ctx, &mine, p);
                    continue;
                }
                Err(e) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::OffsetOutOfRange) => {
                    self.state.assigned = false;
                    return Err(Error::Kafka {
                        op: "fetch",
                        source: e,
                    });
                }
                Err(e) => {
                    ctx.link.report_kafka(&e, "");
                    continue;
                }
            };
            let Some(i) = ctx.index_of(m.topic(), m.partition()) else {
                continue;
            };
            let off = m.offset();
            let ahead = &mut self.state.ahead[i];
            if off < self.positions[i] || ahead.seek {
                continue;
            }
            if off >= until[i] || !ahead.records.is_empty() {
                self.state.keep(i, &m, ctx);
                continue;
            }
            if !ctx.held.take(size_of_record(&m)) {
                // The budget is spent: the record is the next batch's first (kept, or
                // fetched again), and this lane's ranges end where it is.
                self.state.keep(i, &m, ctx);
                return Ok(());
            }
            f(RawRecord::of(i, &m, m.headers().map(HeaderRef::Borrowed)));
            self.positions[i] = off + 1;
            if self.positions[i] >= until[i] {
                remaining -= 1;
            }
        }
        Ok(())
    }

    fn timeout(&self, ctx: &LaneCtx<'_>, todo: &[usize]) -> Error {
        let behind: Vec<String> = todo
            .iter()
            .filter(|&&i| self.positions[i] < ctx.until[i])
            .map(|&i| {
                format!(
                    "{} at {} of {}",
                    ctx.owned[i], self.positions[i], ctx.until[i]
                )
            })
            .collect();
        Error::ReadTimeout(behind.join(", "))
    }

    fn complete_at_eof(&mut self, ctx: &LaneCtx<'_>, mine: &[usize], partition: i32) -> usize {
        let Ok(pos) = self.consumer.position() else {
            return 0;
        };
        let mut done = 0;
        for &i in mine {
            let tp = &ctx.owned[i];
            if tp.partition != partition || self.positions[i] >= ctx.until[i] {
                continue;
            }
            if let Some(Offset::Offset(p)) = pos
                .find_partition(&tp.topic, tp.partition)
                .map(|e| e.offset())
            {
                if p >= ctx.until[i] {
                    self.positions[i] = ctx.until[i];
                    done += 1;
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_owned_by_ordinal_modulo_workers() {
        let topics = vec![("a".to_string(), 5), ("b".to_string(), 2)];
        let w0 = assignment(&topics, 0, 2);
        let w1 = assignment(&topics, 1, 2);
        assert_eq!(
            w0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["a-0", "a-2", "a-4", "b-0"]
        );
        assert_eq!(
            w1.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["a-1", "a-3", "b-1"]
        );
        assert_eq!(assignment(&topics, 0, 1).len(), 7);
    }
}
