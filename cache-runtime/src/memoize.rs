//! The read and fill path of a memoized call (cache-aside with in-process coalescing).
//!
//! 1. Read the entry. A usable entry is a hit: done, in one round trip.
//! 2. Otherwise join the key's flight: one caller per key and process leads, the others wait
//!    for it. A leader whose read may predate another flight's fill reads again, within the
//!    same deadline as its first read.
//! 3. The leader runs the function (no entry, an entry that does not decode, Redis
//!    unavailable), hands the encoded result to the waiters, and stores it with `SET … PX`
//!    when the kind allows it and Redis answered the read.
//!
//! Time spent on Redis is bounded: at most the operation timeout before the function runs
//! (first read and re-read share one deadline; after an outage there is no re-read and no
//! write), and at most the operation timeout storing the result.

use crate::CacheError;
use crate::cache::Cache;
use crate::codec::Bincode;
use crate::envelope::{self, DecodeError, EntryTimes};
use crate::flight::{self, LeaderGuard, Role, Shared, WaitOutcome};
use crate::lease::{self, Acquired, HeldLease};
use crate::notify::Notice;
use crate::returns::ReturnKind;
use crate::spec::FnSpec;
use crate::stats::Event;
use bytes::Bytes;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// What taking an entry's lease gave.
enum LeaseOutcome<V> {
    Held(HeldLease),
    /// Someone filled the entry since this call's read: its value (the lease was given back).
    Filled(Bytes, V),
    /// Another caller holds it.
    Busy,
    /// Redis failed or is unavailable.
    Failed,
}

/// What a read found.
enum Read {
    Entry(Bytes),
    Missing,
    /// Redis answered, but not with a usable entry (bytes that do not decode, or an error
    /// reply such as `WRONGTYPE`): a miss whose key the fill overwrites.
    Unusable,
    /// Redis failed, timed out, or the breaker is open: run the function, store nothing.
    Unavailable,
}

impl Cache {
    /// `key` is the entry's full key (see [`Cache::entry_key_writer`]); `instance` is passed to
    /// [`FnSpec::fingerprint`].
    pub(crate) async fn memoize<K, R, F>(
        &self,
        spec: &'static FnSpec,
        key: &str,
        instance: &'static str,
        compute: F,
    ) -> R
    where
        K: ReturnKind<R>,
        F: Future<Output = R>,
    {
        let fingerprint = spec.fingerprint::<K::Stored>(instance);
        let flights = &self.inner.flights;
        let ticket = flights.ticket(key);
        let mut read_deadline = Instant::now() + self.inner.op_timeout;
        let mut read = match self.read(spec, key, read_deadline).await {
            Read::Entry(bytes) => match envelope::decode::<Bincode, K::Stored>(&bytes, fingerprint)
            {
                Ok((value, _)) => {
                    self.record(Event::Hit, spec);
                    return K::from_stored(value);
                }
                Err(error) => {
                    self.report_decode_failure(spec, key, &error);
                    Read::Unusable
                }
            },
            other => other,
        };
        loop {
            match flights.join(key, fingerprint, ticket) {
                Role::Leader {
                    guard,
                    read_is_stale,
                } => {
                    // After an outage the first read said all there is to say.
                    if read_is_stale && !matches!(read, Read::Unavailable) {
                        read = self.read(spec, key, read_deadline).await;
                    }
                    return self
                        .lead::<K, R, F>(spec, key, fingerprint, guard, read, compute)
                        .await;
                }
                Role::Waiter(slot) => {
                    tracing::trace!(
                        function = spec.name,
                        key,
                        "waiting for this key's in-process leader"
                    );
                    match flight::wait(slot).await {
                        WaitOutcome::Shared(Shared::Entry(bytes)) => {
                            // The leader encoded these bytes with the same fingerprint, so
                            // they decode; if they somehow did not, computing is still right.
                            match envelope::decode::<Bincode, K::Stored>(&bytes, fingerprint) {
                                Ok((value, _)) => {
                                    self.record(Event::Coalesced, spec);
                                    return K::from_stored(value);
                                }
                                Err(_) => return compute.await,
                            }
                        }
                        // The leader's result was an `Err`: run the function now rather than
                        // queue behind other callers' failures (each caller's wait stays
                        // bounded by its own call).
                        WaitOutcome::Shared(Shared::NotShareable) => return compute.await,
                        // The leader was cancelled or panicked: start over, maybe as the leader.
                        // The ticket is kept: the ended flight counts as completed, so a new
                        // leader reads again (with a fresh deadline: the wait used the first).
                        WaitOutcome::Abandoned => {
                            read_deadline = Instant::now() + self.inner.op_timeout;
                        }
                    }
                }
            }
        }
    }

    async fn lead<K, R, F>(
        &self,
        spec: &'static FnSpec,
        key: &str,
        fingerprint: u64,
        mut guard: LeaderGuard<'_>,
        read: Read,
        compute: F,
    ) -> R
    where
        K: ReturnKind<R>,
        F: Future<Output = R>,
    {
        let (redis_answered, unusable) = match read {
            Read::Entry(bytes) => match envelope::decode::<Bincode, K::Stored>(&bytes, fingerprint)
            {
                Ok((value, _)) => {
                    self.record(Event::Hit, spec);
                    guard.publish(Shared::Entry(bytes));
                    return K::from_stored(value);
                }
                Err(error) => {
                    self.report_decode_failure(spec, key, &error);
                    (true, true)
                }
            },
            Read::Unusable => (true, true),
            Read::Missing => (true, false),
            Read::Unavailable => (false, false),
        };
        self.record(Event::Miss, spec);
        // Only a lease holder may fill: another holder (another process) fills this entry.
        // A lease left by a leader of this process that went away is taken over as is.
        let mut lease = match self.inner.flights.adopt_lease(key, fingerprint) {
            Some(lease) => LeaseOutcome::Held(lease),
            None if redis_answered => self.take_lease::<K::Stored>(spec, key, fingerprint).await,
            None => LeaseOutcome::Failed,
        };
        if let (LeaseOutcome::Busy, Some(wait)) = (&lease, spec.lock_wait) {
            lease = self
                .wait_for_holder::<K::Stored>(spec, key, fingerprint, wait)
                .await;
        }
        match lease {
            // Another caller's value after all (filled since the read, or waited for).
            LeaseOutcome::Filled(bytes, value) => {
                guard.publish(Shared::Entry(bytes));
                return K::from_stored(value);
            }
            LeaseOutcome::Held(lease) => guard.hold_lease(lease),
            LeaseOutcome::Busy | LeaseOutcome::Failed => {}
        }

        let started = Instant::now();
        let result = compute.await;
        let computed_in = started.elapsed();

        let encoded = K::shareable(&result).and_then(|value| self.encode(spec, fingerprint, value));
        match &encoded {
            Some(bytes) => guard.publish(Shared::Entry(bytes.clone())),
            None => guard.publish(Shared::NotShareable),
        }
        if let Some(lease) = guard.take_lease() {
            match encoded.filter(|_| K::storable(&result, spec.cache_none)) {
                Some(bytes) => self.fill(spec, key, lease, bytes, computed_in).await,
                // Nothing to store: give the lease up now rather than make others wait for it,
                // and remove an unusable entry that nothing replaced.
                None => self.release(spec, lease, unusable).await,
            }
        }
        // Dropping the guard ends the flight only now, after the fill: a caller that arrives
        // later reads the stored entry instead of computing again.
        drop(guard);
        result
    }

    fn encode<V: crate::CacheValue>(
        &self,
        spec: &'static FnSpec,
        fingerprint: u64,
        value: &V,
    ) -> Option<Bytes> {
        let now = crate::clock::now_unix_ms();
        let ttl_ms = u64::try_from(spec.ttl.as_millis()).unwrap_or(u64::MAX);
        let times = EntryTimes {
            written_at_ms: now,
            fresh_until_ms: now.saturating_add(ttl_ms),
        };
        match envelope::encode::<Bincode, _>(value, fingerprint, times) {
            Ok(bytes) => Some(Bytes::from(bytes)),
            Err(error) => {
                self.record(Event::EncodeFailure, spec);
                tracing::warn!(function = spec.name, %error, "redis-memo: return value does not serialize; not cached");
                None
            }
        }
    }

    /// Takes the entry's lease for this call. If the entry was filled since this call's read
    /// (the acquire script returns it), the lease goes back and the value is used.
    async fn take_lease<V: crate::CacheValue>(
        &self,
        spec: &'static FnSpec,
        key: &str,
        fingerprint: u64,
    ) -> LeaseOutcome<V> {
        if !self.inner.health.allows_request() {
            self.record(Event::FailOpen, spec);
            return LeaseOutcome::Failed;
        }
        let (lease_key, token) = (lease::lease_key(key), lease::new_token());
        let acquired = self
            .inner
            .backend
            .acquire_lease(key, &lease_key, &token, spec.lease)
            .await;
        let held =
            |lease_key, token| HeldLease::new(self.inner.backend.clone(), key, lease_key, token);
        match self.observe("acquire", spec, acquired) {
            Some(Acquired::Held(Some(bytes))) => {
                match envelope::decode::<Bincode, V>(&bytes, fingerprint) {
                    Ok((value, _)) => {
                        self.release(spec, held(lease_key, token), false).await;
                        LeaseOutcome::Filled(bytes, value)
                    }
                    // Unusable bytes: keep the lease, the fill overwrites them.
                    Err(_) => LeaseOutcome::Held(held(lease_key, token)),
                }
            }
            Some(Acquired::Held(None)) => LeaseOutcome::Held(held(lease_key, token)),
            Some(Acquired::Busy) => LeaseOutcome::Busy,
            None => {
                // The script may have run before the failure (a timeout): give back the lease
                // this token may hold, in the background, rather than leave it to expire.
                drop(held(lease_key, token));
                LeaseOutcome::Failed
            }
        }
    }

    /// `lock`: another process holds the lease; wait up to `wait` for its value instead of
    /// computing too. Woken by the fill's announcement (not by polling): the Redis commands per
    /// waiting process are a subscription, a read and a lease attempt, whatever the wait.
    async fn wait_for_holder<V: crate::CacheValue>(
        &self,
        spec: &'static FnSpec,
        key: &str,
        fingerprint: u64,
        wait: Duration,
    ) -> LeaseOutcome<V> {
        self.record(Event::LockWait, spec);
        let now = Instant::now();
        let deadline = now
            .checked_add(wait)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
        // Each step has its own op timeout; this bounds the whole wait to `wait` plus one.
        let bound = deadline + self.inner.op_timeout;
        match tokio::time::timeout_at(bound, self.wait_until(spec, key, fingerprint, deadline))
            .await
        {
            Ok(outcome) => outcome,
            Err(_) => {
                self.record(Event::LockTimeout, spec);
                LeaseOutcome::Busy
            }
        }
    }

    async fn wait_until<V: crate::CacheValue>(
        &self,
        spec: &'static FnSpec,
        key: &str,
        fingerprint: u64,
        deadline: Instant,
    ) -> LeaseOutcome<V> {
        let mut listener = match self.inner.backend.listen(key).await {
            Ok(listener) => listener,
            Err(error) => {
                let _ = self.observe::<()>("SUBSCRIBE", spec, Err(error));
                None
            }
        };
        loop {
            // The fill may have come before the subscription did.
            if let Read::Entry(bytes) = self
                .read(spec, key, Instant::now() + self.inner.op_timeout)
                .await
                && let Ok((value, _)) = envelope::decode::<Bincode, V>(&bytes, fingerprint)
            {
                return LeaseOutcome::Filled(bytes, value);
            }
            // The holder may be gone (released, or expired after a crash).
            match self.take_lease(spec, key, fingerprint).await {
                LeaseOutcome::Busy => {}
                other => return other,
            }
            let notice = match &mut listener {
                Some(listener) => listener.next(deadline).await,
                // No notifications on this connection: wait out the bound, look once more.
                None => {
                    tokio::time::sleep_until(deadline).await;
                    None
                }
            };
            match notice {
                Some(Notice::Filled(bytes)) => {
                    if let Ok((value, _)) = envelope::decode::<Bincode, V>(&bytes, fingerprint) {
                        return LeaseOutcome::Filled(bytes, value);
                    }
                }
                Some(Notice::Released) => {}
                None => {
                    // The bound is reached. A crashed holder's lease has expired by now if
                    // `wait` is no shorter than it: take it, and this computation is stored.
                    self.record(Event::LockTimeout, spec);
                    return self.take_lease(spec, key, fingerprint).await;
                }
            }
        }
    }

    async fn fill(
        &self,
        spec: &'static FnSpec,
        key: &str,
        lease: HeldLease,
        bytes: Bytes,
        computed_in: Duration,
    ) {
        match self.observe("fill", spec, lease.fill(bytes, spec.ttl).await) {
            Some(true) => self.record(Event::Fill, spec),
            Some(false) => {
                // The lease was lost: an invalidation (or a write) came after this computation
                // began, so its value may be stale; or the computation outlasted its lease.
                self.record(Event::RejectedFill, spec);
                if computed_in >= spec.lease && spec.warn_once_slower_than_lease() {
                    tracing::warn!(
                        function = spec.name,
                        ?computed_in,
                        lease = ?spec.lease,
                        "redis-memo: the computation outlasted its lease, so its value was not stored; \
                         give the function a longer `lock(lease = ..)`"
                    );
                }
                tracing::debug!(
                    function = spec.name,
                    key,
                    "redis-memo: fill rejected, the entry changed while it was computed"
                );
            }
            None => {}
        }
    }

    async fn release(&self, spec: &'static FnSpec, lease: HeldLease, clear_entry: bool) {
        let _ = self.observe("release", spec, lease.release(clear_entry).await);
    }

    /// Health bookkeeping for one backend result: `None` when it failed. An outage feeds the
    /// breaker; an error reply from a live server (`OOM`, `READONLY`) does not.
    fn observe<T>(
        &self,
        operation: &'static str,
        spec: &'static FnSpec,
        result: Result<T, CacheError>,
    ) -> Option<T> {
        match result {
            Ok(value) => {
                self.inner.health.record_success();
                Some(value)
            }
            Err(error) if !error.is_outage() => {
                self.inner.health.record_success();
                self.record(Event::FailOpen, spec);
                // Refusals (OOM under noeviction, READONLY after a failover) last; say so once
                // a minute, with the count, rather than on every miss.
                let refused = self.inner.health.record_refusal();
                if let Some(since_last) = refused {
                    tracing::warn!(function = spec.name, operation, %error, refusals = since_last, "redis-memo: redis refuses to store entries; calls run uncached");
                }
                None
            }
            Err(error) => {
                self.report_outage(operation, spec, &error);
                None
            }
        }
    }

    async fn read(&self, spec: &'static FnSpec, key: &str, deadline: Instant) -> Read {
        if !self.inner.health.allows_request() {
            self.record(Event::FailOpen, spec);
            return Read::Unavailable;
        }
        match self.inner.backend.get(key, deadline).await {
            Ok(found) => {
                self.inner.health.record_success();
                found.map_or(Read::Missing, Read::Entry)
            }
            Err(error) if !error.is_outage() => {
                // A live server's error reply (`WRONGTYPE`: someone else's data under the key).
                self.inner.health.record_success();
                self.record(Event::DecodeFailure, spec);
                tracing::warn!(function = spec.name, key, %error, "redis-memo: reading the entry failed; recomputing and overwriting");
                Read::Unusable
            }
            Err(error) => {
                self.report_outage("GET", spec, &error);
                Read::Unavailable
            }
        }
    }

    fn report_outage(&self, operation: &'static str, spec: &'static FnSpec, error: &CacheError) {
        self.inner.health.record_failure(operation, error);
        self.record(Event::FailOpen, spec);
    }

    fn report_decode_failure(&self, spec: &'static FnSpec, key: &str, error: &DecodeError) {
        self.record(Event::DecodeFailure, spec);
        if matches!(error, DecodeError::Fingerprint) {
            // Expected once per entry after a deploy that changed the type or `version`.
            tracing::debug!(
                function = spec.name,
                key,
                "redis-memo: entry from another version; recomputing"
            );
        } else {
            tracing::warn!(function = spec.name, key, %error, reason = error.reason(), "redis-memo: unusable entry; recomputing and overwriting");
        }
    }

    fn record(&self, event: Event, spec: &'static FnSpec) {
        self.inner.counters.record(event, spec.metrics());
    }
}
