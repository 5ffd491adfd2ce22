//! How values are stored: the size bound (`max_value_bytes`), compression (`compress_above`)
//! and the codec (`codec`), on each backend.

use crate::suite::leader_and_waiters;
use crate::support::{Backend, Harness, Probe};
use redis_memo::{Cache, Codec, ManualClock, envelope, redis_cache_put, redis_cached};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// The bound of the tests' caches; values of [`SMALL`] bytes fit, of [`LARGE`] do not.
const MAX_VALUE_BYTES: usize = 1024;
const SMALL: usize = 100;
const LARGE: usize = 4096;

/// A value of `size` bytes, which a test changes between calls.
#[derive(Default)]
pub struct Source {
    size: AtomicUsize,
}

impl Source {
    fn set(&self, size: usize) {
        self.size.store(size, Ordering::SeqCst);
    }

    fn value(&self) -> String {
        "v".repeat(self.size.load(Ordering::SeqCst))
    }
}

#[redis_cached(ttl = "1m", key = "sized:<id>", cache = cache)]
async fn sized(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] source: &Source,
    #[cache(skip)] probe: &Probe,
) -> String {
    probe.ran();
    let _ = id;
    source.value()
}

#[redis_cache_put(sized(id), cache = cache)]
async fn put_sized(id: u64, value: String, cache: &Cache) -> String {
    value
}

fn bounded(backend: Backend) -> Harness {
    Harness::with(backend, |builder| builder.max_value_bytes(MAX_VALUE_BYTES))
}

pub async fn a_value_over_max_value_bytes_is_served_but_not_stored(backend: Backend) {
    let h = bounded(backend);
    let (source, probe) = (Source::default(), Probe::default());
    source.set(SMALL);
    assert_eq!(sized(1, &h.cache, &source, &probe).await.len(), SMALL);
    assert_eq!(sized(1, &h.cache, &source, &probe).await.len(), SMALL);
    assert_eq!(probe.runs(), 1, "a value under the bound is stored");
    assert_eq!(h.cache.stats().oversized, 0);

    source.set(LARGE);
    for run in 2..=3 {
        assert_eq!(sized(2, &h.cache, &source, &probe).await.len(), LARGE);
        assert_eq!(probe.runs(), run, "a value over the bound is never stored");
    }
    assert!(h.read_raw(&sized_cache_key(2)).await.is_none());
    let stats = h.cache.stats();
    assert_eq!((stats.oversized, stats.fills), (2, 1), "{stats:?}");

    // A write-through of an oversized value removes the entry rather than leave the old value.
    assert_eq!(sized(1, &h.cache, &source, &probe).await.len(), SMALL);
    put_sized(1, "w".repeat(LARGE), &h.cache).await;
    assert!(h.read_raw(&sized_cache_key(1)).await.is_none());
    assert_eq!(sized(1, &h.cache, &source, &probe).await.len(), LARGE);
    assert_eq!(
        probe.runs(),
        4,
        "after the oversized put the entry is a miss"
    );
    assert_eq!(h.cache.stats().oversized, 4);
}

#[redis_cached(ttl = "1m", key = "big_report:<id>", cache = cache)]
async fn held_big_report(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
    #[cache(skip)] started: &Notify,
    #[cache(skip)] release: &Notify,
) -> String {
    probe.ran();
    started.notify_one();
    release.notified().await;
    format!("{id}").repeat(LARGE)
}

pub async fn callers_waiting_for_an_oversized_value_share_it(backend: Backend) {
    let h = bounded(backend);
    let probe = Arc::new(Probe::default());
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let spawn_call = || {
        let (cache, probe) = (h.cache.clone(), Arc::clone(&probe));
        let (started, release) = (Arc::clone(&started), Arc::clone(&release));
        tokio::task::spawn_local(async move {
            held_big_report(7, &cache, &probe, &started, &release).await
        })
    };
    let leader_value = Arc::new(std::sync::Mutex::new(None));
    let led = Arc::clone(&leader_value);
    let results = leader_and_waiters(20, &started, spawn_call, async |leader| {
        release.notify_one();
        *led.lock().unwrap() = Some(leader.await.unwrap());
    })
    .await;
    let expected = "7".repeat(LARGE);
    assert_eq!(leader_value.lock().unwrap().as_deref(), Some(&*expected));
    assert!(results.iter().all(|value| *value == expected));
    assert_eq!(
        probe.runs(),
        1,
        "the waiters took the leader's value in process"
    );
    assert_eq!(h.cache.stats().oversized, 1);
    assert!(h.read_raw(&held_big_report_cache_key(7)).await.is_none());
}

#[redis_cached(ttl = "1m", stale = "10m", key = "growing:<id>", cache = cache)]
async fn growing(
    id: u64,
    #[cache(skip)] cache: Cache,
    #[cache(skip)] source: Arc<Source>,
    #[cache(skip)] probe: Arc<Probe>,
) -> String {
    probe.ran();
    let _ = id;
    source.value()
}

pub async fn a_refresh_to_an_oversized_value_removes_the_stale_entry(backend: Backend) {
    let clock = ManualClock::starting_now();
    let h = Harness::with(backend, |builder| {
        builder
            .clock(clock.clone())
            .max_value_bytes(MAX_VALUE_BYTES)
    });
    let (source, probe) = (Arc::new(Source::default()), Arc::new(Probe::default()));
    let call = || growing(1, h.cache.clone(), Arc::clone(&source), Arc::clone(&probe));
    source.set(SMALL);
    assert_eq!(call().await.len(), SMALL);
    clock.advance(Duration::from_secs(61));
    source.set(LARGE);
    // Past its ttl: the stale value is served while the refresh computes the large one.
    assert_eq!(call().await.len(), SMALL);
    h.cache.refreshes_done().await;
    assert_eq!(probe.runs(), 2);
    assert!(
        h.read_raw(&growing_cache_key(1)).await.is_none(),
        "the older value must not outlive the newer one it could not be replaced by"
    );
    assert_eq!(call().await.len(), LARGE);
    assert_eq!(probe.runs(), 3);
    assert_eq!(h.cache.stats().oversized, 2);
}

/// A row of a page: what a JSON API returns, many times over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    id: u64,
    name: String,
    email: String,
    role: String,
    active: bool,
}

#[redis_cached(ttl = "1m", key = "page:<id>", cache = cache)]
async fn page(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> Vec<Row> {
    probe.ran();
    rows(id, 100)
}

fn rows(page: u64, count: u64) -> Vec<Row> {
    (0..count)
        .map(|n| Row {
            id: page * 1000 + n,
            name: format!("user number {n}"),
            email: format!("user{n}@example.com"),
            role: ["reader", "writer", "admin"][n as usize % 3].into(),
            active: n % 7 != 0,
        })
        .collect()
}

pub async fn compressed_entries_are_smaller_and_plain_readers_read_them(backend: Backend) {
    let h = Harness::with(backend, |builder| builder.compress_above(512));
    let plain = h.another_process(|builder| builder);
    let probe = Probe::default();
    assert_eq!(page(1, &h.cache, &probe).await, rows(1, 100));

    let stored = h.read_raw(&page_cache_key(1)).await.expect("stored");
    let header = envelope::header(&stored).unwrap();
    assert!(header.compressed());
    let mut uncompressed = Vec::new();
    bincode_len(&rows(1, 100), &mut uncompressed);
    assert!(
        stored.len() * 10 <= uncompressed.len() * 4,
        "{} bytes stored for {} of values",
        stored.len(),
        uncompressed.len()
    );

    // A cache without compression reads the compressed entry, and its plain ones are read
    // back by the compressing cache.
    assert_eq!(page(1, &plain, &probe).await, rows(1, 100));
    assert_eq!(page(2, &plain, &probe).await, rows(2, 100));
    plain.writes_done().await;
    let stored = h.read_raw(&page_cache_key(2)).await.expect("stored");
    assert!(!envelope::header(&stored).unwrap().compressed());
    assert_eq!(page(2, &h.cache, &probe).await, rows(2, 100));
    assert_eq!(
        probe.runs(),
        2,
        "every read after the first of each page is a hit"
    );
}

fn bincode_len(value: &impl Serialize, out: &mut Vec<u8>) {
    // What the envelope holds without compression: the same bytes as bincode writes.
    let mut encoded = bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap();
    out.append(&mut encoded);
}

#[redis_cached(ttl = "1m", key = "row:<id>", cache = cache)]
async fn row(id: u64, #[cache(skip)] cache: &Cache, #[cache(skip)] probe: &Probe) -> Row {
    probe.ran();
    rows(id, 1).remove(0)
}

pub async fn message_pack_entries_name_their_fields_and_every_codec_reads_them(backend: Backend) {
    let h = Harness::with(backend, |builder| builder.codec(Codec::MessagePack));
    let bincode = h.another_process(|builder| builder.codec(Codec::Bincode));
    let probe = Probe::default();
    assert_eq!(row(1, &h.cache, &probe).await, rows(1, 1)[0]);

    let stored = h.read_raw(&row_cache_key(1)).await.expect("stored");
    let header = envelope::header(&stored).unwrap();
    assert_eq!(Codec::from_id(header.codec), Some(Codec::MessagePack));
    // What a program in another language reads after the header: a map by field name.
    let fields: serde_json::Value = rmp_serde::from_slice(header.value_bytes()).unwrap();
    assert_eq!(fields["email"], "user0@example.com", "{fields}");
    assert_eq!(fields["id"], 1000);

    // A cache writing bincode reads it, and the other way round: changing a cache's codec
    // turns no entry into a miss.
    assert_eq!(row(1, &bincode, &probe).await, rows(1, 1)[0]);
    assert_eq!(row(2, &bincode, &probe).await, rows(2, 1)[0]);
    bincode.writes_done().await;
    let stored = h.read_raw(&row_cache_key(2)).await.expect("stored");
    assert_eq!(
        Codec::from_id(envelope::header(&stored).unwrap().codec),
        Some(Codec::Bincode)
    );
    assert_eq!(row(2, &h.cache, &probe).await, rows(2, 1)[0]);
    assert_eq!(probe.runs(), 2);
}
