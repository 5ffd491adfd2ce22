use redis_memo::redis_cached;

struct User {
    name: String,
}

#[redis_cached(ttl = "1m", key = "user:<id>")]
async fn get_user(id: u64) -> Result<User, std::io::Error> {
    Ok(User { name: id.to_string() })
}

fn main() {}
