//! Helpers keep only the generic parameters their own arguments use, and a `cache`
//! expression may read a parameter that the body then moves.

use redis_memo::{Cache, CacheError, redis_cached};

pub trait Db: Sync {
    fn load(&self, id: u64) -> String;
}

#[redis_cached(ttl = "1m", key = "user:<id>")]
async fn get_user<D: Db>(id: u64, #[cache(skip)] db: &D) -> String {
    db.load(id)
}

pub struct Ctx {
    pub cache: Cache,
    pub name: String,
}

#[redis_cached(ttl = "1m", key = "ctx:<id>", cache = ctx.cache)]
async fn with_owned_context(id: u64, #[cache(skip)] ctx: Ctx) -> String {
    let Ctx { name, .. } = ctx; // moves the parameter the cache expression read
    format!("{name}{id}")
}

async fn helpers(ctx: Ctx) -> Result<(), CacheError> {
    let _: bool = invalidate_get_user(7).await?;
    let _: String = get_user_cache_key(7);
    let _: bool = invalidate_with_owned_context(7, ctx).await?;
    Ok(())
}

fn main() {
    let _ = helpers;
}
