//! Procedural macros of redis-memo. Use them through the `redis-memo` crate, which
//! re-exports them and the runtime their expansion calls.
//!
//! Each attribute is a pipeline: [`args`] and [`signature`] parse into a typed model,
//! [`check`] matches the key template against the parameters, [`expand`] writes the wrapper
//! and its helpers. Every error carries the span of the user's token; all errors of one
//! attribute are reported together, next to the unchanged function so the rest of the crate
//! still type-checks.

use proc_macro::TokenStream;

mod args;
mod check;
mod duration;
mod errors;
mod expand;
mod signature;
mod template;
mod writer;

/// Memoizes an async function on Redis (cache-aside). See the `redis-memo` crate docs.
#[proc_macro_attribute]
pub fn redis_cached(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::redis_cached(args.into(), item.into()).into()
}

/// Write-through: after the function succeeds, stores its value as the entry a memoized
/// function (the reader) would read for the given arguments. See the `redis-memo` crate docs.
#[proc_macro_attribute]
pub fn redis_cache_put(args: TokenStream, item: TokenStream) -> TokenStream {
    writer::writer(writer::Mode::Put, args.into(), item.into()).into()
}

/// After the function succeeds (with `before`, also before it), invalidates entries of
/// memoized functions, tags, or all entries of functions. See the `redis-memo` crate docs.
#[proc_macro_attribute]
pub fn redis_cache_evict(args: TokenStream, item: TokenStream) -> TokenStream {
    writer::writer(writer::Mode::Evict, args.into(), item.into()).into()
}
