//! A real `dispatchd` process for the multi-process tests: started on 127.0.0.1:0, ready once
//! it prints the address it listens on (it binds before it prints), killed when dropped.

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// A running `dispatchd`.
pub struct Dispatchd {
    pub child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// A lazily connected channel to it.
    pub channel: Channel,
}

impl Dispatchd {
    /// Starts `dispatchd --listen 127.0.0.1:0 ARGS` with `RUST_LOG=log`; its stderr is shown
    /// when `show_logs`. Waits (up to 30 s) for the address it announces on stdout.
    pub async fn spawn<I, S>(args: I, log: &str, show_logs: bool) -> Dispatchd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dispatchd"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", log)
            .stdout(Stdio::piped())
            .stderr(if show_logs {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("dispatchd starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let addr = loop {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("dispatchd announces its address within 30 s")
                .unwrap()
                .expect("dispatchd stdout open");
            if let Some(addr) = line.strip_prefix("dispatchd listening on ") {
                break addr.trim().to_string();
            }
        };
        // Keep reading so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .timeout(Duration::from_secs(30))
            .connect_lazy();
        Dispatchd {
            child,
            addr,
            channel,
        }
    }

    /// A cluster member for the multi-process tests: `--http-listen off --ephemeral EXTRA
    /// --config CONFIG`, logging at `info`, its logs shown when `CLUSTER_TEST_LOGS` is set.
    pub async fn cluster_member(config: &std::path::Path, extra: &[&str]) -> Dispatchd {
        let mut args: Vec<&OsStr> = vec!["--http-listen".as_ref(), "off".as_ref()];
        args.push("--ephemeral".as_ref());
        args.extend(extra.iter().map(OsStr::new));
        args.extend(["--config".as_ref(), config.as_os_str()]);
        let logs = std::env::var_os("CLUSTER_TEST_LOGS").is_some();
        Dispatchd::spawn(args, "info", logs).await
    }

    /// The process id (while it runs).
    pub fn pid(&self) -> String {
        self.child.id().expect("running").to_string()
    }
}

/// Sends `sig` (`-STOP`, `-CONT`, `-TERM`) to process `pid`.
pub fn signal(pid: &str, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, pid])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig} {pid}");
}
