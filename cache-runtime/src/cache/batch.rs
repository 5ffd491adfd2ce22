//! Batch reads: many entries of one memoized function (the reader) at once. All of them are
//! read in one round trip; the loader is called once, with the items whose entries are
//! missing; their values are stored through their leases, as single calls store theirs.
//!
//! The steps, for the items that missed:
//! 1. each joins its key's in-process flight: it leads it, or waits for the call (single or
//!    batch) that leads it; a batch waits for flights only after its own loader finished and
//!    its leads were published, so two batches of one process never wait on each other. A
//!    led item whose key a flight completed since the read is read again first (the lease
//!    would otherwise overwrite a value stored under newer tag tokens);
//! 2. the led items take their leases all at once, and the loader runs only after every
//!    lease is decided: an invalidation from then on takes the lease, and the value is not
//!    stored. A batch never waits for another process's holder (`lock`): two processes'
//!    batches each holding a lease the other waits for would stall; a busy item is loaded
//!    with the others and not stored;
//! 3. the loader's values are published to the waiters and stored (pipelined behind the
//!    call's return, as single calls store theirs); items it did not return are not stored;
//! 4. the items that waited take their leader's value (one the leader found stored only if
//!    it was stored under the tag tokens this batch read); an item whose leader failed or
//!    went away is loaded by one more call of the loader, its value not stored.
//!
//! A stale entry (`stale`) is loaded again rather than served, a batch's failure is
//! returned as is (`fail_safe` applies to single calls), and `soft_timeout` / `hard_timeout`
//! do not bound a batch. A loader must not call the reader for an element its batch is
//! loading: that call would wait for the batch's own flight.

use crate::CacheValue;
use crate::cache::Cache;
use crate::cache::memoize::{EntryAt, LeaseOutcome};
use crate::cache::writers::EntryRef;
use crate::envelope::{self, DecodeError};
use crate::flight::{self, LeaderGuard, Role, Shared, WaitOutcome};
use crate::stats::Event;
use crate::tags::{TagKeys, Token, Versions};
use bytes::Bytes;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant as StdInstant;
use tokio::time::Instant;

/// One item's entry, resolved against this cache.
struct Resolved {
    key: String,
    function_tag: Option<String>,
    user_tags: Vec<String>,
    fingerprint: u64,
}

impl Resolved {
    fn at<'a>(&'a self, spec: &'static crate::spec::FnSpec) -> EntryAt<'a> {
        EntryAt {
            spec,
            key: &self.key,
            tag_keys: TagKeys {
                function: self.function_tag.as_deref(),
                user: &self.user_tags,
            },
            fingerprint: self.fingerprint,
        }
    }
}

/// An item this batch leads, from its lease on.
struct Led<'a, T> {
    index: usize,
    item: T,
    guard: LeaderGuard<'a>,
    versions: Versions,
    /// Whether Redis answered the read (a lease is taken only then).
    redis_answered: bool,
    tokens: Option<Vec<Token>>,
    unusable: bool,
}

/// One element's read: its bytes, its tags' tokens, and whether Redis answered.
struct ReadOne {
    bytes: Option<Bytes>,
    versions: Versions,
    redis_answered: bool,
}

/// The tags' tokens a miss was read under.
struct MissRead {
    tokens: Versions,
    redis_answered: bool,
}

/// What one element's read says.
enum Judged<V> {
    /// The stored bytes, and the value.
    Hit(Bytes, V),
    Miss {
        unusable: bool,
        versions: MissRead,
    },
}

/// Elements per `MGET`: a large batch is read in parts sent at once, so one slow part (or
/// node) fails open only for its own elements.
const MGET_CHUNK: usize = 256;

impl Cache {
    /// Reads the entries of `items` (each with its reader entry, from the reader's generated
    /// `<reader>_cache_entry` helper) and calls `load` once with the items that missed; the
    /// values of all items, by item. Items `load` does not return are absent from the result
    /// and not stored. Generated code only for now: `#[redis_cached_batch]` will call it.
    #[doc(hidden)]
    pub async fn memoize_batch<T, V, E, L>(
        &self,
        items: Vec<(T, EntryRef<V>)>,
        mut load: L,
    ) -> Result<HashMap<T, V>, E>
    where
        T: Hash + Eq + Clone,
        V: CacheValue,
        L: AsyncFnMut(&[T]) -> Result<HashMap<T, V>, E>,
    {
        let mut seen = std::collections::HashSet::new();
        let items: Vec<(T, EntryRef<V>)> = items
            .into_iter()
            .filter(|(item, _)| seen.insert(item.clone()))
            .collect();
        let mut values = HashMap::with_capacity(items.len());
        let Some((_, first)) = items.first() else {
            return Ok(values);
        };
        let spec = first.spec;
        // One reader, one instantiation: its fingerprint and function tag are the same for
        // every element, so they are resolved once.
        let shared = spec.resolve::<V>(first.body_type, first.key_types, true);
        let function_tag = spec
            .invalidate_all
            .then(|| shared.function_tag_key(&self.inner.namespace).into_owned());
        let resolved: Vec<Resolved> = items
            .iter()
            .map(|(_, entry)| Resolved {
                key: self.full_key(&entry.rendered),
                function_tag: function_tag.clone(),
                user_tags: self.tag_keys(&entry.tags),
                fingerprint: shared.fingerprint,
            })
            .collect();
        let flights = &self.inner.flights;
        let tickets: Vec<flight::Ticket> =
            resolved.iter().map(|r| flights.ticket(&r.key)).collect();

        // 1. Every entry and tag token, one round trip.
        let all: Vec<usize> = (0..items.len()).collect();
        let found = self.read_entries(spec, &resolved, &all).await;

        // 2. Hits are answered; each miss leads its flight or waits on another's.
        let mut led = Vec::new();
        let mut waiting = Vec::new();
        let mut reread = Vec::new();
        for (index, read) in found.into_iter().enumerate() {
            let item = &items[index].0;
            let (unusable, versions) = match self.judge(spec, &resolved[index], read) {
                Judged::Hit(_, value) => {
                    values.insert(item.clone(), value);
                    continue;
                }
                Judged::Miss { unusable, versions } => (unusable, versions),
            };
            let identity =
                flight::identity(resolved[index].fingerprint, &resolved[index].user_tags);
            match flights.join(
                &resolved[index].key,
                identity,
                &versions.tokens,
                tickets[index],
            ) {
                Role::Leader {
                    guard,
                    read_is_stale,
                } => {
                    if read_is_stale && versions.redis_answered {
                        reread.push(led.len());
                    }
                    led.push(Led {
                        index,
                        item: item.clone(),
                        guard,
                        versions: versions.tokens,
                        redis_answered: versions.redis_answered,
                        tokens: None,
                        unusable,
                    });
                }
                Role::Waiter(slot) => waiting.push((index, identity, slot, versions.tokens)),
            }
        }
        // A flight of the key completed after the read: it may have stored a value under
        // other tag tokens, which the lease would then overwrite. Read those again first.
        if !reread.is_empty() {
            let indices: Vec<usize> = reread.iter().map(|&at| led[at].index).collect();
            let again = self.read_entries(spec, &resolved, &indices).await;
            let mut answered = Vec::new();
            for (&at, read) in reread.iter().zip(again) {
                let lead = &mut led[at];
                match self.judge(spec, &resolved[lead.index], read) {
                    Judged::Hit(bytes, value) => answered.push((at, bytes, value)),
                    Judged::Miss { unusable, versions } => {
                        lead.unusable = unusable;
                        lead.versions = versions.tokens;
                        lead.redis_answered = versions.redis_answered;
                    }
                }
            }
            for (at, bytes, value) in answered.into_iter().rev() {
                // Published as found: its waiters check it against the tags they read.
                let lead = led.swap_remove(at);
                lead.guard.publish(Shared::Found(bytes));
                values.insert(lead.item, value);
            }
        }

        // 3. The led items' leases, all at once; the loader only once every one is decided.
        let leases = futures_util::future::join_all(led.iter_mut().map(|lead| {
            let entry = resolved[lead.index].at(spec);
            async move {
                // Never waiting for another process's holder (`lock`): two batches each
                // holding a lease the other waits for would stall for `wait`. A busy element
                // is loaded with the others and not stored, as by a call without `lock`.
                let (tokens, outcome) = self
                    .lease_for_lead::<V>(
                        &entry,
                        &lead.guard,
                        &mut lead.versions,
                        (lead.redis_answered, false),
                        (Instant::now() + self.inner.gate.op_timeout(), None),
                    )
                    .await;
                lead.tokens = tokens;
                outcome
            }
        }))
        .await;
        let mut computing = Vec::with_capacity(led.len());
        for (mut lead, outcome) in led.into_iter().zip(leases) {
            match outcome {
                LeaseOutcome::Filled(bytes, value) => {
                    lead.guard.publish(Shared::Found(bytes));
                    self.record(Event::Hit, spec);
                    values.insert(lead.item, value);
                }
                LeaseOutcome::Held(lease) => {
                    lead.guard.hold_lease(lease);
                    computing.push(lead);
                }
                LeaseOutcome::Busy { .. } | LeaseOutcome::Failed => computing.push(lead),
            }
        }

        // 4. One call of the loader for everything this batch leads.
        if !computing.is_empty() {
            for lead in &computing {
                lead.guard.start_computing(&lead.versions);
                self.record(Event::Miss, spec);
            }
            crate::cache::warm::note_ran();
            let started = (StdInstant::now(), self.now_ms());
            let wanted: Vec<T> = computing.iter().map(|lead| lead.item.clone()).collect();
            match load(&wanted).await {
                Ok(mut loaded) => {
                    for lead in computing {
                        let value = loaded.remove(&lead.item);
                        let entry = resolved[lead.index].at(spec);
                        let storable = items[lead.index].1.storable;
                        let item = lead.item.clone();
                        self.settle(&entry, storable, lead, value.as_ref(), started);
                        if let Some(value) = value {
                            values.insert(item, value);
                        }
                    }
                }
                Err(error) => {
                    crate::cache::warm::note_failed();
                    // The leases go back first, all at once (the next leader may take one at
                    // once); then the waiters take turns, as after a single call's failure.
                    let leases: Vec<_> = computing
                        .iter_mut()
                        .filter_map(|lead| Some((lead.guard.take_lease()?, lead.unusable)))
                        .collect();
                    futures_util::future::join_all(
                        leases
                            .into_iter()
                            .map(|(lease, unusable)| self.release(spec, lease, unusable)),
                    )
                    .await;
                    for lead in computing {
                        lead.guard.hand_over(None);
                    }
                    return Err(error);
                }
            }
        }

        // 5. The items that waited for another call's value.
        let waited = futures_util::future::join_all(waiting.into_iter().map(
            |(index, identity, slot, versions)| async move {
                (index, identity, versions, flight::wait(slot).await)
            },
        ))
        .await;
        let mut leftover = Vec::new();
        for (index, identity, versions, outcome) in waited {
            let (bytes, current) = match outcome {
                // Joining checked that this element may have it.
                WaitOutcome::Shared(Shared::Computed(bytes)) => (bytes, None),
                // Stored by someone else: valid under the tokens this batch read.
                WaitOutcome::Shared(Shared::Found(bytes)) => {
                    (bytes, (!versions.is_empty()).then_some(versions))
                }
                _ => {
                    leftover.push((index, identity));
                    continue;
                }
            };
            match envelope::decode::<V>(&bytes, resolved[index].fingerprint, current.as_deref()) {
                Ok((value, _)) => {
                    self.record(Event::Coalesced, spec);
                    values.insert(items[index].0.clone(), value);
                }
                Err(_) => leftover.push((index, identity)),
            }
        }
        if !leftover.is_empty() {
            // Their leaders failed or went away. A lease one left behind for its successor
            // is given back (this batch does not lead again); the elements are loaded once
            // more, and not stored.
            for &(index, identity) in &leftover {
                self.record(Event::Miss, spec);
                if let Some(lease) = flights.adopt_lease(&resolved[index].key, identity) {
                    self.release(spec, lease, false).await;
                }
            }
            crate::cache::warm::note_ran();
            let leftover: Vec<T> = leftover
                .into_iter()
                .map(|(index, _)| items[index].0.clone())
                .collect();
            values.extend(load(&leftover).await?);
        }
        Ok(values)
    }

    /// A led item's end: its value (if the loader returned one) to its flight's waiters, and
    /// stored through its lease (or the lease given back), behind the call's return.
    fn settle<T, V: CacheValue>(
        &self,
        entry: &EntryAt<'_>,
        storable: fn(&V, bool) -> bool,
        mut lead: Led<'_, T>,
        value: Option<&V>,
        (started, started_ms): (StdInstant, u64),
    ) {
        let spec = entry.spec;
        let computed_ms = self.ms_since(started_ms);
        let tokens = lead.tokens.as_deref();
        let encoded = value.and_then(|value| {
            self.encode(
                spec,
                entry.fingerprint,
                value,
                tokens.unwrap_or_default(),
                computed_ms,
            )
        });
        match &encoded {
            Some(encoded) => lead.guard.publish(Shared::Computed(encoded.bytes.clone())),
            None => lead.guard.publish(Shared::NotShareable),
        }
        if let Some(lease) = lead.guard.take_lease() {
            let stores = value.is_some_and(|value| storable(value, spec.cache_none));
            let encoded = encoded.filter(|_| stores && tokens.is_some());
            self.store_behind(entry, lease, encoded, lead.unusable, started.elapsed());
        }
        // The flight ends only now, once the fill is queued (see `compute_and_fill`).
        drop(lead.guard);
    }

    /// The entries of `resolved[indices]`, with their tags' tokens: one `MGET` per
    /// [`MGET_CHUNK`] elements, all sent at once. A part Redis did not answer reads as
    /// missing (fail-open, counted).
    async fn read_entries(
        &self,
        spec: &'static crate::spec::FnSpec,
        resolved: &[Resolved],
        indices: &[usize],
    ) -> Vec<ReadOne> {
        let gate = &self.inner.gate;
        let deadline = Instant::now() + gate.op_timeout();
        let wanted: Vec<(&str, TagKeys<'_>)> = indices
            .iter()
            .map(|&index| {
                (
                    resolved[index].key.as_str(),
                    resolved[index].at(spec).tag_keys,
                )
            })
            .collect();
        let parts =
            futures_util::future::join_all(wanted.chunks(MGET_CHUNK).map(|part| async move {
                let read = gate
                    .pass("MGET", gate.backend().read_many(part, deadline))
                    .await;
                (part.len(), self.usable("MGET", spec, read))
            }))
            .await;
        let mut reads = Vec::with_capacity(indices.len());
        for (len, read) in parts {
            match read {
                Some(found) => reads.extend(found.into_iter().map(|(bytes, versions)| ReadOne {
                    bytes,
                    versions,
                    redis_answered: true,
                })),
                None => reads.extend((0..len).map(|_| ReadOne {
                    bytes: None,
                    versions: Versions::new(),
                    redis_answered: false,
                })),
            }
        }
        reads
    }

    /// A fresh entry whose tags are current is a hit; anything else a miss (an unusable
    /// entry is counted and logged, and overwritten by the fill).
    fn judge<V: CacheValue>(
        &self,
        spec: &'static crate::spec::FnSpec,
        resolved: &Resolved,
        read: ReadOne,
    ) -> Judged<V> {
        let mut unusable = false;
        if let Some(bytes) = read.bytes {
            match envelope::decode::<V>(&bytes, resolved.fingerprint, Some(&read.versions)) {
                Ok((value, times)) if self.is_fresh(spec, times) => {
                    self.record(Event::Hit, spec);
                    return Judged::Hit(bytes, value);
                }
                Ok(_) => {}
                Err(error) => {
                    unusable = !matches!(error, DecodeError::Invalidated);
                    self.report_decode_failure(spec, &resolved.key, &error);
                }
            }
        }
        Judged::Miss {
            unusable,
            versions: MissRead {
                tokens: read.versions,
                redis_answered: read.redis_answered,
            },
        }
    }
}
