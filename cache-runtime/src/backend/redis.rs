//! The Redis backend: one multiplexed, self-reconnecting connection, every operation bounded
//! by the per-operation timeout.

use crate::CacheError;
use bytes::Bytes;
use redis::aio::ConnectionManager;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone)]
pub(crate) struct RedisBackend {
    connection: ConnectionManager,
    op_timeout: Duration,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    pub(crate) fn new(connection: ConnectionManager, op_timeout: Duration) -> Self {
        RedisBackend {
            connection,
            op_timeout,
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, CacheError> {
        self.run_until(command, Instant::now() + self.op_timeout)
            .await
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

    pub(crate) async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run::<()>(
            redis::cmd("SET")
                .arg(key)
                .arg(value.as_ref())
                .arg("PX")
                .arg(ttl_ms),
        )
        .await
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let removed: u64 = self.run(redis::cmd("DEL").arg(key)).await?;
        Ok(removed > 0)
    }
}
