//! Runtime of [redis-memo](https://docs.rs/redis-memo): the [`Cache`] handle, its Redis and
//! in-memory backends, key rendering ([`KeyPart`]), the value envelope and codec, and the
//! read/fill path that `#[redis_cached]` functions call.
//!
//! Users depend on the `redis-memo` facade, which re-exports this crate's public API.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod backend;
mod cache;
mod clock;
pub mod codec;
mod compression;
pub mod envelope;
mod error;
mod flight;
mod freshness;
mod health;
mod key;
mod lease;
mod notify;
mod pattern;
mod returns;
mod spec;
mod stats;
mod tags;
mod varint;

pub use crate::backend::MemoryStore;
pub use crate::cache::global::{install, with_cache};
pub use crate::cache::timeouts::TimedOut;
pub use crate::cache::warm::{Warm, WarmReport};
pub use crate::cache::writers::{EntryRef, FunctionRef};
pub use crate::cache::{Cache, CacheBuilder};
pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::codec::Codec;
pub use crate::error::CacheError;
pub use crate::key::{KeyPart, KeyWriter, MAX_RENDERED_LEN};
pub use crate::pattern::pattern_part;
pub use crate::returns::CacheValue;
pub use crate::stats::Stats;
pub use redis::{ClientTlsConfig, TlsCertificates};

/// What generated code calls. Not a public API: it changes with the macro crate, whose version
/// the facade pins.
#[doc(hidden)]
pub mod __private {
    pub use crate::cache::refresh::{NoRefresh, RefreshFrom, Refresher, SpawnedBody};
    pub use crate::cache::timeouts::{Handoff, NoTimeoutError, OnTimeout, TimeoutAsError};
    pub use crate::cache::writers::{
        AllOf, EntryRef, FunctionRef, PendingPut, WithoutInvalidateAll,
    };
    pub use crate::key::{KeyPart, KeyWriter};
    pub use crate::returns::{
        CacheValue, CloneFailure, DescribeFailure, FailureSharing, FailureText, Fallible,
        FallibleOptional, Optional, PickCloneFailure, PickDebugText, PickNoText, PickTakeTurns,
        Plain, ReturnKind, ShareFailure, StoredKind, TakeTurns, Written,
    };
    pub use crate::spec::FnSpec;
    pub use crate::{Cache, CacheError};
    pub use core::borrow::Borrow;
    pub use core::time::Duration;
    use std::future::Future;

    /// `all_of = <fn>`: the function's handle, if it has `invalidate_all`.
    pub fn all_of(function: impl AllOf) -> FunctionRef {
        function.function()
    }

    /// The global cache, if installed.
    pub fn global() -> Option<&'static Cache> {
        crate::cache::global::installed()
    }

    /// The cache scoped to the current task by `with_cache`, if any.
    pub fn scoped() -> Option<Cache> {
        crate::cache::global::scoped()
    }

    /// The writer of a memoized call's key: the entry's full key when there is a cache.
    pub fn entry_key_writer(cache: Option<&Cache>) -> KeyWriter {
        cache.map_or_else(KeyWriter::new, Cache::entry_key_writer)
    }

    /// The writer of a tag's full version key when there is a cache.
    pub fn tag_key_writer(cache: Option<&Cache>) -> KeyWriter {
        cache.map_or_else(KeyWriter::new, Cache::tag_key_writer)
    }

    /// Appends validated literal template text to a key.
    pub fn write_literal(writer: &mut KeyWriter, text: &'static str) {
        writer.literal(text);
    }

    /// Runs a memoized call: from the cache when possible, else `compute`. `entry_key` comes
    /// from [`entry_key_writer`], `tags` from [`tag_key_writer`]; `identity` is the type name
    /// of `compute` (an async block of the function), which names the function's owner, and
    /// that of a tuple of references to the parameters keys and tags are rendered from.
    /// `refresh` is [`NoRefresh`], or for `stale` the factory of the body's futures;
    /// `on_timeout` is [`NoTimeoutError`], or [`TimeoutAsError`] for `hard_timeout`;
    /// `on_failure` is what [`FailureSharing`] picks for the return type, `describe` what
    /// [`FailureText`] picks.
    #[allow(clippy::too_many_arguments)]
    pub async fn memoize<K, R, F, B, O, S>(
        cache: Option<&Cache>,
        spec: &'static FnSpec,
        entry_key: String,
        tags: Vec<String>,
        identity: [&'static str; 2],
        compute: F,
        refresh: B,
        on_timeout: O,
        on_failure: S,
        describe: DescribeFailure<R>,
    ) -> R
    where
        K: ReturnKind<R> + 'static,
        F: Future<Output = R>,
        B: Refresher<R>,
        O: OnTimeout<R>,
        S: ShareFailure<R>,
    {
        // Inside a warm, the outermost memoized call is the one it counts.
        let warm = crate::cache::warm::Claim::enter();
        let result = match cache {
            Some(cache) => {
                let outcomes = crate::cache::memoize::Outcomes {
                    on_timeout,
                    on_failure,
                    describe,
                };
                cache
                    .memoize::<K, R, F, B, O, S>(
                        spec, &entry_key, tags, identity, compute, refresh, outcomes,
                    )
                    .await
            }
            None => {
                crate::cache::warm::note_ran();
                compute.await
            }
        };
        if let Some(warm) = warm {
            warm.finish(K::is_failure(&result));
        }
        result
    }

    /// Invalidates tags given as full version keys (from [`tag_key_writer`]).
    pub async fn invalidate_tags(
        cache: Option<&Cache>,
        tag_keys: Vec<String>,
    ) -> Result<u64, CacheError> {
        cache
            .ok_or(CacheError::NotInstalled)?
            .invalidate_tag_keys(tag_keys)
            .await
    }

    /// Invalidates every entry of a function (its implicit tag); true if it had entries
    /// computed since the last time.
    pub async fn invalidate_all(
        cache: Option<&Cache>,
        function: FunctionRef,
    ) -> Result<bool, CacheError> {
        let cache = cache.ok_or(CacheError::NotInstalled)?;
        cache.invalidate_all_of(function).await
    }

    /// Write-through, first step, before the writer's body: takes `entry`'s lease and reads
    /// its tags' tokens.
    pub async fn begin_put<V: CacheValue>(
        cache: Option<&Cache>,
        entry: EntryRef<V>,
    ) -> PendingPut<V> {
        PendingPut::begin(cache, entry).await
    }

    /// Write-through, second step: stores `value` (the writer succeeded) or gives the lease
    /// back (`None`). Never fails the writer's call: a failure is logged and counted, and the
    /// entry is removed instead where Redis still answers, so a lost write cannot leave the
    /// old value in place.
    pub async fn finish_put<V: CacheValue>(
        cache: Option<&Cache>,
        value: Option<&V>,
        pending: PendingPut<V>,
    ) {
        pending.finish(cache, value).await;
    }

    /// Removes entries (rendered keys), tags (renderings) and all entries of functions. Never
    /// fails the writer's call: a failure is logged and counted.
    pub async fn evict(
        cache: Option<&Cache>,
        entries: Vec<String>,
        tags: Vec<String>,
        all_of: Vec<FunctionRef>,
    ) {
        let Some(cache) = cache else {
            return;
        };
        if let Err(error) = cache.evict(&entries, &tags, &all_of).await {
            let what = entries.first().or(tags.first()).map_or("", String::as_str);
            cache.report_lost_write(crate::cache::writers::LostWrite::Evict, what, &error);
        }
    }

    /// Removes the entries of rendered keys (from `KeyWriter::new`), in one round trip.
    pub async fn invalidate_many(
        cache: Option<&Cache>,
        rendered_keys: Vec<String>,
    ) -> Result<u64, CacheError> {
        cache
            .ok_or(CacheError::NotInstalled)?
            .invalidate_many(rendered_keys)
            .await
    }

    /// Removes one entry.
    pub async fn invalidate(
        cache: Option<&Cache>,
        rendered_key: String,
    ) -> Result<bool, CacheError> {
        cache
            .ok_or(CacheError::NotInstalled)?
            .invalidate(&rendered_key)
            .await
    }

    /// Type-checks the cached value type with a readable error.
    pub fn assert_cache_value<T: CacheValue>() {}

    /// `stale`: the copy of a parameter that one run of the body takes.
    pub fn refresh_copy<T: crate::cache::refresh::RefreshArgument>(value: &T) -> T {
        value.clone()
    }
}
