use redis_memo::redis_cached;

#[derive(Debug)]
struct DbError;

#[redis_cached(ttl = "1m", key = "user:<id>", hard_timeout = "1s")]
async fn get_user(id: u64) -> Result<u64, DbError> {
    Ok(id)
}

fn main() {}
