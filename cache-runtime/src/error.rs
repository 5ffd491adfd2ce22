//! The error type of cache operations that a caller asked for directly (invalidation,
//! configuration). Memoized calls never return it: they fail open.

use std::time::Duration;

/// Why a cache operation failed.
///
/// Memoized functions never surface this type: when Redis fails they run the function
/// (fail-open). It is returned by the operations whose failure the caller must see, such as
/// `invalidate_<fn>` (a silently lost invalidation would serve stale data) and
/// [`CacheBuilder::build`](crate::CacheBuilder::build).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// Redis answered with an error, or the connection failed.
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time: within the per-operation timeout, or within what was
    /// left of it for a step of a memoized call (the call's steps before its body share one).
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis was not tried: after repeated failures the circuit breaker skips it for a while
    /// (see [`CacheBuilder::breaker`](crate::CacheBuilder::breaker)).
    #[error("redis is skipped while the circuit breaker is open after repeated failures")]
    Unavailable,
    /// A memoized function or helper without `cache = ...` ran before a global cache was
    /// installed.
    #[error(
        "no cache installed: call `redis_memo::install(cache)` at start-up, \
         or give the attribute `cache = <expr>`"
    )]
    NotInstalled,
    /// [`install`](crate::install) was called a second time.
    #[error("a global cache is already installed; `install` may be called once per process")]
    AlreadyInstalled,
    /// The builder was given an invalid setting.
    #[error("invalid cache configuration: {0}")]
    Config(String),
}

impl CacheError {
    /// True when Redis did not answer within the operation timeout.
    pub fn is_timeout(&self) -> bool {
        match self {
            CacheError::Timeout(_) => true,
            CacheError::Redis(e) => e.is_timeout(),
            _ => false,
        }
    }

    /// True when Redis is unreachable, slow or not serving (as opposed to a server that
    /// answered with an error reply such as `WRONGTYPE`, `OOM` or `READONLY`). Only these
    /// feed the circuit breaker.
    pub fn is_outage(&self) -> bool {
        match self {
            CacheError::Timeout(_) | CacheError::Unavailable => true,
            // Replies that say something about this key or command, from a server that is
            // otherwise serving; anything else (I/O, LOADING, BUSY, NOAUTH, CLUSTERDOWN, ..)
            // means it is not.
            CacheError::Redis(e) => !matches!(
                e.code(),
                Some(
                    "WRONGTYPE" | "OOM" | "READONLY" | "NOPERM" | "ERR" | "NOSCRIPT" | "EXECABORT"
                )
            ),
            _ => false,
        }
    }

    /// A reply of another shape than `command` answers with.
    pub(crate) fn unexpected_reply(command: &str) -> CacheError {
        CacheError::Redis(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected reply",
            command.to_owned(),
        )))
    }

    /// True for Redis's `WRONGTYPE` reply: a key holds data of another type than the command
    /// expects (someone else's data under a cache key).
    pub(crate) fn is_wrong_type(&self) -> bool {
        matches!(self, CacheError::Redis(e) if e.code() == Some("WRONGTYPE"))
    }

    /// True for a timeout of an operation that had (nearly) a whole `op_timeout`: evidence
    /// that Redis is not answering, unlike a step that ran out of what was left of a call's
    /// budget after a slow but answered read.
    pub(crate) fn is_silence(&self, op_timeout: Duration) -> bool {
        matches!(self, CacheError::Timeout(budget) if *budget >= op_timeout * 9 / 10)
    }

    /// True when the connection to Redis was refused or dropped.
    pub fn is_connection_error(&self) -> bool {
        matches!(self, CacheError::Redis(e) if e.is_connection_dropped() || e.is_connection_refusal() || e.is_io_error())
    }
}
