//! The connection that keeps the in-process tier coherent: a RESP3 connection with client
//! tracking on, on which the tier's reads are sent.
//!
//! `OPTIN` mode: only reads preceded by `CLIENT CACHING yes` (in the same write, so nothing
//! comes between) are tracked, which are the reads whose values are kept. A tagged entry that
//! is not kept is read on this connection too, untracked: its reply is then ordered after
//! every invalidation of the tag tokens it is judged with (see [`TieredRead`]). Not `BCAST`:
//! Redis tells this connection about the keys it read and no others, so a process is not
//! woken by every write to the namespace. The server remembers the keys tracked (up to
//! `tracking-table-max-keys`; past it, it invalidates the oldest, which only costs copies).
//!
//! Its own connection, not the cache's `ConnectionManager`: that one forwards pushes through a
//! task of its own, so an invalidation could reach us after a later reply. Here the push
//! handler runs inside the connection's reader, before any later reply is handed out; that
//! is what bounds how long a copy can outlive a change (see the README's "In-process tier").
//!
//! Every change of connection drops every copy (the epoch moves, under the lock that hands
//! out the connection, so a read's copies belong to the connection it was sent on): its own
//! `Disconnection` push, a read on it that met silence, a new connection. So does a flush (an
//! invalidation with no keys). Reads wait for no connection: while none is up, they go to the
//! cache's main connection and keep nothing, and a new one is made in the background (after
//! a failure, not before a backoff).

use super::local::{Copies, Stripe, Ticket};
use crate::CacheError;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use smallvec::SmallVec;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Values read through the tier, in the order of their keys: an entry and its tag tokens.
pub(crate) type Values = SmallVec<[Option<Bytes>; 5]>;

/// The longest wait before trying to connect again after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where the tracking connection stands.
enum State {
    /// No connection; a read starts one, not before `retry_at`.
    Down { retry_at: Option<Instant> },
    /// Connection `id` is being made.
    Connecting(u64),
    /// Connection `id` tracks reads.
    Up(u64, MultiplexedConnection),
}

/// The tracking connection and the copies it keeps coherent.
pub(crate) struct Tracking {
    client: redis::Client,
    copies: Arc<Copies>,
    op_timeout: Duration,
    state: Mutex<State>,
    next_id: std::sync::atomic::AtomicU64,
    /// Consecutive failed attempts to connect (for the backoff).
    failures: std::sync::atomic::AtomicU32,
    /// Notified when an attempt to connect ends.
    settled: tokio::sync::Notify,
    /// This, for the push handlers of its connections (which must not keep it alive).
    me: std::sync::Weak<Tracking>,
    failed_log: crate::health::LogEvery,
    /// What `failed_log` counts time from.
    created: Instant,
}

impl std::fmt::Debug for Tracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracking")
            .field("copies", &self.copies)
            .finish_non_exhaustive()
    }
}

/// A read that may be sent on connection `id`, with its copies' ticket.
pub(crate) struct TieredRead {
    pub(crate) id: u64,
    pub(crate) connection: MultiplexedConnection,
    pub(crate) ticket: Ticket,
}

impl Tracking {
    pub(crate) fn new(
        client: redis::Client,
        copies: Arc<Copies>,
        op_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Tracking {
            client,
            copies,
            op_timeout,
            state: Mutex::new(State::Down { retry_at: None }),
            next_id: std::sync::atomic::AtomicU64::new(0),
            failures: std::sync::atomic::AtomicU32::new(0),
            settled: tokio::sync::Notify::new(),
            me: me.clone(),
            failed_log: crate::health::LogEvery::minute(),
            created: Instant::now(),
        })
    }

    pub(crate) fn copies(&self) -> &Copies {
        &self.copies
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts making the connection, in the background.
    pub(crate) fn start(self: &Arc<Self>) {
        let mut state = self.state();
        self.connect_if_due(&mut state);
    }

    /// The connection to send a read of the keys in `stripes` on, with the ticket of their
    /// copies (taken under the lock: the copies it admits are those tracked on that
    /// connection); `None`, having started to make one if due, when no connection tracks
    /// reads now.
    pub(crate) fn begin(self: &Arc<Self>, stripes: &[Stripe]) -> Option<TieredRead> {
        let mut state = self.state();
        if let State::Up(id, connection) = &*state {
            return Some(TieredRead {
                id: *id,
                connection: connection.clone(),
                ticket: self.copies.ticket(stripes),
            });
        }
        self.connect_if_due(&mut state);
        None
    }

    fn connect_if_due(self: &Arc<Self>, state: &mut State) {
        let State::Down { retry_at } = state else {
            return;
        };
        if retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *state = State::Connecting(id);
        let tracking = Arc::clone(self);
        // Spawned, so that the state always leaves `Connecting` (no caller's cancellation can
        // leave it there).
        runtime.spawn(async move { tracking.connect(id).await });
    }

    /// Makes connection `id`, turns tracking on, and offers it for reads.
    async fn connect(&self, id: u64) {
        let made = match tokio::time::timeout(self.op_timeout * 2, self.make(id)).await {
            Ok(made) => made,
            Err(_) => Err(CacheError::Timeout(self.op_timeout * 2)),
        };
        {
            let mut state = self.state();
            let current = matches!(&*state, State::Connecting(connecting) if *connecting == id);
            match made {
                Ok(connection) if current => {
                    // Copies read on an earlier connection are not tracked on this one.
                    self.copies.drop_all();
                    *state = State::Up(id, connection);
                    self.failures.store(0, std::sync::atomic::Ordering::Relaxed);
                }
                // Lost while it was being made (its own disconnection): the next read tries.
                Ok(_) => {}
                Err(error) => {
                    if current {
                        *state = State::Down {
                            retry_at: Some(Instant::now() + self.backoff()),
                        };
                    }
                    let now_ms =
                        u64::try_from(self.created.elapsed().as_millis()).unwrap_or(u64::MAX);
                    if let Some(failures) = self.failed_log.tick(now_ms) {
                        tracing::warn!(target: "redis_memo", %error, failures, "redis-memo: the in-process tier's tracking connection could not be made; reads go to the main connection and keep nothing");
                    }
                }
            }
        }
        self.settled.notify_waiters();
    }

    /// How long to wait after one more failed attempt: the operation timeout, doubled per
    /// failure, up to [`MAX_BACKOFF`].
    fn backoff(&self) -> Duration {
        let failures = self
            .failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (self.op_timeout * 2u32.saturating_pow(failures.min(16))).min(MAX_BACKOFF)
    }

    async fn make(&self, id: u64) -> Result<MultiplexedConnection, CacheError> {
        let weak = self.me.clone();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.op_timeout))
            // Each request is bounded by its caller's deadline.
            .set_response_timeout(None)
            .set_push_sender(move |push: redis::PushInfo| {
                if let Some(tracking) = weak.upgrade() {
                    tracking.deliver(id, push);
                }
                Ok::<(), std::convert::Infallible>(())
            });
        let mut connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let () = redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("OPTIN")
            .query_async(&mut connection)
            .await?;
        Ok(connection)
    }

    /// Applies a push of connection `id`: runs inside its reader, before later replies.
    fn deliver(&self, id: u64, push: redis::PushInfo) {
        match push.kind {
            redis::PushKind::Invalidate => match push.data.first() {
                Some(redis::Value::Array(keys)) => {
                    self.copies
                        .drop_keys(keys.iter().filter_map(|key| match key {
                            redis::Value::BulkString(bytes) => Some(bytes.as_slice()),
                            _ => None,
                        }));
                }
                // No keys: the database was flushed.
                _ => self.copies.drop_all(),
            },
            redis::PushKind::Disconnection => self.lost(id),
            _ => {}
        }
    }

    /// Connection `id` can no longer be trusted to report changes: if it is the current one,
    /// every copy goes (under the lock, so no read takes a ticket for it meanwhile) and the
    /// next read makes a new connection.
    fn lost(&self, id: u64) {
        let mut state = self.state();
        if matches!(&*state, State::Up(up, _) if *up == id) {
            self.copies.drop_all();
            *state = State::Down { retry_at: None };
        }
    }

    /// A request on connection `id` failed: silence or a broken connection (not a caller's
    /// short budget, not an error reply) means invalidations may be lost with it.
    pub(crate) fn failed(&self, id: u64, error: CacheError) -> CacheError {
        let silent = match &error {
            CacheError::Timeout(_) => error.is_silence(self.op_timeout),
            other => other.is_outage(),
        };
        if silent {
            self.lost(id);
        }
        error
    }

    /// A round trip on the tracking connection (`probe`), after waiting for one to be made if
    /// need be (up to three operation timeouts): the invalidations sent before it are
    /// applied when it returns.
    pub(crate) async fn sync(self: &Arc<Self>, probe: &redis::Cmd) -> Result<(), CacheError> {
        let patience = self.op_timeout * 3;
        let deadline = Instant::now() + patience;
        let mut read = loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            {
                let mut state = self.state();
                if let State::Down { retry_at } = &mut *state {
                    // Asked for explicitly: no backoff.
                    *retry_at = None;
                }
            }
            if let Some(read) = self.begin(&[]) {
                break read;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return Err(CacheError::Timeout(patience));
            }
            if matches!(&*self.state(), State::Down { .. }) {
                return Err(CacheError::Unavailable);
            }
        };
        let deadline = Instant::now() + self.op_timeout;
        match tokio::time::timeout_at(deadline, probe.query_async::<()>(&mut read.connection)).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(self.failed(read.id, error.into())),
            Err(_) => Err(self.failed(read.id, CacheError::Timeout(self.op_timeout))),
        }
    }
}
