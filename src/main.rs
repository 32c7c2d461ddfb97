//! `dispatchd`: parses flags into a [`Config`], binds the listener and runs the server until
//! Ctrl-C or SIGTERM. Everything has an embedded default, so `dispatchd` alone runs the engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dispatch::config::Config;
use dispatch::events::{FsyncPolicy, MatchPolicy};
use tokio::net::TcpListener;

/// Real-time dispatch matching engine.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Candidates are available drivers within this many metres of the pickup.
    #[arg(long, default_value_t = 5000.0)]
    search_radius_m: f64,
    /// At most this many candidates are scored per search.
    #[arg(long, default_value_t = 20)]
    max_candidates: usize,
    /// Seconds a driver has to answer an offer.
    #[arg(long, default_value_t = 15)]
    offer_timeout_s: u64,
    /// Seconds a trip may search before it ends as NO_DRIVERS.
    #[arg(long, default_value_t = 120)]
    dispatch_timeout_s: u64,
    /// How requests are paired with drivers: `greedy` (each at once) or `batch` (requests of
    /// a window matched together by a minimum-cost assignment).
    #[arg(long, value_enum, default_value_t = PolicyFlag::Greedy)]
    match_policy: PolicyFlag,
    /// With `--match-policy batch`, the longest a request waits for its batch, ms
    /// (100..=10000).
    #[arg(long, default_value_t = 2000)]
    batch_window_ms: u64,
    /// Directory of the durable event log (recovered on start).
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Run without the durable log: events live only in memory.
    #[arg(long)]
    ephemeral: bool,
    /// When log writes reach the disk: always (fsync per command), batch (one fsync per group
    /// of commands, before any is acknowledged) or never (leave it to the OS).
    #[arg(long, default_value = "batch")]
    fsync: FsyncPolicy,
    /// On a corrupt record in the middle of the log, cut the log there instead of refusing to
    /// start (events from that point on are lost).
    #[arg(long)]
    truncate_corrupt_log: bool,
}

/// `--match-policy` values.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum PolicyFlag {
    Greedy,
    Batch,
}

impl Flags {
    fn into_config(self) -> Result<Config, String> {
        if !(self.search_radius_m.is_finite() && self.search_radius_m > 0.0) {
            return Err(format!(
                "--search-radius-m must be positive, got {}",
                self.search_radius_m
            ));
        }
        if self.max_candidates == 0 {
            return Err("--max-candidates must be at least 1".into());
        }
        if self.offer_timeout_s == 0 {
            return Err("--offer-timeout-s must be at least 1".into());
        }
        let mut config = Config {
            listen: self.listen,
            ..Config::default()
        };
        config.dispatch.search_radius_m = self.search_radius_m;
        config.dispatch.max_candidates = self.max_candidates;
        config.dispatch.offer_timeout = Duration::from_secs(self.offer_timeout_s);
        config.dispatch.dispatch_timeout = Duration::from_secs(self.dispatch_timeout_s);
        config.dispatch.policy = match self.match_policy {
            PolicyFlag::Greedy => MatchPolicy::Greedy,
            PolicyFlag::Batch => MatchPolicy::Batch,
        };
        config.dispatch.batch_window = Duration::from_millis(self.batch_window_ms);
        config
            .dispatch
            .validate()
            .map_err(|e| format!("--batch-window-ms: {e}"))?;
        config.log.data_dir = (!self.ephemeral).then_some(self.data_dir);
        config.log.fsync = self.fsync;
        config.log.truncate_corrupt = self.truncate_corrupt_log;
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = match Flags::parse().into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dispatchd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("dispatchd: cannot listen on {}: {e}", config.listen);
            return std::process::ExitCode::from(1);
        }
    };
    let addr = listener.local_addr().map_or(config.listen, |a| a);
    tracing::info!(%addr, "dispatchd listening (gRPC, health, reflection)");
    println!("dispatchd listening on {addr}");
    match dispatch::server::serve(listener, config, shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("dispatchd stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dispatchd: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        // If the handler cannot be installed we simply never see Ctrl-C.
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; draining");
}
