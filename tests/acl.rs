//! A cache connected as an ACL user: a command the user may not run is a clear error (a
//! logged, counted fail-open for calls; an `Err` for invalidations), never a hang; and the
//! user's password shows in no `Debug` output, error or log line.

mod support;

use redis_memo::Cache;
use redis_memo_testkit::RedisServer;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use support::{Probe, lookup};

const PASSWORD: &str = "n0t-in-any-log";

/// Creates user `memo` with `rules` (after `on >password resetkeys ~ns:* resetchannels
/// &ns:*`), and a cache connected as it.
fn cache_as_user(
    server: &RedisServer,
    namespace: &str,
    rules: &str,
    op_timeout: std::time::Duration,
) -> Cache {
    let mut command = redis::cmd("ACL");
    command
        .arg("SETUSER")
        .arg("memo")
        .arg("on")
        .arg(format!(">{PASSWORD}"))
        .arg("resetkeys")
        .arg(format!("~{namespace}:*"))
        .arg("resetchannels")
        .arg(format!("&{namespace}:*"));
    for rule in rules.split_whitespace() {
        command.arg(rule);
    }
    let () = command.query(&mut server.connection()).unwrap();
    Cache::builder()
        .redis_url(format!(
            "redis://memo:{PASSWORD}@127.0.0.1:{}/",
            server.port()
        ))
        .namespace(namespace)
        .op_timeout(op_timeout)
        .build()
        .unwrap()
}

/// Every log line (message and fields) emitted on this thread while installed.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Lines {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut text = Text(format!(
            "{} {}",
            event.metadata().level(),
            event.metadata().target()
        ));
        event.record(&mut text);
        self.0.lock().unwrap().push(text.0);
    }
}

impl Lines {
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt;
        tracing::subscriber::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

// One thread: every log line of the test, background work included, reaches the layer.
#[tokio::test(flavor = "current_thread")]
async fn a_refused_command_fails_open_with_a_logged_noperm_and_never_hangs() {
    let lines = Lines::default();
    let _logs = lines.install();
    let server = RedisServer::start().unwrap();
    // Everything the README's line grants but the scripts and SCAN.
    // A minute's op timeout: an answer within the 5 s below is the refusal itself, not a
    // timeout standing in for it.
    let cache = cache_as_user(
        &server,
        "refused",
        "nocommands +hello +time +get +mget +set +del +pexpire +pttl",
        std::time::Duration::from_secs(60),
    );
    let probe = Probe::default();
    let calls = async {
        for _ in 0..3 {
            assert_eq!(lookup(1, &cache, &probe).await, Ok(10), "the call succeeds");
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), calls)
        .await
        .expect("refused commands never hang a call");
    assert!(cache.stats().fail_open > 0, "counted");
    let logged = lines.all();
    assert!(
        logged.iter().any(|line| line.starts_with("WARN redis_memo")
            && line.contains("no permissions to run the 'evalsha' command")),
        "a warning says which permission is missing: {logged:#?}"
    );

    let refused = support::invalidate_lookup(1, &cache)
        .await
        .expect_err("the invalidation script is refused");
    assert!(
        refused
            .to_string()
            .contains("no permissions to run the 'evalsha' command"),
        "{refused}"
    );

    let invalidation = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        cache.invalidate_matching("lookup:*"),
    )
    .await
    .expect("never a hang");
    let error = invalidation.expect_err("SCAN is refused");
    assert!(
        error
            .to_string()
            .contains("no permissions to run the 'scan' command"),
        "{error}"
    );

    for line in lines.all() {
        assert!(!line.contains(PASSWORD), "the password was logged: {line}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_password_shows_in_no_debug_output_error_or_log() {
    let lines = Lines::default();
    let _logs = lines.install();
    let server = RedisServer::start().unwrap();
    let url = format!("redis://memo:{PASSWORD}@127.0.0.1:{}/", server.port());

    let builder = Cache::builder().redis_url(url.clone());
    assert!(!format!("{builder:?}").contains(PASSWORD), "{builder:?}");
    let cluster_builder = Cache::builder().redis_cluster([url.clone()]);
    assert!(
        !format!("{cluster_builder:?}").contains(PASSWORD),
        "{cluster_builder:?}"
    );
    let cache = builder.build().unwrap();
    assert!(!format!("{cache:?}").contains(PASSWORD), "{cache:?}");

    // The user does not exist: authentication fails, and is reported without the password.
    let error = cache.ping().await.expect_err("no such user");
    assert!(
        !format!("{error} {error:?}").contains(PASSWORD),
        "{error:?}"
    );
    let probe = Probe::default();
    assert_eq!(lookup(3, &cache, &probe).await, Ok(30));

    // A cluster cache too, including `ping()`'s own connection to a named node.
    let cluster_cache = Cache::builder().redis_cluster([url]).build().unwrap();
    assert!(
        !format!("{cluster_cache:?}").contains(PASSWORD),
        "{cluster_cache:?}"
    );
    let error = cluster_cache.ping().await.expect_err("no such user");
    assert!(
        !format!("{error} {error:?}").contains(PASSWORD),
        "{error:?}"
    );
    assert_eq!(lookup(4, &cluster_cache, &probe).await, Ok(40));
    let logged = lines.all();
    assert!(!logged.is_empty(), "the failure was logged");
    for line in logged {
        assert!(!line.contains(PASSWORD), "the password was logged: {line}");
    }
}

/// A refused read is the same kind of event as any other refusal: a counted fail-open, warned
/// about once (not on every call), never a "damaged entry".
#[tokio::test(flavor = "current_thread")]
async fn a_refused_read_is_a_counted_fail_open_warned_once() {
    let lines = Lines::default();
    let _logs = lines.install();
    let server = RedisServer::start().unwrap();
    // The README's line without `+get +mget`.
    let cache = cache_as_user(
        &server,
        "unread",
        "nocommands +hello +time +set +del +pexpire +pttl +scan +evalsha +script|load +publish +subscribe +unsubscribe",
        std::time::Duration::from_secs(60),
    );
    let probe = Probe::default();
    let calls = async {
        for _ in 0..5 {
            assert_eq!(lookup(3, &cache, &probe).await, Ok(30), "the call succeeds");
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), calls)
        .await
        .expect("a refused read never hangs a call");
    let stats = cache.stats();
    assert!(stats.fail_open >= 5, "every call counted: {stats:?}");
    assert_eq!(
        stats.decode_failures, 0,
        "a refusal is not damage: {stats:?}"
    );
    let warnings: Vec<_> = lines
        .all()
        .into_iter()
        .filter(|line| {
            line.starts_with("WARN redis_memo")
                && line.contains("no permissions to run the 'get' command")
        })
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "warned once, with the command: {warnings:#?}"
    );
}

/// The in-process tier as the README's least-privileged user, with the additions the README
/// gives for it: copies are kept and answer, and Redis refused nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_tier_works_as_the_readme_s_acl_user() {
    let server = RedisServer::start().unwrap();
    let url = support::acl_user_url_for_local_tier(&server, "tier_acl");
    let cache = Cache::builder()
        .redis_url(url)
        .namespace("tier_acl")
        .local_capacity(1 << 20)
        .local_default(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    cache.ping().await.expect("the tier's connection is up");
    let probe = Probe::default();
    // A miss stores the entry; once its fill is answered, a read keeps its copy and the copy
    // answers.
    assert_eq!(lookup(5, &cache, &probe).await, Ok(50));
    support::until_a_copy_answers(&cache, &probe, 5).await;
    let stats = cache.stats();
    assert_eq!(probe.runs(), 1);
    assert!(stats.local_hits >= 1 && stats.fail_open == 0, "{stats:?}");
    support::invalidate_lookup(5, &cache).await.unwrap();
    assert_eq!(lookup(5, &cache, &probe).await, Ok(50));
    assert_eq!(probe.runs(), 2, "its own invalidation drops the copy");
    support::assert_no_acl_refusals(&server);
}

/// The same on a cluster: each primary's tracking connection is made as that user too (from
/// the first URL's credentials), with the README's additions for a cluster and for the tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_tier_works_as_the_readme_s_acl_user_on_a_cluster() {
    let cluster = redis_memo_testkit::RedisCluster::start().unwrap();
    let urls = support::acl_user_cluster_urls_for_local_tier(&cluster, "tier_acl");
    let cache = Cache::builder()
        .redis_cluster(urls)
        .namespace("tier_acl")
        .local_capacity(1 << 20)
        .local_default(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    cache
        .ping()
        .await
        .expect("every primary's tracking connection is up");
    let probe = Probe::default();
    for id in 1..=20 {
        assert_eq!(lookup(id, &cache, &probe).await, Ok(id * 10));
        support::until_a_copy_answers(&cache, &probe, id).await;
    }
    let stats = cache.stats();
    assert_eq!(probe.runs(), 20);
    assert!(stats.local_hits >= 20 && stats.fail_open == 0, "{stats:?}");
    support::invalidate_lookup(5, &cache).await.unwrap();
    assert_eq!(lookup(5, &cache, &probe).await, Ok(50));
    assert_eq!(probe.runs(), 21, "its own invalidation drops the copy");
    for node in cluster.nodes() {
        support::assert_no_acl_refusals(node);
    }
}

/// The same user without the tier's additions: `CLIENT TRACKING` is refused, so the tier has
/// no connection. Calls are served from Redis as without a tier, nothing is kept, and the
/// refused attempt is not repeated on every call (a backoff from twice the operation timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tracking_leaves_calls_on_redis_keeping_nothing() {
    let server = RedisServer::start().unwrap();
    let url = support::acl_user_url(&server, "tier_refused");
    let cache = Cache::builder()
        .redis_url(url)
        .namespace("tier_refused")
        .local_capacity(1 << 20)
        .local_default(std::time::Duration::from_secs(60))
        .op_timeout(std::time::Duration::from_millis(500))
        .build()
        .unwrap();
    let probe = Probe::default();
    for _ in 0..50 {
        assert_eq!(lookup(6, &cache, &probe).await, Ok(60));
    }
    let stats = cache.stats();
    assert_eq!(probe.runs(), 1, "{stats:?}");
    assert_eq!((stats.hits, stats.fail_open), (49, 0), "{stats:?}");
    assert_eq!((stats.local_hits, stats.local_bytes), (0, 0), "{stats:?}");
    let refused: Vec<HashMap<String, redis::Value>> = redis::cmd("ACL")
        .arg("LOG")
        .query(&mut server.connection())
        .unwrap();
    let attempts: i64 = refused
        .iter()
        .map(|entry| {
            assert_eq!(
                entry.get("object"),
                Some(&redis::Value::BulkString(b"client|tracking".to_vec())),
                "only tracking is refused: {entry:?}"
            );
            match entry.get("count") {
                Some(redis::Value::Int(count)) => *count,
                other => panic!("a count: {other:?}"),
            }
        })
        .sum();
    assert!(
        (1..=3).contains(&attempts),
        "tried, then backed off: {attempts} attempts in 50 calls"
    );
}
