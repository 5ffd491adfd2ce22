use redis_memo::redis_cached;

#[redis_cached(ttl = "1m", key = "user:<id>")]
async fn get_user(id: u64, #[cache(ignore)] verbose: bool) -> String {
    format!("{id} {verbose}")
}

fn main() {}
