use redis_memo::redis_cached;

#[redis_cached(key = "a:<id>", stale = "1m")]
async fn stale_without_ttl(id: u64) -> u64 {
    id
}

#[redis_cached(ttl = "1m", key = "b:<id>", jitter = "120%")]
async fn jitter_over_all(id: u64) -> u64 {
    id
}

#[redis_cached(ttl = "1m", key = "c:<id>", jitter = "0%")]
async fn jitter_of_nothing(id: u64) -> u64 {
    id
}

#[redis_cached(ttl = "1m", key = "d:<id>", jitter = "10", stale = "0s")]
async fn malformed(id: u64) -> u64 {
    id
}



#[redis_cached(ttl = "1m", key = "e:<id>", fail_safe = "1h")]
async fn cannot_fail(id: u64) -> u64 {
    id
}

#[redis_cached(ttl = "1h", key = "f:<id>", fail_safe = "30m")]
async fn fail_safe_within_ttl(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[redis_cached(ttl = "1m", key = "g:<id>", early)]
async fn early_borrowed(id: u64, #[cache(skip)] db: &str) -> u64 {
    let _ = db;
    id
}

#[redis_cached(ttl = "1m", key = "h:<id>", early = true)]
async fn early_with_a_value(id: u64) -> u64 {
    id
}


#[redis_cached(ttl = "1m", key = "i:<id>", soft_timeout = "100ms")]
async fn soft_without_fail_safe(id: u64) -> Result<u64, String> {
    Ok(id)
}

#[redis_cached(ttl = "1m", key = "j:<id>", fail_safe = "1h", soft_timeout = "2s", hard_timeout = "1s")]
async fn soft_not_below_hard(id: u64) -> Result<u64, redis_memo::TimedOut> {
    Ok(id)
}

#[redis_cached(ttl = "1m", key = "k:<id>", hard_timeout = "1s")]
async fn hard_cannot_fail(id: u64) -> u64 {
    id
}

#[redis_cached(ttl = "1m", key = "l:<id>", fail_safe = "1h", soft_timeout = "100ms")]
async fn soft_borrowed(id: u64, #[cache(skip)] db: &str) -> Result<u64, redis_memo::TimedOut> {
    let _ = db;
    Ok(id)
}

fn main() {}
