use redis_memo::redis_cached;

#[redis_cached(ttl = "0s", key = "user:<id>")]
async fn get_user(id: u64) -> String {
    id.to_string()
}

fn main() {}
