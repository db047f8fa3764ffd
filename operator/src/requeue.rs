//! PURE: when a job comes back: the backoff after a failed reconcile, per class of error,
//! and the jitter that spreads requeues.

use std::time::{Duration, Instant};

use crate::crd::StreamingJob;
use crate::ErrorClass;

/// The wait before retry number `attempt` (1-based) after an error of `class`.
pub fn backoff(class: ErrorClass, attempt: u32) -> Duration {
    let (base, cap) = match class {
        ErrorClass::Conflict => (Duration::from_millis(500), Duration::from_secs(10)),
        ErrorClass::Transient | ErrorClass::Throttled => {
            (Duration::from_secs(2), Duration::from_secs(300))
        }
        ErrorClass::Rejected => (Duration::from_secs(30), Duration::from_secs(900)),
        ErrorClass::Permanent => (Duration::from_secs(300), Duration::from_secs(1800)),
        ErrorClass::Waiting => return Duration::from_secs(2),
    };
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(cap)
}

/// `period` moved by up to a tenth either way, differently for each job and each time, so
/// jobs created or refused together spread out over their requeues instead of reaching the
/// API server in one burst every period.
pub fn jittered(period: Duration, job: &StreamingJob) -> Duration {
    let seed = format!(
        "{}/{}/{:?}",
        job.metadata.uid.as_deref().unwrap_or_default(),
        job.metadata.name.as_deref().unwrap_or_default(),
        Instant::now()
    );
    // A fraction in [0.9, 1.1].
    let fraction = 0.9 + 0.2 * f64::from(crate::events::fingerprint(&seed)) / f64::from(u32::MAX);
    period.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_per_class_and_stops_at_its_cap() {
        assert_eq!(backoff(ErrorClass::Conflict, 1), Duration::from_millis(500));
        assert_eq!(backoff(ErrorClass::Transient, 1), Duration::from_secs(2));
        assert_eq!(backoff(ErrorClass::Transient, 3), Duration::from_secs(8));
        assert_eq!(
            backoff(ErrorClass::Transient, 100),
            Duration::from_secs(300)
        );
        assert_eq!(backoff(ErrorClass::Rejected, 1), Duration::from_secs(30));
        assert!(backoff(ErrorClass::Permanent, 1) > backoff(ErrorClass::Rejected, 1));
    }
}
