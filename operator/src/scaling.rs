//! PURE: how many workers a job should run, and why.
//!
//! Each worker owns the partitions `p mod N == i`, so more workers than partitions would idle;
//! `partitionsPerWorker` sets how much work one worker takes before another is added.

use crate::crd::WorkersSpec;

/// The desired worker count and a short human reason for it, for status and events.
pub fn desired_workers(
    partitions: Option<u32>,
    workers: &WorkersSpec,
    suspend: bool,
) -> (u32, String) {
    let (min, max) = (workers.min, workers.max.max(workers.min));
    if suspend {
        return (0, "suspended".into());
    }
    if let Some(n) = workers.replicas {
        let d = n.clamp(min, max);
        return if d == n {
            (d, format!("workers.replicas is {n}"))
        } else {
            (
                d,
                format!("workers.replicas {n} kept within [{min}, {max}]"),
            )
        };
    }
    match partitions {
        Some(p) => {
            let per = workers.partitions_per_worker.max(1);
            let wanted = p.div_ceil(per);
            let d = wanted.clamp(min, max);
            (
                d,
                format!("{p} partitions / {per} per worker, within [{min}, {max}]"),
            )
        }
        None => (
            min,
            format!("partition count not known yet; workers.min is {min}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(min: u32, max: u32, replicas: Option<u32>) -> WorkersSpec {
        WorkersSpec {
            partitions_per_worker: 4,
            min,
            max,
            replicas,
        }
    }

    #[test]
    fn partitions_divide_by_per_worker_and_round_up() {
        assert_eq!(desired_workers(Some(12), &w(1, 16, None), false).0, 3);
        assert_eq!(desired_workers(Some(13), &w(1, 16, None), false).0, 4);
        assert_eq!(desired_workers(Some(0), &w(1, 16, None), false).0, 1);
    }

    #[test]
    fn result_stays_within_min_and_max() {
        assert_eq!(desired_workers(Some(400), &w(1, 8, None), false).0, 8);
        assert_eq!(desired_workers(Some(4), &w(3, 8, None), false).0, 3);
        assert_eq!(desired_workers(None, &w(2, 8, None), false).0, 2);
    }

    #[test]
    fn replicas_override_partitions_but_not_the_bounds() {
        assert_eq!(desired_workers(Some(400), &w(1, 8, Some(5)), false).0, 5);
        let (d, why) = desired_workers(None, &w(2, 8, Some(20)), false);
        assert_eq!(d, 8);
        assert!(why.contains("within [2, 8]"), "{why}");
    }

    #[test]
    fn suspend_wins_over_everything() {
        assert_eq!(
            desired_workers(Some(400), &w(3, 8, Some(5)), true),
            (0, "suspended".into())
        );
    }
}
