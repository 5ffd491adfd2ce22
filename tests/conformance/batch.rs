//! Batch reads (`#[redis_cached_batch]`), on each backend: entries shared with the single-key reader, hits in one round trip, the loader
//! called once with exactly the misses, leases, and coalescing with single calls.

use crate::support::{Backend, Harness, Probe};
use redis_memo::{Cache, redis_cached, redis_cached_batch};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// The "database": each user's value is `id * 10 + version`; the loads are recorded.
#[derive(Default)]
pub struct Users {
    version: AtomicU64,
    loads: Mutex<Vec<Vec<u64>>>,
    /// Notified at each batch load.
    loaded: Notify,
    hold: Mutex<Option<(Arc<Notify>, Arc<Notify>)>>,
    /// Held by the next single-key load.
    hold_single: Mutex<Option<(Arc<Notify>, Arc<Notify>)>>,
}

impl Users {
    fn value(&self, id: u64) -> u64 {
        id * 10 + self.version.load(Ordering::SeqCst)
    }

    /// The batch loader: every id but the multiples of 7, which "do not exist".
    async fn load_many(&self, ids: Vec<u64>) -> Result<HashMap<u64, u64>, String> {
        let values = ids
            .iter()
            .filter(|id| *id % 7 != 0)
            .map(|id| (*id, self.value(*id)))
            .collect();
        let mut sorted = ids;
        sorted.sort_unstable();
        self.loads.lock().unwrap().push(sorted);
        self.loaded.notify_one();
        let hold = self.hold.lock().unwrap().take();
        if let Some((reached, release)) = hold {
            reached.notify_one();
            release.notified().await;
        }
        Ok(values)
    }

    /// The single-key load: `id`'s value, after the hold of [`Users::hold_next_single`].
    async fn load(&self, id: u64) -> u64 {
        let hold = self.hold_single.lock().unwrap().take();
        if let Some((reached, release)) = hold {
            reached.notify_one();
            release.notified().await;
        }
        self.value(id)
    }

    fn hold_next_single(&self) -> (Arc<Notify>, Arc<Notify>) {
        let pair = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        *self.hold_single.lock().unwrap() = Some(pair.clone());
        pair
    }

    fn loads(&self) -> Vec<Vec<u64>> {
        self.loads.lock().unwrap().clone()
    }

    /// The next load signals `reached` and waits for `release`.
    fn hold_next(&self) -> (Arc<Notify>, Arc<Notify>) {
        let pair = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        *self.hold.lock().unwrap() = Some(pair.clone());
        pair
    }
}

#[redis_cached(ttl = "10m", key = "buser:<team>:<id>", tags = ["team:<team>"], cache = cache)]
async fn user(
    id: u64,
    team: u32,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] users: &Users,
    #[cache(skip)] probe: &Probe,
) -> u64 {
    let _ = team;
    probe.ran();
    users.load(id).await
}

/// The batch loader of `user`: called with the ids whose entries missed.
#[redis_cached_batch(user(*id, team) for id in ids, cache = cache)]
async fn users(
    ids: &[u64],
    team: u32,
    cache: &Cache,
    db: &Users,
) -> Result<HashMap<u64, u64>, String> {
    db.load_many(ids.to_vec()).await
}

fn expected(db: &Users, ids: impl IntoIterator<Item = u64>) -> HashMap<u64, u64> {
    ids.into_iter()
        .filter(|id| id % 7 != 0)
        .map(|id| (id, db.value(id)))
        .collect()
}

pub async fn a_batch_reads_its_hits_at_once_and_loads_exactly_the_misses(backend: Backend) {
    let h = Harness::new(backend);
    let (db, probe) = (Users::default(), Probe::default());
    for id in 0..50 {
        user(id, 1, &h.cache, &db, &probe).await;
    }
    let ids: Vec<u64> = (0..100).collect();
    // The single-key reader stored every id under 50, the missing rows too.
    let mut all = expected(&db, 0..100);
    all.extend((0..50).map(|id| (id, db.value(id))));
    let got = users(&ids, 1, &h.cache, &db).await.unwrap();
    assert_eq!(got, all, "hits and loaded values, by id");
    assert_eq!(
        db.loads(),
        vec![(50..100).collect::<Vec<_>>()],
        "one load, the misses only"
    );

    // The single-key reader finds what the batch stored, but not the ids the load skipped.
    let runs = probe.runs();
    for id in 50..100 {
        assert_eq!(user(id, 1, &h.cache, &db, &probe).await, db.value(id));
    }
    let skipped = (50..100).filter(|id| id % 7 == 0).count() as u32;
    assert_eq!(
        probe.runs(),
        runs + skipped,
        "only the ids the load did not return ran"
    );

    // The single calls computed the rows the load skipped: every id is stored now.
    all.extend(
        (50..100)
            .filter(|id| id % 7 == 0)
            .map(|id| (id, db.value(id))),
    );

    // All hits: no load, and only MGET sent (on one server, one).
    let stored: Vec<u64> = all.keys().copied().collect();
    let before = h.command_calls().await;
    let got = users(&stored, 1, &h.cache, &db).await.unwrap();
    let after = h.command_calls().await;
    assert_eq!(got, all);
    assert_eq!(db.loads().len(), 1, "every entry was a hit");
    if let (Some(before), Some(after)) = (before, after) {
        let sent: u64 = after
            .iter()
            .map(|(name, n)| n - before.get(name).unwrap_or(&0))
            .sum();
        let mgets = after["mget"] - before.get("mget").unwrap_or(&0);
        assert!(
            mgets >= 1 && sent == mgets,
            "only MGET was sent: {sent} commands, {mgets} MGET"
        );
        if !h.on_cluster() {
            assert_eq!(mgets, 1);
        }
    }
}

pub async fn a_tag_invalidation_makes_a_batch_load_its_entries_again(backend: Backend) {
    let h = Harness::new(backend);
    let db = Users::default();
    // Rows the load returns (not multiples of 7), so that each batch is stored whole.
    let ids: Vec<u64> = (1..=20).filter(|id| id % 7 != 0).collect();
    users(&ids, 1, &h.cache, &db).await.unwrap();
    users(&ids, 2, &h.cache, &db).await.unwrap();
    assert_eq!(db.loads().len(), 2, "another team renders other entries");
    db.version.store(1, Ordering::SeqCst);
    assert!(h.cache.invalidate_tag("team:1").await.unwrap());
    let got = users(&ids, 1, &h.cache, &db).await.unwrap();
    assert_eq!(got, expected(&db, ids.iter().copied()), "the new values");
    assert_eq!(db.loads().len(), 3);
    // Team 2's entries were not invalidated: they still hold version 0.
    let got = users(&ids, 2, &h.cache, &db).await.unwrap();
    assert_eq!(got[&1], 10);
    assert_eq!(db.loads().len(), 3);
}

pub async fn an_invalidation_during_a_batch_load_stores_nothing_stale(backend: Backend) {
    let h = Harness::new(backend);
    let db = Users::default();
    let (reached, release) = db.hold_next();
    let ids = [1u64, 2, 3];
    let batch = users(&ids, 1, &h.cache, &db);
    let race = async {
        // The load has read version 0; the rows change and entry 2 is invalidated.
        reached.notified().await;
        db.version.store(1, Ordering::SeqCst);
        invalidate_user(2, 1, &h.cache).await.unwrap();
        release.notify_one();
    };
    let (got, ()) = tokio::join!(batch, race);
    assert_eq!(got.unwrap()[&2], 20, "the batch returns what it loaded");
    h.cache.writes_done().await;
    let probe = Probe::default();
    assert_eq!(
        user(2, 1, &h.cache, &db, &probe).await,
        21,
        "the value loaded before the invalidation was not stored"
    );
    assert_eq!(
        user(1, 1, &h.cache, &db, &probe).await,
        10,
        "the others were"
    );
    assert_eq!(probe.runs(), 1);
}

pub async fn a_batch_shares_computations_with_single_calls_of_its_keys(backend: Backend) {
    let h = Harness::new(backend);
    let (db, probe) = (Users::default(), Probe::default());
    // A single call of 5 is computing, held, when the batch of 4, 5 and 6 starts.
    let (reached, release) = db.hold_next_single();
    let single = user(5, 1, &h.cache, &db, &probe);
    let batch = async {
        reached.notified().await;
        let batch = users(&[4, 5, 6], 1, &h.cache, &db);
        let released = async {
            // The batch has loaded 4 and 6; it waits for the single call's 5.
            db.loaded.notified().await;
            release.notify_one();
        };
        tokio::join!(batch, released).0
    };
    let (single, batch) = tokio::join!(single, batch);
    assert_eq!(single, 50);
    assert_eq!(batch.unwrap(), HashMap::from([(4, 40), (5, 50), (6, 60)]));
    assert_eq!(db.loads(), vec![vec![4, 6]], "5 came from the single call");
    assert_eq!(probe.runs(), 1);
    assert!(h.cache.stats().coalesced >= 1);
}

pub async fn a_failed_batch_load_stores_nothing_and_frees_its_leases(backend: Backend) {
    let h = Harness::new(backend);
    let (db, probe) = (Users::default(), Probe::default());
    let items = vec![
        (1u64, user_cache_entry(&1, &1)),
        (2, user_cache_entry(&2, &1)),
    ];
    let failed = h
        .cache
        .memoize_batch(items, async |ids: &[u64]| {
            Err::<HashMap<u64, u64>, _>(format!("{} rows: down", ids.len()))
        })
        .await;
    assert_eq!(failed, Err("2 rows: down".to_string()));
    // The leases were given back: single calls compute and store at once.
    assert_eq!(user(1, 1, &h.cache, &db, &probe).await, 10);
    assert_eq!(user(1, 1, &h.cache, &db, &probe).await, 10);
    assert_eq!(probe.runs(), 1);
}

#[redis_cached(ttl = "10m", key = "membership:<org>:<user>", cache = cache)]
async fn membership(org: u32, user: u64, #[cache(skip)] cache: &Cache) -> String {
    format!("{org}/{user} single")
}

#[redis_cached_batch(membership(pair.0, pair.1) for pair in pairs, cache = cache)]
async fn memberships(
    pairs: &[(u32, u64)],
    cache: &Cache,
) -> Result<HashMap<(u32, u64), String>, String> {
    Ok(pairs
        .iter()
        .map(|(org, user)| ((*org, *user), format!("{org}/{user} batch")))
        .collect())
}

pub async fn a_reader_keyed_on_two_parameters_is_batched_by_pairs(backend: Backend) {
    let h = Harness::new(backend);
    assert_eq!(membership(1, 2, &h.cache).await, "1/2 single");
    let got = memberships(&[(1, 2), (1, 3), (2, 2)], &h.cache)
        .await
        .unwrap();
    assert_eq!(
        got,
        HashMap::from([
            ((1, 2), "1/2 single".to_string()),
            ((1, 3), "1/3 batch".to_string()),
            ((2, 2), "2/2 batch".to_string()),
        ])
    );
    h.cache.writes_done().await;
    assert_eq!(
        membership(2, 2, &h.cache).await,
        "2/2 batch",
        "stored for the reader"
    );
}

#[redis_cached(ttl = "10m", key = "locked:<id>", lock, cache = cache)]
async fn locked(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] db: &Users) -> u64 {
    db.load(id).await
}

#[redis_cached_batch(locked(*id) for id in ids, cache = cache)]
async fn locked_many(ids: &[u64], cache: &Cache, db: &Users) -> Result<HashMap<u64, u64>, String> {
    db.load_many(ids.to_vec()).await
}

pub async fn a_batch_never_waits_for_another_processs_lease(backend: Backend) {
    let h = Harness::new(backend);
    let other = h.another_process(|builder| builder);
    let db = Users::default();
    // The other process computes 2, held, under its lease.
    let (reached, release) = db.hold_next_single();
    let held = locked(2, &other, &db);
    let batch = async {
        reached.notified().await;
        let got = locked_many(&[1, 2], &h.cache, &db).await;
        // Released only once the batch has returned: a batch that waited for the lease
        // would have waited out `wait` first, and counted a lock wait.
        release.notify_one();
        got
    };
    let (held, got) = tokio::join!(held, batch);
    assert_eq!(held, 20);
    assert_eq!(got.unwrap(), HashMap::from([(1, 10), (2, 20)]));
    assert_eq!(h.cache.stats().lock_waits, 0, "{:?}", h.cache.stats());
    assert_eq!(
        db.loads(),
        vec![vec![1, 2]],
        "the busy element was loaded too"
    );
    other.writes_done().await;
    h.cache.writes_done().await;
    // 2 is the other process's to store; 1 the batch's.
    let probe_db = Users::default();
    assert_eq!(locked(1, &h.cache, &probe_db).await, 10);
    assert_eq!(locked(2, &h.cache, &probe_db).await, 20);
}
