//! What the Redis backend talks through: one server's connection, or a Redis Cluster's.
//!
//! Commands are the same on both, and redis-rs routes a keyed command (and a multi-slot
//! `MGET` or `DEL`, split per slot and sent in parallel) to the node that serves it. Three
//! things differ, and this module is where: a pipeline must not span slots on a cluster
//! ([`Link::slot_groups`]), `SCAN` walks one node at a time ([`Link::scan_targets`]), and fill
//! notices go over sharded pub/sub on a cluster (`SPUBLISH` / `SSUBSCRIBE`, delivered by the
//! node that owns the entry's slot rather than broadcast to every node).

use crate::CacheError;
use crate::backend::RedisConnection;
use crate::notify::Notices;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use std::collections::HashMap;
use std::sync::Arc;

/// The connection a [`RedisBackend`](crate::backend::RedisBackend) sends on.
#[derive(Clone)]
pub(crate) enum Link {
    /// One server (or a proxy in front of several), through a replaceable manager.
    Single(Arc<RedisConnection>),
    /// A Redis Cluster: redis-rs follows `MOVED` / `ASK`, refreshes the slot map and
    /// reconnects to each node by itself.
    Cluster(Arc<ClusterLink>),
}

/// A Redis Cluster connection with the notices its pushes feed.
pub(crate) struct ClusterLink {
    pub(crate) connection: ClusterConnection,
    /// Where pushed shard messages go; `None` when the connection was built without our push
    /// sender.
    pub(crate) notices: Option<Notices>,
    /// Orders SSUBSCRIBE and SUNSUBSCRIBE (see [`RedisConnection::subscriptions`]).
    pub(crate) subscriptions: tokio::sync::Mutex<()>,
    /// Single-node clients of the seed URLs, for [`Link::diagnose`] (empty for a cluster
    /// client built by the user).
    pub(crate) seeds: Vec<redis::Client>,
}

impl ClusterLink {
    /// Subscribes to `channel` again after the server dropped it (its slot moved: redis-rs
    /// routes the new `SSUBSCRIBE` to the slot's owner now), then lets its waiters look at
    /// their entry again: a fill announced in between reached nobody.
    pub(crate) async fn subscribe_again(&self, channel: String, timeout: std::time::Duration) {
        {
            let _ordered = self.subscriptions.lock().await;
            let mut connection = self.connection.clone();
            let _ = tokio::time::timeout(timeout, connection.ssubscribe(&channel)).await;
        }
        if let Some(notices) = &self.notices {
            notices.deliver(&channel, crate::notify::Notice::Released);
        }
    }
}

/// A cheap handle to send one request on.
#[derive(Clone)]
pub(crate) enum Handle {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Handle {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Handle::Single(connection) => connection.req_packed_command(cmd),
            Handle::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Handle::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Handle::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Handle::Single(connection) => connection.get_db(),
            Handle::Cluster(connection) => connection.get_db(),
        }
    }
}

impl Link {
    pub(crate) fn handle(&self) -> Handle {
        match self {
            Link::Single(connection) => Handle::Single(connection.manager()),
            Link::Cluster(cluster) => Handle::Cluster(cluster.connection.clone()),
        }
    }

    /// Lets the connection learn from a request's outcome (a single server's connection is
    /// replaced when it stops serving; a cluster connection heals by itself).
    pub(crate) fn observe<T>(&self, result: &Result<T, CacheError>) {
        if let Link::Single(connection) = self {
            connection.observe(result);
        }
    }

    pub(crate) fn notices(&self) -> Option<&Notices> {
        match self {
            Link::Single(connection) => connection.notices.as_ref(),
            Link::Cluster(cluster) => cluster.notices.as_ref(),
        }
    }

    pub(crate) fn subscriptions(&self) -> &tokio::sync::Mutex<()> {
        match self {
            Link::Single(connection) => &connection.subscriptions,
            Link::Cluster(cluster) => &cluster.subscriptions,
        }
    }

    /// Why the cluster cannot be reached, as a direct connection to a seed node says: redis-rs's
    /// cluster client reports only that it found no connection, which hides a refused
    /// certificate or password. `None` when a seed answers (or for one server, whose own
    /// error says it all).
    pub(crate) async fn diagnose(&self, timeout: std::time::Duration) -> Option<CacheError> {
        let Link::Cluster(cluster) = self else {
            return None;
        };
        let mut why = None;
        for seed in &cluster.seeds {
            match tokio::time::timeout(timeout, seed.get_multiplexed_async_connection()).await {
                Ok(Ok(_)) => return None,
                Ok(Err(error)) => why = Some(CacheError::from(error)),
                Err(_) => why = Some(CacheError::Timeout(timeout)),
            }
        }
        why
    }

    /// The command the lease scripts announce fills with: a shard channel on a cluster, so
    /// only the node of the entry's slot delivers it (the channel shares the entry's hash tag).
    pub(crate) fn publish_command(&self) -> &'static str {
        match self {
            Link::Single(_) => "PUBLISH",
            Link::Cluster(_) => "SPUBLISH",
        }
    }

    /// Subscribes to `channels` (one command; on a cluster, one per channel's node).
    pub(crate) async fn subscribe(&self, channels: Vec<String>) -> redis::RedisResult<()> {
        match self.handle() {
            Handle::Single(mut connection) => connection.subscribe(channels).await,
            Handle::Cluster(mut connection) => {
                for channel in channels {
                    connection.ssubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }

    pub(crate) async fn unsubscribe(&self, channel: String) -> redis::RedisResult<()> {
        match self.handle() {
            Handle::Single(mut connection) => connection.unsubscribe(channel).await,
            Handle::Cluster(mut connection) => connection.sunsubscribe(channel).await,
        }
    }

    /// The positions of `keys` grouped so that each group can be one pipeline: every key in
    /// one group on a single server, one group per slot on a cluster.
    pub(crate) fn slot_groups<K: AsRef<[u8]>>(&self, keys: &[K]) -> Vec<Vec<usize>> {
        match self {
            Link::Single(_) => vec![(0..keys.len()).collect()],
            Link::Cluster(_) => {
                let mut groups: HashMap<Slot, Vec<usize>> = HashMap::new();
                for (index, key) in keys.iter().enumerate() {
                    groups.entry(Slot::for_key(key)).or_default().push(index);
                }
                groups.into_values().collect()
            }
        }
    }

    /// Where a full `SCAN` must go: the one server, or every primary of a cluster (as
    /// `CLUSTER SLOTS` names them now).
    pub(crate) async fn scan_targets(&self) -> redis::RedisResult<Vec<ScanTarget>> {
        let Link::Cluster(cluster) = self else {
            return Ok(vec![ScanTarget::Server]);
        };
        let mut primaries: Vec<(String, u16)> = cluster_slots(&cluster.connection)
            .await?
            .into_iter()
            .map(|range| (range.host, range.port))
            .collect();
        primaries.sort_unstable();
        primaries.dedup();
        Ok(primaries
            .into_iter()
            .map(|(host, port)| ScanTarget::Node { host, port })
            .collect())
    }
}

/// One place a `SCAN` walks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanTarget {
    /// The single server.
    Server,
    /// One primary of a cluster.
    Node { host: String, port: u16 },
}

impl ScanTarget {
    /// Sends `command` (a `SCAN` step) to this target.
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        handle: &mut Handle,
        command: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        match (self, handle) {
            (ScanTarget::Node { host, port }, Handle::Cluster(connection)) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let reply = connection.route_command(command.clone(), routing).await?;
                Ok(redis::from_redis_value(reply)?)
            }
            (_, handle) => command.query_async(handle).await,
        }
    }
}

/// The cluster's slot ranges and their primaries, as one node (any) says now.
pub(crate) async fn cluster_slots(
    connection: &ClusterConnection,
) -> redis::RedisResult<Vec<SlotRange>> {
    let reply = connection
        .clone()
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
        )
        .await?;
    slot_ranges(&reply)
}

/// One range of a `CLUSTER SLOTS` reply, with its primary's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub(crate) start: u16,
    pub(crate) end: u16,
    pub(crate) host: String,
    pub(crate) port: u16,
}

/// The ranges of a `CLUSTER SLOTS` reply: `[[start, end, [host, port, ..], replicas..], ..]`.
fn slot_ranges(reply: &redis::Value) -> redis::RedisResult<Vec<SlotRange>> {
    let malformed = || {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected reply",
            "CLUSTER SLOTS".to_owned(),
        ))
    };
    let redis::Value::Array(ranges) = reply else {
        return Err(malformed());
    };
    ranges
        .iter()
        .map(|range| {
            let redis::Value::Array(parts) = range else {
                return Err(malformed());
            };
            let number = |index: usize| -> Option<u16> {
                parts
                    .get(index)
                    .and_then(|value| redis::from_redis_value_ref(value).ok())
            };
            let (Some(start), Some(end)) = (number(0), number(1)) else {
                return Err(malformed());
            };
            let Some(redis::Value::Array(primary)) = parts.get(2) else {
                return Err(malformed());
            };
            let host: String = primary
                .first()
                .and_then(|host| redis::from_redis_value_ref(host).ok())
                .ok_or_else(malformed)?;
            let port: u16 = primary
                .get(1)
                .and_then(|port| redis::from_redis_value_ref(port).ok())
                .ok_or_else(malformed)?;
            Ok(SlotRange {
                start,
                end,
                host,
                port,
            })
        })
        .collect()
}
