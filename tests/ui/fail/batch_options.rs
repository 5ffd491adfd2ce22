use redis_memo::{redis_cached, redis_cached_batch};
use std::collections::HashMap;

#[redis_cached(ttl = "1m", key = "user:<id>")]
async fn get_user(id: u64) -> u64 {
    id
}

#[redis_cached_batch(get_user(*id))]
async fn missing_for(ids: &[u64]) -> Result<HashMap<u64, u64>, String> {
    Ok(ids.iter().map(|id| (*id, *id)).collect())
}

#[redis_cached_batch(get_user(*id) for id in keys)]
async fn not_a_parameter(ids: &[u64]) -> Result<HashMap<u64, u64>, String> {
    Ok(ids.iter().map(|id| (*id, *id)).collect())
}

#[redis_cached_batch(get_user(*id) for id in ids)]
async fn not_a_slice(ids: Vec<u64>) -> Result<HashMap<u64, u64>, String> {
    Ok(ids.iter().map(|id| (*id, *id)).collect())
}

#[redis_cached_batch(get_user(*id) for id in ids, retries = 3)]
async fn unknown_option(ids: &[u64]) -> Result<HashMap<u64, u64>, String> {
    Ok(ids.iter().map(|id| (*id, *id)).collect())
}

#[redis_cached_batch(get_user::<u64>(*id) for id in ids)]
async fn turbofish(ids: &[u64]) -> Result<HashMap<u64, u64>, String> {
    Ok(ids.iter().map(|id| (*id, *id)).collect())
}

#[redis_cached_batch(get_user(*id) for id in ids)]
fn not_async(ids: &[u64]) -> Result<HashMap<u64, u64>, String> {
    Ok(ids.iter().map(|id| (*id, *id)).collect())
}

#[redis_cached_batch(get_user(7) for id in ids)]
async fn element_unused(ids: &[u64]) -> Result<HashMap<u64, u64>, String> {
    Ok(ids.iter().map(|id| (*id, *id)).collect())
}

#[redis_cached_batch(get_user(*id) for id in ids)]
async fn mutable_slice(ids: &mut [u64]) -> Result<HashMap<u64, u64>, String> {
    Ok(ids.iter().map(|id| (*id, *id)).collect())
}

fn main() {}
