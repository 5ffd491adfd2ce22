//! The one way the cache reaches its store: every request passes the circuit breaker and
//! its outcome feeds it, by one rule.
//!
//! The rule: an answer (even an error reply from a live server: `OOM`, `READONLY`,
//! `WRONGTYPE`, `NOPERM`) closes the breaker; an outage (no connection, silence) counts
//! towards opening it, except a timeout of a step that had only what was left of a call's
//! budget, which says the server is slow for this call rather than down. How long a request
//! may take is enforced below, where it is sent ([`RedisBackend`](super::RedisBackend)'s
//! `bounded`); the gate only judges what came back.

use super::Backend;
use crate::CacheError;
use crate::health::Health;
use futures_util::FutureExt;
use futures_util::future::Either;
use std::time::Duration;
use tokio::time::Instant;

/// The store behind the circuit breaker. The cache holds one; everything it asks of the
/// store goes through [`Gate::pass`] or [`Gate::settle`].
#[derive(Debug)]
pub(crate) struct Gate {
    backend: Backend,
    health: Health,
    op_timeout: Duration,
}

impl Gate {
    pub(crate) fn new(backend: Backend, health: Health, op_timeout: Duration) -> Self {
        Gate {
            backend,
            health,
            op_timeout,
        }
    }

    /// The store, to build requests for [`Gate::pass`] and [`Gate::settle`] (futures do
    /// nothing until the gate awaits them), and for what lives beyond one request (a lease
    /// given back in the background).
    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The longest one request may take (see `CacheBuilder::op_timeout`).
    pub(crate) fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// Whether a request may start now for a step that must be done by `deadline`: the
    /// breaker is closed and the budget is not spent.
    pub(crate) fn admits(&self, deadline: Instant) -> bool {
        self.health.allows_request() && Instant::now() < deadline
    }

    /// Sends `request` unless the breaker is open ([`CacheError::Unavailable`], without
    /// touching the store; decided when called), and feeds the breaker with its outcome.
    pub(crate) fn pass<T>(
        &self,
        operation: &'static str,
        request: impl Future<Output = Result<T, CacheError>>,
    ) -> impl Future<Output = Result<T, CacheError>> {
        if self.health.allows_request() {
            Either::Left(self.settle(operation, request))
        } else {
            Either::Right(std::future::ready(Err(CacheError::Unavailable)))
        }
    }

    /// Sends `request` even with the breaker open, and feeds the breaker with its outcome: for
    /// what must at least be tried (an invalidation the caller asked for, a lease given back
    /// that others would otherwise wait out, a health check).
    pub(crate) fn settle<T>(
        &self,
        operation: &'static str,
        request: impl Future<Output = Result<T, CacheError>>,
    ) -> impl Future<Output = Result<T, CacheError>> {
        // A combinator rather than an `async fn`: the request is held once, not copied into
        // each wrapping state machine (the call path's future stays small).
        request.map(move |result| {
            self.judge(operation, &result);
            result
        })
    }

    fn judge<T>(&self, operation: &'static str, result: &Result<T, CacheError>) {
        match result {
            Err(error) if error.is_outage() => {
                let short_budget =
                    matches!(error, CacheError::Timeout(_)) && !error.is_silence(self.op_timeout);
                if !short_budget {
                    self.health.record_failure(operation, error);
                }
            }
            _ => self.health.record_success(),
        }
    }

    /// Counts a request a live server refused; `Some(count since the last warning)` when a
    /// warning is due (the first, then at most one a minute).
    pub(crate) fn refusal_due(&self) -> Option<u64> {
        self.health.record_refusal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    fn gate(threshold: u32) -> Gate {
        Gate::new(
            Backend::Memory(MemoryStore::new()),
            Health::new(threshold, Duration::from_secs(3600)),
            Duration::from_millis(100),
        )
    }

    fn outage() -> CacheError {
        CacheError::Redis(redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
    }

    fn refusal() -> CacheError {
        CacheError::Redis(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "READONLY",
        )))
    }

    #[tokio::test]
    async fn outages_open_the_breaker_and_then_pass_touches_nothing() {
        let gate = gate(2);
        for _ in 0..2 {
            let _ = gate.pass("get", async { Err::<(), _>(outage()) }).await;
        }
        let touched = std::cell::Cell::new(false);
        let skipped = gate
            .pass("get", async {
                touched.set(true);
                Ok(())
            })
            .await;
        assert!(matches!(skipped, Err(CacheError::Unavailable)));
        assert!(!touched.get(), "an open breaker sends nothing");
        assert!(!gate.admits(Instant::now() + Duration::from_secs(1)));
        // `settle` still tries, and an answer closes the breaker.
        gate.settle("invalidate", async { Ok(()) }).await.unwrap();
        assert!(gate.pass("get", async { Ok(()) }).await.is_ok());
    }

    #[tokio::test]
    async fn refusals_and_short_budget_timeouts_do_not_open_it() {
        let gate = gate(1);
        let _ = gate.pass("fill", async { Err::<(), _>(refusal()) }).await;
        let short = CacheError::Timeout(Duration::from_millis(5));
        let _ = gate.pass("acquire", async { Err::<(), _>(short) }).await;
        assert!(gate.admits(Instant::now() + Duration::from_secs(1)));
        let whole = CacheError::Timeout(Duration::from_millis(100));
        let _ = gate.pass("get", async { Err::<(), _>(whole) }).await;
        assert!(!gate.admits(Instant::now() + Duration::from_secs(1)));
    }

    #[test]
    fn a_spent_budget_admits_nothing() {
        assert!(!gate(1).admits(Instant::now()));
    }
}
