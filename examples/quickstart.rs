//! The quickstart: memoize a slow lookup, watch the second call come from the cache, then
//! invalidate it with the generated helper.
//!
//! Runs on Redis when `REDIS_URL` is set (`REDIS_URL=redis://127.0.0.1:6379 cargo run
//! --example quickstart`), otherwise on the in-memory backend.

use redis_memo::{Cache, MemoryStore, redis_cached};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

#[derive(Debug, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

#[derive(Debug)]
struct DbError;

/// Stands for a database.
struct Db;

impl Db {
    async fn load_user(&self, id: u64) -> Result<User, DbError> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(User {
            id,
            name: format!("user {id}"),
        })
    }
}

#[redis_cached(ttl = "15m", key = "user:<id>")]
async fn get_user(id: u64, #[cache(skip)] db: &Db) -> Result<User, DbError> {
    db.load_user(id).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache = match std::env::var("REDIS_URL") {
        Ok(url) => {
            println!("backend: Redis at {url}");
            let cache = Cache::builder()
                .redis_url(url)
                .namespace("quickstart")
                .build()?;
            cache.ping().await?;
            cache
        }
        Err(_) => {
            println!("backend: in-memory (set REDIS_URL=redis://host:port to use Redis)");
            Cache::builder().memory(MemoryStore::new()).build()?
        }
    };
    redis_memo::install(cache.clone())?;
    let db = Db;

    for attempt in ["first call", "second call"] {
        let started = Instant::now();
        let user = get_user(7, &db).await.map_err(|e| format!("{e:?}"))?;
        println!("{attempt}: {user:?} in {:?}", started.elapsed());
    }
    println!("key: {}", cache.full_key(&get_user_cache_key(7)));
    println!("invalidated: {}", invalidate_get_user(7).await?);
    let started = Instant::now();
    get_user(7, &db).await.map_err(|e| format!("{e:?}"))?;
    println!("after invalidation: {:?}", started.elapsed());
    let stats = cache.stats();
    println!(
        "stats: {} hits, {} misses, {} fills",
        stats.hits, stats.misses, stats.fills
    );
    Ok(())
}
