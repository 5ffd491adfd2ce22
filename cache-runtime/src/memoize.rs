//! The read and fill path of a memoized call (cache-aside with in-process coalescing).
//!
//! 1. Read the entry. A usable entry is a hit: done, in one round trip.
//! 2. Otherwise join the key's flight: one caller per key and process leads, the others wait
//!    for it. A leader whose read may predate another flight's fill reads again.
//! 3. The leader runs the function (no entry, an entry that does not decode, Redis
//!    unavailable), hands the encoded result to the waiters, and stores it with `SET … PX`
//!    when the kind allows it and Redis answered the read.

use crate::cache::Cache;
use crate::codec::Bincode;
use crate::envelope::{self, DecodeError, EntryTimes};
use crate::flight::{self, LeaderGuard, Role, Shared, WaitOutcome};
use crate::returns::ReturnKind;
use crate::spec::FnSpec;
use crate::stats::Event;
use bytes::Bytes;
use std::future::Future;

/// What a leader's read found.
enum Read {
    Entry(Bytes),
    Missing,
    /// Redis failed, timed out, or the breaker is open: run the function, store nothing.
    Unavailable,
}

impl Cache {
    /// `key` is the entry's full key (see [`Cache::entry_key_writer`]).
    pub(crate) async fn memoize<K, R, F>(&self, spec: &'static FnSpec, key: &str, compute: F) -> R
    where
        K: ReturnKind<R>,
        F: Future<Output = R>,
    {
        let fingerprint = spec.fingerprint::<K::Stored>();
        let flights = &self.inner.flights;
        let ticket = flights.ticket(key);
        let mut read = match self.read(spec, key).await {
            Read::Entry(bytes) => match envelope::decode::<Bincode, K::Stored>(&bytes, fingerprint)
            {
                Ok((value, _)) => {
                    self.record(Event::Hit, spec);
                    return K::from_stored(value);
                }
                Err(error) => {
                    self.report_decode_failure(spec, key, &error);
                    Read::Missing
                }
            },
            other => other,
        };
        loop {
            match flights.join(key, ticket) {
                Role::Leader {
                    guard,
                    read_is_stale,
                } => {
                    if read_is_stale {
                        read = self.read(spec, key).await;
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
                            // The leader encoded these bytes with the same fingerprint, so they
                            // decode; if they somehow did not, computing is still correct.
                            match envelope::decode::<Bincode, K::Stored>(&bytes, fingerprint) {
                                Ok((value, _)) => {
                                    self.record(Event::Coalesced, spec);
                                    return K::from_stored(value);
                                }
                                Err(_) => return compute.await,
                            }
                        }
                        // The leader's result was an error: each waiter runs the function itself
                        // rather than queueing behind one another's failures.
                        WaitOutcome::Shared(Shared::NotShareable) => return compute.await,
                        // The leader was cancelled or panicked: start over, maybe as the leader.
                        // The ticket is kept: the abandoned flight counts as completed, so a new
                        // leader reads again rather than trust a read from before it.
                        WaitOutcome::Abandoned => continue,
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
        let redis_answered = match read {
            Read::Entry(bytes) => match envelope::decode::<Bincode, K::Stored>(&bytes, fingerprint)
            {
                Ok((value, _)) => {
                    self.record(Event::Hit, spec);
                    guard.publish(Shared::Entry(bytes));
                    return K::from_stored(value);
                }
                Err(error) => {
                    self.report_decode_failure(spec, key, &error);
                    true
                }
            },
            Read::Missing => true,
            Read::Unavailable => false,
        };
        self.record(Event::Miss, spec);

        let result = compute.await;

        let Some(value) = K::shareable(&result) else {
            guard.publish(Shared::NotShareable);
            return result;
        };
        let now = crate::clock::now_unix_ms();
        let times = EntryTimes {
            written_at_ms: now,
            fresh_until_ms: now
                .saturating_add(u64::try_from(spec.ttl.as_millis()).unwrap_or(u64::MAX)),
        };
        match envelope::encode::<Bincode, _>(value, fingerprint, times) {
            Ok(bytes) => {
                let bytes = Bytes::from(bytes);
                guard.publish(Shared::Entry(bytes.clone()));
                if redis_answered && K::storable(&result, spec.cache_none) {
                    self.write(spec, key, bytes).await;
                }
            }
            Err(error) => {
                self.record(Event::EncodeFailure, spec);
                tracing::warn!(function = spec.name, %error, "redis-memo: return value does not serialize; not cached");
                guard.publish(Shared::NotShareable);
            }
        }
        // Dropping the guard ends the flight only now, after the write: a caller that arrives
        // later reads the stored entry instead of computing again.
        drop(guard);
        result
    }

    async fn read(&self, spec: &'static FnSpec, key: &str) -> Read {
        let health = &self.inner.health;
        if !health.allows_request() {
            self.record(Event::FailOpen, spec);
            return Read::Unavailable;
        }
        match self.inner.backend.get(key).await {
            Ok(found) => {
                health.record_success();
                found.map_or(Read::Missing, Read::Entry)
            }
            Err(error) => {
                health.record_failure("GET", &error);
                self.record(Event::FailOpen, spec);
                Read::Unavailable
            }
        }
    }

    async fn write(&self, spec: &'static FnSpec, key: &str, bytes: Bytes) {
        let health = &self.inner.health;
        if !health.allows_request() {
            self.record(Event::FailOpen, spec);
            return;
        }
        match self.inner.backend.set(key, bytes, spec.ttl).await {
            Ok(()) => {
                health.record_success();
                self.record(Event::Fill, spec);
            }
            Err(error) => {
                health.record_failure("SET", &error);
                self.record(Event::FailOpen, spec);
            }
        }
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
