//! The quickstart: memoize a slow lookup, watch the second call come from the cache, write a
//! change through to the cache, evict by what a write returned, memoize a method of a trait
//! impl, then invalidate by tag with a generated helper. Its test (at the end, run by
//! `cargo test`) gives the functions a cache of its own with `with_cache`.
//!
//! Runs on Redis when `REDIS_URL` is set (`REDIS_URL=redis://127.0.0.1:6379 cargo run
//! --example quickstart`), otherwise on the in-memory backend.

use redis_memo::{
    Cache, MemoryStore, redis_cache_evict, redis_cache_put, redis_cached, redis_cached_impl,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    org_id: u32,
    name: String,
}

#[derive(Debug)]
struct DbError;

/// Stands for a database: slow reads.
#[derive(Default)]
struct Db {
    names: Mutex<HashMap<u64, String>>,
}

impl Db {
    async fn load_user(&self, id: u64, org_id: u32) -> Result<User, DbError> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let name = self.names.lock().unwrap().get(&id).cloned();
        Ok(User {
            id,
            org_id,
            name: name.unwrap_or_else(|| format!("user {id}")),
        })
    }

    /// Deactivates a user known by id: the row says which organization it was in.
    async fn deactivate(&self, id: u64) -> Result<User, DbError> {
        let name = self.names.lock().unwrap().remove(&id);
        Ok(User {
            id,
            org_id: 1,
            name: name.unwrap_or_else(|| format!("user {id}")),
        })
    }

    async fn save_user(&self, user: User) -> Result<User, DbError> {
        self.names
            .lock()
            .unwrap()
            .insert(user.id, user.name.clone());
        Ok(user)
    }
}

/// Cached for 15 minutes under `user:<id>`, tagged with its organization.
#[redis_cached(ttl = "15m", key = "user:<id>", tags = ["org:<org_id>"])]
async fn get_user(id: u64, org_id: u32, #[cache(skip)] db: &Db) -> Result<User, DbError> {
    db.load_user(id, org_id).await
}

/// Write-through: on success, the saved user is `get_user`'s entry.
#[redis_cache_put(get_user(user.id, user.org_id))]
async fn rename_user(user: User, db: &Db) -> Result<User, DbError> {
    db.save_user(user).await
}

/// Evict by what the write returned: only the id is known before it, the org after.
#[redis_cache_evict(get_user(id, user.org_id), result = user)]
async fn deactivate_user(id: u64, db: &Db) -> Result<User, DbError> {
    db.deactivate(id).await
}

/// A repository trait, as services implement them.
trait Directory {
    async fn display_name(&self, id: u64) -> String;
}

struct Service {
    tenant: String,
}

/// In a trait impl, `#[redis_cached_impl]` on the block gives the memoized methods their
/// helpers (`service.invalidate_display_name(..)`) in an inherent impl next to it.
#[redis_cached_impl]
impl Directory for Service {
    #[redis_cached(ttl = "5m", key = "name:<self.tenant>:<id>")]
    async fn display_name(&self, id: u64) -> String {
        tokio::time::sleep(Duration::from_millis(100)).await;
        format!("{} #{id}", self.tenant)
    }
}

async fn timed_get(label: &str, db: &Db) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let user = get_user(7, 1, db).await.map_err(|e| format!("{e:?}"))?;
    println!("{label}: {} in {:?}", user.name, started.elapsed());
    Ok(())
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
    let db = Db::default();

    timed_get("first call", &db).await?;
    timed_get("second call", &db).await?;
    println!("key: {}", cache.full_key(&get_user_cache_key(7)));

    let renamed = User {
        id: 7,
        org_id: 1,
        name: "Ada".into(),
    };
    rename_user(renamed, &db)
        .await
        .map_err(|e| format!("{e:?}"))?;
    timed_get("after rename_user (written through)", &db).await?;

    println!(
        "tag org:1 invalidated: {}",
        invalidate_get_user_by_org_id(1).await?
    );
    timed_get("after the tag invalidation", &db).await?;

    deactivate_user(7, &db)
        .await
        .map_err(|e| format!("{e:?}"))?;
    timed_get("after deactivate_user (evicted by its result)", &db).await?;

    let service = Service {
        tenant: "acme".into(),
    };
    for call in ["first", "second"] {
        let started = Instant::now();
        let name = service.display_name(3).await;
        println!(
            "{call} trait-method call: {name} in {:?}",
            started.elapsed()
        );
    }
    service.invalidate_display_name(3).await?;
    let stats = cache.stats();
    println!(
        "stats: {} hits, {} misses, {} fills",
        stats.hits, stats.misses, stats.fills
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each test gets its own store: `with_cache` scopes a cache to the future it runs, so tests
    /// in parallel never share entries and nothing needs `install`.
    #[tokio::test]
    async fn a_user_is_loaded_once_then_evicted_by_deactivation() {
        let store = MemoryStore::new();
        let cache = Cache::builder().memory(store.clone()).build().unwrap();
        let db = Db::default();
        redis_memo::with_cache(cache.clone(), async {
            get_user(7, 1, &db).await.unwrap();
            get_user(7, 1, &db).await.unwrap();
            assert_eq!(cache.stats().hits, 1);
            deactivate_user(7, &db).await.unwrap();
            assert_eq!(
                store.entry_count().await,
                0,
                "evicted by the write's result"
            );
        })
        .await;
    }
}
