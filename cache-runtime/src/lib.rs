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
pub mod envelope;
mod error;
mod flight;
mod global;
mod health;
mod key;
mod lease;
mod memoize;
mod notify;
mod pattern;
mod returns;
mod spec;
mod stats;

pub use crate::backend::MemoryStore;
pub use crate::cache::{Cache, CacheBuilder};
pub use crate::codec::{Bincode, Codec};
pub use crate::error::CacheError;
pub use crate::global::install;
pub use crate::key::{KeyPart, KeyWriter, MAX_RENDERED_LEN};
pub use crate::pattern::pattern_part;
pub use crate::returns::CacheValue;
pub use crate::stats::Stats;

/// What generated code calls. Not a public API: it changes with the macro crate, whose version
/// the facade pins.
#[doc(hidden)]
pub mod __private {
    pub use crate::key::{KeyPart, KeyWriter};
    pub use crate::returns::{CacheValue, Fallible, FallibleOptional, Optional, Plain, ReturnKind};
    pub use crate::spec::FnSpec;
    pub use crate::{Cache, CacheError};
    pub use core::borrow::Borrow;
    pub use core::time::Duration;
    use std::future::Future;

    /// The global cache, if installed.
    pub fn global() -> Option<&'static Cache> {
        crate::global::installed()
    }

    /// The writer of a memoized call's key: the entry's full key when there is a cache.
    pub fn entry_key_writer(cache: Option<&Cache>) -> KeyWriter {
        cache.map_or_else(KeyWriter::new, Cache::entry_key_writer)
    }

    /// Appends validated literal template text to a key.
    pub fn write_literal(writer: &mut KeyWriter, text: &'static str) {
        writer.literal(text);
    }

    /// Runs a memoized call: from the cache when possible, else `compute`. `entry_key` comes
    /// from [`entry_key_writer`]; `instance` names the generic parameters and `Self` of the
    /// call (`type_name::<(Self, T)>()`), or is empty.
    pub async fn memoize<K, R, F>(
        cache: Option<&Cache>,
        spec: &'static FnSpec,
        entry_key: String,
        instance: &'static str,
        compute: F,
    ) -> R
    where
        K: ReturnKind<R>,
        F: Future<Output = R>,
    {
        match cache {
            Some(cache) => {
                cache
                    .memoize::<K, R, F>(spec, &entry_key, instance, compute)
                    .await
            }
            None => compute.await,
        }
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
}
