//! The outage is logged once and the recovery once, whatever the number of calls in between.
//!
//! Alone in its test binary: it counts events through a thread-local subscriber, and tracing
//! caches each log line's interest process-wide, so other tests hitting the same lines at the
//! same time on other threads could make it miss one.

mod support;

use redis_memo::{Cache, redis_cached};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::{Backend, Harness, Probe, lookup, wait_until_cached_again};

const OP_TIMEOUT: Duration = Duration::from_millis(500);

/// Counts the runtime's log events by level.
#[derive(Clone, Default)]
struct LogCounter {
    warnings: Arc<AtomicUsize>,
    infos: Arc<AtomicUsize>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogCounter {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let metadata = event.metadata();
        if metadata.target() != "redis_memo" {
            return;
        }
        match *metadata.level() {
            tracing::Level::WARN => self.warnings.fetch_add(1, Ordering::SeqCst),
            tracing::Level::INFO => self.infos.fetch_add(1, Ordering::SeqCst),
            _ => 0,
        };
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_outage_is_logged_once_and_the_recovery_once() {
    use tracing_subscriber::layer::SubscriberExt;
    let counter = LogCounter::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(counter.clone()));

    let mut h = Harness::with_timeout(Backend::Redis, OP_TIMEOUT);
    let probe = Probe::default();
    assert_eq!(lookup(1, &h.cache, &probe).await, Ok(10));
    h.server().stop();
    for id in 0..30 {
        assert_eq!(lookup(id, &h.cache, &probe).await, Ok(id * 10));
    }
    assert_eq!(
        counter.warnings.load(Ordering::SeqCst),
        1,
        "one warning for the whole outage"
    );
    h.server().restart().unwrap();
    wait_until_cached_again(&h.cache, 1).await;
    assert_eq!(
        counter.infos.load(Ordering::SeqCst),
        1,
        "one line when caching resumes"
    );
    assert_eq!(counter.warnings.load(Ordering::SeqCst), 1);
}

/// Counts the runtime's warnings, keeping the text of their fields.
#[derive(Clone, Default)]
struct Warnings(Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!("{}={value:?} ", field.name()));
            }
        }
        // One stable target for every line, whatever module logs it.
        if *event.metadata().level() == tracing::Level::WARN
            && event.metadata().target() == "redis_memo"
        {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }
}

#[derive(Debug, PartialEq)]
struct FeedError(&'static str);

#[redis_cached(ttl = "10s", stale = "1m", key = "feed:<id>", cache = cache)]
async fn feed(
    id: u64,
    #[cache(skip)] cache: Cache,
    #[cache(skip)] down: Arc<std::sync::atomic::AtomicBool>,
) -> Result<u64, FeedError> {
    if down.load(Ordering::SeqCst) {
        return Err(FeedError("the feed is down"));
    }
    Ok(id)
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_background_refresh_is_counted_and_logged_with_its_error() {
    use tracing_subscriber::layer::SubscriberExt;
    let warnings = Warnings::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
    let clock = redis_memo::ManualClock::starting_now();
    let h = Harness::with(Backend::Redis, |builder| builder.clock(clock.clone()));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
    assert_eq!(feed(1, h.cache.clone(), Arc::clone(&down)).await, Ok(1));
    clock.advance(Duration::from_secs(11));
    down.store(true, Ordering::SeqCst);
    assert_eq!(
        feed(1, h.cache.clone(), Arc::clone(&down)).await,
        Ok(1),
        "stale"
    );
    h.cache.refreshes_done().await;
    assert_eq!(h.cache.stats().refresh_failures, 1);
    let logged = warnings.0.lock().unwrap().clone();
    assert!(
        logged.iter().any(|line| line.contains("the feed is down")),
        "a warning with the error: {logged:?}"
    );
}

#[redis_cached(ttl = "1m", key = "report_page:<id>", cache = cache)]
async fn report_page(id: u64, #[cache(skip)] cache: &Cache) -> String {
    format!("{id}").repeat(100)
}

#[tokio::test(flavor = "current_thread")]
async fn an_oversized_value_is_warned_about_once_per_function_and_counted_each_time() {
    use tracing_subscriber::layer::SubscriberExt;
    let warnings = Warnings::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
    let h = Harness::with(Backend::Redis, |builder| builder.max_value_bytes(64));
    for id in 1..=5 {
        assert_eq!(report_page(id, &h.cache).await.len(), 100);
    }
    h.cache.writes_done().await;
    assert_eq!(h.cache.stats().oversized, 5);
    let warned = warnings.0.lock().unwrap().clone();
    let oversized: Vec<&String> = warned
        .iter()
        .filter(|fields| fields.contains("max_value_bytes"))
        .collect();
    assert_eq!(oversized.len(), 1, "{warned:?}");
    assert!(
        oversized[0].contains("function=\"report_page\"") && oversized[0].contains("max=64"),
        "names the function and the bound: {}",
        oversized[0]
    );
}
