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
use crate::returns::ReturnKind;
use crate::spec::FnSpec;
use crate::stats::Event;
use bytes::Bytes;
use std::future::Future;
use tokio::time::Instant;

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
        let read_deadline = Instant::now() + self.inner.op_timeout;
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
                        // The leader failed (an `Err`), was cancelled or panicked: start over,
                        // one caller leading at a time, so a failing source is not hit by all
                        // waiters at once. The ticket is kept: the ended flight counts as
                        // completed, so a new leader reads again rather than trust an old read.
                        WaitOutcome::Shared(Shared::NotShareable) | WaitOutcome::Abandoned => {
                            continue;
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
        guard: LeaderGuard<'_>,
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

        let result = compute.await;

        let stored = match K::shareable(&result) {
            Some(value) => {
                self.share_and_store::<K, R>(
                    spec,
                    key,
                    fingerprint,
                    &guard,
                    &result,
                    value,
                    redis_answered,
                )
                .await
            }
            None => {
                guard.publish(Shared::NotShareable);
                false
            }
        };
        if unusable && !stored {
            // Nothing replaced the unusable entry: remove it, or every call would trip on it.
            self.remove_unusable(spec, key).await;
        }
        // Dropping the guard ends the flight only now, after the write: a caller that arrives
        // later reads the stored entry instead of computing again.
        drop(guard);
        result
    }

    /// Encodes `value`, hands it to the waiters, and stores it when allowed; true if stored.
    #[allow(clippy::too_many_arguments)]
    async fn share_and_store<K, R>(
        &self,
        spec: &'static FnSpec,
        key: &str,
        fingerprint: u64,
        guard: &LeaderGuard<'_>,
        result: &R,
        value: &K::Stored,
        redis_answered: bool,
    ) -> bool
    where
        K: ReturnKind<R>,
    {
        let now = crate::clock::now_unix_ms();
        let ttl_ms = u64::try_from(spec.ttl.as_millis()).unwrap_or(u64::MAX);
        let times = EntryTimes {
            written_at_ms: now,
            fresh_until_ms: now.saturating_add(ttl_ms),
        };
        match envelope::encode::<Bincode, _>(value, fingerprint, times) {
            Ok(bytes) => {
                let bytes = Bytes::from(bytes);
                guard.publish(Shared::Entry(bytes.clone()));
                redis_answered
                    && K::storable(result, spec.cache_none)
                    && self.write(spec, key, bytes).await
            }
            Err(error) => {
                self.record(Event::EncodeFailure, spec);
                tracing::warn!(function = spec.name, %error, "redis-memo: return value does not serialize; not cached");
                guard.publish(Shared::NotShareable);
                false
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

    /// Stores `bytes`; true if stored.
    async fn write(&self, spec: &'static FnSpec, key: &str, bytes: Bytes) -> bool {
        if !self.inner.health.allows_request() {
            self.record(Event::FailOpen, spec);
            return false;
        }
        match self.inner.backend.set(key, bytes, spec.ttl).await {
            Ok(()) => {
                self.inner.health.record_success();
                self.record(Event::Fill, spec);
                true
            }
            Err(error) if !error.is_outage() => {
                // `OOM` under `noeviction`, `READONLY` on a replica: Redis is there but does
                // not take the value. Not an outage: reads go on.
                self.inner.health.record_success();
                self.record(Event::FailOpen, spec);
                tracing::warn!(function = spec.name, key, %error, "redis-memo: redis refused to store the entry");
                false
            }
            Err(error) => {
                self.report_outage("SET", spec, &error);
                false
            }
        }
    }

    async fn remove_unusable(&self, spec: &'static FnSpec, key: &str) {
        if !self.inner.health.allows_request() {
            return;
        }
        if let Err(error) = self.inner.backend.delete(key).await
            && error.is_outage()
        {
            self.report_outage("DEL", spec, &error);
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
