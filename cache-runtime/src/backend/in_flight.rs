//! The entries whose fill this process has sent and not yet seen answered.
//!
//! A call returns once its fill is queued on the main connection; a read on that connection
//! comes after it. A read through the in-process tier goes on the tracking connection, which
//! could overtake the fill and find the entry missing (a miss, and a second computation when
//! the lease then finds the stored value already past its time). So a read of an entry with
//! a fill in flight goes on the main connection instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};

/// Fills in flight, by entry key (a count: two fills of one key may overlap).
#[derive(Debug, Default)]
pub(crate) struct FillsInFlight {
    /// How many fills are in flight: a read looks up the keys only when there are some.
    count: AtomicUsize,
    keys: Mutex<HashMap<String, usize>>,
}

impl FillsInFlight {
    /// Notes a fill of `key` until the returned guard is dropped (answered, failed or
    /// cancelled).
    pub(crate) fn start(self: &Arc<Self>, key: &str) -> InFlight {
        *self.keys().entry(key.to_owned()).or_default() += 1;
        self.count.fetch_add(1, SeqCst);
        InFlight {
            fills: Arc::clone(self),
            key: key.to_owned(),
        }
    }

    /// Whether a fill of `key` is in flight.
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.count.load(SeqCst) > 0 && self.keys().contains_key(key)
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One fill in flight; dropping it ends it.
#[derive(Debug)]
pub(crate) struct InFlight {
    fills: Arc<FillsInFlight>,
    key: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut keys = self.fills.keys();
        if let Some(count) = keys.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                keys.remove(&self.key);
            }
        }
        self.fills.count.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_in_flight_until_its_last_fill_ends() {
        let fills = Arc::new(FillsInFlight::default());
        assert!(!fills.contains("a"));
        let first = fills.start("a");
        let second = fills.start("a");
        assert!(fills.contains("a") && !fills.contains("b"));
        drop(first);
        assert!(fills.contains("a"), "one fill of it is still in flight");
        drop(second);
        assert!(!fills.contains("a"));
    }
}
