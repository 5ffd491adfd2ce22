use redis_memo::redis_cached;

#[redis_cached(ttl = "1m", key = "user:<id>")]
async fn get_user(id: u64, #[cache(skip)] log: &mut Vec<String>) -> String {
    log.push(id.to_string());
    id.to_string()
}

fn main() {}
