//! The in-memory backend: a moka cache of envelope bytes with per-entry expiry, and leases in
//! a map beside it, with the same semantics as Redis and its scripts.

use crate::lease::Acquired;
use crate::notify::{self, Listener, Notice, Notices};
use crate::tags::{self, TagKeys, Token, Versions};
use bytes::Bytes;
use moka::Expiry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// An in-process store for [`Cache`](crate::Cache), with the same semantics as Redis (ttl,
/// leases, invalidation, coalescing, the same value envelope). For unit tests of code that
/// uses memoized functions, and for single-process programs.
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
    entries: moka::sync::Cache<String, StoredEntry>,
    /// Lease key -> (token, expiry). Also serializes fills and invalidations, as Redis's
    /// single thread does.
    leases: Arc<Mutex<HashMap<String, (String, Instant)>>>,
    /// Tag version key -> (token, expiry).
    tags: Arc<Mutex<HashMap<String, (Token, Instant)>>>,
    /// Fill announcements, as Redis pub/sub makes them.
    notices: Notices,
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
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
            leases: Arc::default(),
            tags: Arc::default(),
            notices: Notices::default(),
        }
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tags(&self) -> MutexGuard<'_, HashMap<String, (Token, Instant)>> {
        self.tags.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry and its tags' current tokens.
    pub(crate) fn read(&self, entry: &str, tag_keys: TagKeys<'_>) -> (Option<Bytes>, Versions) {
        let now = Instant::now();
        let versions = {
            let tags = self.tags();
            tag_keys
                .iter()
                .map(|key| {
                    tags.get(key)
                        .filter(|(_, expiry)| *expiry > now)
                        .map(|(token, _)| *token)
                })
                .collect()
        };
        (self.get(entry), versions)
    }

    /// Creates the missing tag tokens; the tokens, in order.
    pub(crate) fn ensure_tags(&self, keys: &[&str], ttl: Duration) -> Vec<Token> {
        let now = Instant::now();
        let mut tags = self.tags();
        keys.iter()
            .map(|key| {
                let slot = tags
                    .entry((*key).to_owned())
                    .or_insert_with(|| (tags::new_token(), now + ttl));
                if slot.1 <= now {
                    *slot = (tags::new_token(), now + ttl);
                }
                slot.0
            })
            .collect()
    }

    /// Extends tag version keys to live at least `ttl` more.
    pub(crate) fn extend_tags(&self, keys: TagKeys<'_>, ttl: Duration) {
        let until = Instant::now() + ttl;
        let mut tags = self.tags();
        for key in keys.iter() {
            if let Some((_, expiry)) = tags.get_mut(key) {
                *expiry = (*expiry).max(until);
            }
        }
    }

    /// Deletes tag version keys; how many existed.
    pub(crate) fn invalidate_tags(&self, keys: &[String]) -> u64 {
        let now = Instant::now();
        let mut tags = self.tags();
        keys.iter()
            .filter(|key| {
                tags.remove(key.as_str())
                    .is_some_and(|(_, expiry)| expiry > now)
            })
            .count() as u64
    }

    /// Removes a tag's version key, as `DEL` on Redis would: its entries become misses.
    pub async fn remove_tag_raw(&self, full_tag_key: &str) -> bool {
        self.invalidate_tags(&[full_tag_key.to_owned()]) > 0
    }

    /// The put script: stores the entry whoever holds its lease, and deletes the lease.
    pub(crate) fn put(&self, entry: &str, lease: &str, value: Bytes, ttl: Duration) {
        let mut leases = self.leases();
        leases.remove(lease);
        self.insert(entry, value.clone(), ttl);
        self.notices
            .deliver(&notify::channel(entry), Notice::Filled(value));
    }

    /// The bytes stored under a full key (`<namespace>:{<rendered key>}`), if present and not
    /// expired.
    pub async fn get_raw(&self, key: &str) -> Option<Bytes> {
        self.get(key)
    }

    pub(crate) fn get(&self, key: &str) -> Option<Bytes> {
        let entry = self.entries.get(key)?;
        (entry.expires_at > Instant::now()).then_some(entry.bytes)
    }

    /// Stores raw bytes under a full key for `ttl`, as `SET key value PX ttl` would.
    pub async fn insert_raw(&self, key: &str, bytes: Bytes, ttl: Duration) {
        self.insert(key, bytes, ttl);
    }

    pub(crate) fn insert(&self, key: &str, bytes: Bytes, ttl: Duration) {
        let expires_at = Instant::now() + ttl;
        self.entries
            .insert(key.to_owned(), StoredEntry { bytes, expires_at });
    }

    /// Removes a full key; true if a live entry was there.
    pub async fn remove_raw(&self, key: &str) -> bool {
        self.remove(key)
    }

    fn remove(&self, key: &str) -> bool {
        self.entries
            .remove(key)
            .is_some_and(|entry| entry.expires_at > Instant::now())
    }

    /// The number of entries, including expired ones not yet evicted.
    pub async fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    /// The acquire script: takes the lease if free, and returns the entry as it is then.
    pub(crate) fn acquire_lease(
        &self,
        entry: &str,
        lease: &str,
        token: &str,
        ttl: Duration,
    ) -> Acquired {
        let mut leases = self.leases();
        let now = Instant::now();
        if leases.get(lease).is_some_and(|(_, expiry)| *expiry > now) {
            return Acquired::Busy;
        }
        leases.insert(lease.to_owned(), (token.to_owned(), now + ttl));
        Acquired::Held(self.get(entry))
    }

    /// The fill script: stores and releases if `token` holds the lease.
    pub(crate) fn fill(
        &self,
        entry: &str,
        lease: &str,
        token: &str,
        value: Bytes,
        ttl: Duration,
    ) -> bool {
        let mut leases = self.leases();
        if !holds(&leases, lease, token) {
            return false;
        }
        leases.remove(lease);
        self.insert(entry, value.clone(), ttl);
        self.notices
            .deliver(&notify::channel(entry), Notice::Filled(value));
        true
    }

    /// The release script.
    pub(crate) fn release(&self, entry: &str, lease: &str, token: &str, clear_entry: bool) {
        let mut leases = self.leases();
        if holds(&leases, lease, token) {
            leases.remove(lease);
            if clear_entry {
                self.remove(entry);
            }
            self.notices
                .deliver(&notify::channel(entry), Notice::Released);
        }
    }

    /// Listens for the fill of `entry`.
    pub(crate) fn listen(&self, entry: &str) -> Listener {
        let channel = notify::channel(entry);
        let (receiver, _) = self.notices.listen(&channel);
        Listener::new(self.notices.clone(), channel, receiver, None)
    }

    /// Removes the entries and leases whose key matches `full_pattern` (Redis glob); the
    /// number of live entries removed.
    pub(crate) fn invalidate_matching(&self, full_pattern: &str) -> u64 {
        let pattern = full_pattern.as_bytes();
        let mut leases = self.leases();
        leases.retain(|lease, _| !crate::pattern::matches(pattern, lease.as_bytes()));
        let matching: Vec<String> = self
            .entries
            .iter()
            .filter(|(key, _)| crate::pattern::matches(pattern, key.as_bytes()))
            .map(|(key, _)| key.as_ref().clone())
            .collect();
        matching.iter().filter(|key| self.remove(key)).count() as u64
    }

    /// `DEL entry lease`; true if the entry was there.
    pub(crate) fn invalidate(&self, entry: &str, lease: &str) -> bool {
        let mut leases = self.leases();
        if leases.remove(lease).is_some() {
            self.notices
                .deliver(&notify::channel(entry), Notice::Released);
        }
        self.remove(entry)
    }
}

fn holds(leases: &HashMap<String, (String, Instant)>, lease: &str, token: &str) -> bool {
    leases
        .get(lease)
        .is_some_and(|(holder, expiry)| holder == token && *expiry > Instant::now())
}
