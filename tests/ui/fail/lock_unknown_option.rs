use redis_memo::redis_cached;

#[redis_cached(ttl = "1m", key = "user:<id>", lock(timeout = "2s", wait = "1s", wait = "1s"))]
async fn get_user(id: u64) -> u64 {
    id
}

fn main() {}
