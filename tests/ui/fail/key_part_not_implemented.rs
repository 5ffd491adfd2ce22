use redis_memo::redis_cached;

struct Filter {
    active: bool,
}

#[redis_cached(ttl = "1m", key = "users:<filter>")]
async fn list_users(filter: Filter) -> Vec<String> {
    vec![filter.active.to_string()]
}

fn main() {}
