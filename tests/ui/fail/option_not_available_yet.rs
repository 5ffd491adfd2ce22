use redis_memo::redis_cached;

#[redis_cached(ttl = "1m", key = "user:<id>", fail_safe = "1m")]
async fn get_user(id: u64) -> String {
    id.to_string()
}

fn main() {}
