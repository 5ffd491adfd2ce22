//! The process-wide cache used by memoized functions without a `cache = ...` option.

use crate::{Cache, CacheError};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

static GLOBAL: OnceLock<Cache> = OnceLock::new();

/// Installs `cache` as the one used by memoized functions and helpers that have no
/// `cache = ...` option. Call it once, at start-up.
///
/// Until it is called, such functions run uncached (with one warning) and their
/// `invalidate_*` helpers return [`CacheError::NotInstalled`].
///
/// # Errors
/// [`CacheError::AlreadyInstalled`] if a cache was installed before.
pub fn install(cache: Cache) -> Result<(), CacheError> {
    GLOBAL.set(cache).map_err(|_| CacheError::AlreadyInstalled)
}

/// The installed cache, if any.
pub fn installed() -> Option<&'static Cache> {
    let cache = GLOBAL.get();
    if cache.is_none() {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Relaxed) {
            tracing::warn!(target: "redis_memo", "redis-memo: a memoized function ran before `redis_memo::install`; it runs uncached"
            );
        }
    }
    cache
}
