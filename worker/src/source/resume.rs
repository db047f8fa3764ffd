//! Which partitions this worker owns, and where each resumes: the committed offset, an
//! explicit offset, or the starting policy; and the log's bounds, checked by the job's
//! `offsetOutOfRange` policy before anything is read.

use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use super::{with_link_error, Source, REQUEST_TIMEOUT};
use crate::error::{Error, Result};
use crate::plan::TopicPartition;
use crate::spec::{KafkaSource, OutOfRangePolicy, StartingOffsets};

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

impl Source {
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
