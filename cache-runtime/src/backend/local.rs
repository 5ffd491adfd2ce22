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
    generations: smallvec::SmallVec<[u64; 5]>,
}

/// The epoch copies are read in: it moves when every copy is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Epoch(u64);

impl Ticket {
    /// The epoch this ticket was taken in.
    pub(crate) fn epoch(&self) -> Epoch {
        Epoch(self.epoch)
    }

    /// Whether a copy read in `noted` was still current when this ticket was taken, as the
    /// ticket's `index`th key.
    pub(crate) fn admits(&self, index: usize, noted: Noted) -> bool {
        self.epoch == noted.epoch && self.generations.get(index) == Some(&noted.generation)
    }
}

/// The stripe of a key: which generation counter its invalidations bump.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stripe(usize);

/// The epoch and generation a copy was read in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Noted {
    epoch: u64,
    generation: u64,
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

    /// Where `key`'s generation is kept: computed once per key and read, then passed along.
    pub(crate) fn stripe_of(&self, key: &str) -> Stripe {
        use std::hash::Hasher;
        // Fixed keys: a key lands in the same stripe on every call.
        let mut hasher = std::hash::DefaultHasher::new();
        hasher.write(key.as_bytes());
        // `STRIPES` is far below `u64::MAX`: the cast keeps the low bits, which is the point.
        #[allow(clippy::cast_possible_truncation)]
        Stripe((hasher.finish() % STRIPES as u64) as usize)
    }

    /// The copy of `key` (in `stripe`), if there is one and nothing dropped it since it was
    /// read; with the epoch and generation it was read in.
    pub(crate) fn get(&self, key: &str, stripe: Stripe) -> Option<(Bytes, Noted)> {
        let copy = self.copies.get(key)?;
        let noted = Noted {
            epoch: copy.epoch,
            generation: copy.generation,
        };
        (copy.epoch == self.epoch.load(SeqCst) && copy.generation == self.generation(stripe))
            .then_some((copy.bytes, noted))
    }

    /// The current epoch.
    pub(crate) fn epoch(&self) -> Epoch {
        Epoch(self.epoch.load(SeqCst))
    }

    /// Notes the generations of the keys in `stripes` before their request is sent.
    pub(crate) fn ticket(&self, stripes: &[Stripe]) -> Ticket {
        Ticket {
            epoch: self.epoch.load(SeqCst),
            generations: stripes
                .iter()
                .map(|&stripe| self.generation(stripe))
                .collect(),
        }
    }

    /// Keeps `bytes` as the copy of the ticket's `index`th key, `key` (in `stripe`), for at
    /// most `max_age`, unless an invalidation of it (or of everything) came since the ticket
    /// was taken.
    pub(crate) fn keep(
        &self,
        ticket: &Ticket,
        index: usize,
        (key, stripe): (&str, Stripe),
        bytes: Bytes,
        max_age: Duration,
    ) {
        let Some(&generation) = ticket.generations.get(index) else {
            return;
        };
        if max_age.is_zero() || !self.unchanged(ticket, index, stripe) {
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

    /// Whether no invalidation of the ticket's `index`th key (in `stripe`), or of everything,
    /// came since the ticket was taken.
    pub(crate) fn unchanged(&self, ticket: &Ticket, index: usize, stripe: Stripe) -> bool {
        self.epoch.load(SeqCst) == ticket.epoch
            && ticket
                .generations
                .get(index)
                .is_some_and(|&generation| self.generation(stripe) == generation)
    }

    fn generation(&self, stripe: Stripe) -> u64 {
        self.generations[stripe.0].load(SeqCst)
    }

    /// Drops the copies of `keys` (Redis said they changed, or this process changed them).
    pub(crate) fn drop_keys<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        for key in keys {
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            // The bump is what drops it (and a reply in flight for it); removing frees room.
            self.generations[self.stripe_of(key).0].fetch_add(1, SeqCst);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_secs(60);

    fn ticket(copies: &Copies, keys: &[&str]) -> Ticket {
        let stripes: Vec<Stripe> = keys.iter().map(|key| copies.stripe_of(key)).collect();
        copies.ticket(&stripes)
    }

    fn keep(copies: &Copies, ticket: &Ticket, index: usize, key: &str, bytes: &'static [u8]) {
        let stripe = copies.stripe_of(key);
        copies.keep(ticket, index, (key, stripe), Bytes::from_static(bytes), AGE);
    }

    fn get(copies: &Copies, key: &str) -> Option<Bytes> {
        copies
            .get(key, copies.stripe_of(key))
            .map(|(bytes, _)| bytes)
    }

    #[test]
    fn a_copy_is_kept_and_served_until_its_key_is_invalidated() {
        let copies = Copies::new(1 << 20);
        let noted = ticket(&copies, &["ns:a"]);
        keep(&copies, &noted, 0, "ns:a", b"one");
        assert_eq!(get(&copies, "ns:a").as_deref(), Some(&b"one"[..]));
        copies.drop_keys([&b"ns:a"[..]]);
        assert_eq!(get(&copies, "ns:a"), None);
    }

    #[test]
    fn a_reply_that_crossed_an_invalidation_is_not_kept() {
        let copies = Copies::new(1 << 20);
        let noted = ticket(&copies, &["ns:a", "ns:b"]);
        // The invalidation of `a` is applied while the reply is on its way to its caller.
        copies.drop_keys([&b"ns:a"[..]]);
        keep(&copies, &noted, 0, "ns:a", b"old");
        keep(&copies, &noted, 1, "ns:b", b"b");
        assert_eq!(
            get(&copies, "ns:a"),
            None,
            "the invalidated key's reply is dropped"
        );
        assert!(
            get(&copies, "ns:b").is_some(),
            "another key's reply is kept"
        );

        let noted = ticket(&copies, &["ns:a"]);
        copies.drop_all();
        keep(&copies, &noted, 0, "ns:a", b"old");
        assert_eq!(
            get(&copies, "ns:a"),
            None,
            "nor one that crossed a whole drop"
        );
        assert_eq!(get(&copies, "ns:b"), None, "a whole drop drops everything");
    }

    #[test]
    fn a_copy_used_before_a_ticket_is_admitted_only_if_nothing_dropped_it_since() {
        let copies = Copies::new(1 << 20);
        keep(&copies, &ticket(&copies, &["ns:t"]), 0, "ns:t", b"token");
        let (_, noted) = copies.get("ns:t", copies.stripe_of("ns:t")).unwrap();
        assert!(ticket(&copies, &["ns:t"]).admits(0, noted));
        copies.drop_keys([&b"ns:t"[..]]);
        assert!(
            !ticket(&copies, &["ns:t"]).admits(0, noted),
            "dropped in between"
        );
    }

    #[test]
    fn copies_stay_within_their_byte_bound() {
        let capacity = 64 * 1024;
        let copies = Copies::new(capacity);
        for n in 0..1000 {
            let key = format!("ns:{n}");
            let noted = ticket(&copies, &[key.as_str()]);
            copies.keep(
                &noted,
                0,
                (&key, copies.stripe_of(&key)),
                Bytes::from(vec![7; 1000]),
                AGE,
            );
        }
        assert!(
            copies.weighted_size() <= capacity,
            "{} bytes kept",
            copies.weighted_size()
        );
    }
}
