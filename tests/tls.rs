//! `rediss://` through rustls, against a local `redis-server` with a TLS port and
//! certificates made at test time.

mod support;

use redis_memo::{Cache, TlsCertificates, redis_cached};
use redis_memo_testkit::{RedisCluster, RedisServer, TestCa};
use std::sync::Arc;
use support::{LoadError, Probe, invalidate_lookup, lookup};

fn trusting(ca: &TestCa) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.cert_pem()),
    }
}

fn tls_cache(server: &RedisServer, trusted: &TestCa, namespace: &str) -> Cache {
    Cache::builder()
        // Room for TLS handshakes on a loaded 2-core machine (250 ms was not always).
        .op_timeout(support::OP_TIMEOUT)
        .redis_url(server.tls_url().expect("a TLS server"))
        .tls_certificates(trusting(trusted))
        .namespace(namespace)
        .build()
        .expect("cache")
}

#[redis_cached(ttl = "1m", key = "tagged:<id>", cache = cache, tags = ["group:<group>"])]
async fn tagged(
    id: u64,
    group: u32,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> u64 {
    probe.ran();
    id + u64::from(group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_over_tls_stores_reads_and_invalidates() {
    let ca = TestCa::new().unwrap();
    let server = RedisServer::start_tls(&ca).unwrap();
    let cache = tls_cache(&server, &ca, "tls");
    cache.ping().await.expect("the TLS handshake succeeds");
    let probe = Probe::default();
    for _ in 0..3 {
        assert_eq!(lookup(1, &cache, &probe).await, Ok(10));
    }
    assert_eq!(probe.runs(), 1, "served from Redis over TLS");
    assert!(invalidate_lookup(1, &cache).await.unwrap());
    assert_eq!(lookup(1, &cache, &probe).await, Ok(10));
    assert_eq!(probe.runs(), 2);

    let tagged_probe = Probe::default();
    assert_eq!(tagged(1, 2, &cache, &tagged_probe).await, 3);
    assert_eq!(tagged(1, 2, &cache, &tagged_probe).await, 3);
    invalidate_tagged_by_group(2, &cache).await.unwrap();
    assert_eq!(tagged(1, 2, &cache, &tagged_probe).await, 3);
    assert_eq!(tagged_probe.runs(), 2, "tags work over TLS");
    assert_eq!(cache.stats().fail_open, 0, "no call fell back");

    // The entry really is on the server behind the TLS port.
    let mut admin = server.connection();
    let stored: bool = redis::cmd("EXISTS")
        .arg(cache.full_key(&support::lookup_cache_key(1)))
        .query(&mut admin)
        .unwrap();
    assert!(stored);
}

#[redis_cached(ttl = "1m", key = "slow:<id>", cache = cache, lock(wait = "20s"))]
async fn slow(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] started: &tokio::sync::Notify,
    #[cache(skip)] release: &tokio::sync::Notify,
    #[cache(skip)] probe: &Probe,
) -> Result<u64, LoadError> {
    if probe.ran() == 1 {
        started.notify_one();
        release.notified().await;
    }
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waiters_are_woken_over_tls() {
    let ca = TestCa::new().unwrap();
    let server = RedisServer::start_tls(&ca).unwrap();
    let (holder, waiter) = (
        tls_cache(&server, &ca, "tls_lock"),
        tls_cache(&server, &ca, "tls_lock"),
    );
    let probe = Arc::new(Probe::default());
    let (started, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let held = tokio::spawn({
        let (cache, started, release, probe) = (
            holder.clone(),
            Arc::clone(&started),
            Arc::clone(&release),
            Arc::clone(&probe),
        );
        async move { slow(5, &cache, &started, &release, &probe).await }
    });
    started.notified().await;
    let waiting = tokio::spawn({
        let (cache, probe) = (waiter.clone(), Arc::clone(&probe));
        async move {
            let unused = tokio::sync::Notify::new();
            slow(5, &cache, &unused, &unused, &probe).await
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while waiter.stats().lock_waits == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    release.notify_one();
    assert_eq!(held.await.unwrap(), Ok(5));
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("woken by the fill (pushed over TLS), well before its 20 s wait");
    assert_eq!(got.unwrap(), Ok(5));
    assert_eq!(probe.runs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_another_authority_fails_ping_with_a_clear_error() {
    let (ca, stranger) = (TestCa::new().unwrap(), TestCa::new().unwrap());
    let server = RedisServer::start_tls(&ca).unwrap();
    let cache = tls_cache(&server, &stranger, "tls_wrong_ca");
    let error = cache
        .ping()
        .await
        .expect_err("an untrusted server is refused");
    let message = error.to_string();
    assert!(
        message.contains("invalid peer certificate") && message.contains("UnknownIssuer"),
        "says why: {message}"
    );
    // Calls still work, without the cache (fail-open), and say so in the counters.
    let probe = Probe::default();
    assert_eq!(lookup(2, &cache, &probe).await, Ok(20));
    assert!(cache.stats().fail_open > 0);
}

/// Without `tls_certificates` the system's authorities are trusted: a server signed by a
/// private authority is refused, with the same message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_certificates_the_system_authorities_are_trusted() {
    let ca = TestCa::new().unwrap();
    let server = RedisServer::start_tls(&ca).unwrap();
    let cache = Cache::builder()
        // Room for TLS handshakes on a loaded 2-core machine (250 ms was not always).
        .op_timeout(support::OP_TIMEOUT)
        .redis_url(server.tls_url().expect("a TLS server"))
        .namespace("tls_system_roots")
        .build()
        .unwrap();
    let message = cache
        .ping()
        .await
        .expect_err("a private authority is not a system one")
        .to_string();
    assert!(
        message.contains("invalid peer certificate") && message.contains("UnknownIssuer"),
        "says why: {message}"
    );
}

/// The in-process tier on a TLS cluster: each primary's tracking connection is made over TLS
/// with the same certificates, to the node's TLS port as the cluster names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_tier_tracks_over_tls_on_a_cluster() {
    let ca = TestCa::new().unwrap();
    let cluster = RedisCluster::start_tls(&ca).unwrap();
    let cache = Cache::builder()
        // Room for TLS handshakes on a loaded 2-core machine (250 ms was not always).
        .op_timeout(support::OP_TIMEOUT)
        .redis_cluster(cluster.tls_urls())
        .tls_certificates(trusting(&ca))
        .namespace("tls_tier")
        .local_capacity(1 << 20)
        .local_default(std::time::Duration::from_secs(60))
        .build()
        .expect("cache");
    cache
        .ping()
        .await
        .expect("every primary's tracking connection is up");
    let probe = Probe::default();
    for id in 0..20 {
        assert_eq!(lookup(id, &cache, &probe).await, Ok(id * 10));
        support::until_a_copy_answers(&cache, &probe, id).await;
    }
    let stats = cache.stats();
    assert_eq!(probe.runs(), 20);
    assert!(
        stats.local_hits >= 20 && stats.fail_open == 0,
        "copies kept on every primary: {stats:?}"
    );
    invalidate_lookup(3, &cache).await.unwrap();
    assert_eq!(lookup(3, &cache, &probe).await, Ok(30));
    assert_eq!(probe.runs(), 21, "its own invalidation drops the copy");
}

/// The same over TLS to a cluster: the cluster bus and replication use TLS too, and the cache
/// learns the nodes' TLS ports from the cluster itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_on_a_tls_cluster_stores_reads_invalidates_and_wakes_waiters() {
    let ca = TestCa::new().unwrap();
    let cluster = RedisCluster::start_tls(&ca).unwrap();
    let on_cluster = |namespace: &str| {
        Cache::builder()
            // Room for TLS handshakes on a loaded 2-core machine (250 ms was not always).
            .op_timeout(support::OP_TIMEOUT)
            .redis_cluster(cluster.tls_urls())
            .tls_certificates(trusting(&ca))
            .namespace(namespace)
            .build()
            .expect("cache")
    };
    let cache = on_cluster("tls_cluster");
    cache.ping().await.expect("the TLS handshakes succeed");
    let probe = Probe::default();
    for id in 0..20 {
        assert_eq!(lookup(id, &cache, &probe).await, Ok(id * 10));
        assert_eq!(lookup(id, &cache, &probe).await, Ok(id * 10));
    }
    assert_eq!(
        probe.runs(),
        20,
        "every key a hit the second time, on every primary"
    );
    let tagged_probe = Probe::default();
    assert_eq!(tagged(1, 2, &cache, &tagged_probe).await, 3);
    assert_eq!(tagged(1, 2, &cache, &tagged_probe).await, 3);
    invalidate_tagged_by_group(2, &cache).await.unwrap();
    assert_eq!(tagged(1, 2, &cache, &tagged_probe).await, 3);
    assert_eq!(tagged_probe.runs(), 2, "tags in other slots work over TLS");
    assert_eq!(cache.stats().fail_open, 0, "no call fell back");

    let (holder, waiter) = (
        on_cluster("tls_cluster_lock"),
        on_cluster("tls_cluster_lock"),
    );
    let probe = Arc::new(Probe::default());
    let (started, release) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let held = tokio::spawn({
        let (cache, started, release, probe) = (
            holder.clone(),
            Arc::clone(&started),
            Arc::clone(&release),
            Arc::clone(&probe),
        );
        async move { slow(6, &cache, &started, &release, &probe).await }
    });
    started.notified().await;
    let waiting = tokio::spawn({
        let (cache, probe) = (waiter.clone(), Arc::clone(&probe));
        async move {
            let unused = tokio::sync::Notify::new();
            slow(6, &cache, &unused, &unused, &probe).await
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while waiter.stats().lock_waits == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    release.notify_one();
    assert_eq!(held.await.unwrap(), Ok(6));
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("woken by the shard message over TLS, well before its 20 s wait");
    assert_eq!(got.unwrap(), Ok(6));
    assert_eq!(probe.runs(), 1);

    let stranger = TestCa::new().unwrap();
    let untrusting = Cache::builder()
        // Room for TLS handshakes on a loaded 2-core machine (250 ms was not always).
        .op_timeout(support::OP_TIMEOUT)
        .redis_cluster(cluster.tls_urls())
        .tls_certificates(trusting(&stranger))
        .build()
        .unwrap();
    let error = untrusting
        .ping()
        .await
        .expect_err("an untrusted cluster is refused");
    assert!(
        error
            .to_string()
            .contains("invalid peer certificate: UnknownIssuer"),
        "says why, not only that no node answered: {error}"
    );
}

/// A server that asks clients for a certificate (mutual TLS): the cache presents the one it
/// is given, and without one is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_to_a_server_that_asks_for_one() {
    let ca = TestCa::new().unwrap();
    let server = RedisServer::start_tls_requiring_client_certs(&ca).unwrap();
    let with_certificate = Cache::builder()
        // Room for TLS handshakes on a loaded 2-core machine (250 ms was not always).
        .op_timeout(support::OP_TIMEOUT)
        .redis_url(server.tls_url().unwrap())
        .tls_certificates(TlsCertificates {
            client_tls: Some(ca.client_tls().unwrap()),
            root_cert: Some(ca.cert_pem()),
        })
        .build()
        .unwrap();
    with_certificate
        .ping()
        .await
        .expect("the server accepts the client's certificate");
    let probe = Probe::default();
    assert_eq!(lookup(4, &with_certificate, &probe).await, Ok(40));
    assert_eq!(lookup(4, &with_certificate, &probe).await, Ok(40));
    assert_eq!(probe.runs(), 1);

    // Room for the handshake on a loaded machine: what comes back must be the refusal.
    let without = Cache::builder()
        .redis_url(server.tls_url().unwrap())
        .tls_certificates(trusting(&ca))
        .namespace("mtls_without")
        .op_timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let error = without.ping().await.expect_err("no client certificate");
    assert!(!error.to_string().is_empty(), "{error}");
    assert!(
        !matches!(error, redis_memo::CacheError::Timeout(_)),
        "refused, not timed out: {error}"
    );
}
