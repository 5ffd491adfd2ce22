//! Batch reads: many entries of one memoized function (the reader) at once. All of them are
//! read in one round trip; the loader is called once, with the items whose entries are
//! missing; their values are stored through their leases, as single calls store theirs.
//!
//! The steps, for the items that missed:
//! 1. each joins its key's in-process flight: it leads it, or waits for the call (single or
//!    batch) that leads it; a batch never waits for a flight while it holds others it leads
//!    and has not computed, so two batches cannot wait on each other;
//! 2. the led items take their leases (with `lock`, waiting for another process's value as
//!    a single call would), all at once, and the loader runs only after every lease is
//!    decided: an invalidation from then on takes the lease, and the value is not stored;
//! 3. the loader's values are published to the waiters and stored (pipelined behind the
//!    call's return, as single calls store theirs); items it did not return are not stored;
//! 4. the items that waited take their leader's value; an item whose leader failed or went
//!    away is loaded by one more call of the loader, its value not stored.
//!
//! A stale entry (`stale`) is loaded again rather than served, and a batch's failure is
//! returned as is (`fail_safe` applies to single calls).

use crate::CacheValue;
use crate::cache::Cache;
use crate::cache::memoize::{EntryAt, LeaseOutcome};
use crate::cache::writers::EntryRef;
use crate::envelope::{self, DecodeError};
use crate::flight::{self, LeaderGuard, Role, Shared, WaitOutcome};
use crate::stats::Event;
use crate::tags::{TagKeys, Token, Versions};
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
    tokens: Option<Vec<Token>>,
    unusable: bool,
}

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
        let resolved: Vec<Resolved> = items
            .iter()
            .map(|(_, entry)| self.resolve_entry(entry))
            .collect();
        let flights = &self.inner.flights;
        let tickets: Vec<flight::Ticket> =
            resolved.iter().map(|r| flights.ticket(&r.key)).collect();

        // 1. Every entry and tag token, one round trip.
        let deadline = Instant::now() + self.inner.gate.op_timeout();
        let wanted: Vec<(&str, TagKeys<'_>)> = resolved
            .iter()
            .map(|r| (r.key.as_str(), r.at(spec).tag_keys))
            .collect();
        let read = self.inner.gate.backend().read_many(&wanted, deadline);
        let read = self.inner.gate.pass("MGET", read).await;
        let (found, redis_answered) = match self.usable("MGET", spec, read) {
            Some(found) => (found, true),
            None => (
                (0..items.len()).map(|_| (None, Versions::new())).collect(),
                false,
            ),
        };

        // 2. Hits are answered; each miss leads its flight or waits on another's.
        let mut led = Vec::new();
        let mut waiting = Vec::new();
        for (index, ((item, _), (bytes, versions))) in items.iter().zip(found).enumerate() {
            let entry = resolved[index].at(spec);
            let mut unusable = false;
            if let Some(bytes) = bytes {
                match envelope::decode::<V>(&bytes, entry.fingerprint, Some(&versions)) {
                    Ok((value, times)) if self.is_fresh(spec, times) => {
                        self.record(Event::Hit, spec);
                        values.insert(item.clone(), value);
                        continue;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        unusable = !matches!(error, DecodeError::Invalidated);
                        self.report_decode_failure(spec, entry.key, &error);
                    }
                }
            }
            let identity = flight::identity(entry.fingerprint, &resolved[index].user_tags);
            match flights.join(&resolved[index].key, identity, &versions, tickets[index]) {
                Role::Leader { guard, .. } => led.push(Led {
                    index,
                    item: item.clone(),
                    guard,
                    versions,
                    tokens: None,
                    unusable,
                }),
                Role::Waiter(slot) => waiting.push((index, slot)),
            }
        }

        // 3. The led items' leases, all at once; the loader only once every one is decided.
        let leases = futures_util::future::join_all(led.iter_mut().map(|lead| {
            let entry = resolved[lead.index].at(spec);
            async move {
                let (tokens, outcome) = self
                    .lease_for_lead::<V>(
                        &entry,
                        &lead.guard,
                        &mut lead.versions,
                        redis_answered,
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
                    for mut lead in computing {
                        if let Some(lease) = lead.guard.take_lease() {
                            self.release(spec, lease, lead.unusable).await;
                        }
                        lead.guard.hand_over(None);
                    }
                    return Err(error);
                }
            }
        }

        // 5. The items that waited for another call's value.
        let waited = futures_util::future::join_all(
            waiting
                .into_iter()
                .map(|(index, slot)| async move { (index, flight::wait(slot).await) }),
        )
        .await;
        let mut leftover = Vec::new();
        for (index, outcome) in waited {
            let bytes = match outcome {
                WaitOutcome::Shared(Shared::Computed(bytes) | Shared::Found(bytes)) => bytes,
                _ => {
                    leftover.push(items[index].0.clone());
                    continue;
                }
            };
            match envelope::decode::<V>(&bytes, resolved[index].fingerprint, None) {
                Ok((value, _)) => {
                    self.record(Event::Coalesced, spec);
                    values.insert(items[index].0.clone(), value);
                }
                Err(_) => leftover.push(items[index].0.clone()),
            }
        }
        if !leftover.is_empty() {
            // Their leaders failed or went away: loaded once more, not stored (no lease).
            for _ in &leftover {
                self.record(Event::Miss, spec);
            }
            crate::cache::warm::note_ran();
            values.extend(load(&leftover).await?);
        }
        Ok(values)
    }

    /// Where `entry` lives in this cache: its full key, tag keys and fingerprint.
    fn resolve_entry<V: CacheValue>(&self, entry: &EntryRef<V>) -> Resolved {
        let spec = entry.spec;
        let resolved = spec.resolve::<V>(entry.body_type, entry.key_types, true);
        Resolved {
            key: self.full_key(&entry.rendered),
            function_tag: spec.invalidate_all.then(|| {
                resolved
                    .function_tag_key(&self.inner.namespace)
                    .into_owned()
            }),
            user_tags: self.tag_keys(&entry.tags),
            fingerprint: resolved.fingerprint,
        }
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
}
