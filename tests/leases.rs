//! Leases: a computation that began before an invalidation never stores its result after it,
//! on Redis and in memory, in a fixed interleaving and in interleavings proptest generates.
//! Several `Cache`s on one backend stand for several processes.

mod support;

use proptest::prelude::*;
use redis_memo::{Cache, MemoryStore, redis_cached};
use redis_memo_testkit::{RedisCluster, RedisServer, TcpProxy};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use support::Probe;
use tokio::sync::Notify;

/// The data behind the cached function: a version that writes bump.
#[derive(Default)]
struct Source {
    version: AtomicU64,
}

/// Holds a computation between reading the source and returning.
#[derive(Default)]
struct Gate {
    read: Notify,
    release: Notify,
    hold: std::sync::atomic::AtomicBool,
}

#[redis_cached(ttl = "1m", key = "doc:<id>", cache = cache)]
async fn load(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] source: &Source,
    #[cache(skip)] gate: &Gate,
    #[cache(skip)] probe: &Probe,
) -> u64 {
    probe.ran();
    let version = source.version.load(Ordering::SeqCst);
    if gate.hold.load(Ordering::SeqCst) {
        gate.read.notify_one();
        gate.release.notified().await;
    }
    id * 1000 + version
}

enum Backend {
    Redis(RedisServer),
    /// Fill notices travel by sharded pub/sub here (`SPUBLISH` / `SSUBSCRIBE`).
    Cluster(RedisCluster),
    /// One server, the caches connected as the README's least-privileged ACL user.
    RedisAcl(RedisServer),
    Memory(MemoryStore),
}

impl Backend {
    /// A cache on this backend, as another process would have it (same namespace).
    fn cache(&self, namespace: &str) -> Cache {
        let builder = Cache::builder().namespace(namespace);
        match self {
            Backend::Redis(server) => builder.redis_url(server.url()).build().unwrap(),
            Backend::Cluster(cluster) => builder.redis_cluster(cluster.urls()).build().unwrap(),
            Backend::RedisAcl(server) => builder
                .redis_url(support::acl_user_url(server, namespace))
                .build()
                .unwrap(),
            Backend::Memory(store) => builder.memory(store.clone()).build().unwrap(),
        }
    }
}

impl Drop for Backend {
    /// As the ACL user, no command may have been refused (see `support::Harness`'s drop).
    fn drop(&mut self) {
        if let (Backend::RedisAcl(server), false) = (&*self, std::thread::panicking()) {
            support::assert_no_acl_refusals(server);
        }
    }
}

fn backends() -> Vec<Backend> {
    vec![
        Backend::Redis(RedisServer::start().expect("the test suite needs redis-server")),
        Backend::Cluster(RedisCluster::start().expect("the test suite needs redis-server")),
        Backend::RedisAcl(RedisServer::start().expect("the test suite needs redis-server")),
        Backend::Memory(MemoryStore::new()),
    ]
}

fn open_gate() -> Gate {
    Gate::default()
}

fn held_gate() -> Arc<Gate> {
    let gate = Gate::default();
    gate.hold.store(true, Ordering::SeqCst);
    Arc::new(gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_computation_that_read_before_an_invalidation_does_not_store_its_value() {
    for backend in backends() {
        let cache = backend.cache("stale");
        let source = Arc::new(Source::default());
        source.version.store(1, Ordering::SeqCst);
        let (gate, probe) = (held_gate(), Arc::new(Probe::default()));
        let computation = tokio::spawn({
            let (cache, source, gate, probe) =
                (cache.clone(), source.clone(), gate.clone(), probe.clone());
            async move { load(7, &cache, &source, &gate, &probe).await }
        });
        gate.read.notified().await; // it has read version 1 and holds the lease

        source.version.store(2, Ordering::SeqCst); // a write, then its invalidation
        invalidate_load(7, &cache).await.unwrap();

        gate.release.notify_one();
        assert_eq!(
            computation.await.unwrap(),
            7001,
            "the caller gets what it computed"
        );
        cache.writes_done().await;
        assert_eq!(cache.stats().rejected_fills, 1, "but it is not stored");
        assert_eq!(cache.stats().fills, 0);

        let probe = Probe::default();
        assert_eq!(
            load(7, &cache, &source, &open_gate(), &probe).await,
            7002,
            "the next call runs the body"
        );
        assert_eq!(load(7, &cache, &source, &open_gate(), &probe).await, 7002);
        assert_eq!(probe.runs(), 1, "and its value is cached");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_lease_a_computation_returns_its_value_but_does_not_store_it() {
    for backend in backends() {
        let (first, second) = (backend.cache("lease"), backend.cache("lease"));
        let source = Arc::new(Source::default());
        let (gate, probe) = (held_gate(), Arc::new(Probe::default()));
        let holder = tokio::spawn({
            let (cache, source, gate, probe) =
                (first.clone(), source.clone(), gate.clone(), probe.clone());
            async move { load(3, &cache, &source, &gate, &probe).await }
        });
        gate.read.notified().await;
        // Another process misses while the first holds the lease: it computes, returns, and
        // leaves the fill to the holder.
        assert_eq!(load(3, &second, &source, &open_gate(), &probe).await, 3000);
        second.writes_done().await;
        assert_eq!(second.stats().fills, 0);
        gate.release.notify_one();
        assert_eq!(holder.await.unwrap(), 3000);
        first.writes_done().await;
        assert_eq!(first.stats().fills, 1);
        assert_eq!(load(3, &second, &source, &open_gate(), &probe).await, 3000);
        assert_eq!(
            probe.runs(),
            2,
            "the holder's fill serves the other process"
        );
    }
}

/// One step of an interleaving of two processes' computations and writes.
#[derive(Debug, Clone)]
enum Step {
    Start(usize),
    Finish(usize),
    Write,
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            (0..2usize).prop_map(Step::Start),
            (0..2usize).prop_map(Step::Finish),
            Just(Step::Write)
        ],
        1..12,
    )
}

/// Plays `steps` (skipping those that do not apply), finishes what is still running, and
/// checks that a new call sees the latest version: no stale value was stored.
async fn play(backend: &Backend, namespace: &str, steps: &[Step]) -> Result<(), TestCaseError> {
    let caches = [backend.cache(namespace), backend.cache(namespace)];
    let source = Arc::new(Source::default());
    let probe = Arc::new(Probe::default());
    let mut running: [Option<(Arc<Gate>, tokio::task::JoinHandle<u64>)>; 2] = [None, None];
    for step in steps {
        match *step {
            Step::Start(i) if running[i].is_none() => {
                let gate = held_gate();
                let mut task = tokio::spawn({
                    let (cache, source, gate, probe) = (
                        caches[i].clone(),
                        source.clone(),
                        gate.clone(),
                        probe.clone(),
                    );
                    async move { load(1, &cache, &source, &gate, &probe).await }
                });
                tokio::select! {
                    _ = gate.read.notified() => running[i] = Some((gate, task)),
                    // A hit: no computation to hold, and it must be of the latest version.
                    hit = &mut task => {
                        let latest = 1000 + source.version.load(Ordering::SeqCst);
                        prop_assert_eq!(hit.unwrap(), latest, "a stale hit; steps {:?}", steps);
                    }
                }
            }
            Step::Finish(i) => {
                if let Some((gate, task)) = running[i].take() {
                    gate.release.notify_one();
                    task.await.unwrap();
                }
            }
            Step::Write => {
                source.version.fetch_add(1, Ordering::SeqCst);
                invalidate_load(1, &caches[0]).await.unwrap();
            }
            Step::Start(_) => {}
        }
    }
    for (gate, task) in running.into_iter().flatten() {
        gate.release.notify_one();
        task.await.unwrap();
    }
    let latest = 1000 + source.version.load(Ordering::SeqCst);
    for cache in &caches {
        let seen = load(1, cache, &source, &open_gate(), &probe).await;
        prop_assert_eq!(seen, latest, "a stale value was stored; steps {:?}", steps);
    }
    Ok(())
}

#[test]
fn no_interleaving_of_computations_and_writes_stores_a_stale_value() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for backend in backends() {
        let case = AtomicU64::new(0);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(48));
        runner
            .run(&steps(), |steps| {
                let namespace = format!("case{}", case.fetch_add(1, Ordering::SeqCst));
                runtime.block_on(play(&backend, &namespace, &steps))
            })
            .unwrap();
    }
}

#[derive(Debug, PartialEq)]
struct LoadError;

/// Like `load`, with `lock`: callers wait for another process's computation. Fails when the
/// gate says so.
#[redis_cached(ttl = "1m", key = "locked:<id>", cache = cache, lock(wait = "20s", lease = "30s"))]
async fn load_locked(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] gate: &Gate,
    #[cache(skip)] fail: bool,
    #[cache(skip)] probe: &Probe,
) -> Result<u64, LoadError> {
    probe.ran();
    if gate.hold.load(Ordering::SeqCst) {
        gate.read.notify_one();
        gate.release.notified().await;
    }
    if fail { Err(LoadError) } else { Ok(id * 10) }
}

#[redis_cached(ttl = "1m", key = "short_wait:<id>", cache = cache, lock(wait = "300ms"))]
async fn load_short_wait(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] gate: &Gate,
    #[cache(skip)] probe: &Probe,
) -> u64 {
    probe.ran();
    if gate.hold.load(Ordering::SeqCst) {
        gate.read.notify_one();
        gate.release.notified().await;
    }
    id * 10
}

/// Starts a held computation on `holder` and returns once it holds the lease.
async fn hold_lease_on(
    holder: &Cache,
    id: u64,
    fail: bool,
    probe: &Arc<Probe>,
) -> (Arc<Gate>, tokio::task::JoinHandle<Result<u64, LoadError>>) {
    let (cache, probe) = (holder.clone(), probe.clone());
    start_held(move |gate| async move { load_locked(id, &cache, &gate, fail, &probe).await }).await
}

/// Starts `call` with a held gate and returns once its body holds (it has the lease).
async fn start_held<T: Send + 'static, F: std::future::Future<Output = T> + Send + 'static>(
    call: impl FnOnce(Arc<Gate>) -> F,
) -> (Arc<Gate>, tokio::task::JoinHandle<T>) {
    let gate = held_gate();
    let task = tokio::spawn(call(gate.clone()));
    gate.read.notified().await;
    (gate, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_a_waiter_gets_the_holders_value_without_computing() {
    for backend in backends() {
        let (holder, waiter) = (backend.cache("lock"), backend.cache("lock"));
        let probe = Arc::new(Probe::default());
        let (gate, held) = hold_lease_on(&holder, 4, false, &probe).await;
        let waiting = start_locked_waiter(&waiter, 4, &probe).await;
        gate.release.notify_one();
        assert_eq!(held.await.unwrap(), Ok(40));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the waiter was not woken");
        assert_eq!(got.unwrap(), Ok(40));
        assert_eq!(probe.runs(), 1, "only the holder computed");
        assert_eq!(waiter.stats().lock_timeouts, 0);
        if let Backend::Cluster(cluster) = &backend {
            // Sharded pub/sub: only the node of the entry's slot delivers the notice.
            let calls = cluster_command_calls(cluster);
            let count = |command: &str| calls.get(command).copied().unwrap_or(0);
            assert!(
                count("spublish") > 0 && count("ssubscribe") > 0,
                "{calls:?}"
            );
            assert_eq!(count("publish") + count("subscribe"), 0, "{calls:?}");
        }
    }
}

/// Calls per command (`INFO commandstats`, commands run by scripts included) summed over
/// every node of `cluster`.
fn cluster_command_calls(cluster: &RedisCluster) -> std::collections::HashMap<String, u64> {
    let mut calls = std::collections::HashMap::new();
    for node in cluster.nodes() {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut node.connection())
            .unwrap();
        for line in info.lines() {
            let Some((name, rest)) = line
                .strip_prefix("cmdstat_")
                .and_then(|line| line.split_once(':'))
            else {
                continue;
            };
            let count: u64 = rest
                .strip_prefix("calls=")
                .and_then(|rest| rest.split(',').next())
                .and_then(|count| count.parse().ok())
                .unwrap_or(0);
            *calls.entry(name.to_owned()).or_default() += count;
        }
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_a_holders_error_lets_a_waiter_take_over_at_once() {
    for backend in backends() {
        let (holder, waiter) = (backend.cache("lock_err"), backend.cache("lock_err"));
        let probe = Arc::new(Probe::default());
        let (gate, held) = hold_lease_on(&holder, 5, true, &probe).await;
        let waiting = start_locked_waiter(&waiter, 5, &probe).await;
        gate.release.notify_one();
        assert_eq!(held.await.unwrap(), Err(LoadError));
        // Far sooner than the 20 s wait bound: the release is announced.
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the waiter did not take over");
        assert_eq!(got.unwrap(), Ok(50));
        assert_eq!(probe.runs(), 2);
        waiter.writes_done().await;
        assert_eq!(
            waiter.stats().fills,
            1,
            "the waiter took the lease and stored its value"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_a_waiter_computes_itself_after_its_wait_bound() {
    for backend in backends() {
        let (holder, waiter) = (backend.cache("lock_bound"), backend.cache("lock_bound"));
        let probe = Arc::new(Probe::default());
        let (cache, held_probe) = (holder.clone(), probe.clone());
        let (gate, held) =
            start_held(
                move |gate| async move { load_short_wait(6, &cache, &gate, &held_probe).await },
            )
            .await;
        assert_eq!(load_short_wait(6, &waiter, &open_gate(), &probe).await, 60);
        assert_eq!(
            waiter.stats().lock_timeouts,
            1,
            "it waited its bound, then computed"
        );
        waiter.writes_done().await;
        assert_eq!(
            waiter.stats().fills,
            0,
            "without the lease it does not store"
        );
        gate.release.notify_one();
        assert_eq!(held.await.unwrap(), 60);
    }
}

/// Returns once `cache` has a call waiting on another process's lease. The count is the only
/// outside view of it, so it is checked every millisecond, for at most 10 s.
async fn waiting_for_lease(cache: &Cache) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cache.stats().lock_waits == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no call started waiting for the lease"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
}

#[redis_cached(ttl = "1m", key = "panicking:<id>", cache = cache, lock(wait = "20s", lease = "30s"))]
async fn load_or_panic(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] gate: &Gate,
    #[cache(skip)] probe: &Probe,
) -> u64 {
    probe.ran();
    if gate.hold.load(Ordering::SeqCst) {
        gate.read.notify_one();
        gate.release.notified().await;
        panic!("the loader panicked (this panic is part of the test)");
    }
    id * 10
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_a_holders_panic_releases_the_lease_and_a_waiter_takes_over() {
    for backend in backends() {
        let (holder, waiter) = (backend.cache("lock_panic"), backend.cache("lock_panic"));
        let probe = Arc::new(Probe::default());
        let (cache, held_probe) = (holder.clone(), probe.clone());
        let (gate, held) =
            start_held(
                move |gate| async move { load_or_panic(8, &cache, &gate, &held_probe).await },
            )
            .await;
        let waiting = tokio::spawn({
            let (cache, probe) = (waiter.clone(), probe.clone());
            async move { load_or_panic(8, &cache, &open_gate(), &probe).await }
        });
        waiting_for_lease(&waiter).await;
        gate.release.notify_one();
        assert!(
            held.await.unwrap_err().is_panic(),
            "the panic reaches its caller"
        );
        // Far sooner than the 20 s wait and the 30 s lease: the lease is released on panic.
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the waiter did not take over");
        assert_eq!(got.unwrap(), 80);
        assert_eq!(probe.runs(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_an_invalidation_wakes_the_waiters_at_once() {
    for backend in backends() {
        let (holder, waiter) = (
            backend.cache("lock_invalidated"),
            backend.cache("lock_invalidated"),
        );
        let probe = Arc::new(Probe::default());
        let (gate, held) = hold_lease_on(&holder, 9, false, &probe).await;
        let waiting = start_locked_waiter(&waiter, 9, &probe).await;
        // The holder's computation is now stale: its fill will be rejected, so waiting for it
        // (up to 20 s) would be pointless. The waiter takes the freed lease instead.
        invalidate_load_locked(9, &holder).await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the waiter was not woken");
        assert_eq!(got.unwrap(), Ok(90));
        waiter.writes_done().await;
        assert_eq!(waiter.stats().fills, 1);
        gate.release.notify_one();
        assert_eq!(held.await.unwrap(), Ok(90));
        holder.writes_done().await;
        assert_eq!(holder.stats().rejected_fills, 1);
    }
}

/// Starts a `lock` caller of `load_locked(id)` on `waiter` and returns once it waits on the
/// other process's lease (it is woken by the fill or release, not by a poll).
async fn start_locked_waiter(
    waiter: &Cache,
    id: u64,
    probe: &Arc<Probe>,
) -> tokio::task::JoinHandle<Result<u64, LoadError>> {
    let waiting = tokio::spawn({
        let (cache, probe) = (waiter.clone(), probe.clone());
        async move { load_locked(id, &cache, &open_gate(), false, &probe).await }
    });
    waiting_for_lease(waiter).await;
    waiting
}

/// PUBLISH rights are not write rights: a message on an entry's fill channel wakes its
/// waiters, which then read the entry; the message's bytes are never taken for a value, even a
/// well-formed entry of the same function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_message_never_stands_in_for_a_stored_value() {
    let server = RedisServer::start().expect("the test suite needs redis-server");
    let backend = Backend::Redis(server);
    let (holder, waiter) = (backend.cache("forged"), backend.cache("forged"));
    let Backend::Redis(server) = &backend else {
        unreachable!()
    };
    let probe = Arc::new(Probe::default());
    // A real entry of the same function, for another id: what a forger would replay.
    assert_eq!(
        load_locked(8, &holder, &open_gate(), false, &probe).await,
        Ok(80)
    );
    let mut connection = server.connection();
    let forged: Vec<u8> = redis::cmd("GET")
        .arg(holder.full_key(&load_locked_cache_key(8)))
        .query(&mut connection)
        .unwrap();

    let (gate, held) = hold_lease_on(&holder, 7, false, &probe).await;
    let waiting = start_locked_waiter(&waiter, 7, &probe).await;
    let channel = format!("{}:fill", holder.full_key(&load_locked_cache_key(7)));
    // Delivered once the waiter's process has subscribed (PUBLISH counts the receivers).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&forged)
            .query(&mut connection)
            .unwrap();
        if receivers > 0 {
            // And a few more times while it waits, whatever it was doing at the first.
            for _ in 0..20 {
                tokio::task::yield_now().await;
                let _: i64 = redis::cmd("PUBLISH")
                    .arg(&channel)
                    .arg(&forged)
                    .query(&mut connection)
                    .unwrap();
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter never subscribed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    gate.release.notify_one();
    assert_eq!(held.await.unwrap(), Ok(70));
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("the waiter was not woken by the real fill");
    assert_eq!(
        got.unwrap(),
        Ok(70),
        "the stored value, not the published bytes"
    );
}

/// A `lock` waiter whose connection goes silent is not stranded: once other calls find the
/// connection dead and replace it, the waiter's subscription is made again on the new one and
/// it is woken by the holder's fill, long before its 20 s wait bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_waiter_survives_the_replacement_of_its_connection() {
    let server = RedisServer::start().expect("the test suite needs redis-server");
    let proxy = redis_memo_testkit::TcpProxy::start(server.port()).unwrap();
    let holder = Cache::builder()
        .namespace("rewire")
        .redis_url(server.url())
        .build()
        .unwrap();
    let waiter = Cache::builder()
        .namespace("rewire")
        .redis_url(proxy.url())
        .op_timeout(std::time::Duration::from_millis(100))
        .build()
        .unwrap();
    let probe = Arc::new(Probe::default());
    let (gate, held) = hold_lease_on(&holder, 9, false, &probe).await;
    let waiting = start_locked_waiter(&waiter, 9, &probe).await;

    proxy.freeze_existing();
    // Other calls of the waiting process time out on the silent connection, which is replaced.
    for id in 100..110 {
        assert_eq!(
            load_locked(id, &waiter, &open_gate(), false, &probe).await,
            Ok(id * 10)
        );
    }
    gate.release.notify_one();
    assert_eq!(held.await.unwrap(), Ok(90));
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("the waiter was stranded on its old connection");
    assert_eq!(got.unwrap(), Ok(90), "the holder's value, not its own");
}

/// Subscriptions and unsubscriptions of a process take turns under one lock; an unsubscription
/// sent on a connection that went silent must not hold that lock for good, or no `lock` waiter
/// of the process could subscribe again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscription_on_a_silent_connection_does_not_block_later_waiters() {
    let server = RedisServer::start().expect("the test suite needs redis-server");
    let proxy = redis_memo_testkit::TcpProxy::start(server.port()).unwrap();
    let holder = Cache::builder()
        .namespace("unsub")
        .redis_url(server.url())
        .build()
        .unwrap();
    let waiter = Cache::builder()
        .namespace("unsub")
        .redis_url(proxy.url())
        .op_timeout(std::time::Duration::from_millis(100))
        .build()
        .unwrap();
    let probe = Arc::new(Probe::default());
    let (first_gate, first_held) = hold_lease_on(&holder, 11, false, &probe).await;
    let first_waiter = start_locked_waiter(&waiter, 11, &probe).await;

    proxy.freeze_existing();
    // The waiter goes away: its unsubscription is sent on the silent connection.
    first_waiter.abort();
    assert!(first_waiter.await.unwrap_err().is_cancelled());
    // Other calls find the connection dead; it is replaced.
    for id in 200..210 {
        assert_eq!(
            load_locked(id, &waiter, &open_gate(), false, &probe).await,
            Ok(id * 10)
        );
    }
    first_gate.release.notify_one();
    assert_eq!(first_held.await.unwrap(), Ok(110));
    // Until the breaker those timeouts opened has let calls through again and one was a hit
    // (the breaker's cooldown has no event to wait for).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let hits = waiter.stats().hits;
    while waiter.stats().hits == hits {
        assert!(
            std::time::Instant::now() < deadline,
            "caching did not resume"
        );
        load_locked(300, &waiter, &open_gate(), false, &probe)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // A new waiter of the process must be able to subscribe, and be woken by the fill.
    let (gate, held) = hold_lease_on(&holder, 12, false, &probe).await;
    let waits_before = waiter.stats().lock_waits;
    let second_waiter = tokio::spawn({
        let (cache, probe) = (waiter.clone(), probe.clone());
        async move { load_locked(12, &cache, &open_gate(), false, &probe).await }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while waiter.stats().lock_waits == waits_before {
        assert!(std::time::Instant::now() < deadline, "no call waited");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    // Its subscription is in place once PUBLISH reaches a receiver.
    let channel = format!("{}:fill", holder.full_key(&load_locked_cache_key(12)));
    let mut connection = server.connection();
    loop {
        let receivers: i64 = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query::<(String, i64)>(&mut connection)
            .unwrap()
            .1;
        if receivers > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new waiter never subscribed: the lock was still held"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    gate.release.notify_one();
    assert_eq!(held.await.unwrap(), Ok(120));
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), second_waiter)
        .await
        .expect("the new waiter was not woken");
    assert_eq!(got.unwrap(), Ok(120));
}

/// Its last act holds every request sent from now on in the proxy: its fill among them.
#[redis_cached(ttl = "1m", key = "held_fill:<id>", cache = cache)]
async fn holds_requests_when_done(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] proxy: &TcpProxy,
) -> u64 {
    proxy.hold_requests();
    id
}

/// A miss returns once its fill is sent, without its answer; `writes_done` waits for that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_returns_without_waiting_for_its_fill_s_answer() {
    let server = RedisServer::start().unwrap();
    let proxy = TcpProxy::start(server.port()).unwrap();
    let cache = Cache::builder()
        .redis_url(proxy.url())
        .namespace("held_fill")
        .op_timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    cache.ping().await.unwrap();
    let call = holds_requests_when_done(1, &cache, &proxy);
    // Well within the operation timeout: a call that waited for the held fill would not end.
    let returned = tokio::time::timeout(std::time::Duration::from_secs(4), call).await;
    assert_eq!(returned, Ok(1), "returned while its fill is held");
    assert!(
        proxy.wait_for_held_request(std::time::Duration::from_secs(5)),
        "the fill was sent"
    );
    assert_eq!(cache.stats().fills, 0, "and not answered yet");
    proxy.release_requests();
    cache.writes_done().await;
    assert_eq!(cache.stats().fills, 1, "{:?}", cache.stats());
    assert_eq!(holds_requests_when_done(1, &cache, &proxy).await, 1);
    assert_eq!(cache.stats().hits, 1, "stored");
}

/// Tagged, its body held by `gate` until released.
#[redis_cached(ttl = "1m", key = "tagged_doc:<id>", tags = ["docs"], cache = cache)]
async fn load_tagged(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] gate: &Gate) -> u64 {
    gate.read.notify_one();
    gate.release.notified().await;
    id
}

/// Redis loses its scripts (`SCRIPT FLUSH`, as a restart or a failover to a fresh replica
/// does) while a computation holds its lease, after its acquire loaded them: its fill and the
/// lengthening of its tag's version key each meet `NOSCRIPT`, load them again and go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_lost_while_computing_are_loaded_again_by_the_fill_and_the_tag_extension() {
    let server = RedisServer::start().unwrap();
    let cache = Cache::builder()
        .redis_url(server.url())
        .namespace("scripts")
        .build()
        .unwrap();
    let (gate, task) = start_held(|gate| {
        let cache = cache.clone();
        async move { load_tagged(1, &cache, &gate).await }
    })
    .await;
    let mut raw = server.connection();
    let () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut raw).unwrap();
    // The tag's version key, made before the body ran (for twice the ttl), runs short: the
    // fill's extension must lengthen it.
    let tag_key = "scripts:#tag:{docs}";
    let shortened: i64 = redis::cmd("PEXPIRE")
        .arg(tag_key)
        .arg(5_000)
        .query(&mut raw)
        .unwrap();
    assert_eq!(shortened, 1, "the tag's key exists");
    gate.release.notify_one();
    assert_eq!(task.await.unwrap(), 1);
    cache.writes_done().await;
    let pttl: i64 = redis::cmd("PTTL").arg(tag_key).query(&mut raw).unwrap();
    assert!(
        pttl > 60_000,
        "the tag's key was lengthened: {pttl} ms left"
    );
    let stored: Option<Vec<u8>> = redis::cmd("GET")
        .arg(cache.full_key(&load_tagged_cache_key(1)))
        .query(&mut raw)
        .unwrap();
    assert!(stored.is_some(), "the fill stored the value");
    assert_eq!(cache.stats().fills, 1, "{:?}", cache.stats());
}
