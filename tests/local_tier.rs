//! The in-process tier across OS processes, on a real Redis. Process B answers from its
//! in-process copies; process A (this test) changes what B holds (an invalidation, a put, an
//! evict, a tag invalidation), or Redis loses what B's copies were kept coherent by (B's
//! connections killed, `FLUSHALL`, a restart). The README's guarantee: once A's change has
//! returned, B serves its old copy at most until B's next round trip to Redis has completed
//! (here `ping`, which makes one on the tier's connection too). B's byte bound holds.
//!
//! This binary is its own child: run with `REDIS_MEMO_CHILD` set, it plays process B, driven
//! line by line on stdin.

#[path = "child/mod.rs"]
mod child;

use child::ProcessB;
use redis_memo::{Cache, redis_cache_evict, redis_cache_put, redis_cached};
use redis_memo_testkit::{RedisServer, TcpProxy};
use std::io::BufRead;

const NAMESPACE: &str = "tier";

/// Reads the "database": the Redis key `source:<id>`, outside the cache's namespace.
async fn source(database: &redis::Client, id: u64) -> String {
    let mut connection = database.get_multiplexed_async_connection().await.unwrap();
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
    #[cache(skip)] database: &redis::Client,
) -> String {
    source(database, id).await
}

/// Tagged, without `local`: its entry is read from Redis on every call, its tag token from
/// B's copy.
#[redis_cached(ttl = "10m", key = "roster:<id>", tags = ["team"], cache = cache)]
async fn roster(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] database: &redis::Client,
) -> String {
    source(database, id).await
}

#[redis_cache_put(profile(id), value = value.to_owned(), cache = cache)]
async fn save_profile(id: u64, value: &str, cache: &Cache) -> Result<(), String> {
    let _ = (id, value, cache);
    Ok(())
}

#[redis_cache_evict(profile(id), cache = cache)]
async fn drop_profile(id: u64, cache: &Cache) -> Result<(), String> {
    let _ = (id, cache);
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
    runtime.block_on(another_process_s_changes_drop_the_copy_by_the_next_round_trip());
    println!("test another_process_s_changes_drop_the_copy_by_the_next_round_trip ... ok");
    runtime.block_on(a_lost_connection_a_flush_or_a_restart_drops_every_copy());
    println!("test a_lost_connection_a_flush_or_a_restart_drops_every_copy ... ok");
    runtime.block_on(the_tier_stays_within_its_byte_bound());
    println!("test the_tier_stays_within_its_byte_bound ... ok");
    runtime.block_on(a_reply_that_crossed_a_tag_invalidation_is_read_again());
    println!("test a_reply_that_crossed_a_tag_invalidation_is_read_again ... ok");
    println!("\ntest result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

/// Process B: a cache with an in-process tier, answering commands on stdin.
/// `get <id>` prints `<value> <tier>` (`local`, `redis` or `computed`); `ping` prints `ok` or
/// `error`; `fill <from> <to>` reads those ids; `bytes` prints what the tier holds.
async fn process_b() {
    let url = std::env::var("REDIS_MEMO_URL").expect("REDIS_MEMO_URL");
    // The cache may reach Redis through a proxy; the "database" never does.
    let cache_url = std::env::var("REDIS_MEMO_CACHE_URL").unwrap_or_else(|_| url.clone());
    let capacity: u64 = std::env::var("REDIS_MEMO_LOCAL_BYTES")
        .expect("REDIS_MEMO_LOCAL_BYTES")
        .parse()
        .unwrap();
    let cache = Cache::builder()
        .redis_url(&cache_url)
        .namespace(NAMESPACE)
        .local_capacity(capacity)
        // Generous: a request held by the test's proxy must not time out.
        .op_timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    cache.ping().await.expect("redis answers");
    let database = redis::Client::open(url).unwrap();
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
            ["fill", from, to] => {
                for id in from.parse::<u64>().unwrap()..to.parse().unwrap() {
                    profile(id, &cache, &database).await;
                }
                "filled".to_owned()
            }
            ["bytes"] => cache.stats().local_bytes.to_string(),
            _ => panic!("unknown command {line:?}"),
        };
        println!("{answer}");
    }
}

/// Process B, its cache connected to `cache_url` (a proxy in front of `server`, say), its
/// tier bounded to `local_bytes`.
fn start_b(server: &RedisServer, cache_url: &str, local_bytes: u64) -> ProcessB {
    ProcessB::start(&[
        ("REDIS_MEMO_URL", server.url()),
        ("REDIS_MEMO_CACHE_URL", cache_url.to_owned()),
        ("REDIS_MEMO_LOCAL_BYTES", local_bytes.to_string()),
    ])
}

async fn set_source(server: &RedisServer, id: u64, value: &str) {
    let mut connection = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("SET")
        .arg(format!("source:{id}"))
        .arg(value)
        .query_async(&mut connection)
        .await
        .unwrap();
}

async fn another_process_s_changes_drop_the_copy_by_the_next_round_trip() {
    let server = RedisServer::start().unwrap();
    let a = Cache::builder()
        .redis_url(server.url())
        .namespace(NAMESPACE)
        .build()
        .unwrap();
    let mut b = start_b(&server, &server.url(), 1 << 20);
    set_source(&server, 1, "v1").await;
    b.holds(1, "v1");

    // An invalidation.
    set_source(&server, 1, "v2").await;
    assert_eq!(invalidate_profile(1, &a).await.ok(), Some(true));
    b.round_trip();
    assert_eq!(b.ask("get 1"), "v2 computed", "after `invalidate_profile`");

    // A put: B's next call reads A's value from Redis.
    b.holds(1, "v2");
    assert_eq!(save_profile(1, "v3", &a).await, Ok(()));
    b.round_trip();
    assert_eq!(b.ask("get 1"), "v3 redis", "after a put");

    // An evict.
    b.holds(1, "v3");
    set_source(&server, 1, "v4").await;
    assert_eq!(drop_profile(1, &a).await, Ok(()));
    b.round_trip();
    assert_eq!(b.ask("get 1"), "v4 computed", "after an evict");

    // A tag invalidation: B's copy of the tag's token goes.
    b.holds(1, "v4");
    set_source(&server, 1, "v5").await;
    assert_eq!(a.invalidate_tag("team").await.ok(), Some(true));
    b.round_trip();
    assert_eq!(b.ask("get 1"), "v5 computed", "after a tag invalidation");

    // A pattern invalidation.
    b.holds(1, "v5");
    set_source(&server, 1, "v6").await;
    assert_eq!(a.invalidate_matching("profile:*").await.ok(), Some(1));
    b.round_trip();
    assert_eq!(b.ask("get 1"), "v6 computed", "after `invalidate_matching`");

    // The round trip need not be a `ping`: a call that reads from Redis, for another key,
    // completes one on the tracking connection.
    b.holds(1, "v6");
    set_source(&server, 1, "v7").await;
    assert_eq!(invalidate_profile(1, &a).await.ok(), Some(true));
    assert!(b.ask("get 9").ends_with(" computed"));
    assert_eq!(
        b.ask("get 1"),
        "v7 computed",
        "after a read of another key, no ping"
    );

    // Without `local`, B keeps only the tag's token; a call that starts after A's tag
    // invalidation returned gets a newer value with no round trip in between: the entry's
    // reply comes after the invalidation on the same connection, and the token's copy is
    // checked again once the reply is in.
    set_source(&server, 2, "r1").await;
    for _ in 0..3 {
        assert!(b.ask("roster 2").starts_with("r1 "));
    }
    for round in 2..12 {
        set_source(&server, 2, &format!("r{round}")).await;
        assert_eq!(a.invalidate_tag("team").await.ok(), Some(true));
        assert_eq!(
            b.ask("roster 2"),
            format!("r{round} computed"),
            "right after a tag invalidation, round {round}"
        );
        assert_eq!(b.ask("roster 2"), format!("r{round} cached"));
    }
}

async fn a_lost_connection_a_flush_or_a_restart_drops_every_copy() {
    let mut server = RedisServer::start().unwrap();
    let mut b = start_b(&server, &server.url(), 1 << 20);
    let raw = |server: &RedisServer| server.connection();

    // B's connections killed, then the entry removed behind its back: no invalidation can
    // reach B for it, so only dropping every copy on the disconnection keeps B right.
    set_source(&server, 1, "v1").await;
    b.holds(1, "v1");
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut raw(&server))
        .unwrap();
    assert!(killed >= 2, "B's connections ({killed} killed)");
    set_source(&server, 1, "v2").await;
    let () = redis::cmd("DEL")
        .arg(format!("{NAMESPACE}:{{profile:1}}"))
        .query(&mut raw(&server))
        .unwrap();
    b.round_trip();
    assert_eq!(b.ask("get 1"), "v2 computed", "after a disconnection");

    // FLUSHALL: one invalidation without keys.
    b.holds(1, "v2");
    let () = redis::cmd("FLUSHALL").query(&mut raw(&server)).unwrap();
    set_source(&server, 1, "v3").await;
    b.round_trip();
    assert_eq!(b.ask("get 1"), "v3 computed", "after FLUSHALL");

    // FLUSHDB: the same, for one database.
    b.holds(1, "v3");
    let () = redis::cmd("FLUSHDB").query(&mut raw(&server)).unwrap();
    set_source(&server, 1, "v3b").await;
    b.round_trip();
    assert_eq!(b.ask("get 1"), "v3b computed", "after FLUSHDB");

    // A restart: everything is gone from Redis, and from B.
    b.holds(1, "v3b");
    server.restart().unwrap();
    set_source(&server, 1, "v4").await;
    b.round_trip();
    assert_eq!(b.ask("get 1"), "v4 computed", "after a restart");
}

async fn the_tier_stays_within_its_byte_bound() {
    let server = RedisServer::start().unwrap();
    let capacity = 64 * 1024;
    let mut b = start_b(&server, &server.url(), capacity);
    let value = "x".repeat(1000);
    for id in 0..500 {
        set_source(&server, id, &value).await;
    }
    // Twice: the first pass stores the entries, the second keeps copies of them.
    for _ in 0..2 {
        assert_eq!(b.ask("fill 0 500"), "filled");
    }
    let bytes: u64 = b.ask("bytes").parse().unwrap();
    assert!(
        bytes > capacity / 2 && bytes <= capacity,
        "{bytes} bytes held, bound {capacity}"
    );
}

/// B's read of an entry, judged with its copy of the tag's token, is held on its way to Redis
/// while A invalidates the tag: the invalidation's push reaches B before the reply, so B must
/// not judge the reply with the copy it used (which a check before sending cannot see).
async fn a_reply_that_crossed_a_tag_invalidation_is_read_again() {
    let server = RedisServer::start().unwrap();
    let proxy = TcpProxy::start(server.port()).unwrap();
    let a = Cache::builder()
        .redis_url(server.url())
        .namespace(NAMESPACE)
        .build()
        .unwrap();
    let mut b = start_b(&server, &proxy.url(), 1 << 20);
    set_source(&server, 3, "r1").await;
    // A miss (it creates the tag's key), a hit that keeps the token's copy, a hit with it.
    for _ in 0..3 {
        assert!(b.ask("roster 3").starts_with("r1 "));
    }
    for round in 2..6 {
        set_source(&server, 3, &format!("r{round}")).await;
        proxy.hold_requests();
        b.send("roster 3");
        assert!(
            proxy.wait_for_held_request(std::time::Duration::from_secs(10)),
            "B sent its read"
        );
        assert_eq!(a.invalidate_tag("team").await.ok(), Some(true));
        proxy.release_requests();
        assert_eq!(
            b.read_line(),
            format!("r{round} computed"),
            "the reply that came after the push, round {round}"
        );
        assert_eq!(b.ask("roster 3"), format!("r{round} cached"));
    }
}
