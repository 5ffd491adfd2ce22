use redis_memo::redis_cached;

#[redis_cached(ttl = "30m", key = "a:<id>", sliding, stale = "1m")]
async fn sliding_and_stale(id: u64) -> u64 {
    id
}

#[redis_cached(ttl = "30m", key = "b:<id>", sliding, early, jitter = "10%", local)]
async fn sliding_and_three_more(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[redis_cached(ttl = "30m", key = "c:<id>", sliding, fail_safe = "1h")]
async fn sliding_and_fail_safe(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[redis_cached(ttl = "30m", key = "d:<id>", sliding(max_age = "10m"))]
async fn max_age_within_the_ttl(id: u64) -> u64 {
    id
}

#[redis_cached(ttl = "30m", key = "e:<id>", tags = ["org:<org>"], sliding)]
async fn tags_without_max_age(id: u64, org: u32) -> u64 {
    id + u64::from(org)
}

#[redis_cached(ttl = "30m", key = "f:<id>", sliding(max_age = "2h", idle = "1m"))]
async fn unknown_sliding_option(id: u64) -> u64 {
    id
}

#[redis_cached(ttl = "30m", key = "g:<id>", sliding = "1h")]
async fn sliding_with_a_value(id: u64) -> u64 {
    id
}

#[redis_cached(ttl = "30m", key = "h:<id>", sliding(max_age = "soon"))]
async fn bad_max_age(id: u64) -> u64 {
    id
}

fn main() {}
