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
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); contenders];
    for contender in 0..contenders {
        for task in 0..TASKS {
            call(contender, task).await;
        }
    }
    for round in 0..THROUGHPUT_ROUNDS {
        for offset in 0..contenders {
            let contender = (round + offset) % contenders;
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
        }
    }
    rates
        .into_iter()
        .map(|mut rates| {
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        })
        .collect()
}

/// The runtime every benchmark runs on: Tokio with 2 workers, as many as the machine's cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
