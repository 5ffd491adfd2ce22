//! Where entries are stored: one Redis server, a Redis Cluster, or an in-process store with
//! the same semantics.
//!
//! Both store envelope-encoded entries with a per-entry ttl and leases beside them;
//! everything above (keys, envelope, coalescing, fail-open) is shared, so the in-memory
//! backend behaves like Redis in users' tests.

mod cluster_tracking;
mod connection;
mod gate;
mod held_lease;
mod in_flight;
mod link;
mod local;
mod memory;
mod redis;
mod tiered;
mod tracking;

pub(crate) use self::cluster_tracking::ClusterTracking;
pub(crate) use self::connection::{RedisConnection, Remake};
pub(crate) use self::gate::Gate;
pub(crate) use self::held_lease::HeldLease;
pub(crate) use self::link::{ClusterLink, Link};
pub(crate) use self::local::Copies;
pub use self::memory::MemoryStore;
pub(crate) use self::redis::RedisBackend;
pub(crate) use self::tiered::Tier;
pub(crate) use self::tracking::Tracking;

use crate::CacheError;
use crate::lease::Acquired;
use crate::notify::Listener;
use crate::tags::{self, TagKeys, Token, Versions};
use bytes::Bytes;
use std::time::Duration;
use tokio::time::Instant;

/// What a read found.
#[derive(Debug)]
pub(crate) struct Found {
    /// The entry's stored bytes, if it exists.
    pub(crate) entry: Option<Bytes>,
    /// Its tags' tokens, in the order of its tag keys.
    pub(crate) versions: Versions,
    /// Whether this process's in-process tier answered, without a round trip.
    pub(crate) local: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Redis(RedisBackend),
    Memory(MemoryStore),
}

impl Backend {
    /// The server's clock (`TIME`), in ms since the Unix epoch; `None` for the in-memory store,
    /// which shares the process's clock.
    pub(crate) async fn server_time_ms(
        &self,
        deadline: Instant,
    ) -> Result<Option<u64>, CacheError> {
        match self {
            Backend::Redis(redis) => redis.server_time_ms(deadline).await.map(Some),
            Backend::Memory(_) => Ok(None),
        }
    }

    /// Why the store cannot be reached, where the error of a request hides it (a cluster
    /// client's "no connections found"); `None` otherwise.
    pub(crate) async fn diagnose(&self) -> Option<CacheError> {
        match self {
            Backend::Redis(redis) => redis.diagnose().await,
            Backend::Memory(_) => None,
        }
    }

    /// A round trip (reading `probe_key`) on the in-process tier's tracking connection, made
    /// first if need be: every invalidation sent before is applied when it returns.
    pub(crate) async fn sync_local(&self, probe_key: &str) -> Result<(), CacheError> {
        match self {
            Backend::Redis(redis) => redis.sync_local(probe_key).await,
            Backend::Memory(_) => Ok(()),
        }
    }

    /// What the in-process tier holds, in weighed bytes (0 without one).
    pub(crate) fn local_bytes(&self) -> u64 {
        match self {
            Backend::Redis(redis) => redis.local_bytes(),
            Backend::Memory(_) => 0,
        }
    }

    /// Reads `key`, giving up at `deadline`.
    pub(crate) async fn get(
        &self,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<Bytes>, CacheError> {
        match self {
            Backend::Redis(redis) => redis.get(key, deadline).await,
            Backend::Memory(memory) => Ok(memory.get(key)),
        }
    }

    /// Reads `entry` and the current tokens of `tag_keys` in one round trip (none when this
    /// process's copies have them all), giving up at `deadline`; with `keep`, what came from
    /// Redis is kept in the in-process tier for at most that long, if the cache has one. With
    /// `slide`, an entry found is kept that long from now (`GETEX .. PX`), on the same round
    /// trip, and the tier is not used.
    pub(crate) async fn read(
        &self,
        entry: &str,
        tag_keys: TagKeys<'_>,
        keep: Option<Duration>,
        slide: Option<Duration>,
        deadline: Instant,
    ) -> Result<Found, CacheError> {
        match self {
            Backend::Redis(redis) => redis.read(entry, tag_keys, keep, slide, deadline).await,
            Backend::Memory(memory) => {
                let (entry, versions) = memory.read(entry, tag_keys, slide);
                Ok(Found {
                    entry,
                    versions,
                    local: false,
                })
            }
        }
    }

    /// Reads many entries and the current tokens of all their tags in one round trip (on a
    /// cluster, one `MGET` per slot, in parallel), from Redis itself (not the in-process
    /// tier), giving up at `deadline`: each entry's bytes and its tags' tokens, in order.
    pub(crate) async fn read_many(
        &self,
        entries: &[(&str, TagKeys<'_>)],
        deadline: Instant,
    ) -> Result<Vec<(Option<Bytes>, Versions)>, CacheError> {
        match self {
            Backend::Redis(redis) => redis.read_many(entries, deadline).await,
            Backend::Memory(memory) => Ok(entries
                .iter()
                .map(|(entry, tag_keys)| memory.read(entry, *tag_keys, None))
                .collect()),
        }
    }

    /// Makes sure each tag version key holds a token (new ones live twice `lifetime`: see
    /// [`tags::kept_for`]), giving up at `deadline`; the tokens.
    pub(crate) async fn ensure_tags(
        &self,
        keys: &[&str],
        lifetime: Duration,
        deadline: Instant,
    ) -> Result<Vec<Token>, CacheError> {
        let ttl = tags::kept_for(lifetime);
        match self {
            Backend::Redis(redis) => redis.ensure_tags(keys, ttl, deadline).await,
            Backend::Memory(memory) => Ok(memory.ensure_tags(keys, ttl)),
        }
    }

    /// Makes live tag version keys live at least `lifetime` more: one with less left is given
    /// twice `lifetime` ([`tags::kept_for`]); one with enough left is not touched.
    pub(crate) async fn extend_tags(
        &self,
        keys: TagKeys<'_>,
        lifetime: Duration,
    ) -> Result<(), CacheError> {
        let to = tags::kept_for(lifetime);
        match self {
            Backend::Redis(redis) => redis.extend_tags(keys, lifetime, to).await,
            Backend::Memory(memory) => {
                memory.extend_tags(keys, lifetime, to);
                Ok(())
            }
        }
    }

    /// Deletes tag version keys (every entry recording them becomes a miss); how many existed.
    pub(crate) async fn invalidate_tags(&self, keys: &[String]) -> Result<u64, CacheError> {
        match self {
            Backend::Redis(redis) => redis.invalidate_tags(keys).await,
            Backend::Memory(memory) => Ok(memory.invalidate_tags(keys)),
        }
    }

    /// Gives the lease `lease` to `token` for `ttl`, whoever held it (a write-through: the
    /// holder's fill is then rejected).
    pub(crate) async fn seize_lease(
        &self,
        lease: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        match self {
            Backend::Redis(redis) => redis.seize_lease(lease, token, ttl).await,
            Backend::Memory(memory) => {
                memory.seize_lease(lease, token, ttl);
                Ok(())
            }
        }
    }

    /// Takes the lease `lease` of `entry` for `token`, unless someone holds it; with it, the
    /// entry as it is at that moment. Gives up at `deadline`.
    pub(crate) async fn acquire_lease(
        &self,
        entry: &str,
        lease: &str,
        token: &str,
        ttl: Duration,
        deadline: Instant,
    ) -> Result<Acquired, CacheError> {
        match self {
            Backend::Redis(redis) => {
                redis
                    .acquire_lease(entry, lease, token, ttl, deadline)
                    .await
            }
            Backend::Memory(memory) => Ok(memory.acquire_lease(entry, lease, token, ttl)),
        }
    }

    /// Stores `value` under `entry` for `ttl` and releases the lease, only if `token` still
    /// holds it; true if stored.
    pub(crate) async fn fill(
        &self,
        entry: &str,
        lease: &str,
        token: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        match self {
            Backend::Redis(redis) => redis.fill(entry, lease, token, value, ttl).await,
            Backend::Memory(memory) => Ok(memory.fill(entry, lease, token, value, ttl)),
        }
    }

    /// Releases the lease of `entry` if `token` still holds it, removing the entry too with
    /// `clear_entry`, and announces the release.
    pub(crate) async fn release(
        &self,
        entry: &str,
        lease: &str,
        token: &str,
        clear_entry: bool,
    ) -> Result<(), CacheError> {
        match self {
            Backend::Redis(redis) => redis.release(entry, lease, token, clear_entry).await,
            Backend::Memory(memory) => {
                memory.release(entry, lease, token, clear_entry);
                Ok(())
            }
        }
    }

    /// Listens for the fill (or release) of `entry`'s lease; `None` when this backend cannot
    /// be notified (a user-built Redis connection).
    pub(crate) async fn listen(&self, entry: &str) -> Result<Option<Listener>, CacheError> {
        match self {
            Backend::Redis(redis) => redis.listen(entry).await,
            Backend::Memory(memory) => Ok(Some(memory.listen(entry))),
        }
    }

    /// Removes every entry and lease `pattern` selects; the number of entries.
    pub(crate) async fn invalidate_matching(
        &self,
        pattern: &crate::pattern::KeyPattern,
    ) -> Result<u64, CacheError> {
        match self {
            Backend::Redis(redis) => redis.invalidate_matching(pattern).await,
            Backend::Memory(memory) => Ok(memory.invalidate_matching(pattern)),
        }
    }

    /// Removes an entry and its lease together; true if the entry was there.
    /// Deletes each entry with its lease, in one round trip; how many entries existed.
    pub(crate) async fn invalidate_entries(&self, entries: &[&str]) -> Result<u64, CacheError> {
        match self {
            Backend::Redis(redis) => redis.invalidate_entries(entries).await,
            Backend::Memory(memory) => Ok(entries
                .iter()
                .filter(|entry| memory.invalidate(entry, &crate::lease::lease_key(entry)))
                .count() as u64),
        }
    }

    pub(crate) async fn invalidate(&self, entry: &str, lease: &str) -> Result<bool, CacheError> {
        match self {
            Backend::Redis(redis) => redis.invalidate(entry, lease).await,
            Backend::Memory(memory) => Ok(memory.invalidate(entry, lease)),
        }
    }
}
