//! Generated code passes clippy's pedantic group: `cargo clippy --all-targets -- -D warnings`
//! (in `scripts/test`) lints this file with the group denied. `tests/ui/pass/no_warnings.rs`
//! covers rustc's own lints.
#![deny(clippy::pedantic)]

use redis_memo::{Cache, MemoryStore, TimedOut, redis_cache_evict, redis_cache_put, redis_cached};
use std::sync::Arc;

// One-line bodies on purpose: rustfmt would spread them out.
#[rustfmt::skip]
mod shapes {
    use super::*;

    #[derive(Debug)]
    pub(crate) struct DbError;

    impl From<TimedOut> for DbError {
        fn from(_: TimedOut) -> Self {
            DbError
        }
    }

    #[redis_cached(ttl = "1m", key = "plain:<id>", cache = cache)]
    pub(crate) async fn plain(id: u64, #[cache(skip)] cache: &Cache) -> u64 { id }

    #[redis_cached(ttl = "1m", key = "option:<id>", cache_none, lock, cache = cache)]
    pub(crate) async fn option(id: u64, #[cache(skip)] cache: &Cache) -> Option<u64> { Some(id) }

    #[redis_cached(ttl = "1m", key = "both:<id>", tags = ["t:<id>"], invalidate_all, cache = cache)]
    pub(crate) async fn both(id: u64, #[cache(skip)] cache: &Cache) -> Result<Option<u64>, DbError> { Ok(Some(id)) }

    #[redis_cached(ttl = "1m", key = "fresh:<id>", stale = "1m", fail_safe = "1h", soft_timeout = "10ms", hard_timeout = "1s", early, jitter = "5%", cache = cache)]
    pub(crate) async fn fresh(id: u64, #[cache(skip)] cache: Arc<Cache>) -> Result<u64, DbError> { Ok(id) }

    pub(crate) struct Service {
        pub(crate) cache: Cache,
        pub(crate) tenant: String,
    }

    impl Service {
        #[redis_cached(ttl = "1m", key = "t:<self.tenant>:<id>", cache = self.cache)]
        pub(crate) async fn load(&self, id: u64) -> String { format!("{}{id}", self.tenant) }

        #[redis_cache_put(Self::load(self, id), cache = self.cache)]
        pub(crate) async fn store(&self, id: u64) -> String { format!("{}{id}", self.tenant) }

        #[redis_cache_evict(Self::load(self, id), cache = self.cache)]
        pub(crate) async fn forget(&self, id: u64) -> Result<(), DbError> { let _ = id; Ok(()) }
    }

    pub(crate) trait Named {
        fn name(&self, id: u64) -> impl std::future::Future<Output = String> + Send;
    }

    #[redis_memo::redis_cached_impl]
    impl Named for Service {
        #[redis_cached(ttl = "1m", key = "n:<self.tenant>:<id>", cache = self.cache)]
        async fn name(&self, id: u64) -> String { format!("{}{id}", self.tenant) }
    }

    #[redis_cache_put(plain(id), cache = cache)]
    pub(crate) async fn put_plain(id: u64, cache: &Cache) -> u64 { id }

    #[redis_cache_evict(tags = ["t:<id>"], all_of = both, cache = cache)]
    pub(crate) async fn evict_tags(id: u64, cache: &Cache) -> Result<(), DbError> { let _ = id; Ok(()) }
}

use shapes::*;

#[tokio::test]
async fn pedantic_shapes_run() {
    let cache = Cache::builder().memory(MemoryStore::new()).build().unwrap();
    assert_eq!(plain(1, &cache).await, 1);
    assert_eq!(option(2, &cache).await, Some(2));
    assert_eq!(both(3, &cache).await.unwrap(), Some(3));
    assert_eq!(fresh(4, Arc::new(cache.clone())).await.unwrap(), 4);
    let service = Service {
        cache: cache.clone(),
        tenant: "a".into(),
    };
    assert_eq!(service.load(5).await, "a5");
    assert_eq!(service.name(5).await, "a5");
    assert!(service.invalidate_name(5).await.unwrap());
    assert_eq!(service.store(6).await, "a6");
    service.forget(6).await.unwrap();
    assert_eq!(put_plain(7, &cache).await, 7);
    evict_tags(3, &cache).await.unwrap();
}
