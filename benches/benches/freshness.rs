//! Caller latency through the expiry of a hot key whose body takes 200 ms, with and without
//! `stale`, on one local `redis-server`.
//!
//! Each round fills one key, moves the cache's clock past its ttl (a `ManualClock`: the
//! expiry happens at a known instant instead of a sleep), then 32 tasks call it every 2 ms
//! for 600 ms. Without `stale`, the callers that arrive after the expiry wait for the body
//! (coalesced on one computation); with `stale`, they get the old value at once while one
//! refresh runs in the background. Rounds of the two alternate.
//!
//! Run: `cargo bench -p redis-memo-benches` (with the other benchmarks).

mod common;

use common::{Samples, User, load_user, ratio};
use redis_memo::{Cache, ManualClock, redis_cached};
use redis_memo_testkit::RedisServer;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BODY: Duration = Duration::from_millis(200);
const TASKS: usize = 32;
const PAUSE: Duration = Duration::from_millis(2);
const WINDOW: Duration = Duration::from_millis(600);
const ROUNDS: u64 = 5;

static CACHE: OnceLock<Cache> = OnceLock::new();

fn cache() -> &'static Cache {
    CACHE.get().expect("cache set up")
}

#[redis_cached(ttl = "10s", key = "plain:<id>", cache = cache())]
async fn without_stale(id: u64) -> User {
    tokio::time::sleep(BODY).await;
    load_user(id)
}

#[redis_cached(ttl = "10s", stale = "1m", key = "stale:<id>", cache = cache())]
async fn with_stale(id: u64) -> User {
    tokio::time::sleep(BODY).await;
    load_user(id)
}

async fn call(stale: bool, id: u64) {
    let user = if stale {
        with_stale(id).await
    } else {
        without_stale(id).await
    };
    assert_eq!(user.id, id);
}

/// One round: fill, expire, then [`TASKS`] callers for [`WINDOW`]; their latencies, the
/// first call of each caller (right after the expiry) first.
async fn round(stale: bool, id: u64, clock: &ManualClock) -> (Vec<u64>, Vec<u64>) {
    call(stale, id).await;
    clock.advance(Duration::from_secs(11));
    let callers: Vec<_> = (0..TASKS)
        .map(|_| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let started = Instant::now();
                while started.elapsed() < WINDOW {
                    let before = Instant::now();
                    call(stale, id).await;
                    latencies.push(before.elapsed().as_nanos() as u64);
                    tokio::time::sleep(PAUSE).await;
                }
                latencies
            })
        })
        .collect();
    let (mut first, mut all) = (Vec::new(), Vec::new());
    for caller in callers {
        let latencies = caller.await.unwrap();
        first.extend(latencies.first().copied());
        all.extend(latencies);
    }
    cache().refreshes_done().await;
    (first, all)
}

/// `[(p50, p99) without stale, (p50, p99) with stale]` as ratios.
fn print_ratios(quantiles: &[(f64, f64)]) {
    let [(p50, p99), (stale_p50, stale_p99)] = quantiles else {
        return;
    };
    println!(
        "  with / without stale:  p50 {}  p99 {}",
        ratio(*stale_p50, *p50),
        ratio(*stale_p99, *p99)
    );
}

fn main() {
    let server = RedisServer::start().expect("the benchmark needs redis-server");
    let runtime = common::runtime();
    runtime.block_on(async {
        let clock = ManualClock::starting_now();
        CACHE
            .set(
                Cache::builder()
                    .redis_url(server.url())
                    .namespace("bench-freshness")
                    .clock(clock.clone())
                    .build()
                    .unwrap(),
            )
            .unwrap();
        cache().ping().await.unwrap();

        let (mut plain, mut stale) = (Samples::default(), Samples::default());
        let (mut plain_first, mut stale_first) = (Samples::default(), Samples::default());
        for id in 0..ROUNDS {
            // Alternate which goes first, so drift favours neither.
            let order = if id % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for with in order {
                let (first, latencies) = round(with, id, &clock).await;
                let (all, firsts) = if with {
                    (&mut stale, &mut stale_first)
                } else {
                    (&mut plain, &mut plain_first)
                };
                all.0.extend(latencies);
                firsts.0.extend(first);
            }
        }
        let waited = |samples: &Samples| {
            samples
                .0
                .iter()
                .filter(|&&ns| ns >= BODY.as_nanos() as u64 / 2)
                .count()
        };
        let (plain_waited, stale_waited) = (waited(&plain), waited(&stale));
        let (plain_calls, stale_calls) = (plain.0.len(), stale.0.len());
        println!(
            "freshness: a hot key through its expiry, body {} ms, {TASKS} callers every {} ms \
             for {} ms; {ROUNDS} rounds each, interleaved",
            BODY.as_millis(),
            PAUSE.as_millis(),
            WINDOW.as_millis()
        );
        println!(
            "{:<24} {:>10} {:>10} {:>10} {:>8} {:>18}",
            "", "p50 µs", "p99 µs", "max µs", "calls", "waited for body"
        );
        let rows = [
            ("without stale", &mut plain, plain_calls, plain_waited),
            ("with stale", &mut stale, stale_calls, stale_waited),
        ];
        let mut quantiles = Vec::new();
        for (name, samples, calls, waited) in rows {
            let (p50, p99, max) = (
                samples.quantile(0.50),
                samples.quantile(0.99),
                samples.quantile(1.0),
            );
            println!("  {name:<22} {p50:>10.1} {p99:>10.1} {max:>10.1} {calls:>8} {waited:>18}");
            quantiles.push((p50, p99));
        }
        print_ratios(&quantiles);
        println!(
            "each caller's first call after the expiry ({} calls each):",
            TASKS as u64 * ROUNDS
        );
        let mut firsts = Vec::new();
        for (name, samples) in [
            ("without stale", &mut plain_first),
            ("with stale", &mut stale_first),
        ] {
            let (p50, p99) = (samples.quantile(0.50), samples.quantile(0.99));
            println!("  {name:<22} {p50:>10.1} {p99:>10.1}");
            firsts.push((p50, p99));
        }
        print_ratios(&firsts);
        assert_eq!(
            cache().stats().refreshes,
            ROUNDS,
            "one background refresh per round"
        );
    });
}
