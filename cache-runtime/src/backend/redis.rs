//! The Redis backend: one multiplexed, self-reconnecting connection, every operation bounded
//! by the per-operation timeout.

use crate::CacheError;
use crate::lease::{self, Acquired};
use crate::notify::{self, Listener, Notices};
use bytes::Bytes;
use redis::aio::ConnectionManager;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone)]
pub(crate) struct RedisBackend {
    connection: ConnectionManager,
    op_timeout: Duration,
    /// Where pushed pub/sub messages go; `None` for a connection built by the user, whose
    /// pushes do not reach us.
    notices: Option<Notices>,
    /// Orders SUBSCRIBE and UNSUBSCRIBE of this process, so that an unsubscription decided
    /// when the last listener left cannot overtake a new listener's subscription.
    subscriptions: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    pub(crate) fn new(
        connection: ConnectionManager,
        op_timeout: Duration,
        notices: Option<Notices>,
    ) -> Self {
        RedisBackend {
            connection,
            op_timeout,
            notices,
            subscriptions: Arc::default(),
        }
    }

    /// Listens for the fill of `entry`: subscribes to its channel unless this process already
    /// does. `None` when this connection cannot receive pushes.
    pub(crate) async fn listen(&self, entry: &str) -> Result<Option<Listener>, CacheError> {
        let Some(notices) = &self.notices else {
            return Ok(None);
        };
        let channel = notify::channel(entry);
        let (receiver, first) = notices.listen(&channel);
        let unsubscribe: Box<dyn FnOnce(String) + Send> = {
            let (connection, notices, subscriptions) = (
                self.connection.clone(),
                notices.clone(),
                Arc::clone(&self.subscriptions),
            );
            Box::new(move |channel: String| {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let mut connection = connection;
                    runtime.spawn(async move {
                        let _ordered = subscriptions.lock().await;
                        // A new listener may have come since: then it keeps the subscription.
                        if !notices.is_listened(&channel) {
                            let _ = connection.unsubscribe(channel).await;
                        }
                    });
                }
            })
        };
        let listener = Listener::new(
            notices.clone(),
            channel.clone(),
            receiver,
            Some(unsubscribe),
        );
        if first {
            let _ordered = self.subscriptions.lock().await;
            let mut connection = self.connection.clone();
            match tokio::time::timeout(self.op_timeout, connection.subscribe(&channel)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error.into()),
                Err(_) => return Err(CacheError::Timeout(self.op_timeout)),
            }
        }
        Ok(Some(listener))
    }

    async fn run_until<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
        deadline: Instant,
    ) -> Result<T, CacheError> {
        // ConnectionManager is a cheap handle (an Arc); commands need it mutably.
        let mut connection = self.connection.clone();
        match tokio::time::timeout_at(deadline, command.query_async(&mut connection)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(CacheError::Timeout(self.op_timeout)),
        }
    }

    pub(crate) async fn get(
        &self,
        key: &str,
        deadline: Instant,
    ) -> Result<Option<Bytes>, CacheError> {
        let value: Option<Vec<u8>> = self.run_until(redis::cmd("GET").arg(key), deadline).await?;
        Ok(value.map(Bytes::from))
    }

    pub(crate) async fn acquire_lease(
        &self,
        entry: &str,
        lease: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Acquired, CacheError> {
        static ACQUIRE: LazyLock<redis::Script> =
            LazyLock::new(|| redis::Script::new(lease::ACQUIRE_SCRIPT));
        let mut invocation = ACQUIRE.key(entry);
        invocation.key(lease).arg(token).arg(millis(ttl));
        let (acquired, value): (i64, Option<Vec<u8>>) = self.invoke(&invocation).await?;
        Ok(if acquired == 1 {
            Acquired::Held(value.map(Bytes::from))
        } else {
            Acquired::Busy
        })
    }

    pub(crate) async fn fill(
        &self,
        entry: &str,
        lease: &str,
        token: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<bool, CacheError> {
        static FILL: LazyLock<redis::Script> =
            LazyLock::new(|| redis::Script::new(lease::FILL_SCRIPT));
        let mut invocation = FILL.key(entry);
        invocation
            .key(lease)
            .arg(token)
            .arg(value.as_ref())
            .arg(millis(ttl))
            .arg(notify::channel(entry));
        let stored: i64 = self.invoke(&invocation).await?;
        Ok(stored == 1)
    }

    pub(crate) async fn release(
        &self,
        entry: &str,
        lease: &str,
        token: &str,
        clear_entry: bool,
    ) -> Result<(), CacheError> {
        static RELEASE: LazyLock<redis::Script> =
            LazyLock::new(|| redis::Script::new(lease::RELEASE_SCRIPT));
        let mut invocation = RELEASE.key(lease);
        invocation
            .key(entry)
            .arg(token)
            .arg(if clear_entry { "1" } else { "0" })
            .arg(notify::channel(entry));
        let _: i64 = self.invoke(&invocation).await?;
        Ok(())
    }

    /// SCAN + UNLINK in batches (never KEYS, which blocks the server); the number of entries
    /// (not leases) removed.
    pub(crate) async fn invalidate_matching(&self, full_pattern: &str) -> Result<u64, CacheError> {
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(full_pattern)
                .arg("COUNT")
                .arg(1000)
                .clone();
            let (next, keys): (u64, Vec<String>) = self
                .run_until(&scan, Instant::now() + self.op_timeout)
                .await?;
            if !keys.is_empty() {
                let unlink = redis::cmd("UNLINK").arg(&keys).clone();
                let _: u64 = self
                    .run_until(&unlink, Instant::now() + self.op_timeout)
                    .await?;
                removed += keys.iter().filter(|key| !key.ends_with(":lock")).count() as u64;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    pub(crate) async fn invalidate(&self, entry: &str, lease: &str) -> Result<bool, CacheError> {
        static INVALIDATE: LazyLock<redis::Script> =
            LazyLock::new(|| redis::Script::new(lease::INVALIDATE_SCRIPT));
        let mut invocation = INVALIDATE.key(entry);
        invocation.key(lease).arg(notify::channel(entry));
        let removed: i64 = self.invoke(&invocation).await?;
        Ok(removed > 0)
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, CacheError> {
        let mut connection = self.connection.clone();
        match tokio::time::timeout(self.op_timeout, invocation.invoke_async(&mut connection)).await
        {
            Ok(result) => Ok(result?),
            Err(_) => Err(CacheError::Timeout(self.op_timeout)),
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}
