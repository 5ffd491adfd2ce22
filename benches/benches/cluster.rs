//! Redis Cluster against one server, side by side in one run: hit latency and 64-task hit
//! throughput of a hand-written redis-rs `GET` and of redis-memo (untagged, and with 3 tags,
//! whose version keys live in other slots), on a local `redis-server` and on a local cluster
//! of 3 primaries and 3 replicas; on the cluster also with an in-process tier (tag tokens
//! from it, and a `local` hit); then a stampede on the cluster.
//!
//! Run: `cargo bench -p redis-memo-benches --bench cluster` (or every benchmark with
//! `cargo bench -p redis-memo-benches`).

mod common;

use common::{CALLS_PER_TASK, Samples, TASKS, THROUGHPUT_ROUNDS, User, load_user, ratio};
use redis::aio::ConnectionLike;
use redis_memo::{Cache, redis_cached};
use redis_memo_testkit::{RedisCluster, RedisServer};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
struct BenchError(String);

#[redis_cached(ttl = "10m", key = "user:<id>", cache = cache)]
async fn memo_get_user(id: u64, #[cache(skip)] cache: &Cache) -> Result<User, BenchError> {
    Ok(load_user(id))
}

#[redis_cached(ttl = "10m", key = "tagged:<id>", cache = cache, tags = ["org:<id>", "team:<id>", "region:<id>"])]
async fn memo_get_tagged(id: u64, #[cache(skip)] cache: &Cache) -> Result<User, BenchError> {
    Ok(load_user(id))
}

#[redis_cached(ttl = "10m", key = "local:<id>", cache = cache, local = "10m")]
async fn memo_get_local(id: u64, #[cache(skip)] cache: &Cache) -> Result<User, BenchError> {
    Ok(load_user(id))
}

/// A hand-written `GET` + decode (the entries are written first), on any connection.
async fn hand_written_get<C: ConnectionLike>(connection: &mut C, id: u64) -> User {
    let bytes: Vec<u8> = redis::cmd("GET")
        .arg(format!("baseline:{{user:{id}}}"))
        .query_async(connection)
        .await
        .expect("baseline GET");
    bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
        .expect("baseline entry")
        .0
}

async fn write_baseline<C: ConnectionLike>(connection: &mut C, ids: impl Iterator<Item = u64>) {
    for id in ids {
        let bytes =
            bincode::serde::encode_to_vec(load_user(id), bincode::config::standard()).unwrap();
        let () = redis::cmd("SET")
            .arg(format!("baseline:{{user:{id}}}"))
            .arg(bytes)
            .query_async(connection)
            .await
            .unwrap();
    }
}

#[derive(Clone)]
struct Setup {
    single: redis::aio::MultiplexedConnection,
    cluster: redis::cluster_async::ClusterConnection,
    single_cache: Cache,
    cluster_cache: Cache,
    /// On the cluster, with an in-process tier.
    cluster_tier_cache: Cache,
}

const CONTENDERS: [&str; 8] = [
    "one server: redis-rs GET (a)",
    "one server: redis-memo",
    "one server: redis-memo, 3 tags",
    "cluster: redis-rs GET",
    "cluster: redis-memo",
    "cluster: redis-memo, 3 tags",
    "cluster: redis-memo, 3 tags, tier",
    "cluster: redis-memo, local (L1 hit)",
];

impl Setup {
    async fn call(&self, contender: usize, id: u64) -> User {
        match contender {
            0 => Ok(hand_written_get(&mut self.single.clone(), id).await),
            1 => memo_get_user(id, &self.single_cache).await,
            2 => memo_get_tagged(id, &self.single_cache).await,
            3 => Ok(hand_written_get(&mut self.cluster.clone(), id).await),
            4 => memo_get_user(id, &self.cluster_cache).await,
            5 => memo_get_tagged(id, &self.cluster_cache).await,
            6 => memo_get_tagged(id, &self.cluster_tier_cache).await,
            _ => memo_get_local(id, &self.cluster_tier_cache).await,
        }
        .map_err(|error: BenchError| error.0)
        .expect("benchmark call")
    }
}

const ROUNDS: usize = 30;
const CALLS_PER_ROUND: usize = 300;

async fn latency(setup: &Setup) -> Vec<(f64, f64)> {
    let mut samples: Vec<Samples> = CONTENDERS.iter().map(|_| Samples::default()).collect();
    for round in 0..ROUNDS {
        for offset in 0..CONTENDERS.len() {
            let contender = (round + offset) % CONTENDERS.len();
            for _ in 0..CALLS_PER_ROUND {
                let started = Instant::now();
                std::hint::black_box(setup.call(contender, 1).await);
                samples[contender]
                    .0
                    .push(started.elapsed().as_nanos() as u64);
            }
        }
    }
    samples
        .iter_mut()
        .map(|samples| (samples.quantile(0.5), samples.quantile(0.99)))
        .collect()
}

/// A cold key, `callers` concurrent callers on each of `processes` caches (each with its own
/// connections, as separate processes would have), a 50 ms loader with `lock`.
#[redis_cached(ttl = "10m", key = "stampede:<round>", cache = cache, lock)]
async fn stampede_load(
    round: u32,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] runs: &AtomicU32,
) -> Result<u64, BenchError> {
    runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(u64::from(round))
}

async fn stampede(urls: &[String], processes: usize, callers: usize, round: u32) -> (u32, f64) {
    let caches: Vec<Cache> = (0..processes)
        .map(|_| {
            Cache::builder()
                .redis_cluster(urls.to_vec())
                .namespace("stampede")
                .build()
                .unwrap()
        })
        .collect();
    for cache in &caches {
        cache.ping().await.unwrap();
    }
    let runs = Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let calls: Vec<_> = caches
        .iter()
        .flat_map(|cache| (0..callers).map(move |_| cache.clone()))
        .map(|cache| {
            let runs = Arc::clone(&runs);
            tokio::spawn(async move {
                let value = stampede_load(round, &cache, &runs).await;
                assert_eq!(value.map_err(|e| e.0), Ok(u64::from(round)));
                started.elapsed()
            })
        })
        .collect();
    let mut last = Duration::ZERO;
    for call in calls {
        last = last.max(call.await.unwrap());
    }
    (runs.load(Ordering::SeqCst), last.as_secs_f64() * 1000.0)
}

fn main() {
    common::runtime().block_on(async {
        let server = RedisServer::start().expect("redis-server (apt-get install -y redis-server)");
        let cluster = RedisCluster::start().expect("redis-server and redis-cli");
        let mut single = server.client().get_multiplexed_async_connection().await.unwrap();
        let mut cluster_connection = cluster.client().get_async_connection().await.unwrap();
        write_baseline(&mut single, 0..TASKS + 1).await;
        write_baseline(&mut cluster_connection, 0..TASKS + 1).await;
        let setup = Setup {
            single,
            cluster: cluster_connection,
            single_cache: Cache::builder().redis_url(server.url()).build().unwrap(),
            cluster_cache: Cache::builder().redis_cluster(cluster.urls()).build().unwrap(),
            cluster_tier_cache: Cache::builder()
                .redis_cluster(cluster.urls())
                .local_capacity(64 * 1024 * 1024)
                .build()
                .unwrap(),
        };
        setup.cluster_tier_cache.ping().await.expect("the tier's connections");
        for contender in 0..CONTENDERS.len() {
            for id in 0..=TASKS {
                setup.call(contender, id).await; // warm connections and entries
            }
        }

        println!("redis-memo on Redis Cluster: one local redis-server and a local cluster (3 primaries, 3 replicas), Tokio with 2 workers");
        println!("(rounds interleaved; ratios are to the hand-written GET on one server (a))\n");

        let rows = latency(&setup).await;
        println!("hit latency: {ROUNDS} rounds x {CALLS_PER_ROUND} sequential calls each");
        println!("  {:<34} {:>10} {:>10} {:>9} {:>9}", "", "p50 µs", "p99 µs", "p50 ratio", "p99 ratio");
        for (name, (p50, p99)) in CONTENDERS.iter().zip(&rows) {
            println!("  {:<34} {:>10.1} {:>10.1} {:>9} {:>9}", name, p50, p99, ratio(*p50, rows[0].0), ratio(*p99, rows[0].1));
        }
        println!();

        let call_setup = setup.clone();
        let rates = common::throughput(CONTENDERS.len(), move |contender, task| {
            let setup = call_setup.clone();
            async move {
                std::hint::black_box(setup.call(contender, task).await);
            }
        })
        .await;
        println!("hit throughput: {TASKS} tasks x {CALLS_PER_TASK} calls (one key per task), median of {THROUGHPUT_ROUNDS} rounds");
        for (name, rate) in CONTENDERS.iter().zip(&rates) {
            println!("  {:<34} {:>10.0} calls/s {:>9}", name, rate, ratio(*rate, rates[0]));
        }
        println!(
            "  cluster / one server: redis-rs GET {}, redis-memo {}, redis-memo 3 tags {}",
            ratio(rates[3], rates[0]),
            ratio(rates[4], rates[1]),
            ratio(rates[5], rates[2])
        );
        println!(
            "  on the cluster, 3 tags / untagged: {} without a tier, {} with one",
            ratio(rates[5], rates[4]),
            ratio(rates[6], rates[4])
        );
        println!();

        const PROCESSES: usize = 4;
        const CALLERS: usize = 200;
        let mut results = Vec::new();
        for round in 0..5 {
            results.push(stampede(&cluster.urls(), PROCESSES, CALLERS, round).await);
        }
        let most_runs = results.iter().map(|(runs, _)| *runs).max().unwrap();
        let mut lasts: Vec<f64> = results.iter().map(|(_, last)| *last).collect();
        lasts.sort_by(f64::total_cmp);
        println!("stampede on the cluster: {PROCESSES} caches (own connections) x {CALLERS} callers on one cold key, loader 50 ms, lock; 5 rounds");
        println!("  loader runs (most in a round): {most_runs}   last caller has it (median): {:.1} ms", lasts[2]);
        assert_eq!(most_runs, 1, "the loader ran more than once in a round");
    });
}
