//! The in-process tier on a real local Redis Cluster (3 primaries, 3 replicas), across OS
//! processes. Process B keeps copies read on each primary's own tracking connection; process A
//! (this test) changes them, or the cluster changes under them (a slot moved, a failover, a
//! primary killed). The README's guarantee: once A's change has returned, B serves its old
//! copy at most until B's next round trip to Redis has completed (here `ping`, which makes one
//! on every primary's tracking connection).
//!
//! This binary is its own child: run with `REDIS_MEMO_CHILD` set, it plays process B, driven
//! line by line on stdin.

#[path = "child/mod.rs"]
mod child;

use child::ProcessB;
use redis_memo::{Cache, redis_cache_put, redis_cached};
use redis_memo_testkit::RedisCluster;
use std::io::BufRead;

const NAMESPACE: &str = "tier";

/// Reads the "database": the cluster key `source:<id>`, outside the cache's namespace.
async fn source(database: &redis::cluster::ClusterClient, id: u64) -> String {
    let mut connection = database.get_async_connection().await.unwrap();
    let value: Option<String> = redis::cmd("GET")
        .arg(format!("source:{id}"))
        .query_async(&mut connection)
        .await
        .unwrap();
    value.unwrap_or_else(|| "missing".to_owned())
}

#[redis_cached(ttl = "10m", key = "profile:<id>", tags = ["team"], local = "10m", cache = cache)]
async fn profile(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] database: &redis::cluster::ClusterClient,
) -> String {
    source(database, id).await
}

/// Tagged, without `local`: its entry is read from Redis on every call, its tag token from
/// B's copy when the tag's node is asked in the same read.
#[redis_cached(ttl = "10m", key = "roster:<id>", tags = ["team"], cache = cache)]
async fn roster(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] database: &redis::cluster::ClusterClient,
) -> String {
    source(database, id).await
}

#[redis_cache_put(profile(id), value = value.to_owned(), cache = cache)]
async fn save_profile(id: u64, value: &str, cache: &Cache) -> Result<(), String> {
    let _ = (id, value, cache);
    Ok(())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if std::env::var("REDIS_MEMO_CHILD").is_ok() {
        runtime.block_on(process_b());
        return;
    }
    runtime.block_on(another_process_s_changes_on_every_primary_drop_the_copy());
    println!("test another_process_s_changes_on_every_primary_drop_the_copy ... ok");
    runtime.block_on(a_moved_slot_a_failover_or_a_killed_primary_leaves_no_stale_copy());
    println!("test a_moved_slot_a_failover_or_a_killed_primary_leaves_no_stale_copy ... ok");
    println!("\ntest result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

/// Process B: a cluster cache with an in-process tier, answering commands on stdin.
/// `get <id>` prints `<value> <tier>` (`local`, `redis` or `computed`); `roster <id>` prints
/// `<value> computed|cached`; `ping` prints `ok` or `error`.
async fn process_b() {
    let urls: Vec<String> = std::env::var("REDIS_MEMO_URLS")
        .expect("REDIS_MEMO_URLS")
        .split(' ')
        .map(str::to_owned)
        .collect();
    let cache = Cache::builder()
        .redis_cluster(urls.clone())
        .namespace(NAMESPACE)
        .local_capacity(1 << 20)
        .op_timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap();
    cache.ping().await.expect("redis answers");
    let database = redis::cluster::ClusterClient::new(urls).unwrap();
    println!("ready");
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["get", id] => {
                let before = cache.stats();
                let value = profile(id.parse().unwrap(), &cache, &database).await;
                let after = cache.stats();
                let tier = if after.local_hits > before.local_hits {
                    "local"
                } else if after.hits > before.hits {
                    "redis"
                } else {
                    "computed"
                };
                format!("{value} {tier}")
            }
            ["roster", id] => {
                let before = cache.stats();
                let value = roster(id.parse().unwrap(), &cache, &database).await;
                let computed = cache.stats().misses > before.misses;
                format!("{value} {}", if computed { "computed" } else { "cached" })
            }
            ["ping"] => match cache.ping().await {
                Ok(()) => "ok".to_owned(),
                Err(_) => "error".to_owned(),
            },
            _ => panic!("unknown command {line:?}"),
        };
        println!("{answer}");
    }
}

/// Process B, on `cluster`.
fn start_b(cluster: &RedisCluster) -> ProcessB {
    ProcessB::start(&[("REDIS_MEMO_URLS", cluster.urls().join(" "))])
}

fn a_cache(cluster: &RedisCluster) -> Cache {
    Cache::builder()
        .redis_cluster(cluster.urls())
        .namespace(NAMESPACE)
        .op_timeout(std::time::Duration::from_secs(2))
        .build()
        .unwrap()
}

async fn set_source(cluster: &RedisCluster, id: u64, value: &str) {
    let mut connection = cluster.client().get_async_connection().await.unwrap();
    let () = redis::cmd("SET")
        .arg(format!("source:{id}"))
        .arg(value)
        .query_async(&mut connection)
        .await
        .unwrap();
}

/// A changes `id`'s source to `value` and invalidates its entry; once B has made a round
/// trip, B's call computes `value` (`case` names the step in a failure).
async fn invalidated_then_recomputed(
    cluster: &RedisCluster,
    a: &Cache,
    b: &mut ProcessB,
    id: u64,
    value: &str,
    case: &str,
) {
    set_source(cluster, id, value).await;
    assert_eq!(invalidate_profile(id, a).await.ok(), Some(true));
    b.round_trip();
    assert_eq!(
        b.ask(&format!("get {id}")),
        format!("{value} computed"),
        "{case}"
    );
}

/// The index of the primary that serves `key` now.
fn primary_of(cluster: &RedisCluster, key: &str) -> usize {
    cluster
        .primary_of_slot(cluster.slot_of(key).unwrap())
        .unwrap()
}

/// An id of `function` other than `id` whose entry lives on the same primary as `id`'s.
fn other_id_on_the_node_of(cluster: &RedisCluster, function: &str, id: u64) -> u64 {
    let node = primary_of(cluster, &format!("{NAMESPACE}:{{{function}:{id}}}"));
    (1..1000)
        .find(|&other| {
            other != id
                && primary_of(cluster, &format!("{NAMESPACE}:{{{function}:{other}}}")) == node
        })
        .expect("another id on that node")
}

/// One id of `function` per primary: their entries live on three different nodes.
fn one_id_per_primary(cluster: &RedisCluster, function: &str) -> Vec<u64> {
    let mut ids: Vec<(usize, u64)> = Vec::new();
    for id in 1..200 {
        let primary = primary_of(cluster, &format!("{NAMESPACE}:{{{function}:{id}}}"));
        if ids.iter().all(|&(known, _)| known != primary) {
            ids.push((primary, id));
        }
    }
    assert_eq!(ids.len(), 3, "ids on every primary");
    ids.into_iter().map(|(_, id)| id).collect()
}

async fn another_process_s_changes_on_every_primary_drop_the_copy() {
    let cluster = RedisCluster::start().unwrap();
    let a = a_cache(&cluster);
    let mut b = start_b(&cluster);
    for id in one_id_per_primary(&cluster, "profile") {
        set_source(&cluster, id, "v1").await;
        b.holds(id, "v1");

        invalidated_then_recomputed(&cluster, &a, &mut b, id, "v2", &format!("id {id}")).await;

        b.holds(id, "v2");
        assert_eq!(save_profile(id, "v3", &a).await, Ok(()));
        b.round_trip();
        assert_eq!(b.ask(&format!("get {id}")), "v3 redis", "id {id}, a put");

        // A tag invalidation: the token's copy is on the tag's node, which may not be the
        // entry's.
        b.holds(id, "v3");
        set_source(&cluster, id, "v4").await;
        assert_eq!(a.invalidate_tag("team").await.ok(), Some(true));
        b.round_trip();
        assert_eq!(
            b.ask(&format!("get {id}")),
            "v4 computed",
            "id {id}, a tag invalidation"
        );
    }

    // The round trip need not be a `ping`: a call that reads from the entry's node, for
    // another key, completes one on the connection the invalidation comes on.
    let id = one_id_per_primary(&cluster, "profile")[0];
    let neighbour = other_id_on_the_node_of(&cluster, "profile", id);
    set_source(&cluster, id, "w1").await;
    assert_eq!(invalidate_profile(id, &a).await.ok(), Some(true));
    b.round_trip();
    b.holds(id, "w1");
    set_source(&cluster, id, "w2").await;
    assert_eq!(invalidate_profile(id, &a).await.ok(), Some(true));
    assert!(b.ask(&format!("get {neighbour}")).ends_with(" computed"));
    assert_eq!(
        b.ask(&format!("get {id}")),
        "w2 computed",
        "after a read on the same node, no ping"
    );

    // Without `local`, B keeps the tag's token; a call that starts right after A's tag
    // invalidation returned gets a newer value with no `ping` in between, whichever node its
    // entry is on: the token's node is asked in the same read as the entry's.
    for id in one_id_per_primary(&cluster, "roster") {
        set_source(&cluster, id, "r1").await;
        for _ in 0..3 {
            assert!(b.ask(&format!("roster {id}")).starts_with("r1 "));
        }
        for round in 2..8 {
            set_source(&cluster, id, &format!("r{round}")).await;
            assert_eq!(a.invalidate_tag("team").await.ok(), Some(true));
            assert_eq!(
                b.ask(&format!("roster {id}")),
                format!("r{round} computed"),
                "id {id}, right after a tag invalidation, round {round}"
            );
            assert_eq!(b.ask(&format!("roster {id}")), format!("r{round} cached"));
        }
    }
}

async fn a_moved_slot_a_failover_or_a_killed_primary_leaves_no_stale_copy() {
    let mut cluster = RedisCluster::start().unwrap();
    let a = a_cache(&cluster);
    let mut b = start_b(&cluster);
    let id = one_id_per_primary(&cluster, "profile")[0];
    let key = format!("{NAMESPACE}:{{profile:{id}}}");

    // Another key's slot moved away from the entry's node: B's next read there meets
    // `MOVED`, which drops every copy (B cannot tell which were on the moved slots), with no
    // `ping` in between.
    set_source(&cluster, id, "v0").await;
    b.holds(id, "v0");
    let neighbour = other_id_on_the_node_of(&cluster, "profile", id);
    let neighbour_key = format!("{NAMESPACE}:{{profile:{neighbour}}}");
    let other_primary = |cluster: &RedisCluster, from: usize| {
        let topology = cluster.topology().unwrap();
        (0..cluster.nodes().len())
            .find(|&node| {
                node != from
                    && topology
                        .iter()
                        .any(|known| known.primary && known.port == cluster.nodes()[node].port())
            })
            .unwrap()
    };
    let to = other_primary(&cluster, primary_of(&cluster, &key));
    let slot = cluster.slot_of(&neighbour_key).unwrap();
    tokio::task::block_in_place(|| cluster.migrate_slot(slot, to, || {}).unwrap());
    assert!(b.ask(&format!("get {neighbour}")).ends_with(" computed"));
    assert_eq!(
        b.ask(&format!("get {id}")),
        "v0 redis",
        "the copy went with the redirect"
    );

    // The entry's slot moved to another primary; A then invalidates it there.
    set_source(&cluster, id, "v1").await;
    assert_eq!(invalidate_profile(id, &a).await.ok(), Some(true));
    // B may hold v0 still: its copy goes by the next round trip, not before.
    b.round_trip();
    b.holds(id, "v1");
    let from = primary_of(&cluster, &key);
    let to = other_primary(&cluster, from);
    let slot = cluster.slot_of(&key).unwrap();
    tokio::task::block_in_place(|| cluster.migrate_slot(slot, to, || {}).unwrap());
    invalidated_then_recomputed(&cluster, &a, &mut b, id, "v2", "after a slot move").await;

    // A manual failover: the old primary stays up, as a replica, with B's connection to it.
    b.holds(id, "v2");
    let primary = primary_of(&cluster, &key);
    let replica = cluster.replica_of(primary).unwrap();
    tokio::task::block_in_place(|| cluster.failover(replica).unwrap());
    invalidated_then_recomputed(&cluster, &a, &mut b, id, "v3", "after a manual failover").await;

    // The primary killed: its replica takes over, with whatever it had.
    b.holds(id, "v3");
    let primary = primary_of(&cluster, &key);
    tokio::task::block_in_place(|| {
        cluster.kill(primary);
        cluster.wait_settled().unwrap();
    });
    invalidated_then_recomputed(&cluster, &a, &mut b, id, "v4", "after a primary was killed").await;
}
