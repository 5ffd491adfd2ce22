//! Stale-while-revalidate: a caller that finds its entry past its ttl but inside the function's
//! `stale` window gets the stale value at once, and one refresh runs in the background.
//!
//! One refresh per key runs at a time in a process (a set of keys being refreshed), and one
//! across processes: the refresh computes only while it holds the entry's lease, so the
//! processes that find the same stale entry agree on a single computation. Its value is
//! stored as a fill is, recording the tag tokens read before it ran, so an invalidation during
//! the refresh makes its result a miss, never a fresh-looking stale value.
//!
//! The refresh runs the function's body again, after the call that triggered it has returned:
//! the generated code hands over a factory of `'static` futures, built from owned copies of
//! the arguments (which is why `stale` asks for `Clone + Send + 'static` parameters).

use crate::Cache;
use crate::cache::memoize::{EntryAt, LeaseOutcome};
use crate::cache::timeouts::Handoff;
use crate::envelope::EntryTimes;
use crate::returns::{DescribeFailure, ReturnKind};
use crate::spec::FnSpec;
use crate::stats::Event;
use crate::tags::{TagKeys, Versions};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

/// What a memoized call can refresh in the background with. Generated code passes
/// [`NoRefresh`] for functions without `stale`, and a reference to the factory of the body's
/// futures for those with it.
#[diagnostic::on_unimplemented(
    message = "with `stale`, the function's body runs again in the background, after the call returned",
    label = "its future must be `Send + 'static`",
    note = "take every parameter by value as a `Clone + Send + 'static` type (an `Arc<Db>` rather than a `&Db`), and hold nothing that is not `Send` across an `.await`"
)]
pub trait Refresher<R> {
    /// Starts the background refresh of the entry `from` describes, unless this function
    /// has none (or one runs already, or the last one failed too recently).
    fn start<K: ReturnKind<R> + 'static>(
        &self,
        cache: &Cache,
        from: RefreshFrom<'_>,
        describe: DescribeFailure<R>,
    );

    /// Runs the body as a task of its own, which can outlive the call (`soft_timeout`,
    /// `hard_timeout`); `None` for functions that have no factory.
    fn spawn_body<K: ReturnKind<R> + 'static>(
        &self,
        cache: &Cache,
        spec: &'static FnSpec,
    ) -> Option<SpawnedBody<R>>;
}

/// A body running as a task of its own, and what it shares with its caller.
#[doc(hidden)]
pub struct SpawnedBody<R> {
    pub(crate) handle: tokio::task::JoinHandle<Option<R>>,
    pub(crate) handoff: Arc<Handoff>,
}

/// The entry to refresh, as the call that found it stale (or due early) knows it.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct RefreshFrom<'a> {
    pub(crate) entry: EntryAt<'a>,
    pub(crate) versions: &'a Versions,
    pub(crate) times: EntryTimes,
}

/// What a function with `stale` takes: its background refresh runs on copies of the arguments
/// after the call returned.
#[diagnostic::on_unimplemented(
    message = "with `stale`, the parameter type `{Self}` must be `Clone + Send + 'static`",
    label = "the background refresh runs on a copy of this argument, after the call returned",
    note = "take an owned, shareable handle: `Arc<Db>` instead of `&Db`, `String` instead of `&str`"
)]
pub trait RefreshArgument: Clone + Send + 'static {}

impl<T: Clone + Send + 'static> RefreshArgument for T {}

/// Functions without `stale`.
#[derive(Debug, Clone, Copy)]
pub struct NoRefresh;

impl<R> Refresher<R> for NoRefresh {
    fn start<K: ReturnKind<R> + 'static>(
        &self,
        _: &Cache,
        _: RefreshFrom<'_>,
        _: DescribeFailure<R>,
    ) {
    }

    fn spawn_body<K: ReturnKind<R> + 'static>(
        &self,
        _: &Cache,
        _: &'static FnSpec,
    ) -> Option<SpawnedBody<R>> {
        None
    }
}

impl<F, Fut, R> Refresher<R> for &F
where
    F: Fn() -> Fut,
    Fut: Future<Output = R> + Send + 'static,
    R: Send + 'static,
{
    fn start<K: ReturnKind<R> + 'static>(
        &self,
        cache: &Cache,
        from: RefreshFrom<'_>,
        describe: DescribeFailure<R>,
    ) {
        // The factory (which copies the arguments) runs only if a refresh starts.
        cache.spawn_refresh::<K, R, Fut>(from, *self, describe);
    }

    fn spawn_body<K: ReturnKind<R> + 'static>(
        &self,
        cache: &Cache,
        spec: &'static FnSpec,
    ) -> Option<SpawnedBody<R>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let handoff = Arc::new(Handoff::default());
        let (body, cache, shared) = (self(), cache.clone(), Arc::clone(&handoff));
        let handle = runtime.spawn(crate::cache::global::keeping_scope(async move {
            tokio::pin!(body);
            let result = tokio::select! {
                result = &mut body => result,
                // The caller gave up: bounded by the lease from now on, past which its result
                // could not be stored anyway (and a hung body must not keep the key marked).
                () = shared.gave_up.notified() => {
                    match tokio::time::timeout(spec.lease, &mut body).await {
                        Ok(result) => result,
                        Err(_) => {
                            tracing::warn!(target: "redis_memo", function = spec.name,
                                lease = ?spec.lease,
                                "redis-memo: a body finishing in the background outlasted its lease and was abandoned"
                            );
                            // Its lease goes back and the key is unmarked.
                            drop(shared.finish());
                            return None;
                        }
                    }
                }
            };
            match shared.finish() {
                Some(late) => {
                    cache.fill_late::<K, R>(*late, result).await;
                    None
                }
                None => Some(result),
            }
        }));
        Some(SpawnedBody { handle, handoff })
    }
}

/// The entry a background refresh recomputes, owned, so the refresh outlives the call.
#[doc(hidden)]
#[derive(Debug)]
pub struct RefreshJob {
    pub(crate) spec: &'static FnSpec,
    pub(crate) key: String,
    pub(crate) function_tag: Option<String>,
    pub(crate) user_tags: Vec<String>,
    pub(crate) fingerprint: u64,
    /// The tag tokens the stale read saw.
    pub(crate) versions: Versions,
    /// When the entry it replaces was written: a newer one means another caller refreshed.
    pub(crate) replacing_written_at_ms: u64,
}

impl RefreshJob {
    /// The entry of a body whose caller stopped waiting.
    pub(crate) fn owned(entry: &EntryAt<'_>) -> Self {
        Self::of(entry, Versions::new(), 0)
    }

    fn new(from: RefreshFrom<'_>) -> Self {
        Self::of(&from.entry, from.versions.clone(), from.times.written_at_ms)
    }

    fn of(entry: &EntryAt<'_>, versions: Versions, replacing_written_at_ms: u64) -> Self {
        RefreshJob {
            spec: entry.spec,
            key: entry.key.to_owned(),
            function_tag: entry.tag_keys.function.map(str::to_owned),
            user_tags: entry.tag_keys.user.to_vec(),
            fingerprint: entry.fingerprint,
            versions,
            replacing_written_at_ms,
        }
    }

    pub(crate) fn entry(&self) -> EntryAt<'_> {
        EntryAt {
            spec: self.spec,
            key: &self.key,
            tag_keys: TagKeys {
                function: self.function_tag.as_deref(),
                user: &self.user_tags,
            },
            fingerprint: self.fingerprint,
        }
    }
}

/// Keys whose last background refresh failed, and when the next may start: a source that is
/// down is asked again after 1 s, 2 s, 4 s … up to a minute, not on every stale read, while
/// the stale value goes on being served.
#[derive(Debug, Default)]
pub(crate) struct RefreshBackoff {
    /// Key -> (next refresh allowed at, by the cache's clock; consecutive failures).
    failing: Mutex<HashMap<String, (u64, u32)>>,
}

impl RefreshBackoff {
    const FIRST_MS: u64 = 1_000;
    const MAX_MS: u64 = 60_000;

    fn failing(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, u32)>> {
        self.failing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn allows(&self, key: &str, now_ms: u64) -> bool {
        let failing = self.failing();
        failing.is_empty() || failing.get(key).is_none_or(|&(next, _)| now_ms >= next)
    }

    fn failed(&self, key: &str, now_ms: u64) {
        const CAP: usize = 4096;
        let mut failing = self.failing();
        if failing.len() >= CAP {
            // Keys whose wait is over would be allowed anyway; forget them, then (if that was
            // not enough) any half: a forgotten key is merely retried sooner.
            failing.retain(|_, (next, _)| *next > now_ms);
            if failing.len() >= CAP {
                let forget: Vec<String> = failing.keys().take(CAP / 2).cloned().collect();
                for key in forget {
                    failing.remove(&key);
                }
            }
        }
        let failures = failing.get(key).map_or(0, |&(_, failures)| failures) + 1;
        let wait = Self::FIRST_MS
            .saturating_mul(1 << (failures - 1).min(16))
            .min(Self::MAX_MS);
        failing.insert(key.to_owned(), (now_ms.saturating_add(wait), failures));
    }

    fn succeeded(&self, key: &str) {
        let mut failing = self.failing();
        if !failing.is_empty() {
            failing.remove(key);
        }
    }
}

/// Removes a key from the set of keys being refreshed when its refresh ends, however it ends;
/// one that did not finish (its body panicked) counts as failed, for the back-off.
pub(crate) struct Refreshing {
    cache: Cache,
    key: String,
    finished: bool,
    /// A background refresh, counted against `max_background_refreshes` (a body finishing
    /// after its caller's timeout is not).
    bounded: bool,
    /// The refreshed function, for counting a refresh that panicked.
    spec: Option<&'static FnSpec>,
}

impl Cache {
    /// Marks `key` as being refreshed in this process (by a background refresh, or a body
    /// whose caller stopped waiting at its `soft_timeout`); `None` if something refreshes it
    /// already.
    pub(crate) fn mark_refreshing(&self, key: &str) -> Option<Refreshing> {
        self.inner
            .refreshing()
            .insert(key.to_owned())
            .then(|| Refreshing {
                cache: self.clone(),
                key: key.to_owned(),
                finished: true,
                bounded: false,
                spec: None,
            })
    }

    /// [`Cache::mark_refreshing`] for a background refresh, unless `max` of them run already
    /// (checked and counted under the set's lock, so concurrent callers cannot overshoot).
    fn mark_refreshing_within(&self, key: &str, max: usize) -> Result<Option<Refreshing>, Skipped> {
        let mut refreshing = self.inner.refreshing();
        if refreshing.contains(key) {
            return Ok(None);
        }
        let running = &self.inner.background_refreshes;
        if running.load(std::sync::atomic::Ordering::SeqCst) >= max {
            return Err(Skipped);
        }
        running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        refreshing.insert(key.to_owned());
        Ok(Some(Refreshing {
            cache: self.clone(),
            key: key.to_owned(),
            finished: true,
            bounded: true,
            spec: None,
        }))
    }

    pub(crate) fn is_refreshing(&self, key: &str) -> bool {
        let refreshing = self.inner.refreshing();
        !refreshing.is_empty() && refreshing.contains(key)
    }
}

/// A refresh not started: the bound on background refreshes was reached.
struct Skipped;

impl Drop for Refreshing {
    fn drop(&mut self) {
        if !self.finished {
            let now = self.cache.now_ms();
            self.cache.inner.refresh_backoff.failed(&self.key, now);
            if let Some(spec) = self.spec {
                self.cache
                    .report_refresh_failure(spec, "it panicked or was cancelled");
            }
        }
        {
            let mut refreshing = self.cache.inner.refreshing();
            refreshing.remove(&self.key);
            if self.bounded {
                let running = &self.cache.inner.background_refreshes;
                running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        self.cache.inner.refresh_ended.notify_waiters();
    }
}

impl Cache {
    /// Runs `compute` in the background to refresh `job`'s entry, unless a refresh of it
    /// already runs in this process.
    fn spawn_refresh<K, R, Fut>(
        &self,
        from: RefreshFrom<'_>,
        make: impl FnOnce() -> Fut,
        describe: DescribeFailure<R>,
    ) where
        K: ReturnKind<R> + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = from.entry.key;
        if !self.inner.refresh_backoff.allows(key, self.now_ms()) {
            return;
        }
        // A sweep over many stale keys must not start as many bodies at once against the
        // source: past the bound the stale value is served and a later call refreshes.
        let mut guard = match self.mark_refreshing_within(key, self.inner.max_background_refreshes)
        {
            Ok(Some(guard)) => guard,
            // Refreshing already.
            Ok(None) => return,
            Err(Skipped) => {
                self.record(Event::RefreshSkipped, from.entry.spec);
                return;
            }
        };
        // Until it finishes, it counts as failed (a panic in the body).
        guard.finished = false;
        guard.spec = Some(from.entry.spec);
        // Boxed at once: the body's future holds whatever its callees' do, and moving it
        // through the wrappers below would copy it on the caller's stack each time.
        let (job, compute) = (RefreshJob::new(from), Box::pin(make()));
        let refresh = Box::pin(async move {
            guard
                .cache
                .refresh::<K, R, _>(&job, compute, describe)
                .await;
            guard.finished = true;
            drop(guard);
        });
        // The body calls what the call's body would, under the same scoped cache.
        runtime.spawn(crate::cache::global::keeping_scope(refresh));
    }

    /// Counts a failed background refresh, logs it at debug level, and as a warning (with the
    /// count since the last one) at most once a minute.
    pub(crate) fn report_refresh_failure(&self, spec: &'static FnSpec, error: &str) {
        self.record(Event::RefreshFailure, spec);
        tracing::debug!(target: "redis_memo", function = spec.name,
            error,
            "redis-memo: a background refresh failed"
        );
        if let Some(failures) = self.inner.refresh_failures_log.tick(self.now_ms()) {
            tracing::warn!(target: "redis_memo", function = spec.name,
                error,
                failures,
                "redis-memo: background refreshes fail; stale values are served until one succeeds"
            );
        }
    }

    /// Recomputes `job`'s entry under its lease; nothing if another caller holds the lease
    /// (it refreshes) or filled the entry since (the acquire script returns it fresh).
    async fn refresh<K, R, Fut>(&self, job: &RefreshJob, compute: Fut, describe: DescribeFailure<R>)
    where
        K: ReturnKind<R>,
        Fut: Future<Output = R>,
    {
        let entry = job.entry();
        let spec = job.spec;
        let mut versions = job.versions.clone();
        let deadline = tokio::time::Instant::now() + self.inner.gate.op_timeout();
        let Some(tokens) = self.tokens_for(&entry, &mut versions, deadline).await else {
            return;
        };
        let lease = match self
            .take_lease::<K::Stored>(
                &entry,
                &versions,
                deadline,
                Some(job.replacing_written_at_ms),
            )
            .await
        {
            LeaseOutcome::Held(lease) => lease,
            LeaseOutcome::Filled(..) | LeaseOutcome::Busy { .. } | LeaseOutcome::Failed => return,
        };
        self.record(Event::Refresh, spec);
        let (started, started_ms) = (tokio::time::Instant::now(), self.now_ms());
        // Bounded by the lease: past it the fill would be rejected anyway, and a body that
        // hangs must not keep this key from ever being refreshed again.
        let Ok(result) = tokio::time::timeout(spec.lease, compute).await else {
            tracing::warn!(target: "redis_memo", function = spec.name,
                lease = ?spec.lease,
                "redis-memo: a background refresh outlasted its lease and was abandoned"
            );
            self.inner.refresh_backoff.failed(&job.key, self.now_ms());
            self.report_refresh_failure(spec, "it outlasted its lease");
            self.release(spec, lease, false).await;
            return;
        };
        let computed_ms = self.ms_since(started_ms);
        // A failed refresh stores nothing: the stale value stays, and is served on.
        let failed = K::is_failure(&result);
        if failed {
            self.inner.refresh_backoff.failed(&job.key, self.now_ms());
            let error = describe(&result);
            self.report_refresh_failure(spec, error.as_deref().unwrap_or("an error"));
        } else {
            self.inner.refresh_backoff.succeeded(&job.key);
        }
        let encoded = self.encode_storable::<K, R>(&entry, &result, &tokens, computed_ms);
        // A success that is not stored (`None` without `cache_none`) means the old value is
        // gone from the source: remove it rather than serve it and refresh again and again.
        let clear_entry = encoded.is_none() && !failed;
        self.store(&entry, lease, encoded, clear_entry, started.elapsed())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_refreshes_back_off_exponentially_up_to_a_minute() {
        let backoff = RefreshBackoff::default();
        assert!(backoff.allows("k", 0));
        backoff.failed("k", 0);
        assert!(!backoff.allows("k", 999) && backoff.allows("k", 1_000));
        backoff.failed("k", 1_000);
        assert!(!backoff.allows("k", 2_999) && backoff.allows("k", 3_000));
        assert!(backoff.allows("other", 1), "per key");
        for _ in 0..20 {
            backoff.failed("k", 3_000);
        }
        assert!(!backoff.allows("k", 62_999) && backoff.allows("k", 63_000));
        backoff.succeeded("k");
        assert!(backoff.allows("k", 3_000));
    }
}
