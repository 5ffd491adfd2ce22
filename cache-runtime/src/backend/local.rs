//! The in-process tier (L1): copies of the bytes this process read from Redis, each dropped
//! when Redis says its key changed.
//!
//! A copy is the stored bytes as read (an entry's envelope, or a tag token), so everything
//! above judges an L1 copy exactly as a Redis reply: freshness, tags, fingerprint. Cached
//! types need not be `Clone`, and a copy is bounded in bytes.
//!
//! Coherence comes from Redis's client tracking (see [`Tracking`](super::tracking)): the
//! connection that read a key is told, in order on that connection, when the key changes,
//! and [`Copies::drop_keys`] runs before any later reply is handed out. A reply and an
//! invalidation of the same key can still cross: the reply is in the hands of its caller
//! while the invalidation is applied. So every copy carries the generation of its key's
//! stripe and the epoch it was read in ([`Ticket`], noted before its request was sent), and
//! is served only while both are unchanged: an invalidation bumps the generation (dropping
//! every copy read before it, including one being kept right now), a whole drop bumps the
//! epoch. Removing the copies from the map only frees their room.

use bytes::Bytes;
use moka::Expiry;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

/// Generations are kept per stripe of keys (a hash of the key picks the stripe): an
/// invalidation of one key also drops the copies of the other keys of its stripe.
const STRIPES: usize = 4096;

/// What a copy costs beyond its key and bytes (moka's entry, the `Arc`s, the expiry).
const ENTRY_OVERHEAD: usize = 96;

/// One copy: the bytes as Redis returned them, how long they may be served from here, and
/// the epoch and generation they were read in.
#[derive(Clone, Debug)]
struct Copy {
    bytes: Bytes,
    max_age: Duration,
    epoch: u64,
    generation: u64,
}

struct ByMaxAge;

impl Expiry<String, Copy> for ByMaxAge {
    fn expire_after_create(&self, _: &String, copy: &Copy, _: Instant) -> Option<Duration> {
        Some(copy.max_age)
    }

    fn expire_after_update(
        &self,
        _: &String,
        copy: &Copy,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(copy.max_age)
    }
}

/// The copies, bounded in bytes, and the generations that keep them coherent.
pub(crate) struct Copies {
    copies: moka::sync::Cache<String, Copy>,
    /// Bumped when a key of the stripe is invalidated.
    generations: Box<[AtomicU64]>,
    /// Bumped when every copy is dropped (a lost connection, a flush).
    epoch: AtomicU64,
}

impl std::fmt::Debug for Copies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Copies")
            .field("count", &self.copies.entry_count())
            .field("bytes", &self.copies.weighted_size())
            .finish_non_exhaustive()
    }
}

/// What a request noted before it was sent: the generations its copies must still have.
#[derive(Debug, Clone)]
pub(crate) struct Ticket {
    epoch: u64,
    generations: smallvec::SmallVec<[u64; 4]>,
}

impl Copies {
    /// Copies of at most `capacity` bytes in all (keys, bytes and bookkeeping).
    pub(crate) fn new(capacity: u64) -> Self {
        Copies {
            copies: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .weigher(|key: &String, copy: &Copy| {
                    let size = key.len() + copy.bytes.len() + ENTRY_OVERHEAD;
                    u32::try_from(size).unwrap_or(u32::MAX)
                })
                .expire_after(ByMaxAge)
                .build(),
            generations: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            epoch: AtomicU64::new(0),
        }
    }

    /// The copy of `key`, if there is one and nothing dropped it since it was read.
    pub(crate) fn get(&self, key: &str) -> Option<Bytes> {
        let copy = self.copies.get(key)?;
        (copy.epoch == self.epoch.load(SeqCst) && copy.generation == self.stripe(key).load(SeqCst))
            .then_some(copy.bytes)
    }

    /// Notes the generations of `keys` before their request is sent.
    pub(crate) fn ticket<'k>(&self, keys: impl IntoIterator<Item = &'k str>) -> Ticket {
        Ticket {
            epoch: self.epoch.load(SeqCst),
            generations: keys
                .into_iter()
                .map(|key| self.stripe(key).load(SeqCst))
                .collect(),
        }
    }

    /// Keeps `bytes` as the copy of the ticket's `index`th key, `key`, for at most `max_age`,
    /// unless an invalidation of it (or of everything) came since the ticket was taken.
    pub(crate) fn keep(
        &self,
        ticket: &Ticket,
        index: usize,
        key: &str,
        bytes: Bytes,
        max_age: Duration,
    ) {
        let Some(&generation) = ticket.generations.get(index) else {
            return;
        };
        if max_age.is_zero() || !self.same_generation(ticket, key, generation) {
            return;
        }
        // An invalidation from now on bumps the generation, and `get` stops serving it.
        let copy = Copy {
            bytes,
            max_age,
            epoch: ticket.epoch,
            generation,
        };
        self.copies.insert(key.to_owned(), copy);
    }

    /// Whether no invalidation of the ticket's `index`th key, `key`, (or of everything) came
    /// since the ticket was taken.
    pub(crate) fn unchanged(&self, ticket: &Ticket, index: usize, key: &str) -> bool {
        ticket
            .generations
            .get(index)
            .is_some_and(|&generation| self.same_generation(ticket, key, generation))
    }

    fn same_generation(&self, ticket: &Ticket, key: &str, generation: u64) -> bool {
        self.epoch.load(SeqCst) == ticket.epoch && self.stripe(key).load(SeqCst) == generation
    }

    /// Drops the copies of `keys` (Redis said they changed, or this process changed them).
    pub(crate) fn drop_keys<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        for key in keys {
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            // The bump is what drops it (and a reply in flight for it); removing frees room.
            self.stripe(key).fetch_add(1, SeqCst);
            self.copies.invalidate(key);
        }
    }

    /// Drops every copy: the connection that kept them coherent was lost, or Redis was
    /// flushed.
    pub(crate) fn drop_all(&self) {
        self.epoch.fetch_add(1, SeqCst);
        self.copies.invalidate_all();
    }

    /// The bytes the copies take now, as weighed (after pending evictions are applied).
    pub(crate) fn weighted_size(&self) -> u64 {
        self.copies.run_pending_tasks();
        self.copies.weighted_size()
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        use std::hash::Hasher;
        // Fixed keys: a key lands in the same stripe on every call.
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(key.as_bytes());
        // `STRIPES` is far below `u64::MAX`: the cast keeps the low bits, which is the point.
        #[allow(clippy::cast_possible_truncation)]
        let index = (hasher.finish() % STRIPES as u64) as usize;
        &self.generations[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_secs(60);

    #[test]
    fn a_copy_is_kept_and_served_until_its_key_is_invalidated() {
        let copies = Copies::new(1 << 20);
        let ticket = copies.ticket(["ns:a"]);
        copies.keep(&ticket, 0, "ns:a", Bytes::from_static(b"one"), AGE);
        assert_eq!(copies.get("ns:a").as_deref(), Some(&b"one"[..]));
        copies.drop_keys([&b"ns:a"[..]]);
        assert_eq!(copies.get("ns:a"), None);
    }

    #[test]
    fn a_reply_that_crossed_an_invalidation_is_not_kept() {
        let copies = Copies::new(1 << 20);
        let ticket = copies.ticket(["ns:a", "ns:b"]);
        // The invalidation of `a` is applied while the reply is on its way to its caller.
        copies.drop_keys([&b"ns:a"[..]]);
        copies.keep(&ticket, 0, "ns:a", Bytes::from_static(b"old"), AGE);
        copies.keep(&ticket, 1, "ns:b", Bytes::from_static(b"b"), AGE);
        assert_eq!(
            copies.get("ns:a"),
            None,
            "the invalidated key's reply is dropped"
        );
        assert!(copies.get("ns:b").is_some(), "another key's reply is kept");

        let ticket = copies.ticket(["ns:a"]);
        copies.drop_all();
        copies.keep(&ticket, 0, "ns:a", Bytes::from_static(b"old"), AGE);
        assert_eq!(
            copies.get("ns:a"),
            None,
            "nor one that crossed a whole drop"
        );
        assert_eq!(copies.get("ns:b"), None, "a whole drop drops everything");
    }

    #[test]
    fn copies_stay_within_their_byte_bound() {
        let capacity = 64 * 1024;
        let copies = Copies::new(capacity);
        for n in 0..1000 {
            let key = format!("ns:{n}");
            let ticket = copies.ticket([key.as_str()]);
            copies.keep(&ticket, 0, &key, Bytes::from(vec![7; 1000]), AGE);
        }
        assert!(
            copies.weighted_size() <= capacity,
            "{} bytes kept",
            copies.weighted_size()
        );
    }
}
