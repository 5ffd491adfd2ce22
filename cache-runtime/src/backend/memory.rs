//! The in-memory backend: a moka cache of envelope bytes with per-entry expiry, and leases in
//! a map beside it, with the same semantics as Redis and its scripts.

use crate::lease::Acquired;
use crate::notify::{self, Listener, Notice, Notices};
use crate::pattern::KeyPattern;
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
    leases: Arc<Mutex<Expiring<String>>>,
    /// Tag version key -> token.
    tags: Arc<Mutex<Expiring<Token>>>,
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

/// Key -> (value, expiry), for leases and tag versions. Expired ones count as absent, and are
/// purged once the table has doubled since the last purge, so it stays within twice its live
/// size (Redis expires keys by itself; a map must be swept).
struct Expiring<V> {
    versions: HashMap<String, (V, Instant)>,
    purge_at: usize,
}

impl<V> Default for Expiring<V> {
    fn default() -> Self {
        Expiring {
            versions: HashMap::new(),
            purge_at: 0,
        }
    }
}

impl<V: Copy> Expiring<V> {
    fn live(&self, key: &str, now: Instant) -> Option<V> {
        self.versions
            .get(key)
            .filter(|(_, expiry)| *expiry > now)
            .map(|(value, _)| *value)
    }
}

impl<V> Expiring<V> {
    const MIN_PURGE_AT: usize = 1024;

    fn purge_if_grown(&mut self, now: Instant) {
        if self.versions.len() < self.purge_at.max(Self::MIN_PURGE_AT) {
            return;
        }
        self.versions.retain(|_, (_, expiry)| *expiry > now);
        self.purge_at = self.versions.len() * 2;
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

    fn leases(&self) -> MutexGuard<'_, Expiring<String>> {
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn tags(&self) -> MutexGuard<'_, Expiring<Token>> {
        self.tags.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The entry and its tags' current tokens; with `slide`, an entry found is kept that long
    /// from now (as `GETEX .. PX`).
    pub(crate) fn read(
        &self,
        entry: &str,
        tag_keys: TagKeys<'_>,
        slide: Option<Duration>,
    ) -> (Option<Bytes>, Versions) {
        let now = Instant::now();
        let versions = {
            let tags = self.tags();
            tag_keys.iter().map(|key| tags.live(key, now)).collect()
        };
        let entry = match slide {
            Some(ttl) => self.get_and_keep(entry, ttl),
            None => self.get(entry),
        };
        (entry, versions)
    }

    /// The live entry under `key`, now kept for `ttl` from now. Atomic, as `GETEX` is:
    /// under the lock that serializes fills and invalidations (moka's per-key compute alone
    /// does not exclude their plain inserts and removals), so an entry removed or replaced
    /// meanwhile is not brought back.
    fn get_and_keep(&self, key: &str, ttl: Duration) -> Option<Bytes> {
        use moka::ops::compute::{CompResult, Op};
        let _serialized = self.leases();
        let now = Instant::now();
        let kept = self
            .entries
            .entry(key.to_owned())
            .and_compute_with(|current| match current {
                Some(current) if current.value().expires_at > now => Op::Put(StoredEntry {
                    bytes: current.value().bytes.clone(),
                    expires_at: now + ttl,
                }),
                _ => Op::Nop,
            });
        match kept {
            CompResult::ReplacedWith(entry) => Some(entry.into_value().bytes),
            _ => None,
        }
    }

    /// How long the entry under a full key has left, as `PTTL` tells on Redis; `None` if it
    /// is absent or expired.
    pub async fn time_to_live(&self, key: &str) -> Option<Duration> {
        let entry = self.entries.get(key)?;
        let left = entry.expires_at.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Creates the missing tag tokens; the tokens, in order.
    pub(crate) fn ensure_tags(&self, keys: &[&str], ttl: Duration) -> Vec<Token> {
        let now = Instant::now();
        let mut tags = self.tags();
        tags.purge_if_grown(now);
        keys.iter()
            .map(|key| {
                let slot = tags
                    .versions
                    .entry((*key).to_owned())
                    .or_insert_with(|| (tags::new_token(), now + ttl));
                if slot.1 <= now {
                    *slot = (tags::new_token(), now + ttl);
                }
                slot.0
            })
            .collect()
    }

    /// Gives live tag version keys with less than `at_least` left `to` more (as
    /// [`tags::EXTEND_SCRIPT`]: an expired version is gone, and stays gone).
    pub(crate) fn extend_tags(&self, keys: TagKeys<'_>, at_least: Duration, to: Duration) {
        let now = Instant::now();
        let mut tags = self.tags();
        for key in keys.iter() {
            if let Some((_, expiry)) = tags.versions.get_mut(key)
                && *expiry > now
                && *expiry - now < at_least
            {
                *expiry = now + to;
            }
        }
    }

    /// Deletes tag version keys; how many existed.
    pub(crate) fn invalidate_tags(&self, keys: &[String]) -> u64 {
        let now = Instant::now();
        let mut tags = self.tags();
        keys.iter()
            .filter(|key| {
                tags.versions
                    .remove(key.as_str())
                    .is_some_and(|(_, expiry)| expiry > now)
            })
            .count() as u64
    }

    /// Removes a tag's version key, as `DEL` on Redis would: its entries become misses.
    pub async fn remove_tag_raw(&self, full_tag_key: &str) -> bool {
        self.invalidate_tags(&[full_tag_key.to_owned()]) > 0
    }

    /// `SET lease token PX ttl`: the lease is `token`'s, whoever held it.
    pub(crate) fn seize_lease(&self, lease: &str, token: &str, ttl: Duration) {
        let until = Instant::now() + ttl;
        let mut leases = self.leases();
        leases.purge_if_grown(Instant::now());
        leases
            .versions
            .insert(lease.to_owned(), (token.to_owned(), until));
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
        leases.purge_if_grown(now);
        if let Some((holder, expiry)) = leases.versions.get(lease)
            && *expiry > now
        {
            let writer = crate::lease::is_writer_token(holder.as_bytes());
            return Acquired::Busy { writer };
        }
        leases
            .versions
            .insert(lease.to_owned(), (token.to_owned(), now + ttl));
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
        if !holds(&leases.versions, lease, token) {
            return false;
        }
        leases.versions.remove(lease);
        self.insert(entry, value.clone(), ttl);
        self.notices
            .deliver(&notify::channel(entry), Notice::Filled);
        true
    }

    /// The release script.
    pub(crate) fn release(&self, entry: &str, lease: &str, token: &str, clear_entry: bool) {
        let mut leases = self.leases();
        if holds(&leases.versions, lease, token) {
            leases.versions.remove(lease);
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

    /// Removes the entries and leases `pattern` selects; the number of live entries removed.
    pub(crate) fn invalidate_matching(&self, pattern: &KeyPattern) -> u64 {
        let mut leases = self.leases();
        // Deleted leases are announced, as the Redis script does: `lock` waiters take over.
        leases.versions.retain(|lease, _| {
            let selected = pattern.selects(lease);
            if selected && let Some(entry) = lease.strip_suffix(crate::lease::LEASE_SUFFIX) {
                self.notices
                    .deliver(&notify::channel(entry), Notice::Released);
            }
            !selected
        });
        let matching: Vec<String> = self
            .entries
            .iter()
            .filter(|(key, _)| pattern.selects(key))
            .map(|(key, _)| key.as_ref().clone())
            .collect();
        matching.iter().filter(|key| self.remove(key)).count() as u64
    }

    /// `DEL entry lease`; true if the entry was there.
    pub(crate) fn invalidate(&self, entry: &str, lease: &str) -> bool {
        let mut leases = self.leases();
        if leases.versions.remove(lease).is_some() {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn expire_all_tags(store: &MemoryStore) {
        let past = Instant::now() - Duration::from_secs(1);
        for (_, expiry) in store.tags().versions.values_mut() {
            *expiry = past;
        }
    }

    #[test]
    fn a_sliding_read_never_brings_back_an_invalidated_entry() {
        let store = MemoryStore::new();
        let no_tags = TagKeys {
            function: None,
            user: &[],
        };
        for _ in 0..2_000 {
            store.insert("ns:{e}", Bytes::from_static(b"v"), Duration::from_secs(60));
            let barrier = std::sync::Barrier::new(2);
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    barrier.wait();
                    store.read("ns:{e}", no_tags, Some(Duration::from_secs(60)));
                });
                barrier.wait();
                store.invalidate("ns:{e}", "ns:{e}:lock");
            });
            // In either order the invalidation wins: the entry is gone.
            assert!(store.get("ns:{e}").is_none());
        }
    }

    #[test]
    fn an_expired_tag_version_stays_gone() {
        let store = MemoryStore::new();
        let keys = ["ns:#tag:{t}".to_owned()];
        let tag_keys = TagKeys {
            function: None,
            user: &keys,
        };
        let first = store.ensure_tags(&[&keys[0]], Duration::from_secs(60))[0];
        expire_all_tags(&store);
        store.extend_tags(tag_keys, Duration::from_secs(60), Duration::from_secs(120));
        assert_eq!(
            store.read("ns:{e}", tag_keys, None).1[..],
            [None],
            "extending does not revive it"
        );
        let second = store.ensure_tags(&[&keys[0]], Duration::from_secs(60))[0];
        assert_ne!(first, second, "a new version, never the old one");
    }

    #[test]
    fn a_tag_version_is_lengthened_only_when_it_runs_short() {
        let store = MemoryStore::new();
        let keys = ["ns:#tag:{t}".to_owned()];
        let tag_keys = TagKeys {
            function: None,
            user: &keys,
        };
        let (at_least, to) = (Duration::from_secs(60), Duration::from_secs(120));
        store.ensure_tags(&[&keys[0]], to);
        let expiry = || store.tags().versions[&keys[0]].1;
        let created = expiry();
        store.extend_tags(tag_keys, at_least, to);
        assert_eq!(expiry(), created, "enough left: untouched");
        store.tags().versions.get_mut(&keys[0]).unwrap().1 = Instant::now() + at_least / 2;
        store.extend_tags(tag_keys, at_least, to);
        let left = expiry() - Instant::now();
        assert!(left > at_least && left <= to, "lengthened to {left:?}");
    }

    #[test]
    fn expired_tag_versions_are_purged_as_the_table_grows() {
        let store = MemoryStore::new();
        let ttl = Duration::from_secs(60);
        for batch in 0..4 {
            let keys: Vec<String> = (0..1000)
                .map(|i| format!("ns:#tag:{{{batch}-{i}}}"))
                .collect();
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            store.ensure_tags(&refs, ttl);
            expire_all_tags(&store);
        }
        assert!(
            store.tags().versions.len() <= 2000,
            "{} versions kept",
            store.tags().versions.len()
        );
    }

    #[test]
    fn expired_leases_are_purged_as_the_table_grows() {
        let store = MemoryStore::new();
        for batch in 0..4 {
            for i in 0..1000 {
                let entry = format!("ns:{{{batch}-{i}}}");
                let lease = crate::lease::lease_key(&entry);
                store.acquire_lease(&entry, &lease, "token", Duration::from_secs(60));
            }
            let past = Instant::now() - Duration::from_secs(1);
            for (_, expiry) in store.leases().versions.values_mut() {
                *expiry = past;
            }
        }
        assert!(
            store.leases().versions.len() <= 2000,
            "{} leases kept",
            store.leases().versions.len()
        );
    }
}
