//! What a Redis stall costs callers: a `redis-server` frozen with `SIGSTOP` for 10 s under
//! steady load, for a few operation timeouts and numbers of callers. Each caller calls cached
//! functions every 2 ms, as a service handling requests would; a call that reaches Redis during
//! the stall pays up to the operation timeout, a call the circuit breaker sends straight to the
//! function pays nothing. Reported: the calls that started during the stall, and the share of
//! them that paid most of the timeout (at least 80% of it).
//!
//! Run: `cargo bench -p redis-memo-benches` (with the other benchmarks).

mod common;

use common::{Samples, User, load_user};
use redis_memo::{Cache, redis_cached};
use redis_memo_testkit::RedisServer;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

const STALL: Duration = Duration::from_secs(10);
const KEYS: u64 = 50;
const PAUSE: Duration = Duration::from_millis(2);

#[redis_cached(ttl = "10m", key = "user:<id>", cache = cache)]
async fn user(id: u64, #[cache(skip)] cache: &Cache) -> User {
    load_user(id)
}

/// One variant: its calls that started during the stall, as (latency ns).
async fn stalled_calls(server: &mut RedisServer, op_timeout: Duration, tasks: usize) -> Vec<u64> {
    let cache = Cache::builder()
        .redis_url(server.url())
        .namespace(format!("outage-{}-{tasks}", op_timeout.as_millis()))
        .op_timeout(op_timeout)
        .build()
        .unwrap();
    for id in 0..KEYS {
        user(id, &cache).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let callers: Vec<_> = (0..tasks)
        .map(|task| {
            let (cache, stop) = (cache.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut calls = Vec::new();
                let mut id = task as u64;
                while !stop.load(SeqCst) {
                    let started = Instant::now();
                    let got = user(id % KEYS, &cache).await;
                    assert_eq!(got.id, id % KEYS);
                    calls.push((started - epoch, started.elapsed()));
                    id += 1;
                    tokio::time::sleep(PAUSE).await;
                }
                calls
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stall_from = epoch.elapsed();
    server.pause().unwrap();
    tokio::time::sleep(STALL).await;
    server.resume().unwrap();
    let stall_to = epoch.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, SeqCst);
    let mut stalled = Vec::new();
    for caller in callers {
        for (at, took) in caller.await.unwrap() {
            if at >= stall_from && at < stall_to {
                stalled.push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
            }
        }
    }
    stalled
}

fn main() {
    let runtime = common::runtime();
    let mut server = RedisServer::start().expect("redis-server");
    println!(
        "a {}s SIGSTOP stall under load; calls that started during it",
        STALL.as_secs()
    );
    println!(
        "{:>10} {:>6} {:>9} {:>13} {:>9} {:>9} {:>9}",
        "op timeout", "tasks", "calls", ">= 80% of it", "p50 µs", "p99 µs", "max µs"
    );
    for (op_timeout_ms, tasks) in [(100, 16), (250, 16), (100, 4)] {
        let op_timeout = Duration::from_millis(op_timeout_ms);
        let calls = runtime.block_on(stalled_calls(&mut server, op_timeout, tasks));
        let slow_from = u64::try_from((op_timeout * 8 / 10).as_nanos()).unwrap_or(u64::MAX);
        let slow = calls.iter().filter(|&&took| took >= slow_from).count();
        let count = calls.len();
        let mut samples = Samples(calls);
        println!(
            "{:>8}ms {:>6} {:>9} {:>6} {:>5.2}% {:>9.1} {:>9.1} {:>9.1}",
            op_timeout_ms,
            tasks,
            count,
            slow,
            100.0 * slow as f64 / count.max(1) as f64,
            samples.quantile(0.5),
            samples.quantile(0.99),
            samples.quantile(1.0),
        );
    }
}
