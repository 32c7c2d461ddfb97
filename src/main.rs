//! `dispatchd`: reads the configuration (defaults < `--config` TOML < `DISPATCH_*` environment <
//! flags), binds the gRPC and HTTP (metrics, live map) listeners and runs the server until Ctrl-C or SIGTERM.
//! Everything has an embedded default, so `dispatchd` alone runs the engine.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use dispatch::config::{Config, LogFormat, TelemetryConfig};
use dispatch::config_load::{self, Override};
use dispatch::server::RunOptions;
use tokio::net::TcpListener;

/// mimalloc instead of the system allocator: the server allocates on every call (h2 frames,
/// prost messages, driver ids), and glibc's malloc and free were ~18 % of its CPU in a
/// NearbyDrivers profile (README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where the event log lives unless configured otherwise.
const DEFAULT_DATA_DIR: &str = "./data";

/// Real-time dispatch matching engine.
///
/// Every setting can also be given in a TOML file (--config) or as an environment variable
/// DISPATCH_SECTION__KEY (e.g. DISPATCH_DISPATCH__OFFER_TIMEOUT=20s); flags win over the
/// environment, which wins over the file. --print-config shows the result.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Flags {
    /// TOML configuration file (also: DISPATCH_CONFIG).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
    /// Address to serve gRPC on (port 0 picks a free port). [default: 127.0.0.1:50051]
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of the HTTP side (Prometheus `/metrics`, the live map and its API), or `off`.
    /// [default: 127.0.0.1:9464]
    #[arg(long, value_name = "ADDR|off")]
    http_listen: Option<String>,
    /// Deprecated name of --http-listen (still accepted, with a warning).
    #[arg(long, value_name = "ADDR|off", hide = true)]
    metrics_listen: Option<String>,
    /// Log format: human or json. [default: human]
    #[arg(long, value_name = "human|json")]
    log_format: Option<String>,
    /// Candidates are available drivers within this many metres of the pickup. [default: 5000]
    #[arg(long)]
    search_radius_m: Option<f64>,
    /// At most this many candidates are scored per search. [default: 20]
    #[arg(long)]
    max_candidates: Option<usize>,
    /// Seconds a driver has to answer an offer. [default: 15]
    #[arg(long)]
    offer_timeout_s: Option<u64>,
    /// Seconds a trip may search before it ends as NO_DRIVERS. [default: 120]
    #[arg(long)]
    dispatch_timeout_s: Option<u64>,
    /// Control commands that may wait for the dispatcher. [default: 16384]
    #[arg(long)]
    control_queue: Option<usize>,
    /// Unary calls in flight across all connections. [default: 4096]
    #[arg(long)]
    max_concurrent_requests: Option<usize>,
    /// How long shutdown waits for in-flight calls, e.g. 10s. [default: 10s]
    #[arg(long, value_name = "DURATION")]
    drain_timeout: Option<String>,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PATH")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, value_name = "PATH")]
    tls_key: Option<PathBuf>,
    /// How requests are paired with drivers: `greedy` (each at once) or `batch` (requests of
    /// a window matched together by a minimum-cost assignment). [default: greedy]
    #[arg(long, value_name = "greedy|batch")]
    match_policy: Option<String>,
    /// With `--match-policy batch`, the longest a request waits for its batch, ms
    /// (100..=10000). [default: 2000]
    #[arg(long)]
    batch_window_ms: Option<u64>,
    /// Directory of the durable event log, recovered on start. [default: ./data]
    #[arg(long, value_name = "PATH")]
    data_dir: Option<PathBuf>,
    /// Run without the durable log: events live only in memory.
    #[arg(long)]
    ephemeral: bool,
    /// When log writes reach the disk: always (fsync per command), batch (one fsync per group
    /// of commands, before any is acknowledged) or never (leave it to the OS). [default: batch]
    #[arg(long, value_name = "always|batch|never")]
    fsync: Option<String>,
    /// On a corrupt record in the middle of the log, cut the log there instead of refusing to
    /// start (events from that point on are lost).
    #[arg(long)]
    truncate_corrupt_log: bool,
    /// Record every command the engine executes, with its `now`, to an input journal beside
    /// the event log (`<data dir>/inputs`), for `dispatch-replay`.
    #[arg(long)]
    record_inputs: bool,
    /// Pickup ETA model: `haversine` (straight line x detour / speed for the hour) or `road`
    /// (routed on the OpenStreetMap graph of --road-map). [default: haversine]
    #[arg(long, value_name = "haversine|road")]
    eta_model: Option<String>,
    /// OpenStreetMap extract (.osm.pbf) the road ETA model routes on, read at start-up.
    #[arg(long, value_name = "PATH")]
    road_map: Option<PathBuf>,
    /// Any other key, e.g. --set surge.max_multiplier=2.5 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl Flags {
    /// The flags that were given, as overrides of dotted config keys.
    fn overrides(&self) -> Result<Vec<Override>, String> {
        let mut out = Vec::new();
        let mut add = |key: &str, value: Option<String>, flag: &str| {
            if let Some(value) = value {
                out.push(Override {
                    key: key.into(),
                    value,
                    origin: flag.into(),
                });
            }
        };
        let text = |v: &Option<PathBuf>| v.as_ref().map(|p| p.display().to_string());
        add("listen", self.listen.map(|a| a.to_string()), "--listen");
        // The old key, so the loader notes the deprecation; --http-listen, applied after it,
        // wins if both are given.
        add(
            "telemetry.metrics_listen",
            self.metrics_listen.clone(),
            "--metrics-listen",
        );
        add(
            "telemetry.http_listen",
            self.http_listen.clone(),
            "--http-listen",
        );
        add(
            "telemetry.log_format",
            self.log_format.clone(),
            "--log-format",
        );
        add(
            "dispatch.search_radius_m",
            self.search_radius_m.map(|v| format!("{v:?}")),
            "--search-radius-m",
        );
        add(
            "dispatch.max_candidates",
            self.max_candidates.map(|v| v.to_string()),
            "--max-candidates",
        );
        add(
            "dispatch.offer_timeout",
            self.offer_timeout_s.map(|v| format!("{v}s")),
            "--offer-timeout-s",
        );
        add(
            "dispatch.dispatch_timeout",
            self.dispatch_timeout_s.map(|v| format!("{v}s")),
            "--dispatch-timeout-s",
        );
        add(
            "limits.control_queue",
            self.control_queue.map(|v| v.to_string()),
            "--control-queue",
        );
        add(
            "limits.max_concurrent_requests",
            self.max_concurrent_requests.map(|v| v.to_string()),
            "--max-concurrent-requests",
        );
        add(
            "limits.drain_timeout",
            self.drain_timeout.clone(),
            "--drain-timeout",
        );
        add("eta.model", self.eta_model.clone(), "--eta-model");
        add("eta.road_map", text(&self.road_map), "--road-map");
        add(
            "dispatch.policy",
            self.match_policy.clone(),
            "--match-policy",
        );
        add(
            "dispatch.batch_window",
            self.batch_window_ms.map(|ms| format!("{ms}ms")),
            "--batch-window-ms",
        );
        add("log.data_dir", text(&self.data_dir), "--data-dir");
        add("log.fsync", self.fsync.clone(), "--fsync");
        add(
            "log.truncate_corrupt",
            self.truncate_corrupt_log.then(|| "true".into()),
            "--truncate-corrupt-log",
        );
        add(
            "record.enabled",
            self.record_inputs.then(|| "true".into()),
            "--record-inputs",
        );
        add("tls.cert_path", text(&self.tls_cert), "--tls-cert");
        add("tls.key_path", text(&self.tls_key), "--tls-key");
        for kv in &self.set {
            let (key, value) = kv
                .split_once('=')
                .ok_or_else(|| format!("--set {kv}: expected KEY=VALUE"))?;
            add(key.trim(), Some(value.to_string()), &format!("--set {key}"));
        }
        Ok(out)
    }

    fn load(self) -> Result<(Config, Vec<String>, bool), String> {
        let overrides = self.overrides()?;
        let file = config_load::config_file(self.config);
        // The daemon is durable by default; `Config::default()` (tests, tools) is not.
        let mut base = Config::default();
        base.log.data_dir = Some(PathBuf::from(DEFAULT_DATA_DIR));
        let (mut config, notes) =
            config_load::load_noting(base, file.as_deref(), std::env::vars(), &overrides)
                .map_err(|e| e.to_string())?;
        if self.ephemeral {
            config.log.data_dir = None;
        }
        Ok((config, notes, self.print_config))
    }
}

/// Log lines buffered for the log thread; beyond that they are dropped (counted by
/// tracing-appender), never queued without bound nor waited for on a gRPC thread.
const LOG_LINES_BUFFERED: usize = 128_000;

/// Installs the log subscriber. Lines go to stderr from a thread of their own, through a
/// buffer flushed whenever that thread has written all it was sent (so a line is out within
/// one wake-up, and a burst is one `write` instead of one per line). Keep the guard until
/// exit: dropping it writes what is still queued.
fn init_logs(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.telemetry.log_filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_LINES_BUFFERED)
        .thread_name("logs")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    match config.telemetry.log_format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    guard
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    dispatch::allocator::keep_freed_memory();
    let (config, notes, print) = match Flags::parse().load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dispatchd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if print {
        print!("{}", config_load::to_toml(&config));
        return std::process::ExitCode::SUCCESS;
    }
    let _logs = init_logs(&config);
    for note in notes {
        tracing::warn!("{note}");
    }
    let shutdown = shutdown_signal();
    let grpc = match TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "dispatchd: cannot listen on {} (listen): {e}",
                config.listen
            );
            return std::process::ExitCode::from(1);
        }
    };
    let default_http = TelemetryConfig::default().http_listen;
    let http = match config.telemetry.http_listen {
        None => None,
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            // The default port may be taken by another dispatchd on this machine (tests, a
            // second shard): serve without metrics rather than refuse to start. A configured
            // address is a promise to the operator, so failing to bind it stops start-up.
            Err(e) if Some(addr) == default_http => {
                tracing::warn!(%addr, error = %e,
                    "HTTP side (metrics, live map) not started: the default address is in use; \
                     set telemetry.http_listen (or --http-listen) to serve it");
                None
            }
            Err(e) => {
                eprintln!("dispatchd: cannot listen on {addr} (telemetry.http_listen): {e}");
                return std::process::ExitCode::from(1);
            }
        },
    };
    let addr = grpc.local_addr().map_or(config.listen, |a| a);
    let tls = config.tls.cert_path.is_some();
    tracing::info!(%addr, tls, "dispatchd listening (gRPC, health, reflection)");
    println!("dispatchd listening on {addr}");
    if let Some(m) = http.as_ref().and_then(|l| l.local_addr().ok()) {
        tracing::info!(addr = %m, "live map on http://{m}/ and metrics on http://{m}/metrics");
        // Scripts (tests, loadgen) read this line to find the port; its words stay.
        println!("dispatchd metrics on {m}");
    }
    let options = RunOptions { http, engine: None };
    match dispatch::server::run(grpc, config, options, shutdown).await {
        Ok(()) => {
            tracing::info!("dispatchd stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "dispatchd failed");
            eprintln!("dispatchd: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now (so a signal that arrives before the server
/// polls the future is not fatal) and returns a future completing on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        async move {
            // A handler that could not be installed never fires.
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(term.take()) => tracing::info!("SIGTERM received"),
                () = wait(int.take()) => tracing::info!("SIGINT received"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        // If the handler cannot be installed we simply never see Ctrl-C.
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received");
    }
}
