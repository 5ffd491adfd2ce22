use redis_memo::redis_cached;

#[redis_cached(cache_none)]
async fn find(id: u64) -> Option<u64> {
    Some(id)
}

fn main() {}
