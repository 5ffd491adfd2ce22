//! The in-process tier on a Redis Cluster: a tracking connection per primary.
//!
//! A node tracks the keys read on it and tells the connection that read them, so each primary
//! gets a [`Tracking`] connection of its own (made from the seed URL with the node's address:
//! same user, password and TLS), and a key is read on the connection of the node that owns
//! its slot, by a slot map learned with `CLUSTER SLOTS`. The copies are shared. A copy is
//! coherent with the connection it was read on only, so a read that mixes copies with values
//! from Redis uses only copies of the nodes it asks (see [`tiered::read`](super::tiered)).
//!
//! Not redis-rs's cluster connection: it hands pushes to a channel (an invalidation could
//! reach us after a later reply) and reconnects to a node without telling us (the copies it
//! tracked would then never be invalidated).
//!
//! The map may be wrong after a slot moves or a failover. Every sign of that drops every
//! copy and learns the map again: a node answering `MOVED` or `ASK` (or another cluster
//! error), a node's tracking connection lost (which drops every copy by itself). Until a map
//! is known, reads go to the main cluster connection and keep nothing.

use super::link::{SlotRange, cluster_slots};
use super::local::Copies;
use super::tracking::Tracking;
use crate::CacheError;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// How many slots a cluster has.
const SLOTS: usize = 16384;

/// The least time between two attempts to learn the map in the background.
const RELEARN_EVERY: Duration = Duration::from_millis(100);

/// Which primary serves each slot, and its tracking connection.
pub(crate) struct SlotMap {
    owners: HashMap<Slot, usize>,
    nodes: Vec<Arc<Tracking>>,
    /// Each node's host and port, in the order of `nodes`.
    addresses: Vec<Address>,
}

/// Where learning the map stands.
#[derive(Debug, Default)]
struct Learning {
    /// A task is learning it now.
    running: bool,
    /// When the last one began.
    began: Option<Instant>,
}

/// A node's host and port.
type Address = (String, u16);

impl SlotMap {
    /// The position in [`SlotMap::nodes`] of the node that serves `key`.
    pub(crate) fn node_of(&self, key: &str) -> Option<usize> {
        self.owners.get(&Slot::for_key(key)).copied()
    }

    pub(crate) fn nodes(&self) -> &[Arc<Tracking>] {
        &self.nodes
    }
}

/// The tracking connections of a cluster's primaries and the copies they keep coherent.
pub(crate) struct ClusterTracking {
    /// The first seed's connection settings; a node's differ in host and port only.
    seed: redis::ConnectionInfo,
    /// The cache's cluster connection, to learn the map on.
    cluster: ClusterConnection,
    copies: Arc<Copies>,
    op_timeout: Duration,
    map: RwLock<Option<Arc<SlotMap>>>,
    /// Whether the map is being learned now, and since when: a node down or a stream of
    /// redirects learns it at most once per [`RELEARN_EVERY`].
    learning: Mutex<Learning>,
    /// This, for the tasks that learn the map (which must not keep it alive).
    me: std::sync::Weak<ClusterTracking>,
}

impl std::fmt::Debug for ClusterTracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTracking")
            .field("copies", &self.copies)
            .finish_non_exhaustive()
    }
}

impl ClusterTracking {
    pub(crate) fn new(
        seed: redis::ConnectionInfo,
        cluster: ClusterConnection,
        copies: Arc<Copies>,
        op_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| ClusterTracking {
            seed,
            cluster,
            copies,
            op_timeout,
            map: RwLock::new(None),
            learning: Mutex::new(Learning::default()),
            me: me.clone(),
        })
    }

    pub(crate) fn copies(&self) -> &Copies {
        &self.copies
    }

    /// The slot map, if one is known; otherwise starts learning one.
    pub(crate) fn map(&self) -> Option<Arc<SlotMap>> {
        let map = self
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if map.is_none() {
            self.learn();
        }
        map
    }

    /// A node answered as if the map were wrong: every copy goes (a slot may have moved
    /// under it), reads go to the main connection, and the map is learned again.
    pub(crate) fn redirected(&self) {
        *self.map.write().unwrap_or_else(PoisonError::into_inner) = None;
        self.copies.drop_all();
        self.learn();
    }

    /// A node's tracking connection is down (it drops every copy by itself): a failover may
    /// follow, so the map is learned again, keeping this one meanwhile.
    pub(crate) fn node_down(&self) {
        self.learn();
    }

    /// Starts learning the map in the background, unless that is under way or was asked for
    /// less than [`RELEARN_EVERY`] ago.
    pub(crate) fn learn(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(me) = self.me.upgrade() else {
            return;
        };
        {
            let mut learning = self.learning();
            let now = Instant::now();
            if learning.running || learning.began.is_some_and(|at| now < at + RELEARN_EVERY) {
                return;
            }
            *learning = Learning {
                running: true,
                began: Some(now),
            };
        }
        runtime.spawn(async move {
            let learned = tokio::time::timeout(me.op_timeout, me.slots()).await;
            if let Ok(Ok(ranges)) = learned {
                me.install(&ranges);
            }
            me.learning().running = false;
        });
    }

    fn learning(&self) -> std::sync::MutexGuard<'_, Learning> {
        self.learning.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn slots(&self) -> Result<Vec<SlotRange>, CacheError> {
        Ok(cluster_slots(&self.cluster).await?)
    }

    /// Replaces the map by one built from `ranges`, keeping the connections of the nodes
    /// that are still primaries; if a slot changed hands, every copy goes (it was tracked on
    /// a node that no longer tells us of changes).
    fn install(&self, ranges: &[SlotRange]) {
        let mut current = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let map = self.build(current.as_deref(), ranges);
        let moved = match (&*current, &map) {
            (Some(old), Some(new)) => old.owners.iter().any(|(slot, &position)| {
                new.owners.get(slot).map(|&now| &new.addresses[now])
                    != Some(&old.addresses[position])
            }),
            _ => true,
        };
        if moved {
            self.copies.drop_all();
        }
        *current = map.map(Arc::new);
    }

    /// The map `ranges` describe, reusing `old`'s connections. `None` if a node's connection
    /// cannot be described (a Unix socket seed): reads then stay on the main connection.
    fn build(&self, old: Option<&SlotMap>, ranges: &[SlotRange]) -> Option<SlotMap> {
        let known: HashMap<&Address, &Arc<Tracking>> = old
            .iter()
            .flat_map(|map| map.addresses.iter().zip(&map.nodes))
            .collect();
        let mut map = SlotMap {
            owners: HashMap::with_capacity(SLOTS),
            nodes: Vec::new(),
            addresses: Vec::new(),
        };
        for range in ranges {
            let address = (range.host.clone(), range.port);
            let position = match map.addresses.iter().position(|known| *known == address) {
                Some(position) => position,
                None => {
                    let node = match known.get(&address) {
                        Some(&node) => Arc::clone(node),
                        None => {
                            let client = self.client_for(&address)?;
                            let node =
                                Tracking::new(client, Arc::clone(&self.copies), self.op_timeout);
                            node.start();
                            node
                        }
                    };
                    map.nodes.push(node);
                    map.addresses.push(address);
                    map.nodes.len() - 1
                }
            };
            for slot in range.start..=range.end {
                if let Some(slot) = Slot::new(slot) {
                    map.owners.insert(slot, position);
                }
            }
        }
        Some(map)
    }

    /// A client for the node at `address`, with the seed's user, password and TLS settings.
    fn client_for(&self, (host, port): &Address) -> Option<redis::Client> {
        let address = match self.seed.addr() {
            redis::ConnectionAddr::Tcp(_, _) => redis::ConnectionAddr::Tcp(host.clone(), *port),
            redis::ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => redis::ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => return None,
        };
        redis::Client::open(self.seed.clone().set_addr(address)).ok()
    }

    /// Learns the map again (dropping every copy if a slot changed hands), then makes a
    /// round trip (`PING`) on every primary's tracking connection, in parallel (see
    /// [`Tracking::sync`]).
    pub(crate) async fn sync(&self) -> Result<(), CacheError> {
        let ranges = tokio::time::timeout(self.op_timeout, self.slots())
            .await
            .map_err(|_| CacheError::Timeout(self.op_timeout))??;
        self.install(&ranges);
        let map = self
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(CacheError::Unavailable)?;
        let ping = redis::cmd("PING");
        let synced =
            futures_util::future::join_all(map.nodes.iter().map(|node| node.sync(&ping))).await;
        synced.into_iter().collect()
    }
}
