//! PURE: how many workers a job should run, and why.
//!
//! Each worker owns the partitions `p mod N == i` of every input topic, so more workers than
//! the widest topic has partitions would idle; `partitionsPerWorker` sets how much work one
//! worker takes before another is added.

use crate::crd::WorkersSpec;

/// Partition counts of a job's input topics, as observed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionCounts {
    /// All input partitions: the work to share.
    pub total: u32,
    /// The largest single topic: the most workers that can all own something.
    pub widest: u32,
}

impl PartitionCounts {
    pub fn from_topics(counts: impl IntoIterator<Item = u32>) -> Self {
        counts.into_iter().fold(Self::default(), |acc, n| Self {
            total: acc.total.saturating_add(n),
            widest: acc.widest.max(n),
        })
    }
}

/// The desired worker count and a short human reason for it (inputs, the formula's result and
/// what capped it), for status and events.
pub fn desired_workers(
    partitions: Option<PartitionCounts>,
    workers: &WorkersSpec,
    suspend: bool,
) -> (u32, String) {
    let (min, max) = (workers.min, workers.max.max(workers.min));
    if suspend {
        return (0, "suspended".into());
    }
    // A topic has at least one partition; 0 means none was seen, which must not stop the job.
    let idle_cap = partitions.map(|p| p.widest.max(1));
    if let Some(n) = workers.replicas {
        let d = n.clamp(min, max);
        let mut why = if d == n {
            format!("workers.replicas is {n}")
        } else {
            format!("workers.replicas {n} kept within [{min}, {max}]")
        };
        let d = cap_at_partitions(d, idle_cap, &mut why);
        return (d, why);
    }
    let Some(p) = partitions else {
        return (
            min,
            format!("partition count not known yet; workers.min is {min}"),
        );
    };
    let per = workers.partitions_per_worker.max(1);
    let wanted = p.total.div_ceil(per);
    let mut why = format!("{} partitions / {per} per worker = {wanted}", p.total);
    let d = if wanted < min {
        why.push_str(&format!(", raised to workers.min {min}"));
        min
    } else if wanted > max {
        why.push_str(&format!(", capped at workers.max {max}"));
        max
    } else {
        wanted
    };
    let d = cap_at_partitions(d, idle_cap, &mut why);
    (d, why)
}

/// The job's workers as they are now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    /// The StatefulSet's `spec.replicas`.
    pub replicas: u32,
    /// Worker pods that exist, terminating ones included.
    pub pods: u32,
    /// Pods the StatefulSet controller reports it has created (`status.replicas`).
    pub created: u32,
}

/// The StatefulSet's replicas for this step towards `desired` workers.
///
/// A new worker count changes which worker owns which partition (`p mod N`), so it is a
/// coordinated restart: first zero (each worker finishes its batch, commits and exits), then,
/// once no worker pod is left, the new count. No two workers ever own a partition at once.
pub fn next_replicas(desired: u32, now: Option<Running>) -> u32 {
    match now {
        None => desired,
        Some(r) if r.replicas == desired || r.pods == 0 => desired,
        Some(_) => 0,
    }
}

fn cap_at_partitions(d: u32, cap: Option<u32>, why: &mut String) -> u32 {
    match cap {
        Some(c) if d > c => {
            why.push_str(&format!(
                ", capped at {c} partitions (more workers would idle)"
            ));
            c
        }
        _ => d,
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
            autoscale: None,
        }
    }

    fn one(n: u32) -> Option<PartitionCounts> {
        Some(PartitionCounts::from_topics([n]))
    }

    #[test]
    fn partitions_divide_by_per_worker_and_round_up() {
        assert_eq!(desired_workers(one(12), &w(1, 16, None), false).0, 3);
        assert_eq!(desired_workers(one(13), &w(1, 16, None), false).0, 4);
        assert_eq!(desired_workers(one(0), &w(1, 16, None), false).0, 1);
        let (d, why) = desired_workers(one(12), &w(1, 16, None), false);
        assert_eq!((d, why.as_str()), (3, "12 partitions / 4 per worker = 3"));
    }

    #[test]
    fn result_stays_within_min_and_max() {
        let (d, why) = desired_workers(one(400), &w(1, 8, None), false);
        assert_eq!(d, 8);
        assert!(why.ends_with("= 100, capped at workers.max 8"), "{why}");
        let (d, why) = desired_workers(one(4), &w(3, 8, None), false);
        assert_eq!(d, 3);
        assert!(why.ends_with("= 1, raised to workers.min 3"), "{why}");
        assert_eq!(desired_workers(None, &w(2, 8, None), false).0, 2);
    }

    #[test]
    fn never_more_workers_than_partitions() {
        let (d, why) = desired_workers(one(2), &w(3, 8, None), false);
        assert_eq!(d, 2);
        assert!(
            why.ends_with("capped at 2 partitions (more workers would idle)"),
            "{why}"
        );
        assert_eq!(desired_workers(one(3), &w(1, 8, Some(6)), false).0, 3);
        // Two topics of 4: 8 partitions of work, but worker i owns p mod N == i of each topic,
        // so a fifth worker would own nothing.
        let two = Some(PartitionCounts::from_topics([4, 4]));
        let per_one = WorkersSpec {
            partitions_per_worker: 1,
            ..w(1, 16, None)
        };
        assert_eq!(desired_workers(two, &per_one, false).0, 4);
    }

    #[test]
    fn replicas_override_partitions_but_not_the_bounds() {
        assert_eq!(desired_workers(one(400), &w(1, 8, Some(5)), false).0, 5);
        let (d, why) = desired_workers(None, &w(2, 8, Some(20)), false);
        assert_eq!(d, 8);
        assert!(why.contains("within [2, 8]"), "{why}");
    }

    #[test]
    fn a_new_count_goes_through_zero_while_workers_exist() {
        let at = |replicas, pods| {
            Some(Running {
                replicas,
                pods,
                created: pods,
            })
        };
        assert_eq!(next_replicas(3, None), 3, "a new job starts at once");
        assert_eq!(next_replicas(3, at(3, 3)), 3, "steady");
        assert_eq!(next_replicas(3, at(3, 1)), 3, "pods still starting");
        assert_eq!(next_replicas(5, at(3, 3)), 0, "drain first");
        assert_eq!(next_replicas(5, at(0, 2)), 0, "still draining");
        assert_eq!(next_replicas(5, at(0, 0)), 5, "drained: the new count");
        assert_eq!(
            next_replicas(2, at(3, 0)),
            2,
            "no worker runs: nothing to drain"
        );
        assert_eq!(next_replicas(0, at(3, 3)), 0, "suspend drains the same way");
    }

    #[test]
    fn suspend_wins_over_everything() {
        assert_eq!(
            desired_workers(one(400), &w(3, 8, Some(5)), true),
            (0, "suspended".into())
        );
    }
}
