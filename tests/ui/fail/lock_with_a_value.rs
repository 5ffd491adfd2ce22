use redis_memo::redis_cached;

#[redis_cached(ttl = "1m", key = "user:<id>", lock = true)]
async fn get_user(id: u64) -> u64 {
    id
}

fn main() {}
