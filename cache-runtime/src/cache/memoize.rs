//! The read and fill path of a memoized call (cache-aside with in-process coalescing).
//!
//! 1. Read the entry and its tags' tokens (pipelined). A usable entry whose tags were not
//!    invalidated since it was computed is a hit: done, in one round trip.
//! 2. Otherwise join the key's flight: one caller per key and process leads, the others wait
//!    for it. A leader whose read may predate another flight's fill reads again, within the
//!    same deadline as its first read.
//! 3. The leader takes the entry's lease, makes sure its tags have tokens, runs the function
//!    (no entry, an entry that does not decode or is invalidated, Redis unavailable), hands the
//!    encoded result to the waiters, and stores it through the lease, recording the tokens
//!    read before it ran, when the kind allows it and Redis answered.
//!
//! Time spent on Redis is bounded: at most the operation timeout before the function runs
//! (the read, a re-read, creating missing tag versions and taking the lease share one
//! deadline; after an outage there is no re-read and no write). The result is stored after
//! the call returns (the fill is queued on the connection first), within the operation
//! timeout.

use crate::CacheError;
use crate::backend::{Found, HeldLease};
use crate::cache::Cache;
use crate::cache::refresh::{RefreshFrom, Refresher};
use crate::cache::timeouts::{Body, OnTimeout, Waited};
use crate::envelope::{self, DecodeError, EntryTimes};
use crate::flight::{self, LeaderGuard, Role, Shared, WaitOutcome};
use crate::freshness::{Freshness, Lifetime, early_refresh_due, within_fail_safe};
use crate::lease::{self, Acquired};
use crate::notify::Notice;
use crate::returns::{ReturnKind, ShareFailure};
use crate::spec::{FnSpec, Warning};
use crate::stats::Event;
use crate::tags::{TagKeys, Token, Versions};
use bytes::Bytes;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// What taking an entry's lease gave.
pub(crate) enum LeaseOutcome<V> {
    Held(HeldLease),
    /// Someone filled the entry since this call's read: its value (the lease was given back).
    Filled(Bytes, V),
    /// Another caller holds it; `writer` when a write-through does.
    Busy {
        writer: bool,
    },
    /// Redis failed or is unavailable.
    Failed,
}

/// What a call returns when it does not get a value: after its `hard_timeout`, and when it
/// waited on another caller's failed computation.
pub(crate) struct Outcomes<O, S, R> {
    pub(crate) on_timeout: O,
    pub(crate) on_failure: S,
    /// The text of a failure, for logs.
    pub(crate) describe: crate::returns::DescribeFailure<R>,
}

/// What the first read of a pass says.
enum Judged<R, V> {
    /// The call's answer: a fresh value, or a stale one (its refresh started).
    Answer(R),
    /// No usable value: the read to lead or wait with, and with `fail_safe` an expired value
    /// that may stand in if the computation fails (from this pass's read only: a later read
    /// may show it invalidated).
    Miss(Read, Option<Fallback<V>>),
}

/// What a leader computes under, once it has its lease (or knows it has none).
struct Leading {
    /// The tags' tokens read before computing; `None` if Redis failed.
    tokens: Option<Vec<Token>>,
    /// Whether the entry in Redis is unusable (removed if nothing replaces it).
    unusable: bool,
    call_started: Instant,
    hard_deadline: Option<Instant>,
}

/// What the read a leader leads with says.
enum LeadRead<V> {
    /// A fresh entry (stored since this call's first read): its bytes and value, and the
    /// tier that had it.
    Found(Bytes, V, Tier),
    /// Compute: whether Redis answered, and whether its entry is unusable.
    Compute {
        redis_answered: bool,
        unusable: bool,
    },
}

/// How a pass through the key's flight ended.
enum Flown<R, F> {
    /// The call's answer.
    Answer(R),
    /// Its read may predate an invalidation: read again (its body back).
    Reread(F),
}

/// How waiting on another caller's computation ended for a caller.
enum AfterWait<F, V, R> {
    /// Its answer.
    Return(R),
    /// The flight ended without a value for it: join again (its body and fallback back).
    Rejoin(F, Option<Fallback<V>>),
    /// Its read may predate an invalidation: read again (its body back).
    Reread(F),
}

/// The entry a leader works on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryAt<'a> {
    pub(crate) spec: &'static FnSpec,
    /// Its full key.
    pub(crate) key: &'a str,
    /// The full version keys of its tags.
    pub(crate) tag_keys: TagKeys<'a>,
    pub(crate) fingerprint: u64,
}

/// An entry past its time that may stand in for a failed or slow computation (`fail_safe`).
pub(crate) struct Fallback<V> {
    pub(crate) value: V,
    /// Its bytes, for the waiters of a caller that serves it.
    pub(crate) bytes: Bytes,
}

/// An encoded entry and how long Redis keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    pub(crate) bytes: Bytes,
    pub(crate) stored_for: Duration,
}

/// How long a tag version key lives at least: as long as the entries that record it may be
/// served (each fill extends it; an entry outliving its tags would only be a miss).
pub(crate) fn tag_lifetime(spec: &FnSpec) -> Duration {
    spec.ttl
        .saturating_add(spec.stale.unwrap_or_default())
        .max(spec.fail_safe.unwrap_or_default())
        .max(spec.sliding.unwrap_or_default())
}

/// What a read found.
enum Read {
    /// The stored bytes, and which tier they came from.
    Entry(Bytes, Tier),
    Missing,
    /// Redis answered, but not with a usable entry (bytes that do not decode, or an error
    /// reply such as `WRONGTYPE`): a miss whose key the fill overwrites.
    Unusable,
    /// An entry past its time: a miss, kept until the fill replaces it (it may stand in for a
    /// failed computation, with `fail_safe`).
    Expired,
    /// Redis failed, timed out, or the breaker is open: run the function, store nothing.
    Unavailable,
}

/// Which tier a read's entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// This process's copies (no round trip).
    Local,
    Redis,
}

impl Cache {
    /// `key` is the entry's full key (see [`Cache::entry_key_writer`]), `tags` the full keys
    /// of its `tags` (see [`Cache::tag_key_writer`]); `body_type` and `key_types` are passed to
    /// [`FnSpec::resolve`].
    ///
    /// `refresh` recomputes a stale entry in the background (functions with `stale`).
    /// `outcomes` builds the error of a call that outlasted its `hard_timeout`, and shares a
    /// failed computation's error with the callers that waited on it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn memoize<K, R, F, B, O, S>(
        &self,
        spec: &'static FnSpec,
        key: &str,
        tags: Vec<String>,
        [body_type, key_types]: [&'static str; 2],
        mut compute: F,
        refresh: B,
        outcomes: Outcomes<O, S, R>,
    ) -> R
    where
        K: ReturnKind<R> + 'static,
        F: Future<Output = R>,
        B: Refresher<R>,
        O: OnTimeout<R>,
        S: ShareFailure<R>,
    {
        let resolved = spec.resolve::<K::Stored>(body_type, key_types, true);
        let fingerprint = resolved.fingerprint;
        let function_tag = spec
            .invalidate_all
            .then(|| resolved.function_tag_key(&self.inner.namespace));
        let tag_keys = TagKeys {
            function: function_tag.as_deref(),
            user: &tags,
        };
        let flights = &self.inner.flights;
        // What `hard_timeout` counts from.
        let call_started = Instant::now();
        // One clock reading on a hit: the first read starts when the call does.
        let mut first_read = Some(call_started);
        loop {
            let ticket = flights.ticket(key);
            let read_started = first_read.take().unwrap_or_else(Instant::now);
            let read_deadline = read_started + self.inner.gate.op_timeout();
            let (read, versions) = self.read(spec, key, tag_keys, read_deadline).await;
            let entry = EntryAt {
                spec,
                key,
                tag_keys,
                fingerprint,
            };
            let (read, fallback) = match self.judge_read::<K, R, B>(
                &entry,
                read,
                &versions,
                &refresh,
                outcomes.describe,
            ) {
                Judged::Answer(value) => return value,
                Judged::Miss(read, fallback) => (read, fallback),
            };
            let flown = self
                .fly::<K, R, F, B, O, S>(
                    &entry,
                    (ticket, flight::identity(fingerprint, &tags)),
                    (read, versions),
                    (call_started, read_deadline),
                    (compute, fallback),
                    (&refresh, &outcomes),
                )
                .await;
            match flown {
                Flown::Answer(result) => return result,
                Flown::Reread(kept) => compute = kept,
            }
        }
    }

    /// Joins the key's flight with the read of this pass: leads it (and returns its result),
    /// or waits on it, joining again while flights end without a value for this caller.
    async fn fly<K, R, F, B, O, S>(
        &self,
        entry: &EntryAt<'_>,
        (ticket, identity): (flight::Ticket, u64),
        (mut read, mut versions): (Read, Versions),
        (call_started, mut read_deadline): (Instant, Instant),
        (mut compute, mut fallback): (F, Option<Fallback<K::Stored>>),
        (refresh, outcomes): (&B, &Outcomes<O, S, R>),
    ) -> Flown<R, F>
    where
        K: ReturnKind<R> + 'static,
        F: Future<Output = R>,
        B: Refresher<R>,
        O: OnTimeout<R>,
        S: ShareFailure<R>,
    {
        let EntryAt {
            spec,
            key,
            tag_keys,
            ..
        } = *entry;
        loop {
            match self.inner.flights.join(key, identity, &versions, ticket) {
                Role::Leader {
                    guard,
                    read_is_stale,
                } => {
                    // After an outage the first read said all there is to say.
                    if read_is_stale && !matches!(read, Read::Unavailable) {
                        (read, versions) = self.read(spec, key, tag_keys, read_deadline).await;
                    }
                    let result = self
                        .lead::<K, R, F, B, O, S>(
                            entry,
                            guard,
                            (read, versions),
                            (call_started, read_deadline),
                            (compute, refresh, outcomes),
                            &mut fallback,
                        )
                        .await;
                    return Flown::Answer(self.fail_safe::<K, R>(spec, result, fallback));
                }
                Role::Waiter(slot) => {
                    let after = self
                        .wait_as_waiter::<K, R, F, O, S>(
                            entry,
                            slot,
                            &versions,
                            call_started,
                            (compute, fallback),
                            outcomes,
                        )
                        .await;
                    match after {
                        AfterWait::Return(result) => return Flown::Answer(result),
                        // The flight ended without a value for it: start over, maybe as
                        // the leader, with a fresh deadline (the wait used the first).
                        AfterWait::Rejoin(kept, kept_fallback) => {
                            (compute, fallback) = (kept, kept_fallback);
                            read_deadline = Instant::now() + self.inner.gate.op_timeout();
                        }
                        AfterWait::Reread(kept) => return Flown::Reread(kept),
                    }
                }
            }
        }
    }

    /// Judges the first read of a pass: a fresh entry is the answer; a stale one too, its
    /// refresh started (a fresh one with `early` may start one as well); anything else is a
    /// miss, with the fail-safe value an expired entry may give.
    fn judge_read<K, R, B>(
        &self,
        entry: &EntryAt<'_>,
        read: Read,
        versions: &Versions,
        refresh: &B,
        describe: crate::returns::DescribeFailure<R>,
    ) -> Judged<R, K::Stored>
    where
        K: ReturnKind<R> + 'static,
        B: Refresher<R>,
    {
        let EntryAt {
            spec,
            key,
            fingerprint,
            ..
        } = *entry;
        let mut fallback = None;
        let read = match read {
            Read::Entry(bytes, tier) => {
                match envelope::decode::<K::Stored>(&bytes, fingerprint, Some(versions)) {
                    Ok((value, times)) => {
                        let now_ms = self.now_ms();
                        let freshness = Freshness::of(spec, times, now_ms);
                        // A stale entry is refreshed behind its callers; a fresh one with
                        // `early`, when its expiry draws near.
                        let refresh_now = match freshness {
                            Freshness::Fresh => {
                                spec.early
                                    && early_refresh_due(times, now_ms, self.inner.random_unit())
                            }
                            Freshness::Stale => true,
                            Freshness::Expired => false,
                        };
                        if refresh_now {
                            let from = RefreshFrom {
                                entry: *entry,
                                versions,
                                times,
                            };
                            refresh.start::<K>(self, from, describe);
                        }
                        match freshness {
                            Freshness::Fresh => {
                                self.record_hit(spec, tier);
                                return Judged::Answer(K::from_stored(value));
                            }
                            Freshness::Stale => {
                                self.record(Event::StaleServed, spec);
                                return Judged::Answer(K::from_stored(value));
                            }
                            // Still in Redis, past its time by this cache's clock.
                            Freshness::Expired => {
                                if within_fail_safe(spec, times, now_ms) {
                                    fallback = Some(Fallback {
                                        value,
                                        bytes: bytes.clone(),
                                    });
                                }
                                Read::Expired
                            }
                        }
                    }
                    Err(error) => {
                        self.report_decode_failure(spec, key, &error);
                        Read::Unusable
                    }
                }
            }
            other => other,
        };
        Judged::Miss(read, fallback)
    }

    /// Waits for the computation of the flight this caller joined, within its own hard
    /// timeout (the leader may have started later: a waiter whose turn came after a failure).
    async fn wait_as_waiter<K, R, F, O, S>(
        &self,
        entry: &EntryAt<'_>,
        slot: std::sync::Arc<flight::Slot>,
        versions: &Versions,
        call_started: Instant,
        (compute, fallback): (F, Option<Fallback<K::Stored>>),
        outcomes: &Outcomes<O, S, R>,
    ) -> AfterWait<F, K::Stored, R>
    where
        K: ReturnKind<R> + 'static,
        F: Future<Output = R>,
        O: OnTimeout<R>,
        S: ShareFailure<R>,
    {
        let EntryAt { spec, key, .. } = *entry;
        tracing::trace!(target: "redis_memo", function = spec.name, key, "waiting for this key's in-process leader");
        let hard_deadline = spec
            .hard_timeout
            .and_then(|hard| call_started.checked_add(hard));
        let waited = match hard_deadline {
            Some(at) => tokio::time::timeout_at(at, flight::wait(slot)).await.ok(),
            None => Some(flight::wait(slot).await),
        };
        let on_timeout = &outcomes.on_timeout;
        let Some(waited) = waited else {
            self.record(Event::HardTimeout, spec);
            let timed_out = self.past_hard_timeout::<K, R, F, O>(
                spec,
                call_started,
                compute,
                on_timeout,
                fallback,
            );
            return AfterWait::Return(timed_out.await);
        };
        self.take_shared::<K, R, F, O, S>(
            entry,
            waited,
            versions,
            call_started,
            (compute, fallback),
            outcomes,
        )
        .await
    }

    /// What a waiter does with how its flight ended: decodes the value shared with it, or
    /// takes the failure, its fail-safe value, a turn of its own, or a new read.
    async fn take_shared<K, R, F, O, S>(
        &self,
        entry: &EntryAt<'_>,
        waited: WaitOutcome,
        versions: &Versions,
        call_started: Instant,
        (compute, fallback): (F, Option<Fallback<K::Stored>>),
        outcomes: &Outcomes<O, S, R>,
    ) -> AfterWait<F, K::Stored, R>
    where
        K: ReturnKind<R> + 'static,
        F: Future<Output = R>,
        O: OnTimeout<R>,
        S: ShareFailure<R>,
    {
        let EntryAt {
            spec, fingerprint, ..
        } = *entry;
        let on_timeout = &outcomes.on_timeout;
        let alone = |compute, fallback| {
            self.run_alone::<K, R, F, O>(spec, call_started, compute, on_timeout, fallback)
        };
        let (bytes, current) = match waited {
            // Joining checked that this caller may have it.
            WaitOutcome::Shared(Shared::Computed(bytes)) => (bytes, None),
            // Stored by someone else: valid under the tokens this caller read (a read that saw
            // no tags knows of no invalidation).
            WaitOutcome::Shared(Shared::Found(bytes)) => {
                let current = (!versions.is_empty()).then_some(&versions[..]);
                (bytes, current)
            }
            // The leader's value did not serialize: nothing to share.
            WaitOutcome::Shared(Shared::NotShareable) => {
                return AfterWait::Return(alone(compute, fallback).await);
            }
            // The leader's call failed: its error, when it can be shared.
            WaitOutcome::Shared(Shared::Failed(Some(failure))) => {
                return match outcomes.on_failure.rebuild(&failure) {
                    Some(failed) => {
                        self.record(Event::Coalesced, spec);
                        AfterWait::Return(self.fail_safe::<K, R>(spec, failed, fallback))
                    }
                    None => AfterWait::Rejoin(compute, fallback),
                };
            }
            // Its error cannot be shared: this caller's fail-safe value, or a turn of its own
            // (one waiter leads the next attempt, the others wait for it).
            WaitOutcome::Shared(Shared::Failed(None)) => {
                return match fallback {
                    Some(Fallback { value, .. }) => {
                        self.record(Event::FailSafe, spec);
                        AfterWait::Return(K::from_stored(value))
                    }
                    None => AfterWait::Rejoin(compute, None),
                };
            }
            // Its leader stopped waiting at the hard timeout: so does it.
            WaitOutcome::Shared(Shared::TimedOut) => {
                let timed_out = self.past_hard_timeout::<K, R, F, O>(
                    spec,
                    call_started,
                    compute,
                    on_timeout,
                    fallback,
                );
                return AfterWait::Return(timed_out.await);
            }
            // The leader was cancelled or panicked. The ticket is kept: the ended flight
            // counts as completed, so a new leader reads again.
            WaitOutcome::Abandoned => return AfterWait::Rejoin(compute, fallback),
        };
        match envelope::decode::<K::Stored>(&bytes, fingerprint, current) {
            Ok((value, _)) => {
                self.record(Event::Coalesced, spec);
                AfterWait::Return(K::from_stored(value))
            }
            // A tag this caller saw differs from the entry's (it read before the tag was
            // created, or after an invalidation): read again, which settles it.
            Err(DecodeError::Invalidated) => AfterWait::Reread(compute),
            // The leader encoded these bytes with the same fingerprint, so they decode; if
            // they somehow did not, computing is still right.
            Err(_) => AfterWait::Return(alone(compute, fallback).await),
        }
    }

    /// Judges the read a leader leads with (its first, or a re-read): a fresh entry found is
    /// the answer for it and its waiters; otherwise it computes, knowing whether Redis answered
    /// and whether the entry there is unusable (to remove if nothing replaces it). The
    /// fail-safe value follows the latest read.
    fn judge_lead_read<V: crate::CacheValue>(
        &self,
        entry: &EntryAt<'_>,
        read: Read,
        versions: &Versions,
        fallback: &mut Option<Fallback<V>>,
    ) -> LeadRead<V> {
        let EntryAt {
            spec,
            key,
            fingerprint,
            ..
        } = *entry;
        let (redis_answered, unusable) = match read {
            Read::Entry(bytes, tier) => {
                match envelope::decode::<V>(&bytes, fingerprint, Some(versions)) {
                    Ok((value, times)) if self.is_fresh(spec, times) => {
                        return LeadRead::Found(bytes, value, tier);
                    }
                    // Past its time (a re-read): kept, and the fail-safe value if young enough.
                    Ok((value, times)) => {
                        *fallback = within_fail_safe(spec, times, self.now_ms())
                            .then(|| Fallback { value, bytes });
                        (true, false)
                    }
                    Err(error) => {
                        self.report_decode_failure(spec, key, &error);
                        *fallback = None;
                        (true, true)
                    }
                }
            }
            // Only a re-read can show these after an expired first read: the latest word.
            Read::Unusable => {
                *fallback = None;
                (true, true)
            }
            Read::Missing => {
                *fallback = None;
                (true, false)
            }
            Read::Expired => (true, false),
            Read::Unavailable => (false, false),
        };
        LeadRead::Compute {
            redis_answered,
            unusable,
        }
    }

    /// What a leader computes under: the tags' tokens (`None` if Redis failed), and the
    /// entry's lease: adopted from a leader of this process that went away, or taken, or
    /// waited for (`lock`) while another process holds it; all within `deadline`, and the
    /// wait within the hard deadline.
    pub(crate) async fn lease_for_lead<V: crate::CacheValue>(
        &self,
        entry: &EntryAt<'_>,
        guard: &LeaderGuard<'_>,
        versions: &mut Versions,
        (redis_answered, may_wait): (bool, bool),
        (deadline, hard_deadline): (Instant, Option<Instant>),
    ) -> (Option<Vec<Token>>, LeaseOutcome<V>) {
        let spec = entry.spec;
        // The tokens the result will be stored under: read before it is computed, so an
        // invalidation of a tag from now on makes the stored entry a miss.
        let tokens = if redis_answered {
            self.tokens_for(entry, versions, deadline).await
        } else {
            None
        };
        // Only a lease holder may fill: another holder (another process) fills this entry.
        // A lease left by a leader of this process that went away is taken over as is.
        let mut lease = match guard.adopt_lease() {
            Some(lease) => LeaseOutcome::Held(lease),
            None if tokens.is_some() => self.take_lease::<V>(entry, versions, deadline, None).await,
            None => LeaseOutcome::Failed,
        };
        // Not for a write-through's lease: its writer may be this very call's caller, reading
        // the entry inside its body, and would wait for itself.
        if let (LeaseOutcome::Busy { writer: false }, Some(wait), true) =
            (&lease, spec.lock_wait, may_wait)
        {
            // Within the hard timeout too, its last round trips included.
            let waiting = self.wait_for_holder::<V>(entry, versions, wait);
            lease = match hard_deadline {
                Some(at) => tokio::time::timeout_at(at, waiting)
                    .await
                    .unwrap_or(LeaseOutcome::Busy { writer: false }),
                None => waiting.await,
            };
        }
        (tokens, lease)
    }

    async fn lead<K, R, F, B, O, S>(
        &self,
        entry: &EntryAt<'_>,
        mut guard: LeaderGuard<'_>,
        (read, mut versions): (Read, Versions),
        (call_started, deadline): (Instant, Instant),
        (compute, refresh, outcomes): (F, &B, &Outcomes<O, S, R>),
        fallback: &mut Option<Fallback<K::Stored>>,
    ) -> R
    where
        K: ReturnKind<R> + 'static,
        F: Future<Output = R>,
        B: Refresher<R>,
        O: OnTimeout<R>,
        S: ShareFailure<R>,
    {
        let EntryAt { spec, key, .. } = *entry;
        let judged = self.judge_lead_read::<K::Stored>(entry, read, &versions, fallback);
        let (redis_answered, unusable) = match judged {
            LeadRead::Found(bytes, value, tier) => {
                self.record_hit(spec, tier);
                guard.publish(Shared::Found(bytes));
                return K::from_stored(value);
            }
            LeadRead::Compute {
                redis_answered,
                unusable,
            } => (redis_answered, unusable),
        };
        self.record(Event::Miss, spec);
        // No step of this call outlasts it (a lock wait, a release).
        let hard_deadline = spec
            .hard_timeout
            .and_then(|hard| call_started.checked_add(hard));
        // A body whose caller stopped waiting at its soft timeout still runs for this key:
        // take the fail-safe value too rather than start another.
        if spec.soft_timeout.is_some()
            && self.is_refreshing(key)
            && let Some(Fallback { value, bytes }) = fallback.take()
        {
            self.record(Event::FailSafe, spec);
            guard.publish(Shared::Found(bytes));
            return K::from_stored(value);
        }
        let (tokens, lease) = self
            .lease_for_lead::<K::Stored>(
                entry,
                &guard,
                &mut versions,
                (redis_answered, true),
                (deadline, hard_deadline),
            )
            .await;
        match lease {
            // Another caller's value after all (filled since the read, or waited for).
            LeaseOutcome::Filled(bytes, value) => {
                guard.publish(Shared::Found(bytes));
                return K::from_stored(value);
            }
            LeaseOutcome::Held(lease) => guard.hold_lease(lease),
            LeaseOutcome::Busy { .. } | LeaseOutcome::Failed => {}
        }
        let leading = Leading {
            tokens,
            unusable,
            call_started,
            hard_deadline,
        };
        self.compute_and_fill::<K, R, F, B, O, S>(
            entry,
            guard,
            &versions,
            leading,
            (compute, refresh, outcomes),
            fallback,
        )
        .await
    }

    /// The leader's computation: runs the body (within its timeouts), shares the result with
    /// the waiters, and stores it through the lease, or gives the lease back after a failure.
    async fn compute_and_fill<K, R, F, B, O, S>(
        &self,
        entry: &EntryAt<'_>,
        mut guard: LeaderGuard<'_>,
        versions: &Versions,
        leading: Leading,
        (compute, refresh, outcomes): (F, &B, &Outcomes<O, S, R>),
        fallback: &mut Option<Fallback<K::Stored>>,
    ) -> R
    where
        K: ReturnKind<R> + 'static,
        F: Future<Output = R>,
        B: Refresher<R>,
        O: OnTimeout<R>,
        S: ShareFailure<R>,
    {
        let spec = entry.spec;
        let Leading {
            tokens,
            unusable,
            call_started,
            hard_deadline,
        } = leading;
        guard.start_computing(versions);
        crate::cache::warm::note_ran();
        let (started, started_ms) = (Instant::now(), self.now_ms());
        let timed = spec.soft_timeout.is_some() || spec.hard_timeout.is_some();
        let body = match timed.then(|| refresh.spawn_body::<K>(self, spec)).flatten() {
            Some(spawned) => Body::Spawned(spawned),
            None => Body::InPlace(compute),
        };
        let fallback_bytes = fallback.as_ref().map(|fallback| fallback.bytes.clone());
        let waited = self
            .wait_within::<K, R, F>(
                entry,
                body,
                &mut guard,
                &tokens,
                (call_started, started_ms),
                fallback,
                |after| outcomes.on_timeout.timed_out(after),
            )
            .await;
        let result = match waited {
            Waited::Finished(result) => result,
            Waited::GaveUp(result) => {
                crate::cache::warm::note_failed();
                // The waiters get what this caller gets: the fail-safe value, or (without
                // one) they run the function themselves, each within its own timeout.
                match fallback_bytes {
                    Some(bytes) => guard.publish(Shared::Found(bytes)),
                    None => guard.publish(Shared::TimedOut),
                }
                return result;
            }
        };
        let computed_in = started.elapsed();
        let computed_ms = self.ms_since(started_ms);

        if K::is_failure(&result) {
            crate::cache::warm::note_failed();
            // Nothing is stored. The lease goes back first (another process, or the waiter
            // whose turn is next, may take it at once); then the waiters get the error, or
            // their fail-safe value, or take turns.
            if let Some(lease) = guard.take_lease() {
                within(hard_deadline, self.release(spec, lease, unusable)).await;
            }
            guard.hand_over(outcomes.on_failure.share(&result));
            return result;
        }
        let recorded = tokens.as_deref().unwrap_or_default();
        let encoded = self.encode_result::<K, R>(entry, &result, recorded, computed_ms);
        match &encoded {
            Some(encoded) => guard.publish(Shared::Computed(encoded.bytes.clone())),
            None => guard.publish(Shared::NotShareable),
        }
        if let Some(lease) = guard.take_lease() {
            let storable =
                encoded.filter(|_| K::storable(&result, spec.cache_none) && tokens.is_some());
            self.store_behind(entry, lease, storable, unusable, computed_in);
        }
        // Dropping the guard ends the flight only now, once the fill is sent: a caller that
        // arrives later reads (on the same connection, so after the fill) the stored entry
        // instead of computing again.
        drop(guard);
        result
    }

    /// The tokens of the entry's tags, creating those whose version key is missing (after a
    /// first use, an invalidation or an eviction); `None` if Redis failed.
    pub(crate) async fn tokens_for(
        &self,
        entry: &EntryAt<'_>,
        versions: &mut Versions,
        deadline: Instant,
    ) -> Option<Vec<Token>> {
        if versions.len() != entry.tag_keys.len() {
            // The read failed for the entry alone (`WRONGTYPE`): the tags were not read.
            *versions = smallvec::smallvec![None; entry.tag_keys.len()];
        }
        if let Some(tokens) = versions.iter().copied().collect::<Option<Vec<Token>>>() {
            return Some(tokens);
        }
        let missing: Vec<&str> = entry
            .tag_keys
            .iter()
            .zip(versions.iter())
            .filter(|(_, version)| version.is_none())
            .map(|(key, _)| key)
            .collect();
        let gate = &self.inner.gate;
        if !gate.admits(deadline) {
            self.record(Event::FailOpen, entry.spec);
            return None;
        }
        let created = gate
            .backend()
            .ensure_tags(&missing, tag_lifetime(entry.spec), deadline);
        let created = gate.pass("ensure tags", created).await;
        let mut created = self.usable("ensure tags", entry.spec, created)?.into_iter();
        for version in versions.iter_mut().filter(|version| version.is_none()) {
            *version = created.next();
        }
        versions.iter().copied().collect()
    }

    /// What a caller whose hard timeout has passed returns: its fail-safe value (if its read
    /// found one), else the timeout error.
    async fn past_hard_timeout<K, R, F, O>(
        &self,
        spec: &'static FnSpec,
        call_started: Instant,
        compute: F,
        on_timeout: &O,
        fallback: Option<Fallback<K::Stored>>,
    ) -> R
    where
        K: ReturnKind<R>,
        F: Future<Output = R>,
        O: OnTimeout<R>,
    {
        let after = spec.hard_timeout.unwrap_or_default();
        match on_timeout.timed_out(after) {
            Some(timed_out) => self.fail_safe::<K, R>(spec, timed_out, fallback),
            // Only functions with `hard_timeout` time out, and they have the error to return;
            // for the others this is unreachable, and running the body is still right.
            None => {
                self.run_alone::<K, R, F, O>(spec, call_started, compute, on_timeout, fallback)
                    .await
            }
        }
    }

    /// Runs this caller's own body, outside any flight (its leader's value could not be
    /// shared), within the function's hard timeout counted from `call_started`.
    async fn run_alone<K, R, F, O>(
        &self,
        spec: &'static FnSpec,
        call_started: Instant,
        compute: F,
        on_timeout: &O,
        fallback: Option<Fallback<K::Stored>>,
    ) -> R
    where
        K: ReturnKind<R>,
        F: Future<Output = R>,
        O: OnTimeout<R>,
    {
        crate::cache::warm::note_ran();
        let bound = spec
            .hard_timeout
            .and_then(|hard| Some((call_started.checked_add(hard)?, hard)));
        let timed_out = bound.and_then(|(at, hard)| Some((at, on_timeout.timed_out(hard)?)));
        let result = match timed_out {
            Some((at, timed_out)) => match tokio::time::timeout_at(at, compute).await {
                Ok(result) => result,
                Err(_) => {
                    self.record(Event::HardTimeout, spec);
                    timed_out
                }
            },
            None => compute.await,
        };
        if K::is_failure(&result) {
            crate::cache::warm::note_failed();
        }
        self.fail_safe::<K, R>(spec, result, fallback)
    }

    /// With `fail_safe`: `fallback` instead of a failed `result`, counted.
    fn fail_safe<K: ReturnKind<R>, R>(
        &self,
        spec: &'static FnSpec,
        result: R,
        fallback: Option<Fallback<K::Stored>>,
    ) -> R {
        match fallback {
            Some(Fallback { value, .. }) if K::is_failure(&result) => {
                self.record(Event::FailSafe, spec);
                tracing::debug!(target: "redis_memo", function = spec.name,
                    "redis-memo: the function failed; serving its last good value (fail_safe)"
                );
                K::from_stored(value)
            }
            _ => result,
        }
    }

    /// The time by this cache's clock, corrected to its Redis server's (see
    /// [`crate::clock::ServerOffset`]).
    pub(crate) fn now_ms(&self) -> u64 {
        let local = self.inner.clock.now_unix_ms();
        if self.inner.server_offset.claim_sample(local) {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let cache = self.clone();
                    runtime.spawn(async move { cache.sample_server_time().await });
                }
                Err(_) => self.inner.server_offset.retry_soon(local),
            }
        }
        self.inner.server_offset.apply(local)
    }

    /// Learns how far this cache's clock is from its server's.
    pub(crate) async fn sample_server_time(&self) {
        let clock = &self.inner.clock;
        let before = clock.now_unix_ms();
        let deadline = Instant::now() + self.inner.gate.op_timeout();
        let server = self.inner.gate.backend().server_time_ms(deadline).await;
        let after = clock.now_unix_ms();
        match server {
            Ok(Some(server_ms)) => self.inner.server_offset.record(server_ms, before, after),
            Ok(None) => {}
            Err(_) => self.inner.server_offset.retry_soon(after),
        }
    }

    /// Milliseconds since `start_ms` by this cache's clock (what early refresh weighs a
    /// computation by: a test's clock moves while its "slow" body runs).
    pub(crate) fn ms_since(&self, start_ms: u64) -> u32 {
        u32::try_from(self.now_ms().saturating_sub(start_ms)).unwrap_or(u32::MAX)
    }

    pub(crate) fn is_fresh(&self, spec: &FnSpec, times: EntryTimes) -> bool {
        Freshness::of(spec, times, self.now_ms()) == Freshness::Fresh
    }

    /// `result` as an entry of `entry` recording the tag tokens `tags`; `None` when it cannot
    /// be shared (an `Err`) or does not serialize.
    pub(crate) fn encode_result<K: ReturnKind<R>, R>(
        &self,
        entry: &EntryAt<'_>,
        result: &R,
        tags: &[Token],
        computed_in_ms: u32,
    ) -> Option<Encoded> {
        K::shareable(result).and_then(|value| {
            self.encode(entry.spec, entry.fingerprint, value, tags, computed_in_ms)
        })
    }

    /// [`Cache::encode_result`], only for a result the function stores (`None` only with
    /// `cache_none`).
    pub(crate) fn encode_storable<K: ReturnKind<R>, R>(
        &self,
        entry: &EntryAt<'_>,
        result: &R,
        tags: &[Token],
        computed_in_ms: u32,
    ) -> Option<Encoded> {
        K::storable(result, entry.spec.cache_none)
            .then(|| self.encode_result::<K, R>(entry, result, tags, computed_in_ms))
            .flatten()
    }

    /// Encodes `value` as an entry of `spec` written now, with its lifetime (the ttl, less a
    /// random part of the jitter, then the `stale` window).
    pub(crate) fn encode<V: crate::CacheValue>(
        &self,
        spec: &'static FnSpec,
        fingerprint: u64,
        value: &V,
        tags: &[Token],
        computed_in_ms: u32,
    ) -> Option<Encoded> {
        let unit = if spec.jitter_per_mille == 0 {
            0.0
        } else {
            self.inner.random_unit()
        };
        let lifetime = Lifetime::of(spec, unit);
        let times = lifetime.times(self.now_ms(), computed_in_ms);
        match envelope::encode(value, self.inner.format, fingerprint, times, tags) {
            Ok(bytes) => Some(Encoded {
                bytes: Bytes::from(bytes),
                stored_for: lifetime.stored_for,
            }),
            Err(error) => {
                self.record(Event::EncodeFailure, spec);
                tracing::warn!(target: "redis_memo", function = spec.name, %error, "redis-memo: return value does not serialize; not cached");
                None
            }
        }
    }

    /// Takes the entry's lease for this call. If the entry was filled since this call's read
    /// (the acquire script returns it fresh, and written after `replacing` when given: the
    /// entry a refresh replaces), the lease goes back and the value is used.
    pub(crate) async fn take_lease<V: crate::CacheValue>(
        &self,
        entry: &EntryAt<'_>,
        versions: &Versions,
        deadline: Instant,
        replacing: Option<u64>,
    ) -> LeaseOutcome<V> {
        let EntryAt {
            spec,
            key,
            fingerprint,
            ..
        } = *entry;
        let gate = &self.inner.gate;
        if !gate.admits(deadline) {
            self.record(Event::FailOpen, spec);
            return LeaseOutcome::Failed;
        }
        // Armed before asking: if this call is cancelled while asking, or the request times
        // out after Redis ran it, the lease this token may hold is given back in the
        // background rather than left to expire.
        let held = HeldLease::new(
            gate.backend().clone(),
            key,
            lease::lease_key(key),
            lease::new_token(),
            spec.lease,
        );
        let acquired =
            gate.backend()
                .acquire_lease(key, held.key(), held.token(), spec.lease, deadline);
        let acquired = gate.pass("acquire", acquired).await;
        match self.usable("acquire", spec, acquired) {
            Some(Acquired::Held(Some(bytes))) => {
                match envelope::decode::<V>(&bytes, fingerprint, Some(versions)) {
                    Ok((value, times))
                        if self.is_fresh(spec, times)
                            && replacing.is_none_or(|seen| times.written_at_ms > seen) =>
                    {
                        self.release(spec, held, false).await;
                        LeaseOutcome::Filled(bytes, value)
                    }
                    // Unusable or past its time: keep the lease, the fill overwrites it.
                    _ => LeaseOutcome::Held(held),
                }
            }
            Some(Acquired::Held(None)) => LeaseOutcome::Held(held),
            Some(Acquired::Busy { writer }) => {
                held.disarm();
                LeaseOutcome::Busy { writer }
            }
            None => LeaseOutcome::Failed,
        }
    }

    /// `lock`: another process holds the lease; wait up to `wait` for its value instead of
    /// computing too. Woken by the fill's announcement (not by polling): the Redis commands per
    /// waiting process are a subscription, a read and a lease attempt, whatever the wait.
    async fn wait_for_holder<V: crate::CacheValue>(
        &self,
        entry: &EntryAt<'_>,
        versions: &Versions,
        wait: Duration,
    ) -> LeaseOutcome<V> {
        let spec = entry.spec;
        self.record(Event::LockWait, spec);
        let now = Instant::now();
        let deadline = now
            .checked_add(wait)
            .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
        // Each step has its own op timeout; this bounds the whole wait to `wait` plus one.
        let bound = deadline + self.inner.gate.op_timeout();
        match tokio::time::timeout_at(bound, self.wait_until(entry, versions, deadline)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.record(Event::LockTimeout, spec);
                LeaseOutcome::Busy { writer: false }
            }
        }
    }

    async fn wait_until<V: crate::CacheValue>(
        &self,
        entry: &EntryAt<'_>,
        versions: &Versions,
        deadline: Instant,
    ) -> LeaseOutcome<V> {
        let EntryAt {
            spec,
            key,
            fingerprint,
            ..
        } = *entry;
        // Sent even with the breaker open, as fills and releases are: it is part of a wait
        // that began because Redis answered.
        let gate = &self.inner.gate;
        let listened = gate.settle("SUBSCRIBE", gate.backend().listen(key)).await;
        let mut listener = self.usable("SUBSCRIBE", spec, listened).flatten();
        loop {
            // The fill may have come before the subscription did.
            let read_by = Instant::now() + self.inner.gate.op_timeout();
            if let (Read::Entry(bytes, _), now) =
                self.read(spec, key, entry.tag_keys, read_by).await
                && let Ok((value, times)) = envelope::decode::<V>(&bytes, fingerprint, Some(&now))
                && self.is_fresh(spec, times)
            {
                return LeaseOutcome::Filled(bytes, value);
            }
            // The holder may be gone (released, or expired after a crash).
            match self.take_lease(entry, versions, read_by, None).await {
                LeaseOutcome::Busy { writer: false } => {}
                // A write-through took it over: stop waiting (see `lead`).
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
                // Only a wake-up: the entry is read from Redis at the top of the loop (a
                // message anyone may publish is never taken for a value).
                Some(Notice::Filled | Notice::Released) => {}
                None => {
                    // The bound is reached. A crashed holder's lease has expired by now if
                    // `wait` is no shorter than it: take it, and this computation is stored.
                    self.record(Event::LockTimeout, spec);
                    let by = Instant::now() + self.inner.gate.op_timeout();
                    return self.take_lease(entry, versions, by, None).await;
                }
            }
        }
    }

    /// Stores `encoded` through `lease`; with nothing to store, gives the lease up now rather
    /// than make others wait for it (removing with `clear_entry` an unusable entry that
    /// nothing replaced). A value over `max_value_bytes` is not stored, and the entry it would
    /// have replaced is removed: an older value must not outlive a newer one.
    pub(crate) async fn store(
        &self,
        entry: &EntryAt<'_>,
        lease: HeldLease,
        encoded: Option<Encoded>,
        clear_entry: bool,
        computed_in: Duration,
    ) {
        match encoded {
            Some(encoded) if self.fits(entry.spec, entry.key, &encoded) => {
                self.fill(entry, lease, encoded, computed_in).await;
            }
            Some(_) => self.release(entry.spec, lease, true).await,
            None => self.release(entry.spec, lease, clear_entry).await,
        }
    }

    /// Whether `encoded` is within the cache's `max_value_bytes`; a value over it is counted,
    /// and logged once a function.
    pub(crate) fn fits(&self, spec: &'static FnSpec, key: &str, encoded: &Encoded) -> bool {
        let Some(max) = self.inner.max_value_bytes else {
            return true;
        };
        let size = encoded.bytes.len();
        if size <= max {
            return true;
        }
        self.record(Event::Oversized, spec);
        if spec.warn_once(Warning::Oversized) {
            tracing::warn!(target: "redis_memo", function = spec.name, key, size, max,
                "redis-memo: the value is larger than max_value_bytes, so it is served but not \
                 stored (logged once per function; counted in `stats().oversized`)"
            );
        }
        false
    }

    /// [`Cache::store`] without waiting for Redis: the request is queued on the connection
    /// before this returns, so each later request of this process on it (a read, a lease)
    /// is ordered after it; the reply is handled (counted, a lost lease given back) by a task
    /// of its own, which [`Cache::writes_done`] waits for. One round trip less per miss.
    /// (When the request cannot be queued at once, behind a reconnection say, a later read may
    /// overtake it: one more miss, whose lease then finds the stored value.)
    pub(crate) fn store_behind(
        &self,
        entry: &EntryAt<'_>,
        lease: HeldLease,
        encoded: Option<Encoded>,
        clear_entry: bool,
        computed_in: Duration,
    ) {
        let cache = self.clone();
        let (spec, fingerprint, key) = (entry.spec, entry.fingerprint, entry.key.to_owned());
        let function = entry.tag_keys.function.map(str::to_owned);
        let user = entry.tag_keys.user.to_vec();
        // Unconstrained: with the task's cooperative budget spent, tokio would make the first
        // poll return before queuing the request, and a later read could overtake it.
        let mut storing = Box::pin(tokio::task::unconstrained(async move {
            let tag_keys = TagKeys {
                function: function.as_deref(),
                user: &user,
            };
            let entry = EntryAt {
                spec,
                key: &key,
                tag_keys,
                fingerprint,
            };
            cache
                .store(&entry, lease, encoded, clear_entry, computed_in)
                .await;
        }));
        let waker = futures_util::task::noop_waker_ref();
        let sent = storing
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        if sent.is_pending() {
            self.spawn_write(storing);
        }
    }

    async fn fill(
        &self,
        entry: &EntryAt<'_>,
        lease: HeldLease,
        encoded: Encoded,
        computed_in: Duration,
    ) {
        let EntryAt {
            spec,
            key,
            tag_keys,
            ..
        } = *entry;
        // The tags must outlive the entry (a lost tag makes it a miss); sent alongside the
        // fill on the multiplexed connection, so no extra round trip.
        // Sent even with the breaker open: skipping it would leave the lease for others to
        // wait out.
        let gate = &self.inner.gate;
        let (filled, _) = tokio::join!(
            gate.settle("fill", lease.fill(encoded.bytes, encoded.stored_for)),
            gate.backend().extend_tags(tag_keys, tag_lifetime(spec))
        );
        match self.usable("fill", spec, filled) {
            Some(true) => self.record(Event::Fill, spec),
            Some(false) => {
                // The lease was lost: an invalidation (or a write) came after this computation
                // began, so its value may be stale; or the computation outlasted its lease.
                self.record(Event::RejectedFill, spec);
                if computed_in >= spec.lease && spec.warn_once(Warning::SlowerThanLease) {
                    tracing::warn!(target: "redis_memo", function = spec.name,
                        ?computed_in,
                        lease = ?spec.lease,
                        "redis-memo: the computation outlasted its lease, so its value was not stored; \
                         give the function a longer `lock(lease = ..)`"
                    );
                }
                tracing::debug!(target: "redis_memo", function = spec.name,
                    key,
                    "redis-memo: fill rejected, the entry changed while it was computed"
                );
            }
            None => {}
        }
    }

    pub(crate) async fn release(&self, spec: &'static FnSpec, lease: HeldLease, clear_entry: bool) {
        // Sent even with the breaker open, for the same reason as a fill.
        let released = self
            .inner
            .gate
            .settle("release", lease.release(clear_entry))
            .await;
        let _ = self.usable("release", spec, released);
    }

    /// What a failed request means for the call: `None`, counted as a fail-open. A refusal
    /// from a live server (`OOM` under noeviction, `READONLY` after a failover) lasts: it is
    /// warned about once a minute with its count rather than on every miss.
    pub(crate) fn usable<T>(
        &self,
        operation: &'static str,
        spec: &'static FnSpec,
        result: Result<T, CacheError>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.record(Event::FailOpen, spec);
                if !error.is_outage()
                    && let Some(since_last) = self.inner.gate.refusal_due()
                {
                    tracing::warn!(target: "redis_memo", function = spec.name, operation, %error, refusals = since_last, "redis-memo: redis refuses the cache's requests; calls run uncached");
                }
                None
            }
        }
    }

    async fn read(
        &self,
        spec: &'static FnSpec,
        key: &str,
        tag_keys: TagKeys<'_>,
        deadline: Instant,
    ) -> (Read, Versions) {
        let gate = &self.inner.gate;
        // A sliding entry is read from Redis every time: the read is what keeps it.
        let (keep, slide) = match spec.sliding {
            Some(_) => (None, Some(spec.ttl)),
            None => (spec.local.or(self.inner.local_everywhere), None),
        };
        let request = gate.backend().read(key, tag_keys, keep, slide, deadline);
        match gate.pass("GET", request).await {
            Ok(Found {
                entry,
                versions,
                local,
            }) => {
                let tier = if local { Tier::Local } else { Tier::Redis };
                let read = entry.map_or(Read::Missing, |bytes| Read::Entry(bytes, tier));
                (read, versions)
            }
            Err(error) if error.is_wrong_type() => {
                // Someone else's data under the key: the fill overwrites it.
                self.record(Event::DecodeFailure, spec);
                tracing::warn!(target: "redis_memo", function = spec.name, key, %error, "redis-memo: reading the entry failed; recomputing and overwriting");
                (Read::Unusable, Versions::new())
            }
            // An outage, or a refusal that lasts (`NOPERM`): a fail-open, warned about once a
            // minute.
            failed => {
                let _ = self.usable("GET", spec, failed);
                (Read::Unavailable, Versions::new())
            }
        }
    }

    pub(crate) fn report_decode_failure(
        &self,
        spec: &'static FnSpec,
        key: &str,
        error: &DecodeError,
    ) {
        if matches!(error, DecodeError::Invalidated) {
            // Not damage: a tag was invalidated, so the entry is a plain miss.
            return;
        }
        self.record(Event::DecodeFailure, spec);
        if matches!(error, DecodeError::Fingerprint | DecodeError::Layout(_)) {
            // Expected once per entry after a deploy that changed the type or `version` (or
            // upgraded redis-memo to a new envelope layout).
            tracing::debug!(target: "redis_memo", function = spec.name,
                key,
                "redis-memo: entry from another version; recomputing"
            );
        } else {
            tracing::warn!(target: "redis_memo", function = spec.name, key, %error, reason = error.reason(), "redis-memo: unusable entry; recomputing and overwriting");
        }
    }

    fn record_hit(&self, spec: &'static FnSpec, tier: Tier) {
        self.record(Event::Hit, spec);
        if tier == Tier::Local {
            self.record(Event::LocalHit, spec);
        }
    }

    pub(crate) fn record(&self, event: Event, spec: &'static FnSpec) {
        self.inner.counters.record(event, spec.metrics());
    }
}

/// Runs `step` until `deadline`, if any. A step cut short there is dropped where it stands: a
/// lease it was giving back or filling through is then released in the background (see
/// [`HeldLease`]'s `Drop`).
async fn within(deadline: Option<Instant>, step: impl Future<Output = ()>) {
    match deadline {
        Some(at) => {
            let _ = tokio::time::timeout_at(at, step).await;
        }
        None => step.await,
    }
}
