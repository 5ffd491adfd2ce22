//! Freshness does not depend on the skew between hosts' clocks: every cache on one Redis reads
//! the time as its own clock corrected to the server's (`TIME`). Two caches here stand for two
//! hosts whose clocks are 20 minutes apart; one manual clock underneath moves them together.

mod support;

use redis_memo::{Cache, Clock, ManualClock, redis_cached};
use redis_memo_testkit::RedisServer;
use std::time::Duration;
use support::Probe;

/// A host's clock: a shared manual clock, shifted. Unlike `ManualClock` itself, it follows the
/// server's time, as the system clock does.
#[derive(Debug, Clone)]
struct Skewed {
    base: ManualClock,
    skew_ms: i64,
}

impl Clock for Skewed {
    fn now_unix_ms(&self) -> u64 {
        self.base.now_unix_ms().saturating_add_signed(self.skew_ms)
    }
}

#[redis_cached(ttl = "30s", key = "report:<id>", cache = cache)]
async fn report(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> u64 {
    probe.ran();
    id
}

#[redis_cached(ttl = "1s", stale = "1m", key = "quote:<id>", cache = cache)]
async fn quote(
    id: u64,
    #[cache(skip)] cache: Cache,
    #[cache(skip)] probe: std::sync::Arc<Probe>,
) -> u64 {
    probe.ran();
    id
}

async fn host(server: &RedisServer, base: &ManualClock, skew_minutes: i64) -> Cache {
    let clock = Skewed {
        base: base.clone(),
        skew_ms: skew_minutes * 60_000,
    };
    let cache = Cache::builder()
        .redis_url(server.url())
        .clock(clock)
        .build()
        .unwrap();
    cache.ping().await.unwrap();
    cache
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_with_skewed_clocks_agree_on_freshness() {
    let server = RedisServer::start().expect("redis-server");
    let base = ManualClock::starting_now();
    let ahead = host(&server, &base, 10).await;
    let behind = host(&server, &base, -10).await;
    let probe = Probe::default();

    // Written by either host, fresh for its ttl on the other (each host's fill answered
    // before the other reads: a call returns once its fill is sent).
    report(1, &behind, &probe).await;
    behind.writes_done().await;
    report(1, &ahead, &probe).await;
    report(2, &ahead, &probe).await;
    ahead.writes_done().await;
    report(2, &behind, &probe).await;
    assert_eq!(
        probe.runs(),
        2,
        "the host ahead saw a fresh entry as expired"
    );

    // Past its ttl, for every host: the one behind must not serve it as fresh.
    base.advance(Duration::from_millis(31_000));
    report(2, &behind, &probe).await;
    assert_eq!(
        probe.runs(),
        3,
        "the host behind served an expired entry as fresh"
    );

    // `stale`: fresh for its ttl on both (no refresh on every hit), stale after it.
    let probe = std::sync::Arc::new(Probe::default());
    let hits = behind.stats().hits;
    quote(3, ahead.clone(), probe.clone()).await;
    ahead.writes_done().await;
    quote(3, behind.clone(), probe.clone()).await;
    assert_eq!(behind.stats().hits, hits + 1);
    assert_eq!(behind.stats().stale_served, 0);
    base.advance(Duration::from_millis(1_500));
    quote(3, behind.clone(), probe.clone()).await;
    assert_eq!(
        behind.stats().stale_served,
        1,
        "past its ttl by the server's time"
    );
    behind.refreshes_done().await;
    assert_eq!(probe.runs(), 2, "one refresh");
}
