//! Starting and stopping a `dispatchd` process when no `--target` is given.
//!
//! The server binary is looked up next to the load generator's own executable (cargo puts both
//! in the same target directory) unless a path is given. It listens on a free loopback port
//! picked by binding port 0 and releasing it; readiness is polled with QueryService.GetStats,
//! which proves the real service (not just the socket) is up. It runs in a fresh temporary
//! directory (removed afterwards), so anything it writes relative to its working directory
//! (e.g. a `./data` event log) neither pollutes the caller's directory nor leaks state from an
//! earlier run into this one.

use crate::error::{Error, Result};
use dispatch::pb;
use dispatch::pb::query_service_client::QueryServiceClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long the server may take to become ready.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// A `dispatchd` child process, killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// The loopback address it listens on (`127.0.0.1:PORT`).
    pub addr: String,
    /// Where its stderr goes (inside `work_dir`).
    pub log_path: PathBuf,
    /// Its working directory, removed when it stops.
    pub work_dir: PathBuf,
}

/// The `dispatchd` next to the running executable (or one directory up, for test binaries
/// that live in `target/<profile>/deps`).
pub fn default_server_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let name = format!("dispatchd{}", std::env::consts::EXE_SUFFIX);
    [dir.join(&name), dir.parent()?.join(&name)]
        .into_iter()
        .find(|p| p.is_file())
}

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range so no outgoing connection
/// takes it before the server binds it ([`dispatch::cluster::testkit::free_ports`]); a race
/// with another process binding it explicitly is still possible, and the server would then fail
/// to start and we would say so.
pub fn free_port() -> Result<u16> {
    dispatch::cluster::testkit::free_ports(1)
        .map(|ports| ports[0])
        .map_err(Error::Server)
}

impl ServerProcess {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts `bin --listen 127.0.0.1:PORT [args]` and waits until it answers GetStats.
    pub async fn start(bin: &Path, args: &[String]) -> Result<ServerProcess> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let work_dir =
            std::env::temp_dir().join(format!("loadgen-dispatchd-{}-{port}", std::process::id()));
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| Error::Io { path, source }
        };
        std::fs::create_dir_all(&work_dir).map_err(io_err(&work_dir))?;
        let log_path = work_dir.join("dispatchd.log");
        let log = std::fs::File::create(&log_path).map_err(io_err(&log_path))?;
        let child = Command::new(bin)
            .current_dir(&work_dir)
            .arg("--listen")
            .arg(&addr)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::Server(format!("cannot start {}: {e}", bin.display())))?;
        let mut server = ServerProcess {
            child,
            addr,
            log_path,
            work_dir,
        };
        if let Err(e) = server.wait_ready().await {
            // The log goes with the working directory when `server` drops: quote its end.
            let log = std::fs::read_to_string(&server.log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            let why = match e {
                Error::Server(why) => why,
                other => other.to_string(),
            };
            return Err(Error::Server(format!("{why}; its log ends:\n{tail}")));
        }
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + READY_LIMIT;
        let uri = format!("http://{}", self.addr);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Server(format!(
                    "dispatchd exited with {status} before becoming ready"
                )));
            }
            if let Ok(mut client) = QueryServiceClient::connect(uri.clone()).await {
                match client.get_stats(pb::GetStatsRequest {}).await {
                    Ok(_) => return Ok(()),
                    // The service answered; it only wants a token this probe does not send.
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                        ) =>
                    {
                        return Ok(());
                    }
                    Err(_) => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Server(format!(
                    "dispatchd on {} not ready within {READY_LIMIT:?}",
                    self.addr
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server (kill and reap).
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        // Already exited is fine; there is nothing else to do about a failed kill.
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Best effort: a leftover temporary directory is harmless.
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
