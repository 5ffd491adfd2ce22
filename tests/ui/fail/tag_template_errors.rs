use redis_memo::redis_cached;

#[redis_cached(ttl = "1m", key = "user:<id>", tags = ["org:<orgid>", "team:<team>", "a*", "users", "users"])]
async fn get_user(id: u64, org_id: u32, #[cache(skip)] team: u32) -> String {
    format!("{id}{org_id}{team}")
}

#[redis_cached(ttl = "1m", key = "user:<id>", tags = "users")]
async fn get_other(id: u64) -> String {
    id.to_string()
}

fn main() {}
