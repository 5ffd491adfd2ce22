use redis_memo::{redis_cached, redis_cached_batch};
use std::collections::HashMap;

#[redis_cached(ttl = "1m", key = "user:<id>")]
async fn get_user(id: u64) -> u64 {
    id
}

#[redis_cached_batch(get_user(*id) for id in ids)]
async fn wrong_value_type(ids: &[u64]) -> Result<HashMap<u64, String>, String> {
    Ok(ids.iter().map(|id| (*id, id.to_string())).collect())
}

#[redis_cached_batch(get_user(name) for name in names)]
async fn wrong_argument_type(names: &[String]) -> Result<HashMap<String, u64>, String> {
    Ok(names.iter().map(|name| (name.clone(), 1)).collect())
}

#[redis_cached_batch(get_usr(*id) for id in ids)]
async fn unknown_reader(ids: &[u64]) -> Result<HashMap<u64, u64>, String> {
    Ok(ids.iter().map(|id| (*id, *id)).collect())
}

fn main() {}
