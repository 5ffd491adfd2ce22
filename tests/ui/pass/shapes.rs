//! Shapes the attribute accepts: free functions and methods, field paths, references,
//! generics, every return kind, `cache = ...` in its forms, and the generated helpers.

use redis_memo::{Cache, CacheError, redis_cached};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Serialize, Deserialize)]
pub struct User {
    id: u64,
}

#[derive(Debug)]
pub struct DbError;

pub struct Db;

pub struct Request {
    pub user_id: u64,
    pub page: (u32, u32),
}

#[redis_cached(ttl = "15m", key = "user:<id>")]
pub async fn get_user(id: u64, #[cache(skip)] _db: &Db) -> Result<User, DbError> {
    if id == 0 {
        return Err(DbError);
    }
    Ok(User { id })
}

#[redis_cached(ttl = "1h30m", key = "search:<query>:<req.user_id>/<req.page.0>", cache_none, version = 3)]
async fn search(query: &str, req: &Request) -> Option<Vec<String>> {
    Some(vec![format!("{query}{}", req.page.1)])
}

#[redis_cached(ttl = "500ms", key = "count:<name>")]
async fn count(name: String) -> std::io::Result<u64> {
    Ok(name.len() as u64)
}

#[redis_cached(ttl = "1m", key = "generic:<id>")]
async fn generic<T: redis_memo::KeyPart + Send + Sync>(id: T) -> u32 {
    let _ = &id;
    1
}

pub struct Service {
    cache: Arc<Cache>,
    tenant: String,
}

impl Service {
    #[redis_cached(ttl = "1m", key = "t:<self.tenant>:<id>", cache = self.cache)]
    pub async fn load(&self, id: u64) -> String {
        format!("{}{id}", self.tenant)
    }

    #[redis_cached(ttl = "1m", key = "static:<id>")]
    pub async fn associated(id: u64) -> u64 {
        id
    }
}

#[redis_cached(ttl = "1m", key = "injected:<id>", cache = cache)]
async fn injected(#[cache(skip)] cache: &Cache, id: u64) -> u64 {
    id
}

async fn helpers(service: &Service, cache: &Cache) -> Result<(), CacheError> {
    let _: String = get_user_cache_key(1);
    let _: bool = invalidate_get_user(1).await?;
    let _: String = search_cache_key("q", &Request { user_id: 1, page: (1, 2) });
    let _: String = count_cache_key("n".to_owned());
    let _: String = generic_cache_key::<u8>(3);
    let _: String = service.load_cache_key(5);
    let _: bool = service.invalidate_load(5).await?;
    let _: bool = Service::invalidate_associated(5).await?;
    let _: bool = invalidate_injected(cache, 5).await?;
    let _: u64 = injected(cache, 5).await;
    let _ = (get_user(1, &Db).await, search("q", &Request { user_id: 1, page: (1, 2) }).await);
    let _ = (count("n".into()).await, generic(1u8).await, Service::associated(1).await);
    let request = Request { user_id: 1, page: (1, 2) };
    let _: u64 = invalidate_search_many([("q", &request), ("r", &request)]).await?;
    let _: u64 = invalidate_generic_many::<u8>([1, 2, 3]).await?;
    let _: u64 = service.invalidate_load_many(vec![5, 6]).await?;
    let _: u64 = invalidate_injected_many([5], cache).await?;
    Ok(())
}

fn main() {
    let _ = helpers;
}
