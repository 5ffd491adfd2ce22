//! The [`Cache`] handle and its builder, and what a call does with it: the call path
//! (`memoize`), background refreshes (`refresh`), timeouts (`timeouts`), writers (`writers`)
//! and which cache a call uses (`global`). These are this module's children because they
//! are the cache's own behaviour: they share its internals, which no other module sees.

mod batch;
mod builder;
pub(crate) mod global;
pub(crate) mod memoize;
pub(crate) mod refresh;
pub(crate) mod timeouts;
pub(crate) mod warm;
pub(crate) mod writers;

pub use self::builder::CacheBuilder;

use crate::CacheError;
use crate::backend::Gate;
use crate::clock::Clock;
use crate::flight::Flights;
use crate::stats::{Counters, Stats};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A handle to a cache: where entries live (Redis or an in-process [`MemoryStore`]), their
/// namespace, timeouts and counters. Cheap to clone; clones share everything.
///
/// ```no_run
/// # async fn start() -> Result<(), redis_memo_runtime::CacheError> {
/// use redis_memo_runtime::Cache;
/// use std::time::Duration;
///
/// let cache = Cache::builder()
///     .redis_url("redis://127.0.0.1:6379")
///     .namespace("billing")
///     .op_timeout(Duration::from_millis(100))
///     .build()?;
/// cache.ping().await?; // optional: fail start-up when Redis is not there
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Cache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The store, behind the circuit breaker.
    gate: Gate,
    /// How long functions without `local` keep in-process copies
    /// (see [`CacheBuilder::local_default`]).
    local_everywhere: Option<std::time::Duration>,
    namespace: String,
    counters: Counters,
    flights: Flights,
    /// Where freshness reads the time.
    clock: Arc<dyn Clock>,
    /// Draws for jitter.
    random: Mutex<fastrand::Rng>,
    /// Keys whose background refresh runs in this process (one at a time per key).
    refreshing: Mutex<HashSet<String>>,
    /// Notified whenever a background refresh ends.
    refresh_ended: tokio::sync::Notify,
    refresh_backoff: crate::cache::refresh::RefreshBackoff,
    /// See [`CacheBuilder::max_background_refreshes`].
    max_background_refreshes: usize,
    /// Background refreshes running (changed under the `refreshing` lock).
    background_refreshes: std::sync::atomic::AtomicUsize,
    /// Warnings about failed background refreshes, once a minute.
    refresh_failures_log: crate::health::LogEvery,
    /// The correction of `clock` to the server's.
    server_offset: crate::clock::ServerOffset,
    /// Results being stored and leases being given back in the background (see
    /// [`Cache::refreshes_done`]).
    background_writes: std::sync::atomic::AtomicUsize,
    /// How values are written ([`CacheBuilder::codec`], [`CacheBuilder::compress_above`]).
    format: crate::envelope::Format,
    /// See [`CacheBuilder::max_value_bytes`].
    max_value_bytes: Option<usize>,
}

impl Inner {
    /// A random number in `[0, 1)`.
    pub(crate) fn random_unit(&self) -> f64 {
        self.random
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .f64()
    }

    pub(crate) fn refreshing(&self) -> MutexGuard<'_, HashSet<String>> {
        self.refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Cache {
    /// A builder with the default namespace, timeout and breaker, and no backend yet.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::new()
    }

    /// The Redis key of an entry whose rendered key (what `<fn>_cache_key` returns) is
    /// `rendered`: `<namespace>:{<rendered>}`. The braces are a Redis Cluster hash tag, so an
    /// entry and its satellite keys share a slot.
    pub fn full_key(&self, rendered: &str) -> String {
        let namespace = &self.inner.namespace;
        let mut key = String::with_capacity(namespace.len() + rendered.len() + 3);
        key.push_str(namespace);
        key.push_str(":{");
        key.push_str(rendered);
        key.push('}');
        key
    }

    /// The Redis key of the version of the tag whose rendering is `rendered` (`"org:7"`):
    /// `<namespace>:#tag:{<rendered>}`. Deleting it invalidates every entry recorded under the
    /// tag.
    pub fn full_tag_key(&self, rendered: &str) -> String {
        crate::tags::tag_key(&self.inner.namespace, rendered)
    }

    /// A writer whose result is the full key of an entry of this cache.
    pub(crate) fn entry_key_writer(&self) -> crate::KeyWriter {
        crate::KeyWriter::entry_key(&self.inner.namespace)
    }

    /// A writer whose result is the full version key of a tag of this cache.
    pub(crate) fn tag_key_writer(&self) -> crate::KeyWriter {
        crate::KeyWriter::tag_key(&self.inner.namespace)
    }

    /// Invalidates every entry recorded under the tag `tag`, given as the text a tag template
    /// without placeholders renders to (`tags = ["users"]`), with one Redis command whatever
    /// the number of entries. Returns whether the tag had a version (`false` when no entry
    /// was computed under it since its last invalidation).
    ///
    /// For tags with arguments, use the generated `invalidate_<fn>_by_<params>` helpers: they
    /// render the arguments exactly as the memoized function does.
    ///
    /// ```no_run
    /// # async fn f(cache: redis_memo_runtime::Cache) -> Result<(), redis_memo_runtime::CacheError> {
    /// cache.invalidate_tag("users").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`CacheError::Config`] when `tag` is not literal tag text; a Redis failure or timeout
    /// (a lost invalidation must not pass silently).
    pub async fn invalidate_tag(&self, tag: &str) -> Result<bool, CacheError> {
        crate::tags::validate_literal(tag)?;
        let mut writer = self.tag_key_writer();
        writer.literal(tag);
        let removed = self.invalidate_tag_keys(vec![writer.finish()]).await?;
        Ok(removed > 0)
    }

    /// Deletes tag version keys (full keys); how many existed.
    pub(crate) async fn invalidate_tag_keys(&self, keys: Vec<String>) -> Result<u64, CacheError> {
        let gate = &self.inner.gate;
        gate.settle("invalidate tags", gate.backend().invalidate_tags(&keys))
            .await
    }

    /// Removes the entry whose rendered key is `rendered`; true if there was one.
    /// Generated `invalidate_<fn>` helpers call this.
    ///
    /// # Errors
    /// When Redis fails or times out: a lost invalidation must not pass silently.
    pub async fn invalidate(&self, rendered: &str) -> Result<bool, CacheError> {
        // Entry and lease together: a computation that began before this cannot store its
        // (possibly stale) result after it.
        self.inner
            .gate
            .settle("invalidate", self.remove_entry(rendered))
            .await
    }

    /// [`Cache::invalidate`] without the gate, for callers that pass it themselves.
    pub(crate) async fn remove_entry(&self, rendered: &str) -> Result<bool, CacheError> {
        let entry = self.full_key(rendered);
        let lease = crate::lease::lease_key(&entry);
        let removed = self.inner.gate.backend().invalidate(&entry, &lease).await;
        self.inner.flights.detach(&entry);
        removed
    }

    /// Removes the entries whose rendered keys are `rendered`, each with its lease, in one
    /// round trip (pipelined); how many there were. Generated `invalidate_<fn>_many` helpers
    /// call this.
    ///
    /// # Errors
    /// When Redis fails or times out: a lost invalidation must not pass silently.
    pub async fn invalidate_many<S: AsRef<str>>(
        &self,
        rendered: impl IntoIterator<Item = S>,
    ) -> Result<u64, CacheError> {
        let entries: Vec<String> = rendered
            .into_iter()
            .map(|rendered| self.full_key(rendered.as_ref()))
            .collect();
        let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
        let gate = &self.inner.gate;
        let removed = gate
            .settle("invalidate", gate.backend().invalidate_entries(&refs))
            .await;
        for entry in &entries {
            self.inner.flights.detach(entry);
        }
        removed
    }

    /// Removes every entry whose rendered key matches the Redis glob `pattern` (`"user:*"`),
    /// with two SCAN passes in batches (never `KEYS`, which blocks the server), each entry
    /// deleted together with its lease; returns how many entries it removed. Once it has
    /// returned, no matching entry holds the value of a computation that took its lease
    /// before the call (see the crate README). Argument values in keys are escaped, so they
    /// never contain glob characters; to put a value in a pattern, render it with
    /// [`pattern_part`](crate::pattern_part).
    ///
    /// ```no_run
    /// # async fn f(cache: redis_memo_runtime::Cache) -> Result<(), redis_memo_runtime::CacheError> {
    /// let removed = cache.invalidate_matching("user:*").await?;
    /// let tenant = redis_memo_runtime::pattern_part("acme*"); // matches the literal "acme*"
    /// cache.invalidate_matching(&format!("tenant:{tenant}:*")).await?;
    /// # let _ = removed; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`CacheError::Config`] for an empty pattern or one with braces; a Redis failure part way
    /// (the entries removed so far stay removed).
    pub async fn invalidate_matching(&self, pattern: &str) -> Result<u64, CacheError> {
        crate::pattern::validate(pattern)?;
        let pattern = crate::pattern::KeyPattern::new(&self.inner.namespace, pattern);
        let gate = &self.inner.gate;
        let removed = gate
            .settle(
                "invalidate matching",
                gate.backend().invalidate_matching(&pattern),
            )
            .await;
        self.inner.flights.detach_matching(&pattern);
        removed
    }

    /// Checks that the backend answers (a `GET` of a key nobody writes), and learns how far
    /// this cache's clock is from the server's (otherwise learned in the background from the
    /// first call on; see [`Clock::follows_server_time`]).
    ///
    /// With an in-process tier ([`CacheBuilder::local_capacity`]) it also makes a round trip
    /// on the tier's tracking connection, waiting up to three operation timeouts for it to be
    /// made: once it returns, every change Redis reported to this process before has dropped
    /// its copy.
    ///
    /// # Errors
    /// When Redis fails or does not answer within the operation timeout.
    pub async fn ping(&self) -> Result<(), CacheError> {
        let gate = &self.inner.gate;
        let deadline = tokio::time::Instant::now() + gate.op_timeout();
        let key = self.full_key("redis-memo:ping");
        if let Err(error) = gate
            .settle("ping", gate.backend().get(&key, deadline))
            .await
        {
            return Err(gate.backend().diagnose().await.unwrap_or(error));
        }
        // With an in-process tier, a round trip on its tracking connection too: every
        // invalidation Redis sent before is applied when it returns.
        gate.settle("ping", gate.backend().sync_local(&key)).await?;
        // Learn the server's clock now rather than on the first call.
        self.sample_server_time().await;
        Ok(())
    }

    /// Waits until the work this cache does in the background has ended: refreshes (of
    /// functions with `stale`), results being stored (a call returns once its result is sent
    /// to Redis, without waiting for the answer), and leases being given back. For a graceful
    /// shutdown, and for tests that check what was stored or counted.
    ///
    /// ```no_run
    /// # async fn f(cache: redis_memo_runtime::Cache) {
    /// cache.refreshes_done().await;
    /// # }
    /// ```
    pub async fn refreshes_done(&self) {
        self.background_done(true).await;
    }

    /// Waits until the results this cache sends to Redis without waiting for the answer, and
    /// the leases it gives back after a timeout, have their answers (and are counted in
    /// [`Cache::stats`]); refreshes may still run. A call returns once its result is sent:
    /// another connection (another process) may read the entry a moment later.
    ///
    /// ```no_run
    /// # async fn f(cache: redis_memo_runtime::Cache) {
    /// cache.writes_done().await;
    /// # }
    /// ```
    pub async fn writes_done(&self) {
        self.background_done(false).await;
    }

    /// Runs `write` in a task of its own, counted until it ends (see [`Cache::writes_done`]).
    pub(crate) fn spawn_write(&self, write: impl Future<Output = ()> + Send + 'static) {
        let writes = &self.inner.background_writes;
        writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let cache = self.clone();
        tokio::spawn(async move {
            write.await;
            let writes = &cache.inner.background_writes;
            writes.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            cache.inner.refresh_ended.notify_waiters();
        });
    }

    async fn background_done(&self, with_refreshes: bool) {
        loop {
            // Registered before looking, so an end in between is not missed.
            let ended = self.inner.refresh_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let writing = self
                .inner
                .background_writes
                .load(std::sync::atomic::Ordering::SeqCst);
            if (!with_refreshes || self.inner.refreshing().is_empty()) && writing == 0 {
                return;
            }
            ended.await;
        }
    }

    /// The counters since this cache was built.
    pub fn stats(&self) -> Stats {
        let mut stats = self.inner.counters.snapshot();
        stats.local_bytes = self.inner.gate.backend().local_bytes();
        stats
    }
}
