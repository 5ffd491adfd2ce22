//! A lease a call holds in the store: filled or released through the backend, and given back
//! in the background if the call drops it (cancelled, or panicked).

use crate::backend::Backend;
use std::time::Duration;

/// A lease this call holds. Filling or releasing consumes it; dropped otherwise (the caller
/// was cancelled, or the function panicked), it is released in the background so others need
/// not wait for it to expire.
#[derive(Debug)]
pub(crate) struct HeldLease {
    backend: Backend,
    entry: String,
    key: String,
    token: String,
    /// When it lapses at the latest: one lease duration after it was asked for.
    lapses_at: std::time::Instant,
    armed: bool,
    /// A write-through's lease: dropped unfinished (the writer was cancelled, maybe after its
    /// write landed), it removes the entry too rather than leave the old value.
    clear_entry_on_drop: bool,
}

impl HeldLease {
    /// Made before the lease is asked for, so that a call cancelled while asking, or whose
    /// request timed out after Redis ran it, still gives the lease back.
    pub(crate) fn new(
        backend: Backend,
        entry: &str,
        key: String,
        token: String,
        lasts: Duration,
    ) -> Self {
        let now = std::time::Instant::now();
        HeldLease {
            backend,
            entry: entry.to_owned(),
            key,
            token,
            lapses_at: now.checked_add(lasts).unwrap_or(now),
            armed: true,
            clear_entry_on_drop: false,
        }
    }

    /// See the field.
    pub(crate) fn clearing_entry_on_drop(mut self) -> Self {
        self.clear_entry_on_drop = true;
        self
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Whether it may still hold.
    pub(crate) fn may_hold(&self) -> bool {
        std::time::Instant::now() < self.lapses_at
    }

    /// Forgets a lease that was never this caller's (another caller held it).
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }

    /// Stores `value` in the entry if the lease still holds; true if stored. The lease counts
    /// as given up only on Redis's answer: if the call is cancelled or fails first, `Drop`
    /// releases it (harmless if the fill did run: the release checks the token).
    pub(crate) async fn fill(
        mut self,
        value: bytes::Bytes,
        ttl: Duration,
    ) -> Result<bool, crate::CacheError> {
        let result = self
            .backend
            .fill(&self.entry, &self.key, &self.token, value, ttl)
            .await;
        self.armed = result.is_err();
        result
    }

    /// Gives the lease up, removing the (unusable) entry too with `clear_entry`.
    pub(crate) async fn release(mut self, clear_entry: bool) -> Result<(), crate::CacheError> {
        let result = self
            .backend
            .release(&self.entry, &self.key, &self.token, clear_entry)
            .await;
        self.armed = result.is_err();
        result
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let backend = self.backend.clone();
            let (entry, key, token) = (
                std::mem::take(&mut self.entry),
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.token),
            );
            let clear_entry = self.clear_entry_on_drop;
            runtime.spawn(async move {
                // Best effort: if it fails, the lease expires by itself.
                let _ = backend.release(&entry, &key, &token, clear_entry).await;
            });
        }
    }
}
