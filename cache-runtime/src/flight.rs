//! In-process coalescing of concurrent calls for one key ("single flight").
//!
//! The first caller of a key becomes its leader and reads or computes the entry; callers that
//! arrive meanwhile wait for the leader's encoded entry and decode their own copy (so cached
//! types need not be `Clone`). If the leader is dropped (its caller was cancelled) or panics
//! before publishing, its guard closes the flight and the waiters start over: one of them
//! becomes the new leader. Nobody hangs and nobody fails because another caller went away.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// What a leader hands to the callers waiting on its key.
#[derive(Debug, Clone)]
pub(crate) enum Shared {
    /// An encoded entry (envelope bytes), whether or not it was stored.
    Entry(Bytes),
    /// The leader's result cannot be shared (an `Err`, or it did not serialize): each waiter
    /// runs the function itself.
    NotShareable,
}

type Slot = Arc<watch::Sender<Option<Shared>>>;

#[derive(Debug, Default)]
pub(crate) struct Flights {
    in_flight: Mutex<HashMap<String, Slot>>,
}

pub(crate) enum Role<'a> {
    Leader(LeaderGuard<'a>),
    Waiter(watch::Receiver<Option<Shared>>),
}

/// The leader's hold on a key. Dropping it ends the flight: waiters that were not given a
/// value start over.
pub(crate) struct LeaderGuard<'a> {
    flights: &'a Flights,
    key: String,
    slot: Slot,
}

/// How waiting on a leader ended.
pub(crate) enum WaitOutcome {
    Shared(Shared),
    /// The leader went away without publishing.
    Abandoned,
}

impl Flights {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // The map is consistent after every statement, so a panic elsewhere while the lock was
        // held leaves nothing half-done.
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Leads the flight of `key`, or joins the one in progress.
    pub(crate) fn join(&self, key: &str) -> Role<'_> {
        let mut map = self.map();
        if let Some(slot) = map.get(key) {
            return Role::Waiter(slot.subscribe());
        }
        let slot: Slot = Arc::new(watch::Sender::new(None));
        map.insert(key.to_owned(), Arc::clone(&slot));
        Role::Leader(LeaderGuard {
            flights: self,
            key: key.to_owned(),
            slot,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map().len()
    }
}

impl LeaderGuard<'_> {
    /// Gives `shared` to every current and later waiter of this flight. The flight stays open
    /// (new callers join it and get `shared` at once) until the guard is dropped, which the
    /// leader does once the entry is stored.
    pub(crate) fn publish(&self, shared: Shared) {
        self.slot.send_replace(Some(shared));
    }
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.map();
        if map
            .get(&self.key)
            .is_some_and(|slot| Arc::ptr_eq(slot, &self.slot))
        {
            map.remove(&self.key);
        }
        // When the last `Slot` goes, the channel closes: waiters that saw no value start over.
    }
}

/// Waits for the leader of a flight.
pub(crate) async fn wait(mut receiver: watch::Receiver<Option<Shared>>) -> WaitOutcome {
    match receiver.wait_for(Option::is_some).await {
        Ok(value) => match value.clone() {
            Some(shared) => WaitOutcome::Shared(shared),
            None => WaitOutcome::Abandoned,
        },
        Err(_) => WaitOutcome::Abandoned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_get_the_published_value_and_the_map_empties() {
        let flights = Flights::default();
        let Role::Leader(guard) = flights.join("k") else {
            panic!("first caller leads")
        };
        let Role::Waiter(rx) = flights.join("k") else {
            panic!("second caller waits")
        };
        guard.publish(Shared::Entry(Bytes::from_static(b"v")));
        drop(guard);
        assert!(matches!(wait(rx).await, WaitOutcome::Shared(Shared::Entry(b)) if b == "v"));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_dropped_leader_abandons_and_the_next_caller_leads() {
        let flights = Flights::default();
        let Role::Leader(guard) = flights.join("k") else {
            panic!("first caller leads")
        };
        let Role::Waiter(rx) = flights.join("k") else {
            panic!("second caller waits")
        };
        drop(guard);
        assert!(matches!(wait(rx).await, WaitOutcome::Abandoned));
        assert!(matches!(flights.join("k"), Role::Leader(_)));
    }
}
