//! Batch reads, side by side on one local `redis-server`: a `#[redis_cached_batch]` of 100
//! keys against one single hit, 100 sequential single calls and 100 concurrent ones, all
//! hits; and a batch of 100 keys of which 10 miss (invalidated before each sample, outside
//! the timing; the loader answers at once).
//!
//! Run: `cargo bench -p redis-memo-benches --bench batch`.

mod common;

use common::{Samples, User, load_user, ratio};
use redis_memo::{Cache, redis_cached, redis_cached_batch};
use redis_memo_testkit::RedisServer;
use std::collections::HashMap;
use std::time::Instant;

const KEYS: u64 = 100;
const MISSES: u64 = 10;
const ROUNDS: usize = 30;
const CALLS_PER_ROUND: usize = 20;

#[redis_cached(ttl = "10m", key = "user:<id>", cache = cache)]
async fn user(id: u64, #[cache(skip)] cache: &Cache) -> User {
    load_user(id)
}

#[redis_cached_batch(user(*id) for id in ids, cache = cache)]
async fn users(ids: &[u64], cache: &Cache) -> Result<HashMap<u64, User>, String> {
    Ok(ids.iter().map(|id| (*id, load_user(*id))).collect())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Contender {
    OneHit,
    Batch,
    Sequential,
    Concurrent,
    BatchWithMisses,
}

const CONTENDERS: [Contender; 5] = [
    Contender::OneHit,
    Contender::Batch,
    Contender::Sequential,
    Contender::Concurrent,
    Contender::BatchWithMisses,
];

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::OneHit => "one single hit (baseline)",
            Contender::Batch => "batch of 100 hits",
            Contender::Sequential => "100 sequential single hits",
            Contender::Concurrent => "100 concurrent single hits",
            Contender::BatchWithMisses => "batch of 100, 10 misses",
        }
    }

    /// Untimed preparation of one sample.
    async fn prepare(self, cache: &Cache, sample: u64) {
        if self == Contender::BatchWithMisses {
            // A different tenth each time, so every sample misses exactly ten keys.
            let first = (sample * MISSES) % KEYS;
            let missing: Vec<u64> = (first..first + MISSES).collect();
            invalidate_user_many(missing, cache).await.unwrap();
        }
    }

    async fn run(self, cache: &Cache, ids: &[u64]) {
        match self {
            Contender::OneHit => {
                std::hint::black_box(user(1, cache).await);
            }
            Contender::Batch | Contender::BatchWithMisses => {
                let got = users(ids, cache).await.unwrap();
                assert_eq!(got.len(), ids.len());
            }
            Contender::Sequential => {
                for id in ids {
                    std::hint::black_box(user(*id, cache).await);
                }
            }
            Contender::Concurrent => {
                let calls = ids.iter().map(|id| user(*id, cache));
                std::hint::black_box(futures_util::future::join_all(calls).await);
            }
        }
    }
}

fn main() {
    common::runtime().block_on(async {
        let server = RedisServer::start().expect("redis-server (apt-get install -y redis-server)");
        let cache = Cache::builder()
            .redis_url(server.url())
            .namespace("batch")
            .build()
            .unwrap();
        cache.ping().await.unwrap();
        let ids: Vec<u64> = (0..KEYS).collect();
        users(&ids, &cache).await.unwrap();
        cache.writes_done().await;

        let mut samples: Vec<Samples> = CONTENDERS.iter().map(|_| Samples::default()).collect();
        let mut sample = 0;
        for round in 0..ROUNDS {
            for offset in 0..CONTENDERS.len() {
                let index = (round + offset) % CONTENDERS.len();
                let contender = CONTENDERS[index];
                for _ in 0..CALLS_PER_ROUND {
                    sample += 1;
                    contender.prepare(&cache, sample).await;
                    let started = Instant::now();
                    contender.run(&cache, &ids).await;
                    samples[index].0.push(started.elapsed().as_nanos() as u64);
                    // Stores behind the call are not part of the next sample.
                    cache.writes_done().await;
                }
            }
        }
        let p50: Vec<f64> = samples.iter_mut().map(|s| s.quantile(0.5)).collect();
        let p99: Vec<f64> = samples.iter_mut().map(|s| s.quantile(0.99)).collect();
        println!(
            "batch reads, one local redis-server: {ROUNDS} interleaved rounds x {CALLS_PER_ROUND} samples"
        );
        println!(
            "  {:<30} {:>9} {:>9} {:>12}",
            "contender", "p50 µs", "p99 µs", "p50 / one hit"
        );
        for (index, contender) in CONTENDERS.iter().enumerate() {
            println!(
                "  {:<30} {:>9.1} {:>9.1} {:>12}",
                contender.name(),
                p50[index],
                p99[index],
                ratio(p50[index], p50[0])
            );
        }
        println!(
            "  batch of 100 hits: {} of one hit; {:.1}x faster than sequential, {:.1}x faster than concurrent",
            ratio(p50[1], p50[0]),
            p50[2] / p50[1],
            p50[3] / p50[1]
        );
        let stats = cache.stats();
        println!(
            "  (over the run: {} hits, {} misses, {} fills)",
            stats.hits, stats.misses, stats.fills
        );
    });
}
