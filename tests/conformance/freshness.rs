//! Freshness: stale-while-revalidate and jitter, on each backend, driven by a manual clock
//! (tests move time past a ttl instead of sleeping through it).

use crate::support::{Backend, Harness, Probe};
use redis_memo::{Cache, ManualClock, redis_cached};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// A price source whose answer is the number of loads so far, and that can hold a load.
#[derive(Default)]
pub struct Prices {
    loads: AtomicU64,
    /// (reached, release) for the next load.
    hold: Mutex<Option<(Arc<Notify>, Arc<Notify>)>>,
}

impl Prices {
    async fn load(&self) -> u64 {
        let answer = self.loads.fetch_add(1, Ordering::SeqCst) + 1;
        let hold = self.hold.lock().unwrap().take();
        if let Some((reached, release)) = hold {
            reached.notify_one();
            release.notified().await;
        }
        answer
    }

    fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }

    fn hold_next_load(&self) -> (Arc<Notify>, Arc<Notify>) {
        let pair = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        *self.hold.lock().unwrap() = Some(pair.clone());
        pair
    }
}

#[redis_cached(
    ttl = "10s",
    stale = "1m",
    key = "quote:<symbol>",
    tags = ["market:<market>"],
    cache = cache
)]
async fn quote(
    symbol: String,
    market: u32,
    #[cache(skip)] cache: Cache,
    #[cache(skip)] prices: Arc<Prices>,
) -> u64 {
    let _ = symbol;
    prices.load().await
}

/// A cache on `backend` whose clock the test moves.
fn clocked(backend: Backend) -> (Harness, ManualClock) {
    let clock = ManualClock::starting_now();
    let harness = Harness::with(backend, |builder| builder.clock(clock.clone()));
    (harness, clock)
}

async fn quote_of(h: &Harness, prices: &Arc<Prices>) -> u64 {
    quote("ACME".into(), 1, h.cache.clone(), Arc::clone(prices)).await
}

pub async fn stale_values_are_served_at_once_while_one_refresh_runs(backend: Backend) {
    let (h, clock) = clocked(backend);
    let prices = Arc::new(Prices::default());
    assert_eq!(quote_of(&h, &prices).await, 1);
    clock.advance(Duration::from_secs(11));
    let (reached, release) = prices.hold_next_load();

    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (cache, prices) = (h.cache.clone(), Arc::clone(&prices));
        callers.spawn(async move { quote("ACME".into(), 1, cache, prices).await });
    }
    // The refresh is held: every caller returns, and with the stale value (bounded, so a
    // caller that waited for the refresh fails the test instead of hanging it).
    let answers = tokio::time::timeout(Duration::from_secs(20), callers.join_all())
        .await
        .expect("a caller waited for the refresh");
    assert!(answers.iter().all(|&answer| answer == 1), "{answers:?}");
    reached.notified().await;
    assert_eq!(prices.loads(), 2, "one refresh for a hundred stale reads");
    assert_eq!(h.cache.stats().stale_served, 100);

    release.notify_one();
    h.cache.refreshes_done().await;
    assert_eq!(h.cache.stats().refreshes, 1);
    assert_eq!(quote_of(&h, &prices).await, 2, "the refreshed value, fresh");
    assert_eq!(prices.loads(), 2);
    assert_eq!(h.cache.stats().stale_served, 100, "a hit, not a stale read");
}

pub async fn past_its_stale_window_an_entry_is_a_miss(backend: Backend) {
    let (h, clock) = clocked(backend);
    let prices = Arc::new(Prices::default());
    assert_eq!(quote_of(&h, &prices).await, 1);
    clock.advance(Duration::from_secs(10 + 60));
    assert_eq!(
        quote_of(&h, &prices).await,
        2,
        "computed by the call itself"
    );
    assert_eq!(h.cache.stats().stale_served, 0);
    assert_eq!(quote_of(&h, &prices).await, 2);
}

pub async fn an_invalidated_entry_is_never_served_stale(backend: Backend) {
    let (h, clock) = clocked(backend);
    let prices = Arc::new(Prices::default());
    assert_eq!(quote_of(&h, &prices).await, 1);
    clock.advance(Duration::from_secs(11));
    invalidate_quote("ACME".into(), h.cache.clone())
        .await
        .unwrap();
    assert_eq!(quote_of(&h, &prices).await, 2, "the entry is gone: a miss");

    clock.advance(Duration::from_secs(11));
    assert!(
        invalidate_quote_by_market(1, h.cache.clone())
            .await
            .unwrap()
    );
    assert_eq!(
        quote_of(&h, &prices).await,
        3,
        "its tag is invalidated: a miss"
    );
    assert_eq!(h.cache.stats().stale_served, 0);
}

pub async fn a_tag_invalidated_during_a_refresh_makes_its_value_a_miss(backend: Backend) {
    let (h, clock) = clocked(backend);
    let prices = Arc::new(Prices::default());
    assert_eq!(quote_of(&h, &prices).await, 1);
    clock.advance(Duration::from_secs(11));
    let (reached, release) = prices.hold_next_load();
    assert_eq!(
        quote_of(&h, &prices).await,
        1,
        "stale, and a refresh starts"
    );
    reached.notified().await;
    invalidate_quote_by_market(1, h.cache.clone())
        .await
        .unwrap();
    release.notify_one();
    h.cache.refreshes_done().await;
    assert_eq!(
        quote_of(&h, &prices).await,
        3,
        "the refresh recorded the tag's old version: its value is a miss"
    );
}

#[redis_cached(ttl = "100s", jitter = "20%", key = "spread:<id>", cache = cache)]
async fn spread(id: u32, #[cache(skip)] cache: &Cache) -> u32 {
    id
}

pub async fn jitter_spreads_the_ttls_of_entries_written_together(backend: Backend) {
    let clock = ManualClock::starting_now();
    let h = Harness::with(backend, |builder| {
        builder.clock(clock.clone()).random_seed(7)
    });
    const ENTRIES: u32 = 1000;
    // Redis's expiry runs on real time: an entry's PTTL is short of its ttl by at most the
    // time since it was written (the manual clock stands still).
    let started = std::time::Instant::now();
    for id in 0..ENTRIES {
        spread(id, &h.cache).await;
    }
    let mut fresh_for = Vec::new();
    for id in 0..ENTRIES {
        let rendered = spread_cache_key(id);
        let bytes = h.read_raw(&rendered).await.expect("stored");
        let times = redis_memo::envelope::header(&bytes)
            .expect("an entry")
            .times;
        let ttl_ms = times.fresh_until_ms - times.written_at_ms;
        if let Some(pttl) = h.pttl_ms(&rendered).await {
            let pttl = u64::try_from(pttl).expect("an expiry");
            let since_written = u64::try_from(started.elapsed().as_millis()).unwrap() + 1_000;
            assert!(
                pttl <= ttl_ms && pttl + since_written > ttl_ms,
                "Redis keeps it as long: {pttl} vs {ttl_ms}, {since_written} ms after"
            );
        }
        fresh_for.push(ttl_ms);
    }
    assert!(
        fresh_for.iter().all(|&ms| (80_000..=100_000).contains(&ms)),
        "within the ttl less 20%"
    );
    // Uniform over 80 s..100 s: each 5 s quarter holds about 250 of 1000 (a standard
    // deviation of about 14); 150..350 fails only if the draws are not spread.
    let mut quarters = [0u32; 4];
    for ms in &fresh_for {
        quarters[usize::try_from((ms - 80_000) / 5_000).unwrap().min(3)] += 1;
    }
    assert!(
        quarters.iter().all(|&count| (150..=350).contains(&count)),
        "{quarters:?}"
    );
}

/// A rate feed whose answer is the number of its loads so far, and that can be made to fail.
#[derive(Default)]
pub struct Feed {
    loads: AtomicU64,
    down: std::sync::atomic::AtomicBool,
}

impl Feed {
    fn load(&self) -> Result<u64, String> {
        let answer = self.loads.fetch_add(1, Ordering::SeqCst) + 1;
        if self.down.load(Ordering::SeqCst) {
            return Err("the feed is down".into());
        }
        Ok(answer)
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }
}

#[redis_cached(ttl = "10s", fail_safe = "1h", key = "rate:<pair>", tags = ["fx"], cache = cache)]
async fn rate(
    pair: &str,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] feed: &Feed,
) -> Result<u64, String> {
    let _ = pair;
    feed.load()
}

pub async fn a_failing_body_gets_the_last_good_value_within_fail_safe(backend: Backend) {
    let (h, clock) = clocked(backend);
    let feed = Feed::default();
    assert_eq!(rate("EURUSD", &h.cache, &feed).await, Ok(1));
    clock.advance(Duration::from_secs(11));
    feed.set_down(true);
    assert_eq!(
        rate("EURUSD", &h.cache, &feed).await,
        Ok(1),
        "past its ttl, the body ran and failed: the last good value"
    );
    assert_eq!(feed.loads(), 2);
    assert_eq!(h.cache.stats().fail_safe_served, 1);

    clock.advance(Duration::from_secs(3600));
    assert_eq!(
        rate("EURUSD", &h.cache, &feed).await,
        Err("the feed is down".into()),
        "older than fail_safe: the error"
    );
    feed.set_down(false);
    assert_eq!(rate("EURUSD", &h.cache, &feed).await, Ok(4));
    assert_eq!(rate("EURUSD", &h.cache, &feed).await, Ok(4), "stored again");
}

pub async fn an_invalidated_entry_is_never_served_by_fail_safe(backend: Backend) {
    let (h, clock) = clocked(backend);
    let feed = Feed::default();
    assert_eq!(rate("EURUSD", &h.cache, &feed).await, Ok(1));
    assert_eq!(rate("USDJPY", &h.cache, &feed).await, Ok(2));
    clock.advance(Duration::from_secs(11));
    feed.set_down(true);
    invalidate_rate("EURUSD", &h.cache).await.unwrap();
    assert_eq!(
        rate("EURUSD", &h.cache, &feed).await,
        Err("the feed is down".into()),
        "the entry is gone"
    );
    h.cache.invalidate_tag("fx").await.unwrap();
    assert_eq!(
        rate("USDJPY", &h.cache, &feed).await,
        Err("the feed is down".into()),
        "its tag is invalidated"
    );
    assert_eq!(h.cache.stats().fail_safe_served, 0);
}

#[redis_cached(ttl = "10s", stale = "1m", fail_safe = "1h", key = "index:<name>", cache = cache)]
async fn index(
    name: String,
    #[cache(skip)] cache: Cache,
    #[cache(skip)] feed: Arc<Feed>,
) -> Result<u64, String> {
    let _ = name;
    feed.load()
}

pub async fn a_failed_refresh_keeps_serving_stale_and_backs_off(backend: Backend) {
    let (h, clock) = clocked(backend);
    let feed = Arc::new(Feed::default());
    let call = || index("DAX".into(), h.cache.clone(), Arc::clone(&feed));
    assert_eq!(call().await, Ok(1));
    clock.advance(Duration::from_secs(11));
    feed.set_down(true);
    assert_eq!(call().await, Ok(1), "stale");
    h.cache.refreshes_done().await;
    assert_eq!(feed.loads(), 2, "the refresh ran and failed");
    assert_eq!(call().await, Ok(1), "still the stale value");
    h.cache.refreshes_done().await;
    assert_eq!(feed.loads(), 2, "no new refresh right after a failure");

    clock.advance(Duration::from_secs(1));
    assert_eq!(call().await, Ok(1));
    h.cache.refreshes_done().await;
    assert_eq!(feed.loads(), 3, "retried after 1 s");
    clock.advance(Duration::from_secs(1));
    assert_eq!(call().await, Ok(1));
    h.cache.refreshes_done().await;
    assert_eq!(feed.loads(), 3, "the next wait is 2 s");

    feed.set_down(false);
    clock.advance(Duration::from_secs(1));
    assert_eq!(call().await, Ok(1));
    h.cache.refreshes_done().await;
    assert_eq!(call().await, Ok(4), "refreshed once the feed answers");
    assert_eq!(h.cache.stats().refreshes, 3);
    assert_eq!(
        h.cache.stats().refresh_failures,
        2,
        "the two failed refreshes are counted"
    );
}

/// Takes a second to compute, by the test's clock.
#[redis_cached(ttl = "10s", early, key = "board:<name>", cache = cache)]
async fn board(
    name: String,
    #[cache(skip)] cache: Cache,
    #[cache(skip)] clock: ManualClock,
    #[cache(skip)] runs: Arc<AtomicU64>,
) -> u64 {
    let _ = name;
    clock.advance(Duration::from_secs(1));
    runs.fetch_add(1, Ordering::SeqCst) + 1
}

pub async fn early_refresh_renews_a_hot_key_before_it_expires(backend: Backend) {
    let clock = ManualClock::starting_now();
    let h = Harness::with(backend, |builder| {
        builder.clock(clock.clone()).random_seed(42)
    });
    let runs = Arc::new(AtomicU64::new(0));
    let call = || {
        board(
            "top".into(),
            h.cache.clone(),
            clock.clone(),
            Arc::clone(&runs),
        )
    };
    assert_eq!(call().await, 1);
    // Steady load for three ttls: a call every 100 ms of the clock.
    let mut last = 1;
    for _ in 0..300 {
        clock.advance(Duration::from_millis(100));
        let value = call().await;
        assert!(value >= last, "values only get newer");
        last = value;
        h.cache.refreshes_done().await;
    }
    let stats = h.cache.stats();
    assert_eq!(
        stats.misses, 1,
        "no caller ever saw a miss: only the first call"
    );
    assert!(
        stats.refreshes >= 3,
        "refreshed ahead of each expiry, {} times",
        stats.refreshes
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1 + stats.refreshes);
}

/// `Some` of the number of its loads, until it is told the row is gone.
#[redis_cached(ttl = "10s", stale = "1m", key = "listing:<id>", cache = cache)]
async fn listing(
    id: u64,
    #[cache(skip)] cache: Cache,
    #[cache(skip)] prices: Arc<Prices>,
    #[cache(skip)] gone: Arc<std::sync::atomic::AtomicBool>,
) -> Option<u64> {
    let _ = id;
    let answer = prices.load().await;
    (!gone.load(Ordering::SeqCst)).then_some(answer)
}

pub async fn a_refresh_that_finds_the_row_gone_removes_the_stale_value(backend: Backend) {
    let (h, clock) = clocked(backend);
    let (prices, gone) = (Arc::new(Prices::default()), Arc::new(Default::default()));
    let call = || listing(1, h.cache.clone(), Arc::clone(&prices), Arc::clone(&gone));
    assert_eq!(call().await, Some(1));
    clock.advance(Duration::from_secs(11));
    gone.store(true, Ordering::SeqCst);
    assert_eq!(call().await, Some(1), "stale while the refresh runs");
    h.cache.refreshes_done().await;
    assert_eq!(
        call().await,
        None,
        "the refresh found `None`: the entry is gone"
    );
    assert_eq!(prices.loads(), 3, "the call computed it");
    assert_eq!(h.cache.stats().stale_served, 1);
}

/// Holds the body of a report until released, answering its loads' count.
#[redis_cached(
    ttl = "10s",
    fail_safe = "1h",
    soft_timeout = "50ms",
    key = "slow:<id>",
    cache = cache
)]
async fn slow_report(
    id: u64,
    #[cache(skip)] cache: Cache,
    #[cache(skip)] prices: Arc<Prices>,
) -> Result<u64, String> {
    let _ = id;
    Ok(prices.load().await)
}

pub async fn past_the_soft_timeout_the_fail_safe_value_is_served_and_the_body_fills_later(
    backend: Backend,
) {
    let (h, clock) = clocked(backend);
    let prices = Arc::new(Prices::default());
    let call = || slow_report(1, h.cache.clone(), Arc::clone(&prices));
    assert_eq!(call().await, Ok(1));
    clock.advance(Duration::from_secs(11));
    let (reached, release) = prices.hold_next_load();
    assert_eq!(
        call().await,
        Ok(1),
        "the body is held: past 50 ms, the last good value"
    );
    reached.notified().await;
    assert_eq!(h.cache.stats().soft_timeouts, 1);
    assert_eq!(
        call().await,
        Ok(1),
        "while it runs, the fail-safe value at once, and no second body"
    );
    assert_eq!(prices.loads(), 2);
    assert_eq!(h.cache.stats().fail_safe_served, 2);

    release.notify_one();
    h.cache.refreshes_done().await;
    assert_eq!(
        call().await,
        Ok(2),
        "the body filled the entry when it finished"
    );
    assert_eq!(prices.loads(), 2);
}

pub async fn an_invalidated_entry_is_never_served_at_a_soft_timeout(backend: Backend) {
    let (h, clock) = clocked(backend);
    let prices = Arc::new(Prices::default());
    assert_eq!(
        slow_report(1, h.cache.clone(), Arc::clone(&prices)).await,
        Ok(1)
    );
    clock.advance(Duration::from_secs(11));
    invalidate_slow_report(1, h.cache.clone()).await.unwrap();
    let (reached, release) = prices.hold_next_load();
    let call = tokio::spawn(slow_report(1, h.cache.clone(), Arc::clone(&prices)));
    reached.notified().await;
    release.notify_one();
    assert_eq!(
        call.await.unwrap(),
        Ok(2),
        "no fail-safe value: the caller waited for the body"
    );
    assert_eq!(h.cache.stats().soft_timeouts, 0);
}

#[derive(Debug, PartialEq)]
pub enum ReportError {
    TimedOut,
}

impl From<redis_memo::TimedOut> for ReportError {
    fn from(_: redis_memo::TimedOut) -> Self {
        ReportError::TimedOut
    }
}

/// A body that waits for `open` (a permit lets it through at once) and says whether it was
/// dropped before finishing.
#[derive(Default)]
pub struct Gate {
    open: Notify,
    reached: Notify,
    cancelled: std::sync::atomic::AtomicBool,
}

struct CancelledUnlessDone<'a>(&'a Gate, bool);

impl Drop for CancelledUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.store(true, Ordering::SeqCst);
        }
    }
}

#[redis_cached(ttl = "10s", hard_timeout = "50ms", key = "hard:<id>", cache = cache)]
async fn hard_report(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] gate: &Gate,
) -> Result<u64, ReportError> {
    let mut guard = CancelledUnlessDone(gate, false);
    gate.reached.notify_one();
    gate.open.notified().await;
    guard.1 = true;
    Ok(id)
}

pub async fn past_the_hard_timeout_a_call_returns_its_error_and_the_body_is_cancelled(
    backend: Backend,
) {
    let (h, _clock) = clocked(backend);
    let gate = Gate::default();
    assert_eq!(
        hard_report(7, &h.cache, &gate).await,
        Err(ReportError::TimedOut),
        "the body never finishes: the caller gets the timeout, converted"
    );
    assert!(
        gate.cancelled.load(Ordering::SeqCst),
        "with borrowed parameters the body is cancelled"
    );
    assert_eq!(h.cache.stats().hard_timeouts, 1);
    // The timed-out call did not wait for its lease to be given back; that runs behind it.
    h.cache.refreshes_done().await;
    gate.open.notify_one();
    assert_eq!(
        hard_report(7, &h.cache, &gate).await,
        Ok(7),
        "nothing was stored"
    );
    assert_eq!(hard_report(7, &h.cache, &gate).await, Ok(7), "now it is");
}

#[redis_cached(
    ttl = "10s",
    fail_safe = "1h",
    hard_timeout = "50ms",
    key = "hardsafe:<id>",
    cache = cache
)]
async fn hard_safe_report(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] gate: &Gate,
) -> Result<u64, ReportError> {
    gate.reached.notify_one();
    gate.open.notified().await;
    Ok(id + 100)
}

pub async fn past_the_hard_timeout_a_fail_safe_value_is_served(backend: Backend) {
    let (h, clock) = clocked(backend);
    let gate = Gate::default();
    gate.open.notify_one();
    assert_eq!(hard_safe_report(1, &h.cache, &gate).await, Ok(101));
    clock.advance(Duration::from_secs(11));
    assert_eq!(
        hard_safe_report(1, &h.cache, &gate).await,
        Ok(101),
        "the body is held: the last good value at the hard timeout"
    );
    let stats = h.cache.stats();
    assert_eq!((stats.hard_timeouts, stats.fail_safe_served), (1, 1));
}

/// Counts loads; while `held`, each load waits for a permit.
pub struct HeldLoads {
    loads: AtomicU64,
    held: std::sync::atomic::AtomicBool,
    permits: tokio::sync::Semaphore,
}

#[redis_cached(ttl = "10s", stale = "1m", key = "gated:<symbol>", cache = cache)]
async fn gated_quote(
    symbol: u32,
    #[cache(skip)] cache: Cache,
    #[cache(skip)] source: Arc<HeldLoads>,
) -> u64 {
    let _ = symbol;
    let answer = source.loads.fetch_add(1, Ordering::SeqCst) + 1;
    if source.held.load(Ordering::SeqCst) {
        source.permits.acquire().await.unwrap().forget();
    }
    answer
}

pub async fn background_refreshes_are_bounded_and_the_skipped_ones_counted(backend: Backend) {
    let clock = ManualClock::starting_now();
    let h = Harness::with(backend, |builder| {
        builder.clock(clock.clone()).max_background_refreshes(2)
    });
    let source = Arc::new(HeldLoads {
        loads: AtomicU64::new(0),
        held: false.into(),
        permits: tokio::sync::Semaphore::new(0),
    });
    for symbol in 0..5 {
        gated_quote(symbol, h.cache.clone(), Arc::clone(&source)).await;
    }
    clock.advance(Duration::from_secs(11));
    source.held.store(true, Ordering::SeqCst);
    for symbol in 0..5 {
        let answer = gated_quote(symbol, h.cache.clone(), Arc::clone(&source)).await;
        assert_eq!(answer, u64::from(symbol) + 1, "the stale value, at once");
    }
    let stats = h.cache.stats();
    assert_eq!(stats.stale_served, 5);
    assert_eq!(
        stats.refreshes_skipped, 3,
        "two refreshes at most run at once; the other stale reads start none"
    );
    source.permits.add_permits(2);
    h.cache.refreshes_done().await;
    source.held.store(false, Ordering::SeqCst);
    assert_eq!(h.cache.stats().refreshes, 2);
    for symbol in 2..5 {
        gated_quote(symbol, h.cache.clone(), Arc::clone(&source)).await;
        // One at a time, so none is skipped for the bound.
        h.cache.refreshes_done().await;
    }
    assert_eq!(
        h.cache.stats().refreshes,
        5,
        "a later read starts a skipped refresh"
    );
    assert_eq!(h.cache.stats().refreshes_skipped, 3);
}

/// A source that can fail with an error that is not `Clone`, holding its first failure.
pub struct Flaky {
    failing: std::sync::atomic::AtomicBool,
    loads: AtomicU64,
    started: Notify,
    release: Notify,
}

#[derive(Debug, PartialEq)]
pub struct FlakyError;

#[redis_cached(ttl = "10s", fail_safe = "1h", key = "flaky:<id>", cache = cache)]
async fn flaky(
    id: u64,
    #[cache(skip)] cache: Cache,
    #[cache(skip)] source: Arc<Flaky>,
) -> Result<u64, FlakyError> {
    let load = source.loads.fetch_add(1, Ordering::SeqCst) + 1;
    if !source.failing.load(Ordering::SeqCst) {
        return Ok(id * 100 + load);
    }
    if load == 2 {
        source.started.notify_one();
        source.release.notified().await;
    }
    Err(FlakyError)
}

pub async fn waiters_of_a_failed_leader_get_their_fail_safe_value_and_the_lease_is_free(
    backend: Backend,
) {
    let (h, clock) = clocked(backend);
    let source = Arc::new(Flaky {
        failing: false.into(),
        loads: AtomicU64::new(0),
        started: Notify::new(),
        release: Notify::new(),
    });
    assert_eq!(
        flaky(1, h.cache.clone(), Arc::clone(&source)).await,
        Ok(101)
    );
    clock.advance(Duration::from_secs(11));
    source.failing.store(true, Ordering::SeqCst);
    let spawn_call = || {
        let (cache, source) = (h.cache.clone(), Arc::clone(&source));
        tokio::task::spawn_local(async move { flaky(1, cache, source).await })
    };
    let results =
        crate::suite::leader_and_waiters(10, &source.started, spawn_call, async |leader| {
            source.release.notify_one();
            assert_eq!(
                leader.await.unwrap(),
                Ok(101),
                "the leader's own fail-safe value"
            );
        })
        .await;
    assert!(
        results.iter().all(|result| *result == Ok(101)),
        "{results:?}"
    );
    assert_eq!(
        source.loads.load(Ordering::SeqCst),
        2,
        "one failing call for eleven callers"
    );

    // The failed leader's lease was given back: another process computes and stores at once.
    source.failing.store(false, Ordering::SeqCst);
    let other = h.another_process(|builder| builder.clock(clock.clone()));
    assert_eq!(flaky(1, other.clone(), Arc::clone(&source)).await, Ok(103));
    other.writes_done().await;
    assert_eq!(other.stats().fills, 1, "the lease was free");
}

#[redis_cached(ttl = "10m", key = "session:<id>", sliding, cache = cache)]
async fn session(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> u64 {
    probe.ran();
    id
}

#[redis_cached(
    ttl = "10m",
    key = "tagged_session:<id>",
    tags = ["user:<id>"],
    sliding(max_age = "1h"),
    cache = cache
)]
async fn tagged_session(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> u64 {
    probe.ran();
    id
}

#[redis_cached(ttl = "10m", key = "fixed:<id>", cache = cache)]
async fn fixed(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> u64 {
    probe.ran();
    id
}

/// Rewrites the entry `rendered` as it is, with only `left` to live.
async fn shorten(h: &Harness, rendered: &str, left: Duration) {
    let bytes = h.read_raw(rendered).await.expect("the entry is stored");
    h.write_raw(rendered, &bytes, left).await;
    let ttl = h.time_to_live_ms(rendered).await;
    assert!(
        (1..=left.as_millis() as i64).contains(&ttl),
        "{ttl} ms left"
    );
}

pub async fn a_hit_pushes_a_sliding_entrys_expiry_out_by_its_ttl(backend: Backend) {
    let h = Harness::new(backend);
    let probe = Probe::default();
    const LEFT: Duration = Duration::from_secs(5);
    const TTL_MS: i64 = 600_000;

    assert_eq!(session(1, &h.cache, &probe).await, 1);
    shorten(&h, &session_cache_key(1), LEFT).await;
    assert_eq!(session(1, &h.cache, &probe).await, 1);
    let ttl = h.time_to_live_ms(&session_cache_key(1)).await;
    assert!(
        ttl > TTL_MS - 60_000 && ttl <= TTL_MS,
        "the hit gave it a ttl again: {ttl} ms"
    );

    // With tags, the entry is read by `GETEX` beside the `MGET` of its tags' tokens.
    assert_eq!(tagged_session(2, &h.cache, &probe).await, 2);
    shorten(&h, &tagged_session_cache_key(2), LEFT).await;
    assert_eq!(tagged_session(2, &h.cache, &probe).await, 2);
    let ttl = h.time_to_live_ms(&tagged_session_cache_key(2)).await;
    assert!(
        ttl > TTL_MS - 60_000,
        "the tagged hit gave it a ttl again: {ttl} ms"
    );
    invalidate_user_tag_of_tagged_session(2, &h.cache).await;
    assert_eq!(tagged_session(2, &h.cache, &probe).await, 2);
    assert_eq!(
        probe.runs(),
        3,
        "a sliding entry's tag still invalidates it"
    );

    // Without `sliding`, a hit leaves the expiry where it was.
    assert_eq!(fixed(3, &h.cache, &probe).await, 3);
    shorten(&h, &fixed_cache_key(3), LEFT).await;
    assert_eq!(fixed(3, &h.cache, &probe).await, 3);
    let ttl = h.time_to_live_ms(&fixed_cache_key(3)).await;
    assert!(ttl <= LEFT.as_millis() as i64, "{ttl} ms");
    assert_eq!(probe.runs(), 4, "every second call was a hit");
}

async fn invalidate_user_tag_of_tagged_session(id: u64, cache: &Cache) {
    cache
        .invalidate_tag(&format!("user:{id}"))
        .await
        .expect("the tag is invalidated");
}

pub async fn a_sliding_entry_is_never_served_past_its_max_age(backend: Backend) {
    let (h, clock) = clocked(backend);
    let probe = Probe::default();
    assert_eq!(tagged_session(5, &h.cache, &probe).await, 5);
    // Read every 9 minutes: each read keeps it, up to its hour.
    for _ in 0..6 {
        clock.advance(Duration::from_secs(9 * 60));
        assert_eq!(tagged_session(5, &h.cache, &probe).await, 5);
    }
    assert_eq!(
        probe.runs(),
        1,
        "54 minutes of reads 9 minutes apart: all hits"
    );
    clock.advance(Duration::from_secs(6 * 60));
    assert_eq!(tagged_session(5, &h.cache, &probe).await, 5);
    assert_eq!(
        probe.runs(),
        2,
        "an hour after it was computed, it is computed again"
    );
    assert_eq!(tagged_session(5, &h.cache, &probe).await, 5);
    assert_eq!(probe.runs(), 2, "and the new value is served");
}
