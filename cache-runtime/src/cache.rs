//! The [`Cache`] handle and its builder.

use crate::CacheError;
use crate::backend::{
    Backend, ClusterLink, Link, MemoryStore, RedisBackend, RedisConnection, Remake,
};
use crate::clock::{Clock, SystemClock};
use crate::flight::Flights;
use crate::health::Health;
use crate::notify::Notices;
use crate::stats::{Counters, Stats};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

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
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) backend: Backend,
    pub(crate) op_timeout: Duration,
    pub(crate) namespace: String,
    pub(crate) health: Health,
    pub(crate) counters: Counters,
    pub(crate) flights: Flights,
    /// Where freshness reads the time.
    pub(crate) clock: Arc<dyn Clock>,
    /// Draws for jitter.
    pub(crate) random: Mutex<fastrand::Rng>,
    /// Keys whose background refresh runs in this process (one at a time per key).
    pub(crate) refreshing: Mutex<HashSet<String>>,
    /// Notified whenever a background refresh ends.
    pub(crate) refresh_ended: tokio::sync::Notify,
    pub(crate) refresh_backoff: crate::refresh::RefreshBackoff,
    /// See [`CacheBuilder::max_background_refreshes`].
    pub(crate) max_background_refreshes: usize,
    /// Background refreshes running (changed under the `refreshing` lock).
    pub(crate) background_refreshes: std::sync::atomic::AtomicUsize,
    /// Warnings about failed background refreshes, once a minute.
    pub(crate) refresh_failures_log: crate::health::LogEvery,
    /// The correction of `clock` to the server's.
    pub(crate) server_offset: crate::clock::ServerOffset,
    /// Leases being given back in the background (after a hard timeout).
    pub(crate) background_releases: std::sync::atomic::AtomicUsize,
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

/// Builds a [`Cache`]. Start with [`Cache::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct CacheBuilder {
    source: Option<Source>,
    namespace: String,
    op_timeout: Duration,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
    clock: Arc<dyn Clock>,
    random_seed: Option<u64>,
    max_background_refreshes: usize,
    tls: Option<redis::TlsCertificates>,
}

enum Source {
    Url(String),
    Connection(ConnectionManager),
    ClusterUrls(Vec<String>),
    ClusterClient(Box<redis::cluster::ClusterClient>),
    Memory(MemoryStore),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Url(url) => f.debug_tuple("Url").field(&redacted(url)).finish(),
            Source::Connection(_) => f.write_str("Connection"),
            Source::ClusterUrls(urls) => f
                .debug_tuple("ClusterUrls")
                .field(&urls.iter().map(|url| redacted(url)).collect::<Vec<_>>())
                .finish(),
            Source::ClusterClient(_) => f.write_str("ClusterClient"),
            Source::Memory(store) => f.debug_tuple("Memory").field(store).finish(),
        }
    }
}

impl CacheBuilder {
    /// Default namespace, the first part of every key.
    pub const DEFAULT_NAMESPACE: &'static str = "memo";
    /// Default bound on each Redis operation.
    pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(250);
    /// Default number of consecutive failures that open the circuit breaker.
    pub const DEFAULT_BREAKER_THRESHOLD: u32 = 3;
    /// Default time the breaker stays open before Redis is tried again.
    pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_millis(500);
    /// The longest `op_timeout` accepted: a bound on one Redis operation, not a way to turn
    /// it off (deadlines are instants, and one this far out is no bound at all).
    pub const MAX_OP_TIMEOUT: Duration = Duration::from_secs(3600);
    /// Default bound on the background refreshes running at once.
    pub const DEFAULT_MAX_BACKGROUND_REFRESHES: usize = 64;

    /// Stores entries in the Redis server at `url` (`redis://host:port/db`). The connection is
    /// made on first use and remade by itself after failures.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.source = Some(Source::Url(url.into()));
        self
    }

    /// Stores entries through an existing connection manager (for TLS, auth or settings the URL
    /// cannot express). Its own timeouts still apply; the cache adds its per-operation one.
    /// Its pushes do not reach the cache, so `lock` waiters wait out their bound instead of
    /// being woken by the fill: prefer [`CacheBuilder::redis_url`] where it can do.
    pub fn redis_connection(mut self, connection: ConnectionManager) -> Self {
        self.source = Some(Source::Connection(connection));
        self
    }

    /// Stores entries in the Redis Cluster that `urls` reach (any of its nodes; the rest are
    /// found from them), with the same semantics as one server: an entry and its lease share a
    /// slot, a tagged read is split per slot and sent in parallel, fill notices use sharded
    /// pub/sub (Redis 7.0 or later), and pattern invalidation scans every primary. Connections
    /// are made on first use; redis-rs follows slot moves and failovers by itself.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), redis_memo_runtime::CacheError> {
    /// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    /// # let _guard = runtime.enter();
    /// let cache = redis_memo_runtime::Cache::builder()
    ///     .redis_cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn redis_cluster<I>(mut self, urls: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.source = Some(Source::ClusterUrls(
            urls.into_iter().map(Into::into).collect(),
        ));
        self
    }

    /// Stores entries in a Redis Cluster through a client you built (for settings the URLs
    /// cannot express). As with [`CacheBuilder::redis_connection`], its pushes do not reach
    /// the cache, so `lock` waiters wait out their bound instead of being woken by the fill.
    pub fn redis_cluster_client(mut self, client: redis::cluster::ClusterClient) -> Self {
        self.source = Some(Source::ClusterClient(Box::new(client)));
        self
    }

    /// The certificates for `rediss://` URLs (single server or cluster): the authority to
    /// trust instead of the system's (`root_cert`, PEM), and a client certificate and key for
    /// servers that ask for one (`client_tls`). Without it, `rediss://` trusts the system's
    /// authorities. TLS is rustls (pure Rust) with the ring provider.
    ///
    /// ```no_run
    /// # fn f(ca_pem: Vec<u8>) -> Result<(), redis_memo_runtime::CacheError> {
    /// let cache = redis_memo_runtime::Cache::builder()
    ///     .redis_url("rediss://cache.internal:6380")
    ///     .tls_certificates(redis_memo_runtime::TlsCertificates {
    ///         client_tls: None,
    ///         root_cert: Some(ca_pem),
    ///     })
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn tls_certificates(mut self, certificates: redis::TlsCertificates) -> Self {
        self.tls = Some(certificates);
        self
    }

    /// Stores entries in process, in `store`.
    pub fn memory(mut self, store: MemoryStore) -> Self {
        self.source = Some(Source::Memory(store));
        self
    }

    /// Prefix of every key: `<namespace>:{<rendered key>}`. Letters, digits and `_ . - : /`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Bound on each Redis operation. A call that hits it runs the function instead (fail-open).
    pub fn op_timeout(mut self, timeout: Duration) -> Self {
        self.op_timeout = timeout;
        self
    }

    /// After `threshold` consecutive failed Redis operations, calls skip Redis for `cooldown`
    /// (they run the function), so an outage costs no timeouts.
    pub fn breaker(mut self, threshold: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cooldown = cooldown;
        self
    }

    /// Reads the time for freshness (ttl, `stale`) from `clock` instead of the system's: in
    /// tests, a [`ManualClock`](crate::ManualClock) moves entries past their ttl without
    /// sleeping. Redis still expires keys by its own clock, after the longest time an entry
    /// can be served.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// The most background refreshes (`stale`, `early`) this cache runs at once, default
    /// [`CacheBuilder::DEFAULT_MAX_BACKGROUND_REFRESHES`]. Past it a stale value is served
    /// without starting a refresh (counted in `stats().refreshes_skipped`); a later call
    /// starts it.
    pub fn max_background_refreshes(mut self, max: usize) -> Self {
        self.max_background_refreshes = max;
        self
    }

    /// Seeds the random draws of jitter, so a test sees the same ones on every run.
    pub fn random_seed(mut self, seed: u64) -> Self {
        self.random_seed = Some(seed);
        self
    }

    /// Builds the cache. With a Redis source this must run inside a Tokio runtime, which drives
    /// the connection; it does not wait for Redis (see [`Cache::ping`]).
    ///
    /// # Errors
    /// [`CacheError::Config`] for a missing source, an invalid namespace, a timeout of zero or
    /// over [`CacheBuilder::MAX_OP_TIMEOUT`], or a call outside a Tokio runtime;
    /// [`CacheError::Redis`] for an unparsable URL.
    pub fn build(self) -> Result<Cache, CacheError> {
        validate_namespace(&self.namespace)?;
        if self.op_timeout.is_zero() || self.op_timeout > Self::MAX_OP_TIMEOUT {
            return Err(CacheError::Config(format!(
                "op_timeout must be greater than zero and at most {:?}, not {:?}",
                Self::MAX_OP_TIMEOUT,
                self.op_timeout
            )));
        }
        let backend = match self.source {
            None => {
                return Err(CacheError::Config(
                    "no backend: call `redis_url`, `redis_cluster`, `redis_connection` or `memory` on the builder"
                        .into(),
                ));
            }
            Some(Source::Memory(store)) => Backend::Memory(store),
            Some(Source::Connection(connection)) => {
                let connection = RedisConnection::new(connection, None, self.op_timeout, None);
                Backend::Redis(RedisBackend::new(Link::Single(connection), self.op_timeout))
            }
            Some(Source::ClusterUrls(urls)) => {
                require_runtime()?;
                Backend::Redis(RedisBackend::new(
                    cluster_link(&urls, self.op_timeout, self.tls)?,
                    self.op_timeout,
                ))
            }
            Some(Source::ClusterClient(client)) => {
                require_runtime()?;
                let connection = client.get_pending_async_connection_with_config(
                    redis::cluster::ClusterConfig::new().set_connection_timeout(self.op_timeout),
                );
                let link = Link::Cluster(Arc::new(ClusterLink {
                    connection,
                    notices: None,
                    subscriptions: tokio::sync::Mutex::new(()),
                }));
                Backend::Redis(RedisBackend::new(link, self.op_timeout))
            }
            Some(Source::Url(url)) => {
                require_runtime()?;
                // RESP3, so `lock` waiters get fill announcements pushed on this same
                // connection (re-subscribed by itself after a reconnection).
                let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())?;
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(redis::ProtocolVersion::RESP3);
                let info = info
                    .set_redis_settings(settings)
                    .set_tcp_settings(dead_peer_detection());
                let client = match self.tls {
                    Some(certificates) => redis::Client::build_with_tls(info, certificates)?,
                    None => redis::Client::open(info)?,
                };
                let notices = Notices::default();
                let pushes = notices.clone();
                let config = ConnectionManagerConfig::new()
                    .set_push_sender(move |push: redis::PushInfo| {
                        pushes.deliver_push(push);
                        Ok::<(), std::convert::Infallible>(())
                    })
                    .set_automatic_resubscription()
                    .set_connection_timeout(Some(self.op_timeout))
                    // The backend bounds every operation (including a wait for a reconnection)
                    // with its own timeout; a second timer per request would only cost time.
                    .set_response_timeout(None)
                    // Reconnection happens in the background on the next use; a request never
                    // waits through a retry schedule (the default blocked ~9.5 s when down).
                    .set_number_of_retries(1)
                    .set_max_delay(self.op_timeout);
                let manager =
                    ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
                // Kept to make a new connection when this one stops serving.
                let remake = Remake { client, config };
                let connection =
                    RedisConnection::new(manager, Some(remake), self.op_timeout, Some(notices));
                Backend::Redis(RedisBackend::new(Link::Single(connection), self.op_timeout))
            }
        };
        let server_offset =
            if matches!(backend, Backend::Redis(_)) && self.clock.follows_server_time() {
                crate::clock::ServerOffset::learned()
            } else {
                crate::clock::ServerOffset::none()
            };
        let cache = Cache {
            inner: Arc::new(Inner {
                backend,
                op_timeout: self.op_timeout,
                namespace: self.namespace,
                health: Health::new(self.breaker_threshold, self.breaker_cooldown),
                counters: Counters::default(),
                flights: Flights::default(),
                clock: self.clock,
                random: Mutex::new(
                    self.random_seed
                        .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
                ),
                refreshing: Mutex::default(),
                refresh_ended: tokio::sync::Notify::new(),
                refresh_backoff: crate::refresh::RefreshBackoff::default(),
                max_background_refreshes: self.max_background_refreshes,
                background_refreshes: std::sync::atomic::AtomicUsize::new(0),
                refresh_failures_log: crate::health::LogEvery::minute(),
                server_offset,
                background_releases: std::sync::atomic::AtomicUsize::new(0),
            }),
        };
        // Learn the server's clock now, in the background (a Redis cache is built inside a
        // runtime): the first calls then judge freshness by it already.
        let _ = cache.now_ms();
        Ok(cache)
    }
}

fn require_runtime() -> Result<(), CacheError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(CacheError::Config(
            "build a Redis cache inside a Tokio runtime: it drives the connection".into(),
        ));
    }
    Ok(())
}

/// A cluster connection from node URLs: RESP3 with our push sender, so `lock` waiters are
/// woken by shard messages (re-subscribed by redis-rs after reconnections and slot moves).
fn cluster_link(
    urls: &[String],
    op_timeout: Duration,
    tls: Option<redis::TlsCertificates>,
) -> Result<Link, CacheError> {
    if urls.is_empty() {
        return Err(CacheError::Config(
            "redis_cluster needs at least one node URL".into(),
        ));
    }
    let mut client = redis::cluster::ClusterClientBuilder::new(urls.iter().map(String::as_str))
        .use_protocol(redis::ProtocolVersion::RESP3)
        .connection_timeout(op_timeout)
        .tcp_settings(dead_peer_detection());
    if let Some(certificates) = tls {
        client = client.certs(certificates);
    }
    let client = client.build()?;
    let notices = Notices::default();
    let pushes = notices.clone();
    let config = redis::cluster::ClusterConfig::new()
        .set_connection_timeout(op_timeout)
        .set_push_sender(move |push: redis::PushInfo| {
            pushes.deliver_push(push);
            Ok::<(), std::convert::Infallible>(())
        });
    Ok(Link::Cluster(Arc::new(ClusterLink {
        connection: client.get_pending_async_connection_with_config(config),
        notices: Some(notices),
        subscriptions: tokio::sync::Mutex::new(()),
    })))
}

/// TCP keepalive probes, and on Linux `TCP_USER_TIMEOUT`: the kernel closes a connection
/// whose peer is gone (no answer to probes, or to data sent), and the connection manager
/// then reconnects. (Nagle's algorithm stays as redis-rs sets it.)
fn dead_peer_detection() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(15))
        .with_interval(Duration::from_secs(5));
    let settings = TcpSettings::default().set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(Duration::from_secs(10));
    settings
}

/// `url` with its password, if any, replaced by `***` (a builder's `Debug` ends up in logs).
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{}", &rest[authority_end..])
        }
        None => url.to_owned(),
    }
}

fn validate_namespace(namespace: &str) -> Result<(), CacheError> {
    let valid = !namespace.is_empty() && namespace.bytes().all(redis_memo_rules::is_namespace_byte);
    if valid {
        Ok(())
    } else {
        Err(CacheError::Config(format!(
            "namespace {namespace:?} must be non-empty and use only letters, digits and `_ . - : /` \
             (braces would break Redis Cluster hash tags, glob characters pattern invalidation)"
        )))
    }
}

impl Cache {
    /// A builder with the default namespace, timeout and breaker, and no backend yet.
    pub fn builder() -> CacheBuilder {
        CacheBuilder {
            source: None,
            namespace: CacheBuilder::DEFAULT_NAMESPACE.to_owned(),
            op_timeout: CacheBuilder::DEFAULT_OP_TIMEOUT,
            breaker_threshold: CacheBuilder::DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: CacheBuilder::DEFAULT_BREAKER_COOLDOWN,
            clock: Arc::new(SystemClock),
            random_seed: None,
            max_background_refreshes: CacheBuilder::DEFAULT_MAX_BACKGROUND_REFRESHES,
            tls: None,
        }
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
        self.inner.backend.invalidate_tags(&keys).await
    }

    /// Removes the entry whose rendered key is `rendered`; true if there was one.
    /// Generated `invalidate_<fn>` helpers call this.
    ///
    /// # Errors
    /// When Redis fails or times out: a lost invalidation must not pass silently.
    pub async fn invalidate(&self, rendered: &str) -> Result<bool, CacheError> {
        // Entry and lease together: a computation that began before this cannot store its
        // (possibly stale) result after it.
        let entry = self.full_key(rendered);
        let lease = crate::lease::lease_key(&entry);
        let removed = self.inner.backend.invalidate(&entry, &lease).await;
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
        let removed = self.inner.backend.invalidate_entries(&refs).await;
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
        let removed = self.inner.backend.invalidate_matching(&pattern).await;
        self.inner.flights.detach_matching(&pattern);
        removed
    }

    /// Checks that the backend answers (a `GET` of a key nobody writes), and learns how far
    /// this cache's clock is from the server's (otherwise learned in the background from the
    /// first call on; see [`Clock::follows_server_time`]).
    ///
    /// # Errors
    /// When Redis fails or does not answer within the operation timeout.
    pub async fn ping(&self) -> Result<(), CacheError> {
        let deadline = tokio::time::Instant::now() + self.inner.op_timeout;
        let key = self.full_key("redis-memo:ping");
        self.inner.backend.get(&key, deadline).await?;
        // Learn the server's clock now rather than on the first call.
        self.sample_server_time().await;
        Ok(())
    }

    /// Waits until the background refreshes (of functions with `stale`) that run in this
    /// process have ended: for a graceful shutdown, and for tests that check what a refresh
    /// stored.
    ///
    /// ```no_run
    /// # async fn f(cache: redis_memo_runtime::Cache) {
    /// cache.refreshes_done().await;
    /// # }
    /// ```
    pub async fn refreshes_done(&self) {
        loop {
            // Registered before looking, so an end in between is not missed.
            let ended = self.inner.refresh_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let releasing = self
                .inner
                .background_releases
                .load(std::sync::atomic::Ordering::SeqCst);
            if self.inner.refreshing().is_empty() && releasing == 0 {
                return;
            }
            ended.await;
        }
    }

    /// The counters since this cache was built.
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_builder_never_prints_the_password() {
        let builder = Cache::builder().redis_url("redis://app:s3cret@10.0.0.1:6379/2");
        let printed = format!("{builder:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains("redis://app:***@10.0.0.1:6379/2"),
            "{printed}"
        );
        assert_eq!(redacted("redis://:only@h/0"), "redis://:***@h/0");
        assert_eq!(redacted("rediss://h:1"), "rediss://h:1");
        assert_eq!(redacted("redis://user@h"), "redis://user@h");
    }

    #[test]
    fn url_connections_detect_dead_peers() {
        let settings = dead_peer_detection();
        assert!(settings.keepalive().is_some(), "TCP keepalive probes");
        #[cfg(target_os = "linux")]
        assert_eq!(settings.user_timeout(), Some(Duration::from_secs(10)));
    }

    #[test]
    fn an_op_timeout_that_bounds_nothing_is_refused() {
        let build = |timeout| {
            Cache::builder()
                .memory(MemoryStore::new())
                .op_timeout(timeout)
                .build()
        };
        assert!(matches!(build(Duration::MAX), Err(CacheError::Config(_))));
        assert!(matches!(build(Duration::ZERO), Err(CacheError::Config(_))));
        assert!(build(CacheBuilder::MAX_OP_TIMEOUT).is_ok());
    }
}
