//! Generated code adds no warning, whatever the shape of the body: one-line bodies, every
//! return kind, methods, freshness options and the writers, under `deny(warnings)`.
#![deny(warnings)]

use redis_memo::{Cache, TimedOut, redis_cache_evict, redis_cache_put, redis_cached};
use std::sync::Arc;

#[derive(Debug)]
pub struct DbError;

impl From<TimedOut> for DbError {
    fn from(_: TimedOut) -> Self {
        DbError
    }
}

#[redis_cached(ttl = "1m", key = "plain:<id>")]
async fn plain(id: u64) -> u64 { id }

#[redis_cached(ttl = "1m", key = "unit:<id>")]
async fn unit(id: u64) -> () { let _ = id; }

#[redis_cached(ttl = "1m", key = "option:<id>", cache_none)]
async fn option(id: u64) -> Option<u64> { Some(id) }

#[redis_cached(ttl = "1m", key = "result:<id>", lock)]
async fn result(id: u64) -> Result<u64, DbError> { Ok(id) }

#[redis_cached(ttl = "1m", key = "both:<id>", tags = ["t:<id>"], invalidate_all)]
async fn both(id: u64) -> Result<Option<u64>, DbError> { Ok(Some(id)) }

#[redis_cached(ttl = "1m", key = "early:<id>", stale = "1m", fail_safe = "1h", soft_timeout = "10ms", hard_timeout = "1s", early, jitter = "5%")]
async fn fresh(id: u64) -> Result<u64, DbError> { Ok(id) }

#[redis_cached(ttl = "1m", key = "timed:<id>", fail_safe = "1h", hard_timeout = "1s")]
async fn timed(id: &u64) -> Result<u64, DbError> { Ok(*id) }

#[redis_cached(ttl = "1m", key = "returns:<id>")]
async fn returns_early(id: u64) -> Result<u64, DbError> { if id == 0 { return Err(DbError); } Ok(id) }

#[redis_cached(ttl = "1m", key = "mutable:<id>")]
async fn mutable(mut id: u64) -> u64 { id += 1; id }

#[derive(Debug, Clone)]
pub struct Shared;

#[redis_cached(ttl = "1m", key = "shared:<id>")]
async fn shared_error(id: u64) -> Result<u64, Shared> { Ok(id) }

// The error type is not known to be `Clone` here: its waiters take turns.
#[redis_cached(ttl = "1m", key = "generic_error:<id>")]
async fn generic_error<E: std::fmt::Debug + Send + 'static>(id: u64) -> Result<u64, E> { Ok(id) }

#[redis_cached(ttl = "1m", key = "alias:<id>")]
async fn alias(id: u64) -> std::io::Result<u64> { Ok(id) }

pub struct Service {
    cache: Arc<Cache>,
    tenant: String,
}

impl Service {
    #[redis_cached(ttl = "1m", key = "t:<self.tenant>:<id>", cache = self.cache)]
    async fn load(&self, id: u64) -> String { format!("{}{id}", self.tenant) }

    #[redis_cache_put(Self::load(self, id), cache = self.cache)]
    async fn store(&self, id: u64) -> String { format!("{}{id}", self.tenant) }

    #[redis_cache_evict(Self::load(self, id), cache = self.cache)]
    async fn forget(&self, id: u64) -> Result<(), DbError> { Ok(()) }
}

#[redis_cache_put(plain(id))]
async fn put_plain(id: u64) -> u64 { id }

#[redis_cache_put(result(id), value = id)]
async fn put_value(id: u64) -> Result<(), DbError> { Ok(()) }

#[redis_cache_evict(plain(id), before)]
async fn evict_plain(id: u64) {}

#[redis_cache_evict(tags = ["t:<id>"], all_of = both)]
async fn evict_tags(id: u64) -> Result<(), DbError> { Ok(()) }

trait Directory {
    fn name(&self, id: u64) -> impl std::future::Future<Output = String> + Send;
}

#[redis_memo::redis_cached_impl]
impl Directory for Service {
    #[redis_cached(ttl = "1m", key = "name:<self.tenant>:<id>", cache = self.cache)]
    async fn name(&self, id: u64) -> String { format!("{}{id}", self.tenant) }
}

fn uses(service: &Service) {
    let _ = (service.name(1), service.invalidate_name(1), service.name_cache_key(1));
    let _ = (plain(1), unit(1), option(1), result(1), both(1), fresh(1), timed(&1));
    let _ = (returns_early(1), mutable(1), service.load(1), service.store(1), service.forget(1));
    let _ = (put_plain(1), put_value(1), evict_plain(1), evict_tags(1));
    let _ = (shared_error(1), generic_error::<DbError>(1), alias(1));
    let _ = (service.invalidate_load_many([1, 2]), invalidate_plain_many(vec![1, 2]));
    let _ = invalidate_both_by_id_many([1, 2]);
}

fn main() {
    let _ = uses;
}
