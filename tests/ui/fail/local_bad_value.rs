use redis_memo::redis_cached;

#[redis_cached(ttl = "1m", key = "user:<id>", local = "soon")]
async fn not_a_duration(id: u64) -> u64 {
    id
}

#[redis_cached(ttl = "1m", key = "user:<id>", local = 30)]
async fn not_a_string(id: u64) -> u64 {
    id
}

fn main() {}
