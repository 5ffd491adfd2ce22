//! Tags, side by side on one local `redis-server`:
//!
//! 1. Invalidating the N entries of one tag, N = 1k, 10k, 100k:
//!    - redis-memo: the tag's version key is deleted, one `DEL` whatever N;
//!    - a set of keys per tag (the tagged caches of Laravel and others): `SMEMBERS`, then `DEL`
//!      of the keys in batches of 1000, then `DEL` of the set;
//!    - `SCAN MATCH prefix* COUNT 1000` + `DEL` of each batch.
//!
//!    Reported: wall time (median of interleaved rounds, each on an emptied server), Redis
//!    commands (`INFO commandstats`), and the longest single command, which is how long
//!    Redis served nobody else. redis-memo's sampled entries are checked to hit before and to
//!    miss after.
//! 2. The hit path with 0, 1 and 3 tags, and with `invalidate_all` (the function's own tag)
//!    alone, against the hand-written redis-rs `GET` + decode of the cache-aside benchmark.
//!    Without tags a hit is one `GET`; with tags, one `MGET` of the entry and its tags.
//!
//! Run: `cargo bench -p redis-memo-benches` (with the other benchmarks).

mod common;

use common::{Samples, TASKS, User, load_user, ratio};
use redis::aio::ConnectionManager;
use redis_memo::{Cache, redis_cached};
use redis_memo_testkit::RedisServer;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static CACHE: OnceLock<Cache> = OnceLock::new();
/// A cache with an in-process tier: tag tokens are kept in process, entries read from Redis.
static TIER_CACHE: OnceLock<Cache> = OnceLock::new();
static RUNS: AtomicU32 = AtomicU32::new(0);

fn cache() -> &'static Cache {
    CACHE.get().expect("cache set up")
}

#[redis_cached(ttl = "1h", key = "row:<id>", tags = ["table:<table>"], cache = cache())]
async fn tagged_row(id: u64, table: &str) -> String {
    RUNS.fetch_add(1, Ordering::Relaxed);
    table.to_owned()
}

#[redis_cached(ttl = "10m", key = "user0:<id>", cache = cache())]
async fn user_0_tags(id: u64) -> User {
    load_user(id)
}

#[redis_cached(ttl = "10m", key = "userall:<id>", invalidate_all, cache = cache())]
async fn user_invalidate_all(id: u64) -> User {
    load_user(id)
}

#[redis_cached(ttl = "10m", key = "user1:<id>", tags = ["org:<org>"], cache = cache())]
async fn user_1_tag(id: u64, org: u32) -> User {
    let _ = org;
    load_user(id)
}

#[redis_cached(ttl = "10m", key = "user3:<id>", tags = ["org:<org>", "team:<team>", "users"], cache = cache())]
async fn user_3_tags(id: u64, org: u32, team: u32) -> User {
    let _ = (org, team);
    load_user(id)
}

#[redis_cached(ttl = "10m", key = "user3tier:<id>", tags = ["org:<org>", "team:<team>", "users"], cache = TIER_CACHE.get().expect("cache set up"))]
async fn user_3_tags_tier(id: u64, org: u32, team: u32) -> User {
    let _ = (org, team);
    load_user(id)
}

/// Misses of both caches.
fn misses() -> u64 {
    cache().stats().misses + TIER_CACHE.get().map_or(0, |tier| tier.stats().misses)
}

const SIZES: [u64; 3] = [1_000, 10_000, 100_000];
const INVALIDATION_ROUNDS: usize = 3;
const BATCH: usize = 1000;
const APPROACHES: [&str; 3] = ["redis-memo tag", "set of keys", "SCAN + DEL"];

/// One invalidation: its wall time, the longest command in it, and the commands Redis ran.
struct Invalidation {
    wall: Duration,
    longest: Duration,
    commands: u64,
}

async fn run<T: redis::FromRedisValue>(
    connection: &mut ConnectionManager,
    command: &redis::Cmd,
    longest: &mut Duration,
) -> T {
    let started = Instant::now();
    let reply = command.query_async(connection).await.unwrap();
    *longest = (*longest).max(started.elapsed());
    reply
}

async fn command_calls(connection: &mut ConnectionManager) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(connection)
        .await
        .unwrap();
    info.lines()
        .filter(|line| !line.starts_with("cmdstat_info:"))
        .filter_map(|line| {
            line.split_once("calls=")?
                .1
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Writes `n` entries for `approach` on an emptied server.
async fn set_up(approach: usize, n: u64, connection: &mut ConnectionManager) {
    let () = redis::cmd("FLUSHALL")
        .query_async(connection)
        .await
        .unwrap();
    let ids: Vec<u64> = (0..n).collect();
    match approach {
        0 => {
            // One computed entry; its bytes (and tag tokens) are valid for every row.
            assert_eq!(tagged_row(0, "big").await, "big");
            // The call returns once its fill is sent; this reads on another connection.
            cache().writes_done().await;
            let bytes: Vec<u8> = redis::cmd("GET")
                .arg(cache().full_key(&tagged_row_cache_key(0)))
                .query_async(connection)
                .await
                .unwrap();
            for chunk in ids[1..].chunks(5000) {
                let mut pipe = redis::pipe();
                for &id in chunk {
                    pipe.cmd("SET")
                        .arg(cache().full_key(&tagged_row_cache_key(id)))
                        .arg(&bytes)
                        .arg("PX")
                        .arg(3_600_000)
                        .ignore();
                }
                let () = pipe.query_async(connection).await.unwrap();
            }
        }
        _ => {
            for chunk in ids.chunks(5000) {
                let mut pipe = redis::pipe();
                for &id in chunk {
                    let key = format!("plain:big:{id}");
                    pipe.cmd("SET")
                        .arg(&key)
                        .arg("big")
                        .arg("PX")
                        .arg(3_600_000)
                        .ignore();
                    if approach == 1 {
                        pipe.cmd("SADD").arg("tagset:big").arg(&key).ignore();
                    }
                }
                let () = pipe.query_async(connection).await.unwrap();
            }
        }
    }
}

async fn invalidate(approach: usize, connection: &mut ConnectionManager) -> Invalidation {
    let before = command_calls(connection).await;
    let mut longest = Duration::ZERO;
    let started = Instant::now();
    match approach {
        0 => {
            let command_started = Instant::now();
            assert!(invalidate_tagged_row_by_table("big").await.unwrap());
            longest = command_started.elapsed();
        }
        1 => {
            let keys: Vec<String> = run(
                connection,
                redis::cmd("SMEMBERS").arg("tagset:big"),
                &mut longest,
            )
            .await;
            for chunk in keys.chunks(BATCH) {
                let _: u64 = run(connection, redis::cmd("DEL").arg(chunk), &mut longest).await;
            }
            let _: u64 = run(
                connection,
                redis::cmd("DEL").arg("tagset:big"),
                &mut longest,
            )
            .await;
        }
        _ => {
            let mut cursor = 0u64;
            loop {
                let scan = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg("plain:big:*")
                    .arg("COUNT")
                    .arg(BATCH)
                    .clone();
                let (next, keys): (u64, Vec<String>) = run(connection, &scan, &mut longest).await;
                if !keys.is_empty() {
                    let _: u64 = run(connection, redis::cmd("DEL").arg(&keys), &mut longest).await;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
    }
    let wall = started.elapsed();
    let commands = command_calls(connection).await - before;
    Invalidation {
        wall,
        longest,
        commands,
    }
}

/// redis-memo's sampled entries: how many ran the body when read.
async fn sampled_runs(n: u64) -> u32 {
    let before = RUNS.load(Ordering::Relaxed);
    for id in (0..n).step_by((n / 50) as usize) {
        assert_eq!(tagged_row(id, "big").await, "big");
    }
    RUNS.load(Ordering::Relaxed) - before
}

async fn invalidation_table(connection: &mut ConnectionManager) {
    println!(
        "invalidating the N entries of one tag: median of {INVALIDATION_ROUNDS} interleaved rounds"
    );
    println!(
        "  {:>7}  {:<15} {:>10} {:>9} {:>10} {:>14}",
        "N", "approach", "wall ms", "ratio", "commands", "longest cmd ms"
    );
    for n in SIZES {
        let mut results: Vec<Vec<Invalidation>> = APPROACHES.iter().map(|_| Vec::new()).collect();
        for round in 0..INVALIDATION_ROUNDS {
            for offset in 0..APPROACHES.len() {
                let approach = (round + offset) % APPROACHES.len();
                set_up(approach, n, connection).await;
                if approach == 0 {
                    assert_eq!(sampled_runs(n).await, 0, "sampled entries hit before");
                }
                results[approach].push(invalidate(approach, connection).await);
                if approach == 0 {
                    let sampled = (0..n).step_by((n / 50) as usize).count() as u32;
                    assert_eq!(sampled_runs(n).await, sampled, "and all miss after");
                }
            }
        }
        let medians: Vec<Invalidation> = results
            .into_iter()
            .map(|mut rounds| {
                rounds.sort_by_key(|r| r.wall);
                rounds.swap_remove(rounds.len() / 2)
            })
            .collect();
        let base = medians[0].wall.as_secs_f64();
        for (name, result) in APPROACHES.iter().zip(&medians) {
            println!(
                "  {:>7}  {:<15} {:>10.3} {:>9} {:>10} {:>14.3}",
                n,
                name,
                result.wall.as_secs_f64() * 1e3,
                ratio(result.wall.as_secs_f64(), base),
                result.commands,
                result.longest.as_secs_f64() * 1e3
            );
        }
    }
    println!();
}

#[derive(Clone, Copy)]
enum Reader {
    ByHand,
    Tags0,
    InvalidateAll,
    Tags1,
    Tags3,
    Tags3Tier,
}

const READERS: [(Reader, &str); 6] = [
    (Reader::ByHand, "redis-rs GET by hand"),
    (Reader::Tags0, "redis-memo, no tags"),
    (Reader::InvalidateAll, "redis-memo, invalidate_all"),
    (Reader::Tags1, "redis-memo, 1 tag"),
    (Reader::Tags3, "redis-memo, 3 tags"),
    (Reader::Tags3Tier, "redis-memo, 3 tags, tier"),
];

impl Reader {
    async fn get(self, connection: &ConnectionManager) -> User {
        self.get_id(connection, 1).await
    }

    async fn get_id(self, connection: &ConnectionManager, id: u64) -> User {
        match self {
            Reader::ByHand => {
                let mut connection = connection.clone();
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg(format!("byhand:user:{id}"))
                    .query_async(&mut connection)
                    .await
                    .unwrap();
                bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                    .unwrap()
                    .0
            }
            Reader::Tags0 => user_0_tags(id).await,
            Reader::InvalidateAll => user_invalidate_all(id).await,
            Reader::Tags1 => user_1_tag(id, 7).await,
            Reader::Tags3 => user_3_tags(id, 7, 3).await,
            Reader::Tags3Tier => user_3_tags_tier(id, 7, 3).await,
        }
    }
}

const ROUNDS: usize = 30;
const CALLS_PER_ROUND: usize = 300;

async fn hit_table(connection: &mut ConnectionManager) {
    let mut pipe = redis::pipe();
    for id in (1..2).chain(10_000..10_000 + TASKS) {
        let bytes =
            bincode::serde::encode_to_vec(load_user(id), bincode::config::standard()).unwrap();
        pipe.cmd("SET")
            .arg(format!("byhand:user:{id}"))
            .arg(bytes)
            .ignore();
    }
    let () = pipe.query_async(connection).await.unwrap();
    let mut samples: Vec<Samples> = READERS.iter().map(|_| Samples::default()).collect();
    let misses_before = misses();
    for (reader, _) in READERS {
        reader.get(connection).await; // warm, and store redis-memo's entries
    }
    for round in 0..ROUNDS {
        for offset in 0..READERS.len() {
            let index = (round + offset) % READERS.len();
            for _ in 0..CALLS_PER_ROUND {
                let started = Instant::now();
                std::hint::black_box(READERS[index].0.get(connection).await);
                samples[index].0.push(started.elapsed().as_nanos() as u64);
            }
        }
    }
    assert_eq!(
        misses() - misses_before,
        READERS.len() as u64 - 1,
        "every measured call was a hit"
    );
    println!(
        "hit latency by number of tags: {ROUNDS} rounds x {CALLS_PER_ROUND} sequential calls each"
    );
    println!(
        "  {:<27} {:>8} {:>8} {:>9} {:>9} {:>13}",
        "", "p50 µs", "p99 µs", "p50 ratio", "p99 ratio", "p50 vs 0 tags"
    );
    let quantiles: Vec<(f64, f64)> = samples
        .iter_mut()
        .map(|s| (s.quantile(0.5), s.quantile(0.99)))
        .collect();
    let (base, untagged) = (quantiles[0], quantiles[1]);
    for ((_, name), (p50, p99)) in READERS.iter().zip(&quantiles) {
        println!(
            "  {:<27} {:>8.1} {:>8.1} {:>9} {:>9} {:>13}",
            name,
            p50,
            p99,
            ratio(*p50, base.0),
            ratio(*p99, base.1),
            ratio(*p50, untagged.0)
        );
    }
    println!();

    let shared = connection.clone();
    let rates = common::throughput_and_cpu(READERS.len(), move |reader, task| {
        let connection = shared.clone();
        async move {
            std::hint::black_box(READERS[reader].0.get_id(&connection, 10_000 + task).await);
        }
    })
    .await;
    println!(
        "hit throughput by number of tags: {TASKS} tasks x {} calls (one key per task), median of {} rounds",
        common::CALLS_PER_TASK,
        common::THROUGHPUT_ROUNDS
    );
    println!(
        "  {:<27} {:>16} {:>9} {:>13} {:>17}",
        "", "", "ratio", "vs 0 tags", "bench CPU µs/call"
    );
    for ((_, name), rate) in READERS.iter().zip(&rates) {
        println!(
            "  {:<27} {:>10.0} calls/s {:>9} {:>13} {:>17}",
            name,
            rate.per_second,
            ratio(rate.per_second, rates[0].per_second),
            ratio(rate.per_second, rates[1].per_second),
            rate.cpu_us_per_call
                .map_or_else(|| "n/a".to_owned(), |cpu| format!("{cpu:.2}"))
        );
    }
}

fn main() {
    common::runtime().block_on(async {
        let server = RedisServer::start().expect("redis-server (apt-get install -y redis-server)");
        let client = redis::Client::open(server.url()).unwrap();
        let mut connection = ConnectionManager::new(client).await.unwrap();
        CACHE
            .set(
                Cache::builder()
                    .redis_url(server.url())
                    .namespace("memo")
                    .build()
                    .unwrap(),
            )
            .unwrap();
        let tier = Cache::builder()
            .redis_url(server.url())
            .namespace("tier")
            .local_capacity(64 * 1024 * 1024)
            .build()
            .unwrap();
        tier.ping().await.unwrap(); // the tier's connection is up
        TIER_CACHE.set(tier).unwrap();
        println!(
            "redis-memo tags benchmark: one local redis-server, Tokio runtime with 2 workers\n"
        );
        invalidation_table(&mut connection).await;
        let () = redis::cmd("FLUSHALL")
            .query_async(&mut connection)
            .await
            .unwrap();
        hit_table(&mut connection).await;
    });
}
