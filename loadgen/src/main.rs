//! `loadgen`: flags -> config -> (start `dispatchd` unless `--target`) -> run -> report.

use clap::Parser;
use loadgen::server::{ServerProcess, default_server_bin};
use loadgen::{Config, plots};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// Simulates drivers and riders against the dispatch engine over gRPC and reports latency,
/// throughput and dispatch quality.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(flatten)]
    viewers: loadgen::viewers::ViewerArgs,
    #[command(flatten)]
    failover: loadgen::failover::FailoverArgs,
    /// A running server (`host:port`). Without it, loadgen starts `dispatchd` on a free
    /// 127.0.0.1 port and stops it at the end.
    #[arg(long)]
    target: Option<String>,
    /// The `dispatchd` binary to start (default: the one next to this executable).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// An extra flag for the `dispatchd` loadgen starts (repeatable), e.g.
    /// `--server-arg=--match-policy=batch` or `--server-arg=--ephemeral`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// The matching policy of the `dispatchd` loadgen starts: `greedy` or `batch` (the engine's
    /// default is greedy). Recorded in the report, so greedy and batch runs compare side by side.
    #[arg(long, value_parser = ["greedy", "batch"])]
    policy: Option<String>,
    /// With `--policy batch`: the batch window, milliseconds (engine default 2000).
    #[arg(long)]
    batch_window_ms: Option<u64>,
    /// The ETA model of the `dispatchd` loadgen starts: `road` (routes on the `--map` it
    /// simulates, passed as `--eta-model=road --road-map=MAP`) or `haversine`. Recorded in the
    /// report, so the two compare side by side on the same seed.
    #[arg(long, value_parser = ["road", "haversine"])]
    eta: Option<String>,
    /// Serve the run in cluster mode: one region over the whole city, its log a JetStream
    /// stream (R3) on a 3-node NATS cluster loadgen starts (nats-server on PATH), or on
    /// `--nats-url`; the lease TTL is `--lease-ttl`. Compare with the same run without it.
    #[arg(long)]
    cluster_log: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Write SVG charts into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Runtime threads for loadgen itself. 1 (a single-threaded runtime) keeps it on one core;
    /// 2 lets the stream tasks that time-stamp offers run while the simulation loop is busy.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// mimalloc instead of the system allocator (as `dispatchd`): loadgen shares the two cores with the server it measures, and encodes 25k
/// location updates a second: the less its allocator costs, the more CPU the server has.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    dispatch::allocator::keep_freed_memory();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = cli.config.clone();
    config.progress = !cli.no_progress && std::io::stderr().is_terminal();
    config.validate().map_err(loadgen::Error::Config)?;
    if config.mode == loadgen::Mode::Failover {
        return run_failover(&config, &cli).await;
    }

    let mut server_args = cli.server_args.clone();
    if let Some(policy) = &cli.policy {
        server_args.push(format!("--match-policy={policy}"));
    }
    if let Some(ms) = cli.batch_window_ms {
        server_args.push(format!("--batch-window-ms={ms}"));
    }
    match cli.eta.as_deref() {
        Some("road") => {
            let map = config.map.as_ref().ok_or(
                "--eta road routes the engine on the simulated map: give it with --map FILE",
            )?;
            // The server runs in its own temporary directory: hand it an absolute path.
            let map = std::fs::canonicalize(map).map_err(|e| format!("{}: {e}", map.display()))?;
            server_args.push("--eta-model=road".into());
            server_args.push(format!("--road-map={}", map.display()));
        }
        Some(model) => server_args.push(format!("--eta-model={model}")),
        None => {}
    }
    let mut map_http = cli.viewers.map_http.clone();
    if cli.viewers.map_viewers > 0 && cli.target.is_none() && map_http.is_none() {
        let addr = format!("127.0.0.1:{}", loadgen::server::free_port()?);
        server_args.push(format!("--http-listen={addr}"));
        map_http = Some(addr);
    }
    let cluster_log = match (cli.cluster_log, &cli.target) {
        (false, _) => None,
        (true, Some(_)) => {
            return Err(
                "--cluster-log configures the dispatchd loadgen starts: drop --target".into(),
            );
        }
        (true, None) => {
            let log = loadgen::cluster_log::ClusterLog::start(
                cli.failover.nats_url.as_deref(),
                cli.failover.lease_ttl,
            )
            .await?;
            server_args.extend(log.server_args());
            Some(log)
        }
    };
    let (server, target) = match cli.target {
        Some(_) if cli.policy.is_some() || cli.batch_window_ms.is_some() || cli.eta.is_some() => {
            return Err(
                "--policy, --batch-window-ms and --eta configure the dispatchd loadgen starts; \
                        with --target, start that server with --match-policy or --eta-model instead"
                    .into(),
            );
        }
        Some(t) => (None, t),
        None => {
            let bin = cli.server_bin.or_else(default_server_bin).ok_or(
                "no --target and no dispatchd next to loadgen; build it (cargo build -p dispatch) or pass --server-bin",
            )?;
            eprintln!("loadgen: starting {}", bin.display());
            let server = ServerProcess::start(&bin, &server_args).await?;
            // The server dies with the run; taking every driver offline first would only cost
            // time.
            config.leave_online = true;
            config.server_pid = Some(server.pid());
            let addr = server.addr.clone();
            if cluster_log.is_some() {
                loadgen::cluster_log::wait_owned(&addr).await?;
            }
            eprintln!("loadgen: dispatchd listening on {addr}");
            (Some(server), addr)
        }
    };

    let stop = async {
        // Without a signal handler Ctrl-C would kill the run without a report; if installing
        // one fails, never stop early.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        eprintln!("loadgen: interrupted, reporting what was measured");
    };
    let viewers = match (cli.viewers.map_viewers, &map_http) {
        (0, _) => None,
        (_, None) => return Err("--map-viewers with --target needs --map-http".into()),
        (n, Some(http)) => {
            eprintln!("loadgen: {n} map viewers on http://{http}/");
            Some(loadgen::viewers::Viewers::start(n, http))
        }
    };
    let result = loadgen::run_until(&config, &target, stop).await;
    if let Some(v) = viewers {
        println!("{}", v.stop());
    }
    if let Some(server) = server {
        server.stop();
    }
    drop(cluster_log);
    let mut report = result?;
    report.policy = cli.policy.clone();
    report.eta_model = cli.eta.clone();

    println!("loadgen report ({target})");
    print!("{}", report.table());
    if let Some(path) = &cli.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        println!("report written to {}", path.display());
    }
    if let Some(dir) = &cli.plots {
        for f in plots::write(&report, dir)? {
            println!("chart written to {}", f.display());
        }
    }
    Ok(())
}

/// `--mode failover`: starts its own NATS cluster and three `dispatchd`, so `--target` and
/// the server flags do not apply.
async fn run_failover(
    config: &loadgen::Config,
    cli: &Cli,
) -> Result<(), Box<dyn std::error::Error>> {
    if cli.target.is_some() {
        return Err("--mode failover starts its own three dispatchd: drop --target".into());
    }
    let bin = cli.server_bin.clone().or_else(default_server_bin).ok_or(
        "no dispatchd next to loadgen; build it (cargo build -p dispatch) or pass --server-bin",
    )?;
    let report = loadgen::failover::run(config, &cli.failover, &bin).await?;
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(path) = &cli.report {
        std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        println!("report written to {}", path.display());
    }
    if !report.targets_met() {
        eprintln!("loadgen: failover targets NOT met (see the report)");
    }
    Ok(())
}
