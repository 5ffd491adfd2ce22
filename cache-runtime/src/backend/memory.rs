//! The in-memory backend: a moka cache of envelope bytes with per-entry expiry.

use bytes::Bytes;
use moka::Expiry;
use std::time::{Duration, Instant};

/// An in-process store for [`Cache`](crate::Cache), with the same semantics as Redis (ttl,
/// invalidation, coalescing, the same value envelope). For unit tests of code that uses
/// memoized functions, and for single-process programs.
///
/// It is a cheap handle: clones share the entries, so a test can keep one to look inside.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use redis_memo_runtime::{Cache, MemoryStore};
///
/// let store = MemoryStore::new();
/// let cache = Cache::builder().memory(store.clone()).build().unwrap();
/// assert_eq!(store.entry_count().await, 0);
/// # drop(cache); }
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    entries: moka::future::Cache<String, StoredEntry>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entries.entry_count())
            .finish()
    }
}

#[derive(Clone)]
struct StoredEntry {
    bytes: Bytes,
    expires_at: Instant,
}

/// Expires each entry at its own deadline.
struct PerEntryTtl;

impl Expiry<String, StoredEntry> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _: &String,
        entry: &StoredEntry,
        now: Instant,
    ) -> Option<Duration> {
        Some(entry.expires_at.saturating_duration_since(now))
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &StoredEntry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.expires_at.saturating_duration_since(now))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// Default bound on the number of entries; the least useful ones are evicted past it.
    pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;

    /// A store holding at most [`MemoryStore::DEFAULT_MAX_ENTRIES`] entries.
    pub fn new() -> Self {
        Self::with_max_entries(Self::DEFAULT_MAX_ENTRIES)
    }

    /// A store holding at most `max_entries` entries.
    pub fn with_max_entries(max_entries: u64) -> Self {
        MemoryStore {
            entries: moka::future::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
        }
    }

    /// The bytes stored under a full key (`<namespace>:{<rendered key>}`), if present and not
    /// expired.
    pub async fn get_raw(&self, key: &str) -> Option<Bytes> {
        let entry = self.entries.get(key).await?;
        (entry.expires_at > Instant::now()).then_some(entry.bytes)
    }

    /// Stores raw bytes under a full key for `ttl`, as `SET key value PX ttl` would.
    pub async fn insert_raw(&self, key: &str, bytes: Bytes, ttl: Duration) {
        let expires_at = Instant::now() + ttl;
        self.entries
            .insert(key.to_owned(), StoredEntry { bytes, expires_at })
            .await;
    }

    /// Removes a full key; true if a live entry was there.
    pub async fn remove_raw(&self, key: &str) -> bool {
        self.entries
            .remove(key)
            .await
            .is_some_and(|entry| entry.expires_at > Instant::now())
    }

    /// The number of entries, including expired ones not yet evicted.
    pub async fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks().await;
        self.entries.entry_count()
    }
}
