//! The Redis connection behind the backend, replaced when it stops serving.
//!
//! `ConnectionManager` reconnects by itself only when its socket reports an error. A
//! half-open connection (the peer vanished without closing it: a blackholed failover, a NAT
//! entry dropped, a proxy that stopped forwarding) reports none, so every request times out
//! for as long as the kernel keeps it; and after a failover that moves the address to a new
//! primary, a connection still open to the demoted one answers `READONLY` to every write,
//! forever. So here [`REPLACE_AFTER_TIMEOUTS`] consecutive timeouts (of operations that had a
//! whole operation timeout), or one `READONLY`, replace
//! the manager with a new one (for caches built from a URL: a manager passed in cannot be
//! remade), at most once per [`RedisConnection::min_interval`]; the fill channels this
//! process listens on are subscribed again on the new connection, and their waiters look
//! again (a fill announced meanwhile is lost). TCP keepalive and `TCP_USER_TIMEOUT` (set on
//! URL connections) let the kernel notice a dead peer as well.

use crate::CacheError;
use crate::notify::Notices;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Consecutive timeouts after which the connection is replaced, if they span at least an
/// operation timeout (requests in flight together when a server pauses once time out together;
/// that is a slow server, not a dead connection).
pub(crate) const REPLACE_AFTER_TIMEOUTS: u32 = 3;
/// How often a replacement is logged as a warning (the others at debug level): a long stall
/// may replace the connection after each breaker cooldown.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What a new connection is made from.
pub(crate) struct Remake {
    pub(crate) client: redis::Client,
    pub(crate) config: ConnectionManagerConfig,
}

pub(crate) struct RedisConnection {
    current: RwLock<ConnectionManager>,
    remake: Option<Remake>,
    consecutive_timeouts: AtomicU32,
    /// When the first of the current run of timeouts happened.
    first_timeout_at: Mutex<Option<Instant>>,
    last_replaced: Mutex<Option<Instant>>,
    last_warned: Mutex<Option<Instant>>,
    /// How many times the connection was replaced.
    replacements: AtomicU32,
    op_timeout: Duration,
    /// Where pushed pub/sub messages go; `None` for a connection built by the user, whose
    /// pushes do not reach us.
    pub(crate) notices: Option<Notices>,
    /// Orders SUBSCRIBE and UNSUBSCRIBE of this process, so that an unsubscription decided
    /// when the last listener left cannot overtake a new listener's subscription.
    pub(crate) subscriptions: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("remakable", &self.remake.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisConnection {
    pub(crate) fn new(
        manager: ConnectionManager,
        remake: Option<Remake>,
        op_timeout: Duration,
        notices: Option<Notices>,
    ) -> Arc<Self> {
        Arc::new(RedisConnection {
            current: RwLock::new(manager),
            remake,
            consecutive_timeouts: AtomicU32::new(0),
            first_timeout_at: Mutex::new(None),
            last_replaced: Mutex::new(None),
            last_warned: Mutex::new(None),
            replacements: AtomicU32::new(0),
            op_timeout,
            notices,
            subscriptions: tokio::sync::Mutex::new(()),
        })
    }

    /// The connection to send a command on (a cheap handle).
    pub(crate) fn manager(&self) -> ConnectionManager {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The shortest time between two replacements: a server that is only slow (paused,
    /// loading) must not have its connection remade on every burst of timeouts.
    fn min_interval(&self) -> Duration {
        (self.op_timeout * 4).max(Duration::from_secs(1))
    }

    /// Learns from one command's outcome whether the connection still serves.
    pub(crate) fn observe<T>(self: &Arc<Self>, result: &Result<T, CacheError>) {
        match result {
            // Read first: a write on every command would bounce the cache line between cores.
            Ok(_) => {
                if self.consecutive_timeouts.load(Relaxed) != 0 {
                    self.consecutive_timeouts.store(0, Relaxed);
                }
            }
            // Only an operation that had a whole timeout says the connection is silent; one
            // that had what was left of a call's budget may just have met a slow server.
            Err(error) if error.is_silence(self.op_timeout) => {
                let timeouts = self.consecutive_timeouts.fetch_add(1, Relaxed) + 1;
                let first_at = {
                    let mut first = lock(&self.first_timeout_at);
                    if timeouts == 1 || first.is_none() {
                        *first = Some(Instant::now());
                    }
                    first.unwrap_or_else(Instant::now)
                };
                if timeouts >= REPLACE_AFTER_TIMEOUTS && first_at.elapsed() >= self.op_timeout {
                    self.replace("it timed out repeatedly (a half-open connection?)");
                }
            }
            Err(CacheError::Redis(error)) if is_read_only(error) => {
                self.replace("the server it reaches is a replica now (READONLY)");
            }
            Err(_) => {}
        }
    }

    fn replace(self: &Arc<Self>, why: &'static str) {
        let Some(remake) = &self.remake else {
            return;
        };
        {
            let mut last = lock(&self.last_replaced);
            if last.is_some_and(|at| at.elapsed() < self.min_interval()) {
                return;
            }
            *last = Some(Instant::now());
        }
        let fresh = match ConnectionManager::new_lazy_with_config(
            remake.client.clone(),
            remake.config.clone(),
        ) {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::warn!(target: "redis_memo", %error, "redis-memo: could not make a new Redis connection");
                return;
            }
        };
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        self.consecutive_timeouts.store(0, Relaxed);
        self.replacements.fetch_add(1, Relaxed);
        let warn = {
            let mut last = lock(&self.last_warned);
            let due = last.is_none_or(|at| at.elapsed() >= WARN_EVERY);
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if warn {
            tracing::warn!(target: "redis_memo", reason = why, "redis-memo: replacing the Redis connection");
        } else {
            tracing::debug!(target: "redis_memo", reason = why, "redis-memo: replacing the Redis connection");
        }
        if self.notices.is_some()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let connection = Arc::clone(self);
            runtime.spawn(async move { connection.resubscribe().await });
        }
    }

    /// Subscribes the new connection to every channel listened on, then lets every waiter
    /// look at its entry again.
    async fn resubscribe(&self) {
        let Some(notices) = &self.notices else {
            return;
        };
        let channels = notices.listened_channels();
        if !channels.is_empty() {
            // One SUBSCRIBE for all of them, one operation timeout: the lock that orders
            // subscriptions is held meanwhile.
            let _ordered = self.subscriptions.lock().await;
            let mut manager = self.manager();
            let _ = tokio::time::timeout(self.op_timeout, manager.subscribe(channels)).await;
        }
        notices.wake_all();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn is_read_only(error: &redis::RedisError) -> bool {
    error.code() == Some("READONLY")
        || error
            .detail()
            .is_some_and(|detail| detail.contains("READONLY"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection to a port nothing listens on (made lazily: nothing is sent here).
    fn connection(op_timeout: Duration) -> Arc<RedisConnection> {
        let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
        let config = ConnectionManagerConfig::new();
        let manager =
            ConnectionManager::new_lazy_with_config(client.clone(), config.clone()).unwrap();
        RedisConnection::new(manager, Some(Remake { client, config }), op_timeout, None)
    }

    fn timed_out(budget: Duration) -> Result<(), CacheError> {
        Err(CacheError::Timeout(budget))
    }

    #[tokio::test]
    async fn replaced_after_timeouts_spread_over_an_op_timeout_at_most_once_a_second() {
        let op_timeout = Duration::from_millis(20);
        let connection = connection(op_timeout);
        let replacements = || connection.replacements.load(Relaxed);
        for _ in 0..5 {
            connection.observe(&timed_out(op_timeout));
        }
        assert_eq!(
            replacements(),
            0,
            "timeouts that came together: one pause, not a dead peer"
        );
        // Waiting out a duration is what is under test.
        tokio::time::sleep(op_timeout).await;
        connection.observe(&timed_out(op_timeout));
        assert_eq!(
            replacements(),
            1,
            "a run of timeouts over an operation timeout"
        );
        for _ in 0..3 {
            connection.observe(&timed_out(op_timeout));
        }
        tokio::time::sleep(op_timeout).await;
        connection.observe(&timed_out(op_timeout));
        assert_eq!(replacements(), 1, "not again within a second");

        let fresh = self::connection(op_timeout);
        fresh.observe(&timed_out(Duration::from_millis(1)));
        fresh.observe(&Ok::<(), CacheError>(()));
        for _ in 0..5 {
            fresh.observe(&timed_out(op_timeout / 2));
        }
        tokio::time::sleep(op_timeout).await;
        fresh.observe(&timed_out(op_timeout / 2));
        assert_eq!(
            fresh.replacements.load(Relaxed),
            0,
            "timeouts on what was left of a budget say nothing about the connection"
        );
    }
}
