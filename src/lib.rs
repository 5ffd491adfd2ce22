//! # redis-memo
//!
//! Memoize async functions on Redis with one attribute. Keys are checked by the compiler,
//! concurrent calls for one key are coalesced, and a Redis outage never fails a call.
//!
//! ```no_run
//! use redis_memo::{Cache, redis_cached};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct User { id: u64, name: String }
//!
//! # struct Db;
//! # #[derive(Debug)] struct DbError;
//! # impl Db { async fn load_user(&self, id: u64) -> Result<User, DbError> { Ok(User { id, name: "ada".into() }) } }
//! #[redis_cached(ttl = "15m", key = "user:<id>")]
//! async fn get_user(id: u64, #[cache(skip)] db: &Db) -> Result<User, DbError> {
//!     db.load_user(id).await
//! }
//!
//! # async fn run(db: Db) -> Result<(), Box<dyn std::error::Error>> {
//! redis_memo::install(Cache::builder().redis_url("redis://127.0.0.1:6379").build()?)?;
//! let user = get_user(7, &db).await;          // runs the body, stores the value
//! let again = get_user(7, &db).await;         // served from Redis
//! invalidate_get_user(7).await?;              // generated: same key, checked types
//! assert_eq!(get_user_cache_key(7), "user:7");
//! # Ok(()) }
//! ```
//!
//! ## Options of `#[redis_cached]`
//!
#![doc = include_str!("../cache-macros/docs/redis_cached.md")]
//!
//! Parameters that are neither in the key nor in a tag must be marked `#[cache(skip)]`.
//!
//! ## Write-through and evict
//!
//! ```no_run
//! # use redis_memo::{redis_cache_evict, redis_cache_put, redis_cached};
//! # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct User { id: u64, org_id: u32 }
//! # struct Db;
//! # #[derive(Debug)] struct DbError;
//! # impl Db {
//! #     async fn load(&self, id: u64) -> Result<User, DbError> { Ok(User { id, org_id: 1 }) }
//! #     async fn save(&self, user: User) -> Result<User, DbError> { Ok(user) }
//! #     async fn delete(&self, id: u64) -> Result<(), DbError> { Ok(()) }
//! # }
//! #[redis_cached(ttl = "15m", key = "user:<id>", tags = ["org:<org_id>"])]
//! async fn get_user(id: u64, org_id: u32, #[cache(skip)] db: &Db) -> Result<User, DbError> {
//!     db.load(id).await
//! }
//!
//! /// On success, the returned user is `get_user(user.id, user.org_id)`'s entry.
//! #[redis_cache_put(get_user(user.id, user.org_id))]
//! async fn update_user(user: User, db: &Db) -> Result<User, DbError> {
//!     db.save(user).await
//! }
//!
//! /// On success, the entry is gone.
//! #[redis_cache_evict(get_user(id, org_id))]
//! async fn delete_user(id: u64, org_id: u32, db: &Db) -> Result<(), DbError> {
//!     db.delete(id).await
//! }
//!
//! # async fn run() -> Result<(), redis_memo::CacheError> {
//! invalidate_get_user_by_org_id(7).await?; // every entry tagged org:7, one command
//! # Ok(()) }
//! ```
//!
//! See the README for the full guide.

#![warn(missing_docs)]

pub use redis_memo_macros::{
    redis_cache_evict, redis_cache_put, redis_cached, redis_cached_batch, redis_cached_impl,
};
pub use redis_memo_runtime::{
    Cache, CacheBuilder, CacheError, CacheValue, ClientTlsConfig, Clock, Codec, EntryRef,
    FunctionRef, KeyPart, KeyWriter, MAX_RENDERED_LEN, ManualClock, MemoryStore, Stats,
    SystemClock, TimedOut, TlsCertificates, Warm, WarmReport, codec, envelope, install,
    pattern_part, with_cache,
};

/// What generated code calls. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use redis_memo_runtime::__private::*;
}
