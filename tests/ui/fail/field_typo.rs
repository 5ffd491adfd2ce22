use redis_memo::redis_cached;

pub struct SearchParams {
    pub org_id: u32,
    pub query: String,
}

#[redis_cached(ttl = "1m", key = "search:<p.org_idd>/<p.query>")]
async fn search(p: &SearchParams) -> Vec<String> {
    vec![p.query.clone()]
}

fn main() {}
