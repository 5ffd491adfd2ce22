//! `with_cache`: tests that run in parallel each give memoized functions without `cache = ...`
//! a store of their own, with no global cache installed. (A test binary of its own: nothing
//! here may install the global cache.)

use redis_memo::{Cache, MemoryStore, redis_cached, with_cache};
use std::sync::atomic::{AtomicU32, Ordering};

#[redis_cached(ttl = "1m", key = "scoped:<id>")]
async fn lookup(id: u64, #[cache(skip)] runs: &AtomicU32) -> u64 {
    runs.fetch_add(1, Ordering::SeqCst);
    id + 1
}

async fn scenario(id: u64) {
    let store = MemoryStore::new();
    let cache = Cache::builder().memory(store.clone()).build().unwrap();
    let runs = AtomicU32::new(0);
    with_cache(cache.clone(), async {
        assert_eq!(lookup(id, &runs).await, id + 1);
        assert_eq!(lookup(id, &runs).await, id + 1);
        assert!(
            invalidate_lookup(id).await.unwrap(),
            "the helper uses it too"
        );
        assert_eq!(lookup(id, &runs).await, id + 1);
    })
    .await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "one hit, then computed after the invalidation"
    );
    assert_eq!(cache.stats().hits, 1);
    assert_eq!(
        store.entry_count().await,
        1,
        "only this test's entry is in its store"
    );

    // Outside the scope there is no cache (none is installed): the call runs uncached.
    assert_eq!(lookup(id, &runs).await, id + 1);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(cache.stats().hits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_test_has_its_own_store() {
    scenario(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_test_in_parallel_has_its_own_too() {
    scenario(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scopes_on_one_runtime_stay_apart() {
    let (first, second) = tokio::join!(scenario(5), scenario(5));
    let ((), ()) = (first, second);
}

#[redis_cached(ttl = "1m", key = "inner:<id>")]
async fn inner(id: u64) -> u64 {
    id * 2
}

/// Its body calls another memoized function without `cache = ...`.
#[redis_cached(ttl = "10s", stale = "1m", key = "outer:<id>")]
async fn outer(id: u64) -> u64 {
    inner(id).await + 1
}

/// A memoized call's future holds its callee's, and in a debug build a function with `stale`
/// makes a large one (about 80 KB for `outer`, whose poll frames take more): this scenario
/// runs as a task of a runtime with roomy thread stacks rather than on the test's thread.
#[test]
fn background_refreshes_keep_the_scope_of_their_call() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(16 * 1024 * 1024)
        .enable_all()
        .build()
        .unwrap();
    let scenario = runtime.spawn(refresh_in_scope());
    runtime.block_on(scenario).unwrap();
}

async fn refresh_in_scope() {
    let clock = redis_memo::ManualClock::starting_now();
    let store = MemoryStore::new();
    let cache = Cache::builder()
        .memory(store.clone())
        .clock(clock.clone())
        .build()
        .unwrap();
    let inner_key = cache.full_key(&inner_cache_key(4));
    with_cache(cache.clone(), async {
        assert_eq!(outer(4).await, 9);
        assert!(invalidate_inner(4).await.unwrap());
        clock.advance(std::time::Duration::from_secs(11));
        // Stale: served at once, refreshed in the background, whose body calls `inner`.
        assert_eq!(outer(4).await, 9);
        cache.refreshes_done().await;
    })
    .await;
    assert_eq!(cache.stats().refreshes, 1);
    assert!(
        store.get_raw(&inner_key).await.is_some(),
        "the refresh's call of `inner` used the scoped cache"
    );
}
