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
mod batch;
mod check;
mod duration;
mod errors;
mod expand;
mod impl_block;
mod signature;
mod template;
mod writer;

/// Memoizes an async function on Redis (cache-aside): `#[redis_cached(ttl = "15m", key =
/// "user:<id>")]` on an `async fn`, free or in an `impl` block. Every parameter is in the key,
/// in a tag, or marked `#[cache(skip)]`. Generates `<fn>_cache_key`, `invalidate_<fn>`,
/// `invalidate_<fn>_many` and, per set of tag parameters, `invalidate_<fn>_by_<params>`.
///
#[doc = include_str!("../docs/redis_cached.md")]
///
/// Unknown and duplicate options are refused with the list of valid ones. The `redis-memo`
/// crate docs and README say more about each.
#[proc_macro_attribute]
pub fn redis_cached(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::redis_cached(args.into(), item.into()).into()
}

/// Write-through: after the function succeeds, stores its value as the entry a memoized
/// function (the reader) would read for the given arguments:
/// `#[redis_cache_put(get_user(user.id, user.org_id))]`.
///
#[doc = include_str!("../docs/redis_cache_put.md")]
#[proc_macro_attribute]
pub fn redis_cache_put(args: TokenStream, item: TokenStream) -> TokenStream {
    writer::writer(writer::Mode::Put, args.into(), item.into()).into()
}

/// After the function succeeds (with `before`, also before it), invalidates entries of
/// memoized functions, tags, or all entries of functions:
/// `#[redis_cache_evict(get_user(id, org_id), tags = ["org:<org_id>"])]`.
///
#[doc = include_str!("../docs/redis_cache_evict.md")]
#[proc_macro_attribute]
pub fn redis_cache_evict(args: TokenStream, item: TokenStream) -> TokenStream {
    writer::writer(writer::Mode::Evict, args.into(), item.into()).into()
}

/// A batch loader sharing its entries with a memoized function (the reader):
/// `#[redis_cached_batch(get_user(*id) for id in ids)]` on an `async fn` with a parameter
/// `ids: &[T]` that returns `Result<HashMap<T, V>, E>`, `V` being what the reader stores.
/// Every entry is read in one round trip; the body runs once, with `ids` holding only the
/// elements that missed; its values are stored for the reader. Options: `cache = <expr>`,
/// `crate = "path"`.
///
/// ```ignore
/// #[redis_cached(ttl = "15m", key = "user:<id>")]
/// async fn get_user(id: u64, #[cache(skip)] db: &Db) -> Result<User, DbError> { db.load(id).await }
///
/// #[redis_cached_batch(get_user(*id) for id in ids)]
/// async fn get_users(ids: &[u64], db: &Db) -> Result<HashMap<u64, User>, DbError> {
///     db.load_many(ids).await // called with the misses only
/// }
/// ```
#[proc_macro_attribute]
pub fn redis_cached_batch(args: TokenStream, item: TokenStream) -> TokenStream {
    batch::redis_cached_batch(args.into(), item.into()).into()
}

/// On an `impl` block whose methods use `#[redis_cached]`; required on a trait impl. The
/// memoized methods stay in the block, and their generated helpers (`invalidate_<fn>`,
/// `<fn>_cache_key`, `invalidate_<fn>_many`, ..) go into an inherent `impl` of the same type
/// (with the same generics) next to it: a trait impl can hold only the trait's items. Helpers
/// of a trait's methods are `pub`.
///
/// ```ignore
/// #[redis_cached_impl]
/// impl Directory for Service {
///     #[redis_cached(ttl = "5m", key = "name:<self.tenant>:<id>")]
///     async fn display_name(&self, id: u64) -> String { .. }
/// }
/// // service.invalidate_display_name(7).await?;
/// ```
#[proc_macro_attribute]
pub fn redis_cached_impl(args: TokenStream, item: TokenStream) -> TokenStream {
    impl_block::redis_cached_impl(args.into(), item.into()).into()
}
