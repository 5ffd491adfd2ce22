use redis_memo::{redis_cache_put, redis_cached};

#[redis_cached(ttl = "1m", key = "user:<id>", tags = ["org:<org>"])]
async fn get_user(id: u64, org: u32) -> String {
    format!("{id}@{org}")
}

#[redis_cache_put(get_user(id))]
async fn rename_user(id: u64, name: String) -> String {
    name
}

fn main() {}
