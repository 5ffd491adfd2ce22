//! Shared by the benchmarks: the cached value, latency samples and ratio formatting.

#![allow(dead_code)]

use serde::{Deserialize, Serialize};

/// A typical cached row: a few scalars and strings (about 100 bytes encoded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub org_id: u32,
    pub name: String,
    pub email: String,
    pub roles: Vec<String>,
    pub active: bool,
}

pub fn load_user(id: u64) -> User {
    User {
        id,
        org_id: 7,
        name: format!("user number {id}"),
        email: format!("user{id}@example.com"),
        roles: vec!["reader".into(), "writer".into()],
        active: true,
    }
}

/// Latencies of one contender, in nanoseconds.
#[derive(Default)]
pub struct Samples(pub Vec<u64>);

impl Samples {
    /// The `q` quantile, in microseconds.
    pub fn quantile(&mut self, q: f64) -> f64 {
        self.0.sort_unstable();
        let index = ((self.0.len() - 1) as f64 * q).round() as usize;
        self.0[index] as f64 / 1000.0
    }
}

/// `value / baseline`, formatted like `1.023x`.
pub fn ratio(value: f64, baseline: f64) -> String {
    format!("{:.3}x", value / baseline)
}

/// Concurrent tasks of a throughput measurement.
pub const TASKS: u64 = 64;
/// Calls each task makes per round.
pub const CALLS_PER_TASK: usize = 100;
/// Interleaved rounds per contender.
pub const THROUGHPUT_ROUNDS: usize = 40;

/// Median calls per second of each of `contenders`, over interleaved rounds of [`TASKS`]
/// concurrent tasks making [`CALLS_PER_TASK`] calls each. `call(contender, task)` makes one
/// call (each task uses its own key); it is run once per task and contender first, to warm.
pub async fn throughput<F, Fut>(contenders: usize, call: F) -> Vec<f64>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    throughput_and_cpu(contenders, call)
        .await
        .into_iter()
        .map(|rate| rate.per_second)
        .collect()
}

/// One contender's throughput, and the CPU this process spent per call.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Median calls per second over the rounds.
    pub per_second: f64,
    /// This process's CPU time (user and system, every thread) per call over all rounds, in
    /// µs; `None` where `/proc/self/stat` cannot be read. On 2 cores shared with
    /// `redis-server`, throughput is bound by CPU: this says where a contender spends it.
    pub cpu_us_per_call: Option<f64>,
}

/// [`throughput`], with each contender's CPU per call.
pub async fn throughput_and_cpu<F, Fut>(contenders: usize, call: F) -> Vec<Rate>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); contenders];
    let mut cpu: Vec<Option<f64>> = vec![Some(0.0); contenders];
    for contender in 0..contenders {
        for task in 0..TASKS {
            call(contender, task).await;
        }
    }
    for round in 0..THROUGHPUT_ROUNDS {
        for offset in 0..contenders {
            let contender = (round + offset) % contenders;
            let cpu_before = process_cpu_seconds();
            let started = std::time::Instant::now();
            let tasks: Vec<_> = (0..TASKS)
                .map(|task| {
                    let call = call.clone();
                    tokio::spawn(async move {
                        for _ in 0..CALLS_PER_TASK {
                            call(contender, task).await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            let calls = (TASKS as usize * CALLS_PER_TASK) as f64;
            rates[contender].push(calls / started.elapsed().as_secs_f64());
            cpu[contender] = match (cpu[contender], cpu_before, process_cpu_seconds()) {
                (Some(sum), Some(before), Some(after)) => Some(sum + (after - before)),
                _ => None,
            };
        }
    }
    let calls = (THROUGHPUT_ROUNDS * TASKS as usize * CALLS_PER_TASK) as f64;
    rates
        .into_iter()
        .zip(cpu)
        .map(|(mut rates, cpu)| {
            rates.sort_by(f64::total_cmp);
            Rate {
                per_second: rates[rates.len() / 2],
                cpu_us_per_call: cpu.map(|seconds| seconds * 1e6 / calls),
            }
        })
        .collect()
}

/// This process's CPU time so far (user + system), in seconds, from `/proc/self/stat`
/// (clock ticks, 100 per second on Linux).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces): utime and
    // stime are the 12th and 13th of them.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The runtime every benchmark runs on: Tokio with 2 workers, as many as the machine's cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
