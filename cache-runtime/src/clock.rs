//! The one place the runtime reads wall-clock time for freshness: a [`Clock`], which tests
//! (the crate's and its users') replace with a [`ManualClock`] to drive ttl, `stale` windows
//! and jitter without sleeping.
//!
//! Redis still expires keys by its own clock: an entry is stored for as long as it can be
//! served (ttl plus any `stale` window), and whether it is fresh is decided by the clock here,
//! from the times recorded in its envelope.
//!
//! Those times are written by one host and read by others, so a cache on Redis reads the time
//! as its clock corrected by a [`ServerOffset`]: the difference between its clock and the
//! server's `TIME`, sampled at start and every minute. Every process sharing a Redis then
//! shares one time, whatever the skew between their hosts' clocks.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a cache reads the time, in milliseconds since the Unix epoch.
///
/// ```
/// use redis_memo_runtime::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new(1_000);
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now_unix_ms(), 3_000);
/// ```
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> u64;

    /// Whether a cache on Redis corrects this clock by the server's (`TIME`), so that
    /// processes on hosts with skewed clocks agree on when entries expire. True by default;
    /// [`ManualClock`] says no, since a test that moves it wants exactly its time.
    fn follows_server_time(&self) -> bool {
        true
    }
}

/// The system's clock: the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that moves only when told to; clones share the time. For tests: give it to
/// [`CacheBuilder::clock`](crate::CacheBuilder::clock), then [`advance`](Self::advance) it past
/// an entry's ttl instead of sleeping.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `start_unix_ms`.
    pub fn new(start_unix_ms: u64) -> Self {
        ManualClock {
            now_ms: Arc::new(AtomicU64::new(start_unix_ms)),
        }
    }

    /// A clock reading the system's time now, from then on moved only by hand.
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now_unix_ms())
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.now_ms.fetch_add(by, SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_ms(&self) -> u64 {
        self.now_ms.load(SeqCst)
    }

    fn follows_server_time(&self) -> bool {
        false
    }
}

/// How far a cache's clock is behind its Redis server's, learned from `TIME`.
#[derive(Debug)]
pub(crate) struct ServerOffset {
    /// False: no correction, ever (no server, or a clock that does not follow it).
    enabled: bool,
    offset_ms: AtomicI64,
    /// By the cache's clock, when the next sample is due.
    next_sample_ms: AtomicU64,
}

impl ServerOffset {
    /// How often the offset is sampled again (clocks drift; NTP steps them).
    const RESAMPLE_MS: u64 = 60_000;
    /// How soon after a failed sample another is tried.
    const RETRY_MS: u64 = 1_000;

    /// An offset to learn: the first sample is due at once.
    pub(crate) fn learned() -> Self {
        ServerOffset {
            enabled: true,
            offset_ms: AtomicI64::new(0),
            next_sample_ms: AtomicU64::new(0),
        }
    }

    /// No correction, ever.
    pub(crate) fn none() -> Self {
        ServerOffset {
            enabled: false,
            offset_ms: AtomicI64::new(0),
            next_sample_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// `local_ms` corrected to the server's time.
    pub(crate) fn apply(&self, local_ms: u64) -> u64 {
        local_ms.saturating_add_signed(self.offset_ms.load(Relaxed))
    }

    /// Whether the caller should take a sample now: true for one caller per due time.
    pub(crate) fn claim_sample(&self, local_ms: u64) -> bool {
        let due = self.next_sample_ms.load(Relaxed);
        local_ms >= due
            && self
                .next_sample_ms
                .compare_exchange(
                    due,
                    local_ms.saturating_add(Self::RESAMPLE_MS),
                    Relaxed,
                    Relaxed,
                )
                .is_ok()
    }

    /// A sample: the server read `server_ms` between the local readings `before` and `after`.
    pub(crate) fn record(&self, server_ms: u64, before: u64, after: u64) {
        if !self.enabled {
            return;
        }
        let midpoint = before / 2 + after / 2;
        let offset = i128::from(server_ms) - i128::from(midpoint);
        let offset = i64::try_from(offset).unwrap_or(if offset < 0 { i64::MIN } else { i64::MAX });
        self.offset_ms.store(offset, Relaxed);
    }

    /// The sample failed: try again soon.
    pub(crate) fn retry_soon(&self, local_ms: u64) {
        if !self.enabled {
            return;
        }
        self.next_sample_ms
            .store(local_ms.saturating_add(Self::RETRY_MS), Relaxed);
    }
}

/// Milliseconds of `duration`, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_offset_is_sampled_at_once_then_every_minute() {
        let offset = ServerOffset::learned();
        assert!(
            offset.claim_sample(5_000),
            "due as soon as the cache is built"
        );
        assert!(!offset.claim_sample(5_001), "one sampler at a time");
        offset.record(9_000, 5_000, 5_002);
        assert_eq!(offset.apply(6_000), 9_999, "corrected by the server's lead");
        assert!(!offset.claim_sample(64_999));
        assert!(offset.claim_sample(65_000), "a minute later");
        offset.retry_soon(65_100);
        assert!(
            offset.claim_sample(66_100),
            "a failed sample is retried within a second"
        );

        let none = ServerOffset::none();
        assert!(!none.claim_sample(u64::MAX - 1));
        none.record(9_000, 0, 0);
        assert_eq!(none.apply(1), 1, "a manual clock is never corrected");
    }
}
