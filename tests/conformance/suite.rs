//! The behaviours every backend must have. Each function gets a fresh [`Harness`].

use crate::support::{Harness, Probe, WaiterSignal};
use redis_memo::{Cache, redis_cached};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

#[redis_cached(ttl = "1m", key = "plain:<id>", cache = cache)]
async fn plain(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> String {
    probe.ran();
    format!("value {id}")
}

pub async fn second_call_is_served_from_the_cache(h: Harness) {
    let probe = Probe::default();
    assert_eq!(plain(1, &h.cache, &probe).await, "value 1");
    assert_eq!(plain(1, &h.cache, &probe).await, "value 1");
    assert_eq!(probe.runs(), 1, "the second call must be a hit");
    assert_eq!(plain(2, &h.cache, &probe).await, "value 2");
    assert_eq!(probe.runs(), 2, "another argument is another entry");

    assert!(
        invalidate_plain(1, &h.cache).await.unwrap(),
        "the entry existed"
    );
    assert!(
        !invalidate_plain(1, &h.cache).await.unwrap(),
        "and is gone now"
    );
    assert_eq!(plain(1, &h.cache, &probe).await, "value 1");
    assert_eq!(probe.runs(), 3, "after invalidation the body runs again");
    assert_eq!(plain(2, &h.cache, &probe).await, "value 2");
    assert_eq!(probe.runs(), 3, "invalidating one entry leaves the others");

    h.cache.writes_done().await;
    let stats = h.cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.fills), (2, 3, 3));

    if h.local() {
        // Once the tier's connection is up (`ping` waits for it), a read keeps its copy and
        // the next call is answered by it alone.
        h.cache.ping().await.unwrap();
        assert_eq!(plain(2, &h.cache, &probe).await, "value 2");
        let before = h.cache.stats();
        assert_eq!(plain(2, &h.cache, &probe).await, "value 2");
        let after = h.cache.stats();
        assert_eq!(
            (after.hits, after.local_hits),
            (before.hits + 1, before.local_hits + 1),
            "{after:?}"
        );
        assert!(after.local_bytes > 0, "{after:?}");
        assert_eq!(probe.runs(), 3);
    }
}

#[redis_cached(ttl = "300ms", key = "short:<id>", cache = cache)]
async fn short_lived(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> u64 {
    probe.ran();
    id * 2
}

pub async fn entries_expire_after_their_ttl(h: Harness) {
    let probe = Probe::default();
    assert_eq!(short_lived(4, &h.cache, &probe).await, 8);
    assert_eq!(short_lived(4, &h.cache, &probe).await, 8);
    assert_eq!(probe.runs(), 1);
    // Written with its ttl in the same command: the key never exists without one.
    if let Some(pttl) = h.pttl_ms(&short_lived_cache_key(4)).await {
        assert!((1..=300).contains(&pttl), "PTTL {pttl}");
    }
    // Waiting out the ttl is the behaviour under test; there is no event to wait for.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        h.read_raw(&short_lived_cache_key(4)).await.is_none(),
        "the entry is gone after its ttl"
    );
    assert_eq!(short_lived(4, &h.cache, &probe).await, 8);
    assert_eq!(probe.runs(), 2);
}

#[redis_cached(ttl = "1m", key = "pair:<a>:<b>", cache = cache)]
async fn pair(
    a: &str,
    b: &str,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> (String, String) {
    probe.ran();
    (a.to_owned(), b.to_owned())
}

pub async fn arguments_that_render_alike_naively_never_share_an_entry(h: Harness) {
    let big = "x".repeat(100 * 1024);
    let big_variant = format!("{}y", "x".repeat(100 * 1024 - 1));
    let mut tuples: Vec<(String, String)> = vec![
        ("a:b".into(), "c".into()),
        ("a".into(), "b:c".into()),
        ("a%3Ab".into(), "c".into()),
        ("".into(), "".into()),
        ("".into(), ":".into()),
        (":".into(), "".into()),
        ("~".into(), "".into()),
        ("#".into(), "".into()),
    ];
    for special in [
        "*",
        "?",
        "[",
        "]",
        "{",
        "}",
        "%",
        " ",
        "\n",
        "ünïcödé",
        "{a}",
        "a*b?",
        "%25",
    ] {
        tuples.push((special.into(), "z".into()));
        tuples.push(("z".into(), special.into()));
    }
    tuples.push((big.clone(), "1".into()));
    tuples.push((big_variant, "1".into()));
    tuples.push((big, "2".into()));

    let probe = Probe::default();
    for round in 0..2 {
        for (a, b) in &tuples {
            let got = pair(a, b, &h.cache, &probe).await;
            assert_eq!(
                (&got.0, &got.1),
                (a, b),
                "round {round}: the entry of another tuple was served"
            );
        }
        assert_eq!(
            probe.runs() as usize,
            tuples.len(),
            "round {round}: each tuple has its own entry"
        );
    }
    let keys: std::collections::HashSet<String> =
        tuples.iter().map(|(a, b)| pair_cache_key(a, b)).collect();
    assert_eq!(keys.len(), tuples.len());
    for key in &keys {
        assert!(
            !key.contains(['*', '?', '[', ']', '{', '}', ' ', '\n']),
            "unescaped: {key:?}"
        );
        assert!(
            key.len() <= redis_memo::MAX_RENDERED_LEN,
            "long keys are hashed"
        );
    }
}

#[derive(Debug, PartialEq)]
struct LoadError;

#[redis_cached(ttl = "1m", key = "fallible:<id>", cache = cache)]
async fn fallible(
    id: u32,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> Result<u32, LoadError> {
    if probe.ran() == 1 {
        Err(LoadError)
    } else {
        Ok(id)
    }
}

pub async fn errors_are_never_cached(h: Harness) {
    let probe = Probe::default();
    assert_eq!(fallible(5, &h.cache, &probe).await, Err(LoadError));
    assert!(
        h.read_raw(&fallible_cache_key(5)).await.is_none(),
        "an Err is not stored"
    );
    assert_eq!(fallible(5, &h.cache, &probe).await, Ok(5));
    assert_eq!(fallible(5, &h.cache, &probe).await, Ok(5));
    assert_eq!(probe.runs(), 2, "the Ok after the Err is cached");
}

#[redis_cached(ttl = "1m", key = "maybe:<id>", cache = cache)]
async fn maybe(id: u32, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> Option<u32> {
    probe.ran();
    (id > 0).then_some(id)
}

#[redis_cached(ttl = "1m", key = "maybe_none:<id>", cache = cache, cache_none)]
async fn maybe_cache_none(
    id: u32,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> Option<u32> {
    probe.ran();
    (id > 0).then_some(id)
}

pub async fn none_is_cached_only_with_cache_none(h: Harness) {
    let probe = Probe::default();
    assert_eq!(maybe(0, &h.cache, &probe).await, None);
    assert_eq!(maybe(0, &h.cache, &probe).await, None);
    assert_eq!(probe.runs(), 2, "None is not cached by default");
    assert_eq!(maybe(3, &h.cache, &probe).await, Some(3));
    assert_eq!(maybe(3, &h.cache, &probe).await, Some(3));
    assert_eq!(probe.runs(), 3, "Some is cached");

    let probe = Probe::default();
    assert_eq!(maybe_cache_none(0, &h.cache, &probe).await, None);
    assert_eq!(maybe_cache_none(0, &h.cache, &probe).await, None);
    assert_eq!(probe.runs(), 1, "with cache_none, None is cached");
}

#[redis_cached(ttl = "1m", key = "found:<id>", cache = cache)]
async fn find(
    id: u32,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> Result<Option<u32>, LoadError> {
    probe.ran();
    match id {
        0 => Err(LoadError),
        1 => Ok(None),
        _ => Ok(Some(id)),
    }
}

#[redis_cached(ttl = "1m", key = "found_none:<id>", cache = cache, cache_none)]
async fn find_cache_none(
    id: u32,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> Result<Option<u32>, LoadError> {
    probe.ran();
    Ok((id > 1).then_some(id))
}

pub async fn result_of_option_caches_like_both(h: Harness) {
    let probe = Probe::default();
    for id in [0, 0, 1, 1] {
        let _ = find(id, &h.cache, &probe).await;
    }
    assert_eq!(
        probe.runs(),
        4,
        "neither Err nor Ok(None) is cached by default"
    );
    assert_eq!(find(5, &h.cache, &probe).await, Ok(Some(5)));
    assert_eq!(find(5, &h.cache, &probe).await, Ok(Some(5)));
    assert_eq!(probe.runs(), 5, "Ok(Some) is cached");

    let probe = Probe::default();
    assert_eq!(find_cache_none(1, &h.cache, &probe).await, Ok(None));
    assert_eq!(find_cache_none(1, &h.cache, &probe).await, Ok(None));
    assert_eq!(probe.runs(), 1, "with cache_none, Ok(None) is cached");
}

pub async fn foreign_bytes_are_a_counted_miss_and_are_replaced(h: Harness) {
    let probe = Probe::default();
    let key = plain_cache_key(9);
    let foreign_values: [&[u8]; 3] = [
        b"not an entry",
        b"",
        b"RM\x01\x01\x00garbage-after-a-plausible-header",
    ];
    for (round, foreign) in foreign_values.into_iter().enumerate() {
        h.write_raw(&key, foreign, Duration::from_secs(60)).await;
        assert_eq!(plain(9, &h.cache, &probe).await, "value 9");
        assert_eq!(probe.runs() as usize, round + 1, "foreign bytes are a miss");
        assert_eq!(
            h.cache.stats().decode_failures as usize,
            round + 1,
            "and are counted"
        );
        assert_ne!(
            h.read_raw(&key).await.as_deref(),
            Some(foreign),
            "and are overwritten"
        );
        assert_eq!(plain(9, &h.cache, &probe).await, "value 9");
        assert_eq!(
            probe.runs() as usize,
            round + 1,
            "the good value is then served"
        );
    }
}

#[redis_cached(ttl = "1m", key = "versioned:<id>", cache = cache, version = 1)]
async fn versioned_v1(id: u32, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> u32 {
    probe.ran();
    id
}

#[redis_cached(ttl = "1m", key = "versioned:<id>", cache = cache, version = 2)]
async fn versioned_v2(id: u32, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> u32 {
    probe.ran();
    id + 1000
}

pub async fn data_of_another_redis_type_is_a_miss_and_is_replaced(h: Harness) {
    if !h.on_redis() {
        return; // Only Redis has types other than strings.
    }
    let probe = Probe::default();
    let key = h.cache.full_key(&plain_cache_key(11));
    let _: Option<i64> = h
        .raw(redis::cmd("LPUSH").arg(&key).arg("someone else's list"))
        .await;
    assert_eq!(
        plain(11, &h.cache, &probe).await,
        "value 11",
        "WRONGTYPE is a miss, not an error"
    );
    assert_eq!(h.cache.stats().decode_failures, 1, "and is counted");
    for _ in 0..5 {
        assert_eq!(plain(11, &h.cache, &probe).await, "value 11");
    }
    assert_eq!(
        probe.runs(),
        1,
        "the list was overwritten by the entry, and Redis was not taken for down"
    );
}

pub async fn a_foreign_value_under_the_lease_key_is_replaced(h: Harness) {
    if !h.on_redis() {
        return; // Only Redis has types other than strings, and keys written by hand.
    }
    let probe = Probe::default();
    for (id, foreign) in [(12u64, "list"), (13, "string without expiry")] {
        let lease = format!("{}:lock", h.cache.full_key(&plain_cache_key(id)));
        let write = match foreign {
            "list" => redis::cmd("RPUSH").arg(&lease).arg("x").clone(),
            _ => redis::cmd("SET").arg(&lease).arg("x").clone(),
        };
        let _: Option<()> = h.raw(&write).await;
        let runs = probe.runs();
        for _ in 0..3 {
            assert_eq!(plain(id, &h.cache, &probe).await, format!("value {id}"));
        }
        assert_eq!(
            probe.runs(),
            runs + 1,
            "a {foreign} under the lease key is replaced, and the entry stored"
        );
    }
}

#[redis_cached(ttl = "1m", key = "shared:<id>", cache = cache)]
async fn user_name(id: u64, #[cache(skip)] cache: &Cache) -> String {
    format!("name of {id}")
}

#[redis_cached(ttl = "1m", key = "shared:<id>", cache = cache)]
async fn user_email(id: u64, #[cache(skip)] cache: &Cache) -> String {
    format!("{id}@example.com")
}

#[redis_cached(ttl = "1m", key = "generic:<id>", cache = cache)]
async fn describe<T: redis_memo::KeyPart + std::fmt::Debug + Sync>(
    id: T,
    #[cache(skip)] cache: &Cache,
) -> String {
    format!("{id:?}")
}

struct Scaled<const N: u64>;

impl<const N: u64> Scaled<N> {
    #[redis_cached(ttl = "1m", key = "scaled:<id>", cache = cache)]
    async fn value(id: u64, #[cache(skip)] cache: &Cache) -> u64 {
        id * N
    }
}

pub async fn functions_sharing_a_key_template_never_serve_each_other(h: Harness) {
    for _ in 0..3 {
        assert_eq!(Scaled::<2>::value(3, &h.cache).await, 6);
        assert_eq!(Scaled::<3>::value(3, &h.cache).await, 9);
    }
    for _ in 0..3 {
        assert_eq!(user_name(1, &h.cache).await, "name of 1");
        assert_eq!(user_email(1, &h.cache).await, "1@example.com");
        assert_eq!(describe(1u8, &h.cache).await, "1");
        assert_eq!(describe("1", &h.cache).await, "\"1\"");
    }
    // Each call evicted the other's entry: wasteful (the templates should differ) but never
    // a wrong value, and visible in the counters.
    assert!(h.cache.stats().decode_failures >= 12);
}

pub async fn an_entry_of_another_version_is_a_miss(h: Harness) {
    let probe = Probe::default();
    assert_eq!(versioned_v1(1, &h.cache, &probe).await, 1);
    assert_eq!(
        versioned_v2(1, &h.cache, &probe).await,
        1001,
        "v1's entry must not be served to v2"
    );
    assert_eq!(probe.runs(), 2);
    assert_eq!(h.cache.stats().decode_failures, 1);
    assert_eq!(versioned_v2(1, &h.cache, &probe).await, 1001);
    assert_eq!(probe.runs(), 2, "v2 replaced the entry");
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Report {
    id: u64,
    rows: Vec<String>,
}

#[redis_cached(ttl = "1m", key = "report:<id>", cache = cache)]
async fn slow_report(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> Report {
    probe.ran();
    // Stands for a database query: lets the other callers arrive while it runs.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Report {
        id,
        rows: vec!["a".into(), "b".into()],
    }
}

pub async fn concurrent_callers_of_a_cold_key_run_the_body_once(h: Harness) {
    let probe = Arc::new(Probe::default());
    let cache = h.cache.clone();
    let callers: Vec<_> = (0..200)
        .map(|_| {
            let (cache, probe) = (cache.clone(), Arc::clone(&probe));
            tokio::spawn(async move { slow_report(7, &cache, &probe).await })
        })
        .collect();
    for caller in callers {
        assert_eq!(
            caller.await.unwrap(),
            Report {
                id: 7,
                rows: vec!["a".into(), "b".into()]
            }
        );
    }
    assert_eq!(probe.runs(), 1, "200 concurrent callers, one run");
    let stats = h.cache.stats();
    assert_eq!(stats.hits + stats.misses + stats.coalesced, 200);
}

/// The first run never finishes on its own (its caller gets cancelled); later runs answer.
#[redis_cached(ttl = "1m", key = "handover:<id>", cache = cache)]
async fn first_run_hangs(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
    #[cache(skip)] started: &Notify,
) -> u64 {
    if probe.ran() == 1 {
        started.notify_one();
        std::future::pending::<()>().await;
    }
    id
}

/// Starts one call (the leader) and, once its body runs, `waiters` more, on local tasks of
/// this thread; when all of them wait for the leader, hands the leader's task to `end_leader`
/// (which cancels or releases it) and returns the waiters' results, each bounded in time.
pub async fn leader_and_waiters<T: 'static>(
    waiters: usize,
    started: &Notify,
    spawn_call: impl Fn() -> tokio::task::JoinHandle<T>,
    end_leader: impl AsyncFnOnce(tokio::task::JoinHandle<T>),
) -> Vec<T> {
    let signal = WaiterSignal::default();
    // The signal's subscriber is installed for this thread, where the local tasks run.
    let _subscriber = signal.install();
    tokio::task::LocalSet::new()
        .run_until(async {
            let leader = spawn_call();
            started.notified().await;
            let waiting: Vec<_> = (0..waiters).map(|_| spawn_call()).collect();
            signal.waiting(waiters).await;
            end_leader(leader).await;
            let mut results = Vec::new();
            for waiter in waiting {
                let result = tokio::time::timeout(Duration::from_secs(10), waiter)
                    .await
                    .expect("a waiter hung after its leader went away");
                results.push(result.unwrap());
            }
            results
        })
        .await
}

pub async fn a_cancelled_leader_hands_the_work_to_a_waiter(h: Harness) {
    let probe = Arc::new(Probe::default());
    let started = Arc::new(Notify::new());
    let spawn_call = || {
        let (cache, probe, started) = (h.cache.clone(), Arc::clone(&probe), Arc::clone(&started));
        tokio::task::spawn_local(async move { first_run_hangs(3, &cache, &probe, &started).await })
    };
    let results = leader_and_waiters(199, &started, spawn_call, async |leader| {
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
    })
    .await;
    assert!(results.iter().all(|value| *value == 3));
    assert_eq!(
        probe.runs(),
        2,
        "one cancelled run, then one run for all 199 waiters: {:?}",
        h.cache.stats()
    );
    let stats = h.cache.stats();
    assert_eq!(
        stats.coalesced + stats.hits,
        198,
        "the others took the new leader's value"
    );
}

/// Panics on its first run only, once released.
#[redis_cached(ttl = "1m", key = "panics:<id>", cache = cache)]
async fn panics_once(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
    #[cache(skip)] started: &Notify,
    #[cache(skip)] release: &Notify,
) -> u64 {
    if probe.ran() == 1 {
        started.notify_one();
        release.notified().await;
        panic!("the loader failed (this panic is part of the test)");
    }
    id
}

pub async fn a_panic_reaches_its_caller_and_the_waiters_go_on(h: Harness) {
    let probe = Arc::new(Probe::default());
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let spawn_call = || {
        let (cache, probe) = (h.cache.clone(), Arc::clone(&probe));
        let (started, release) = (Arc::clone(&started), Arc::clone(&release));
        tokio::task::spawn_local(
            async move { panics_once(4, &cache, &probe, &started, &release).await },
        )
    };
    let results = leader_and_waiters(10, &started, spawn_call, async |leader| {
        release.notify_one();
        assert!(
            leader.await.unwrap_err().is_panic(),
            "the panic propagates to its caller"
        );
    })
    .await;
    assert!(results.iter().all(|value| *value == 4));
    assert_eq!(
        probe.runs(),
        2,
        "the panicking run, then one run for the 10 waiters"
    );
}

/// Holds after reading `version` until released.
#[redis_cached(ttl = "1m", key = "versioned_read:<id>", cache = cache)]
async fn read_version(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] version: &std::sync::atomic::AtomicU64,
    #[cache(skip)] hold: Option<(&Notify, &Notify)>,
) -> u64 {
    let seen = version.load(std::sync::atomic::Ordering::SeqCst);
    if let Some((read, release)) = hold {
        read.notify_one();
        release.notified().await;
    }
    id * 100 + seen
}

pub async fn an_invalidation_during_a_computation_rejects_its_fill(h: Harness) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let version = Arc::new(AtomicU64::new(1));
    let (read, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let computation = tokio::spawn({
        let (cache, version, read, release) = (
            h.cache.clone(),
            version.clone(),
            read.clone(),
            release.clone(),
        );
        async move { read_version(1, &cache, &version, Some((&read, &release))).await }
    });
    read.notified().await;
    version.store(2, Ordering::SeqCst);
    invalidate_read_version(1, &h.cache).await.unwrap();
    release.notify_one();
    assert_eq!(
        computation.await.unwrap(),
        101,
        "the caller gets its own result"
    );
    h.cache.writes_done().await;
    assert_eq!(h.cache.stats().rejected_fills, 1, "which is not stored");
    assert_eq!(
        read_version(1, &h.cache, &version, None).await,
        102,
        "the next call computes anew"
    );
    assert_eq!(read_version(1, &h.cache, &version, None).await, 102);
    h.cache.writes_done().await;
    assert_eq!(h.cache.stats().fills, 1);
}

#[redis_cached(ttl = "1m", key = "user:<id>", cache = cache)]
async fn user_profile(id: u64, #[cache(skip)] cache: &Cache) -> u64 {
    id
}

#[redis_cached(ttl = "1m", key = "org:<id>", cache = cache)]
async fn org_profile(id: u64, #[cache(skip)] cache: &Cache) -> u64 {
    id
}

#[redis_cached(ttl = "1m", key = "name:<name>", cache = cache)]
async fn by_name(name: &str, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> String {
    probe.ran();
    name.to_owned()
}

pub async fn invalidate_matching_removes_exactly_the_matching_entries(h: Harness) {
    let users: Vec<String> = (0..25_000).map(user_profile_cache_key).collect();
    let orgs: Vec<String> = (0..25_000).map(org_profile_cache_key).collect();
    h.write_many_raw(&users, b"entry", Duration::from_secs(60))
        .await;
    h.write_many_raw(&orgs, b"entry", Duration::from_secs(60))
        .await;
    // Two real entries among the raw ones.
    assert_eq!(
        (
            user_profile(10, &h.cache).await,
            org_profile(10, &h.cache).await
        ),
        (10, 10)
    );
    let matching = |id: &u64| id.to_string().starts_with('1');
    let expected = (0..25_000u64).filter(matching).count() as u64;

    assert_eq!(
        h.cache.invalidate_matching("user:1*").await.unwrap(),
        expected
    );
    for id in (0..25_000u64).step_by(97) {
        let present = h.read_raw(&user_profile_cache_key(id)).await.is_some();
        assert_eq!(present, !matching(&id), "user {id}");
        assert!(
            h.read_raw(&org_profile_cache_key(id)).await.is_some(),
            "org {id} untouched"
        );
    }
    assert!(
        h.cache.invalidate_matching("user:{1}").await.is_err(),
        "braces are refused"
    );
}

pub async fn an_argument_value_never_widens_a_pattern(h: Harness) {
    let probe = Probe::default();
    for name in ["a*", "ab", "a", "a?"] {
        by_name(name, &h.cache, &probe).await;
    }
    let only_the_star = format!("name:{}", redis_memo::pattern_part("a*"));
    assert_eq!(
        h.cache.invalidate_matching(&only_the_star).await.unwrap(),
        1
    );
    for name in ["a*", "ab", "a", "a?"] {
        by_name(name, &h.cache, &probe).await;
    }
    assert_eq!(
        probe.runs(),
        5,
        "only \"a*\" was removed and computed again"
    );
}

#[redis_cached(ttl = "1m", key = "doc:<id>:<rev>", cache = cache)]
async fn doc_revision(
    id: &str,
    rev: &str,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> String {
    probe.ran();
    format!("{id}/{rev}")
}

pub async fn a_pattern_reaches_keys_too_long_to_store_whole(h: Harness) {
    let probe = Probe::default();
    let long_id = "x".repeat(240);
    let long_key = doc_revision_cache_key(&long_id, "v2");
    assert!(long_key.contains('#'), "stored shortened: {long_key}");
    let calls = [
        (long_id.as_str(), "v2"),
        (long_id.as_str(), "v3"),
        ("short", "v2"),
    ];
    let fill = async || {
        for (id, rev) in calls {
            doc_revision(id, rev, &h.cache, &probe).await;
        }
    };
    fill().await;
    assert_eq!(probe.runs(), 3);

    // Text past a long key's readable prefix is not in Redis: the pattern removes every long
    // key that it could match, and the short key it does match.
    assert_eq!(h.cache.invalidate_matching("doc:*:v2").await.unwrap(), 3);
    fill().await;
    assert_eq!(probe.runs(), 6, "all three computed again");

    // A value rendered for a pattern is never shortened.
    let exact = format!("doc:{}:v3", redis_memo::pattern_part(&long_id));
    assert_eq!(h.cache.invalidate_matching(&exact).await.unwrap(), 2);
    fill().await;
    assert_eq!(
        probe.runs(),
        8,
        "both long keys (one prefix), not the short one"
    );
    assert_eq!(
        h.cache.invalidate_matching("page:*").await.unwrap(),
        0,
        "a pattern whose beginning differs reaches none"
    );

    // An empty argument renders as nothing inside a key, and so does its pattern part.
    doc_revision("", "v9", &h.cache, &probe).await;
    let empty = format!("doc:{}:v9", redis_memo::pattern_part(""));
    assert_eq!(h.cache.invalidate_matching(&empty).await.unwrap(), 1);
}

struct TenantService {
    cache: Cache,
    tenant: String,
}

impl TenantService {
    #[redis_cached(ttl = "1m", key = "tenant:<self.tenant>:doc:<name>", cache = self.cache)]
    async fn document(&self, name: &str, #[cache(skip)] probe: &Probe) -> String {
        probe.ran();
        format!("{}/{name}", self.tenant)
    }
}

pub async fn methods_key_on_named_fields_of_self(h: Harness) {
    let probe = Probe::default();
    let acme = TenantService {
        cache: h.cache.clone(),
        tenant: "acme".into(),
    };
    let initech = TenantService {
        cache: h.cache.clone(),
        tenant: "initech".into(),
    };
    assert_eq!(acme.document("readme", &probe).await, "acme/readme");
    assert_eq!(initech.document("readme", &probe).await, "initech/readme");
    assert_eq!(acme.document("readme", &probe).await, "acme/readme");
    assert_eq!(probe.runs(), 2);
    assert_eq!(acme.document_cache_key("readme"), "tenant:acme:doc:readme");
    assert!(initech.invalidate_document("readme").await.unwrap());
    assert_eq!(acme.document("readme", &probe).await, "acme/readme");
    assert_eq!(
        probe.runs(),
        2,
        "invalidating one tenant's entry keeps the other's"
    );
}

struct Request {
    user_id: u64,
    region: (String, u8),
}

#[redis_cached(ttl = "1m", key = "profile:<req.user_id>@<req.region.0>", cache = cache)]
async fn profile(
    req: &Request,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> String {
    probe.ran();
    format!("{}-{}", req.user_id, req.region.1)
}

pub async fn field_paths_and_helpers_agree_with_the_stored_key(h: Harness) {
    let probe = Probe::default();
    let request = Request {
        user_id: 42,
        region: ("eu west".into(), 1),
    };
    assert_eq!(profile(&request, &h.cache, &probe).await, "42-1");
    let rendered = profile_cache_key(&request);
    assert_eq!(rendered, "profile:42@eu%20west");
    assert!(
        h.read_raw(&rendered).await.is_some(),
        "the helper names the key that was written"
    );
    let same_key = Request {
        user_id: 42,
        region: ("eu west".into(), 2),
    };
    assert_eq!(
        profile(&same_key, &h.cache, &probe).await,
        "42-1",
        "region.1 is not in the key"
    );
    assert_eq!(probe.runs(), 1);
    assert!(invalidate_profile(&request, &h.cache).await.unwrap());
    assert!(h.read_raw(&rendered).await.is_none());
}

/// A repository trait, as services implement them.
trait Directory {
    async fn display_name(&self, id: u64) -> String;
    async fn rename(&self, id: u64, name: &str) -> Result<(), String>;
    async fn set_display_name(&self, id: u64, name: &str) -> Result<(), String>;
}

/// Generic over its store, as `impl<T: Repo> Service<T>` often is.
struct DirectoryService<S> {
    cache: Cache,
    tenant: String,
    store: S,
}

#[redis_memo::redis_cached_impl]
impl<S: AsRef<Probe> + Sync> Directory for DirectoryService<S> {
    #[redis_cached(ttl = "1m", key = "name:<self.tenant>:<id>", cache = self.cache)]
    async fn display_name(&self, id: u64) -> String {
        self.store.as_ref().ran();
        format!("{}#{id}", self.tenant)
    }

    #[redis_memo::redis_cache_evict(Self::display_name(self, id), cache = self.cache)]
    async fn rename(&self, id: u64, name: &str) -> Result<(), String> {
        let _ = (id, name);
        Ok(())
    }

    #[redis_memo::redis_cache_put(Self::display_name(self, id), value = name.to_owned(), cache = self.cache)]
    async fn set_display_name(&self, id: u64, name: &str) -> Result<(), String> {
        let _ = (id, name);
        Ok(())
    }
}

struct OwnedProbe(Probe);

impl AsRef<Probe> for OwnedProbe {
    fn as_ref(&self) -> &Probe {
        &self.0
    }
}

pub async fn trait_impl_methods_are_memoized_with_their_helpers(h: Harness) {
    let service = DirectoryService {
        cache: h.cache.clone(),
        tenant: "acme".into(),
        store: OwnedProbe(Probe::default()),
    };
    assert_eq!(service.display_name(1).await, "acme#1");
    assert_eq!(service.display_name(1).await, "acme#1");
    assert_eq!(service.store.0.runs(), 1, "the second call is a hit");
    assert_eq!(service.display_name_cache_key(1), "name:acme:1");
    assert!(service.invalidate_display_name(1).await.unwrap());
    assert_eq!(service.display_name(1).await, "acme#1");
    assert_eq!(service.store.0.runs(), 2);
    service.rename(1, "ada").await.unwrap();
    assert_eq!(service.display_name(1).await, "acme#1");
    assert_eq!(service.store.0.runs(), 3, "the trait's writer evicted it");
    assert_eq!(
        service.invalidate_display_name_many([1, 2]).await.unwrap(),
        1
    );
    service.set_display_name(4, "put").await.unwrap();
    assert_eq!(
        service.display_name(4).await,
        "put",
        "the trait's put is the reader's entry"
    );
    assert_eq!(service.store.0.runs(), 3, "read from the put");
}
