//! Where entries are stored: Redis, or an in-process store with the same semantics.
//!
//! Both are byte stores of envelope-encoded entries with a per-entry ttl; everything above
//! them (keys, envelope, coalescing, fail-open) is shared, so the in-memory backend behaves
//! like Redis in users' tests.

mod memory;
mod redis;

pub use self::memory::MemoryStore;
pub(crate) use self::redis::RedisBackend;

use crate::CacheError;
use bytes::Bytes;
use std::time::Duration;

#[derive(Clone, Debug)]
pub(crate) enum Backend {
    Redis(RedisBackend),
    Memory(MemoryStore),
}

// The in-memory store's futures are boxed: moka's are several hundred bytes, and every
// memoized call's future would otherwise carry (and move) that much for Redis too.
impl Backend {
    /// Reads `key`, giving up at `deadline`.
    pub(crate) async fn get(
        &self,
        key: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Bytes>, CacheError> {
        match self {
            Backend::Redis(redis) => redis.get(key, deadline).await,
            Backend::Memory(memory) => Ok(Box::pin(memory.get_raw(key)).await),
        }
    }

    /// Stores `value` under `key` for `ttl`, in one command.
    pub(crate) async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        match self {
            Backend::Redis(redis) => redis.set(key, value, ttl).await,
            Backend::Memory(memory) => {
                Box::pin(memory.insert_raw(key, value, ttl)).await;
                Ok(())
            }
        }
    }

    /// Removes `key`; true if it was there.
    pub(crate) async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        match self {
            Backend::Redis(redis) => redis.delete(key).await,
            Backend::Memory(memory) => Ok(Box::pin(memory.remove_raw(key)).await),
        }
    }
}
