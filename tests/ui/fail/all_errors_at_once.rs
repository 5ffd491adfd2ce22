use redis_memo::redis_cached;

#[redis_cached(ttl = "fortnight", key = "user:<idd>", retries = 3)]
async fn get_user(id: u64, verbose: bool) -> String {
    format!("{id} {verbose}")
}

fn main() {}
