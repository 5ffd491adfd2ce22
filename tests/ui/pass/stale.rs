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

fn main() {
    let cache = Cache::builder().memory(redis_memo::MemoryStore::new()).build().unwrap();
    let _ = get_user(1, "eu", Arc::new(Db), cache.clone());
    let _ = invalidate_get_user(1, "eu", cache);
}
