use redis_memo::redis_cached;

#[redis_cached(ttl = "1m", key = "user:<id>", cache_none(always), lock(wait(x) = "1s"))]
async fn find(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
