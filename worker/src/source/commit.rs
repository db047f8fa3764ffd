//! The group's offsets after a batch: committed only after its output is acknowledged (or
//! mirrored after a transaction stored them), and a rewind to them after an aborted batch.

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::Source;
use crate::error::{Error, Result};
use crate::plan::OffsetRange;

impl Source {
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

    pub(super) fn commit_tpl(&self, tpl: &TopicPartitionList) -> Result<()> {
        self.retry.run("committing offsets", || {
            self.consumer
                .commit(tpl, CommitMode::Sync)
                .map_err(Error::kafka("commit"))
        })
    }

    /// Forgets the progress of an aborted batch: the next read starts at the committed offsets.
    pub fn rewind(&mut self, ranges: &[OffsetRange]) {
        for (i, r) in ranges.iter().enumerate() {
            self.positions[i] = r.from;
        }
        self.reassign();
    }
}
