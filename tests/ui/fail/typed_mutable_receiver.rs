use redis_memo::redis_cached;

pub struct Service;

impl Service {
    #[redis_cached(ttl = "1m", key = "user:<id>")]
    async fn get_user(self: &mut Self, id: u64) -> u64 {
        id
    }
}

fn main() {}
