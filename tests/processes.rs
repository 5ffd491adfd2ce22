//! Stampede protection across OS processes, on a real Redis: 4 processes × 200 concurrent
//! callers of one cold key run the body once in total; a lease holder that is killed is
//! succeeded after its lease, and no caller fails; 3 processes × 100 callers of a stale entry
//! all get the stale value and one refresh runs in the background.
//!
//! This binary is its own child: run with `REDIS_MEMO_CHILD` set, it plays one process.

use redis_memo::{Cache, Clock, ManualClock, redis_cached};
use redis_memo_testkit::RedisServer;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PROCESSES: usize = 4;
const CALLERS: usize = 200;
/// Where the bodies count their runs, across processes.
const RUNS_KEY: &str = "test:body-runs";

/// The body takes 50 ms and counts its runs in Redis; with `hold` it never finishes (its
/// process gets killed).
#[redis_cached(ttl = "1m", key = "report:<id>", cache = cache, lock(wait = "5s", lease = "5s"))]
async fn report(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] counter: &redis::Client,
) -> String {
    count_run(counter).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    format!("report {id}")
}

#[redis_cached(ttl = "1m", key = "held:<id>", cache = cache, lock(wait = "1s", lease = "1s"))]
async fn held(
    id: u64,
    #[cache(skip)] cache: &Cache,
    #[cache(skip)] counter: &redis::Client,
    #[cache(skip)] hold: bool,
) -> String {
    count_run(counter).await;
    if hold {
        println!("computing");
        std::future::pending::<()>().await;
    }
    format!("held {id}")
}

/// Answers with the number of its runs so far (1, then 2 after a refresh), after a second:
/// a slow source, so that every process reads the stale entry while the refresh runs.
#[redis_cached(ttl = "10s", stale = "1m", key = "rates:<id>", cache = cache)]
async fn rates(id: u64, #[cache(skip)] cache: Cache, #[cache(skip)] counter: redis::Client) -> i64 {
    let run = count_run(&counter).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    run
}

/// Counts a run of a body in Redis; the count so far.
async fn count_run(counter: &redis::Client) -> i64 {
    let mut connection = counter
        .get_multiplexed_async_connection()
        .await
        .expect("counter connection");
    redis::cmd("INCR")
        .arg(RUNS_KEY)
        .query_async(&mut connection)
        .await
        .expect("INCR")
}

/// Where a `stale` process's clock starts: past the entry's ttl, inside its stale window.
const STALE_CLOCK: &str = "REDIS_MEMO_CLOCK_MS";
const STALE_PROCESSES: usize = 3;
const STALE_CALLERS: usize = 100;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match std::env::var("REDIS_MEMO_CHILD") {
        Ok(role) => runtime.block_on(child(&role)),
        Err(_) => {
            runtime.block_on(four_processes_times_200_callers_run_the_body_once());
            println!("test four_processes_times_200_callers_run_the_body_once ... ok");
            runtime.block_on(a_killed_lease_holder_is_succeeded_after_its_lease());
            println!("test a_killed_lease_holder_is_succeeded_after_its_lease ... ok");
            runtime.block_on(three_processes_serve_a_stale_entry_and_refresh_it_once());
            println!("test three_processes_serve_a_stale_entry_and_refresh_it_once ... ok");
            println!(
                "\ntest result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"
            );
        }
    }
}

/// One child process: connects, says `ready`, waits for `go` on stdin, runs its role.
async fn child(role: &str) {
    let url = std::env::var("REDIS_MEMO_URL").expect("REDIS_MEMO_URL");
    let mut builder = Cache::builder().redis_url(&url).namespace("processes");
    if let Ok(start) = std::env::var(STALE_CLOCK) {
        builder = builder.clock(ManualClock::new(start.parse().unwrap()));
    }
    let cache = builder.build().unwrap();
    cache.ping().await.expect("redis answers");
    let counter = redis::Client::open(url).unwrap();
    println!("ready");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    match role {
        "stampede" => {
            let callers: Vec<_> = (0..CALLERS)
                .map(|_| {
                    let (cache, counter) = (cache.clone(), counter.clone());
                    tokio::spawn(async move { report(1, &cache, &counter).await })
                })
                .collect();
            let mut correct = 0;
            for caller in callers {
                if caller.await.unwrap() == "report 1" {
                    correct += 1;
                }
            }
            println!("correct {correct}");
        }
        "holder" => {
            held(2, &cache, &counter, true).await;
        }
        "stale" => {
            let callers: Vec<_> = (0..STALE_CALLERS)
                .map(|_| {
                    let (cache, counter) = (cache.clone(), counter.clone());
                    tokio::spawn(async move { rates(1, cache, counter).await })
                })
                .collect();
            // A caller that waited for the refresh would have its value, 2.
            let mut stale = 0;
            for caller in callers {
                if caller.await.unwrap() == 1 {
                    stale += 1;
                }
            }
            // This process's refresh, if it ran one, has stored its value.
            cache.refreshes_done().await;
            println!("stale {stale} refreshes {}", cache.stats().refreshes);
        }
        other => panic!("unknown child role {other}"),
    }
}

fn spawn_child(role: &str, url: &str) -> (Child, BufReader<std::process::ChildStdout>) {
    spawn_child_with(role, url, &[])
}

fn spawn_child_with(
    role: &str,
    url: &str,
    env: &[(&str, String)],
) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut command = Command::new(std::env::current_exe().unwrap());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command
        .env("REDIS_MEMO_CHILD", role)
        .env("REDIS_MEMO_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("re-execute the test binary as a child");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    assert_eq!(read_line(&mut stdout), "ready");
    (child, stdout)
}

fn read_line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    line.trim().to_owned()
}

fn runs(server: &RedisServer) -> i64 {
    redis::cmd("GET")
        .arg(RUNS_KEY)
        .query::<Option<i64>>(&mut server.connection())
        .unwrap()
        .unwrap_or(0)
}

async fn four_processes_times_200_callers_run_the_body_once() {
    let server = RedisServer::start().expect("the test suite needs redis-server");
    let mut children: Vec<_> = (0..PROCESSES)
        .map(|_| spawn_child("stampede", &server.url()))
        .collect();
    // All connected and ready: start them together.
    for (child, _) in &mut children {
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    for (mut child, mut stdout) in children {
        assert_eq!(
            read_line(&mut stdout),
            format!("correct {CALLERS}"),
            "every caller gets the value"
        );
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(
        runs(&server),
        1,
        "{PROCESSES} processes x {CALLERS} callers, one run of the body"
    );
}

async fn a_killed_lease_holder_is_succeeded_after_its_lease() {
    let server = RedisServer::start().expect("the test suite needs redis-server");
    let (mut holder, mut stdout) = spawn_child("holder", &server.url());
    writeln!(holder.stdin.as_mut().unwrap(), "go").unwrap();
    assert_eq!(
        read_line(&mut stdout),
        "computing",
        "the holder took the lease and computes"
    );
    let lease_taken_before = Instant::now();
    holder.kill().unwrap(); // as a crash would: no release
    holder.wait().unwrap();

    let cache = Cache::builder()
        .redis_url(server.url())
        .namespace("processes")
        .build()
        .unwrap();
    let counter = redis::Client::open(server.url()).unwrap();
    assert_eq!(
        held(2, &cache, &counter, false).await,
        "held 2",
        "no caller errors"
    );
    let waited = lease_taken_before.elapsed();
    // The lease (1 s) bounds the wait; the slack covers process and scheduling time.
    assert!(
        waited < Duration::from_millis(1000 + 500),
        "succeeded after {waited:?}"
    );
    assert_eq!(runs(&server), 2, "the killed run and the successor's");
    assert_eq!(cache.stats().lock_waits, 1);
    assert_eq!(held(2, &cache, &counter, false).await, "held 2");
    assert_eq!(runs(&server), 2, "the successor stored its value");
}

async fn three_processes_serve_a_stale_entry_and_refresh_it_once() {
    let server = RedisServer::start().expect("the test suite needs redis-server");
    let counter = redis::Client::open(server.url()).unwrap();
    let clock = ManualClock::starting_now();
    let cache = Cache::builder()
        .redis_url(server.url())
        .namespace("processes")
        .clock(clock.clone())
        .build()
        .unwrap();
    assert_eq!(rates(1, cache.clone(), counter.clone()).await, 1);
    // The children's clocks read 11 s later: past the 10 s ttl, inside the stale minute.
    clock.advance(Duration::from_secs(11));
    let later = [(STALE_CLOCK, clock.now_unix_ms().to_string())];
    let mut children: Vec<_> = (0..STALE_PROCESSES)
        .map(|_| spawn_child_with("stale", &server.url(), &later))
        .collect();
    for (child, _) in &mut children {
        writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    }
    let mut refreshes = 0;
    for (mut child, mut stdout) in children {
        let report = read_line(&mut stdout);
        let (stale, refreshed) = report
            .strip_prefix("stale ")
            .and_then(|rest| rest.split_once(" refreshes "))
            .unwrap_or_else(|| panic!("unexpected report {report:?}"));
        assert_eq!(
            stale,
            STALE_CALLERS.to_string(),
            "every caller gets the stale value at once"
        );
        refreshes += refreshed.parse::<u32>().unwrap();
        assert!(child.wait().unwrap().success());
    }
    assert_eq!(
        refreshes, 1,
        "one refresh across {STALE_PROCESSES} processes"
    );
    assert_eq!(runs(&server), 2, "the first run and the refresh");
    assert_eq!(
        rates(1, cache.clone(), counter).await,
        2,
        "afterwards everyone gets the refreshed value"
    );
    assert_eq!(runs(&server), 2);
}
