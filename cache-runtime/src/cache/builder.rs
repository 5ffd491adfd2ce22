//! Building a [`Cache`]: where its entries live (one Redis server, a cluster, a connection
//! you made, or memory) and its settings.

use super::{Cache, Inner};
use crate::CacheError;
use crate::backend::{
    Backend, ClusterLink, Link, MemoryStore, RedisBackend, RedisConnection, Remake,
};
use crate::backend::{ClusterTracking, Copies, Gate, Tier, Tracking};
use crate::clock::{Clock, SystemClock};
use crate::codec::Codec;
use crate::envelope::Format;
use crate::flight::Flights;
use crate::health::Health;
use crate::notify::Notices;
use crate::stats::Counters;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// `local_capacity`: the in-process tier's bound in bytes, if it has one.
    local_capacity: Option<u64>,
    /// `local_default`: how long functions without `local` keep in-process copies.
    local_default: Option<Duration>,
    /// `codec` and `compress_above`.
    format: Format,
    max_value_bytes: Option<usize>,
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
    pub(super) fn new() -> Self {
        CacheBuilder {
            source: None,
            namespace: Self::DEFAULT_NAMESPACE.to_owned(),
            op_timeout: Self::DEFAULT_OP_TIMEOUT,
            breaker_threshold: Self::DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: Self::DEFAULT_BREAKER_COOLDOWN,
            clock: Arc::new(SystemClock),
            random_seed: None,
            max_background_refreshes: Self::DEFAULT_MAX_BACKGROUND_REFRESHES,
            tls: None,
            local_capacity: None,
            local_default: None,
            format: Format::default(),
            max_value_bytes: None,
        }
    }

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

    /// Gives the cache an in-process tier (L1) of at most `bytes` (keys, stored bytes and
    /// bookkeeping): functions with `local` answer from this process's copy of an entry
    /// without a round trip, and Redis keeps the copies coherent (client tracking: a change
    /// to a key this process read drops its copy). Needs a cache built with
    /// [`CacheBuilder::redis_url`] (its own tracking connection is made from the URL) or
    /// [`CacheBuilder::redis_cluster`] (one per primary, made from the first URL with each
    /// node's address); on a [`MemoryStore`] there is nothing to add, and this does nothing.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), redis_memo_runtime::CacheError> {
    /// let cache = redis_memo_runtime::Cache::builder()
    ///     .redis_url("redis://127.0.0.1:6379")
    ///     .local_capacity(64 * 1024 * 1024)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn local_capacity(mut self, bytes: u64) -> Self {
        self.local_capacity = Some(bytes);
        self
    }

    /// Lets every function of this cache keep in-process copies, for at most `max_age`, as if
    /// each had `local = ".."` (a function's own `local` wins). Needs
    /// [`CacheBuilder::local_capacity`].
    pub fn local_default(mut self, max_age: Duration) -> Self {
        self.local_default = Some(max_age);
        self
    }

    /// The codec values are written with, default [`Codec::Bincode`]. Entries record their
    /// codec and are read with it, so changing it turns no existing entry into a miss.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.format.codec = codec;
        self
    }

    /// Compresses (LZ4) every value whose codec bytes are longer than `bytes`, unless that
    /// would not make it smaller. Entries record whether they are compressed, so compressed
    /// and plain entries coexist; a version of redis-memo from before compression reads a
    /// compressed entry as a miss. Off by default; 1 KiB is a good start: below it a value
    /// rarely shrinks enough to pay for the flag.
    ///
    /// ```
    /// use redis_memo_runtime::{Cache, MemoryStore};
    ///
    /// let cache = Cache::builder()
    ///     .memory(MemoryStore::new())
    ///     .compress_above(1024)
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.format.compress_above = Some(bytes);
        self
    }

    /// The largest entry stored, in bytes as stored (after compression, envelope included).
    /// A larger value is still returned to its caller and to the calls waiting for it in this
    /// process, but not stored: the entry it would have replaced is removed, the event is
    /// counted (`stats().oversized`, `redis_memo_oversized_total`) and the first one of each
    /// function logged at warn level. A `#[redis_cache_put]` of such a value removes the entry.
    /// No bound by default (Redis's own is 512 MiB).
    pub fn max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = Some(bytes);
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
        self.check_local()?;
        let local_capacity = self.local_capacity;
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
                let link = cluster_link(&urls, self.op_timeout, self.tls.clone())?;
                let tier = match (local_capacity, &link) {
                    (Some(bytes), Link::Cluster(cluster)) => {
                        // Each primary's tracking connection copies the first seed's settings.
                        let seed = client_of(resp3_info(&urls[0])?, self.tls)?;
                        Some(Tier::Cluster(ClusterTracking::new(
                            seed.get_connection_info().clone(),
                            cluster.connection.clone(),
                            Arc::new(Copies::new(bytes)),
                            self.op_timeout,
                        )))
                    }
                    _ => None,
                };
                with_tier(RedisBackend::new(link, self.op_timeout), tier)
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
                    seeds: Vec::new(),
                }));
                Backend::Redis(RedisBackend::new(link, self.op_timeout))
            }
            Some(Source::Url(url)) => {
                require_runtime()?;
                // RESP3, so `lock` waiters get fill announcements pushed on this same
                // connection (re-subscribed by itself after a reconnection).
                let client = client_of(resp3_info(&url)?, self.tls)?;
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
                let remake = Remake {
                    client: client.clone(),
                    config,
                };
                let connection =
                    RedisConnection::new(manager, Some(remake), self.op_timeout, Some(notices));
                let backend = RedisBackend::new(Link::Single(connection), self.op_timeout);
                let tier = local_capacity.map(|bytes| {
                    let copies = Arc::new(Copies::new(bytes));
                    Tier::Server(Tracking::new(client, copies, self.op_timeout))
                });
                with_tier(backend, tier)
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
                gate: Gate::new(
                    backend,
                    Health::new(self.breaker_threshold, self.breaker_cooldown),
                    self.op_timeout,
                ),
                namespace: self.namespace,
                counters: Counters::default(),
                flights: Flights::default(),
                clock: self.clock,
                random: Mutex::new(
                    self.random_seed
                        .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
                ),
                refreshing: Mutex::default(),
                refresh_ended: tokio::sync::Notify::new(),
                refresh_backoff: crate::cache::refresh::RefreshBackoff::default(),
                max_background_refreshes: self.max_background_refreshes,
                local_everywhere: local_capacity.and(self.local_default),
                background_refreshes: std::sync::atomic::AtomicUsize::new(0),
                refresh_failures_log: crate::health::LogEvery::minute(),
                server_offset,
                background_writes: std::sync::atomic::AtomicUsize::new(0),
                format: self.format,
                max_value_bytes: self.max_value_bytes,
            }),
        };
        // Learn the server's clock now, in the background (a Redis cache is built inside a
        // runtime): the first calls then judge freshness by it already.
        let _ = cache.now_ms();
        Ok(cache)
    }
}

impl CacheBuilder {
    /// The in-process tier's options make sense together and with the source.
    fn check_local(&self) -> Result<(), CacheError> {
        if self.local_default.is_some() && self.local_capacity.is_none() {
            return Err(CacheError::Config(
                "local_default needs local_capacity: the in-process tier has no size yet".into(),
            ));
        }
        if self.local_capacity.is_some()
            && matches!(
                self.source,
                Some(Source::Connection(_) | Source::ClusterClient(_))
            )
        {
            return Err(CacheError::Config(
                "local_capacity needs a cache built with redis_url or redis_cluster (it makes \
                 its own tracking connections from the URLs); a connection or cluster client \
                 passed in has no in-process tier"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// `backend` with `tier`, whose connections start being made now, in the background, so the
/// first calls use them.
fn with_tier(backend: RedisBackend, tier: Option<Tier>) -> Backend {
    Backend::Redis(match tier {
        Some(tier) => {
            tier.start();
            backend.with_local(tier)
        }
        None => backend,
    })
}

/// `url`'s settings, speaking RESP3 (pushes arrive on the connection they concern) and with
/// dead-peer detection. No `CLIENT SETINFO` on connecting: the least-privileged ACL user of
/// the README then needs exactly the commands the cache sends, on any version.
fn resp3_info(url: &str) -> Result<redis::ConnectionInfo, CacheError> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3)
        .set_skip_set_lib_name();
    Ok(info
        .set_redis_settings(settings)
        .set_tcp_settings(dead_peer_detection()))
}

fn client_of(
    info: redis::ConnectionInfo,
    tls: Option<redis::TlsCertificates>,
) -> Result<redis::Client, CacheError> {
    Ok(match tls {
        Some(certificates) => redis::Client::build_with_tls(info, certificates)?,
        None => redis::Client::open(info)?,
    })
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
    let seeds = urls
        .iter()
        .map(|url| match &tls {
            Some(certificates) => redis::Client::build_with_tls(url.as_str(), certificates.clone()),
            None => redis::Client::open(url.as_str()),
        })
        .collect::<Result<Vec<_>, _>>()?;
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
    let link = Arc::new(ClusterLink {
        connection: client.get_pending_async_connection_with_config(config),
        notices: Some(notices.clone()),
        subscriptions: tokio::sync::Mutex::new(()),
        seeds,
    });
    // Weak: the link holds the notices that hold this.
    let weak = Arc::downgrade(&link);
    notices.on_lost_subscription(move |channel| {
        if let (Some(link), Ok(runtime)) = (weak.upgrade(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move { link.subscribe_again(channel, op_timeout).await });
        }
    });
    Ok(Link::Cluster(link))
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

    /// The in-process tier needs URLs to make its tracking connections from; elsewhere
    /// `build()` says so rather than running without the tier the caller asked for.
    #[tokio::test]
    async fn an_in_process_tier_without_a_url_to_track_on_is_refused() {
        let refused = |builder: CacheBuilder| match builder.build() {
            Err(CacheError::Config(message)) => message,
            other => panic!("expected a configuration error, got {other:?}"),
        };
        let cluster_client = redis::cluster::ClusterClient::new(["redis://127.0.0.1:1"]).unwrap();
        let cluster_client = Cache::builder()
            .redis_cluster_client(cluster_client)
            .local_capacity(1 << 20);
        assert!(refused(cluster_client).contains("redis_cluster"));
        let cluster = Cache::builder()
            .redis_cluster(["redis://127.0.0.1:1"])
            .local_capacity(1 << 20);
        assert!(cluster.build().is_ok(), "a tracking connection per primary");
        let without_capacity = Cache::builder()
            .redis_url("redis://127.0.0.1:1")
            .local_default(Duration::from_secs(1));
        assert!(refused(without_capacity).contains("local_capacity"));
        let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
        let connection =
            ConnectionManager::new_lazy_with_config(client, ConnectionManagerConfig::new())
                .unwrap();
        let passed_in = Cache::builder()
            .redis_connection(connection)
            .local_capacity(1 << 20);
        assert!(refused(passed_in).contains("redis_url"));
        let memory = Cache::builder()
            .memory(MemoryStore::new())
            .local_capacity(1 << 20);
        assert!(memory.build().is_ok(), "in process already: nothing to add");
    }
}
