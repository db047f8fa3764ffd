//! The commit step: a batch's results made durable, and only then its offsets (or with them,
//! in one transaction). The worker's central invariant, in one place: a crash anywhere
//! replays a batch, never skips one. One order per delivery mode:
//!
//! - At least once (stdout, files, Kafka without transactions): dead letters, then the sink's
//!   outputs, then the changelog's state changes, each acknowledged, then the offsets. Dead
//!   letters go first so a dead-letter topic that fails the batch replays it before any output
//!   was written, and a replay does not write outputs twice.
//! - Kafka transactional (exactly once): the sink writes each partition's outputs, state
//!   changes, dead letters and offsets in one transaction per partition; the group commit
//!   that follows only mirrors the offsets for lag tools.
//! - Database of record (PostgreSQL): the sink stores outputs, state and offsets in one
//!   database transaction and is where a restart resumes; dead letters go first, as at least
//!   once, and the group commit again only mirrors the offsets.
//!
//! A batch too large for its memory budget is, where the sink allows ([`Sink::writes_parts`]),
//! written in parts as it is read: each part's dead letters, then its outputs, acknowledged;
//! the last part is the batch above, with its state changes and offsets. A crash between parts
//! replays the whole batch from its committed offsets, as at least once allows.
//!
//! Which order applies follows from what the sink writes itself: the state changes when it
//! took the changelog's format ([`Sink::log_state_as`]), the dead letters when it says so
//! ([`Sink::writes_dead_letters`]).

use crate::batch::BatchOutput;
use crate::changelog::Changelog;
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::error::Result;
use crate::pipeline::PartitionState;
use crate::plan::{OffsetRange, TopicPartition};
use crate::sink::Sink;
use crate::source::Source;

/// Where a batch's results go, and the order they become final in.
pub struct Commit {
    sink: Box<dyn Sink>,
    dead: DeadLetters,
    /// Where keyed state is logged; `None` when the pipeline keeps none, or the sink is the
    /// record of state.
    changelog: Option<Changelog>,
    /// The sink took the changelog's format: it logs the state changes in its transactions.
    sink_logs_state: bool,
}

impl Commit {
    /// Offers the sink the changelog's format, which a sink that logs state in its own
    /// transactions takes.
    pub fn new(mut sink: Box<dyn Sink>, dead: DeadLetters, changelog: Option<Changelog>) -> Self {
        let sink_logs_state = changelog
            .as_ref()
            .is_some_and(|log| sink.log_state_as(log.format()));
        Commit {
            sink,
            dead,
            changelog,
            sink_logs_state,
        }
    }

    /// Whether a batch may be written in parts ([`Commit::part`]) before its end.
    pub fn writes_parts(&self) -> bool {
        self.sink.writes_parts()
    }

    /// Writes a part of a batch still being read: its dead letters, then its outputs, each
    /// acknowledged. No state and no offsets: those come with the batch's end.
    ///
    /// # Errors
    /// When a part was not written or acknowledged: the engine then replays the batch.
    pub fn part(&mut self, part: &BatchOutput<'_>) -> Result<()> {
        self.dead_letters_first(part.dead)?;
        self.sink.write_part(part)
    }

    /// At least once, dead letters go before the outputs (see the module's orders); a sink
    /// that writes them in its own transactions keeps them.
    fn dead_letters_first(&mut self, dead: &[DeadLetter]) -> Result<()> {
        if !self.sink.writes_dead_letters() {
            self.dead.write(dead)?;
        }
        Ok(())
    }

    /// The batch failed and runs again from its start: the sink drops what its parts left
    /// unfinished.
    pub fn abandon(&mut self) {
        self.sink.abandon();
    }

    /// Writes the batch (`ranges` are what it read of each owned partition) and commits its
    /// offsets, in the delivery mode's order; then lets the changelog note the batch (and
    /// write its local snapshots when one is due).
    ///
    /// # Errors
    /// When any part was not written or acknowledged, or the offsets were not committed: the
    /// engine then replays the batch.
    pub fn batch(
        &mut self,
        owned: &[TopicPartition],
        batch: &BatchOutput<'_>,
        ranges: &[OffsetRange],
        source: &mut Source,
        states: &[PartitionState],
    ) -> Result<()> {
        self.dead_letters_first(batch.dead)?;
        self.sink.write(batch)?;
        if !self.sink_logs_state {
            if let Some(log) = &mut self.changelog {
                log.write(owned, batch)?;
            }
        }
        // With a transactional sink the offsets are already stored with the output; this
        // commit mirrors them to the group, where lag tools read them.
        source.commit(ranges)?;
        if let Some(log) = &mut self.changelog {
            log.batch_done(owned, batch, states);
        }
        Ok(())
    }
}
