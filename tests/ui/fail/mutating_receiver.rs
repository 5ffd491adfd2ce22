use redis_memo::redis_cached;

struct Service {
    calls: u64,
}

impl Service {
    #[redis_cached(ttl = "1m", key = "user:<id>")]
    async fn get_user(&mut self, id: u64) -> String {
        self.calls += 1;
        id.to_string()
    }
}

fn main() {}
