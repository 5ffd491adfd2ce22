//! Before `install`, functions without `cache = ...` run uncached (never fail), and their
//! invalidation helpers say why nothing can be invalidated. (A test binary of its own: the
//! global is per process, and this one never installs it.)

use redis_memo::{CacheError, redis_cached};
use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

#[redis_cached(ttl = "1m", key = "uninstalled:<id>")]
async fn lookup(id: u64) -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    id + 1
}

#[tokio::test]
async fn without_an_installed_cache_calls_run_uncached_and_invalidation_is_an_error() {
    assert_eq!(lookup(1).await, 2);
    assert_eq!(lookup(1).await, 2);
    assert_eq!(RUNS.load(Ordering::SeqCst), 2, "nothing to cache in");
    let error = invalidate_lookup(1).await.unwrap_err();
    assert!(matches!(error, CacheError::NotInstalled));
    assert!(error.to_string().contains("redis_memo::install"), "{error}");
}
