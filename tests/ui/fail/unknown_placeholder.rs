use redis_memo::redis_cached;

#[redis_cached(ttl = "1m", key = "user:<usr_id>")]
async fn get_user(user_id: u64) -> String {
    user_id.to_string()
}

fn main() {}
