//! Cache-aside, side by side on one local `redis-server`: redis-memo's `#[redis_cached]`
//! against (a) the hand-written redis-rs baseline (ConnectionManager, `GET` + bincode decode,
//! `SET … PX` on a miss) and (b) the `cached` crate's `#[concurrent_cached]` Redis store.
//!
//! Run: `cargo bench -p redis-memo-benches`. Rounds of the contenders are interleaved so that
//! machine noise lands on all of them alike; results are reported as ratios to the baseline.

mod common;

use cached::AsyncRedisCache;
use cached::macros::concurrent_cached;
use common::{CALLS_PER_TASK, Samples, TASKS, THROUGHPUT_ROUNDS, User, load_user, ratio};
use redis::aio::ConnectionManager;
use redis_memo::{Cache, redis_cached};
use redis_memo_testkit::RedisServer;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(600);

static REDIS_URL: OnceLock<String> = OnceLock::new();
static MEMO_CACHE: OnceLock<Cache> = OnceLock::new();
/// A cache with an in-process tier (`local_capacity`), for `local` functions.
static MEMO_LOCAL_CACHE: OnceLock<Cache> = OnceLock::new();

#[derive(Debug, Clone)]
struct BenchError(String);

// (a) the baseline most services hand-write.
#[derive(Clone)]
struct Baseline {
    connection: ConnectionManager,
}

impl Baseline {
    async fn get_user(&self, id: u64) -> Result<User, BenchError> {
        let key = format!("baseline:user:{id}");
        let mut connection = self.connection.clone();
        let found: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .map_err(err)?;
        if let Some(bytes) = found
            && let Ok((user, _)) =
                bincode::serde::decode_from_slice::<User, _>(&bytes, bincode::config::standard())
        {
            return Ok(user);
        }
        let user = load_user(id);
        let bytes =
            bincode::serde::encode_to_vec(&user, bincode::config::standard()).map_err(err)?;
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(bytes)
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .query_async(&mut connection)
            .await
            .map_err(err)?;
        Ok(user)
    }
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

// redis-memo.
#[redis_cached(ttl = "10m", key = "user:<id>", cache = MEMO_CACHE.get().expect("cache set up"))]
async fn memo_get_user(id: u64) -> Result<User, BenchError> {
    Ok(load_user(id))
}

// redis-memo with its in-process tier: a hit is answered by this process's copy.
#[redis_cached(ttl = "10m", key = "user:<id>", local, cache = MEMO_LOCAL_CACHE.get().expect("cache set up"))]
async fn memo_local_get_user(id: u64) -> Result<User, BenchError> {
    Ok(load_user(id))
}

// (b) the cached crate.
#[concurrent_cached(
    map_error = r##"|e| BenchError(format!("{e:?}"))"##,
    ty = "cached::AsyncRedisCache<u64, User>",
    create = r##" {
        AsyncRedisCache::builder("cachedcrate")
            .ttl(TTL)
            .connection_string(REDIS_URL.get().expect("url set up"))
            .connection_manager(true)
            .build()
            .await
            .expect("cached crate's redis store")
    } "##
)]
async fn cached_crate_get_user(id: u64) -> Result<User, BenchError> {
    Ok(load_user(id))
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Contender {
    Baseline,
    RedisMemo,
    RedisMemoLocal,
    CachedCrate,
}

const CONTENDERS: [Contender; 4] = [
    Contender::Baseline,
    Contender::RedisMemo,
    Contender::RedisMemoLocal,
    Contender::CachedCrate,
];

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::Baseline => "redis-rs by hand (a)",
            Contender::RedisMemo => "redis-memo",
            Contender::RedisMemoLocal => "redis-memo, local (in-process)",
            Contender::CachedCrate => "cached #[concurrent_cached] (b)",
        }
    }

    async fn get(self, baseline: &Baseline, id: u64) -> User {
        let result = match self {
            Contender::Baseline => baseline.get_user(id).await,
            Contender::RedisMemo => memo_get_user(id).await,
            Contender::RedisMemoLocal => memo_local_get_user(id).await,
            Contender::CachedCrate => cached_crate_get_user(id).await,
        };
        result.unwrap_or_else(|error| panic!("benchmark call failed: {}", error.0))
    }

    fn redis_key(self, id: u64) -> String {
        match self {
            Contender::Baseline => format!("baseline:user:{id}"),
            Contender::RedisMemo => MEMO_CACHE
                .get()
                .unwrap()
                .full_key(&memo_get_user_cache_key(id)),
            Contender::RedisMemoLocal => MEMO_LOCAL_CACHE
                .get()
                .unwrap()
                .full_key(&memo_local_get_user_cache_key(id)),
            // The cached crate adds a namespace of its own in front of its prefix.
            Contender::CachedCrate => format!("*cachedcrate*{id}"),
        }
    }
}

const ROUNDS: usize = 30;
const CALLS_PER_ROUND: usize = 300;

async fn latency(baseline: &Baseline, hit: bool) -> Vec<(Contender, f64, f64)> {
    static NEXT_COLD_ID: AtomicU64 = AtomicU64::new(1_000_000);
    let mut samples: Vec<Samples> = CONTENDERS.iter().map(|_| Samples::default()).collect();
    for contender in CONTENDERS {
        contender.get(baseline, 1).await; // warm connections and the hot key
    }
    for round in 0..ROUNDS {
        // Rotate the order each round so no contender always runs first.
        for offset in 0..CONTENDERS.len() {
            let index = (round + offset) % CONTENDERS.len();
            let contender = CONTENDERS[index];
            for _ in 0..CALLS_PER_ROUND {
                let id = if hit {
                    1
                } else {
                    NEXT_COLD_ID.fetch_add(1, Ordering::Relaxed)
                };
                let started = Instant::now();
                std::hint::black_box(contender.get(baseline, id).await);
                samples[index].0.push(started.elapsed().as_nanos() as u64);
            }
        }
    }
    CONTENDERS
        .iter()
        .zip(samples.iter_mut())
        .map(|(c, s)| (*c, s.quantile(0.5), s.quantile(0.99)))
        .collect()
}

/// Median calls per second over interleaved rounds of concurrent tasks, and this process's CPU
/// per call.
async fn throughput(baseline: &Baseline) -> Vec<(Contender, common::Rate)> {
    let baseline = baseline.clone();
    let rates = common::throughput_and_cpu(CONTENDERS.len(), move |contender, task| {
        let baseline = baseline.clone();
        async move {
            std::hint::black_box(CONTENDERS[contender].get(&baseline, 10_000 + task).await);
        }
    })
    .await;
    CONTENDERS.into_iter().zip(rates).collect()
}

async fn bytes_per_entry(server: &RedisServer, baseline: &Baseline) -> Vec<(Contender, i64, i64)> {
    let mut connection = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut rows = Vec::new();
    for contender in CONTENDERS {
        contender.get(baseline, 424_242).await;
        // redis-memo returns once its fill is sent; STRLEN below is on another connection.
        for cache in [&MEMO_CACHE, &MEMO_LOCAL_CACHE] {
            cache.get().expect("cache set up").writes_done().await;
        }
        let mut key = contender.redis_key(424_242);
        if key.starts_with('*') {
            let (_, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(0)
                .arg("MATCH")
                .arg(&key)
                .arg("COUNT")
                .arg(100_000)
                .query_async(&mut connection)
                .await
                .unwrap();
            key = found.into_iter().next().expect("the cached crate's entry");
        }
        let value_len: i64 = redis::cmd("STRLEN")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        let memory: i64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        assert!(
            value_len > 0,
            "{} stored nothing under {key}",
            contender.name()
        );
        rows.push((contender, value_len, memory));
    }
    rows
}

fn main() {
    common::runtime().block_on(async {
        let server = RedisServer::start().expect("redis-server (apt-get install -y redis-server)");
        REDIS_URL.set(server.url()).unwrap();
        let client = redis::Client::open(server.url()).unwrap();
        let baseline = Baseline { connection: ConnectionManager::new(client).await.unwrap() };
        MEMO_CACHE.set(Cache::builder().redis_url(server.url()).namespace("memo").build().unwrap()).unwrap();
        let local = Cache::builder()
            .redis_url(server.url())
            .namespace("memolocal")
            .local_capacity(64 * 1024 * 1024)
            .build()
            .unwrap();
        local.ping().await.unwrap(); // the tier's connection is up
        MEMO_LOCAL_CACHE.set(local).unwrap();

        println!("redis-memo cache-aside benchmark: one local redis-server, Tokio runtime with 2 workers");
        println!("(rounds interleaved; ratios are to the hand-written redis-rs baseline (a))\n");

        for (title, hit) in [("hit latency", true), ("miss latency (GET, compute, SET)", false)] {
            let rows = latency(&baseline, hit).await;
            let base = rows[0];
            println!("{title}: {ROUNDS} rounds x {CALLS_PER_ROUND} sequential calls each");
            println!("  {:<34} {:>10} {:>10} {:>9} {:>9}", "", "p50 µs", "p99 µs", "p50 ratio", "p99 ratio");
            for (contender, p50, p99) in &rows {
                println!(
                    "  {:<34} {:>10.2} {:>10.2} {:>9} {:>9}",
                    contender.name(),
                    p50,
                    p99,
                    ratio(*p50, base.1),
                    ratio(*p99, base.2)
                );
            }
            if hit {
                let (redis_hit, local_hit) = (rows[1].1, rows[2].1);
                println!("  in-process tier vs redis-memo's Redis hit: p50 {:.0}x faster", redis_hit / local_hit);
            }
            println!();
        }

        let rows = throughput(&baseline).await;
        let base = rows[0].1.per_second;
        println!("hit throughput: {TASKS} tasks x {CALLS_PER_TASK} calls (one key per task), median of {THROUGHPUT_ROUNDS} rounds");
        println!("  {:<34} {:>16} {:>9} {:>17}", "", "", "ratio", "bench CPU µs/call");
        for (contender, rate) in &rows {
            let cpu = rate.cpu_us_per_call.map_or_else(|| "n/a".to_owned(), |cpu| format!("{cpu:.2}"));
            println!("  {:<34} {:>10.0} calls/s {:>9} {:>17}", contender.name(), rate.per_second, ratio(rate.per_second, base), cpu);
        }
        println!();

        let rows = bytes_per_entry(&server, &baseline).await;
        let (base_len, base_memory) = (rows[0].1 as f64, rows[0].2 as f64);
        println!("bytes stored per entry (one User)");
        println!("  {:<34} {:>8} {:>8} {:>14} {:>8}", "", "value", "ratio", "MEMORY USAGE", "ratio");
        for (contender, len, memory) in &rows {
            println!(
                "  {:<34} {:>8} {:>8} {:>14} {:>8}",
                contender.name(),
                len,
                ratio(*len as f64, base_len),
                memory,
                ratio(*memory as f64, base_memory)
            );
        }
        println!();
        server_time_per_command(&server).await;
    });
}

/// What each command cost the server over the whole run (`INFO commandstats`): where a miss's
/// scripts (the lease, the fill) spend their time against a plain `SET`.
async fn server_time_per_command(server: &RedisServer) {
    let mut connection = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut connection)
        .await
        .unwrap();
    println!("server time per command, whole run (INFO commandstats)");
    for command in ["get", "mget", "set", "evalsha"] {
        let line = info
            .lines()
            .find(|line| line.starts_with(&format!("cmdstat_{command}:")));
        let field = |name: &str| {
            line.and_then(|line| {
                line.split([':', ','])
                    .find_map(|field| field.strip_prefix(name))
            })
            .unwrap_or("0")
            .to_owned()
        };
        println!(
            "  {command:<10} {:>12} calls {:>8} µs/call",
            field("calls="),
            field("usec_per_call=")
        );
    }
}
