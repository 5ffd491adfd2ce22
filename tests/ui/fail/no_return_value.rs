use redis_memo::redis_cached;

#[redis_cached(ttl = "1m", key = "user:<id>")]
async fn touch_user(id: u64) {
    let _ = id;
}

fn main() {}
