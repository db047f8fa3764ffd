//! Batch plans: which offsets each partition reads in a batch.
//!
//! PURE. A plan caps each partition's range by the high watermark, by `maxRatePerPartition` x
//! the batch interval, and by the backpressure estimate, which Spark's PID estimator computes
//! from how fast the last batches were processed and how late they started. A batch as a
//! whole is also capped by its memory [`Budget`]: however large the backlog, a plan asks for
//! no more records than the budget holds (and the reader stops where its bytes are spent).

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::memory::Budget;

/// A topic partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: Arc::from(topic),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// The offsets one partition reads in a batch: `[from, until)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OffsetRange {
    pub topic: Arc<str>,
    pub partition: i32,
    pub from: i64,
    pub until: i64,
}

impl OffsetRange {
    pub fn count(&self) -> i64 {
        (self.until - self.from).max(0)
    }
}

/// Spark's PID rate estimator (proportional 1.0, integral 0.2, derivative 0 by default).
#[derive(Clone, Debug)]
pub struct RateEstimator {
    batch_interval_ms: f64,
    proportional: f64,
    integral: f64,
    derivative: f64,
    min_rate: f64,
    latest_time: i64,
    latest_rate: f64,
    latest_error: f64,
    first_run: bool,
}

impl RateEstimator {
    pub fn new(batch_interval_ms: u64, min_rate: f64) -> Self {
        Self {
            batch_interval_ms: batch_interval_ms as f64,
            proportional: 1.0,
            integral: 0.2,
            derivative: 0.0,
            min_rate,
            latest_time: -1,
            latest_rate: -1.0,
            latest_error: -1.0,
            first_run: true,
        }
    }

    /// Feeds a completed batch; returns the new rate (records/s for the whole worker) once
    /// there is one.
    pub fn compute(
        &mut self,
        time_ms: i64,
        elements: u64,
        processing_ms: u64,
        scheduling_delay_ms: u64,
    ) -> Option<f64> {
        if time_ms <= self.latest_time || elements == 0 || processing_ms == 0 {
            return None;
        }
        let delay_since_update = (time_ms - self.latest_time) as f64 / 1000.0;
        let processing_rate = elements as f64 / processing_ms as f64 * 1000.0;
        let error = self.latest_rate - processing_rate;
        // How much of the backlog the scheduling delay stands for, at the processing rate.
        let historical_error =
            scheduling_delay_ms as f64 * processing_rate / self.batch_interval_ms;
        let d_error = (error - self.latest_error) / delay_since_update;
        let new_rate = (self.latest_rate
            - self.proportional * error
            - self.integral * historical_error
            - self.derivative * d_error)
            .max(self.min_rate);
        self.latest_time = time_ms;
        if self.first_run {
            self.latest_rate = processing_rate;
            self.latest_error = 0.0;
            self.first_run = false;
            None
        } else {
            self.latest_rate = new_rate;
            self.latest_error = error;
            Some(new_rate)
        }
    }
}

/// Plans batches for one worker's partitions.
#[derive(Clone, Debug)]
pub struct Planner {
    pub batch_interval_ms: u64,
    pub max_rate_per_partition: Option<u64>,
    /// The backpressure estimate: records/s for all of this worker's partitions.
    pub estimated_rate: Option<f64>,
    /// Per-partition rate before the first estimate.
    pub initial_rate: Option<u64>,
    /// What a batch may hold.
    pub budget: Budget,
    /// Bytes per record of the last batches that read any, to turn the budget's bytes into
    /// records; until one did, the budget's records alone cap the plan.
    pub bytes_per_record: Option<f64>,
}

impl Planner {
    /// Ranges for one batch. `positions` are each partition's next offset; `ends` the high
    /// watermarks, in the same order. The batch's [`target`](Self::target) within its budget.
    pub fn plan(&self, positions: &[(TopicPartition, i64)], ends: &[i64]) -> Vec<OffsetRange> {
        let target = self.target(positions, ends);
        self.within_budget(positions, &target)
    }

    /// What a batch reads if memory allows: each partition up to its high watermark, capped by
    /// the rate limits, not by the budget. A batch read in parts reads toward it, a budget's
    /// worth at a time.
    pub fn target(&self, positions: &[(TopicPartition, i64)], ends: &[i64]) -> Vec<OffsetRange> {
        let caps = self.max_per_partition(positions, ends);
        positions
            .iter()
            .zip(ends)
            .enumerate()
            .map(|(i, ((tp, from), end))| {
                let lag = (end - from).max(0);
                let n = caps.as_ref().map_or(lag, |c| c[i].min(lag));
                OffsetRange {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    from: *from,
                    until: from.saturating_add(n),
                }
            })
            .collect()
    }

    /// The part of `target` (as from [`target`](Self::target)) that one budget holds, read
    /// from `positions`: the budget shared over the partitions in proportion to what each
    /// has left to read.
    pub fn within_budget(
        &self,
        positions: &[(TopicPartition, i64)],
        target: &[OffsetRange],
    ) -> Vec<OffsetRange> {
        let mut counts: Vec<i64> = positions
            .iter()
            .zip(target)
            .map(|((_, from), t)| (t.until - from).max(0))
            .collect();
        share_within(&mut counts, self.records_allowed());
        positions
            .iter()
            .zip(counts)
            .map(|((tp, from), n)| OffsetRange {
                topic: tp.topic.clone(),
                partition: tp.partition,
                from: *from,
                until: from.saturating_add(n),
            })
            .collect()
    }

    /// Records the budget lets a batch plan: its records, and its bytes at the bytes per
    /// record seen so far.
    fn records_allowed(&self) -> i64 {
        let by_bytes = self
            .bytes_per_record
            .filter(|b| *b >= 1.0)
            .map_or(u64::MAX, |b| (self.budget.bytes as f64 / b) as u64);
        i64::try_from(self.budget.records.min(by_bytes))
            .unwrap_or(i64::MAX)
            .max(1)
    }

    /// Records each partition may read this batch; `None` when nothing limits them.
    fn max_per_partition(
        &self,
        positions: &[(TopicPartition, i64)],
        ends: &[i64],
    ) -> Option<Vec<i64>> {
        let max = self.max_rate_per_partition.map(|m| m as f64);
        let rates: Vec<f64> = match self.estimated_rate.filter(|r| *r > 0.0) {
            Some(rate) => {
                // Share the worker's rate in proportion to each partition's backlog.
                let lags: Vec<f64> = positions
                    .iter()
                    .zip(ends)
                    .map(|((_, from), end)| (end - from).max(0) as f64)
                    .collect();
                let total: f64 = lags.iter().sum();
                lags.iter()
                    .map(|lag| {
                        let r = if total > 0.0 { lag / total * rate } else { 0.0 };
                        max.map_or(r, |m| r.min(m))
                    })
                    .collect()
            }
            None => {
                let initial = self.initial_rate.map(|r| r as f64);
                let r = match (max, initial) {
                    (Some(m), Some(i)) => m.min(i),
                    (Some(m), None) => m,
                    (None, Some(i)) => i,
                    (None, None) => return None,
                };
                vec![r; positions.len()]
            }
        };
        let secs = self.batch_interval_ms as f64 / 1000.0;
        // At least one record per partition per batch, so a throttled job still moves.
        Some(
            rates
                .iter()
                .map(|r| ((r * secs).round() as i64).max(1))
                .collect(),
        )
    }
}

/// Scales `counts` down so that they add up to at most `total`, each in proportion to what it
/// asked for, so that every partition of a large backlog moves (a partition's share rounds
/// down; what that leaves over goes one record each to the first partitions cut short).
fn share_within(counts: &mut [i64], total: i64) {
    let asked: i64 = counts.iter().sum();
    if asked <= total {
        return;
    }
    let wanted = counts.to_vec();
    let mut left = total;
    for n in counts.iter_mut() {
        *n = (i128::from(*n) * i128::from(total) / i128::from(asked)) as i64;
        left -= *n;
    }
    for (n, w) in counts.iter_mut().zip(&wanted) {
        if left <= 0 {
            break;
        }
        if *n < *w {
            *n += 1;
            left -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    fn planner(max: Option<u64>) -> Planner {
        Planner {
            batch_interval_ms: 2_000,
            max_rate_per_partition: max,
            estimated_rate: None,
            initial_rate: None,
            budget: Budget {
                bytes: u64::MAX,
                records: u64::MAX,
            },
            bytes_per_record: None,
        }
    }

    #[test]
    fn ranges_stop_at_the_high_watermark_and_the_rate_cap() {
        let positions = [(tp(0), 10), (tp(1), 0), (tp(2), 50)];
        let ends = [1_000, 100, 50];
        let r = planner(Some(100)).plan(&positions, &ends);
        assert_eq!(
            r.iter().map(|r| (r.from, r.until)).collect::<Vec<_>>(),
            [(10, 210), (0, 100), (50, 50)]
        );
        let r = planner(None).plan(&positions, &ends);
        assert_eq!(
            r.iter().map(|r| r.until).collect::<Vec<_>>(),
            [1_000, 100, 50]
        );
    }

    #[test]
    fn backpressure_shares_the_rate_by_lag_and_respects_the_cap() {
        let mut p = planner(Some(300));
        p.estimated_rate = Some(200.0);
        let r = p.plan(&[(tp(0), 0), (tp(1), 0)], &[3_000, 1_000]);
        // 200/s x 2s = 400 records, 3:1 by lag.
        assert_eq!(
            r.iter().map(OffsetRange::count).collect::<Vec<_>>(),
            [300, 100]
        );
        p.estimated_rate = Some(10_000.0);
        let r = p.plan(&[(tp(0), 0), (tp(1), 0)], &[10_000, 10_000]);
        assert_eq!(
            r.iter().map(OffsetRange::count).collect::<Vec<_>>(),
            [600, 600]
        );
    }

    #[test]
    fn a_backlog_larger_than_the_budget_is_planned_within_it_in_proportion_to_each_lag() {
        let mut p = planner(None);
        p.budget = Budget {
            bytes: 1_000_000,
            records: 1_000,
        };
        let positions = [(tp(0), 0), (tp(1), 500), (tp(2), 7)];
        let ends = [3_000, 1_500, 7];
        let r = p.plan(&positions, &ends);
        // 4000 records wait, 3:1; the budget's 1000 records are shared the same way.
        assert_eq!(
            r.iter().map(|r| (r.from, r.until)).collect::<Vec<_>>(),
            [(0, 750), (500, 750), (7, 7)]
        );
        // 1 KB a record: the bytes allow 1000 records too; at 2 KB, 500.
        p.bytes_per_record = Some(2_000.0);
        let r = p.plan(&positions, &ends);
        assert_eq!(r.iter().map(OffsetRange::count).sum::<i64>(), 500);
        assert_eq!(
            r.iter().map(OffsetRange::count).collect::<Vec<_>>(),
            [375, 125, 0]
        );
        // Rounding never passes the budget, and its leftovers are not lost.
        p.budget.records = 10;
        p.bytes_per_record = None;
        let r = p.plan(&[(tp(0), 0), (tp(1), 0), (tp(2), 0)], &[100, 100, 100]);
        assert_eq!(
            r.iter().map(OffsetRange::count).collect::<Vec<_>>(),
            [4, 3, 3]
        );
        // Within the budget, the rate cap still rules.
        p.max_rate_per_partition = Some(1);
        let r = p.plan(&[(tp(0), 0), (tp(1), 0)], &[100, 100]);
        assert_eq!(r.iter().map(OffsetRange::count).collect::<Vec<_>>(), [2, 2]);
    }

    #[test]
    fn a_batch_read_in_parts_reaches_its_target_a_budget_at_a_time_and_no_further() {
        let mut p = planner(Some(400));
        p.budget.records = 300;
        let ends = [10_000, 100, 0];
        let mut positions = vec![(tp(0), 0), (tp(1), 0), (tp(2), 0)];
        // The rate cap (400/s x 2 s) bounds the target; the budget does not.
        let target = p.target(&positions, &ends);
        assert_eq!(
            target.iter().map(OffsetRange::count).collect::<Vec<_>>(),
            [800, 100, 0]
        );
        let mut parts = Vec::new();
        loop {
            let part = p.within_budget(&positions, &target);
            let n: i64 = part.iter().map(OffsetRange::count).sum();
            if n == 0 {
                break;
            }
            assert!(n <= 300, "a part within the budget: {n}");
            for (pos, r) in positions.iter_mut().zip(&part) {
                pos.1 = r.until;
            }
            parts.push(n);
        }
        assert_eq!(parts, [300, 300, 300]);
        assert_eq!(
            positions.iter().map(|(_, at)| *at).collect::<Vec<_>>(),
            [800, 100, 0]
        );
    }

    #[test]
    fn a_budget_shared_by_stages_gives_each_its_part() {
        let b = Budget {
            bytes: 90,
            records: 10,
        };
        assert_eq!(
            b.split(3),
            Budget {
                bytes: 30,
                records: 3
            }
        );
        assert_eq!(b.split(0), b);
    }

    #[test]
    fn pid_follows_the_processing_rate() {
        let mut e = RateEstimator::new(1_000, 100.0);
        assert_eq!(
            e.compute(1_000, 1_000, 500, 0),
            None,
            "the first batch only calibrates"
        );
        // Processing 1000 records takes 2s: the rate must drop towards 500/s.
        let r = e.compute(2_000, 1_000, 2_000, 0).unwrap();
        assert!((r - 500.0).abs() < 1.0, "{r}");
        // A scheduling delay pushes it further down, never below the minimum.
        let r = e.compute(3_000, 1_000, 2_000, 10_000).unwrap();
        assert!((100.0..500.0).contains(&r), "{r}");
        assert_eq!(e.compute(3_000, 1_000, 2_000, 0), None, "time must advance");
        assert_eq!(
            e.compute(4_000, 0, 10, 0),
            None,
            "empty batches say nothing"
        );
    }
}
