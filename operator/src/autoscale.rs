//! PURE: optional lag-driven autoscaling. Above the partition-derived count (the floor) and
//! within the caps (the ceiling), the worker count doubles while lag keeps growing past a
//! threshold, and comes down one worker at a time once lag has stayed at or below it for the
//! stabilization window.
//!
//! Up fast, down slowly: each change is a coordinated restart through zero, so a count that
//! flaps would stop the job more than it helps it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::{AutoscaleSpec, AutoscaleStatus};

/// What one observation gives the autoscaler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// The partition-derived count, already within the caps.
    pub floor: u32,
    /// `workers.max`, and never more workers than the widest topic has partitions.
    pub ceiling: u32,
    /// Total lag; `None` when Kafka could not be read (nothing changes then).
    pub lag: Option<i64>,
    pub now: Timestamp,
}

/// The next decision from the previous one and this observation.
pub fn decide(
    spec: &AutoscaleSpec,
    previous: Option<&AutoscaleStatus>,
    i: Inputs,
) -> AutoscaleStatus {
    let ceiling = i.ceiling.max(i.floor);
    let current = previous
        .map_or(i.floor, |p| p.workers)
        .clamp(i.floor, ceiling);
    let threshold = spec.lag_threshold;
    let mut next = AutoscaleStatus {
        workers: current,
        reason: String::new(),
        floor: i.floor,
        ceiling,
        lag: i.lag,
        growing: 0,
        calm_since: None,
        last_change: previous.and_then(|p| p.last_change.clone()),
    };
    let Some(lag) = i.lag else {
        next.growing = previous.map_or(0, |p| p.growing);
        next.calm_since = previous.and_then(|p| p.calm_since.clone());
        next.lag = previous.and_then(|p| p.lag);
        next.reason = format!("holding at {current}: lag unknown (Kafka not read)");
        return next;
    };
    // An unchanged lag says nothing new (no records came, or none were read): it keeps the
    // count; only a shrinking lag, or one at or below the threshold, resets it.
    let so_far = previous.map_or(0, |p| p.growing);
    next.growing = match previous.and_then(|p| p.lag) {
        Some(before) if lag > threshold && lag > before => so_far.saturating_add(1),
        Some(before) if lag > threshold && lag == before => so_far,
        _ => 0,
    };
    if lag <= threshold {
        next.calm_since = Some(
            previous
                .and_then(|p| p.calm_since.clone())
                .unwrap_or(Time(i.now)),
        );
    }
    let window =
        SignedDuration::try_from(spec.stabilization_window.as_std()).unwrap_or(SignedDuration::MAX);
    let waited = |since: &Option<Time>| {
        since
            .as_ref()
            .is_none_or(|t| i.now.duration_since(t.0) >= window)
    };
    if next.growing >= spec.growing_observations.max(1) && current < ceiling {
        next.workers = current.saturating_mul(2).clamp(1, ceiling);
        next.growing = 0;
        next.last_change = Some(Time(i.now));
        next.reason = format!(
            "lag {lag} above {threshold} and growing for {} observations: {current} -> {} workers",
            spec.growing_observations, next.workers
        );
    } else if next.calm_since.is_some()
        && waited(&next.calm_since)
        && waited(&next.last_change)
        && current > i.floor
    {
        next.workers = current - 1;
        next.last_change = Some(Time(i.now));
        // The next step down waits a whole window again.
        next.calm_since = Some(Time(i.now));
        next.reason = format!(
            "lag {lag} at or below {threshold} for {}: {current} -> {} workers",
            spec.stabilization_window, next.workers
        );
    } else {
        let bound = if current >= ceiling && lag > threshold {
            format!(", at the ceiling {ceiling}")
        } else {
            String::new()
        };
        next.reason = format!("holding at {current}: lag {lag}, threshold {threshold}{bound}");
    }
    next
}
