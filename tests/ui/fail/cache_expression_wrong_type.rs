use redis_memo::redis_cached;

struct Settings {
    redis_url: String,
}

static SETTINGS: Settings = Settings { redis_url: String::new() };

#[redis_cached(ttl = "1m", key = "user:<id>", cache = SETTINGS.redis_url)]
async fn get_user(id: u64) -> String {
    id.to_string()
}

fn main() {}
