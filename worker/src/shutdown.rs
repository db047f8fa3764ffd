//! Shutdown: waits that a SIGTERM cuts short, so no retry or backoff outlives the pod's grace
//! period.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Sleeps for `d` unless `cancel` fires first. Returns false when it was cancelled.
pub fn sleep(d: Duration, cancel: &CancellationToken) -> bool {
    let until = Instant::now() + d;
    loop {
        if cancel.is_cancelled() {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_sleep_returns_at_once() {
        let cancel = CancellationToken::new();
        assert!(sleep(Duration::from_millis(1), &cancel));
        cancel.cancel();
        let started = Instant::now();
        assert!(!sleep(Duration::from_secs(3600), &cancel));
        assert!(started.elapsed() < Duration::from_secs(60));
    }
}
