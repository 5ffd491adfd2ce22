//! Caches built on a connection or cluster client the user made (`redis_connection`,
//! `redis_cluster_client`): the same caching and invalidation as from a URL.

mod support;

use redis_memo::{Cache, redis_cached};
use redis_memo_testkit::{RedisCluster, RedisServer};
use support::Probe;

#[redis_cached(ttl = "1m", key = "user_built:<id>", cache = cache, tags = ["team:<team>"])]
async fn member(
    id: u64,
    team: u32,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> u64 {
    probe.ran();
    id * 100 + u64::from(team)
}

/// Caches, serves, and invalidates by key and by tag.
async fn caches_and_invalidates(cache: &Cache) {
    cache.ping().await.expect("reachable");
    let probe = Probe::default();
    for _ in 0..3 {
        assert_eq!(member(1, 7, cache, &probe).await, 107);
    }
    assert_eq!(probe.runs(), 1, "stored once, then served");
    assert_eq!(invalidate_member(1, cache).await.ok(), Some(true));
    assert_eq!(member(1, 7, cache, &probe).await, 107);
    assert_eq!(probe.runs(), 2, "the invalidated entry was recomputed");
    cache
        .invalidate_tag("team:7")
        .await
        .expect("tag invalidated");
    assert_eq!(member(1, 7, cache, &probe).await, 107);
    assert_eq!(probe.runs(), 3, "the tag's entries were recomputed");
    assert!(cache.stats().hits >= 2 && cache.stats().fail_open == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_on_a_user_built_connection_caches_and_invalidates() {
    let server = RedisServer::start().unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let connection = redis::aio::ConnectionManager::new(client).await.unwrap();
    let cache = Cache::builder()
        .redis_connection(connection)
        .namespace("user_built")
        .build()
        .unwrap();
    caches_and_invalidates(&cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_on_a_user_built_cluster_client_caches_and_invalidates() {
    let cluster = RedisCluster::start().unwrap();
    let cache = Cache::builder()
        .redis_cluster_client(cluster.client())
        .namespace("user_built_cluster")
        .build()
        .unwrap();
    caches_and_invalidates(&cache).await;
}
