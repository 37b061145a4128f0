use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::server::RedisServer;

/// Number of hash slots in a Redis Cluster.
const SLOTS: u16 = 16384;
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A real Redis Cluster of N masters (no replicas) on `127.0.0.1`, each node a
/// [`RedisServer`] with `cluster-enabled yes`. Every node is killed when this is dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Start `masters` nodes, split the 16384 slots evenly between them, join them and wait
    /// until every node reports `cluster_state:ok` and knows every other node.
    ///
    /// # Errors
    /// [`Error::RedisServerNotFound`] when `redis-server` is missing, [`Error::ClusterNotReady`]
    /// when the cluster does not converge within 30 s.
    ///
    /// # Panics
    /// When `masters` is 0.
    pub fn start(masters: usize) -> Result<Self> {
        assert!(masters > 0, "a cluster needs at least one master");
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            let node = RedisServer::builder()
                .config("cluster-enabled", "yes")
                .config("cluster-config-file", "nodes.conf")
                .config("cluster-node-timeout", "2000")
                .start_cluster_node()?;
            nodes.push(node);
        }
        let cluster = Self { nodes };
        cluster.form()?;
        cluster.wait_until_ok()?;
        Ok(cluster)
    }

    /// [`start`](Self::start) from async code, on tokio's blocking pool.
    ///
    /// # Errors
    /// As [`start`](Self::start); [`Error::Io`] if the blocking task panicked (as it does
    /// for `masters == 0`).
    pub async fn start_async(masters: usize) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::start(masters)).await?
    }

    fn form(&self) -> Result<()> {
        let per_node = SLOTS as usize / self.nodes.len();
        for (i, node) in self.nodes.iter().enumerate() {
            let mut conn = node.client().get_connection()?;
            // Distinct config epochs up front spare the cluster its epoch-collision dance.
            let _: () = redis::cmd("CLUSTER")
                .arg("SET-CONFIG-EPOCH")
                .arg(i + 1)
                .query(&mut conn)?;
            let first = i * per_node;
            let last = if i + 1 == self.nodes.len() {
                SLOTS as usize
            } else {
                first + per_node
            };
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTS")
                .arg((first..last).collect::<Vec<_>>())
                .query(&mut conn)?;
        }
        let mut first = self.nodes[0].client().get_connection()?;
        for node in &self.nodes[1..] {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(node.port())
                .query(&mut first)?;
        }
        Ok(())
    }

    /// Wait until every node reports `cluster_state:ok` and knows all N nodes.
    ///
    /// # Errors
    /// [`Error::ClusterNotReady`] with the last `CLUSTER INFO` seen after 30 s.
    pub fn wait_until_ok(&self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let known = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let mut last_info = String::new();
            let mut all_ok = true;
            for node in &self.nodes {
                let info = cluster_info(node).unwrap_or_else(|e| e.to_string());
                let ok = info.lines().any(|l| l.trim() == "cluster_state:ok")
                    && info.lines().any(|l| l.trim() == known);
                if !ok {
                    all_ok = false;
                    last_info = info;
                    break;
                }
            }
            if all_ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::ClusterNotReady(last_info));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The nodes' URLs (`redis://127.0.0.1:PORT`), in slot order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, in slot order: node 0 owns the lowest slots.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// One node, e.g. to kill, restart or pause it.
    ///
    /// # Panics
    /// When `index` is out of range.
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// `CLUSTER INFO` of node 0.
    ///
    /// # Errors
    /// When node 0 does not answer.
    pub fn info(&self) -> Result<String> {
        cluster_info(&self.nodes[0])
    }

    /// A cluster client that follows `MOVED`/`ASK` redirections.
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(self.urls())
            .expect("a list of redis://127.0.0.1:PORT URLs is always valid")
    }

    /// An async cluster connection (multiplexed, routes each command to its slot's node).
    ///
    /// # Errors
    /// When no node can be reached.
    pub async fn async_connection(&self) -> Result<redis::cluster_async::ClusterConnection> {
        Ok(self.client().get_async_connection().await?)
    }

    /// A `deadpool_redis::cluster::Pool` for the cluster.
    pub fn pool(&self) -> deadpool_redis::cluster::Pool {
        deadpool_redis::cluster::Config::from_urls(self.urls())
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .expect("a pool for valid URLs with the tokio runtime always builds")
    }
}

fn cluster_info(node: &RedisServer) -> Result<String> {
    let mut conn = node
        .client()
        .get_connection_with_timeout(Duration::from_millis(500))?;
    Ok(redis::cmd("CLUSTER").arg("INFO").query(&mut conn)?)
}
