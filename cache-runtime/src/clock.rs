//! The one place the runtime reads wall-clock time for freshness: a [`Clock`], which tests
//! (the crate's and its users') replace with a [`ManualClock`] to drive ttl, `stale` windows
//! and jitter without sleeping.
//!
//! Redis still expires keys by its own clock: an entry is stored for as long as it can be
//! served (ttl plus any `stale` window), and whether it is fresh is decided by the clock here,
//! from the times recorded in its envelope.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
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
}

/// Milliseconds of `duration`, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
