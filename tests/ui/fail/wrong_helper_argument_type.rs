use redis_memo::redis_cached;

#[redis_cached(ttl = "1m", key = "user:<id>")]
async fn get_user(id: u64) -> String {
    id.to_string()
}

async fn on_rename() {
    let _ = invalidate_get_user("7").await;
}

fn main() {}
