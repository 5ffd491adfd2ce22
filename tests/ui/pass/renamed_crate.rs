//! `crate = "..."` for a renamed dependency: generated code must use the given path only.

mod deps {
    pub use redis_memo as memo;
}

#[deps::memo::redis_cached(ttl = "1m", key = "user:<id>", crate = "crate::deps::memo")]
async fn get_user(id: u64) -> u64 {
    id
}

fn main() {
    let _ = get_user(1);
}
