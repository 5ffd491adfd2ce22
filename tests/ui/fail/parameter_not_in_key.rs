use redis_memo::redis_cached;

#[redis_cached(ttl = "1m", key = "user:<id>")]
async fn get_user(id: u64, include_deleted: bool) -> String {
    format!("{id} {include_deleted}")
}

fn main() {}
