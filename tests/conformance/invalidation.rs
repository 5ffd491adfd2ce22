//! Invalidation at scale: tags (O(1) whatever the number of entries), `invalidate_all_<fn>`,
//! and the write-through / evict attributes that name their reader.

use crate::support::{Harness, Probe};
use redis_memo::{Cache, CacheError, redis_cache_evict, redis_cache_put, redis_cached};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

#[redis_cached(
    ttl = "1m",
    key = "member:<org>/<id>",
    tags = ["org:<org>", "members"],
    invalidate_all,
    cache = cache
)]
async fn member(
    id: u64,
    org: &str,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> String {
    probe.ran();
    format!("{id}@{org}")
}

#[redis_cached(ttl = "1m", key = "card:<org>/<id>", tags = ["org:<org>"], cache = cache)]
async fn member_card(
    id: u64,
    org: &str,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> String {
    probe.ran();
    format!("card {id}@{org}")
}

/// Calls `member` for ids `0..count` of `org`; returns how many ran the body.
async fn members(h: &Harness, org: &str, count: u64) -> u32 {
    let probe = Probe::default();
    for id in 0..count {
        assert_eq!(
            member(id, org, &h.cache, &probe).await,
            format!("{id}@{org}")
        );
    }
    probe.runs()
}

pub async fn a_tag_invalidates_its_entries_and_no_others(h: Harness) {
    for org in ["7", "8"] {
        assert_eq!(members(&h, org, 20).await, 20, "cold");
        assert_eq!(members(&h, org, 20).await, 0, "cached");
    }
    assert!(h.cache.invalidate_tag("org:7").await.unwrap());
    assert_eq!(
        members(&h, "7", 20).await,
        20,
        "every entry under org:7 misses"
    );
    assert_eq!(
        members(&h, "8", 20).await,
        0,
        "entries under org:8 still hit"
    );
    assert_eq!(members(&h, "7", 20).await, 0, "and org:7 is cached again");

    assert!(h.cache.invalidate_tag("members").await.unwrap());
    assert_eq!(
        members(&h, "7", 20).await,
        20,
        "a literal tag shared by all"
    );
    assert_eq!(members(&h, "8", 20).await, 20);

    for not_literal in ["org:a b", "org:*", "", "{members}"] {
        assert!(
            matches!(
                h.cache.invalidate_tag(not_literal).await,
                Err(CacheError::Config(_))
            ),
            "{not_literal:?} is refused: it could never match an escaped tag"
        );
    }
}

/// A hit of an entry with tags (here 2 and the function's own) reads the entry and every tag
/// token in one `MGET`: no other command. (On a cluster redis-rs splits it per slot, so the
/// count may be more than one; still nothing but `MGET`. A cluster's in-process tier reads
/// with one `GET` per key instead, pipelined on each node's tracking connection.)
pub async fn a_tagged_hit_is_one_mget(h: Harness) {
    // The tier's connections are made in the background from `build()`; one made during the
    // measured hit would add its own commands (`HELLO`, `CLIENT TRACKING`).
    h.after_raw_change().await;
    let probe = Probe::default();
    assert_eq!(member(1, "acme", &h.cache, &probe).await, "1@acme");
    let before = h.command_calls().await;
    assert_eq!(member(1, "acme", &h.cache, &probe).await, "1@acme");
    let after = h.command_calls().await;
    assert_eq!(probe.runs(), 1, "a hit");
    if let (Some(before), Some(after)) = (before, after) {
        let grown: Vec<(String, u64)> = after
            .into_iter()
            .filter_map(|(command, calls)| {
                let grown = calls - before.get(&command).copied().unwrap_or(0);
                (grown > 0).then_some((command, grown))
            })
            .collect();
        // With an in-process tier, the read that keeps copies asks Redis to track them
        // (`CLIENT CACHING yes`, in the same write).
        let tracking = |command: &str| h.local() && command == "client|caching";
        let read = |command: &str| {
            command == "mget" || (h.local() && h.cluster.is_some() && command == "get")
        };
        assert!(
            !grown.is_empty()
                && grown
                    .iter()
                    .all(|(command, _)| read(command) || tracking(command)),
            "a tagged hit sent {grown:?}"
        );
        let grown: Vec<(String, u64)> = grown
            .into_iter()
            .filter(|(command, _)| !tracking(command))
            .collect();
        if h.server.is_some() {
            assert_eq!(
                grown,
                vec![("mget".to_owned(), 1)],
                "one command on one server"
            );
        }
    }
    if h.local() {
        // The copies of the entry and its tags answer alone now.
        let before = h.command_calls().await.unwrap();
        assert_eq!(member(1, "acme", &h.cache, &probe).await, "1@acme");
        assert_eq!(
            h.command_calls().await.unwrap(),
            before,
            "no command at all"
        );
        assert_eq!(probe.runs(), 1);
    }
}

pub async fn typed_tag_helpers_escape_their_arguments(h: Harness) {
    let orgs = ["acme corp*", "acme corp", "acme%20corp", "a:b", "{x}"];
    for org in orgs {
        assert_eq!(members(&h, org, 5).await, 5);
    }
    assert!(
        invalidate_member_by_org("acme corp*", &h.cache)
            .await
            .unwrap()
    );
    assert_eq!(members(&h, "acme corp*", 5).await, 5, "its entries miss");
    for org in &orgs[1..] {
        assert_eq!(members(&h, org, 5).await, 0, "{org:?} was not touched");
    }
    assert!(invalidate_member_by_org("{x}", &h.cache).await.unwrap());
    assert_eq!(members(&h, "{x}", 5).await, 5);
    assert!(
        !invalidate_member_by_org("nobody", &h.cache).await.unwrap(),
        "a tag nothing was computed under had no version"
    );
}

#[redis_cached(ttl = "1h", key = "row:<id>", tags = ["table:<table>"], cache = cache)]
async fn row(
    id: u64,
    table: &str,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> String {
    probe.ran();
    table.to_owned()
}

pub async fn one_command_invalidates_a_hundred_thousand_entries(h: Harness) {
    const ENTRIES: u64 = 100_000;
    let probe = Probe::default();
    assert_eq!(row(0, "big", &h.cache, &probe).await, "big");
    // The value does not depend on the id: the first entry's bytes (with the tag tokens they
    // were computed under) are valid for every row, so they are copied rather than computed.
    let bytes = h.read_raw(&row_cache_key(0)).await.expect("stored");
    let keys: Vec<String> = (1..ENTRIES).map(row_cache_key).collect();
    h.write_many_raw(&keys, &bytes, Duration::from_secs(3600))
        .await;
    let sample: Vec<u64> = (0..ENTRIES).step_by(997).collect();
    for &id in &sample {
        assert_eq!(row(id, "big", &h.cache, &probe).await, "big");
    }
    assert_eq!(
        probe.runs(),
        1,
        "all {} sampled entries are hits",
        sample.len()
    );

    let before = h.command_calls().await;
    assert!(invalidate_row_by_table("big", &h.cache).await.unwrap());
    let after = h.command_calls().await;
    if let (Some(before), Some(after)) = (before, after) {
        let mut delta: HashMap<String, u64> = HashMap::new();
        for (command, calls) in after {
            let grown = calls - before.get(&command).copied().unwrap_or(0);
            if grown > 0 {
                delta.insert(command, grown);
            }
        }
        assert_eq!(
            delta,
            HashMap::from([("del".to_owned(), 1)]),
            "one DEL invalidates {ENTRIES} entries"
        );
    }
    for &id in &sample {
        assert_eq!(row(id, "big", &h.cache, &probe).await, "big");
    }
    assert_eq!(
        probe.runs(),
        1 + sample.len() as u32,
        "every sampled entry misses"
    );
}

pub async fn deleting_a_tag_version_by_hand_invalidates_its_entries(h: Harness) {
    assert_eq!(members(&h, "7", 10).await, 10);
    assert_eq!(members(&h, "8", 10).await, 10);
    h.delete_tag_raw("org:7").await;
    assert_eq!(
        members(&h, "7", 10).await,
        10,
        "a lost version invalidates, never resurrects"
    );
    assert_eq!(members(&h, "8", 10).await, 0);
    assert_eq!(members(&h, "7", 10).await, 0, "a new version was drawn");
}

pub async fn invalidate_all_misses_every_entry_of_one_function_only(h: Harness) {
    let (probe, cards) = (Probe::default(), Probe::default());
    for round in 0..2 {
        for id in 0..10 {
            member(id, "7", &h.cache, &probe).await;
            member_card(id, "7", &h.cache, &cards).await;
        }
        assert_eq!((probe.runs(), cards.runs()), (10, 10), "round {round}");
    }
    assert!(invalidate_all_member(&h.cache).await.unwrap());
    for id in 0..10 {
        member(id, "7", &h.cache, &probe).await;
        member_card(id, "7", &h.cache, &cards).await;
    }
    assert_eq!(probe.runs(), 20, "every entry of `member` misses");
    assert_eq!(cards.runs(), 10, "`member_card` (same tag) is untouched");
}

/// A store that counts its loads and can hold one between reading and returning.
#[derive(Default)]
struct Db {
    accounts: Mutex<HashMap<u64, Account>>,
    loads: AtomicU32,
    /// Fail the next write.
    fail_writes: std::sync::atomic::AtomicBool,
    /// Signals after a load read, then waits.
    hold: Mutex<Option<(Arc<Notify>, Arc<Notify>)>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Account {
    id: u64,
    org: u32,
    name: String,
}

impl Db {
    fn with(accounts: &[(u64, u32, &str)]) -> Db {
        let db = Db::default();
        for &(id, org, name) in accounts {
            db.write(account(id, org, name)).unwrap();
        }
        db
    }

    async fn load(&self, id: u64) -> Result<Account, String> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let found = self.accounts.lock().unwrap().get(&id).cloned();
        let hold = self.hold.lock().unwrap().take();
        if let Some((read, release)) = hold {
            read.notify_one();
            release.notified().await;
        }
        found.ok_or_else(|| format!("no account {id}"))
    }

    fn write(&self, account: Account) -> Result<Account, String> {
        if self.fail_writes.swap(false, Ordering::SeqCst) {
            return Err("the database refused the write".into());
        }
        self.accounts
            .lock()
            .unwrap()
            .insert(account.id, account.clone());
        Ok(account)
    }

    fn remove(&self, id: u64) -> Result<(), String> {
        if self.fail_writes.swap(false, Ordering::SeqCst) {
            return Err("the database refused the delete".into());
        }
        self.accounts.lock().unwrap().remove(&id);
        Ok(())
    }

    fn loads(&self) -> u32 {
        self.loads.load(Ordering::SeqCst)
    }

    /// Makes the next load hold after reading; returns (read, release).
    fn hold_next_load(&self) -> (Arc<Notify>, Arc<Notify>) {
        let pair = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        *self.hold.lock().unwrap() = Some(pair.clone());
        pair
    }
}

fn account(id: u64, org: u32, name: &str) -> Account {
    Account {
        id,
        org,
        name: name.into(),
    }
}

#[redis_cached(ttl = "1m", key = "account:<id>", tags = ["org:<org>"], invalidate_all, cache = cache)]
async fn get_account(
    id: u64,
    org: u32,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] db: &Db,
) -> Result<Account, String> {
    db.load(id).await
}

#[redis_cache_put(get_account(account.id, account.org), cache = cache)]
async fn update_account(account: Account, cache: &Cache, db: &Db) -> Result<Account, String> {
    db.write(account)
}

#[redis_cache_put(get_account(id, org), value = renamed, cache = cache)]
async fn rename_account(
    id: u64,
    org: u32,
    renamed: Account,
    cache: &Cache,
    db: &Db,
) -> Result<(), String> {
    db.write(renamed.clone()).map(drop)
}

#[redis_cache_evict(get_account(id, org), cache = cache)]
async fn delete_account(id: u64, org: u32, cache: &Cache, db: &Db) -> Result<(), String> {
    db.remove(id)
}

pub async fn put_stores_the_new_value_only_when_the_writer_succeeds(h: Harness) {
    let db = Db::with(&[(1, 7, "ada")]);
    assert_eq!(get_account(1, 7, &h.cache, &db).await.unwrap().name, "ada");
    let renamed = account(1, 7, "ada lovelace");
    assert_eq!(
        update_account(renamed.clone(), &h.cache, &db).await,
        Ok(renamed.clone())
    );
    assert_eq!(get_account(1, 7, &h.cache, &db).await, Ok(renamed.clone()));
    assert_eq!(db.loads(), 1, "served from the put, the body did not run");

    db.fail_writes.store(true, Ordering::SeqCst);
    assert!(
        update_account(account(1, 7, "refused"), &h.cache, &db)
            .await
            .is_err()
    );
    assert_eq!(
        get_account(1, 7, &h.cache, &db).await,
        Ok(renamed),
        "a failed writer changes nothing"
    );
    assert_eq!(db.loads(), 1);

    assert!(h.cache.invalidate_tag("org:7").await.unwrap());
    get_account(1, 7, &h.cache, &db).await.unwrap();
    assert_eq!(db.loads(), 2, "a put entry records its tags like a fill");
}

pub async fn put_with_a_value_expression(h: Harness) {
    let db = Db::with(&[(2, 7, "grace")]);
    get_account(2, 7, &h.cache, &db).await.unwrap();
    rename_account(2, 7, account(2, 7, "grace hopper"), &h.cache, &db)
        .await
        .unwrap();
    assert_eq!(
        get_account(2, 7, &h.cache, &db).await.unwrap().name,
        "grace hopper"
    );
    assert_eq!(db.loads(), 1);
}

pub async fn put_defeats_a_computation_in_flight(h: Harness) {
    let db = Arc::new(Db::with(&[(1, 7, "old")]));
    let (read, release) = db.hold_next_load();
    let computation = tokio::spawn({
        let (cache, db) = (h.cache.clone(), Arc::clone(&db));
        async move { get_account(1, 7, &cache, &db).await }
    });
    read.notified().await; // it read "old" and computes
    update_account(account(1, 7, "new"), &h.cache, &db)
        .await
        .unwrap();
    release.notify_one();
    assert_eq!(
        computation.await.unwrap().unwrap().name,
        "old",
        "its own result"
    );
    assert_eq!(
        get_account(1, 7, &h.cache, &db).await.unwrap().name,
        "new",
        "the older computation could not store over the put"
    );
    assert_eq!(db.loads(), 1);
    h.cache.writes_done().await;
    assert_eq!(h.cache.stats().rejected_fills, 1);
}

pub async fn evict_removes_the_entry_and_only_it_after_success(h: Harness) {
    let db = Db::with(&[(1, 7, "ada"), (2, 7, "grace")]);
    get_account(1, 7, &h.cache, &db).await.unwrap();
    get_account(2, 7, &h.cache, &db).await.unwrap();
    assert_eq!(db.loads(), 2);

    db.fail_writes.store(true, Ordering::SeqCst);
    assert!(delete_account(1, 7, &h.cache, &db).await.is_err());
    get_account(1, 7, &h.cache, &db).await.unwrap();
    assert_eq!(db.loads(), 2, "a failed writer evicts nothing");

    delete_account(1, 7, &h.cache, &db).await.unwrap();
    assert_eq!(
        get_account(1, 7, &h.cache, &db).await,
        Err("no account 1".into()),
        "the entry is gone"
    );
    get_account(2, 7, &h.cache, &db).await.unwrap();
    assert_eq!(db.loads(), 3, "and only it");
}

pub async fn evict_defeats_a_computation_in_flight(h: Harness) {
    let db = Arc::new(Db::with(&[(1, 7, "ada")]));
    let (read, release) = db.hold_next_load();
    let computation = tokio::spawn({
        let (cache, db) = (h.cache.clone(), Arc::clone(&db));
        async move { get_account(1, 7, &cache, &db).await }
    });
    read.notified().await;
    delete_account(1, 7, &h.cache, &db).await.unwrap();
    release.notify_one();
    assert!(
        computation.await.unwrap().is_ok(),
        "it read before the delete"
    );
    assert_eq!(
        get_account(1, 7, &h.cache, &db).await,
        Err("no account 1".into()),
        "its value was not stored after the evict"
    );
}

pub async fn a_tag_invalidated_during_a_computation_makes_its_fill_a_miss(h: Harness) {
    let db = Arc::new(Db::with(&[(1, 7, "old")]));
    let (read, release) = db.hold_next_load();
    let computation = tokio::spawn({
        let (cache, db) = (h.cache.clone(), Arc::clone(&db));
        async move { get_account(1, 7, &cache, &db).await }
    });
    read.notified().await;
    db.write(account(1, 7, "new")).unwrap();
    invalidate_get_account_by_org(7, &h.cache).await.unwrap();
    release.notify_one();
    assert_eq!(computation.await.unwrap().unwrap().name, "old");
    assert_eq!(
        get_account(1, 7, &h.cache, &db).await.unwrap().name,
        "new",
        "the value stored under the old tag version is a miss"
    );
    assert_eq!(get_account(1, 7, &h.cache, &db).await.unwrap().name, "new");
    assert_eq!(db.loads(), 2);
}

pub async fn a_caller_after_a_tag_invalidation_never_joins_an_older_computation(h: Harness) {
    let db = Arc::new(Db::with(&[(1, 7, "old")]));
    // A first call stores a tag version, so the held computation reads one.
    get_account(5, 7, &h.cache, &db).await.ok();
    joins_no_computation_from_before_an_invalidation(&h, &db).await;
}

pub async fn a_caller_after_invalidating_a_tag_its_leader_created_never_joins(h: Harness) {
    // No tag version yet: the held computation creates it, and the invalidation deletes it,
    // so the later caller reads no version at all, as the leader itself did.
    let db = Arc::new(Db::with(&[(1, 7, "old")]));
    joins_no_computation_from_before_an_invalidation(&h, &db).await;
}

async fn joins_no_computation_from_before_an_invalidation(h: &Harness, db: &Arc<Db>) {
    let (read, release) = db.hold_next_load();
    let computation = tokio::spawn({
        let (cache, db) = (h.cache.clone(), Arc::clone(db));
        async move { get_account(1, 7, &cache, &db).await }
    });
    read.notified().await;
    db.write(account(1, 7, "new")).unwrap();
    invalidate_get_account_by_org(7, &h.cache).await.unwrap();
    // Still held: joining it would hand this caller "old", after a wait that only the
    // release below ends (bounded, so a regression fails instead of hanging).
    let later = tokio::time::timeout(Duration::from_secs(20), get_account(1, 7, &h.cache, db))
        .await
        .expect("the later caller waited for the held computation");
    assert_eq!(
        later.unwrap().name,
        "new",
        "a call that starts after the invalidation computes anew"
    );
    release.notify_one();
    assert_eq!(computation.await.unwrap().unwrap().name, "old");
    assert_eq!(get_account(1, 7, &h.cache, db).await.unwrap().name, "new");
}

#[redis_cache_evict(tags = ["org:<org>"], cache = cache)]
async fn reorganize(org: u32, cache: &Cache) -> Result<(), String> {
    let _ = org;
    Ok(())
}

#[redis_cache_evict(all_of = get_account, before, cache = cache)]
async fn reset_accounts(cache: &Cache) -> Result<(), String> {
    Err("the reset failed half way".into())
}

pub async fn evict_tags_all_of_and_before(h: Harness) {
    let db = Db::with(&[(1, 7, "ada"), (2, 8, "grace")]);
    let load_both = || async {
        get_account(1, 7, &h.cache, &db).await.unwrap();
        get_account(2, 8, &h.cache, &db).await.unwrap();
    };
    load_both().await;
    load_both().await;
    assert_eq!(db.loads(), 2);
    reorganize(7, &h.cache).await.unwrap();
    load_both().await;
    assert_eq!(db.loads(), 3, "org 7 only");
    assert!(
        reset_accounts(&h.cache).await.is_err(),
        "the writer's own error"
    );
    load_both().await;
    assert_eq!(db.loads(), 5, "`before` evicted all of get_account first");
}

/// Holds a writer's body at one point until the test opens it.
#[derive(Default)]
struct Gate {
    reached: Notify,
    open: Notify,
}

impl Gate {
    async fn pass(&self) {
        self.reached.notify_one();
        self.open.notified().await;
    }
}

/// Writes the database first, then waits at the gate before returning what it wrote.
#[redis_cache_put(get_account(account.id, account.org), cache = cache)]
async fn update_account_slowly(
    account: Account,
    cache: &Cache,
    db: &Db,
    gate: &Gate,
) -> Result<Account, String> {
    let written = db.write(account);
    gate.pass().await;
    written
}

/// Caches account 1 ("old"), then starts `update_account_slowly` to "new" and returns once
/// its body wrote the database and waits at the gate: the put is in progress.
async fn a_put_held_in_its_body(
    h: &Harness,
    db: &Arc<Db>,
) -> (tokio::task::JoinHandle<Result<Account, String>>, Arc<Gate>) {
    get_account(1, 7, &h.cache, db).await.unwrap();
    let gate = Arc::new(Gate::default());
    let put = tokio::spawn({
        let (cache, db, gate) = (h.cache.clone(), Arc::clone(db), Arc::clone(&gate));
        async move { update_account_slowly(account(1, 7, "new"), &cache, &db, &gate).await }
    });
    gate.reached.notified().await;
    (put, gate)
}

pub async fn a_tag_invalidated_while_a_put_runs_makes_the_put_entry_a_miss(h: Harness) {
    let db = Arc::new(Db::with(&[(1, 7, "old")]));
    let (put, gate) = a_put_held_in_its_body(&h, &db).await;
    // Whatever the tag stands for changed while the writer ran: its value may embed the old.
    invalidate_get_account_by_org(7, &h.cache).await.unwrap();
    gate.open.notify_one();
    assert_eq!(put.await.unwrap().unwrap().name, "new");
    get_account(1, 7, &h.cache, &db).await.unwrap();
    assert_eq!(
        db.loads(),
        2,
        "the put recorded the tag's version from before its body: a miss"
    );
}

pub async fn an_evict_while_a_put_runs_leaves_no_entry(h: Harness) {
    let db = Arc::new(Db::with(&[(1, 7, "old")]));
    let (put, gate) = a_put_held_in_its_body(&h, &db).await;
    // The delete lands in the database after the update, and its eviction before the put.
    delete_account(1, 7, &h.cache, &db).await.unwrap();
    gate.open.notify_one();
    assert_eq!(put.await.unwrap().unwrap().name, "new");
    assert_eq!(
        get_account(1, 7, &h.cache, &db).await,
        Err("no account 1".into()),
        "the put that lost its lease to the eviction stored nothing"
    );
}

#[redis_cached(ttl = "1m", key = "nickname:<id>", cache = cache)]
async fn nickname(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] names: &Mutex<HashMap<u64, String>>,
    #[cache(skip)] probe: &Probe,
) -> Option<String> {
    probe.ran();
    names.lock().unwrap().get(&id).cloned()
}

#[redis_cache_put(nickname(id), cache = cache)]
async fn set_nickname(
    id: u64,
    name: Option<String>,
    cache: &Cache,
    names: &Mutex<HashMap<u64, String>>,
) -> Option<String> {
    let mut names = names.lock().unwrap();
    match &name {
        Some(name) => names.insert(id, name.clone()),
        None => names.remove(&id),
    };
    name
}

pub async fn put_to_an_untagged_reader_and_a_put_of_none(h: Harness) {
    let (names, probe) = (Mutex::new(HashMap::new()), Probe::default());
    assert_eq!(nickname(1, &h.cache, &names, &probe).await, None);
    set_nickname(1, Some("ada".into()), &h.cache, &names).await;
    assert_eq!(
        nickname(1, &h.cache, &names, &probe).await.as_deref(),
        Some("ada")
    );
    assert_eq!(probe.runs(), 1, "served from the put");

    // The reader never stores `None` (no `cache_none`): the put removes the entry instead.
    set_nickname(1, None, &h.cache, &names).await;
    assert_eq!(nickname(1, &h.cache, &names, &probe).await, None);
    assert_eq!(nickname(1, &h.cache, &names, &probe).await, None);
    assert_eq!(probe.runs(), 3, "no entry: each call asks the source");
}

/// Evicts before its body and, as it succeeds, again after it.
#[redis_cache_evict(get_account(id, org), before, cache = cache)]
async fn delete_account_slowly(
    id: u64,
    org: u32,
    cache: &Cache,
    db: &Db,
    gate: &Gate,
) -> Result<(), String> {
    gate.pass().await;
    db.remove(id)
}

pub async fn before_evicts_again_once_the_body_succeeded(h: Harness) {
    let db = Arc::new(Db::with(&[(1, 7, "ada")]));
    get_account(1, 7, &h.cache, &db).await.unwrap();
    let gate = Arc::new(Gate::default());
    let delete = tokio::spawn({
        let (cache, db, gate) = (h.cache.clone(), Arc::clone(&db), Arc::clone(&gate));
        async move { delete_account_slowly(1, 7, &cache, &db, &gate).await }
    });
    gate.reached.notified().await;
    assert_eq!(db.loads(), 1);
    // Evicted before the body: a reader meanwhile stores the row the body is about to delete.
    get_account(1, 7, &h.cache, &db).await.unwrap();
    assert_eq!(db.loads(), 2);
    gate.open.notify_one();
    delete.await.unwrap().unwrap();
    assert_eq!(
        get_account(1, 7, &h.cache, &db).await,
        Err("no account 1".into()),
        "the value stored during the body was evicted after it"
    );
}

#[redis_cached(ttl = "1m", key = "profile:<id>", lock(wait = "20s", lease = "30s"), cache = cache)]
async fn profile(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] db: &Db,
) -> Result<Account, String> {
    db.load(id).await
}

/// Reads the entry it is about to write, inside its body, as read-modify-write code does.
#[redis_cache_put(profile(id), cache = cache)]
async fn rename_profile(id: u64, name: &str, cache: &Cache, db: &Db) -> Result<Account, String> {
    let mut account = profile(id, cache, db).await?;
    account.name = name.to_owned();
    db.write(account)
}

pub async fn a_writer_reading_its_own_entry_with_lock_does_not_wait_for_itself(h: Harness) {
    let db = Db::with(&[(1, 7, "ada")]);
    // Bounded far below the reader's 20 s wait, so waiting for itself fails the test.
    let renamed = tokio::time::timeout(
        Duration::from_secs(10),
        rename_profile(1, "ada lovelace", &h.cache, &db),
    )
    .await
    .expect("the writer waited for its own lease");
    assert_eq!(renamed.unwrap().name, "ada lovelace");
    assert_eq!(
        profile(1, &h.cache, &db).await.unwrap().name,
        "ada lovelace"
    );
    assert_eq!(db.loads(), 1, "the put's value is served");
}

#[redis_cached(ttl = "1m", key = "label:<name>", cache = cache)]
async fn label<T: redis_memo::KeyPart + Sync + std::fmt::Display>(
    name: T,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> String {
    probe.ran();
    format!("label {name}")
}

#[redis_cache_put(label(name), value = text, cache = cache)]
async fn relabel(name: &str, text: String, cache: &Cache) {
    let _ = name;
}

pub async fn a_put_to_a_generic_reader_is_read_by_the_same_instantiation(h: Harness) {
    let probe = Probe::default();
    relabel("a", "custom".into(), &h.cache).await;
    assert_eq!(label("a", &h.cache, &probe).await, "custom");
    assert_eq!(
        probe.runs(),
        0,
        "the reader's `&str` instantiation reads the put entry"
    );
    assert_eq!(label(String::from("a"), &h.cache, &probe).await, "label a");
    assert_eq!(
        probe.runs(),
        1,
        "another instantiation has entries of its own"
    );
}

/// The key's `id` alone names the entry; `org` only tags it. The first run for org 1 holds.
#[redis_cached(ttl = "1m", key = "seat:<id>", tags = ["org:<org>"], cache = cache)]
async fn seat(
    id: u64,
    org: u32,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] held: &(Notify, Notify),
) -> String {
    if org == 1 {
        held.0.notify_one();
        held.1.notified().await;
    }
    format!("{id}@{org}")
}

pub async fn a_caller_never_joins_a_computation_under_another_tag_value(h: Harness) {
    let held = Arc::new((Notify::new(), Notify::new()));
    let leader = tokio::spawn({
        let (cache, held) = (h.cache.clone(), Arc::clone(&held));
        async move { seat(1, 1, &cache, &held).await }
    });
    held.0.notified().await;
    // Same key, another tag value (another tenant): its read would reject an entry computed
    // under org 1's tag, so it must not take that computation's value in process either.
    let other = tokio::time::timeout(Duration::from_secs(10), seat(1, 2, &h.cache, &held))
        .await
        .expect("it waited for the computation of another tag value");
    assert_eq!(other, "1@2");
    held.1.notify_one();
    assert_eq!(leader.await.unwrap(), "1@1");
}

pub async fn many_entries_and_tags_are_invalidated_in_one_call(h: Harness) {
    let probe = Probe::default();
    let orgs = ["acme", "initech"];
    for org in orgs {
        for id in 0..100 {
            member(id, org, &h.cache, &probe).await;
            member_card(id, org, &h.cache, &probe).await;
        }
    }
    assert_eq!(probe.runs(), 400);
    // Deleting the acme org: its 100 members of each function, named by their arguments.
    let acme: Vec<(u64, &str)> = (0..100).map(|id| (id, "acme")).collect();
    assert_eq!(
        invalidate_member_many(acme.clone(), &h.cache)
            .await
            .unwrap(),
        100
    );
    assert_eq!(
        invalidate_member_card_many(acme, &h.cache).await.unwrap(),
        100
    );
    assert_eq!(
        invalidate_member_many([(0, "acme")], &h.cache)
            .await
            .unwrap(),
        0,
        "already gone"
    );
    for id in [0, 50, 99] {
        member(id, "acme", &h.cache, &probe).await;
        member(id, "initech", &h.cache, &probe).await;
    }
    assert_eq!(
        probe.runs(),
        403,
        "acme's entries recomputed, initech's still there"
    );

    // Tags of many argument sets at once.
    assert_eq!(
        invalidate_member_by_org_many(["initech", "nobody"], &h.cache)
            .await
            .unwrap(),
        1,
        "one of the two tags had entries"
    );
    member(1, "initech", &h.cache, &probe).await;
    assert_eq!(probe.runs(), 404);
}

/// A put and an evict on one writer: the moved account's entry is written, and its old org's
/// entries are invalidated.
#[redis_cache_put(get_account(account.id, account.org), cache = cache)]
#[redis_cache_evict(tags = ["org:<old_org>"], cache = cache)]
async fn move_account(
    account: Account,
    old_org: u32,
    cache: &Cache,
    db: &Db,
) -> Result<Account, String> {
    let _ = old_org;
    db.write(account)
}

pub async fn a_put_and_an_evict_stack_on_one_writer(h: Harness) {
    let db = Db::with(&[(1, 7, "ada"), (2, 7, "grace")]);
    get_account(1, 7, &h.cache, &db).await.unwrap();
    get_account(2, 7, &h.cache, &db).await.unwrap();
    assert_eq!(db.loads(), 2);
    let moved = account(1, 8, "ada");
    assert_eq!(
        move_account(moved.clone(), 7, &h.cache, &db).await,
        Ok(moved.clone())
    );
    assert_eq!(get_account(1, 8, &h.cache, &db).await, Ok(moved), "put");
    assert_eq!(db.loads(), 2, "served from the put");
    get_account(2, 7, &h.cache, &db).await.unwrap();
    assert_eq!(db.loads(), 3, "the old org's tag was invalidated");
}

impl Db {
    /// Renames an account known only by id: its org is known from the row written.
    fn rename(&self, id: u64, name: &str) -> Result<Account, String> {
        let mut account = self
            .accounts
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .ok_or_else(|| format!("no account {id}"))?;
        account.name = name.into();
        self.write(account)
    }
}

/// The reader's arguments come from the result: the org is only known once the row is read.
#[redis_cache_put(get_account(renamed.id, renamed.org), result = renamed, cache = cache)]
async fn rename_in_place(id: u64, name: &str, cache: &Cache, db: &Db) -> Result<Account, String> {
    db.rename(id, name)
}

#[redis_cache_evict(get_account(id, renamed.org), tags = ["org:<renamed.org>"], result = renamed, cache = cache)]
async fn rename_and_evict(id: u64, name: &str, cache: &Cache, db: &Db) -> Result<Account, String> {
    db.rename(id, name)
}

pub async fn writers_can_name_entries_by_their_result(h: Harness) {
    let db = Db::with(&[(1, 7, "ada"), (2, 7, "grace"), (3, 9, "edsger")]);
    for (id, org) in [(1, 7), (2, 7), (3, 9)] {
        get_account(id, org, &h.cache, &db).await.unwrap();
    }
    assert_eq!(db.loads(), 3);

    let renamed = rename_in_place(1, "ada lovelace", &h.cache, &db)
        .await
        .unwrap();
    assert_eq!(renamed.org, 7);
    assert_eq!(
        get_account(1, 7, &h.cache, &db).await,
        Ok(renamed),
        "put by its result"
    );
    assert_eq!(db.loads(), 3, "served from the put");

    rename_and_evict(3, "dijkstra", &h.cache, &db)
        .await
        .unwrap();
    assert_eq!(
        get_account(3, 9, &h.cache, &db).await.unwrap().name,
        "dijkstra"
    );
    assert_eq!(db.loads(), 4, "evicted by its result, then loaded again");
    get_account(2, 7, &h.cache, &db).await.unwrap();
    assert_eq!(db.loads(), 4, "another org's entries stay");

    db.fail_writes.store(true, Ordering::SeqCst);
    assert!(rename_and_evict(2, "hopper", &h.cache, &db).await.is_err());
    get_account(2, 7, &h.cache, &db).await.unwrap();
    assert_eq!(
        db.loads(),
        4,
        "a failed writer has no result, and evicts nothing"
    );
}

#[redis_cache_put(get_account(account.id, account.org), cache = cache)]
#[redis_cache_evict(get_account(account.id, account.org), cache = cache)]
async fn put_under_evict(account: Account, cache: &Cache, db: &Db) -> Result<Account, String> {
    db.write(account)
}

#[redis_cache_evict(get_account(account.id, account.org), cache = cache)]
#[redis_cache_put(get_account(account.id, account.org), cache = cache)]
async fn evict_under_put(account: Account, cache: &Cache, db: &Db) -> Result<Account, String> {
    db.write(account)
}

pub async fn on_one_entry_a_stacked_evict_wins_in_either_order(h: Harness) {
    let db = Db::with(&[(1, 7, "ada"), (2, 7, "grace")]);
    put_under_evict(account(1, 7, "ada 2"), &h.cache, &db)
        .await
        .unwrap();
    evict_under_put(account(2, 7, "grace 2"), &h.cache, &db)
        .await
        .unwrap();
    assert!(
        h.read_raw(&get_account_cache_key(1)).await.is_none(),
        "evict after put"
    );
    assert!(
        h.read_raw(&get_account_cache_key(2)).await.is_none(),
        "a put whose lease the evict took removes the entry"
    );
    assert_eq!(
        get_account(2, 7, &h.cache, &db).await.unwrap().name,
        "grace 2"
    );
    assert_eq!(
        db.loads(),
        1,
        "computed from the database, which has the write"
    );
}
