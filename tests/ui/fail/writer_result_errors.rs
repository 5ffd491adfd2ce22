use redis_memo::{redis_cache_evict, redis_cached};

#[redis_cached(ttl = "1m", key = "user:<id>")]
async fn get_user(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[redis_cache_evict(get_user(user), result = user, before)]
async fn evict_before(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[redis_cache_evict(get_user(id), result = "user")]
async fn evict_literal(id: u64) -> Result<u64, String> {
    Ok(id)
}

// The result's name must not hide a parameter.
#[redis_cache_evict(get_user(id), result = id)]
async fn evict_shadowing(id: u64) -> Result<u64, String> {
    Ok(id)
}

fn main() {}
