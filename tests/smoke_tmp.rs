use redis_memo::{Cache, MemoryStore, redis_cached};
use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

#[redis_cached(ttl = "1m", key = "user:<id>", cache = cache)]
async fn get_user(id: u64, #[cache(skip)] cache: &Cache) -> Result<String, std::io::Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(format!("user {id}"))
}

struct Svc {
    cache: Cache,
    tenant: String,
}
impl Svc {
    #[redis_cached(ttl = "1m", key = "t:<self.tenant>:<name>", cache = self.cache)]
    async fn lookup(&self, name: &str) -> Option<String> {
        Some(format!("{}/{name}", self.tenant))
    }
}

#[tokio::test]
async fn smoke() {
    let cache = Cache::builder().memory(MemoryStore::new()).build().unwrap();
    assert_eq!(get_user(1, &cache).await.unwrap(), "user 1");
    assert_eq!(get_user(1, &cache).await.unwrap(), "user 1");
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    assert!(invalidate_get_user(1, &cache).await.unwrap());
    assert_eq!(get_user_cache_key(1), "user:1");
    let svc = Svc {
        cache: cache.clone(),
        tenant: "acme".into(),
    };
    assert_eq!(svc.lookup("x y").await.unwrap(), "acme/x y");
    assert_eq!(svc.lookup_cache_key("x y"), "t:acme:x%20y");
}
