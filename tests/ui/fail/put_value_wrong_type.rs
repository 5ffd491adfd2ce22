use redis_memo::{redis_cache_put, redis_cached};

#[redis_cached(ttl = "1m", key = "user:<id>")]
async fn get_user(id: u64) -> Result<String, std::io::Error> {
    Ok(id.to_string())
}

#[redis_cache_put(get_user(id))]
async fn bump_user(id: u64) -> Result<u64, std::io::Error> {
    Ok(id + 1)
}

#[redis_cache_put(get_user(id), value = id + 1)]
async fn bump_again(id: u64) -> Result<(), std::io::Error> {
    Ok(())
}

fn main() {}
