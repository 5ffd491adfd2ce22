//! The cache used by memoized functions without a `cache = ...` option: the one scoped to the
//! current task by [`with_cache`] (tests), else the process-wide one given to [`install`].

use crate::{Cache, CacheError};
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

static GLOBAL: OnceLock<Cache> = OnceLock::new();

tokio::task_local! {
    static SCOPED: Cache;
}

/// Runs `future` with `cache` standing in for the installed cache: memoized functions and
/// helpers without `cache = ...` called inside it (on this task) use `cache`. For tests, so
/// that each can have its own store while they run in parallel:
///
/// ```
/// use redis_memo_runtime::{Cache, MemoryStore, with_cache};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let cache = Cache::builder().memory(MemoryStore::new()).build().unwrap();
/// with_cache(cache, async {
///     // get_user(7).await, invalidate_get_user(7).await, ... use this cache here
/// })
/// .await;
/// # }
/// ```
///
/// The scope is the future's task: a task it spawns does not inherit it (wrap that task's
/// future in `with_cache` too).
pub async fn with_cache<F: Future>(cache: Cache, future: F) -> F::Output {
    SCOPED.scope(cache, future).await
}

/// The cache [`with_cache`] scoped to the current task, if any.
pub fn scoped() -> Option<Cache> {
    SCOPED.try_with(Cache::clone).ok()
}

/// Installs `cache` as the one used by memoized functions and helpers that have no
/// `cache = ...` option. Call it once, at start-up.
///
/// Until it is called, such functions run uncached (with one warning) and their
/// `invalidate_*` helpers return [`CacheError::NotInstalled`].
///
/// # Errors
/// [`CacheError::AlreadyInstalled`] if a cache was installed before.
pub fn install(cache: Cache) -> Result<(), CacheError> {
    GLOBAL.set(cache).map_err(|_| CacheError::AlreadyInstalled)
}

/// The installed cache, if any.
pub fn installed() -> Option<&'static Cache> {
    let cache = GLOBAL.get();
    if cache.is_none() {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Relaxed) {
            tracing::warn!(target: "redis_memo", "redis-memo: a memoized function ran before `redis_memo::install`; it runs uncached"
            );
        }
    }
    cache
}

/// `future`, run under the cache scoped to the current task (if any): for the runtime's own
/// background tasks (a refresh, a body finishing after a timeout), which must call memoized
/// functions as their caller would.
pub(crate) fn keeping_scope<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let scoped = scoped();
    async move {
        match scoped {
            Some(cache) => SCOPED.scope(cache, future).await,
            None => future.await,
        }
    }
}
