//! The stampede: 4 OS processes x 200 concurrent callers of one cold key whose loader takes
//! 50 ms (and counts its runs in Redis), side by side:
//!
//! - redis-memo with `lock` (leases, waiters woken by the fill);
//! - the lock most codebases hand-write: `SET lock NX PX`, the others poll `GET` every 100 ms;
//! - the hand-written cache-aside without a lock.
//!
//! Reported per contender (median of interleaved rounds, a fresh key each): loader runs, the
//! time from the start until the last caller has its value, and the Redis commands executed
//! per caller (`INFO commandstats`, commands run inside scripts included; the loader's own
//! counting excluded).
//!
//! Run: `cargo bench -p redis-memo-benches` (with the cache-aside benchmark). The binary is
//! its own child process: with `STAMPEDE_CHILD` set it plays one process.

use redis::aio::ConnectionManager;
use redis_memo::{Cache, redis_cached};
use redis_memo_testkit::RedisServer;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PROCESSES: usize = 4;
const CALLERS: usize = 200;
const ROUNDS: usize = 5;
const LOADER_TIME: Duration = Duration::from_millis(50);
const RUNS_KEY: &str = "bench:loader-runs";
const CONTENDERS: [&str; 3] = ["redis-memo lock", "SET NX + 100 ms poll", "no lock"];

async fn loader(counter: &ConnectionManager, id: u64) -> String {
    let mut counter = counter.clone();
    let _: i64 = redis::cmd("INCR")
        .arg(RUNS_KEY)
        .query_async(&mut counter)
        .await
        .unwrap();
    tokio::time::sleep(LOADER_TIME).await;
    format!("value {id}")
}

#[redis_cached(ttl = "10m", key = "stampede:<id>", cache = cache, lock(wait = "5s", lease = "5s"))]
async fn memo_lock(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] counter: &ConnectionManager,
) -> String {
    loader(counter, id).await
}

/// The seed pattern: a lock key, and everyone else polling.
async fn poll_lock(connection: &ConnectionManager, counter: &ConnectionManager, id: u64) -> String {
    let (key, lock) = (format!("poll:{id}"), format!("poll:{id}:lock"));
    let mut connection = connection.clone();
    loop {
        let found: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        if let Some(value) = found {
            return value;
        }
        let locked: Option<String> = redis::cmd("SET")
            .arg(&lock)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(5000)
            .query_async(&mut connection)
            .await
            .unwrap();
        if locked.is_some() {
            let value = loader(counter, id).await;
            let () = redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("PX")
                .arg(600_000)
                .query_async(&mut connection)
                .await
                .unwrap();
            let _: i64 = redis::cmd("DEL")
                .arg(&lock)
                .query_async(&mut connection)
                .await
                .unwrap();
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cache-aside without a lock: every caller that misses loads.
async fn no_lock(connection: &ConnectionManager, counter: &ConnectionManager, id: u64) -> String {
    let key = format!("nolock:{id}");
    let mut connection = connection.clone();
    let found: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    if let Some(value) = found {
        return value;
    }
    let value = loader(counter, id).await;
    let () = redis::cmd("SET")
        .arg(&key)
        .arg(&value)
        .arg("PX")
        .arg(600_000)
        .query_async(&mut connection)
        .await
        .unwrap();
    value
}

fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// One process: connects, says `ready`, waits for `go`, runs its callers, reports the time
/// its last caller had the value and how many got the right one.
async fn child(contender: usize, url: String, id: u64) {
    let client = redis::Client::open(url.as_str()).unwrap();
    let connection = ConnectionManager::new(client.clone()).await.unwrap();
    let counter = ConnectionManager::new(client).await.unwrap();
    let cache = Cache::builder()
        .redis_url(&url)
        .namespace("bench")
        .build()
        .unwrap();
    cache.ping().await.unwrap();
    println!("ready");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (cache, connection, counter) = (cache.clone(), connection.clone(), counter.clone());
            tokio::spawn(async move {
                let value = match contender {
                    0 => memo_lock(id, &cache, &counter).await,
                    1 => poll_lock(&connection, &counter, id).await,
                    _ => no_lock(&connection, &counter, id).await,
                };
                (value, unix_micros())
            })
        })
        .collect();
    let (mut last, mut correct) = (0, 0);
    for caller in callers {
        let (value, at) = caller.await.unwrap();
        last = last.max(at);
        correct += usize::from(value == format!("value {id}"));
    }
    println!("done {last} {correct}");
}

struct Round {
    runs: i64,
    last_caller_ms: f64,
    commands_per_caller: f64,
}

fn read_line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line.trim().to_owned()
}

fn round(server: &RedisServer, contender: usize, id: u64) -> Round {
    let mut children: Vec<(Child, BufReader<std::process::ChildStdout>)> = (0..PROCESSES)
        .map(|_| {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .env(
                    "STAMPEDE_CHILD",
                    format!("{contender} {} {id}", server.url()),
                )
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            assert_eq!(read_line(&mut stdout), "ready");
            (child, stdout)
        })
        .collect();
    let mut admin = server.connection();
    let () = redis::cmd("SET")
        .arg(RUNS_KEY)
        .arg(0)
        .query(&mut admin)
        .unwrap();
    // Counted from here: only what the callers make Redis do.
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut admin)
        .unwrap();
    let start = unix_micros();
    for (child, _) in &mut children {
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let mut last = 0u128;
    for (mut child, mut stdout) in children {
        let line = read_line(&mut stdout);
        let mut parts = line.split_whitespace().skip(1);
        let at: u128 = parts.next().unwrap().parse().unwrap();
        let correct: usize = parts.next().unwrap().parse().unwrap();
        assert_eq!(
            correct, CALLERS,
            "{}: every caller gets the value",
            CONTENDERS[contender]
        );
        last = last.max(at);
        child.wait().unwrap();
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut admin)
        .unwrap();
    let runs: i64 = redis::cmd("GET").arg(RUNS_KEY).query(&mut admin).unwrap();
    let commands: u64 = stats
        .lines()
        .filter_map(|line| line.strip_prefix("cmdstat_"))
        .filter(|line| {
            // The loaders' own counting is not the contenders' work.
            !["incr:", "config|resetstat:"]
                .iter()
                .any(|skip| line.starts_with(skip))
        })
        .filter_map(|line| {
            line.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    Round {
        runs,
        last_caller_ms: (last.saturating_sub(start)) as f64 / 1000.0,
        commands_per_caller: commands as f64 / (PROCESSES * CALLERS) as f64,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    if let Ok(spec) = std::env::var("STAMPEDE_CHILD") {
        let mut parts = spec.split_whitespace();
        let contender: usize = parts.next().unwrap().parse().unwrap();
        let url = parts.next().unwrap().to_owned();
        let id: u64 = parts.next().unwrap().parse().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(child(contender, url, id));
        return;
    }
    let server = RedisServer::start().expect("redis-server (apt-get install -y redis-server)");
    let mut results: Vec<Vec<Round>> = CONTENDERS.iter().map(|_| Vec::new()).collect();
    let mut id = 0;
    for round_number in 0..ROUNDS {
        for offset in 0..CONTENDERS.len() {
            let contender = (round_number + offset) % CONTENDERS.len();
            id += 1;
            results[contender].push(round(&server, contender, id));
        }
    }
    println!(
        "stampede: {PROCESSES} processes x {CALLERS} callers on one cold key, loader {LOADER_TIME:?}; median of {ROUNDS} rounds"
    );
    println!(
        "  {:<24} {:>12} {:>22} {:>20}",
        "", "loader runs", "last caller has it", "commands / caller"
    );
    for (name, rounds) in CONTENDERS.iter().zip(results) {
        let runs = median(rounds.iter().map(|r| r.runs as f64).collect());
        let last = median(rounds.iter().map(|r| r.last_caller_ms).collect());
        let commands = median(rounds.iter().map(|r| r.commands_per_caller).collect());
        println!("  {name:<24} {runs:>12.0} {last:>19.1} ms {commands:>20.2}");
    }
}
