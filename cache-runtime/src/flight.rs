//! In-process coalescing of concurrent calls for one key ("single flight").
//!
//! The first caller of a key becomes its leader and reads or computes the entry; callers that
//! arrive meanwhile wait for the leader's encoded entry and decode their own copy (so cached
//! types need not be `Clone`). If the leader is dropped (its caller was cancelled) or panics
//! before publishing, its guard closes the flight and the waiters start over: one of them
//! becomes the new leader. Nobody hangs and nobody fails because another caller went away.
//!
//! Hits do not touch the flights (a shared lock on every hit cost ~8% of throughput with 64
//! concurrent callers): a caller reads first and joins a flight only after a miss. A caller
//! whose read missed just before another flight of the same key stored its value would then
//! lead a second computation; [`Ticket`]s close that gap. Each completed flight bumps a
//! counter of its key's stripe; a new leader whose read predates such a bump reads again.
//!
//! Tag invalidations, by any process, are honoured as follows: a call never gets a value
//! computed before an invalidation that happened before the call started.
//! - A value the leader computes is given to a caller whose read began before the computation
//!   started (a process-wide [`Flights`] sequence orders the two), or whose read saw exactly the
//!   tag tokens the leader computes under (then no tag was invalidated in between), or whose
//!   read could not see tags at all (Redis unavailable: it knows of no invalidation). Any other
//!   caller leads a new flight.
//! - A value the leader found stored (another caller's, or another process's) is checked by
//!   each waiter against the tokens it read itself; a waiter it does not satisfy reads again.

use crate::backend::HeldLease;
use crate::pattern::KeyPattern;
use crate::returns::SharedFailure;
use crate::tags::Versions;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use tokio::sync::Notify;

/// What a leader hands to the callers waiting on its key.
#[derive(Debug, Clone)]
pub(crate) enum Shared {
    /// An entry the leader computed (envelope bytes), whether or not it was stored. Every
    /// waiter may take it: joining checked that.
    Computed(Bytes),
    /// An entry the leader found stored: valid for a waiter only if its tags' tokens are the
    /// ones the waiter read.
    Found(Bytes),
    /// The leader's value did not serialize: each waiter runs the function itself.
    NotShareable,
    /// The leader's call failed (an `Err`). With the error, when its type can be shared (see
    /// [`crate::returns::ShareFailure`]), each waiter returns a copy of it; without, a waiter
    /// returns its fail-safe value or starts over (one of them leads the next attempt, so the
    /// source still sees one call at a time). Published by [`LeaderGuard::hand_over`] only.
    Failed(Option<SharedFailure>),
    /// The leader stopped waiting at its `hard_timeout`, with no fail-safe value: so do its
    /// waiters.
    TimedOut,
}

/// The state of one flight, shared by its leader and waiters.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// Set once: `Some` when the leader published, `None` when it went away without doing so.
    outcome: OnceLock<Option<Shared>>,
    changed: Notify,
    /// Set when the leader starts computing.
    computing: Mutex<Option<Computing>>,
}

/// When a leader started computing, and under which tag tokens.
#[derive(Debug)]
struct Computing {
    /// The [`Flights`] sequence number taken as it started.
    started: u64,
    /// The tokens its result is recorded under (`None` where a tag could not be read).
    under: Versions,
}

impl Slot {
    fn computing(&self) -> MutexGuard<'_, Option<Computing>> {
        self.computing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a caller whose read saw the tag tokens `read`, and that took `ticket` before
    /// reading, may take the value this flight's leader computes (see the module's doc).
    fn serves(&self, read: &Versions, ticket: Ticket) -> bool {
        match &*self.computing() {
            // It starts computing after this caller's read began.
            None => true,
            Some(computing) => {
                ticket.sequence <= computing.started
                    || read.is_empty()
                    || (read.len() == computing.under.len()
                        && read
                            .iter()
                            .zip(&computing.under)
                            .all(|(read, under)| read.is_some() && read == under))
            }
        }
    }
}

/// Full key -> (fingerprint, flight) pairs.
type FlightMap = HashMap<String, Vec<(u64, Arc<Slot>)>>;

/// Number of completion counters; keys share one only by hash collision, which costs at most
/// a redundant read.
const STRIPES: usize = 256;

#[derive(Debug)]
pub(crate) struct Flights {
    /// Leases of leaders that went away, for the next leader of the same key and fingerprint.
    orphaned_leases: Mutex<HashMap<(String, u64), HeldLease>>,
    /// Per key, the flights in progress, one per fingerprint: two functions (or
    /// instantiations) sharing a key template never wait on each other.
    in_flight: Mutex<FlightMap>,
    completed: [AtomicU64; STRIPES],
    /// Orders the start of reads against the start of computations (see [`Slot::serves`]).
    sequence: AtomicU64,
}

impl Default for Flights {
    fn default() -> Self {
        Flights {
            orphaned_leases: Mutex::default(),
            in_flight: Mutex::default(),
            completed: std::array::from_fn(|_| AtomicU64::new(0)),
            sequence: AtomicU64::new(0),
        }
    }
}

/// Taken before a read: tells a later leader whether a flight of the key completed since.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    stripe: usize,
    completed: u64,
    /// The [`Flights`] sequence number when the read began.
    sequence: u64,
}

// A `Role` lives on the stack for one call; boxing the guard would allocate on every miss.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Role<'a> {
    /// Leads the flight; `read_is_stale` when a flight of the key completed after the ticket
    /// was taken, so the caller's earlier read may predate a stored value.
    Leader {
        guard: LeaderGuard<'a>,
        read_is_stale: bool,
    },
    Waiter(Arc<Slot>),
}

/// The leader's hold on a key. Dropping it ends the flight: waiters that were not given a
/// value start over.
pub(crate) struct LeaderGuard<'a> {
    flights: &'a Flights,
    key: &'a str,
    fingerprint: u64,
    stripe: usize,
    slot: Arc<Slot>,
    /// The entry's lease while the leader computes: if the leader goes away, it passes to the
    /// next leader of this process rather than block it until released or expired.
    lease: Option<HeldLease>,
    /// Set by [`LeaderGuard::hand_over`], which did the dropping's work already.
    handed_over: bool,
}

/// How waiting on a leader ended.
pub(crate) enum WaitOutcome {
    Shared(Shared),
    /// The leader went away without publishing.
    Abandoned,
}

impl Flights {
    fn map(&self) -> MutexGuard<'_, FlightMap> {
        // The map is consistent after every statement, so a panic elsewhere while the lock was
        // held leaves nothing half-done.
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn orphaned_leases(&self) -> MutexGuard<'_, HashMap<(String, u64), HeldLease>> {
        self.orphaned_leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The lease a previous leader of this key and fingerprint left behind, if any and if it
    /// may still hold.
    pub(crate) fn adopt_lease(&self, key: &str, fingerprint: u64) -> Option<HeldLease> {
        let mut orphans = self.orphaned_leases();
        if orphans.is_empty() {
            return None;
        }
        // Lapsed ones go, whatever their key: their waiters may have gone too.
        orphans.retain(|_, orphan| orphan.may_hold());
        orphans.remove(&(key.to_owned(), fingerprint))
    }

    /// Detaches the flights of `key` (an invalidation): callers that come later start a new
    /// computation instead of joining one that began before the invalidation.
    pub(crate) fn detach(&self, key: &str) {
        self.map().remove(key);
        // Their leases were deleted with the entry: nobody may adopt them.
        self.orphaned_leases()
            .retain(|(orphan_key, _), _| orphan_key != key);
    }

    /// Detaches the flights of every key `pattern` selects (see [`Flights::detach`]).
    pub(crate) fn detach_matching(&self, pattern: &KeyPattern) {
        self.map().retain(|key, _| !pattern.selects(key));
        self.orphaned_leases()
            .retain(|(key, _), _| !pattern.selects(key));
    }

    /// Take before reading `key`.
    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        let stripe = stripe_of(key);
        Ticket {
            stripe,
            completed: self.completed[stripe].load(SeqCst),
            sequence: self.sequence.load(SeqCst),
        }
    }

    /// Leads the flight of `key` for entries with `fingerprint`, or joins the one in progress
    /// if its computation may serve a caller whose read saw the tag tokens `versions` (see
    /// [`Slot::serves`]); else the caller leads a new flight.
    pub(crate) fn join<'a>(
        &'a self,
        key: &'a str,
        fingerprint: u64,
        versions: &Versions,
        ticket: Ticket,
    ) -> Role<'a> {
        let mut map = self.map();
        let flights = map.entry(key.to_owned()).or_default();
        if let Some(index) = flights.iter().position(|(f, _)| *f == fingerprint) {
            if flights[index].1.serves(versions, ticket) {
                return Role::Waiter(Arc::clone(&flights[index].1));
            }
            // Detached: its leader and waiters finish with their value, nobody joins it now.
            flights.swap_remove(index);
        }
        let slot = Arc::new(Slot::default());
        flights.push((fingerprint, Arc::clone(&slot)));
        let read_is_stale = self.completed[ticket.stripe].load(SeqCst) != ticket.completed;
        Role::Leader {
            guard: LeaderGuard {
                flights: self,
                key,
                fingerprint,
                stripe: ticket.stripe,
                slot,
                lease: None,
                handed_over: false,
            },
            read_is_stale,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

impl LeaderGuard<'_> {
    /// Marks the start of the leader's computation, under the tag tokens `versions` (after
    /// creating missing ones): from now on, only callers that read before, or that read these
    /// very tokens, join.
    pub(crate) fn start_computing(&self, versions: &Versions) {
        let mut computing = self.slot.computing();
        // Taken under the slot's lock: a caller that found no computation took its ticket
        // before this.
        let started = self.flights.sequence.fetch_add(1, SeqCst);
        *computing = Some(Computing {
            started,
            under: versions.clone(),
        });
    }

    /// Keeps `lease` until [`LeaderGuard::take_lease`]; see the field.
    pub(crate) fn hold_lease(&mut self, lease: HeldLease) {
        self.lease = Some(lease);
    }

    /// The lease given to [`LeaderGuard::hold_lease`], back for filling or releasing.
    pub(crate) fn take_lease(&mut self) -> Option<HeldLease> {
        self.lease.take()
    }

    /// Gives `shared` to every current and later waiter of this flight. The flight stays open
    /// (new callers join it and get `shared` at once) until the guard is dropped, which the
    /// leader does once the entry is stored.
    pub(crate) fn publish(&self, shared: Shared) {
        if self.slot.outcome.set(Some(shared)).is_ok() {
            self.slot.changed.notify_waiters();
        }
    }
}

impl LeaderGuard<'_> {
    /// The lease a previous leader of this flight's key and identity left behind, if any and
    /// if it may still hold.
    pub(crate) fn adopt_lease(&self) -> Option<HeldLease> {
        self.flights.adopt_lease(self.key, self.fingerprint)
    }

    /// The leader's call failed: ends the flight now (callers from now on start a new one)
    /// and gives the waiters [`Shared::Failed`] with `failure`. Its lease must have been given
    /// back already, so that the waiter that leads next can take it at once.
    pub(crate) fn hand_over(mut self, failure: Option<SharedFailure>) {
        debug_assert!(self.lease.is_none(), "the lease is released first");
        self.leave_map();
        self.handed_over = true;
        if self.slot.outcome.set(Some(Shared::Failed(failure))).is_ok() {
            self.slot.changed.notify_waiters();
        }
    }

    /// Takes this flight out of the map: later callers start a new one.
    fn leave_map(&self) {
        let mut map = self.flights.map();
        // Bumped before the flight leaves the map (under its lock): a caller that finds no
        // flight afterwards also sees the bump, and reads again.
        self.flights.completed[self.stripe].fetch_add(1, SeqCst);
        if let Some(flights) = map.get_mut(self.key) {
            flights.retain(|(fingerprint, slot)| {
                *fingerprint != self.fingerprint || !Arc::ptr_eq(slot, &self.slot)
            });
            if flights.is_empty() {
                map.remove(self.key);
            }
        }
    }
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        self.leave_map();
        // Not published (cancelled or panicked): release the waiters so they start over, and
        // leave them the lease if any of them is there to take it (else it is released).
        if self.slot.outcome.set(None).is_ok() {
            if let Some(lease) = self.lease.take()
                && Arc::strong_count(&self.slot) > 1
            {
                let key = (self.key.to_owned(), self.fingerprint);
                self.flights.orphaned_leases().insert(key, lease);
            }
            self.slot.changed.notify_waiters();
        } else if let Some(stale) = self.flights.adopt_lease(self.key, self.fingerprint) {
            // This flight ended normally without adopting a lease left by an earlier one (it
            // found a value): give that lease back (in the background, as `HeldLease` drops).
            drop(stale);
        }
    }
}

/// What identifies a flight of a key: the function's `fingerprint` and, for a tagged entry,
/// the full keys of its tags. A parameter used only in a tag (an `org_id` the key's `id`
/// determines) must not let a caller receive a value computed under another tag value, which
/// its own read would have rejected.
pub(crate) fn identity(fingerprint: u64, tag_keys: &[String]) -> u64 {
    if tag_keys.is_empty() {
        return fingerprint;
    }
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let tags = BuildHasherDefault::<DefaultHasher>::default().hash_one(tag_keys);
    fingerprint ^ tags.rotate_left(1)
}

fn stripe_of(key: &str) -> usize {
    // Only spreads keys over stripes, on every call: the length and the last 8 bytes (where
    // the arguments are, before the closing brace), mixed by one multiplication.
    let bytes = key.as_bytes();
    let mut tail = [0u8; 8];
    let take = bytes.len().min(8);
    tail[8 - take..].copy_from_slice(&bytes[bytes.len() - take..]);
    let mixed = (u64::from_le_bytes(tail) ^ bytes.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 56) as usize % STRIPES
}

/// Waits for the leader of a flight.
pub(crate) async fn wait(slot: Arc<Slot>) -> WaitOutcome {
    loop {
        // Register for the notification before looking, so a publish in between is not missed.
        let notified = slot.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match slot.outcome.get() {
            Some(Some(shared)) => return WaitOutcome::Shared(shared.clone()),
            Some(None) => return WaitOutcome::Abandoned,
            None => notified.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_get_the_published_value_and_the_map_empties() {
        let flights = Flights::default();
        let ticket = flights.ticket("k");
        let Role::Leader {
            guard,
            read_is_stale: false,
        } = flights.join("k", 1, &Versions::new(), ticket)
        else {
            panic!("first caller leads")
        };
        let Role::Waiter(slot) = flights.join("k", 1, &Versions::new(), ticket) else {
            panic!("second caller waits")
        };
        let waiting = tokio::spawn(wait(slot));
        tokio::task::yield_now().await;
        guard.publish(Shared::Computed(Bytes::from_static(b"v")));
        drop(guard);
        assert!(
            matches!(waiting.await.unwrap(), WaitOutcome::Shared(Shared::Computed(b)) if b == "v")
        );
        assert_eq!(flights.len(), 0);
        assert!(
            matches!(
                flights.join("k", 1, &Versions::new(), ticket),
                Role::Leader {
                    read_is_stale: true,
                    ..
                }
            ),
            "a read from before the flight completed is stale"
        );
    }

    #[test]
    fn other_fingerprints_fly_separately() {
        let flights = Flights::default();
        let ticket = flights.ticket("k");
        let first = flights.join("k", 1, &Versions::new(), ticket);
        assert!(matches!(
            flights.join("k", 2, &Versions::new(), ticket),
            Role::Leader { .. }
        ));
        assert!(matches!(
            flights.join("k", 1, &Versions::new(), ticket),
            Role::Waiter(_)
        ));
        drop(first);
    }

    #[test]
    fn a_caller_joins_a_computation_that_started_after_its_read_or_under_its_tokens() {
        let flights = Flights::default();
        let (old, new) = (Some([1u8; 16]), Some([2u8; 16]));
        let early = flights.ticket("k");
        let Role::Leader { guard, .. } = flights.join("k", 1, &smallvec::smallvec![None], early)
        else {
            panic!("first caller leads")
        };
        let serves = |read: Versions, ticket| guard.slot.serves(&read, ticket);
        assert!(
            serves(smallvec::smallvec![new], early),
            "not computing yet: it starts after any read so far"
        );
        guard.start_computing(&smallvec::smallvec![old]);
        assert!(
            serves(smallvec::smallvec![None], early),
            "a read that began before the computation"
        );
        let late = flights.ticket("k");
        assert!(
            serves(smallvec::smallvec![old], late),
            "the very tokens it computes under"
        );
        assert!(
            serves(Versions::new(), late),
            "a read that saw no tags (Redis unavailable) knows of no invalidation"
        );
        assert!(!serves(smallvec::smallvec![new], late), "another token");
        assert!(!serves(smallvec::smallvec![None], late), "a deleted tag");
        assert!(matches!(
            flights.join("k", 1, &smallvec::smallvec![new], late),
            Role::Leader { .. }
        ));
        drop(guard);
    }

    #[test]
    fn a_computation_under_an_unknown_token_serves_only_earlier_reads() {
        let flights = Flights::default();
        let early = flights.ticket("k");
        let Role::Leader { guard, .. } = flights.join("k", 1, &Versions::new(), early) else {
            panic!("first caller leads")
        };
        // Its read failed: it computes under no known token.
        guard.start_computing(&smallvec::smallvec![None]);
        let token: Versions = smallvec::smallvec![Some([1u8; 16])];
        assert!(guard.slot.serves(&token, early));
        assert!(!guard.slot.serves(&token, flights.ticket("k")));
        drop(guard);
    }

    #[test]
    fn callers_under_other_tag_values_never_join_even_before_it_computes() {
        let flights = Flights::default();
        let ticket = flights.ticket("k");
        let org = |n: u32| identity(7, &[format!("ns:#tag:{{org:{n}}}")]);
        let Role::Leader { guard, .. } = flights.join("k", org(1), &Versions::new(), ticket) else {
            panic!("first caller leads")
        };
        // Not computing yet: any caller of the same identity would join.
        assert!(matches!(
            flights.join("k", org(1), &Versions::new(), ticket),
            Role::Waiter(_)
        ));
        assert!(
            matches!(
                flights.join("k", org(2), &Versions::new(), ticket),
                Role::Leader { .. }
            ),
            "another tenant's caller leads its own flight"
        );
        assert_eq!(identity(7, &[]), 7, "untagged: the fingerprint alone");
        drop(guard);
    }

    #[tokio::test]
    async fn a_dropped_leader_abandons_and_the_next_caller_leads() {
        let flights = Flights::default();
        let ticket = flights.ticket("k");
        let Role::Leader { guard, .. } = flights.join("k", 1, &Versions::new(), ticket) else {
            panic!("first caller leads")
        };
        let Role::Waiter(slot) = flights.join("k", 1, &Versions::new(), ticket) else {
            panic!("second caller waits")
        };
        drop(guard);
        assert!(matches!(wait(slot).await, WaitOutcome::Abandoned));
        assert!(matches!(
            flights.join("k", 1, &Versions::new(), flights.ticket("k")),
            Role::Leader {
                read_is_stale: false,
                ..
            }
        ));
    }
}
