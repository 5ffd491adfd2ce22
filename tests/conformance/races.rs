//! Every kind of invalidation racing a crowd of fills: 200 computations read version 1 and
//! hold their leases; the version becomes 2 and the invalidation starts while they finish and
//! fill, spread over its run. Once it has returned, no entry may still hold version 1: a
//! computation that began before an invalidation is never stored after it, whichever process
//! invalidates (here another cache, as another process would). On Redis these
//! races are real (SCAN in batches, scripts interleaving with fills); the in-memory store is
//! atomic, and must agree.

use crate::support::Harness;
use redis_memo::{Cache, redis_cache_evict, redis_cache_put, redis_cached};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

const COMPUTATIONS: u64 = 200;

/// The source of truth, and what holds the computations.
pub struct World {
    version: AtomicU64,
    started: AtomicUsize,
    started_changed: Notify,
    /// Open: a computation goes on once it takes a permit.
    gate: Semaphore,
}

impl World {
    fn new() -> Self {
        World {
            version: AtomicU64::new(1),
            started: AtomicUsize::new(0),
            started_changed: Notify::new(),
            gate: Semaphore::new(0),
        }
    }
}

#[redis_cached(ttl = "1m", key = "race:<id>", tags = ["group:<group>"], invalidate_all, cache = cache)]
async fn raced(
    id: u64,
    group: u32,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] world: &World,
) -> u64 {
    let seen = world.version.load(SeqCst);
    world.started.fetch_add(1, SeqCst);
    world.started_changed.notify_one();
    world.gate.acquire().await.unwrap().forget();
    seen
}

#[redis_cache_put(raced(id, group), cache = cache)]
async fn put_raced(id: u64, group: u32, cache: &Cache, world: &World) -> u64 {
    world.version.load(SeqCst)
}

#[redis_cache_evict(raced(id, group), cache = cache)]
async fn evict_raced(id: u64, group: u32, cache: &Cache) {}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Entry,
    /// `invalidate_<fn>_many`: all entries in one pipelined round trip.
    Entries,
    /// `invalidate_<fn>_by_<params>_many`.
    Tags,
    Tag,
    All,
    Pattern,
    Put,
    Evict,
}

async fn invalidate(kind: Kind, cache: Cache, world: Arc<World>) {
    match kind {
        Kind::Entry => {
            for id in 0..COMPUTATIONS {
                invalidate_raced(id, &cache).await.unwrap();
            }
        }
        Kind::Entries => {
            let removed = invalidate_raced_many(0..COMPUTATIONS, &cache)
                .await
                .unwrap();
            assert!(removed <= COMPUTATIONS);
        }
        Kind::Tag => {
            invalidate_raced_by_group(1, &cache).await.unwrap();
        }
        Kind::Tags => {
            invalidate_raced_by_group_many([1, 2, 3], &cache)
                .await
                .unwrap();
        }
        Kind::All => {
            invalidate_all_raced(&cache).await.unwrap();
        }
        Kind::Pattern => {
            cache.invalidate_matching("race:*").await.unwrap();
        }
        Kind::Put => {
            for id in 0..COMPUTATIONS {
                assert_eq!(put_raced(id, 1, &cache, &world).await, 2);
            }
        }
        Kind::Evict => {
            for id in 0..COMPUTATIONS {
                evict_raced(id, 1, &cache).await;
            }
        }
    }
}

async fn race(h: Harness, kind: Kind) {
    if matches!(kind, Kind::Pattern) && h.on_redis() {
        // Other keys of the namespace make the scan long (SCAN walks the whole keyspace),
        // so the fills land while it runs.
        let others: Vec<String> = (0..200_000).map(|n| format!("other:{n}")).collect();
        h.write_many_raw(&others, b"x", Duration::from_secs(60))
            .await;
    }
    let world = Arc::new(World::new());
    let computations: Vec<_> = (0..COMPUTATIONS)
        .map(|id| {
            let (cache, world) = (h.cache.clone(), Arc::clone(&world));
            tokio::spawn(async move { raced(id, 1, &cache, &world).await })
        })
        .collect();
    while world.started.load(SeqCst) < COMPUTATIONS as usize {
        world.started_changed.notified().await;
    }
    // Every computation has read version 1 and holds its lease.
    world.version.store(2, SeqCst);
    // From another process: the guarantee holds whoever invalidates.
    let other = h.another_process(|builder| builder);
    let invalidation = tokio::spawn(invalidate(kind, other, Arc::clone(&world)));
    // Spread the fills over the invalidation's run (pacing, not synchronization: the
    // assertion holds whatever the interleaving).
    for _ in 0..COMPUTATIONS {
        world.gate.add_permits(1);
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    invalidation.await.unwrap();
    for computation in computations {
        assert_eq!(
            computation.await.unwrap(),
            1,
            "each caller gets its own result"
        );
    }
    world.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    let mut survivors = Vec::new();
    for id in 0..COMPUTATIONS {
        if raced(id, 1, &h.cache, &world).await != 2 {
            survivors.push(id);
        }
    }
    assert!(
        survivors.is_empty(),
        "{kind:?}: {} of {COMPUTATIONS} stale entries survived the invalidation: {survivors:?}",
        survivors.len()
    );
}

pub async fn an_entry_invalidation_racing_fills(h: Harness) {
    race(h, Kind::Entry).await;
}

pub async fn a_batch_invalidation_racing_fills(h: Harness) {
    race(h, Kind::Entries).await;
}

pub async fn a_batch_tag_invalidation_racing_fills(h: Harness) {
    race(h, Kind::Tags).await;
}

pub async fn a_tag_invalidation_racing_fills(h: Harness) {
    race(h, Kind::Tag).await;
}

pub async fn invalidate_all_racing_fills(h: Harness) {
    race(h, Kind::All).await;
}

pub async fn a_pattern_invalidation_racing_fills(h: Harness) {
    race(h, Kind::Pattern).await;
}

pub async fn puts_racing_fills(h: Harness) {
    race(h, Kind::Put).await;
}

pub async fn evicts_racing_fills(h: Harness) {
    race(h, Kind::Evict).await;
}
