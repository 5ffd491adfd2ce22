use redis_memo::{redis_cache_evict, redis_cache_put, redis_cached};

#[redis_cached(ttl = "1m", key = "user:<id>")]
async fn get_user(id: u64) -> String {
    id.to_string()
}

#[redis_cache_put(get_user(id), tags = ["users"], before)]
async fn rename_user(id: u64, name: String) -> String {
    name
}

#[redis_cache_put(get_user(id))]
async fn touch_user(id: u64) {}

#[redis_cache_evict(value = 1, all_of = "get_user", tags = ["org:<org>"])]
async fn delete_user(id: u64) {}

#[redis_cache_evict()]
async fn nothing() {}

#[redis_cache_evict(get_user(id), 5)]
async fn not_a_call(id: u64) {}

fn main() {}
