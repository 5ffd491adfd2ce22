//! Warming: calling memoized functions ahead of traffic (at start-up, or on a schedule) with
//! bounded concurrency, and reporting what each call did.
//!
//! A warm call is an ordinary call: it goes through the read, the in-process flights and the
//! lease protocol, so a fresh entry is left alone, concurrent callers of the same key share one
//! computation, and a value computed while the entry was invalidated is not stored. What the
//! call did is noted in a task-local [`Outcome`] that only a warm sets up: whether a body
//! ran ([`note_ran`]) and whether it failed ([`note_failed`]), by the call path, and whether
//! the outermost memoized call returned a failure ([`Claim`]).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// What a [`Warm::run`] did, by call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct WarmReport {
    /// Calls that ran their function's body (a miss), and stored the value where Redis took
    /// it.
    pub computed: u64,
    /// Calls whose entry was fresh (or being computed by another call): nothing ran.
    pub skipped: u64,
    /// Calls whose body failed (an `Err`, or a timeout): nothing was stored.
    pub failed: u64,
}

impl WarmReport {
    /// Calls made so far.
    pub fn calls(&self) -> u64 {
        self.computed + self.skipped + self.failed
    }
}

type Progress = Box<dyn FnMut(&WarmReport) + Send>;

/// A warm: how many calls run at once, and how progress is reported.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use redis_memo_runtime::{Cache, MemoryStore, Warm};
///
/// let cache = Cache::builder().memory(MemoryStore::new()).build().unwrap();
/// // With a memoized `get_user(id, &db)`, the call would be `|id| get_user(id, &db)`.
/// let report = Warm::new()
///     .concurrency(16)
///     .on_progress(|report| eprintln!("warmed {} users", report.calls()))
///     .run(0..100u64, |id| async move { id * 2 })
///     .await;
/// assert_eq!(report.calls(), 100);
/// # drop(cache); }
/// ```
#[must_use = "a warm does nothing until `run` is awaited"]
pub struct Warm {
    concurrency: usize,
    progress_every: Duration,
    on_progress: Option<Progress>,
}

impl std::fmt::Debug for Warm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warm")
            .field("concurrency", &self.concurrency)
            .field("progress_every", &self.progress_every)
            .finish_non_exhaustive()
    }
}

impl Default for Warm {
    fn default() -> Self {
        Self::new()
    }
}

impl Warm {
    /// Calls that run at once by default: enough to hide round trips, few enough that a cold
    /// warm does not flood the source.
    pub const DEFAULT_CONCURRENCY: usize = 16;
    /// How often progress is reported by default.
    pub const DEFAULT_PROGRESS_EVERY: Duration = Duration::from_secs(5);

    /// A warm with the default concurrency and progress interval.
    pub fn new() -> Self {
        Warm {
            concurrency: Self::DEFAULT_CONCURRENCY,
            progress_every: Self::DEFAULT_PROGRESS_EVERY,
            on_progress: None,
        }
    }

    /// At most `calls` calls at once (at least 1).
    pub fn concurrency(mut self, calls: usize) -> Self {
        self.concurrency = calls.max(1);
        self
    }

    /// Reports progress at most this often while the warm runs (an `info` event with target
    /// `redis_memo`, and the callback), and once at the end.
    pub fn progress_every(mut self, interval: Duration) -> Self {
        self.progress_every = interval;
        self
    }

    /// Calls `report` with the counts so far at each progress report, and at the end.
    pub fn on_progress(mut self, report: impl FnMut(&WarmReport) + Send + 'static) -> Self {
        self.on_progress = Some(Box::new(report));
        self
    }

    /// Calls `call` on every item, at most [`Warm::concurrency`] at once, and reports what
    /// the calls did. `call` makes one call of a memoized function (`|id| get_user(id, &db)`);
    /// its result is dropped. Calls of functions on any cache are counted.
    pub async fn run<I, F, Fut>(mut self, items: I, mut call: F) -> WarmReport
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: Future,
    {
        use futures_util::StreamExt;
        let calls = futures_util::stream::iter(items).map(|item| {
            let outcome = Arc::new(Outcome::default());
            let call = OUTCOME.scope(Arc::clone(&outcome), call(item));
            async move {
                call.await;
                outcome.verdict()
            }
        });
        let mut calls = std::pin::pin!(calls.buffer_unordered(self.concurrency));
        let mut report = WarmReport::default();
        let started = Instant::now();
        let mut reported_at = started;
        while let Some(verdict) = calls.next().await {
            match verdict {
                Verdict::Computed => report.computed += 1,
                Verdict::Skipped => report.skipped += 1,
                Verdict::Failed => report.failed += 1,
            }
            if reported_at.elapsed() >= self.progress_every {
                reported_at = Instant::now();
                self.report(&report, started, false);
            }
        }
        self.report(&report, started, true);
        report
    }

    fn report(&mut self, report: &WarmReport, started: Instant, done: bool) {
        tracing::info!(target: "redis_memo",
            computed = report.computed,
            skipped = report.skipped,
            failed = report.failed,
            elapsed = ?started.elapsed(),
            done,
            "redis-memo: warming"
        );
        if let Some(progress) = &mut self.on_progress {
            progress(report);
        }
    }
}

tokio::task_local! {
    /// What the warm call running on this task did; set only by [`Warm::run`].
    static OUTCOME: Arc<Outcome>;
}

/// What one warm call did, noted by the runtime as it happens.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    flags: AtomicU8,
    /// Memoized calls of the warm call running now, nested in one another: only the
    /// outermost's failure is the warm call's (a body may handle an error of its own calls).
    depth: AtomicU32,
}

const RAN: u8 = 1;
const FAILED: u8 = 2;

enum Verdict {
    Computed,
    Skipped,
    Failed,
}

/// Notes, if the current task runs a warm call, that the call runs its function's body.
pub(crate) fn note_ran() {
    let _ = OUTCOME.try_with(|outcome| outcome.flags.fetch_or(RAN, Ordering::Relaxed));
}

/// Notes, if the current task runs a warm call and this is its outermost memoized call (or
/// a batch), that the body failed: nothing was stored, whatever the call returns (with
/// `fail_safe`, its last good value).
pub(crate) fn note_failed() {
    let _ = OUTCOME.try_with(|outcome| {
        if outcome.depth.load(Ordering::Relaxed) <= 1 {
            outcome.flags.fetch_or(FAILED, Ordering::Relaxed);
        }
    });
}

/// A memoized call made by a warm call, for as long as it runs.
pub(crate) struct Claim {
    outcome: Arc<Outcome>,
    outermost: bool,
}

impl Claim {
    /// Entered at the start of every memoized call: a claim if the current task runs a warm
    /// call.
    pub(crate) fn enter() -> Option<Claim> {
        OUTCOME
            .try_with(|outcome| Claim {
                outermost: outcome.depth.fetch_add(1, Ordering::Relaxed) == 0,
                outcome: Arc::clone(outcome),
            })
            .ok()
    }

    /// The call returned; `failed` if what it returned is a failure (counted for the
    /// outermost call only).
    pub(crate) fn finish(self, failed: bool) {
        if failed && self.outermost {
            self.outcome.flags.fetch_or(FAILED, Ordering::Relaxed);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.outcome.depth.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Outcome {
    fn verdict(&self) -> Verdict {
        let flags = self.flags.load(Ordering::Relaxed);
        if flags & FAILED != 0 {
            Verdict::Failed
        } else if flags & RAN != 0 {
            Verdict::Computed
        } else {
            Verdict::Skipped
        }
    }
}
