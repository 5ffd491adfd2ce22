use redis_memo::{redis_cache_put, redis_cached};

#[redis_cached(ttl = "1m", key = "user:<id>")]
async fn get_user(id: u64) -> String {
    id.to_string()
}

#[redis_cache_put(get_user(name))]
async fn rename_user(id: u64, name: String) -> String {
    let _ = id;
    name
}

fn main() {}
