use redis_memo::redis_cached;

// The default lease follows a 500ms ttl up to 1s: an explicit 3s wait outlasts it.
#[redis_cached(ttl = "500ms", key = "user:<id>", lock(wait = "3s"))]
async fn get_user(id: u64) -> u64 {
    id
}

fn main() {}
