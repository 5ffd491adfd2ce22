//! `stale` on functions whose parameters are owned handles, `'static` references included.

use redis_memo::{Cache, redis_cached};
use std::sync::Arc;

struct Db;

#[redis_cached(ttl = "1m", stale = "5m", fail_safe = "1h", jitter = "10%", key = "user:<id>/<region>", cache = cache)]
async fn get_user(
    id: u64,
    region: &'static str,
    #[cache(skip)] db: Arc<Db>,
    #[cache(skip)] cache: Cache,
) -> Result<String, std::io::Error> {
    let _ = db;
    Ok(format!("{id}@{region}"))
}

/// A `mut` parameter: the body mutates its own copy.
#[redis_cached(ttl = "1m", stale = "5m", key = "sorted:<id>", cache = cache)]
async fn sorted(id: u64, #[cache(skip)] mut values: Vec<u32>, #[cache(skip)] cache: Cache) -> Vec<u32> {
    let _ = id;
    values.sort_unstable();
    values
}

fn main() {
    let cache = Cache::builder().memory(redis_memo::MemoryStore::new()).build().unwrap();
    let _ = get_user(1, "eu", Arc::new(Db), cache.clone());
    let _ = sorted(1, vec![2, 1], cache.clone());
    let _ = invalidate_get_user(1, "eu", cache);
}
