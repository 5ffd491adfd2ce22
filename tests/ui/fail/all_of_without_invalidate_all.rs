use redis_memo::{redis_cache_evict, redis_cached};

#[redis_cached(ttl = "1m", key = "user:<id>")]
async fn get_user(id: u64) -> String {
    id.to_string()
}

#[redis_cache_evict(all_of = get_user)]
async fn reset_users() {}

async fn reset_directly() {
    let _ = invalidate_all_get_user().await;
}

fn main() {}
