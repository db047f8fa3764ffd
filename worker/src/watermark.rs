//! A stage's watermark over its partitions: the least watermark of the partitions that are not
//! idle, so that a slow partition holds windows open (none of its records is then late) and a
//! silent one does not hold them forever. It never goes back.

use crate::pipeline::event_time::{least_active, Mark};
use crate::pipeline::event_window::time_text;
use crate::plan::{OffsetRange, TopicPartition};
use crate::progress::{EventTimeInfo, PartitionWatermark};
use crate::spec::JobSpec;

/// The stage's event-time clock across its partitions.
pub struct StageClock {
    idle_after_ms: Option<i64>,
    /// Per owned partition: the batch time it last read a record or had records waiting.
    last_active: Vec<i64>,
    watermark: Option<i64>,
}

impl StageClock {
    /// A clock for `partitions` partitions, all active at `now_ms`; `None` without a watermark.
    pub fn new(spec: &JobSpec, partitions: usize, now_ms: i64) -> Option<StageClock> {
        let w = spec.source.watermark.as_ref()?;
        Some(StageClock {
            idle_after_ms: w.idle_after.map(crate::spec::Duration::as_millis_i64),
            last_active: vec![now_ms; partitions],
            watermark: None,
        })
    }

    /// Moves the clock to batch `time`, given each partition's range read and high watermark
    /// and its own watermark. Returns the stage's watermark, and progress for the batch.
    pub fn advance(
        &mut self,
        time: i64,
        owned: &[TopicPartition],
        ranges: &[OffsetRange],
        highs: &[i64],
        own: &[Option<i64>],
        late: u64,
    ) -> (Option<i64>, EventTimeInfo) {
        let mut idle = Vec::with_capacity(own.len());
        for (i, r) in ranges.iter().enumerate() {
            let waiting = highs.get(i).is_some_and(|h| *h > r.until);
            if r.until > r.from || waiting {
                self.last_active[i] = time;
            }
            idle.push(
                self.idle_after_ms
                    .is_some_and(|after| time.saturating_sub(self.last_active[i]) >= after),
            );
        }
        let marks = own.iter().zip(&idle).map(|(w, idle)| Mark {
            watermark: *w,
            idle: *idle,
        });
        self.watermark = self.watermark.max(least_active(marks));
        let info = EventTimeInfo {
            watermark: self.watermark.map(time_text),
            watermark_ms: self.watermark,
            partitions: owned
                .iter()
                .zip(own)
                .zip(&idle)
                .map(|((tp, w), idle)| PartitionWatermark {
                    topic: tp.topic.to_string(),
                    partition: tp.partition,
                    watermark: w.map(time_text),
                    watermark_ms: *w,
                    idle: *idle,
                })
                .collect(),
            late_records: late,
        };
        (self.watermark, info)
    }
}
