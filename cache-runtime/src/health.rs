//! A circuit breaker in front of the backend, and outage logging once per burst.
//!
//! After `threshold` consecutive failed operations the breaker opens: for `cooldown`, calls do
//! not touch Redis at all (they run the function), so an outage costs no timeouts. Then the
//! next operations try again; one answer from Redis closes it. The first failure of a burst is logged
//! as a warning and the recovery as info, with the count in between, instead of one line per
//! call.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Health {
    epoch: Instant,
    threshold: u64,
    cooldown: Duration,
    consecutive_failures: AtomicU64,
    /// Milliseconds since `epoch` until which the breaker is open.
    open_until_ms: AtomicU64,
    /// Refused operations (OOM, READONLY) since the last warning, and when that was.
    refusals: AtomicU64,
    refusal_logged_at_ms: AtomicU64,
}

impl Health {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Health {
            epoch: Instant::now(),
            threshold: u64::from(threshold.max(1)),
            cooldown,
            consecutive_failures: AtomicU64::new(0),
            open_until_ms: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            refusal_logged_at_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether an operation may go to the backend now. While Redis is healthy this reads no
    /// clock: `open_until_ms` is 0 until a burst of failures opens the breaker.
    pub(crate) fn allows_request(&self) -> bool {
        match self.open_until_ms.load(Relaxed) {
            0 => true,
            until => until <= self.now_ms(),
        }
    }

    pub(crate) fn record_success(&self) {
        // Both checked: a failure racing with a success may have opened the breaker after the
        // counter was reset.
        if self.consecutive_failures.load(Relaxed) == 0 && self.open_until_ms.load(Relaxed) == 0 {
            return;
        }
        let failed = self.consecutive_failures.swap(0, Relaxed);
        self.open_until_ms.store(0, Relaxed);
        if failed > 0 {
            tracing::info!(
                failed_operations = failed,
                "redis-memo: redis answers again; caching resumed"
            );
        }
    }

    /// Counts an operation a live server refused; `Some(count since the last warning)` when
    /// it is time to warn again (the first refusal, then at most once a minute).
    pub(crate) fn record_refusal(&self) -> Option<u64> {
        const EVERY_MS: u64 = 60_000;
        self.refusals.fetch_add(1, Relaxed);
        let now = self.now_ms().max(1);
        let last = self.refusal_logged_at_ms.load(Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= EVERY_MS;
        // One caller wins the exchange and reports the count so far.
        (due && self
            .refusal_logged_at_ms
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok())
        .then(|| self.refusals.swap(0, Relaxed))
    }

    pub(crate) fn record_failure(&self, operation: &'static str, error: &dyn std::fmt::Display) {
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if failures == 1 {
            tracing::warn!(operation, %error, "redis-memo: redis operation failed; calls run uncached until it answers again");
        }
        if failures >= self.threshold {
            let cooldown = u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX);
            // At least 1: 0 means closed.
            let until = self.now_ms().saturating_add(cooldown).max(1);
            self.open_until_ms.store(until, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_closes_after_cooldown() {
        let health = Health::new(2, Duration::ZERO);
        assert!(health.allows_request());
        health.record_failure("get", &"boom");
        assert!(health.allows_request());
        let long = Health::new(2, Duration::from_secs(3600));
        long.record_failure("get", &"boom");
        long.record_failure("get", &"boom");
        assert!(!long.allows_request());
        long.record_success();
        assert!(
            long.allows_request(),
            "an answer from Redis closes the breaker"
        );
    }

    #[test]
    fn refusals_are_reported_once_a_minute_with_their_count() {
        let health = Health::new(3, Duration::ZERO);
        assert_eq!(
            health.record_refusal(),
            Some(1),
            "the first one is reported"
        );
        for _ in 0..100 {
            assert_eq!(
                health.record_refusal(),
                None,
                "the next ones within a minute are not"
            );
        }
    }
}
