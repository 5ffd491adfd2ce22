use redis_memo::{redis_cache_evict, redis_cached};

#[redis_cached(ttl = "1m", key = "user:<id>")]
async fn get_user(id: u64) -> String {
    id.to_string()
}

#[redis_cache_evict(get_user(id))]
fn delete_user(id: u64) {}

fn main() {}
