//! The in-process tier within one process, on a real Redis: what a call costs in commands
//! once copies are there, how long copies last, what drops them all, and that nothing is kept
//! without `local_capacity`. (Across processes: `tests/local_tier.rs`.)

mod support;

use redis_memo::{Cache, redis_cached};
use redis_memo_testkit::{RedisServer, TcpProxy};
use std::collections::HashMap;
use std::time::Duration;
use support::Probe;

/// An entry kept in process for ten minutes.
#[redis_cached(ttl = "10m", key = "kept:<id>", local = "10m", cache = cache)]
async fn kept(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> u64 {
    probe.ran();
    id * 10
}

/// An entry kept in process for 300 ms, with a tag (whose token copy lasts a minute).
#[redis_cached(ttl = "10m", key = "brief:<id>", local = "300ms", tags = ["crew"], cache = cache)]
async fn brief(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> u64 {
    probe.ran();
    id * 10
}

/// Tagged, without `local`: only its tag's token is kept in process.
#[redis_cached(ttl = "10m", key = "roster:<id>", tags = ["crew"], cache = cache)]
async fn roster(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> u64 {
    probe.ran();
    id * 10
}

fn tiered_cache(url: &str, namespace: &str) -> Cache {
    Cache::builder()
        .redis_url(url)
        .namespace(namespace)
        .local_capacity(1 << 20)
        .op_timeout(Duration::from_millis(300))
        .build()
        .unwrap()
}

/// Calls per command since the server started (`INFO commandstats`), without `info` itself.
fn command_counts(server: &RedisServer) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.connection())
        .unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .filter(|(name, _)| name != "info")
        .collect()
}

/// The commands `call` sent, with their counts (after `cache`'s earlier fills are answered).
async fn commands_of<F: Future>(
    server: &RedisServer,
    cache: &Cache,
    call: F,
) -> HashMap<String, u64> {
    cache.writes_done().await;
    let before = command_counts(server);
    call.await;
    let after = command_counts(server);
    after
        .into_iter()
        .filter_map(|(name, calls)| {
            let sent = calls - before.get(&name).copied().unwrap_or(0);
            (sent > 0).then_some((name, sent))
        })
        .collect()
}

/// Calls `call` until the in-process tier answers one (a miss stores the entry, a read keeps
/// its copy; the fill's own drop of older copies may cost one more read).
async fn until_local<F: AsyncFn()>(cache: &Cache, call: F) {
    for _ in 0..5 {
        let before = cache.stats().local_hits;
        call().await;
        cache.writes_done().await;
        if cache.stats().local_hits > before {
            return;
        }
    }
    panic!("no copy answered: {:?}", cache.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_hit_of_a_function_without_local_is_one_get() {
    let server = RedisServer::start().unwrap();
    let cache = tiered_cache(&server.url(), "alone_a");
    cache.ping().await.unwrap();
    let probe = Probe::default();
    // A miss (which creates the tag's key, so no token copy yet), a hit that keeps the
    // token, then hits that need only the entry.
    assert_eq!(roster(1, &cache, &probe).await, 10);
    cache.writes_done().await;
    for _ in 0..2 {
        assert_eq!(roster(1, &cache, &probe).await, 10);
    }
    let before = cache.stats();
    let sent = commands_of(&server, &cache, roster(1, &cache, &probe)).await;
    assert_eq!(
        sent,
        HashMap::from([("get".to_owned(), 1)]),
        "one GET, nothing else"
    );
    let after = cache.stats();
    assert_eq!(after.hits, before.hits + 1, "a hit");
    assert_eq!(after.local_hits, before.local_hits, "answered by Redis");
    assert_eq!(probe.runs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_tokens_are_kept_a_minute_whatever_the_function_s_local_age() {
    let server = RedisServer::start().unwrap();
    let cache = tiered_cache(&server.url(), "alone_f");
    cache.ping().await.unwrap();
    let probe = Probe::default();
    until_local(&cache, async || {
        assert_eq!(brief(1, &cache, &probe).await, 10)
    })
    .await;
    // The entry's copy is past its 300 ms; the tag token's is not (a minute at least).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = cache.stats();
    let sent = commands_of(&server, &cache, brief(1, &cache, &probe)).await;
    assert_eq!(
        sent.get("get"),
        Some(&1),
        "the entry is read again: {sent:?}"
    );
    assert_eq!(sent.get("mget"), None, "its tag's token is not: {sent:?}");
    let after = cache.stats();
    assert_eq!(
        after.local_hits, before.local_hits,
        "the entry's copy was past its age"
    );
    assert_eq!(after.hits, before.hits + 1);
    assert_eq!(probe.runs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_lasts_at_most_its_local_age() {
    let server = RedisServer::start().unwrap();
    let cache = tiered_cache(&server.url(), "alone_c");
    cache.ping().await.unwrap();
    let probe = Probe::default();
    until_local(&cache, async || {
        assert_eq!(brief(2, &cache, &probe).await, 20)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = cache.stats();
    assert_eq!(brief(2, &cache, &probe).await, 20);
    let after = cache.stats();
    assert_eq!(
        after.local_hits, before.local_hits,
        "past 300 ms, no copy answers"
    );
    assert_eq!(after.hits, before.hits + 1, "Redis does");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_meets_silence_drops_every_copy() {
    let server = RedisServer::start().unwrap();
    let proxy = TcpProxy::start(server.port()).unwrap();
    let cache = tiered_cache(&proxy.url(), "alone_s");
    cache.ping().await.unwrap();
    let probe = Probe::default();
    until_local(&cache, async || {
        assert_eq!(kept(1, &cache, &probe).await, 10)
    })
    .await;
    // Both connections go silent (no close, no reset): a half-open path.
    proxy.freeze_existing();
    let before = cache.stats();
    assert_eq!(kept(2, &cache, &probe).await, 20, "computed, uncached");
    assert_eq!(
        cache.stats().fail_open,
        before.fail_open + 1,
        "{:?}",
        cache.stats()
    );
    // The copy of entry 1 could have been changed unseen while the connection was silent.
    let before = cache.stats();
    assert_eq!(kept(1, &cache, &probe).await, 10);
    assert_eq!(
        cache.stats().local_hits,
        before.local_hits,
        "no copy answers after the silence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_without_local_capacity_keeps_nothing() {
    let server = RedisServer::start().unwrap();
    let cache = Cache::builder()
        .redis_url(server.url())
        .namespace("alone_e")
        .build()
        .unwrap();
    let probe = Probe::default();
    for _ in 0..4 {
        assert_eq!(kept(3, &cache, &probe).await, 30);
        assert_eq!(brief(3, &cache, &probe).await, 30);
    }
    let stats = cache.stats();
    assert_eq!(probe.runs(), 2);
    assert_eq!(stats.hits, 6, "{stats:?}");
    assert_eq!((stats.local_hits, stats.local_bytes), (0, 0), "{stats:?}");
}

/// A tag's version key is lengthened only when it runs short (to twice what its entries
/// need), so a fill under the tag usually leaves it alone, and other processes' copies of
/// its token with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_under_a_tag_leaves_the_tag_s_token_copy() {
    let server = RedisServer::start().unwrap();
    let cache = tiered_cache(&server.url(), "alone_x");
    cache.ping().await.unwrap();
    let probe = Probe::default();
    assert_eq!(roster(1, &cache, &probe).await, 10);
    cache.writes_done().await;
    for _ in 0..2 {
        assert_eq!(roster(1, &cache, &probe).await, 10);
    }
    // Another entry under the tag is computed and stored.
    assert_eq!(roster(2, &cache, &probe).await, 20);
    cache.writes_done().await;
    cache.ping().await.unwrap();
    let sent = commands_of(&server, &cache, roster(1, &cache, &probe)).await;
    assert_eq!(
        sent,
        HashMap::from([("get".to_owned(), 1)]),
        "the token's copy is kept"
    );

    // The tag's key: made for twice the entries' 10 minutes, lengthened again when short.
    let tag_key = "alone_x:#tag:{crew}";
    let pttl = |server: &RedisServer| -> i64 {
        redis::cmd("PTTL")
            .arg(tag_key)
            .query(&mut server.connection())
            .unwrap()
    };
    let made = pttl(&server);
    assert!((1_100_000..=1_200_000).contains(&made), "{made} ms");
    let () = redis::cmd("PEXPIRE")
        .arg(tag_key)
        .arg(5_000)
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(roster(3, &cache, &probe).await, 30);
    cache.writes_done().await;
    let lengthened = pttl(&server);
    assert!(
        (1_100_000..=1_200_000).contains(&lengthened),
        "{lengthened} ms"
    );
    assert_eq!(probe.runs(), 3);
}
