//! A real Redis Cluster on loopback: primaries and their replicas, each a [`RedisServer`]
//! started with `--cluster-enabled yes`, joined by `redis-cli --cluster create`. Fault tools:
//! kill a node, fail over by hand, move a slot (with its keys) to another primary.

use crate::{RedisServer, TestCa, TestkitError, free_port};
use std::ffi::OsStr;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long the cluster may take to agree on its slots after a change.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// The node's id.
    pub id: String,
    /// Its loopback port.
    pub port: u16,
    /// Whether it is a primary (else a replica).
    pub primary: bool,
    /// The id of its primary, for a replica.
    pub primary_id: Option<String>,
    /// Whether the others consider it failed.
    pub failed: bool,
}

/// A running local Redis Cluster, every node killed on drop.
///
/// ```no_run
/// let cluster = redis_memo_testkit::RedisCluster::start().expect("redis-server and redis-cli");
/// let urls = cluster.urls(); // one redis:// URL per node
/// # drop(urls);
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Each node's id (kept across restarts in its `nodes.conf`), read once at start: a dead
    /// node cannot be asked.
    ids: Vec<String>,
}

impl RedisCluster {
    /// Starts 3 primaries with one replica each, with a short `cluster-node-timeout` (1 s) so
    /// a failed primary is replaced within seconds, and waits until every node agrees.
    ///
    /// # Errors
    /// [`TestkitError::NotInstalled`] when `redis-server` is missing; [`TestkitError::Io`]
    /// when `redis-cli` is missing or the cluster does not form.
    pub fn start() -> Result<RedisCluster, TestkitError> {
        Self::start_with(3, 1)
    }

    /// Starts `primaries` primaries with `replicas` replicas each.
    ///
    /// # Errors
    /// As for [`RedisCluster::start`].
    pub fn start_with(primaries: usize, replicas: usize) -> Result<RedisCluster, TestkitError> {
        Self::start_nodes(primaries, replicas, None)
    }

    /// Starts 3 primaries with one replica each that also accept TLS (certificates signed by
    /// `ca`), on [`RedisCluster::tls_urls`]; the cluster bus and replication use TLS too. The
    /// plain ports stay open for the testkit's own checks; a TLS client is told the nodes'
    /// TLS ports.
    ///
    /// # Errors
    /// As for [`RedisCluster::start`].
    pub fn start_tls(ca: &TestCa) -> Result<RedisCluster, TestkitError> {
        Self::start_nodes(3, 1, Some(ca))
    }

    fn start_nodes(
        primaries: usize,
        replicas: usize,
        tls: Option<&TestCa>,
    ) -> Result<RedisCluster, TestkitError> {
        let mut nodes = Vec::new();
        for _ in 0..primaries * (1 + replicas) {
            nodes.push(start_node(tls)?);
        }
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(
                nodes
                    .iter()
                    .map(|node| format!("127.0.0.1:{}", node.port())),
            )
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => TestkitError::Io(std::io::Error::other(
                    "`redis-cli` was not found on PATH (Debian: `apt-get install -y redis-tools`)",
                )),
                _ => TestkitError::Io(error),
            })?;
        if !output.status.success() {
            return Err(TestkitError::Io(std::io::Error::other(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&output.stdout)
            ))));
        }
        let ids = nodes
            .iter()
            .map(|node| node_query(node, redis::cmd("CLUSTER").arg("MYID")))
            .collect::<Result<_, _>>()?;
        let cluster = RedisCluster { nodes, ids };
        cluster.wait_settled()?;
        Ok(cluster)
    }

    /// One `redis://` URL per node (any one is enough for a cluster client to find the rest).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// One `rediss://` URL per node, for a cluster started with [`RedisCluster::start_tls`].
    pub fn tls_urls(&self) -> Vec<String> {
        self.nodes.iter().filter_map(RedisServer::tls_url).collect()
    }

    /// Every node, primaries and replicas, in start order.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// A cluster client for inspecting the cluster directly from a test.
    ///
    /// # Panics
    /// If the URLs are refused (they are not).
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(self.urls()).expect("valid node URLs")
    }

    /// The nodes as a running node sees them.
    ///
    /// # Errors
    /// When no node answers.
    pub fn topology(&self) -> Result<Vec<ClusterNode>, TestkitError> {
        let mut last_error = None;
        for node in self.running() {
            match node_query::<String>(node, redis::cmd("CLUSTER").arg("NODES")) {
                Ok(text) => return Ok(parse_nodes(&text)),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| other("no node of the cluster runs")))
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    ///
    /// # Errors
    /// When no node answers.
    pub fn slot_of(&self, key: &str) -> Result<u16, TestkitError> {
        let node = self.running().next().ok_or_else(|| other("no node runs"))?;
        node_query(node, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
    }

    /// The index (in [`RedisCluster::nodes`]) of the primary that serves `slot`.
    ///
    /// # Errors
    /// When no node answers or none serves the slot.
    pub fn primary_of_slot(&self, slot: u16) -> Result<usize, TestkitError> {
        let node = self.running().next().ok_or_else(|| other("no node runs"))?;
        let ranges: redis::Value = node_query(node, redis::cmd("CLUSTER").arg("SLOTS"))?;
        let redis::Value::Array(ranges) = ranges else {
            return Err(other("CLUSTER SLOTS: unexpected reply"));
        };
        for range in ranges {
            let redis::Value::Array(parts) = range else {
                continue;
            };
            let (Some(start), Some(end), Some(primary)) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                continue;
            };
            let (Ok(start), Ok(end)) = (
                redis::from_redis_value_ref::<u16>(start),
                redis::from_redis_value_ref::<u16>(end),
            ) else {
                continue;
            };
            if (start..=end).contains(&slot) {
                let redis::Value::Array(address) = primary else {
                    break;
                };
                let port: u16 = address
                    .get(1)
                    .and_then(|port| redis::from_redis_value_ref(port).ok())
                    .ok_or_else(|| other("CLUSTER SLOTS: no port"))?;
                return self.index_of_port(port);
            }
        }
        Err(other(format!("no primary serves slot {slot}")))
    }

    /// Kills node `index` (`SIGKILL`). If it was a primary, its replica is promoted once the
    /// others agree it failed (see [`RedisCluster::wait_settled`]).
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].stop();
    }

    /// Starts a killed node again, with its old identity; it rejoins (as a replica of whoever
    /// took its slots).
    ///
    /// # Errors
    /// As for [`RedisServer::restart`].
    pub fn revive(&mut self, index: usize) -> Result<(), TestkitError> {
        self.nodes[index].restart()
    }

    /// Freezes node `index` with `SIGSTOP` (see [`RedisServer::pause`]).
    ///
    /// # Errors
    /// If the signal cannot be sent.
    pub fn pause(&mut self, index: usize) -> Result<(), TestkitError> {
        self.nodes[index].pause()
    }

    /// Thaws node `index`.
    ///
    /// # Errors
    /// If the signal cannot be sent.
    pub fn resume(&mut self, index: usize) -> Result<(), TestkitError> {
        self.nodes[index].resume()
    }

    /// `CLUSTER FAILOVER` on replica `index`: it and its primary swap roles without data loss.
    /// Returns once the replica is a primary.
    ///
    /// # Errors
    /// When the node refuses (it is not a replica) or the swap does not happen in time.
    pub fn failover(&self, index: usize) -> Result<(), TestkitError> {
        let replica = &self.nodes[index];
        node_query::<()>(replica, redis::cmd("CLUSTER").arg("FAILOVER"))?;
        let id = self.id_of(index)?;
        self.wait_for(|nodes| nodes.iter().any(|node| node.id == id && node.primary))?;
        self.wait_settled()
    }

    /// The replica (index) of the primary at `index`.
    ///
    /// # Errors
    /// When it has none or the cluster does not answer.
    pub fn replica_of(&self, index: usize) -> Result<usize, TestkitError> {
        let id = self.id_of(index)?;
        let topology = self.topology()?;
        let replica = topology
            .iter()
            .find(|node| node.primary_id.as_deref() == Some(id.as_str()))
            .ok_or_else(|| other(format!("node {index} has no replica")))?;
        self.index_of_port(replica.port)
    }

    /// Moves `slot` and its keys to the primary at `to`, the way `redis-cli --cluster reshard`
    /// does: IMPORTING / MIGRATING, `MIGRATE` in batches, then `SETSLOT .. NODE` everywhere.
    /// Clients meet `ASK` while keys move and `MOVED` after. `between_batches` runs after each
    /// batch of keys moved (a test can send traffic there).
    ///
    /// # Errors
    /// When a step is refused.
    pub fn migrate_slot(
        &self,
        slot: u16,
        to: usize,
        mut between_batches: impl FnMut(),
    ) -> Result<(), TestkitError> {
        let from = self.primary_of_slot(slot)?;
        if from == to {
            return Ok(());
        }
        let (source, target) = (&self.nodes[from], &self.nodes[to]);
        let (source_id, target_id) = (self.id_of(from)?, self.id_of(to)?);
        let setslot = |state: &str, id: &str| {
            redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(id)
                .clone()
        };
        node_query::<()>(target, &setslot("IMPORTING", &source_id))?;
        node_query::<()>(source, &setslot("MIGRATING", &target_id))?;
        loop {
            let keys: Vec<Vec<u8>> = node_query(
                source,
                redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(10),
            )?;
            if keys.is_empty() {
                break;
            }
            let mut migrate = redis::cmd("MIGRATE");
            migrate
                .arg("127.0.0.1")
                .arg(target.port())
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("REPLACE")
                .arg("KEYS")
                .arg(keys);
            node_query::<()>(source, &migrate)?;
            between_batches();
        }
        for node in self.running() {
            let primary = self
                .topology()?
                .iter()
                .any(|known| known.port == node.port() && known.primary);
            if primary {
                node_query::<()>(node, &setslot("NODE", &target_id))?;
            }
        }
        self.wait_settled()
    }

    /// Waits until every running node reports `cluster_state:ok`, agrees on every other node's
    /// role, and no running primary lacks its slots' coverage.
    ///
    /// # Errors
    /// When that does not happen within 30 s.
    pub fn wait_settled(&self) -> Result<(), TestkitError> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            if self.settled() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(other("the cluster did not settle within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn settled(&self) -> bool {
        let mut views = Vec::new();
        for node in self.running() {
            let Ok(info) = node_query::<String>(node, redis::cmd("CLUSTER").arg("INFO")) else {
                return false;
            };
            if !info.contains("cluster_state:ok") {
                return false;
            }
            let Ok(text) = node_query::<String>(node, redis::cmd("CLUSTER").arg("NODES")) else {
                return false;
            };
            let mut view: Vec<(u16, bool, bool)> = parse_nodes(&text)
                .into_iter()
                .map(|known| (known.port, known.primary, known.failed))
                .collect();
            view.sort_unstable();
            views.push(view);
        }
        let running: Vec<u16> = self.running().map(RedisServer::port).collect();
        // Every running node agrees, sees every running node as healthy, and the replicas
        // have finished their first sync.
        views.windows(2).all(|pair| pair[0] == pair[1])
            && views.first().is_some_and(|view| {
                view.iter()
                    .filter(|(port, _, _)| running.contains(port))
                    .all(|(_, _, failed)| !failed)
            })
            && self.running().all(replica_synced)
    }

    fn wait_for(&self, done: impl Fn(&[ClusterNode]) -> bool) -> Result<(), TestkitError> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while Instant::now() < deadline {
            if self.topology().is_ok_and(|nodes| done(&nodes)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(other("the cluster did not change as expected within 30 s"))
    }

    fn running(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|node| node.pid().is_some())
    }

    fn id_of(&self, index: usize) -> Result<String, TestkitError> {
        Ok(self.ids[index].clone())
    }

    fn index_of_port(&self, port: u16) -> Result<usize, TestkitError> {
        self.nodes
            .iter()
            .position(|node| node.port() == port)
            .ok_or_else(|| other(format!("no node on port {port}")))
    }
}

/// Starts one cluster-enabled server. The cluster bus needs a port of its own, found free
/// before the server starts: another process may take it first, so a failed start is
/// retried with new ports.
fn start_node(tls: Option<&TestCa>) -> Result<RedisServer, TestkitError> {
    const ATTEMPTS: usize = 5;
    let mut attempt = 1;
    loop {
        let bus_port = free_port()?.to_string();
        let mut args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--cluster-port",
            &bus_port,
            // A replica that lost its primary briefly may still be promoted.
            "--cluster-replica-validity-factor",
            "0",
            // Replicas sync at once (the default waits 5 s for more replicas to join).
            "--repl-diskless-sync-delay",
            "0",
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
        let started = match tls {
            Some(ca) => {
                args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
                RedisServer::start_tls_with(ca, &args)
            }
            None => RedisServer::start_configured(OsStr::new("redis-server"), &args, free_port),
        };
        match started {
            Err(TestkitError::NotReady { .. }) if attempt < ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

/// Whether `node`, if a replica, has finished syncing with its primary.
fn replica_synced(node: &RedisServer) -> bool {
    let Ok(info) = node_query::<String>(node, redis::cmd("INFO").arg("replication")) else {
        return false;
    };
    !info.contains("role:slave") || info.contains("master_link_status:up")
}

/// Runs `command` on one node, with short timeouts (a paused node must not hang the test).
fn node_query<T: redis::FromRedisValue>(
    node: &RedisServer,
    command: &redis::Cmd,
) -> Result<T, TestkitError> {
    let mut connection = node
        .client()
        .get_connection_with_timeout(Duration::from_secs(1))
        .map_err(redis_error)?;
    connection
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(redis_error)?;
    command.query(&mut connection).map_err(redis_error)
}

fn redis_error(error: redis::RedisError) -> TestkitError {
    TestkitError::Io(std::io::Error::other(error.to_string()))
}

fn other(message: impl Into<String>) -> TestkitError {
    TestkitError::Io(std::io::Error::other(message.into()))
}

/// Parses `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <primary id or -> ...`.
fn parse_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let id = fields.next()?.to_owned();
            let address = fields.next()?;
            let flags = fields.next()?;
            let primary_id = fields.next()?;
            let port = address
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let flags: Vec<&str> = flags.split(',').collect();
            Some(ClusterNode {
                id,
                port,
                primary: flags.contains(&"master"),
                primary_id: (primary_id != "-").then(|| primary_id.to_owned()),
                failed: flags.contains(&"fail") || flags.contains(&"fail?"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_fails_over_and_moves_a_slot() {
        let mut cluster = RedisCluster::start().expect("redis-server and redis-cli");
        let topology = cluster.topology().unwrap();
        assert_eq!(topology.iter().filter(|node| node.primary).count(), 3);
        assert_eq!(topology.iter().filter(|node| !node.primary).count(), 3);

        let mut connection = cluster.client().get_connection().unwrap();
        let () = redis::cmd("SET")
            .arg("{k}a")
            .arg("1")
            .query(&mut connection)
            .unwrap();
        let slot = cluster.slot_of("{k}a").unwrap();
        let primary = cluster.primary_of_slot(slot).unwrap();

        let replica = cluster.replica_of(primary).unwrap();
        cluster.failover(replica).unwrap();
        assert_eq!(cluster.primary_of_slot(slot).unwrap(), replica);

        let other = (0..6)
            .find(|&index| {
                index != replica
                    && cluster
                        .topology()
                        .unwrap()
                        .iter()
                        .any(|node| node.port == cluster.nodes()[index].port() && node.primary)
            })
            .unwrap();
        cluster.migrate_slot(slot, other, || {}).unwrap();
        assert_eq!(cluster.primary_of_slot(slot).unwrap(), other);
        let mut connection = cluster.client().get_connection().unwrap();
        let value: String = redis::cmd("GET")
            .arg("{k}a")
            .query(&mut connection)
            .unwrap();
        assert_eq!(value, "1", "the key moved with its slot");

        let promoted = cluster.replica_of(other).unwrap();
        cluster.kill(other);
        cluster.wait_settled().unwrap();
        assert_eq!(cluster.primary_of_slot(slot).unwrap(), promoted);
    }
}
