//! Shared by the integration tests: a cache on a fresh backend, and a probe that memoized
//! test functions report their runs to.

#![allow(dead_code)]

use redis_memo::{Cache, MemoryStore, redis_cached};
use redis_memo_testkit::RedisServer;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Redis,
    Memory,
}

/// A cache on its own backend (a fresh `redis-server`, or a fresh in-memory store), with raw
/// access to what is stored.
pub struct Harness {
    pub cache: Cache,
    pub server: Option<RedisServer>,
    store: Option<MemoryStore>,
    namespace: String,
}

/// Namespaces differ per harness so nothing can leak between tests even on one server.
fn unique_namespace() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("test{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

impl Harness {
    pub fn new(backend: Backend) -> Harness {
        Self::with_timeout(backend, Duration::from_millis(250))
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
                .op_timeout(Duration::from_millis(250)),
        );
        match backend {
            Backend::Redis => {
                let server = RedisServer::start().expect("the test suite needs redis-server");
                let cache = builder.redis_url(server.url()).build().expect("cache");
                Harness {
                    cache,
                    server: Some(server),
                    store: None,
                    namespace,
                }
            }
            Backend::Memory => {
                // Room for the suite's largest test (100,000 entries under one tag).
                let store = MemoryStore::with_max_entries(1_000_000);
                let cache = builder.memory(store.clone()).build().expect("cache");
                Harness {
                    cache,
                    server: None,
                    store: Some(store),
                    namespace,
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
        let builder = configure(Cache::builder().namespace(self.namespace.clone()));
        match (&self.server, &self.store) {
            (Some(server), _) => builder.redis_url(server.url()).build().expect("cache"),
            (None, Some(store)) => builder.memory(store.clone()).build().expect("cache"),
            (None, None) => unreachable!("a harness has a server or a store"),
        }
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
        match (&self.server, &self.store) {
            (Some(server), _) => {
                let ttl_ms = ttl.as_millis() as u64;
                Self::redis::<()>(
                    server,
                    redis::cmd("SET").arg(&key).arg(bytes).arg("PX").arg(ttl_ms),
                )
                .await;
            }
            (None, Some(store)) => store.insert_raw(&key, bytes.to_vec().into(), ttl).await,
            (None, None) => unreachable!("a harness has a server or a store"),
        }
    }

    /// Writes the same raw bytes under many rendered keys (pipelined on Redis).
    pub async fn write_many_raw(&self, rendered: &[String], bytes: &[u8], ttl: Duration) {
        match (&self.server, &self.store) {
            (Some(server), _) => {
                let mut connection = server
                    .client()
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap();
                for chunk in rendered.chunks(5000) {
                    let mut pipe = redis::pipe();
                    for key in chunk {
                        pipe.cmd("SET")
                            .arg(self.cache.full_key(key))
                            .arg(bytes)
                            .arg("PX")
                            .arg(ttl.as_millis() as u64)
                            .ignore();
                    }
                    let () = pipe.query_async(&mut connection).await.unwrap();
                }
            }
            (None, Some(store)) => {
                for key in rendered {
                    store
                        .insert_raw(&self.cache.full_key(key), bytes.to_vec().into(), ttl)
                        .await;
                }
            }
            (None, None) => unreachable!("a harness has a server or a store"),
        }
    }

    /// Deletes a tag's version key by hand, as an operator (or an eviction) could.
    pub async fn delete_tag_raw(&self, rendered_tag: &str) {
        let key = self.cache.full_tag_key(rendered_tag);
        match (&self.server, &self.store) {
            (Some(server), _) => {
                let deleted: u64 = Self::redis(server, redis::cmd("DEL").arg(&key)).await;
                assert_eq!(deleted, 1, "{key} existed");
            }
            (None, Some(store)) => assert!(store.remove_tag_raw(&key).await, "{key} existed"),
            (None, None) => unreachable!("a harness has a server or a store"),
        }
    }

    /// Redis's count of calls per command (`INFO commandstats`), without the `INFO` calls;
    /// `None` for the in-memory backend.
    pub async fn command_calls(&self) -> Option<std::collections::BTreeMap<String, u64>> {
        let server = self.server.as_ref()?;
        let info: String = Self::redis(server, redis::cmd("INFO").arg("commandstats")).await;
        Some(
            info.lines()
                .filter_map(|line| {
                    let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                    let calls = rest.strip_prefix("calls=")?.split(',').next()?;
                    Some((name.to_owned(), calls.parse().ok()?))
                })
                .filter(|(name, _)| name != "info")
                .collect(),
        )
    }

    /// How long Redis keeps the entry `rendered` (`PTTL`, ms); `None` for the in-memory backend.
    pub async fn pttl_ms(&self, rendered: &str) -> Option<i64> {
        let server = self.server.as_ref()?;
        let key = self.cache.full_key(rendered);
        Some(Self::redis(server, redis::cmd("PTTL").arg(&key)).await)
    }

    /// The raw bytes stored for `rendered`, if any.
    pub async fn read_raw(&self, rendered: &str) -> Option<Vec<u8>> {
        let key = self.cache.full_key(rendered);
        match (&self.server, &self.store) {
            (Some(server), _) => Self::redis(server, redis::cmd("GET").arg(&key)).await,
            (None, Some(store)) => store.get_raw(&key).await.map(|bytes| bytes.to_vec()),
            (None, None) => unreachable!("a harness has a server or a store"),
        }
    }
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
