//! The installed global cache: functions without `cache = ...` use it, and it is installed
//! once. (A test binary of its own: the global is per process.)

use redis_memo::{Cache, CacheError, MemoryStore, redis_cached};
use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

#[redis_cached(ttl = "1m", key = "global:<id>")]
async fn lookup(id: u64) -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    id + 1
}

#[tokio::test]
async fn functions_without_a_cache_option_use_the_installed_one() {
    let store = MemoryStore::new();
    let cache = Cache::builder()
        .memory(store.clone())
        .namespace("global")
        .build()
        .unwrap();
    redis_memo::install(cache.clone()).unwrap();
    let again = Cache::builder().memory(MemoryStore::new()).build().unwrap();
    assert!(matches!(
        redis_memo::install(again),
        Err(CacheError::AlreadyInstalled)
    ));

    assert_eq!(lookup(1).await, 2);
    assert_eq!(lookup(1).await, 2);
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    assert!(
        store.get_raw("global:{global:1}").await.is_some(),
        "stored in the installed cache"
    );
    assert!(invalidate_lookup(1).await.unwrap());
    assert_eq!(lookup(1).await, 2);
    assert_eq!(RUNS.load(Ordering::SeqCst), 2);
    assert_eq!(cache.stats().hits, 1);
}
