//! Shared by the integration tests: a cache on a fresh backend, and a probe that memoized
//! test functions report their runs to.

#![allow(dead_code)]

use redis_memo::{Cache, MemoryStore, redis_cached};
use redis_memo_testkit::{RedisCluster, RedisServer};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Redis,
    /// One server, every function answering from the cache's in-process tier when it can
    /// (`local_capacity` and `local_default`), as other caches of the test do.
    RedisLocal,
    /// One server, the cache connected as the least-privileged ACL user of the README.
    RedisAcl,
    /// A local Redis Cluster: 3 primaries, 3 replicas.
    Cluster,
    /// The cluster, the cache connected as the README's least-privileged ACL user (with the
    /// README's additions for a cluster, on every node).
    ClusterAcl,
    /// The cluster, every function answering from the cache's in-process tier when it can.
    ClusterLocal,
    Memory,
}

/// A cache on its own backend (a fresh `redis-server`, a fresh local cluster, or a fresh
/// in-memory store), with raw access to what is stored.
pub struct Harness {
    pub cache: Cache,
    /// The URL the cache connects with (one server): as the ACL user, or the default user.
    redis_url: Option<String>,
    /// The URLs the cache connects with (a cluster), likewise.
    cluster_urls: Vec<String>,
    pub server: Option<RedisServer>,
    pub cluster: Option<RedisCluster>,
    /// One connection for the test's raw commands on a cluster (each new one learns the
    /// topology first).
    cluster_connection: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
    store: Option<MemoryStore>,
    namespace: String,
    /// Whether caches have an in-process tier (`Backend::RedisLocal`, `Backend::ClusterLocal`).
    local: bool,
}

/// The in-process tier of `Backend::RedisLocal`: room for the suite's largest test.
fn with_local_tier(builder: redis_memo::CacheBuilder) -> redis_memo::CacheBuilder {
    builder
        .local_capacity(256 * 1024 * 1024)
        .local_default(Duration::from_secs(60))
}

/// Creates, on `server`, the README's least-privileged ACL user for `namespace` (the line is
/// read from the README, so what is documented is what is tested), and returns the URL that
/// connects as it.
pub fn acl_user_url(server: &RedisServer, namespace: &str) -> String {
    acl_user_url_with(server, namespace, "")
}

/// [`acl_user_url`] with the README's additions for the in-process tier.
pub fn acl_user_url_for_local_tier(server: &RedisServer, namespace: &str) -> String {
    let additions = readme_code_after("needs, besides its line, `");
    acl_user_url_with(server, namespace, additions)
}

/// The README's code span that `marker` (ending with its opening backtick) introduces.
fn readme_code_after(marker: &str) -> &'static str {
    let readme = include_str!("../../README.md");
    let start = readme
        .find(marker)
        .unwrap_or_else(|| panic!("the README has {marker:?}"))
        + marker.len();
    &readme[start..start + readme[start..].find('`').unwrap()]
}

fn acl_user_url_with(server: &RedisServer, namespace: &str, additions: &str) -> String {
    let readme = include_str!("../../README.md");
    let line = readme
        .lines()
        .find(|line| line.starts_with("ACL SETUSER memo "))
        .expect("the README gives the ACL line");
    let line = line
        .replace("~memo:*", &format!("~{namespace}:*"))
        .replace("&memo:*", &format!("&{namespace}:*"))
        .replace(">secret", ">t0p-s3cret");
    let mut command = redis::cmd("ACL");
    for word in line
        .split_whitespace()
        .skip(1)
        .chain(additions.split_whitespace())
    {
        command.arg(word);
    }
    let () = command
        .query(&mut server.connection())
        .expect("ACL SETUSER");
    format!("redis://memo:t0p-s3cret@127.0.0.1:{}/", server.port())
}

/// Creates, on every node of `cluster`, the README's least-privileged ACL user for
/// `namespace` with the README's additions for a cluster, and returns the URLs that connect
/// as it.
pub fn acl_user_cluster_urls(cluster: &RedisCluster, namespace: &str) -> Vec<String> {
    let additions = readme_code_after("On a cluster, on every node, add `");
    cluster
        .nodes()
        .iter()
        .map(|node| acl_user_url_with(node, namespace, additions))
        .collect()
}

/// [`acl_user_cluster_urls`] with the README's additions for the in-process tier too.
pub fn acl_user_cluster_urls_for_local_tier(
    cluster: &RedisCluster,
    namespace: &str,
) -> Vec<String> {
    let additions = format!(
        "{} {}",
        readme_code_after("On a cluster, on every node, add `"),
        readme_code_after("needs, besides its line, `")
    );
    cluster
        .nodes()
        .iter()
        .map(|node| acl_user_url_with(node, namespace, &additions))
        .collect()
}

/// Namespaces differ per harness so nothing can leak between tests even on one server.
fn unique_namespace() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("test{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The operation timeout of a harness that does not choose one. Generous: the whole suite
/// shares two cores with dozens of servers, and a test that does not test timeouts must not
/// fail open because the machine stalled for a quarter second (a cluster conformance test
/// once did). Tests of timeouts and faults pass their own.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);

impl Harness {
    pub fn new(backend: Backend) -> Harness {
        Self::with_timeout(backend, OP_TIMEOUT)
    }

    pub fn with_timeout(backend: Backend, op_timeout: Duration) -> Harness {
        Self::with(backend, |builder| builder.op_timeout(op_timeout))
    }

    /// A harness whose cache is built with `configure` applied to the builder (its clock, a
    /// random seed).
    pub fn with(
        backend: Backend,
        configure: impl FnOnce(redis_memo::CacheBuilder) -> redis_memo::CacheBuilder,
    ) -> Harness {
        let namespace = unique_namespace();
        let builder = configure(
            Cache::builder()
                .namespace(namespace.clone())
                .op_timeout(OP_TIMEOUT),
        );
        let local = matches!(backend, Backend::RedisLocal | Backend::ClusterLocal);
        let builder = if local {
            with_local_tier(builder)
        } else {
            builder
        };
        match backend {
            Backend::Redis | Backend::RedisAcl | Backend::RedisLocal => {
                let server = RedisServer::start().expect("the test suite needs redis-server");
                let url = match backend {
                    Backend::RedisAcl => acl_user_url(&server, &namespace),
                    _ => server.url(),
                };
                let cache = builder.redis_url(url.clone()).build().expect("cache");
                Harness {
                    cache,
                    cluster_urls: Vec::new(),
                    redis_url: Some(url),
                    server: Some(server),
                    cluster: None,
                    cluster_connection: tokio::sync::OnceCell::new(),
                    store: None,
                    namespace,
                    local,
                }
            }
            Backend::Cluster | Backend::ClusterAcl | Backend::ClusterLocal => {
                let cluster = RedisCluster::start().expect("the test suite needs redis-server");
                let urls = match backend {
                    Backend::ClusterAcl => acl_user_cluster_urls(&cluster, &namespace),
                    _ => cluster.urls(),
                };
                let cache = builder.redis_cluster(urls.clone()).build().expect("cache");
                Harness {
                    cache,
                    cluster_urls: urls,
                    redis_url: None,
                    server: None,
                    cluster: Some(cluster),
                    cluster_connection: tokio::sync::OnceCell::new(),
                    store: None,
                    namespace,
                    local,
                }
            }
            Backend::Memory => {
                // Room for the suite's largest test (100,000 entries under one tag).
                let store = MemoryStore::with_max_entries(1_000_000);
                let cache = builder.memory(store.clone()).build().expect("cache");
                Harness {
                    cache,
                    cluster_urls: Vec::new(),
                    redis_url: None,
                    server: None,
                    cluster: None,
                    cluster_connection: tokio::sync::OnceCell::new(),
                    store: Some(store),
                    namespace,
                    local,
                }
            }
        }
    }

    /// Another cache on the same backend and namespace, as another process would have it,
    /// built with `configure` applied to the builder.
    pub fn another_process(
        &self,
        configure: impl FnOnce(redis_memo::CacheBuilder) -> redis_memo::CacheBuilder,
    ) -> Cache {
        let mut builder = configure(Cache::builder().namespace(self.namespace.clone()));
        if self.local {
            builder = with_local_tier(builder);
        }
        match (&self.server, &self.cluster, &self.store) {
            (Some(_), _, _) => builder
                .redis_url(self.redis_url.clone().expect("a server's URL"))
                .build()
                .expect("cache"),
            (_, Some(_), _) => builder
                .redis_cluster(self.cluster_urls.clone())
                .build()
                .expect("cache"),
            (_, _, Some(store)) => builder.memory(store.clone()).build().expect("cache"),
            (None, None, None) => unreachable!("a harness has a server, a cluster or a store"),
        }
    }

    /// Whether caches have an in-process tier (`Backend::RedisLocal`, `Backend::ClusterLocal`).
    pub fn local(&self) -> bool {
        self.local
    }

    /// Whether the cache runs on a Redis Cluster.
    pub fn on_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// Whether the cache runs on Redis (one server or a cluster).
    pub fn on_redis(&self) -> bool {
        self.server.is_some() || self.cluster.is_some()
    }

    /// Runs `command` on the harness's Redis (routed by its key on a cluster), bypassing the
    /// cache; `None` for the in-memory backend.
    ///
    /// With an in-process tier, the cache then makes a round trip (`ping`), as a program does
    /// between a change and its next call: the tier learns of a change other than its own by
    /// then (see the README's "In-process tier").
    pub async fn raw<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Option<T> {
        if let Some(server) = &self.server {
            let reply = Self::redis(server, command).await;
            self.after_raw_change().await;
            return Some(reply);
        }
        let mut connection = self.cluster_connection().await?;
        let reply = command.query_async(&mut connection).await.unwrap();
        self.after_raw_change().await;
        Some(reply)
    }

    /// See [`Harness::raw`].
    pub async fn after_raw_change(&self) {
        if self.local {
            self.cache.ping().await.expect("a round trip");
        }
    }

    async fn cluster_connection(&self) -> Option<redis::cluster_async::ClusterConnection> {
        let cluster = self.cluster.as_ref()?;
        let connection = self
            .cluster_connection
            .get_or_init(|| async { cluster.client().get_async_connection().await.unwrap() })
            .await;
        Some(connection.clone())
    }

    pub fn server(&mut self) -> &mut RedisServer {
        self.server.as_mut().expect("a Redis harness")
    }

    /// Runs `command` on the harness's Redis server, bypassing the cache.
    async fn redis<T: redis::FromRedisValue>(server: &RedisServer, command: &redis::Cmd) -> T {
        let mut connection = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        command.query_async(&mut connection).await.unwrap()
    }

    /// Writes raw bytes under the entry whose rendered key is `rendered`.
    pub async fn write_raw(&self, rendered: &str, bytes: &[u8], ttl: Duration) {
        let key = self.cache.full_key(rendered);
        let ttl_ms = ttl.as_millis() as u64;
        let set = redis::cmd("SET")
            .arg(&key)
            .arg(bytes)
            .arg("PX")
            .arg(ttl_ms)
            .clone();
        if self.raw::<()>(&set).await.is_none() {
            let store = self.store.as_ref().expect("a harness has a backend");
            store.insert_raw(&key, bytes.to_vec().into(), ttl).await;
        }
    }

    /// Writes the same raw bytes under many rendered keys (pipelined on Redis, per slot on a
    /// cluster).
    pub async fn write_many_raw(&self, rendered: &[String], bytes: &[u8], ttl: Duration) {
        let set = |pipe: &mut redis::Pipeline, key: &str| {
            pipe.cmd("SET")
                .arg(self.cache.full_key(key))
                .arg(bytes)
                .arg("PX")
                .arg(ttl.as_millis() as u64)
                .ignore();
        };
        if let Some(server) = &self.server {
            let mut connection = server
                .client()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            for chunk in rendered.chunks(5000) {
                let mut pipe = redis::pipe();
                for key in chunk {
                    set(&mut pipe, key);
                }
                let () = pipe.query_async(&mut connection).await.unwrap();
            }
            self.after_raw_change().await;
        } else if let Some(connection) = self.cluster_connection().await {
            let mut by_slot: std::collections::HashMap<_, Vec<&String>> = Default::default();
            for key in rendered {
                let slot = redis::cluster_routing::Slot::for_key(self.cache.full_key(key));
                by_slot.entry(slot).or_default().push(key);
            }
            let pipes: Vec<redis::Pipeline> = by_slot
                .values()
                .map(|keys| {
                    let mut pipe = redis::pipe();
                    for key in keys {
                        set(&mut pipe, key);
                    }
                    pipe
                })
                .collect();
            for chunk in pipes.chunks(256) {
                futures_util::future::join_all(chunk.iter().map(|pipe| {
                    let mut connection = connection.clone();
                    async move {
                        let () = pipe.query_async(&mut connection).await.unwrap();
                    }
                }))
                .await;
            }
            self.after_raw_change().await;
        } else {
            let store = self.store.as_ref().expect("a harness has a backend");
            for key in rendered {
                store
                    .insert_raw(&self.cache.full_key(key), bytes.to_vec().into(), ttl)
                    .await;
            }
        }
    }

    /// Deletes a tag's version key by hand, as an operator (or an eviction) could.
    pub async fn delete_tag_raw(&self, rendered_tag: &str) {
        let key = self.cache.full_tag_key(rendered_tag);
        match self.raw::<u64>(redis::cmd("DEL").arg(&key)).await {
            Some(deleted) => assert_eq!(deleted, 1, "{key} existed"),
            None => {
                let store = self.store.as_ref().expect("a harness has a backend");
                assert!(store.remove_tag_raw(&key).await, "{key} existed");
            }
        }
    }

    /// Redis's count of calls per command (`INFO commandstats`, summed over a cluster's
    /// primaries), without `INFO`, the cluster client's own topology commands and replication
    /// (`REPLCONF`); `None` for the in-memory backend.
    pub async fn command_calls(&self) -> Option<std::collections::BTreeMap<String, u64>> {
        // A call returns once its fill is sent: its answer is not part of what comes next.
        self.cache.writes_done().await;
        let servers: Vec<&RedisServer> = match (&self.server, &self.cluster) {
            (Some(server), _) => vec![server],
            (_, Some(cluster)) => {
                let topology = cluster.topology().unwrap();
                cluster
                    .nodes()
                    .iter()
                    .filter(|node| {
                        topology
                            .iter()
                            .any(|known| known.port == node.port() && known.primary)
                    })
                    .collect()
            }
            _ => return None,
        };
        let mut calls = std::collections::BTreeMap::new();
        for server in servers {
            let info: String = Self::redis(server, redis::cmd("INFO").arg("commandstats")).await;
            for (name, count) in info.lines().filter_map(|line| {
                let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let count: u64 = rest
                    .strip_prefix("calls=")?
                    .split(',')
                    .next()?
                    .parse()
                    .ok()?;
                Some((name.to_owned(), count))
            }) {
                if !matches!(
                    name.as_str(),
                    "info" | "cluster|slots" | "cluster|nodes" | "ping" | "replconf"
                ) {
                    *calls.entry(name).or_default() += count;
                }
            }
        }
        Some(calls)
    }

    /// How long Redis keeps the entry `rendered` (`PTTL`, ms); `None` for the in-memory backend.
    pub async fn pttl_ms(&self, rendered: &str) -> Option<i64> {
        // A call returns once its result is sent; this reads on another connection.
        self.cache.writes_done().await;
        let key = self.cache.full_key(rendered);
        self.raw(redis::cmd("PTTL").arg(&key)).await
    }

    /// How long the store keeps the entry `rendered`, in ms: `PTTL` on Redis, what the
    /// in-memory store says otherwise (-2 for no entry, as `PTTL`).
    pub async fn time_to_live_ms(&self, rendered: &str) -> i64 {
        if let Some(pttl) = self.pttl_ms(rendered).await {
            return pttl;
        }
        let store = self.store.as_ref().expect("a harness has a backend");
        let key = self.cache.full_key(rendered);
        store
            .time_to_live(&key)
            .await
            .map_or(-2, |left| left.as_millis() as i64)
    }

    /// The raw bytes stored for `rendered`, if any.
    pub async fn read_raw(&self, rendered: &str) -> Option<Vec<u8>> {
        // A call returns once its result is sent; this reads on another connection.
        self.cache.writes_done().await;
        let key = self.cache.full_key(rendered);
        if self.on_redis() {
            return self.raw(redis::cmd("GET").arg(&key)).await.flatten();
        }
        let store = self.store.as_ref().expect("a harness has a backend");
        store.get_raw(&key).await.map(|bytes| bytes.to_vec())
    }
}

impl Drop for Harness {
    /// As the ACL user, no command may have been refused: Redis logs every refusal
    /// (`ACL LOG`), so a command missing from the README's line fails the test that sent it,
    /// even where the cache fell back without a visible effect.
    fn drop(&mut self) {
        let acl_user = self
            .redis_url
            .iter()
            .chain(&self.cluster_urls)
            .any(|url| url.starts_with("redis://memo:"));
        if !acl_user || std::thread::panicking() {
            return;
        }
        if let Some(server) = &self.server {
            assert_no_acl_refusals(server);
        }
        if let Some(cluster) = &self.cluster {
            for node in cluster.nodes() {
                assert_no_acl_refusals(node);
            }
        }
    }
}

/// Fails if `server` refused any command to an ACL user (`ACL LOG`).
pub fn assert_no_acl_refusals(server: &RedisServer) {
    let refused: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query(&mut server.connection())
        .expect("ACL LOG");
    assert!(
        refused.is_empty(),
        "commands refused to the ACL user: {refused:?}"
    );
}

/// Counts the runs of a memoized test function's body.
#[derive(Debug, Default)]
pub struct Probe {
    runs: AtomicU32,
}

impl Probe {
    pub fn ran(&self) -> u32 {
        self.runs.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn runs(&self) -> u32 {
        self.runs.load(Ordering::SeqCst)
    }
}

/// Counts callers that started waiting for an in-process leader (the runtime's trace event),
/// so a test can act once they are all waiting instead of guessing with sleeps.
#[derive(Clone, Default)]
pub struct WaiterSignal {
    waiting: std::sync::Arc<AtomicUsize>,
    changed: std::sync::Arc<tokio::sync::Notify>,
}

impl WaiterSignal {
    /// Installs the signal for this thread's tracing events until the guard is dropped.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    /// Returns once `count` callers have started waiting.
    pub async fn waiting(&self, count: usize) {
        while self.waiting.load(Ordering::SeqCst) < count {
            self.changed.notified().await;
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WaiterSignal {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct IsWaiting(bool);
        impl tracing::field::Visit for IsWaiting {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" && format!("{value:?}").contains("in-process leader") {
                    self.0 = true;
                }
            }
        }
        let mut visit = IsWaiting(false);
        event.record(&mut visit);
        if visit.0 {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            self.changed.notify_one();
        }
    }
}

/// The error of [`lookup`], which never fails.
#[derive(Debug, PartialEq)]
pub struct LoadError;

/// A memoized lookup: `id * 10`, its runs counted by `probe`.
#[redis_cached(ttl = "1m", key = "lookup:<id>", cache = cache)]
pub async fn lookup(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> Result<u64, LoadError> {
    probe.ran();
    Ok(id * 10)
}

/// Calls `lookup(id)` until one is served from the cache again, or gives up after 10 s.
/// Recovery has no event to wait for: the connection re-establishes in the background.
pub async fn wait_until_cached_again(cache: &Cache, id: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let probe = Probe::default();
        assert_eq!(lookup(id, cache, &probe).await, Ok(id * 10));
        assert_eq!(lookup(id, cache, &probe).await, Ok(id * 10));
        if probe.runs() <= 1 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "caching did not resume within 10 s of Redis coming back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Calls `lookup(id)` (already stored) until this process's in-process copy answers, failing
/// after 5 calls: a read that crossed the invalidation of the fill's own write keeps nothing,
/// the next one keeps the copy. Until the fill's reply is handled, reads of the entry go on
/// the main connection and keep nothing: on a loaded machine that can outlast 5 calls, so the
/// fill is waited for first.
pub async fn until_a_copy_answers(cache: &Cache, probe: &Probe, id: u64) {
    cache.writes_done().await;
    for _ in 0..5 {
        let local_hits = cache.stats().local_hits;
        assert_eq!(lookup(id, cache, probe).await, Ok(id * 10));
        if cache.stats().local_hits > local_hits {
            return;
        }
    }
    panic!("no copy of {id} answered: {:?}", cache.stats());
}
