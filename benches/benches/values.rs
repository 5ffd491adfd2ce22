//! How values are stored, side by side: a 10 KB JSON-like value (a page of 190 rows).
//!
//! 1. The compression codec, without Redis: LZ4 (`lz4_flex`, what `compress_above` uses)
//!    against zstd at levels 1 and 3: stored size and the time to compress and decompress.
//! 2. On one local `redis-server`, four caches: bincode plain, bincode with
//!    `compress_above(1024)`, MessagePack plain, MessagePack compressed. Bytes stored per
//!    entry (`STRLEN`) and hit latency, rounds interleaved, as ratios to bincode plain.
//!
//! Run: `cargo bench -p redis-memo-benches --bench values`.

mod common;

use common::{Samples, ratio};
use redis_memo::{Cache, Codec, redis_cached};
use redis_memo_testkit::RedisServer;
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: u64,
    name: String,
    email: String,
    role: String,
    team: String,
    active: bool,
    score: u32,
}

/// About 10 KB in bincode (and 17 KB in MessagePack), like a page of an API's JSON.
fn page(id: u64) -> Vec<Row> {
    (0..ROWS)
        .map(|n| Row {
            id: id * 1000 + n,
            name: format!("user number {n}"),
            email: format!("user{n}@example.com"),
            role: ["reader", "writer", "admin"][n as usize % 3].into(),
            team: ["platform", "payments", "search", "growth"][n as usize % 4].into(),
            active: n % 7 != 0,
            score: (n * 37 % 1000) as u32,
        })
        .collect()
}

#[redis_cached(ttl = "10m", key = "page:<id>", cache = cache)]
async fn cached_page(id: u64, #[cache(skip)] cache: &Cache) -> Vec<Row> {
    page(id)
}

const ROWS: u64 = 190;
const CODEC_ROUNDS: usize = 2_000;

/// Median time of `work`, in microseconds.
fn median_us(mut work: impl FnMut()) -> f64 {
    let mut samples = Samples::default();
    for _ in 0..CODEC_ROUNDS {
        let started = Instant::now();
        work();
        samples.0.push(started.elapsed().as_nanos() as u64);
    }
    samples.quantile(0.5)
}

fn compression_codecs() {
    let plain = bincode::serde::encode_to_vec(page(1), bincode::config::standard()).unwrap();
    println!(
        "compression of a {}-byte bincode page ({ROWS} rows), {CODEC_ROUNDS} rounds each, medians:",
        plain.len()
    );
    println!(
        "  {:<12} {:>8} {:>8} {:>14} {:>16}",
        "codec", "bytes", "ratio", "compress µs", "decompress µs"
    );
    let lz4 = lz4_flex::block::compress(&plain);
    let row = |name: &str, packed: usize, compress: f64, decompress: f64| {
        println!(
            "  {name:<12} {packed:>8} {:>8} {compress:>14.1} {decompress:>16.1}",
            ratio(packed as f64, plain.len() as f64)
        );
    };
    row(
        "lz4_flex",
        lz4.len(),
        median_us(|| {
            std::hint::black_box(lz4_flex::block::compress(&plain));
        }),
        median_us(|| {
            std::hint::black_box(lz4_flex::block::decompress(&lz4, plain.len()).unwrap());
        }),
    );
    for level in [1, 3] {
        let packed = zstd::bulk::compress(&plain, level).unwrap();
        row(
            &format!("zstd -{level}"),
            packed.len(),
            median_us(|| {
                std::hint::black_box(zstd::bulk::compress(&plain, level).unwrap());
            }),
            median_us(|| {
                std::hint::black_box(zstd::bulk::decompress(&packed, plain.len()).unwrap());
            }),
        );
    }
}

struct Contender {
    name: &'static str,
    cache: Cache,
}

const ROUNDS: usize = 30;
const CALLS_PER_ROUND: usize = 200;

async fn stored_and_hits(server: &RedisServer) {
    let build = |namespace: &str, codec: Codec, compress: bool| {
        let builder = Cache::builder()
            .redis_url(server.url())
            .namespace(namespace)
            .codec(codec);
        let builder = if compress {
            builder.compress_above(1024)
        } else {
            builder
        };
        builder.build().unwrap()
    };
    let contenders = [
        Contender {
            name: "bincode, plain (baseline)",
            cache: build("plain", Codec::Bincode, false),
        },
        Contender {
            name: "bincode, compress_above(1024)",
            cache: build("lz4", Codec::Bincode, true),
        },
        Contender {
            name: "MessagePack, plain",
            cache: build("msgpack", Codec::MessagePack, false),
        },
        Contender {
            name: "MessagePack, compress_above(1024)",
            cache: build("msgpack_lz4", Codec::MessagePack, true),
        },
    ];
    let mut connection = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut sizes = Vec::new();
    for contender in &contenders {
        std::hint::black_box(cached_page(1, &contender.cache).await);
        contender.cache.writes_done().await;
        let key = contender.cache.full_key(&cached_page_cache_key(1));
        let stored: i64 = redis::cmd("STRLEN")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        sizes.push(stored);
    }
    let mut samples: Vec<Samples> = contenders.iter().map(|_| Samples::default()).collect();
    for round in 0..ROUNDS {
        for offset in 0..contenders.len() {
            let index = (round + offset) % contenders.len();
            for _ in 0..CALLS_PER_ROUND {
                let started = Instant::now();
                std::hint::black_box(cached_page(1, &contenders[index].cache).await);
                samples[index].0.push(started.elapsed().as_nanos() as u64);
            }
        }
    }
    let p50: Vec<f64> = samples.iter_mut().map(|s| s.quantile(0.5)).collect();
    let p99: Vec<f64> = samples.iter_mut().map(|s| s.quantile(0.99)).collect();
    println!();
    println!(
        "one entry of the same page per cache, one local redis-server; hit latency over \
         {ROUNDS} interleaved rounds of {CALLS_PER_ROUND} calls:"
    );
    println!(
        "  {:<36} {:>8} {:>8} {:>9} {:>9} {:>8}",
        "cache", "bytes", "ratio", "p50 µs", "p99 µs", "p50 ratio"
    );
    for (index, contender) in contenders.iter().enumerate() {
        println!(
            "  {:<36} {:>8} {:>8} {:>9.1} {:>9.1} {:>8}",
            contender.name,
            sizes[index],
            ratio(sizes[index] as f64, sizes[0] as f64),
            p50[index],
            p99[index],
            ratio(p50[index], p50[0])
        );
    }
}

fn main() {
    compression_codecs();
    common::runtime().block_on(async {
        let server = RedisServer::start().expect("redis-server (apt-get install -y redis-server)");
        stored_and_hits(&server).await;
    });
}
