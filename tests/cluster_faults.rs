//! Faults of a real local Redis Cluster under load: a primary killed until its replica is
//! promoted, a manual `CLUSTER FAILOVER`, and the slot of a hot key moved to another primary
//! while callers use it (`ASK` during the move, `MOVED` after). In each, no call fails, no call
//! returns a wrong value, and caching resumes.

mod support;

use redis_memo::{Cache, redis_cached};
use redis_memo_testkit::RedisCluster;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use support::{Backend, Harness, LoadError, Probe};
use tokio::sync::Notify;

/// Keys spread over every primary (50 ids land in all three slot ranges).
const IDS: u64 = 50;
/// The key whose slot the faults hit.
const HOT: u64 = 7;
/// Short, so a call routed to a dead primary fails open quickly instead of waiting.
const FAULT_OP_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

// A short lease: a computation whose fill and release were lost with the killed primary
// holds the entry (on the promoted replica, which had the lease replicated) until it expires.
#[redis_cached(ttl = "1m", key = "locked:<id>", cache = cache, lock(wait = "1s", lease = "2s"))]
async fn locked_lookup(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] probe: &Probe,
) -> Result<u64, LoadError> {
    probe.ran();
    Ok(id * 10)
}

/// Callers of `locked_lookup` over `IDS` on several tasks until stopped, each asserting the
/// value; one of them invalidates the hot key now and then, so leases are taken and filled
/// while the fault happens.
struct Traffic {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    progressed: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(cache: &Cache) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let progressed = Arc::new(Notify::new());
        let probe = Arc::new(Probe::default());
        let tasks = (0..4u64)
            .map(|task| {
                let (cache, stop, calls, progressed, probe) = (
                    cache.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&calls),
                    Arc::clone(&progressed),
                    Arc::clone(&probe),
                );
                tokio::spawn(async move {
                    let mut i = task;
                    while !stop.load(Ordering::SeqCst) {
                        let id = if i % 3 == 0 { HOT } else { i % IDS };
                        assert_eq!(
                            locked_lookup(id, &cache, &probe).await,
                            Ok(id * 10),
                            "a call failed or returned a wrong value"
                        );
                        if task == 0 && i % 20 == 0 {
                            // An error here is a counted fail-open, not a failed call.
                            let _ = invalidate_locked_lookup(HOT, &cache).await;
                        }
                        calls.fetch_add(1, Ordering::SeqCst);
                        progressed.notify_waiters();
                        i += 4;
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            calls,
            progressed,
            tasks,
        }
    }

    /// Returns once `more` calls have completed since this was called.
    async fn advance(&self, more: usize) {
        let target = self.calls.load(Ordering::SeqCst) + more;
        loop {
            let progressed = self.progressed.notified();
            if self.calls.load(Ordering::SeqCst) >= target {
                return;
            }
            progressed.await;
        }
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("no call may fail during the fault");
        }
    }
}

/// The harness's cluster, and the slot and primary (index) of the hot key.
fn hot_slot(h: &mut Harness) -> (&mut RedisCluster, u16, usize) {
    let key = h.cache.full_key(&locked_lookup_cache_key(HOT));
    let cluster = h.cluster.as_mut().expect("a cluster harness");
    let slot = cluster.slot_of(&key).unwrap();
    let primary = cluster.primary_of_slot(slot).unwrap();
    (cluster, slot, primary)
}

/// After a fault: the hot key is cached again (within 10 s: reconnections happen in the
/// background, with no event to wait for), and an invalidation of it takes effect.
async fn caching_works(cache: &Cache) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let probe = Probe::default();
        assert_eq!(locked_lookup(HOT, cache, &probe).await, Ok(HOT * 10));
        assert_eq!(locked_lookup(HOT, cache, &probe).await, Ok(HOT * 10));
        if probe.runs() <= 1 {
            break;
        }

        assert!(
            std::time::Instant::now() < deadline,
            "caching did not resume within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let probe = Probe::default();
    assert_eq!(locked_lookup(HOT, cache, &probe).await, Ok(HOT * 10));
    assert!(invalidate_locked_lookup(HOT, cache).await.is_ok());
    assert_eq!(locked_lookup(HOT, cache, &probe).await, Ok(HOT * 10));
    assert_eq!(locked_lookup(HOT, cache, &probe).await, Ok(HOT * 10));
    assert!(
        probe.runs() <= 2,
        "recomputed once after the invalidation, then a hit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_traffic_fails_no_call_and_caching_resumes_on_its_replica() {
    let mut h = Harness::with_timeout(Backend::Cluster, FAULT_OP_TIMEOUT);
    let cache = h.cache.clone();
    let traffic = Traffic::start(&cache);
    traffic.advance(200).await;
    let (cluster, slot, primary) = hot_slot(&mut h);
    let replica = cluster.replica_of(primary).unwrap();
    tokio::task::block_in_place(|| {
        cluster.kill(primary);
        cluster.wait_settled().unwrap();
    });
    assert_eq!(
        cluster.primary_of_slot(slot).unwrap(),
        replica,
        "the replica was promoted"
    );
    traffic.advance(200).await;
    traffic.finish().await;
    assert!(
        cache.stats().fail_open > 0,
        "the outage was met, and counted"
    );
    caching_works(&cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_mid_traffic_fails_no_call() {
    let mut h = Harness::with_timeout(Backend::Cluster, FAULT_OP_TIMEOUT);
    let cache = h.cache.clone();
    let traffic = Traffic::start(&cache);
    traffic.advance(200).await;
    let (cluster, slot, primary) = hot_slot(&mut h);
    let replica = cluster.replica_of(primary).unwrap();
    tokio::task::block_in_place(|| cluster.failover(replica).unwrap());
    assert_eq!(cluster.primary_of_slot(slot).unwrap(), replica);
    traffic.advance(200).await;
    traffic.finish().await;
    caching_works(&cache).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_of_a_hot_key_moved_mid_traffic_fails_no_call() {
    let mut h = Harness::with_timeout(Backend::Cluster, FAULT_OP_TIMEOUT);
    let cache = h.cache.clone();
    // Other keys in the hot key's slot (same hash tag), so the move takes many batches and
    // callers meet the slot half moved (`ASK`).
    let hot_key = cache.full_key(&locked_lookup_cache_key(HOT));
    let fillers: Vec<String> = (0..400).map(|n| format!("{hot_key}:filler{n}")).collect();
    {
        let cluster = h.cluster.as_ref().unwrap();
        let mut connection = cluster.client().get_connection().unwrap();
        let mut set = redis::cmd("MSET");
        for key in &fillers {
            set.arg(key).arg("x");
        }
        let () = set.query(&mut connection).unwrap();
    }
    let probe = Probe::default();
    assert_eq!(locked_lookup(HOT, &cache, &probe).await, Ok(HOT * 10));
    let traffic = Traffic::start(&cache);
    traffic.advance(100).await;
    let (cluster, slot, primary) = hot_slot(&mut h);
    let topology = cluster.topology().unwrap();
    let target = (0..cluster.nodes().len())
        .find(|&index| {
            index != primary
                && topology
                    .iter()
                    .any(|node| node.port == cluster.nodes()[index].port() && node.primary)
        })
        .unwrap();
    let batches = AtomicUsize::new(0);
    let hits_before = cache.stats().hits;
    tokio::task::block_in_place(|| {
        cluster
            .migrate_slot(slot, target, || {
                batches.fetch_add(1, Ordering::SeqCst);
                // Let callers meet the half-moved slot.
                std::thread::sleep(std::time::Duration::from_millis(2));
            })
            .unwrap();
    });
    assert!(
        batches.load(Ordering::SeqCst) >= 10,
        "moved in many batches"
    );
    // Callers went on being served from Redis while the slot moved (redis-rs follows ASK to
    // keys already moved), not only by running the function.
    assert!(
        cache.stats().hits > hits_before,
        "no hit while the slot moved"
    );
    assert_eq!(cluster.primary_of_slot(slot).unwrap(), target);
    traffic.advance(200).await;
    traffic.finish().await;
    caching_works(&cache).await;
}

/// Holds the body of `waited_lookup` until released, on the first run only.
#[derive(Default)]
struct Hold {
    started: Notify,
    release: Notify,
}

#[redis_cached(ttl = "1m", key = "waited:<id>", cache = cache, lock(wait = "10s", lease = "30s"))]
async fn waited_lookup(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] hold: &Hold,
    #[cache(skip)] probe: &Probe,
) -> Result<u64, LoadError> {
    if probe.ran() == 1 {
        hold.started.notify_one();
        hold.release.notified().await;
    }
    Ok(id * 10)
}

/// A process waiting on another's lease (`lock`) while the entry's slot fails over gets the
/// holder's value, and does not compute. Its shard subscription is dropped by the demoted
/// node; the cache subscribes again, but redis-rs does not always keep that subscription on
/// the new owner, so the waiter may only learn of the fill at its `wait` bound (10 s here:
/// the failover itself, before the holder is released, took over 3 s under CI load once,
/// and a waiter past its bound computes for itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_waiter_whose_slot_fails_over_gets_the_holders_value() {
    let mut h = Harness::with_timeout(Backend::Cluster, FAULT_OP_TIMEOUT);
    let holder = h.cache.clone();
    let waiter = h.another_process(|builder| builder);
    let (hold, probe) = (Arc::new(Hold::default()), Arc::new(Probe::default()));
    let held = tokio::spawn({
        let (cache, hold, probe) = (holder.clone(), Arc::clone(&hold), Arc::clone(&probe));
        async move { waited_lookup(3, &cache, &hold, &probe).await }
    });
    hold.started.notified().await;
    let waiting = tokio::spawn({
        let (cache, probe) = (waiter.clone(), Arc::clone(&probe));
        async move { waited_lookup(3, &cache, &Hold::default(), &probe).await }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while waiter.stats().lock_waits == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the waiter never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let key = holder.full_key(&waited_lookup_cache_key(3));
    let cluster = h.cluster.as_mut().unwrap();
    let slot = cluster.slot_of(&key).unwrap();
    let replica = cluster
        .replica_of(cluster.primary_of_slot(slot).unwrap())
        .unwrap();
    tokio::task::block_in_place(|| cluster.failover(replica).unwrap());
    hold.release.notify_one();
    assert_eq!(held.await.unwrap(), Ok(30));
    let got = tokio::time::timeout(std::time::Duration::from_secs(15), waiting)
        .await
        .expect("the waiter returns by its wait bound at the latest");
    assert_eq!(got.unwrap(), Ok(30));
    assert_eq!(probe.runs(), 1, "only the holder computed");
}
