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
    /// Refused operations (OOM, READONLY), warned about once a minute.
    refusals: LogEvery,
}

impl Health {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Health {
            epoch: Instant::now(),
            threshold: u64::from(threshold.max(1)),
            cooldown,
            consecutive_failures: AtomicU64::new(0),
            open_until_ms: AtomicU64::new(0),
            refusals: LogEvery::minute(),
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
            tracing::info!(target: "redis_memo", failed_operations = failed,
                "redis-memo: redis answers again; caching resumed"
            );
        }
    }

    /// Counts an operation a live server refused; `Some(count since the last warning)` when
    /// it is time to warn again (the first refusal, then at most once a minute).
    pub(crate) fn record_refusal(&self) -> Option<u64> {
        self.refusals.tick(self.now_ms())
    }

    pub(crate) fn record_failure(&self, operation: &'static str, error: &dyn std::fmt::Display) {
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if failures == 1 {
            tracing::warn!(target: "redis_memo", operation, %error, "redis-memo: redis operation failed; calls run uncached until it answers again");
        }
        if failures >= self.threshold {
            let cooldown = u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX);
            // At least 1: 0 means closed.
            let until = self.now_ms().saturating_add(cooldown).max(1);
            self.open_until_ms.store(until, Relaxed);
        }
    }
}

/// Rate-limits a warning about events that may repeat on every call: the first one is
/// reported, then at most one line per interval, with the count since the last.
#[derive(Debug)]
pub(crate) struct LogEvery {
    every_ms: u64,
    count: AtomicU64,
    /// When the last line was due (`u64::MAX`: never yet).
    logged_at_ms: AtomicU64,
}

impl LogEvery {
    pub(crate) fn minute() -> Self {
        LogEvery {
            every_ms: 60_000,
            count: AtomicU64::new(0),
            logged_at_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Counts one event at `now_ms` (any monotonic millisecond clock); `Some(count since the
    /// last line)` when a line is due.
    pub(crate) fn tick(&self, now_ms: u64) -> Option<u64> {
        self.count.fetch_add(1, Relaxed);
        let last = self.logged_at_ms.load(Relaxed);
        let due = last == u64::MAX || now_ms.saturating_sub(last) >= self.every_ms;
        // One caller wins the exchange and reports the count so far.
        (due && self
            .logged_at_ms
            .compare_exchange(last, now_ms, Relaxed, Relaxed)
            .is_ok())
        .then(|| self.count.swap(0, Relaxed))
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
