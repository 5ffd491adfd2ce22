//! The in-process tier's coherence window: how long after another process's invalidation has
//! returned this process still answers from its old copy. Two caches on one local
//! `redis-server`, each with its own connections (as two processes would have): B holds a
//! copy of an entry, A invalidates it, and B calls the function in a loop (yielding the CPU
//! between calls) from the moment A's invalidation returned until a call is no longer
//! answered by its copy.
//!
//! Run: `cargo bench -p redis-memo-benches --bench local_tier`.

mod common;

use common::{Samples, User, load_user};
use redis_memo::{Cache, redis_cached};
use redis_memo_testkit::RedisServer;
use std::time::Instant;

const ROUNDS: usize = 500;

#[redis_cached(ttl = "10m", key = "user:<id>", local, cache = cache)]
async fn user(id: u64, #[cache(skip)] cache: &Cache) -> User {
    load_user(id)
}

fn tiered(url: String) -> Cache {
    Cache::builder()
        .redis_url(url)
        .namespace("window")
        .local_capacity(64 * 1024 * 1024)
        .build()
        .unwrap()
}

fn main() {
    common::runtime().block_on(async {
        let server = RedisServer::start().expect("redis-server (apt-get install -y redis-server)");
        let (a, b) = (tiered(server.url()), tiered(server.url()));
        a.ping().await.unwrap();
        b.ping().await.unwrap();
        let mut window = Samples::default();
        let mut calls_in_window = Vec::with_capacity(ROUNDS);
        for round in 0..ROUNDS {
            let id = round as u64;
            // A miss stores the entry, the next read keeps a copy, the third is answered by it.
            for _ in 0..3 {
                std::hint::black_box(user(id, &b).await);
            }
            let held = b.stats().local_hits;
            std::hint::black_box(user(id, &b).await);
            assert_eq!(b.stats().local_hits, held + 1, "B answers from its copy");

            invalidate_user(id, &a).await.unwrap();
            let returned = Instant::now();
            let mut calls = 0u32;
            let dropped = loop {
                let started = Instant::now();
                let before = b.stats().local_hits;
                std::hint::black_box(user(id, &b).await);
                calls += 1;
                if b.stats().local_hits == before {
                    break started;
                }
                // Lets the threads that read the invalidation have the core: on a 2-core
                // machine shared with redis-server, a loop that never yields measures the
                // OS scheduler, not the cache.
                std::thread::yield_now();
            };
            window
                .0
                .push(dropped.duration_since(returned).as_nanos() as u64);
            calls_in_window.push(calls - 1);
        }
        calls_in_window.sort_unstable();
        println!("redis-memo in-process tier: coherence window, one local redis-server, two caches with their own connections");
        println!(
            "from A's invalidate_* returning to B's first call not answered by its old copy, {ROUNDS} rounds:"
        );
        println!(
            "  p50 {:.1} µs   p99 {:.1} µs   max {:.1} µs   (B's calls still answered by the old copy: p50 {}, max {})",
            window.quantile(0.5),
            window.quantile(0.99),
            window.quantile(1.0),
            calls_in_window[ROUNDS / 2],
            calls_in_window[ROUNDS - 1]
        );
    });
}
