//! Warming (`Warm`): preloading entries through the ordinary call path, on each backend.

use crate::support::{Backend, Harness, Probe};
use redis_memo::{Cache, Warm, WarmReport, redis_cached};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

const KEYS: u64 = 10_000;

#[redis_cached(ttl = "10m", key = "warmed:<id>", cache = cache)]
async fn warmed(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> u64 {
    probe.ran();
    id * 3
}

pub async fn warming_ten_thousand_keys_then_serves_them_all_as_hits(backend: Backend) {
    let h = Harness::new(backend);
    let probe = Probe::default();
    let progress: Arc<Mutex<Vec<WarmReport>>> = Arc::default();
    let seen = Arc::clone(&progress);
    let report = Warm::new()
        .concurrency(32)
        .on_progress(move |report| seen.lock().unwrap().push(*report))
        .run(0..KEYS, |id| warmed(id, &h.cache, &probe))
        .await;
    assert_eq!(
        (report.computed, report.skipped, report.failed),
        (KEYS, 0, 0)
    );
    assert_eq!(probe.runs(), KEYS as u32);
    let reports = progress.lock().unwrap().clone();
    assert_eq!(
        reports.last(),
        Some(&report),
        "the last progress report is the total"
    );

    h.cache.writes_done().await;
    let before = h.cache.stats();
    for id in 0..KEYS {
        assert_eq!(warmed(id, &h.cache, &probe).await, id * 3);
    }
    let after = h.cache.stats();
    assert_eq!(probe.runs(), KEYS as u32, "every warmed key is a hit");
    assert_eq!(after.hits - before.hits, KEYS);

    // A second warm finds every entry fresh and runs nothing.
    let again = Warm::new()
        .run(0..KEYS, |id| warmed(id, &h.cache, &probe))
        .await;
    assert_eq!((again.computed, again.skipped, again.failed), (0, KEYS, 0));
    assert_eq!(probe.runs(), KEYS as u32);
}

/// A row whose value is its version in the "database", with a load that can be held.
#[derive(Default)]
pub struct Row {
    version: AtomicU64,
    hold: AtomicBool,
    started: Notify,
    release: Notify,
}

#[redis_cached(ttl = "10m", key = "warmed_row:<id>", cache = cache)]
async fn warmed_row(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] row: &Row) -> u64 {
    let _ = id;
    let version = row.version.load(Ordering::SeqCst);
    if row.hold.swap(false, Ordering::SeqCst) {
        row.started.notify_one();
        row.release.notified().await;
    }
    version
}

pub async fn a_warm_that_races_an_invalidation_stores_nothing_stale(backend: Backend) {
    let h = Harness::new(backend);
    let row = Row::default();
    row.version.store(1, Ordering::SeqCst);
    row.hold.store(true, Ordering::SeqCst);
    let warm = Warm::new().run([7u64], |id| warmed_row(id, &h.cache, &row));
    let race = async {
        // The warm's body has read version 1; the row changes and its entry is invalidated.
        row.started.notified().await;
        row.version.store(2, Ordering::SeqCst);
        invalidate_warmed_row(7, &h.cache).await.unwrap();
        row.release.notify_one();
    };
    let (report, ()) = tokio::join!(warm, race);
    assert_eq!(report.computed, 1);
    h.cache.writes_done().await;
    assert_eq!(
        warmed_row(7, &h.cache, &row).await,
        2,
        "the warm's value, read before the invalidation, was not stored"
    );
    assert!(h.cache.stats().rejected_fills >= 1);
}

#[redis_cached(ttl = "10m", key = "warmed_fallible:<id>", cache = cache)]
async fn warmed_fallible(id: u64, #[cache(skip)] cache: &Cache) -> Result<u64, String> {
    if id % 2 == 1 {
        Err(format!("row {id} is unavailable"))
    } else {
        Ok(id)
    }
}

pub async fn failed_calls_are_counted_and_store_nothing(backend: Backend) {
    let h = Harness::new(backend);
    let report = Warm::new()
        .run(0..10u64, |id| warmed_fallible(id, &h.cache))
        .await;
    assert_eq!((report.computed, report.skipped, report.failed), (5, 0, 5));
    h.cache.writes_done().await;
    for id in (1..10).step_by(2) {
        assert!(h.read_raw(&warmed_fallible_cache_key(id)).await.is_none());
    }
    let again = Warm::new()
        .run(0..10u64, |id| warmed_fallible(id, &h.cache))
        .await;
    assert_eq!((again.computed, again.skipped, again.failed), (0, 5, 5));
}

#[redis_cached(ttl = "10m", key = "warmed_inner:<id>", cache = cache)]
async fn inner_fails(id: u64, #[cache(skip)] cache: &Cache) -> Result<u64, String> {
    Err(format!("no row {id}"))
}

#[redis_cached(ttl = "10m", key = "warmed_outer:<id>", cache = cache)]
async fn outer_handles_it(id: u64, #[cache(skip)] cache: &Cache) -> u64 {
    inner_fails(id, cache).await.unwrap_or(0)
}

pub async fn an_error_a_body_handles_is_not_the_warm_calls_failure(backend: Backend) {
    let h = Harness::new(backend);
    let report = Warm::new()
        .run(0..4u64, |id| outer_handles_it(id, &h.cache))
        .await;
    assert_eq!((report.computed, report.skipped, report.failed), (4, 0, 0));
    let report = Warm::new()
        .run(0..4u64, |id| inner_fails(id, &h.cache))
        .await;
    assert_eq!((report.computed, report.skipped, report.failed), (0, 0, 4));
}

/// How many calls run at once, and the most that ever did.
#[derive(Default)]
pub struct Gauge {
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

#[redis_cached(ttl = "10m", key = "warmed_gauged:<id>", cache = cache)]
async fn gauged(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] gauge: &Gauge) -> u64 {
    let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
    gauge.most.fetch_max(now, Ordering::SeqCst);
    // Pending once at least, so the warm may poll other calls meanwhile.
    tokio::task::yield_now().await;
    gauge.now.fetch_sub(1, Ordering::SeqCst);
    id
}

pub async fn a_warm_runs_at_most_its_concurrency_and_reports_progress(backend: Backend) {
    let h = Harness::new(backend);
    let gauge = Gauge::default();
    let reports: Arc<Mutex<Vec<WarmReport>>> = Arc::default();
    let seen = Arc::clone(&reports);
    let report = Warm::new()
        .concurrency(3)
        .progress_every(std::time::Duration::ZERO)
        .on_progress(move |report| seen.lock().unwrap().push(*report))
        .run(0..50u64, |id| gauged(id, &h.cache, &gauge))
        .await;
    assert_eq!(report.computed, 50);
    let most = gauge.most.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&most),
        "at most 3 at once, and more than one: {most}"
    );
    let reports = reports.lock().unwrap().clone();
    // With no interval, one report after each call, and the final one.
    assert_eq!(reports.len(), 51);
    assert!(
        reports
            .windows(2)
            .all(|pair| pair[0].calls() <= pair[1].calls())
    );
    assert_eq!(reports.last(), Some(&report));
}
