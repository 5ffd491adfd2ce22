//! A failing source under a crowd of callers: it never sees more than one call per key and
//! process at a time, and no caller waits on anything but its leader (or its own turn, within
//! its hard timeout).

use crate::suite::leader_and_waiters;
use crate::support::Harness;
use redis_memo::{Cache, redis_cached};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use tokio::sync::Notify;

/// Counts the bodies that ran, and the most that ran at once.
#[derive(Default)]
pub struct Gauge {
    runs: AtomicU32,
    running: AtomicU32,
    peak: AtomicU32,
}

impl Gauge {
    /// Marks a body as running until the returned guard drops; the run's number, from 1.
    fn enter(&self) -> (u32, impl Drop + '_) {
        struct Running<'a>(&'a AtomicU32);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        let running = self.running.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(running, SeqCst);
        (self.runs.fetch_add(1, SeqCst) + 1, Running(&self.running))
    }

    fn runs(&self) -> u32 {
        self.runs.load(SeqCst)
    }

    fn peak(&self) -> u32 {
        self.peak.load(SeqCst)
    }
}

/// A leader held in its first run, callers that join it while it is held, then the leader
/// released: what each test below does with another function.
struct Crowd {
    cache: Cache,
    gauge: Arc<Gauge>,
    started: Arc<Notify>,
    release: Arc<Notify>,
}

impl Crowd {
    fn on(h: &Harness) -> Crowd {
        Crowd {
            cache: h.cache.clone(),
            gauge: Arc::default(),
            started: Arc::new(Notify::new()),
            release: Arc::new(Notify::new()),
        }
    }

    /// Runs `call` as the leader and as `waiters` callers joining it; checks that the leader
    /// gets `leader_gets`; the waiters' results.
    async fn run<T, Fut>(
        &self,
        waiters: usize,
        leader_gets: T,
        call: impl Fn(Cache, Arc<Gauge>, Arc<Notify>, Arc<Notify>) -> Fut,
    ) -> Vec<T>
    where
        T: PartialEq + std::fmt::Debug + 'static,
        Fut: std::future::Future<Output = T> + 'static,
    {
        let spawn_call = || {
            tokio::task::spawn_local(call(
                self.cache.clone(),
                Arc::clone(&self.gauge),
                Arc::clone(&self.started),
                Arc::clone(&self.release),
            ))
        };
        leader_and_waiters(waiters, &self.started, spawn_call, async |leader| {
            self.release.notify_one();
            assert_eq!(leader.await.unwrap(), leader_gets);
        })
        .await
    }
}

/// The body of the failing functions below, up to their error: counts the run in `gauge`,
/// holds the first one until released, and yields a few times (so runs that overlapped would
/// show in the gauge); the run's number.
async fn failing_run(gauge: &Gauge, started: &Notify, release: &Notify) -> u32 {
    let (run, _running) = gauge.enter();
    if run == 1 {
        started.notify_one();
        release.notified().await;
    }
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    run
}

/// An error the waiters can share: `Clone + Send + Sync`.
#[derive(Debug, Clone, PartialEq)]
pub struct Unavailable(u32);

/// An error that is not `Clone` (as `std::io::Error`, `sqlx::Error`, ...).
#[derive(Debug, PartialEq)]
pub enum NotClone {
    Failed(u32),
    TimedOut,
}

impl From<redis_memo::TimedOut> for NotClone {
    fn from(_: redis_memo::TimedOut) -> Self {
        NotClone::TimedOut
    }
}

/// Its first run fails once released; later runs fail at once. Each run yields a few times,
/// so runs that overlap would show in the gauge.
#[redis_cached(ttl = "1m", key = "fails:<id>", cache = cache)]
async fn fails_with_a_shared_error(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] gauge: &Gauge,
    #[cache(skip)] started: &Notify,
    #[cache(skip)] release: &Notify,
) -> Result<u64, Unavailable> {
    let run = failing_run(gauge, started, release).await;
    Err(Unavailable(run)).map(|()| id)
}

pub async fn waiters_of_a_failed_computation_get_its_error_without_calling_the_source(h: Harness) {
    let crowd = Crowd::on(&h);
    let gauge = Arc::clone(&crowd.gauge);
    let results = crowd
        .run(99, Err(Unavailable(1)), |c, g, s, r| async move {
            fails_with_a_shared_error(1, &c, &g, &s, &r).await
        })
        .await;
    assert!(
        results.iter().all(|result| *result == Err(Unavailable(1))),
        "every waiter gets the leader's error: {results:?}"
    );
    assert_eq!(
        (gauge.runs(), gauge.peak()),
        (1, 1),
        "100 callers of a failing source, one call"
    );
    assert_eq!(h.cache.stats().coalesced, 99);
    h.cache.writes_done().await;
    assert_eq!(h.cache.stats().fills, 0, "an error is never stored");
}

#[redis_cached(ttl = "1m", key = "fails-alone:<id>", cache = cache)]
async fn fails_with_an_error_that_is_not_clone(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] gauge: &Gauge,
    #[cache(skip)] started: &Notify,
    #[cache(skip)] release: &Notify,
) -> Result<u64, NotClone> {
    let run = failing_run(gauge, started, release).await;
    Err(NotClone::Failed(run)).map(|()| id)
}

pub async fn waiters_whose_error_cannot_be_shared_take_turns(h: Harness) {
    let crowd = Crowd::on(&h);
    let gauge = Arc::clone(&crowd.gauge);
    let results = crowd
        .run(30, Err(NotClone::Failed(1)), |c, g, s, r| async move {
            fails_with_an_error_that_is_not_clone(2, &c, &g, &s, &r).await
        })
        .await;
    let mut runs: Vec<u32> = results
        .iter()
        .map(|result| match result {
            Err(NotClone::Failed(run)) => *run,
            other => panic!("each waiter gets the error of its own turn: {other:?}"),
        })
        .collect();
    runs.sort_unstable();
    runs.dedup();
    assert_eq!(runs.len(), 30, "one run per waiter: {runs:?}");
    assert_eq!(
        gauge.peak(),
        1,
        "the source saw one call at a time ({} runs)",
        gauge.runs()
    );
}

/// Its first run fails once released; every later run hangs until cancelled.
#[redis_cached(ttl = "1m", key = "fails-then-hangs:<id>", hard_timeout = "200ms", cache = cache)]
async fn fails_then_hangs(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] gauge: &Gauge,
    #[cache(skip)] started: &Notify,
    #[cache(skip)] release: &Notify,
) -> Result<u64, NotClone> {
    let (run, _running) = gauge.enter();
    if run == 1 {
        started.notify_one();
        release.notified().await;
        return Err(NotClone::Failed(1));
    }
    std::future::pending::<()>().await;
    Ok(id)
}

pub async fn after_a_failed_leader_every_waiter_is_bounded_by_its_hard_timeout(h: Harness) {
    let crowd = Crowd::on(&h);
    let gauge = Arc::clone(&crowd.gauge);
    // A waiter that ran the hanging body without its hard timeout would never return, and
    // `leader_and_waiters` would report it hung.
    let results = crowd
        .run(20, Err(NotClone::Failed(1)), |c, g, s, r| async move {
            fails_then_hangs(3, &c, &g, &s, &r).await
        })
        .await;
    assert!(
        results
            .iter()
            .all(|result| *result == Err(NotClone::TimedOut)),
        "{results:?}"
    );
    assert_eq!(
        gauge.peak(),
        1,
        "one call at a time ({} runs)",
        gauge.runs()
    );
}

/// Generic over its error: the error type is not known to be `Clone` here, so waiters take
/// turns even though the type it is called with is `Clone`.
#[redis_cached(ttl = "1m", key = "fails-generic:<id>", cache = cache)]
async fn fails_generically<E: From<Unavailable> + Send + 'static>(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] gauge: &Gauge,
    #[cache(skip)] started: &Notify,
    #[cache(skip)] release: &Notify,
) -> Result<u64, E> {
    let run = failing_run(gauge, started, release).await;
    Err(E::from(Unavailable(run))).map(|()| id)
}

pub async fn a_generic_error_type_takes_turns(h: Harness) {
    let crowd = Crowd::on(&h);
    let gauge = Arc::clone(&crowd.gauge);
    let results = crowd
        .run(10, Err(Unavailable(1)), |c, g, s, r| async move {
            fails_generically::<Unavailable>(4, &c, &g, &s, &r).await
        })
        .await;
    assert!(
        results
            .iter()
            .all(|result| matches!(result, Err(Unavailable(run)) if *run > 1))
    );
    assert_eq!(
        (gauge.runs(), gauge.peak()),
        (11, 1),
        "one turn each, one at a time"
    );
}

/// Generic, with bounds that say the error can be shared: the waiters get the leader's error.
#[redis_cached(ttl = "1m", key = "fails-generic-clone:<id>", cache = cache)]
async fn fails_generically_clone<E: From<Unavailable> + Clone + Send + Sync + 'static>(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] gauge: &Gauge,
    #[cache(skip)] started: &Notify,
    #[cache(skip)] release: &Notify,
) -> Result<u64, E> {
    let run = failing_run(gauge, started, release).await;
    Err(E::from(Unavailable(run))).map(|()| id)
}

pub async fn a_generic_error_type_bounded_clone_is_shared(h: Harness) {
    let crowd = Crowd::on(&h);
    let gauge = Arc::clone(&crowd.gauge);
    let results = crowd
        .run(10, Err(Unavailable(1)), |c, g, s, r| async move {
            fails_generically_clone::<Unavailable>(5, &c, &g, &s, &r).await
        })
        .await;
    assert!(
        results.iter().all(|result| *result == Err(Unavailable(1))),
        "{results:?}"
    );
    assert_eq!(gauge.runs(), 1, "the waiters shared the leader's error");
}
