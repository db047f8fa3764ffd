//! Reading a batch's ranges in lanes, one consumer and one thread each (partition i in lane
//! i mod lanes), within the batch's memory budget; a lane keeps what it read past a range for
//! the next batch, up to its share of the read-ahead bytes, and seeks back past that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Offset;
use tokio_util::sync::CancellationToken;

use super::record::{HeaderRef, RawRecord};
use super::{tpl, Source, SourceConsumer, REQUEST_TIMEOUT};
use crate::client::Link;
use crate::error::{Error, Result};
use crate::memory::Budget;
use crate::plan::{OffsetRange, TopicPartition};
use crate::spec::KafkaSource;

impl Source {
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

    /// Positions moved outside the read path: every lane assigns afresh before reading again.
    pub(super) fn reassign(&mut self) {
        for lane in &mut self.lanes {
            lane.state.assigned = false;
        }
    }
}

/// How many lanes read a worker's partitions: `source.kafka.readThreads`, else one per core;
/// at most one per partition.
pub(super) fn lane_count(partitions: usize, threads: Option<u32>) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let wanted = threads.map_or(cores, |t| t as usize);
    wanted.clamp(1, partitions.max(1))
}

/// Bytes of records read past a partition's range that a lane keeps for the next batch
/// (`source.kafka.readAheadBytes`, default 1 MiB); past it, the lane drops them and seeks back
/// instead.
pub(super) fn keep_ahead_bytes(spec: &KafkaSource) -> usize {
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
pub(super) struct Lane {
    consumer: Option<SourceConsumer>,
    state: LaneState,
}

impl Lane {
    pub(super) fn new(consumer: Option<SourceConsumer>, partitions: usize) -> Self {
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
            // A record already queued is taken without a wait: librdkafka reads the clock on
            // every poll that may wait, which costs more than the poll while records flow.
            let polled = self
                .consumer
                .poll(Duration::ZERO)
                .or_else(|| self.consumer.poll(Duration::from_millis(100)));
            let Some(next) = polled else {
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
