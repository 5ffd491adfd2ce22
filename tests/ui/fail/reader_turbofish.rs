use redis_memo::{KeyPart, redis_cache_evict, redis_cache_put, redis_cached};

#[redis_cached(ttl = "1m", key = "count:<name>", invalidate_all)]
async fn count<T: KeyPart + Sync>(name: T) -> u64 {
    let _ = name;
    1
}

#[redis_cache_put(count::<u64>(id))]
async fn recount(id: u64) -> u64 {
    id
}

#[redis_cache_evict(all_of = count::<u8>)]
async fn forget() {}

fn main() {}
