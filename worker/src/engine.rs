//! The batch loop: plan -> read + run the pipeline -> write -> commit -> progress.
//!
//! Runs on its own thread, since librdkafka's calls block. Batches start on wall-clock ticks of
//! the batch interval; a batch that overruns delays the next ones, and how many are due is the
//! batch lag. Offsets are committed only after the sink and the dead-letter topic acknowledged
//! the batch: a crash anywhere replays, never skips.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn};

use crate::batch::{BatchOutput, PartitionOutput};
use crate::changelog::Changelog;
use crate::client::Identity;
use crate::commit::Commit;
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::error::{Class, Error, Result};
use crate::expr::{Val, ValueNeeds};
use crate::memory::Budget;
use crate::pipeline::event_time::{marker, read_event_header, read_marker, Mark};
use crate::pipeline::{Output, PartitionRun, PartitionState, Pipeline, StateChange};
use crate::plan::{OffsetRange, Planner, RateEstimator, TopicPartition};
use crate::progress::{now_ms, rfc3339, BatchInfo, EventTimeInfo, Progress, RangeInfo, ResumedAt};
use crate::record::{decode_key_as, decode_value, Codecs, DecodeError, Record};
use crate::sink::Sink;
use crate::source::{RawRecord, Source, Taken};
use crate::spec::{Format, JobFile};
use crate::table::Tables;
use crate::watermark::StageClock;
use weir_contract::stages::{EVENT_TIME_HEADER, PARTIAL_HEADER, WATERMARK_HEADER};

/// One source lane's share of a batch.
struct LaneWork<'p> {
    /// Indexed like the source's partitions; only this lane's are set.
    runs: Vec<Option<PartitionRun<'p>>>,
    dead: Vec<DeadLetter>,
    read: Read,
    /// A failure that is no record's fault (the schema registry did not answer): the batch
    /// is tried again rather than any record dead-lettered.
    failed: Option<Error>,
}

/// What a batch read: its records, and of them the partials of a combined shuffle with the
/// records they stand for.
#[derive(Clone, Copy, Debug, Default)]
struct Read {
    records: u64,
    partials: u64,
    represented: u64,
}

impl Read {
    fn add(&mut self, other: Read) {
        self.records += other.records;
        self.partials += other.partials;
        self.represented += other.represented;
    }

    /// The records of the stage before that this batch's records stand for, when it read
    /// partials: each plain record one, each partial the records it combined.
    fn represented_in(&self) -> Option<u64> {
        (self.partials > 0).then(|| self.records - self.partials + self.represented)
    }
}

/// How a run ends early, and what its batches may hold.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Stop after this many batches.
    pub max_batches: Option<u64>,
    /// What one batch may hold in flight (of all the job's stages together: each stage gets
    /// its part); by default what the fallback memory limit allows.
    pub budget: Budget,
}

/// The worker's engine, connected and resumed.
pub struct Engine {
    job: JobFile,
    pipeline: Pipeline,
    /// Keyed state per owned partition, parallel to `source.owned()`, kept across batches.
    states: Vec<PartitionState>,
    source: Source,
    /// The sink, the dead-letter topic and the changelog, written in the delivery mode's order.
    commit: Commit,
    progress: Arc<Progress>,
    planner: Planner,
    estimator: Option<RateEstimator>,
    /// The repartition step whose topic this engine reads ("input" for the job's input).
    stage: Arc<str>,
    /// What the last batch held (its largest part, when it was read in parts).
    held: Taken,
    /// The parts the last batch was written in before its end.
    parts: u64,
    /// Whether a batch larger than its budget is read in parts (else the budget caps it).
    in_parts: bool,
    /// The stage's watermark over its partitions, when the job has one.
    clock: Option<StageClock>,
    /// Before a shuffle: the watermark records last written per owned partition.
    sent_marks: Vec<(Val, Val)>,
    /// The join steps' tables, followed before every batch.
    tables: Tables,
    /// The source's schemas, with `format: avro` or `protobuf`.
    codecs: Codecs,
}

impl Engine {
    /// Compiles the pipeline, connects to Kafka and resumes from the committed offsets.
    ///
    /// # Errors
    /// A pipeline this worker cannot run, brokers it cannot reach, or [`Error::Cancelled`] when
    /// shutdown came while it was still connecting.
    pub fn connect(
        job: JobFile,
        id: &Identity,
        mut sink: Box<dyn Sink>,
        progress: Arc<Progress>,
        cancel: &CancellationToken,
    ) -> Result<Engine> {
        let pipeline = Pipeline::compile(&job.spec)?;
        let group = job.spec.group_id(&id.namespace, &id.job);
        let interval = job.spec.batch_interval.as_std();
        let mut source = Source::connect(
            &job.spec.source.kafka,
            id,
            &group,
            interval,
            &progress,
            cancel,
        )?;
        // Fence first, then read offsets (Kafka's transactional order): the sink's recovery
        // starts the transactional producers (or takes the database's partition epochs), which
        // aborts what an older worker of these partitions left open and stops it committing
        // more. Offsets read before that could be overtaken by the older worker's last batches,
        // whose records would then be counted again.
        let recovered = sink.take_over(source.owned())?;
        let tables = Tables::open(&job.spec, id, &group, &pipeline, source.owned())?;
        let codecs = Codecs::for_source(&job.spec.source).map_err(Error::Settings)?;
        source.resume(&job.spec.source.kafka)?;
        let dead = DeadLetters::new(&job.spec, id)?;
        let k = &job.spec.source.kafka;
        let interval_ms = interval.as_millis().max(1) as u64;
        let planner = Planner {
            batch_interval_ms: interval_ms,
            max_rate_per_partition: k.max_rate_per_partition,
            estimated_rate: None,
            initial_rate: k.backpressure.initial_rate,
            budget: Budget::default(),
            bytes_per_record: None,
        };
        let estimator = k
            .backpressure
            .enabled
            .then(|| RateEstimator::new(interval_ms, k.backpressure.min_rate as f64));

        let mut changelog = match &recovered {
            None => Changelog::open(&job.spec, id, &group, &pipeline, source.partition_counts())?,
            Some(_) => None,
        };
        let states = match (recovered, &mut changelog) {
            (Some(r), _) => {
                let moves: Vec<(usize, i64)> = source
                    .positions()
                    .iter()
                    .zip(&r.offsets)
                    .enumerate()
                    .filter_map(|(i, ((_, at), stored))| match stored {
                        Some(o) if o != at => Some((i, *o)),
                        _ => None,
                    })
                    .collect();
                source.resume_at(&moves)?;
                let mut states = Vec::with_capacity(r.changes.len());
                for (tp, changes) in source.owned().iter().zip(r.changes) {
                    states.push(pipeline.restore(changes).map_err(|e| {
                        Error::Fatal(format!("{e} (the sink's stored state, {tp})"))
                    })?);
                }
                info!(
                    moved = moves.len(),
                    "resumed from the offsets and state stored with the sink's output"
                );
                states
            }
            (None, Some(log)) => {
                let positions: Vec<i64> = source.positions().iter().map(|(_, o)| *o).collect();
                let reset = job
                    .spec
                    .checkpoint
                    .as_ref()
                    .map_or(&[][..], |c| &c.reset_state[..]);
                let restored = log.restore(
                    &job.spec,
                    id,
                    &group,
                    &pipeline,
                    source.owned(),
                    &positions,
                    reset,
                )?;
                source.resume_at(&restored.moves)?;
                info!(
                    topic = log.format().topic(),
                    changes = restored.changes,
                    replayed = restored.replayed,
                    from_snapshots = restored.from_snapshots,
                    "restored keyed state from the changelog"
                );
                restored.states
            }
            (None, None) => source
                .owned()
                .iter()
                .map(|_| pipeline.new_state())
                .collect(),
        };
        progress.resumed(
            source
                .positions()
                .into_iter()
                .map(|(tp, offset)| ResumedAt {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    offset,
                })
                .collect(),
        );
        let commit = Commit::new(sink, dead, changelog);
        let clock = StageClock::new(&job.spec, source.owned().len(), now_ms());
        let in_parts = commit.writes_parts() && !pipeline.holds_values();
        Ok(Engine {
            job,
            pipeline,
            states,
            commit,
            source,
            progress,
            planner,
            estimator,
            stage: Arc::from("input"),
            held: Taken::default(),
            parts: 0,
            in_parts,
            clock,
            sent_marks: Vec::new(),
            tables,
            codecs,
        })
    }

    /// Whether a batch larger than the budget is read in parts rather than capped: the sink
    /// takes parts and the pipeline holds no batch's values.
    pub fn reads_in_parts(&self) -> bool {
        self.in_parts
    }

    /// Caps batches by the budget rather than reading them in parts: the stage after this one
    /// takes its batches whole, and this one reading on would only fill the repartition topic
    /// between them faster than that stage drains it (as far as the topic's retention, on a
    /// broker that bounds it by size).
    pub fn read_whole_batches(&mut self) {
        self.in_parts = false;
    }

    /// Names the stage in the engine's logs: the repartition step it reads after.
    pub fn set_stage(&mut self, stage: &str) {
        self.stage = Arc::from(stage);
    }

    /// Each owned partition with the offset its next batch starts at.
    pub fn positions(&self) -> Vec<(crate::plan::TopicPartition, i64)> {
        self.source.positions()
    }

    /// The largest partition count of the input topics: what topics the job derives from
    /// its input (repartition topics) are created with.
    pub fn input_partitions(&self) -> i32 {
        self.source
            .partition_counts()
            .iter()
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(1)
    }

    /// Runs batches until cancelled (the batch in flight finishes and commits) or until
    /// `max_batches`. Returns the number of batches run.
    ///
    /// # Errors
    /// A fatal error, or an error that outlasted its retries.
    pub fn run(&mut self, opts: &Options, cancel: &CancellationToken) -> Result<u64> {
        self.planner.budget = opts.budget;
        let interval = self.planner.batch_interval_ms as i64;
        let mut next = (now_ms() / interval + 1) * interval;
        let mut seq = 0u64;
        // Batches in a row that the brokers did not answer for.
        let mut unplanned = 0u64;
        while !cancel.is_cancelled() && opts.max_batches.is_none_or(|m| seq < m) {
            let now = now_ms();
            if now < next {
                std::thread::sleep(Duration::from_millis((next - now).min(100) as u64));
                continue;
            }
            let pending = ((now - next) / interval) as u64;
            let span = info_span!("batch", job = %self.job.name, stage = %self.stage, worker = self.progress.identity().ordinal, batch = seq);
            let _enter = span.enter();
            let Some(info) = self.batch_with_retries(seq, next, pending, cancel)? else {
                info!("stopping with the failed batch uncommitted; it runs again on restart");
                break;
            };
            match (&info.source_error, info.lag) {
                (Some(why), _) => {
                    unplanned += 1;
                    // The first, then one in 30: a dead broker is said, not repeated forever.
                    if unplanned == 1 || unplanned.is_multiple_of(30) {
                        warn!(unplanned, error = %why, "batch not planned: the brokers did not answer for the watermarks; lag is unknown and nothing was read");
                    }
                }
                (None, lag) => {
                    if unplanned > 0 {
                        info!(
                            unplanned,
                            "the brokers answer again; reading on from the committed offsets"
                        );
                        unplanned = 0;
                    }
                    info!(
                        records_in = info.records_in,
                        partials_in = info.partials_in,
                        records_out = info.records_out,
                        dead_lettered = info.dead_lettered,
                        processing_ms = info.processing_ms,
                        scheduling_delay_ms = info.scheduling_delay_ms,
                        lag = lag.unwrap_or_default(),
                        pending_batches = info.pending_batches,
                        held_bytes = self.held.bytes,
                        parts = self.parts,
                        "batch completed"
                    );
                }
            }
            if let Some(et) = info.event_time.as_ref().filter(|e| e.late_records > 0) {
                // Never silently: the window's `late` policy says where they went.
                info!(
                    late_records = et.late_records,
                    watermark = et.watermark.as_deref().unwrap_or("unknown"),
                    "records behind every event-time window they fall in: dropped, dead-lettered or written as late updates, per the window's late policy"
                );
            }
            if let (Some(est), None) = (&mut self.estimator, &info.source_error) {
                if let Some(rate) = est.compute(
                    now_ms(),
                    info.records_in,
                    info.processing_ms,
                    info.scheduling_delay_ms,
                ) {
                    self.planner.estimated_rate = Some(rate);
                }
            }
            self.progress.record(info);
            seq += 1;
            next += interval;
        }
        Ok(seq)
    }

    /// Runs a batch, replaying it after abortable errors. `None` when cancelled while the
    /// batch kept failing.
    fn batch_with_retries(
        &mut self,
        seq: u64,
        time: i64,
        pending: u64,
        cancel: &CancellationToken,
    ) -> Result<Option<BatchInfo>> {
        let retries = self.job.spec.source.kafka.retries.clone();
        let mut wait = retries.backoff.as_std();
        let mut attempt = 0;
        loop {
            let result = self.batch(seq, time, pending);
            // `parts` is the batch's own only once it ran to its end.
            if result.is_ok() && self.parts > 0 {
                // A batch read in parts gives back what its last part took, as every part
                // before it did. A batch taken whole does not: its budget caps it, and with
                // the pages given back and faulted in again after every one, the
                // exactly-once benchmark's CPU per record rose (bench/drain.sh).
                crate::memory::release_freed();
            }
            match result {
                Ok(info) => return Ok(Some(info)),
                Err((e, ranges)) => {
                    // Whatever is done next, the batch runs again from its start, if at all.
                    self.commit.abandon();
                    if let Some(r) = &ranges {
                        self.source.rewind(r);
                    }
                    if matches!(&e, Error::Kafka { source, .. } if source.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::OffsetOutOfRange))
                    {
                        // Retention overtook the job mid-read: the job's policy decides, as at
                        // start; the batch then runs again from where that leaves it. Without
                        // watermarks the next attempt plans without them, and says so.
                        if let Ok(marks) = self.source.fresh_watermarks() {
                            self.source.check_log_bounds(&marks)?;
                        }
                        continue;
                    }
                    if matches!(e, Error::Cancelled) {
                        warn!("stopping during a batch that waits on the brokers");
                        return Ok(None);
                    }
                    if e.class() == Class::Fatal || attempt >= retries.max_retries {
                        return Err(e);
                    }
                    if cancel.is_cancelled() {
                        warn!(error = %e, "batch failed during shutdown");
                        return Ok(None);
                    }
                    attempt += 1;
                    warn!(error = %e, attempt, "batch failed; replaying it from the committed offsets in {wait:?}");
                    if !crate::shutdown::sleep(wait, cancel) {
                        return Ok(None);
                    }
                    wait = (wait * 2).min(retries.backoff.as_std() * 30);
                }
            }
        }
    }

    /// A batch the brokers gave no watermarks for: nothing read, lag unknown, and why.
    fn unplanned(
        &self,
        seq: u64,
        time: i64,
        pending: u64,
        scheduling_delay_ms: u64,
        why: &Error,
    ) -> BatchInfo {
        BatchInfo {
            batch: seq,
            batch_time: rfc3339(time),
            batch_time_ms: time,
            ranges: self
                .source
                .positions()
                .into_iter()
                .map(|(tp, at)| RangeInfo {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    from: at,
                    until: at,
                    high_watermark: None,
                    lag: None,
                })
                .collect(),
            records_in: 0,
            partials_in: 0,
            represented_in: None,
            records_out: 0,
            dead_lettered: 0,
            scheduling_delay_ms,
            processing_ms: 0,
            total_delay_ms: scheduling_delay_ms,
            pending_batches: pending,
            lag: None,
            rate_limit: None,
            source_error: Some(why.to_string()),
            event_time: None,
        }
    }

    /// One batch: plan, then [`read_and_run`], [`finish`], [`Commit::batch`] and the
    /// progress report. On error, returns the ranges it had planned so they can be rewound.
    fn batch(
        &mut self,
        seq: u64,
        time: i64,
        pending: u64,
    ) -> std::result::Result<BatchInfo, (Error, Option<Vec<OffsetRange>>)> {
        let started = Instant::now();
        let scheduling_delay_ms = (now_ms() - time).max(0) as u64;
        let marks = match self.source.fresh_watermarks() {
            Ok(m) => m,
            // No answer: this batch reads nothing and says why; the next one asks again.
            Err(e) if e.class() == Class::Retriable => {
                return Ok(self.unplanned(seq, time, pending, scheduling_delay_ms, &e));
            }
            Err(e) => return Err((e, None)),
        };
        self.source
            .check_log_bounds(&marks)
            .map_err(|e| (e, None))?;
        // Every row written before the batch was planned, for its records to see.
        match self.tables.catch_up() {
            Ok(()) => {}
            Err(e) if e.class() == Class::Retriable => {
                return Ok(self.unplanned(seq, time, pending, scheduling_delay_ms, &e));
            }
            Err(e) => return Err((e, None)),
        }
        let highs: Vec<i64> = marks.iter().map(|(_, h)| *h).collect();
        let target = self.planner.target(&self.source.positions(), &highs);
        let owned = self.source.owned().to_vec();
        let budget = self.planner.budget;
        // A batch larger than its budget is read a budget at a time, each part's outputs
        // written before the next is read, for as long as one interval: a backlog then
        // drains as fast as the worker runs, not one budget per interval. Where the sink or
        // the pipeline holds the whole batch, the budget ends the batch instead.
        let read_for = Duration::from_millis(self.planner.batch_interval_ms);
        let fail = |e: Error| (e, Some(target.clone()));
        let mut work = start_work(
            self.source.lanes(),
            &self.pipeline,
            &mut self.states,
            owned.len(),
            time,
        );
        let mut held = Taken::default();
        let mut parts = 0u64;
        let mut parts_out = 0u64;
        let mut parts_dead = 0u64;
        let (capped, ranges) = loop {
            let planned = self
                .planner
                .within_budget(&self.source.positions(), &target);
            let taken = read_and_run(
                &mut self.source,
                &self.pipeline,
                &mut work,
                self.job.spec.source.format,
                &self.codecs,
                &owned,
                &planned,
                budget,
            )
            .map_err(fail)?;
            held.bytes = held.bytes.max(taken.bytes);
            held.records = held.records.max(taken.records);
            if taken.records > 0 {
                self.planner.bytes_per_record = Some(taken.bytes as f64 / taken.records as f64);
            }
            let so_far = self.source.read_ranges(target.clone());
            // The budget ended this read before its planned offsets.
            let capped = so_far.iter().zip(&planned).any(|(r, p)| r.until < p.until);
            let left = so_far.iter().zip(&target).any(|(r, t)| r.until < t.until);
            if !left || !self.in_parts || taken.records == 0 || started.elapsed() >= read_for {
                // What was read, parts and all, is the batch, and its offsets are committed;
                // the next batches read the rest.
                break (capped, so_far);
            }
            let (outputs, dead) = take_part(&mut work, owned.len());
            let part = BatchOutput {
                batch_time_ms: time,
                dead: &dead,
                partitions: so_far
                    .iter()
                    .zip(&outputs)
                    .map(|(range, outputs)| PartitionOutput {
                        range,
                        outputs,
                        changes: &[],
                        marker: None,
                    })
                    .collect(),
            };
            self.commit.part(&part).map_err(fail)?;
            parts += 1;
            parts_out += part.records() as u64;
            parts_dead += dead.len() as u64;
            // The part is written: what its records and outputs took goes back.
            drop((outputs, dead));
            crate::memory::release_freed();
        };
        let fail = |e: Error| (e, Some(ranges.clone()));
        self.held = held;
        self.parts = parts;
        self.progress
            .held(budget, held.bytes, held.records, capped, parts);
        let (outputs, dead, read, event_time) =
            finish(&owned, work, time, &ranges, &highs, self.clock.as_mut());
        // A replay of this batch recomputes its changes: taking them here loses nothing.
        let changes: Vec<Vec<StateChange>> = self
            .states
            .iter_mut()
            .map(PartitionState::take_changes)
            .collect();
        // Before a shuffle, each partition's watermark goes to the next stage when it moved.
        let marks: Vec<(Val, Val)> = match &event_time {
            Some(info) if self.pipeline.reports_watermarks() => {
                let inputs = self
                    .source
                    .partition_counts()
                    .iter()
                    .map(|(_, n)| *n as usize);
                markers(info, inputs.sum())
            }
            _ => Vec::new(),
        };
        let batch = BatchOutput {
            batch_time_ms: time,
            dead: &dead,
            partitions: ranges
                .iter()
                .zip(&outputs)
                .zip(&changes)
                .enumerate()
                .map(|(i, ((range, outputs), changes))| PartitionOutput {
                    range,
                    outputs,
                    changes,
                    marker: marks.get(i).filter(|m| self.sent_marks.get(i) != Some(*m)),
                })
                .collect(),
        };
        let records_out = parts_out + batch.records() as u64;
        self.commit
            .batch(&owned, &batch, &ranges, &mut self.source, &self.states)
            .map_err(fail)?;
        if !marks.is_empty() {
            self.sent_marks = marks;
        }

        let processing_ms = started.elapsed().as_millis() as u64;
        let range_info = range_info(&ranges, &highs);
        Ok(BatchInfo {
            batch: seq,
            batch_time: rfc3339(time),
            batch_time_ms: time,
            lag: Some(range_info.iter().filter_map(|r| r.lag).sum()),
            source_error: None,
            ranges: range_info,
            records_in: read.records,
            partials_in: read.partials,
            represented_in: read.represented_in(),
            records_out,
            dead_lettered: parts_dead + dead.len() as u64,
            scheduling_delay_ms,
            processing_ms,
            total_delay_ms: scheduling_delay_ms + processing_ms,
            pending_batches: pending,
            rate_limit: self.planner.estimated_rate,
            event_time,
        })
    }
}

/// Each source lane's share of a batch: the runs of its partitions' pipelines, started over
/// their state.
fn start_work<'p>(
    lanes: usize,
    pipeline: &'p Pipeline,
    states: &'p mut [PartitionState],
    owned: usize,
    time: i64,
) -> Vec<LaneWork<'p>> {
    let mut work: Vec<LaneWork<'_>> = (0..lanes)
        .map(|_| LaneWork {
            runs: (0..owned).map(|_| None).collect(),
            dead: Vec::new(),
            read: Read::default(),
            failed: None,
        })
        .collect();
    for (i, state) in states.iter_mut().enumerate() {
        work[i % lanes].runs[i] = Some(pipeline.start(state, time));
    }
    work
}

/// A part of a batch read so far: per owned partition the outputs of its records that passed
/// every step, and the dead letters; taken, so that the batch no longer holds them.
fn take_part(work: &mut [LaneWork<'_>], owned: usize) -> (Vec<Vec<Output>>, Vec<DeadLetter>) {
    let mut outputs: Vec<Vec<Output>> = (0..owned).map(|_| Vec::new()).collect();
    let mut dead = Vec::new();
    for w in work {
        dead.append(&mut w.dead);
        for (i, run) in w.runs.iter_mut().enumerate() {
            if let Some(run) = run {
                outputs[i] = run.take_outputs();
            }
        }
    }
    (outputs, dead)
}

/// Read and run: reads the planned ranges in the source's lanes, each lane decoding its
/// partitions' records and pushing them through their pipeline runs in `work`; a record that
/// cannot be decoded or fails a step becomes a dead letter. Returns what the read took in
/// against its budget.
///
/// # Errors
/// As [`Source::read`].
#[allow(clippy::too_many_arguments)]
fn read_and_run(
    source: &mut Source,
    pipeline: &Pipeline,
    work: &mut [LaneWork<'_>],
    format: Format,
    codecs: &Codecs,
    owned: &[TopicPartition],
    planned: &[OffsetRange],
    budget: Budget,
) -> Result<Taken> {
    let needs = pipeline.needs();
    // Only a repartition topic holds partials and watermark records, and carries event times;
    // only the stage's first step merges partials.
    let shuffle = format == Format::Shuffle;
    // A partial or a watermark record: key and value in the worker's own encoding, whole.
    let decode_whole = |raw: &RawRecord<'_>| {
        Ok::<_, crate::record::DecodeError>((
            decode_key_as(format, raw.key)?,
            decode_value(format, raw.payload, &ValueNeeds::Whole)?,
        ))
    };
    let on_record = |w: &mut LaneWork<'_>, raw: RawRecord<'_>| {
        w.read.records += 1;
        let tp = &owned[raw.index];
        let letter = |step, error: String| DeadLetter {
            topic: tp.topic.clone(),
            partition: tp.partition,
            offset: raw.offset,
            key: raw.key.map(<[u8]>::to_vec),
            payload: raw.payload.map(<[u8]>::to_vec),
            headers: raw.header_pairs(),
            step,
            error,
        };
        // The stage before's watermark of one of its input partitions: no record, but what
        // closes this stage's event-time windows.
        if shuffle && raw.header(WATERMARK_HEADER).is_some() {
            let mark = decode_whole(&raw)
                .map_err(|e| e.to_string())
                .and_then(|(key, value)| read_marker(key, &value).map_err(str::to_string));
            match mark {
                Ok((id, mark, n)) => {
                    if let Some(run) = w.runs[raw.index].as_mut() {
                        run.mark(id, mark, n);
                    }
                }
                Err(e) => w.dead.push(letter(None, e)),
            }
            return;
        }
        // A combined shuffle's partial: merged into the aggregate it was combined for. Plain
        // records of the same topic (written before combining) are added as records below.
        if shuffle {
            if let Some(kind) = raw.header(PARTIAL_HEADER) {
                w.read.partials += 1;
                let merged = decode_whole(&raw)
                    .map_err(|e| (None, e.to_string()))
                    .and_then(|(key, value)| match w.runs[raw.index].as_mut() {
                        Some(run) => run
                            .push_partial(kind, key, &value)
                            .map_err(|f| (Some(f.step), f.error.0)),
                        None => Ok(0),
                    });
                match merged {
                    Ok(n) => w.read.represented += n,
                    Err((step, error)) => w.dead.push(letter(step, error)),
                }
                return;
            }
        }
        let decoded = match &codecs.value {
            Some(codec) => codec.decode(raw.payload),
            None => decode_value(format, raw.payload, &needs.value),
        };
        let key = match (&codecs.key, needs.key) {
            (_, false) => Ok(Val::Null),
            (Some(codec), true) => codec.decode(raw.key).map_err(|e| match e {
                e @ DecodeError::Unavailable(_) => e,
                e => DecodeError::Schema(format!("the key: {e}")),
            }),
            (None, true) => decode_key_as(format, raw.key),
        };
        let (key, value) = match key.and_then(|k| Ok((k, decoded?))) {
            Ok(kv) => kv,
            Err(DecodeError::Unavailable(why)) => {
                w.failed.get_or_insert(Error::Unavailable(why));
                return;
            }
            Err(e) => return w.dead.push(letter(None, e.to_string())),
        };
        let (event_time, late_against) =
            match shuffle.then(|| raw.header(EVENT_TIME_HEADER)).flatten() {
                None => (None, i64::MIN),
                Some(h) => match read_event_header(h) {
                    Ok((time, against)) => (Some(time), against),
                    Err(e) => return w.dead.push(letter(None, e)),
                },
            };
        let rec = Record {
            topic: tp.topic.clone(),
            partition: tp.partition,
            offset: raw.offset,
            timestamp: raw.timestamp,
            key,
            value,
            headers: if needs.headers {
                raw.headers()
            } else {
                Val::Null
            },
            item: Val::Null,
            item_is_output: false,
            table: Val::Null,
            event_time,
            late_against,
        };
        if let Some(run) = w.runs[raw.index].as_mut() {
            if let Err(f) = run.push(rec) {
                w.dead.push(letter(Some(f.step), f.error.0));
            }
        }
    };
    let taken = source.read(planned, budget, work, &on_record)?;
    match work.iter_mut().find_map(|w| w.failed.take()) {
        Some(e) => Err(e),
        None => Ok(taken),
    }
}

/// Finish: ends every partition's run at batch `time` (aggregates, windows and state steps
/// emit here; event-time windows close at the stage's watermark, moved by the `ranges` read),
/// with the lanes' dead letters and those of the barrier steps. Returns the outputs per owned
/// partition, the dead letters, the records read and where event time stands.
fn finish(
    owned: &[TopicPartition],
    work: Vec<LaneWork<'_>>,
    time: i64,
    ranges: &[OffsetRange],
    highs: &[i64],
    clock: Option<&mut StageClock>,
) -> (
    Vec<Vec<Output>>,
    Vec<DeadLetter>,
    Read,
    Option<EventTimeInfo>,
) {
    let mut dead: Vec<DeadLetter> = Vec::new();
    let mut read = Read::default();
    let mut runs: Vec<Option<PartitionRun<'_>>> = (0..owned.len()).map(|_| None).collect();
    for w in work {
        read.add(w.read);
        dead.extend(w.dead);
        for (i, run) in w.runs.into_iter().enumerate() {
            if run.is_some() {
                runs[i] = run;
            }
        }
    }

    let (watermark, event_time) = match clock {
        Some(clock) => {
            let own: Vec<Option<i64>> = runs
                .iter()
                .map(|r| r.as_ref().and_then(PartitionRun::watermark))
                .collect();
            let late = runs.iter().flatten().map(PartitionRun::late).sum();
            let (w, info) = clock.advance(time, owned, ranges, highs, &own, late);
            (w, Some(info))
        }
        None => (None, None),
    };
    let mut outputs: Vec<Vec<Output>> = Vec::with_capacity(owned.len());
    for (tp, run) in owned.iter().zip(runs) {
        let Some(run) = run else {
            outputs.push(Vec::new());
            continue;
        };
        let (out, failures) = run.finish(&tp.topic, tp.partition, watermark);
        for (o, f) in failures {
            dead.push(DeadLetter {
                topic: tp.topic.clone(),
                partition: tp.partition,
                offset: -1,
                key: Some(o.key.to_payload()),
                payload: Some(o.value.to_payload()),
                headers: Vec::new(),
                step: Some(f.step),
                error: f.error.0,
            });
        }
        outputs.push(out);
    }
    (outputs, dead, read, event_time)
}

/// Each owned partition's watermark record for the stage after a shuffle.
fn markers(info: &EventTimeInfo, partitions: usize) -> Vec<(Val, Val)> {
    info.partitions
        .iter()
        .map(|p| {
            let mark = Mark {
                watermark: p.watermark_ms,
                idle: p.idle,
            };
            marker(&p.topic, p.partition, mark, partitions)
        })
        .collect()
}

/// Progress: each range read, with its partition's high watermark and the lag left.
fn range_info(ranges: &[OffsetRange], highs: &[i64]) -> Vec<RangeInfo> {
    ranges
        .iter()
        .zip(highs)
        .map(|(r, h)| RangeInfo {
            topic: r.topic.to_string(),
            partition: r.partition,
            from: r.from,
            until: r.until,
            high_watermark: Some(*h),
            lag: Some((h - r.until).max(0)),
        })
        .collect()
}
