//! Stampede protection across OS processes, on a real Redis: 4 processes × 200 concurrent
//! callers of one cold key run the body once in total; a lease holder that is killed is
//! succeeded after its lease, and no caller fails.
//!
//! This binary is its own child: run with `REDIS_MEMO_CHILD` set, it plays one process.

use redis_memo::{Cache, redis_cached};
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

async fn count_run(counter: &redis::Client) {
    let mut connection = counter
        .get_multiplexed_async_connection()
        .await
        .expect("counter connection");
    let _: i64 = redis::cmd("INCR")
        .arg(RUNS_KEY)
        .query_async(&mut connection)
        .await
        .expect("INCR");
}

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
            println!(
                "\ntest result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"
            );
        }
    }
}

/// One child process: connects, says `ready`, waits for `go` on stdin, runs its role.
async fn child(role: &str) {
    let url = std::env::var("REDIS_MEMO_URL").expect("REDIS_MEMO_URL");
    let cache = Cache::builder()
        .redis_url(&url)
        .namespace("processes")
        .build()
        .unwrap();
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
        other => panic!("unknown child role {other}"),
    }
}

fn spawn_child(role: &str, url: &str) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
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
