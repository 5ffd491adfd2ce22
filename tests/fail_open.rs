//! The cache is never the reason a call fails: Redis killed, paused or unreachable, every call
//! returns the function's own result within the operation timeout plus the body's time, the
//! event is counted and logged once per burst, and caching resumes when Redis is back.

mod support;

use redis_memo::{Cache, redis_cached};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::{
    Backend, Harness, LoadError, Probe, invalidate_lookup, lookup, lookup_cache_key,
    wait_until_cached_again,
};
use tokio::sync::Notify;

const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// Scheduling slack on a loaded 2-core machine; the bound under test is op timeout + body.
/// Well under the timeout, so a call that waited for Redis twice would fail the bound.
const SLACK: Duration = Duration::from_millis(200);

#[redis_cached(ttl = "1m", key = "slow:<id>", cache = cache)]
async fn slow_lookup(id: u64, #[cache(skip)] cache: &Cache) -> u64 {
    tokio::time::sleep(Duration::from_millis(50)).await;
    id + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_traffic_fails_no_call_and_caching_resumes_after_restart() {
    let mut h = Harness::with_timeout(Backend::Redis, OP_TIMEOUT);
    let probe = Arc::new(Probe::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let warmed_up = Arc::new(Notify::new());
    let traffic: Vec<_> = (0..4)
        .map(|task| {
            let (cache, probe, calls, warmed_up) = (
                h.cache.clone(),
                Arc::clone(&probe),
                Arc::clone(&calls),
                Arc::clone(&warmed_up),
            );
            tokio::spawn(async move {
                for i in 0..300u64 {
                    let id = (task * 1000) + i % 25;
                    assert_eq!(
                        lookup(id, &cache, &probe).await,
                        Ok(id * 10),
                        "a call failed"
                    );
                    if calls.fetch_add(1, Ordering::SeqCst) + 1 == 200 {
                        warmed_up.notify_one();
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    warmed_up.notified().await;
    h.server().stop();
    for task in traffic {
        task.await.expect("no call may fail while Redis is down");
    }
    assert!(h.cache.stats().fail_open > 0, "the outage was counted");

    h.server().restart().unwrap();
    wait_until_cached_again(&h.cache, 77).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_costs_at_most_the_op_timeout() {
    let mut h = Harness::with_timeout(Backend::Redis, OP_TIMEOUT);
    assert_eq!(slow_lookup(1, &h.cache).await, 2);
    h.server().pause().unwrap();
    for id in 0..5 {
        let started = Instant::now();
        assert_eq!(slow_lookup(id, &h.cache).await, id + 1);
        let elapsed = started.elapsed();
        assert!(
            elapsed < OP_TIMEOUT + Duration::from_millis(50) + SLACK,
            "call {id} took {elapsed:?}"
        );
    }
    let started = Instant::now();
    let concurrent: Vec<_> = (100..150)
        .map(|id| {
            let cache = h.cache.clone();
            tokio::spawn(async move { slow_lookup(id, &cache).await })
        })
        .collect();
    for (id, call) in (100..).zip(concurrent) {
        assert_eq!(call.await.unwrap(), id + 1);
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < OP_TIMEOUT + Duration::from_millis(50) + SLACK,
        "50 concurrent calls took {elapsed:?}"
    );
    assert!(h.cache.stats().fail_open > 0);
    h.server().resume().unwrap();
    wait_until_cached_again(&h.cache, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pause_costs_at_most_the_op_timeout() {
    let h = Harness::with_timeout(Backend::Redis, OP_TIMEOUT);
    let server = h.server.as_ref().unwrap();
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .query(&mut server.connection())
        .unwrap();
    let started = Instant::now();
    assert_eq!(slow_lookup(8, &h.cache).await, 9);
    let elapsed = started.elapsed();
    assert!(
        elapsed < OP_TIMEOUT + Duration::from_millis(50) + SLACK,
        "took {elapsed:?}"
    );
    let () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut server.connection())
        .unwrap();
    wait_until_cached_again(&h.cache, 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_runs_every_call_and_reports_invalidation_errors() {
    // A port nothing listens on: start a server to learn a free port, then stop it.
    let mut h = Harness::with_timeout(Backend::Redis, OP_TIMEOUT);
    h.server().stop();
    let probe = Probe::default();
    for _ in 0..10 {
        assert_eq!(lookup(3, &h.cache, &probe).await, Ok(30));
    }
    assert_eq!(
        probe.runs(),
        10,
        "nothing can be cached, every call runs the body"
    );
    assert!(h.cache.stats().fail_open >= 10);
    assert!(h.cache.ping().await.is_err());
    let error = invalidate_lookup(3, &h.cache)
        .await
        .expect_err("a lost invalidation is an error");
    assert!(error.is_connection_error() || error.is_timeout(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_during_the_body_costs_at_most_the_op_timeout() {
    let mut h = Harness::with_timeout(Backend::Redis, OP_TIMEOUT);
    let (entered, paused) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let cache = h.cache.clone();
    let started = Instant::now();
    let call = tokio::spawn({
        let (entered, paused) = (Arc::clone(&entered), Arc::clone(&paused));
        async move { pause_in_body(9, &cache, &entered, &paused).await }
    });
    // The read is done once the body runs; the write will meet a frozen server.
    entered.notified().await;
    h.server().pause().unwrap();
    paused.notify_one();
    assert_eq!(call.await.unwrap(), 90);
    let elapsed = started.elapsed();
    assert!(elapsed < OP_TIMEOUT + SLACK, "took {elapsed:?}");
    h.server().resume().unwrap();
}

#[redis_cached(ttl = "1m", key = "paused_body:<id>", cache = cache)]
async fn pause_in_body(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] entered: &Notify,
    #[cache(skip)] paused: &Notify,
) -> u64 {
    entered.notify_one();
    paused.notified().await;
    id * 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_do_not_stop_caching() {
    let h = Harness::with_timeout(Backend::Redis, OP_TIMEOUT);
    let server = h.server.as_ref().unwrap();
    let config = |name: &str, value: &str| {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query(&mut server.connection())
            .unwrap();
    };
    config("maxmemory-policy", "noeviction");
    config("maxmemory", "1");
    let probe = Probe::default();
    for _ in 0..5 {
        assert_eq!(
            lookup(5, &h.cache, &probe).await,
            Ok(50),
            "OOM on SET fails no call"
        );
    }
    assert_eq!(probe.runs(), 5, "nothing could be stored");
    config("maxmemory", "0");
    // An OOM reply is not an outage: the breaker stayed closed, so this is stored and then hit
    // at once, with no cooldown to wait out.
    assert_eq!(lookup(5, &h.cache, &probe).await, Ok(50));
    assert_eq!(lookup(5, &h.cache, &probe).await, Ok(50));
    assert_eq!(probe.runs(), 6);
}

/// A cache on `url` with the operation timeout `op_timeout`.
fn cache_at(url: &str, op_timeout: Duration) -> Cache {
    Cache::builder()
        .redis_url(url)
        .op_timeout(op_timeout)
        .build()
        .unwrap()
}

/// A connection that goes silent while the server is healthy (half-open: the peer vanished
/// without closing it) is replaced after repeated timeouts: the manager alone would keep it,
/// since nothing on the socket fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_replaced_and_caching_resumes() {
    let server = redis_memo_testkit::RedisServer::start().expect("redis-server");
    let proxy = redis_memo_testkit::TcpProxy::start(server.port()).unwrap();
    let cache = cache_at(&proxy.url(), Duration::from_millis(100));
    let probe = Probe::default();
    assert_eq!(lookup(1, &cache, &probe).await, Ok(10));
    assert_eq!(lookup(1, &cache, &probe).await, Ok(10));
    assert_eq!(probe.runs(), 1);

    proxy.freeze_existing();
    // Every call still answers (fail-open), and caching comes back on a new connection.
    wait_until_cached_again(&cache, 2).await;
    assert!(
        cache.stats().fail_open > 0,
        "the silent connection was noticed"
    );
}

/// After a failover that moves the address to the new primary, a connection still open to the
/// demoted one gets `READONLY` on every write; it is replaced, and writes reach the new
/// primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_left_on_a_demoted_primary_is_replaced() {
    let old_primary = redis_memo_testkit::RedisServer::start().expect("redis-server");
    let new_primary = redis_memo_testkit::RedisServer::start().expect("redis-server");
    let proxy = redis_memo_testkit::TcpProxy::start(old_primary.port()).unwrap();
    let cache = cache_at(&proxy.url(), Duration::from_millis(100));
    let probe = Probe::default();
    assert_eq!(lookup(1, &cache, &probe).await, Ok(10));

    // The failover: the old primary becomes a replica of the new one, and the address points
    // at the new one for connections made from now on.
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(new_primary.port())
        .query(&mut old_primary.connection())
        .unwrap();
    proxy.retarget(new_primary.port());
    wait_until_cached_again(&cache, 3).await;
    let stored: Option<Vec<u8>> = redis::cmd("GET")
        .arg(cache.full_key(&lookup_cache_key(3)))
        .query(&mut new_primary.connection())
        .unwrap();
    assert!(stored.is_some(), "the entry was written to the new primary");
}

#[derive(Debug, PartialEq)]
struct TimedOutError;

impl From<redis_memo::TimedOut> for TimedOutError {
    fn from(_: redis_memo::TimedOut) -> Self {
        TimedOutError
    }
}

/// Hangs until its caller gives up, after its connection went silent.
#[redis_cached(ttl = "1m", key = "hangs:<id>", hard_timeout = "200ms", cache = cache)]
async fn hangs_after_silence(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] proxy: &redis_memo_testkit::TcpProxy,
) -> Result<u64, TimedOutError> {
    proxy.freeze_existing();
    std::future::pending::<()>().await;
    Ok(id)
}

/// A caller cancelled at its hard timeout does not wait for its lease to be given back: with
/// the connection silent, that round trip would take the whole (long) operation timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_timeout_does_not_wait_for_the_lease_release() {
    let server = redis_memo_testkit::RedisServer::start().expect("redis-server");
    let proxy = redis_memo_testkit::TcpProxy::start(server.port()).unwrap();
    let cache = cache_at(&proxy.url(), Duration::from_secs(5));
    cache.ping().await.unwrap();
    let started = Instant::now();
    assert_eq!(
        hangs_after_silence(1, &cache, &proxy).await,
        Err(TimedOutError)
    );
    // 200 ms, not 200 ms + the 5 s operation timeout of the release.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the caller waited {:?}",
        started.elapsed()
    );
}

/// Tagged: its read is one `MGET`, which no script of the runtime sends, so the server's count
/// of `MGET`s is the count of calls that read Redis.
#[redis_cached(ttl = "1m", key = "tagged:<id>", tags = ["lookups"], cache = cache)]
async fn tagged_lookup(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> Result<u64, LoadError> {
    probe.ran();
    Ok(id * 10)
}

/// A slow but healthy server: every reply takes 200 ms, against a 300 ms operation timeout
/// (margins a loaded machine keeps). A miss's read uses most of the call's Redis budget, so its
/// lease attempt runs out of the rest; that says nothing about an outage, and must not open
/// the breaker, which would make the next calls skip Redis: every call here still reads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_healthy_server_does_not_open_the_breaker() {
    let server = redis_memo_testkit::RedisServer::start().expect("redis-server");
    let proxy = redis_memo_testkit::TcpProxy::start(server.port()).unwrap();
    let cache = cache_at(&proxy.url(), Duration::from_millis(300));
    let probe = Probe::default();
    assert_eq!(tagged_lookup(1, &cache, &probe).await, Ok(10));
    proxy.delay_replies(Duration::from_millis(200));
    // Misses at once: each reads (an answer, in 200 ms), then its lease attempt runs out of
    // what is left of its 300 ms: a run of timeouts with no answer in between.
    let misses: Vec<_> = (100..116)
        .map(|id| {
            let cache = cache.clone();
            tokio::spawn(async move { tagged_lookup(id, &cache, &Probe::default()).await })
        })
        .collect();
    for miss in misses {
        assert!(miss.await.unwrap().is_ok());
    }
    for id in 200..204 {
        assert_eq!(tagged_lookup(id, &cache, &probe).await, Ok(id * 10));
    }
    // Redis runs each command as it arrives (the proxy holds only the replies), so the reads
    // it ran are the calls that did not skip it. A breaker opened by the misses' lease timeouts
    // would have made the later calls skip Redis.
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.connection())
        .unwrap();
    let reads = info
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_mget:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse::<u64>().ok())
        .unwrap_or(0);
    assert_eq!(
        reads,
        1 + 16 + 4,
        "every call read Redis: {:?}",
        cache.stats()
    );
}

#[redis_cached(ttl = "1m", key = "every:<id>", invalidate_all, cache = cache)]
async fn every_lookup(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> u64 {
    probe.ran();
    id + 1
}

/// Opens the breaker of `h.cache` (threshold 1) with Redis down, then brings Redis back: the
/// breaker stays open (an hour's cooldown) until something answers.
async fn open_the_breaker_then_restart(h: &mut Harness) {
    h.server().stop();
    let probe = Probe::default();
    assert_eq!(lookup(1, &h.cache, &probe).await, Ok(10));
    h.server().restart().unwrap();
    let probe = Probe::default();
    for _ in 0..2 {
        assert_eq!(every_lookup(2, &h.cache, &probe).await, 3);
    }
    assert_eq!(
        probe.runs(),
        2,
        "the open breaker skips Redis: nothing is cached"
    );
}

/// With the breaker open, calls skip Redis, but an invalidation the caller asked for is still
/// tried (a lost invalidation must be an error, never a skip), and its answer closes the
/// breaker so caching resumes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_are_tried_while_the_breaker_is_open_and_close_it() {
    let mut h = Harness::with(Backend::Redis, |builder| {
        builder
            .op_timeout(OP_TIMEOUT)
            .breaker(1, Duration::from_secs(3600))
    });
    let cached_again = |h: &Harness, id: u64| {
        let cache = h.cache.clone();
        async move {
            let probe = Probe::default();
            for _ in 0..2 {
                assert_eq!(every_lookup(id, &cache, &probe).await, id + 1);
            }
            probe.runs() == 1
        }
    };

    open_the_breaker_then_restart(&mut h).await;
    assert_eq!(invalidate_every_lookup(2, &h.cache).await.ok(), Some(false));
    assert!(
        cached_again(&h, 7).await,
        "the invalidation's answer closed the breaker"
    );

    open_the_breaker_then_restart(&mut h).await;
    assert_eq!(
        invalidate_all_every_lookup(&h.cache).await.ok(),
        Some(false)
    );
    assert!(cached_again(&h, 8).await);

    open_the_breaker_then_restart(&mut h).await;
    assert_eq!(h.cache.invalidate_tag("users").await.ok(), Some(false));
    assert!(cached_again(&h, 9).await);
}

#[redis_cached(ttl = "1m", key = "name:<id>", cache = cache)]
async fn name_of(id: u64, #[cache(skip)] cache: &Cache) -> String {
    format!("name {id}")
}

#[redis_memo::redis_cache_put(name_of(id), value = name.to_owned(), cache = cache)]
async fn rename(id: u64, name: &str, cache: &Cache) -> Result<(), String> {
    let _ = (id, name, cache);
    Ok(())
}

#[redis_memo::redis_cache_evict(name_of(id), cache = cache)]
async fn forget(id: u64, cache: &Cache) -> Result<(), String> {
    let _ = (id, cache);
    Ok(())
}

/// A writer's call never fails because of the cache: a put or evict Redis does not take (down,
/// or skipped while the breaker is open) is counted in `lost_writes` and logged at error
/// level, and the call returns its body's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_with_redis_down_succeed_and_count_their_lost_writes() {
    let mut h = Harness::with(Backend::Redis, |builder| {
        builder
            .op_timeout(OP_TIMEOUT)
            .breaker(2, Duration::from_secs(3600))
    });
    let errors = ErrorLines::default();
    let _logs = errors.install();
    assert_eq!(name_of(1, &h.cache).await, "name 1");
    h.server().stop();

    // Redis down: each writer meets the outage itself.
    assert_eq!(rename(1, "one", &h.cache).await, Ok(()));
    assert_eq!(forget(1, &h.cache).await, Ok(()));
    let lost = h.cache.stats().lost_writes;
    assert!(lost >= 2, "both writes counted: {:?}", h.cache.stats());
    // Now the breaker is open: the writers are skipped without touching Redis, and counted.
    assert_eq!(rename(2, "two", &h.cache).await, Ok(()));
    assert_eq!(forget(2, &h.cache).await, Ok(()));
    assert!(
        h.cache.stats().lost_writes >= lost + 2,
        "{:?}",
        h.cache.stats()
    );
    assert!(errors.count() >= 4, "each lost write logged at error level");
}

/// Counts error-level events of redis-memo on this thread while installed.
#[derive(Clone, Default)]
struct ErrorLines(Arc<AtomicUsize>);

impl ErrorLines {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ErrorLines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let metadata = event.metadata();
        if *metadata.level() == tracing::Level::ERROR && metadata.target() == "redis_memo" {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
