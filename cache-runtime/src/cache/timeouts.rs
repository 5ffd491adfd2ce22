//! `soft_timeout` and `hard_timeout`: bounds on how long a caller waits for the body.
//!
//! - `soft_timeout` (with `fail_safe`): when a fail-safe value exists and the body has not
//!   finished in time, the caller gets that value; the body finishes in the background and
//!   stores its result through the lease the caller held.
//! - `hard_timeout` (functions returning `Result`): the caller waits no longer in any case.
//!   It gets the fail-safe value if there is one, else `Err(E::from(TimedOut))`, so the
//!   function's error type must implement `From<TimedOut>`. With `stale`, `early` or
//!   `soft_timeout` (whose generated code builds the body from owned copies of the
//!   parameters) the body finishes in the background and stores its result; otherwise it is
//!   cancelled where it stands. Counted from the start of the call, lock waits included.
//!
//! A body that finishes in the background runs as a task of its own from the start (so it
//! can outlive the call); a slot shared with the caller says who stores its result: the
//! caller, if it was still waiting, else the task.

use crate::Cache;
use crate::backend::HeldLease;
use crate::cache::memoize::{EntryAt, Fallback};
use crate::cache::refresh::{RefreshJob, Refreshing, SpawnedBody};
use crate::flight::LeaderGuard;
use crate::returns::ReturnKind;
use crate::stats::Event;
use crate::tags::Token;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// The error a call with `hard_timeout` returns, converted into the function's own error type,
/// when the body took longer and there was no fail-safe value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the memoized function did not finish within its hard timeout of {after:?}")]
#[non_exhaustive]
pub struct TimedOut {
    /// The hard timeout.
    pub after: Duration,
}

/// An error type that a `hard_timeout` can be returned as.
#[diagnostic::on_unimplemented(
    message = "with `hard_timeout`, the error type `{Self}` must implement `From<redis_memo::TimedOut>`",
    label = "a call that times out returns `Err(TimedOut.into())`",
    note = "add `impl From<redis_memo::TimedOut> for {Self}`, or a variant `#[error(transparent)] TimedOut(#[from] redis_memo::TimedOut)` with thiserror"
)]
pub trait TimeoutError: From<TimedOut> {}

impl<E: From<TimedOut>> TimeoutError for E {}

/// How a memoized call returns a hard timeout: generated code passes [`NoTimeoutError`] for
/// functions without `hard_timeout`, [`TimeoutAsError`] for those with it.
pub trait OnTimeout<R> {
    /// The return value of a call that timed out, if this function has one.
    fn timed_out(&self, after: Duration) -> Option<R>;
}

/// Functions without `hard_timeout`.
#[derive(Debug, Clone, Copy)]
pub struct NoTimeoutError;

impl<R> OnTimeout<R> for NoTimeoutError {
    fn timed_out(&self, _: Duration) -> Option<R> {
        None
    }
}

/// Functions with `hard_timeout`: `Err(E::from(TimedOut))`.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutAsError;

impl<T, E: TimeoutError> OnTimeout<Result<T, E>> for TimeoutAsError {
    fn timed_out(&self, after: Duration) -> Option<Result<T, E>> {
        Some(Err(E::from(TimedOut { after })))
    }
}

/// What the body's task needs to store its result once the caller stopped waiting.
pub(crate) struct LateFill {
    pub(crate) job: RefreshJob,
    pub(crate) lease: HeldLease,
    pub(crate) tokens: Option<Vec<Token>>,
    pub(crate) started_ms: u64,
    /// Marks the key as refreshing in this process until the task ends, so callers that
    /// have a fail-safe value take it instead of computing again.
    pub(crate) refreshing: Option<Refreshing>,
}

/// Between a caller and the task running its body.
#[doc(hidden)]
#[derive(Default)]
pub struct Handoff {
    state: Mutex<HandoffState>,
    /// Notified when the caller gives up: from then on the body is bounded by its lease.
    pub(crate) gave_up: tokio::sync::Notify,
}

#[derive(Default)]
enum HandoffState {
    /// The caller waits: the task hands its result back.
    #[default]
    Waiting,
    /// The task finished first: its result is in its join handle.
    Finished,
    /// The caller gave up: the task stores its result.
    GaveUp(Box<LateFill>),
}

impl Handoff {
    fn state(&self) -> std::sync::MutexGuard<'_, HandoffState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The task finished: `Some(late)` if the caller gave up and the task must store.
    pub(crate) fn finish(&self) -> Option<Box<LateFill>> {
        match std::mem::replace(&mut *self.state(), HandoffState::Finished) {
            HandoffState::GaveUp(late) => Some(late),
            _ => None,
        }
    }

    /// The caller gives up: `Err(late)` back if the task finished meanwhile (then its result
    /// waits in the join handle, and the caller stores it as usual).
    fn give_up(&self, late: Box<LateFill>) -> Result<(), Box<LateFill>> {
        let mut state = self.state();
        match *state {
            HandoffState::Finished => Err(late),
            _ => {
                *state = HandoffState::GaveUp(late);
                self.gave_up.notify_one();
                Ok(())
            }
        }
    }
}

/// A body's task, aborted if its caller goes away while waiting for it.
struct AbortOnDrop<R>(Option<tokio::task::JoinHandle<Option<R>>>);

impl<R> AbortOnDrop<R> {
    async fn join(&mut self) -> Result<Option<R>, tokio::task::JoinError> {
        match &mut self.0 {
            Some(handle) => handle.await,
            None => std::future::pending().await,
        }
    }

    /// The task goes on by itself (it stores its own result).
    fn detach(mut self) {
        self.0 = None;
    }
}

impl<R> Drop for AbortOnDrop<R> {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// The result of a body's task that its caller waited for.
async fn joined<R>(joined: Result<Option<R>, tokio::task::JoinError>) -> R {
    match joined {
        Ok(Some(result)) => result,
        Err(error) => match error.try_into_panic() {
            // The body's panic reaches its caller, as it would in place.
            Ok(payload) => std::panic::resume_unwind(payload),
            // Cancelled: the runtime is shutting down, and this caller with it.
            Err(_) => std::future::pending().await,
        },
        // The task stores its result itself only after its caller gave up, and then nobody
        // waits for it here.
        Ok(None) => std::future::pending().await,
    }
}

/// How waiting for the body ended.
pub(crate) enum Waited<R> {
    /// The body's result, for the caller to share and store as usual.
    Finished(R),
    /// The caller stopped waiting: what it returns (a fail-safe value or the timeout error);
    /// the body, if it goes on, stores its own result.
    GaveUp(R),
}

/// The body, running in place or as a task of its own.
pub(crate) enum Body<F, R> {
    InPlace(F),
    Spawned(SpawnedBody<R>),
}

impl Cache {
    /// Waits for `body` within the function's timeouts (the hard one counted from
    /// `call_started`); see the module's doc. The lease stays in `guard` (so a cancelled
    /// leader hands it on) unless the caller gives up: then it goes to the body's task, or,
    /// for a body cancelled in place, back to Redis.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn wait_within<K, R, F>(
        &self,
        entry: &EntryAt<'_>,
        body: Body<F, R>,
        guard: &mut LeaderGuard<'_>,
        tokens: &Option<Vec<Token>>,
        (call_started, started_ms): (Instant, u64),
        fallback: &mut Option<Fallback<K::Stored>>,
        timed_out: impl FnOnce(Duration) -> Option<R>,
    ) -> Waited<R>
    where
        K: ReturnKind<R>,
        F: std::future::Future<Output = R>,
    {
        let spec = entry.spec;
        let soft = spec
            .soft_timeout
            .filter(|_| fallback.is_some())
            .map(|soft| Instant::now() + soft);
        let hard = spec.hard_timeout.map(|hard| call_started + hard);
        let give_up_at = match (soft, hard) {
            (Some(soft), Some(hard)) => Some(soft.min(hard)),
            (soft, hard) => soft.or(hard),
        };
        let (handle, handoff) = match body {
            Body::InPlace(compute) => {
                let Some(at) = give_up_at else {
                    return Waited::Finished(compute.await);
                };
                return match tokio::time::timeout_at(at, compute).await {
                    Ok(result) => Waited::Finished(result),
                    // Cancelled where it stands: nothing to store. The lease goes back in the
                    // background: the caller waits no longer than its hard timeout, not even
                    // for that round trip.
                    Err(_) => {
                        if let Some(lease) = guard.take_lease() {
                            self.release_in_background(entry, lease);
                        }
                        Waited::GaveUp(self.gave_up::<K, R>(spec, soft, fallback, timed_out))
                    }
                };
            }
            Body::Spawned(SpawnedBody { handle, handoff }) => (handle, handoff),
        };
        // If this caller is cancelled while waiting, so is its body, as it would be in place.
        let mut handle = AbortOnDrop(Some(handle));
        let Some(at) = give_up_at else {
            return Waited::Finished(joined(handle.join().await).await);
        };
        if let Ok(result) = tokio::time::timeout_at(at, handle.join()).await {
            return Waited::Finished(joined(result).await);
        }
        let Some(held) = guard.take_lease() else {
            // No lease, nothing the task could store: cancelled.
            drop(handle);
            return Waited::GaveUp(self.gave_up::<K, R>(spec, soft, fallback, timed_out));
        };
        let late = Box::new(LateFill {
            job: RefreshJob::owned(entry),
            lease: held,
            tokens: tokens.clone(),
            started_ms,
            refreshing: self.mark_refreshing(entry.key),
        });
        match handoff.give_up(late) {
            Ok(()) => {
                handle.detach();
                Waited::GaveUp(self.gave_up::<K, R>(spec, soft, fallback, timed_out))
            }
            // It finished just now after all.
            Err(late) => {
                guard.hold_lease(late.lease);
                Waited::Finished(joined(handle.join().await).await)
            }
        }
    }

    /// Gives `lease` back in a task of its own, which [`Cache::writes_done`] waits for.
    fn release_in_background(&self, entry: &EntryAt<'_>, lease: HeldLease) {
        let spec = entry.spec;
        let cache = self.clone();
        self.spawn_write(async move { cache.release(spec, lease, false).await });
    }

    /// What a caller that stopped waiting returns, counted.
    fn gave_up<K: ReturnKind<R>, R>(
        &self,
        spec: &'static crate::spec::FnSpec,
        soft: Option<Instant>,
        fallback: &mut Option<Fallback<K::Stored>>,
        timed_out: impl FnOnce(Duration) -> Option<R>,
    ) -> R {
        let soft_passed = soft.is_some_and(|soft| Instant::now() >= soft);
        self.record(
            if soft_passed {
                Event::SoftTimeout
            } else {
                Event::HardTimeout
            },
            spec,
        );
        if let Some(fallback) = fallback.take() {
            self.record(Event::FailSafe, spec);
            return K::from_stored(fallback.value);
        }
        let after = spec.hard_timeout.unwrap_or_default();
        timed_out(after).expect(
            "only `hard_timeout` gives up without a fail-safe value, and it requires a `Result`",
        )
    }

    /// Stores the result of a body whose caller stopped waiting.
    pub(crate) async fn fill_late<K: ReturnKind<R>, R>(&self, late: LateFill, result: R) {
        let entry = late.job.entry();
        let computed_ms = self.ms_since(late.started_ms);
        let encoded = late
            .tokens
            .as_deref()
            .and_then(|tokens| self.encode_storable::<K, R>(&entry, &result, tokens, computed_ms));
        self.store(&entry, late.lease, encoded, false, Duration::ZERO)
            .await;
        drop(late.refreshing);
    }
}
