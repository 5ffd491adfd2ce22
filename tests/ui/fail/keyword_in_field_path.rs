use redis_memo::redis_cached;

pub struct Request {
    pub r#type: u8,
}

#[redis_cached(ttl = "1m", key = "req:<req.type>")]
async fn handle(req: &Request) -> u8 {
    req.r#type
}

fn main() {}
