//! A read through the in-process tier: the copies this process holds, and the rest from
//! Redis on the tracking connection of the node that serves each key (see [`Tracking`]), in
//! one round trip.

use super::cluster_tracking::{ClusterTracking, SlotMap};
use super::local::{Copies, Noted, Stripe};
use super::tracking::{TieredRead, Tracking, Values};
use crate::CacheError;
use bytes::Bytes;
use smallvec::SmallVec;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The in-process tier: its copies and the connections that keep them coherent.
#[derive(Debug, Clone)]
pub(crate) enum Tier {
    /// One server: one tracking connection.
    Server(Arc<Tracking>),
    /// A Redis Cluster: one tracking connection per primary.
    Cluster(Arc<ClusterTracking>),
}

impl Tier {
    pub(crate) fn copies(&self) -> &Copies {
        match self {
            Tier::Server(tracking) => tracking.copies(),
            Tier::Cluster(cluster) => cluster.copies(),
        }
    }

    /// Starts making the connections, in the background.
    pub(crate) fn start(&self) {
        match self {
            Tier::Server(tracking) => tracking.start(),
            Tier::Cluster(cluster) => cluster.learn(),
        }
    }

    /// A round trip on every tracking connection (see [`Tracking::sync`]): a `GET` of
    /// `probe_key` on one server (no permission beyond what reads need); on a cluster, the
    /// map learned again, then a `PING` on each primary's (a key lives on one node only).
    pub(crate) async fn sync(&self, probe_key: &str) -> Result<(), CacheError> {
        match self {
            Tier::Server(tracking) => tracking.sync(redis::cmd("GET").arg(probe_key)).await,
            Tier::Cluster(cluster) => cluster.sync().await,
        }
    }

    /// Which connection each of `keys` is read on; `None` while no map of a cluster is known.
    fn routes(&self, keys: &[&str]) -> Option<Routes<'_>> {
        match self {
            Tier::Server(tracking) => Some(Routes {
                nodes: Nodes::Server(tracking),
                of_key: keys.iter().map(|_| 0).collect(),
            }),
            Tier::Cluster(cluster) => {
                let map = cluster.map()?;
                let of_key = keys
                    .iter()
                    .map(|key| map.node_of(key))
                    .collect::<Option<_>>()?;
                Some(Routes {
                    nodes: Nodes::Cluster(map),
                    of_key,
                })
            }
        }
    }

    /// A node a read needed has no tracking connection up now.
    fn node_down(&self) {
        if let Tier::Cluster(cluster) = self {
            cluster.node_down();
        }
    }

    /// A node answered as if the slot map were wrong.
    fn redirected(&self) {
        if let Tier::Cluster(cluster) = self {
            cluster.redirected();
        }
    }
}

/// The tracking connections a read uses, and which of them each key goes to.
struct Routes<'t> {
    nodes: Nodes<'t>,
    of_key: SmallVec<[usize; 5]>,
}

enum Nodes<'t> {
    Server(&'t Arc<Tracking>),
    Cluster(Arc<SlotMap>),
}

impl Nodes<'_> {
    fn get(&self, node: usize) -> &Arc<Tracking> {
        match self {
            Nodes::Server(tracking) => tracking,
            Nodes::Cluster(map) => &map.nodes()[node],
        }
    }

    /// Whether keys of different slots may share one command (`MGET`).
    fn one_slot(&self) -> bool {
        matches!(self, Nodes::Server(_))
    }
}

/// Reads `keys` (an entry, then its tag tokens) through the tier, each kept for at most its
/// `max_ages` (`None`: read on the tracking connection, but neither served from a copy nor
/// kept). The values in the order of `keys` (`None` for a key Redis does not have), and
/// whether the copies answered alone. `None` when no connection tracks reads now: read from
/// the main connection instead.
///
/// When some values come from copies and others from Redis, the copies must still be current
/// once the replies are in, and only copies of a node asked in this read are used (on a
/// cluster, a copy is coherent with its own node's connection only): an invalidation Redis
/// sent before the reply has been applied by then, so a change made before this read began
/// is never mixed in (a tag token's copy with a newer entry, or the other way round). If one was dropped meanwhile, everything is read again
/// from Redis.
pub(crate) async fn read(
    tier: &Tier,
    keys: &[&str],
    max_ages: &[Option<Duration>],
    deadline: Instant,
) -> Option<Result<(Values, bool), CacheError>> {
    let copies = tier.copies();
    let stripes: SmallVec<[Stripe; 5]> = keys.iter().map(|key| copies.stripe_of(key)).collect();
    // Twice at most: the second pass uses no copy, so it always returns.
    for use_copies in [true, false] {
        let mut values = Values::new();
        let mut used: SmallVec<[(usize, Noted); 5]> = SmallVec::new();
        for (index, (key, max_age)) in keys.iter().zip(max_ages).enumerate() {
            let copy = max_age
                .filter(|_| use_copies)
                .and_then(|_| copies.get(key, stripes[index]));
            values.push(copy.map(|(bytes, noted)| {
                used.push((index, noted));
                bytes
            }));
        }
        if used.len() == keys.len() {
            return Some(Ok((values, true)));
        }
        // Noted before the map is read: a map installed since drops every copy (the epoch
        // moves), and the connections of the map read here may then be gone before a copy
        // kept on them could be invalidated.
        let epoch = copies.epoch();
        let routes = tier.routes(keys)?;
        let asked = nodes_to_ask(&mut values, &mut used, &routes.of_key);
        // A tag token's copy serves a later read only beside its entry's copy, or on its
        // entry's node (see `nodes_to_ask`): no other is asked for.
        let keep: SmallVec<[Option<Duration>; 5]> = max_ages
            .iter()
            .enumerate()
            .map(|(index, max_age)| {
                max_age.filter(|_| {
                    index == 0 || max_ages[0].is_some() || routes.of_key[index] == routes.of_key[0]
                })
            })
            .collect();
        // Each ticket is taken with its connection (so what is kept belongs to it); the
        // copies used above must still be current when it is taken, and unchanged once the
        // replies are in.
        let mut reads: SmallVec<[TieredRead; 3]> = SmallVec::new();
        for &node in &asked {
            let Some(read) = routes.nodes.get(node).begin(&stripes) else {
                tier.node_down();
                return None;
            };
            reads.push(read);
        }
        if reads.iter().any(|read| read.ticket.epoch() != epoch) {
            return None;
        }
        // Which of `reads` each key's node is (every used copy's node is asked).
        let read_of: SmallVec<[usize; 5]> = routes
            .of_key
            .iter()
            .map(|node| asked.iter().position(|asked| asked == node).unwrap_or(0))
            .collect();
        let current_at_ticket = used
            .iter()
            .all(|&(index, noted)| reads[read_of[index]].ticket.admits(index, noted));
        // Per asked node, the positions of the keys it is asked for.
        let missing: SmallVec<[SmallVec<[usize; 5]>; 3]> = asked
            .iter()
            .map(|&node| {
                (0..keys.len())
                    .filter(|&index| values[index].is_none() && routes.of_key[index] == node)
                    .collect()
            })
            .collect();
        let one_command = routes.nodes.one_slot();
        // One node (always on one server): awaited as is, without `join_all`'s allocation.
        let fetched: SmallVec<[Result<Fetched, CacheError>; 3]> = match reads.as_mut_slice() {
            [read] => {
                let tracking = routes.nodes.get(asked[0]);
                let fetched = fetch(
                    tracking,
                    read,
                    keys,
                    &missing[0],
                    &keep,
                    one_command,
                    deadline,
                )
                .await;
                smallvec::smallvec![fetched]
            }
            reads => {
                let fetches =
                    asked
                        .iter()
                        .zip(reads)
                        .zip(&missing)
                        .map(|((&node, read), missing)| {
                            let tracking = routes.nodes.get(node);
                            fetch(tracking, read, keys, missing, &keep, one_command, deadline)
                        });
                futures_util::future::join_all(fetches)
                    .await
                    .into_iter()
                    .collect()
            }
        };
        for (node_read, (missing, replies)) in missing.iter().zip(fetched).enumerate() {
            let replies = match replies {
                Ok(Fetched::Values(replies)) => replies,
                Ok(Fetched::Redirected) => {
                    tier.redirected();
                    return None;
                }
                Err(error) => return Some(Err(error)),
            };
            let ticket = &reads[node_read].ticket;
            for (&index, reply) in missing.iter().zip(replies) {
                if let Some(bytes) = reply {
                    if let Some(max_age) = keep[index] {
                        let key = (keys[index], stripes[index]);
                        copies.keep(ticket, index, key, bytes.clone(), max_age);
                    }
                    values[index] = Some(bytes);
                }
            }
        }
        let still_current = current_at_ticket
            && used.iter().all(|&(index, _)| {
                copies.unchanged(&reads[read_of[index]].ticket, index, stripes[index])
            });
        if still_current {
            return Some(Ok((values, false)));
        }
    }
    None
}

/// The nodes a read must ask: those of the keys without a copy. A copy of another node is
/// not used (nothing orders its invalidations before this read's replies): it leaves `used`
/// and `values`, and its node is asked too.
fn nodes_to_ask(
    values: &mut Values,
    used: &mut SmallVec<[(usize, Noted); 5]>,
    of_key: &[usize],
) -> SmallVec<[usize; 3]> {
    let mut asked: SmallVec<[usize; 3]> = SmallVec::new();
    let ask_missing = |values: &Values, asked: &mut SmallVec<[usize; 3]>| {
        for (index, value) in values.iter().enumerate() {
            if value.is_none() && !asked.contains(&of_key[index]) {
                asked.push(of_key[index]);
            }
        }
    };
    ask_missing(values, &mut asked);
    used.retain(|&mut (index, _)| {
        let counts = asked.contains(&of_key[index]);
        if !counts {
            values[index] = None;
        }
        counts
    });
    ask_missing(values, &mut asked);
    asked
}

/// What a node answered.
enum Fetched {
    /// The values, in the order asked.
    Values(Vec<Option<Bytes>>),
    /// `MOVED`, `ASK` or another cluster error: the slot map is wrong.
    Redirected,
}

/// The values of the `missing` of `keys`, each tracked (`CLIENT CACHING yes` just before, in
/// the same write) when it is to be kept. One `GET` or `MGET` on one server (tracking all of
/// them if any is kept); on a cluster node, one `GET` per key in a pipeline (an `MGET` must
/// not span slots).
async fn fetch(
    tracking: &Tracking,
    read: &mut TieredRead,
    keys: &[&str],
    missing: &[usize],
    max_ages: &[Option<Duration>],
    one_command: bool,
    deadline: Instant,
) -> Result<Fetched, CacheError> {
    let budget = deadline.saturating_duration_since(Instant::now());
    let connection = &mut read.connection;
    let sent = if one_command {
        let track = missing.iter().any(|&index| max_ages[index].is_some());
        futures_util::future::Either::Left(fetch_one_command(connection, keys, missing, track))
    } else {
        futures_util::future::Either::Right(fetch_each(connection, keys, missing, max_ages))
    };
    let replies = match tokio::time::timeout_at(deadline, sent).await {
        Ok(Ok(replies)) => replies,
        Ok(Err(error)) if error.is_cluster_error() => return Ok(Fetched::Redirected),
        Ok(Err(error)) => return Err(tracking.failed(read.id, error.into())),
        Err(_) => return Err(tracking.failed(read.id, CacheError::Timeout(budget))),
    };
    if replies.len() != missing.len() {
        return Err(CacheError::unexpected_reply("GET"));
    }
    replies
        .into_iter()
        .map(|reply| match reply {
            redis::Value::BulkString(bytes) => Ok(Some(Bytes::from(bytes))),
            redis::Value::Nil => Ok(None),
            _ => Err(CacheError::unexpected_reply("GET")),
        })
        .collect::<Result<_, _>>()
        .map(Fetched::Values)
}

/// `GET` or `MGET` of the `missing` of `keys`, all tracked if `track`: the replies in order.
async fn fetch_one_command(
    connection: &mut redis::aio::MultiplexedConnection,
    keys: &[&str],
    missing: &[usize],
    track: bool,
) -> redis::RedisResult<Vec<redis::Value>> {
    let command = if missing.len() == 1 { "GET" } else { "MGET" };
    let mut request = redis::cmd(command);
    for &index in missing {
        request.arg(keys[index]);
    }
    let reply = if track {
        let mut pipe = redis::pipe();
        // Error replies come back as values: a refused `CLIENT CACHING` must not let an
        // untracked read be kept, and `WRONGTYPE` keeps its code.
        pipe.ignore_errors();
        pipe.cmd("CLIENT").arg("CACHING").arg("YES");
        pipe.add_command(request);
        let (caching, reply): (redis::Value, redis::Value) = pipe.query_async(connection).await?;
        for value in [caching, reply.clone()] {
            if let redis::Value::ServerError(error) = value {
                return Err(redis::RedisError::from(error));
            }
        }
        reply
    } else {
        request.query_async(connection).await?
    };
    match reply {
        redis::Value::Array(replies) if missing.len() > 1 => Ok(replies),
        single if missing.len() == 1 => Ok(vec![single]),
        _ => Err(unexpected(command)),
    }
}

/// One `GET` per `missing` key of `keys` in a pipeline, each kept one tracked: the replies in
/// order.
async fn fetch_each(
    connection: &mut redis::aio::MultiplexedConnection,
    keys: &[&str],
    missing: &[usize],
    max_ages: &[Option<Duration>],
) -> redis::RedisResult<Vec<redis::Value>> {
    let mut pipe = redis::pipe();
    // As above: every reply is looked at, and a refused `CLIENT CACHING` fails the read.
    pipe.ignore_errors();
    let mut is_get = Vec::with_capacity(missing.len() * 2);
    for &index in missing {
        if max_ages[index].is_some() {
            pipe.cmd("CLIENT").arg("CACHING").arg("YES");
            is_get.push(false);
        }
        pipe.cmd("GET").arg(keys[index]);
        is_get.push(true);
    }
    let replies: Vec<redis::Value> = pipe.query_async(connection).await?;
    if replies.len() != is_get.len() {
        return Err(unexpected("GET"));
    }
    let mut values = Vec::with_capacity(missing.len());
    for (reply, is_get) in replies.into_iter().zip(is_get) {
        if let redis::Value::ServerError(error) = reply {
            return Err(redis::RedisError::from(error));
        }
        if is_get {
            values.push(reply);
        }
    }
    Ok(values)
}

fn unexpected(command: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply",
        command.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::Copies;

    /// `values` and `used` as a read finds them: a copy for each key in `with_copy`.
    fn found(
        copies: &Copies,
        keys: &[&str],
        with_copy: &[usize],
    ) -> (Values, SmallVec<[(usize, Noted); 5]>) {
        let stripes: Vec<Stripe> = keys.iter().map(|key| copies.stripe_of(key)).collect();
        let ticket = copies.ticket(&stripes);
        let mut values = Values::new();
        let mut used = SmallVec::new();
        for (index, key) in keys.iter().enumerate() {
            if with_copy.contains(&index) {
                copies.keep(
                    &ticket,
                    index,
                    (key, stripes[index]),
                    Bytes::from_static(b"x"),
                    Duration::from_secs(60),
                );
                let (bytes, noted) = copies.get(key, stripes[index]).unwrap();
                values.push(Some(bytes));
                used.push((index, noted));
            } else {
                values.push(None);
            }
        }
        (values, used)
    }

    #[test]
    fn a_copy_counts_only_on_a_node_the_read_asks() {
        let copies = Copies::new(1 << 20);
        let keys = ["entry", "tag:a", "tag:b"];
        // The entry on node 0 has no copy; tag a's copy is on node 0, tag b's on node 1.
        let (mut values, mut used) = found(&copies, &keys, &[1, 2]);
        let asked = nodes_to_ask(&mut values, &mut used, &[0, 0, 1]);
        assert_eq!(asked.as_slice(), &[0, 1], "tag b is read again from node 1");
        assert_eq!(
            used.iter().map(|(index, _)| *index).collect::<Vec<_>>(),
            vec![1]
        );
        assert!(values[1].is_some() && values[2].is_none());

        // One server: every node is the same, so every copy counts.
        let (mut values, mut used) = found(&copies, &keys, &[1, 2]);
        let asked = nodes_to_ask(&mut values, &mut used, &[0, 0, 0]);
        assert_eq!(asked.as_slice(), &[0]);
        assert_eq!(used.len(), 2);
    }
}
