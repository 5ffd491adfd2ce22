//! Counters of what the cache did: a [`Stats`] snapshot per [`Cache`](crate::Cache), and the
//! same events per function through the `metrics` facade (`redis_memo_<event>_total`, label
//! `fn`), for whatever exporter the program installs.
//!
//! A function's metric handles are registered with the recorder on its first call and kept
//! (registering on every call cost a tenth of a hit's CPU time), so install the recorder
//! before the first memoized call, as the `metrics` crate recommends.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a cache's counters since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Calls answered from the cache with a fresh value.
    pub hits: u64,
    /// Of `hits`, those answered by the in-process tier alone, without a round trip to Redis
    /// (functions with `local`, on a cache with
    /// [`CacheBuilder::local_capacity`](crate::CacheBuilder::local_capacity)).
    pub local_hits: u64,
    /// Calls answered with a value past its ttl, inside the function's `stale` window, while
    /// a refresh ran in the background.
    pub stale_served: u64,
    /// Background refreshes that computed a value (one per stale entry across processes).
    pub refreshes: u64,
    /// Background refreshes that failed (an error, a panic, or a body that outlasted its
    /// lease): the stale value stays and is served on; each is logged at debug level, and a
    /// warning with the count is logged at most once a minute.
    pub refresh_failures: u64,
    /// Refreshes not started because this cache already ran its most background refreshes
    /// at once ([`CacheBuilder::max_background_refreshes`](crate::CacheBuilder::max_background_refreshes)):
    /// the stale value was served, and a later call starts the refresh.
    pub refreshes_skipped: u64,
    /// Calls whose function failed, or outlasted a timeout, and that got the last good value
    /// instead (`fail_safe`).
    pub fail_safe_served: u64,
    /// Calls that stopped waiting for the body at their `soft_timeout`.
    pub soft_timeouts: u64,
    /// Calls that stopped waiting for the body at their `hard_timeout`.
    pub hard_timeouts: u64,
    /// Calls that found no usable entry and ran the function.
    pub misses: u64,
    /// Calls that waited for another call of the same key in this process and took its value.
    pub coalesced: u64,
    /// Values written to the cache.
    pub fills: u64,
    /// Calls (one per key and process) that waited for another process's value (`lock`).
    pub lock_waits: u64,
    /// Waits that reached their bound, after which the caller computed the value itself.
    pub lock_timeouts: u64,
    /// Values not written because their lease was lost before the fill: an invalidation (or
    /// a write-through) happened while they were computed, so they may be stale.
    pub rejected_fills: u64,
    /// Stored bytes that were not a usable entry (foreign bytes, another version, corrupt):
    /// each was treated as a miss and overwritten.
    pub decode_failures: u64,
    /// Return values that could not be serialized (returned to the caller, not stored).
    pub encode_failures: u64,
    /// Values larger than [`CacheBuilder::max_value_bytes`](crate::CacheBuilder::max_value_bytes):
    /// returned to the caller (and to the callers waiting for it in this process), not
    /// stored; the entry they would have replaced is removed. The first of each function is
    /// logged at warn level.
    pub oversized: u64,
    /// Cache operations skipped or failed because Redis was unreachable, slow or erroring;
    /// the call ran the function instead.
    pub fail_open: u64,
    /// Write-throughs and evictions of `#[redis_cache_put]` / `#[redis_cache_evict]` that
    /// failed (Redis down or slow). The writer's call still succeeded; each is logged at
    /// error level, since the entries concerned may now be stale until their ttl.
    pub lost_writes: u64,
    /// What the in-process tier holds now, in bytes as weighed against
    /// [`CacheBuilder::local_capacity`](crate::CacheBuilder::local_capacity) (a gauge, not a
    /// counter; 0 without a tier).
    pub local_bytes: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    hits: AtomicU64,
    local_hits: AtomicU64,
    stale_served: AtomicU64,
    refreshes: AtomicU64,
    refreshes_skipped: AtomicU64,
    refresh_failures: AtomicU64,
    fail_safe_served: AtomicU64,
    soft_timeouts: AtomicU64,
    hard_timeouts: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
    fills: AtomicU64,
    rejected_fills: AtomicU64,
    lock_waits: AtomicU64,
    lock_timeouts: AtomicU64,
    decode_failures: AtomicU64,
    encode_failures: AtomicU64,
    oversized: AtomicU64,
    fail_open: AtomicU64,
    lost_writes: AtomicU64,
}

/// One countable event.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub(crate) enum Event {
    Hit,
    /// A hit the in-process tier answered (counted besides [`Event::Hit`]).
    LocalHit,
    StaleServed,
    Refresh,
    RefreshSkipped,
    RefreshFailure,
    FailSafe,
    SoftTimeout,
    HardTimeout,
    Miss,
    Coalesced,
    Fill,
    RejectedFill,
    LockWait,
    LockTimeout,
    DecodeFailure,
    EncodeFailure,
    Oversized,
    FailOpen,
}

impl Event {
    const ALL: [Event; 19] = [
        Event::Hit,
        Event::LocalHit,
        Event::StaleServed,
        Event::Refresh,
        Event::RefreshSkipped,
        Event::RefreshFailure,
        Event::FailSafe,
        Event::SoftTimeout,
        Event::HardTimeout,
        Event::Miss,
        Event::Coalesced,
        Event::Fill,
        Event::RejectedFill,
        Event::LockWait,
        Event::LockTimeout,
        Event::DecodeFailure,
        Event::EncodeFailure,
        Event::Oversized,
        Event::FailOpen,
    ];

    fn metric_name(self) -> &'static str {
        match self {
            Event::Hit => "redis_memo_hits_total",
            Event::LocalHit => "redis_memo_local_hits_total",
            Event::StaleServed => "redis_memo_stale_served_total",
            Event::Refresh => "redis_memo_refreshes_total",
            Event::RefreshSkipped => "redis_memo_refreshes_skipped_total",
            Event::RefreshFailure => "redis_memo_refresh_failures_total",
            Event::FailSafe => "redis_memo_fail_safe_served_total",
            Event::SoftTimeout => "redis_memo_soft_timeouts_total",
            Event::HardTimeout => "redis_memo_hard_timeouts_total",
            Event::Miss => "redis_memo_misses_total",
            Event::Coalesced => "redis_memo_coalesced_total",
            Event::Fill => "redis_memo_fills_total",
            Event::RejectedFill => "redis_memo_rejected_fills_total",
            Event::LockWait => "redis_memo_lock_waits_total",
            Event::LockTimeout => "redis_memo_lock_timeouts_total",
            Event::DecodeFailure => "redis_memo_decode_failures_total",
            Event::EncodeFailure => "redis_memo_encode_failures_total",
            Event::Oversized => "redis_memo_oversized_total",
            Event::FailOpen => "redis_memo_fail_open_total",
        }
    }
}

/// The `metrics` handles of one function, one per [`Event`].
pub(crate) struct FnMetrics([metrics::Counter; Event::ALL.len()]);

impl std::fmt::Debug for FnMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnMetrics")
    }
}

impl FnMetrics {
    pub(crate) fn register(fn_name: &'static str) -> Self {
        FnMetrics(Event::ALL.map(|event| metrics::counter!(event.metric_name(), "fn" => fn_name)))
    }
}

impl Counters {
    /// Counts `event` for this cache and for the function whose handles are `metrics`.
    pub(crate) fn record(&self, event: Event, metrics: &FnMetrics) {
        let counter = match event {
            Event::Hit => &self.hits,
            Event::LocalHit => &self.local_hits,
            Event::StaleServed => &self.stale_served,
            Event::Refresh => &self.refreshes,
            Event::RefreshSkipped => &self.refreshes_skipped,
            Event::RefreshFailure => &self.refresh_failures,
            Event::FailSafe => &self.fail_safe_served,
            Event::SoftTimeout => &self.soft_timeouts,
            Event::HardTimeout => &self.hard_timeouts,
            Event::Miss => &self.misses,
            Event::Coalesced => &self.coalesced,
            Event::Fill => &self.fills,
            Event::RejectedFill => &self.rejected_fills,
            Event::LockWait => &self.lock_waits,
            Event::LockTimeout => &self.lock_timeouts,
            Event::DecodeFailure => &self.decode_failures,
            Event::EncodeFailure => &self.encode_failures,
            Event::Oversized => &self.oversized,
            Event::FailOpen => &self.fail_open,
        };
        counter.fetch_add(1, Relaxed);
        metrics.0[event as usize].increment(1);
    }

    /// Counts a failed write-through or eviction (`redis_memo_lost_writes_total`).
    pub(crate) fn record_lost_write(&self) {
        self.lost_writes.fetch_add(1, Relaxed);
        metrics::counter!("redis_memo_lost_writes_total").increment(1);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            hits: self.hits.load(Relaxed),
            local_hits: self.local_hits.load(Relaxed),
            stale_served: self.stale_served.load(Relaxed),
            refreshes: self.refreshes.load(Relaxed),
            refreshes_skipped: self.refreshes_skipped.load(Relaxed),
            refresh_failures: self.refresh_failures.load(Relaxed),
            fail_safe_served: self.fail_safe_served.load(Relaxed),
            soft_timeouts: self.soft_timeouts.load(Relaxed),
            hard_timeouts: self.hard_timeouts.load(Relaxed),
            misses: self.misses.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            fills: self.fills.load(Relaxed),
            rejected_fills: self.rejected_fills.load(Relaxed),
            lock_waits: self.lock_waits.load(Relaxed),
            lock_timeouts: self.lock_timeouts.load(Relaxed),
            decode_failures: self.decode_failures.load(Relaxed),
            encode_failures: self.encode_failures.load(Relaxed),
            oversized: self.oversized.load(Relaxed),
            fail_open: self.fail_open.load(Relaxed),
            lost_writes: self.lost_writes.load(Relaxed),
            local_bytes: 0,
        }
    }
}
