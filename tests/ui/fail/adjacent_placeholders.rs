use redis_memo::redis_cached;

#[redis_cached(ttl = "1m", key = "user:<first><last>")]
async fn get_user(first: String, last: String) -> String {
    format!("{first} {last}")
}

fn main() {}
