//! `lock` in its forms.

use redis_memo::redis_cached;

#[redis_cached(ttl = "1m", key = "a:<id>", lock)]
async fn plain_lock(id: u64) -> u64 {
    id
}

#[redis_cached(ttl = "1m", key = "b:<id>", lock(wait = "500ms"))]
async fn with_wait(id: u64) -> u64 {
    id
}

#[redis_cached(ttl = "10m", key = "c:<id>", lock(lease = "1m", wait = "5s"))]
async fn with_both(id: u64) -> u64 {
    id
}

#[redis_cached(ttl = "200ms", key = "d:<id>", lock)]
async fn short_ttl(id: u64) -> u64 {
    id
}

fn main() {
    let _ = (plain_lock(1), with_wait(1), with_both(1), short_ttl(1));
}
