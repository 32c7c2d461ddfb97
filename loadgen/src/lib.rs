//! A load generator for the dispatch engine: a simulated city of drivers and riders over real
//! gRPC, reporting latency, throughput and dispatch quality.
//!
//! The map:
//! - [`config`]: the knobs of a run (also the command-line flags).
//! - [`city`]: the city box, its street grid and demand hotspots, in local metres.
//! - [`streets`]: with `--map`, the engine's road graph in local metres with the simulation's
//!   own router; [`drive`]: driving along it (trip routes, cruising random walks).
//! - [`fleet`]: every simulated driver as a row of plain vectors, moved lazily along the grid
//!   or the roads.
//! - [`ledger`]: request accounting; joins trip facts that arrive in any order.
//! - [`rpc`]: connections, ids, and the call workers that keep many unary calls in flight.
//! - `sim` (city mode), `ingest`, `nearby`: the three modes; `warmup` brings fleets online.
//! - [`failover`]: regions on three `dispatchd` over a 3-node NATS cluster it starts, owners
//!   killed and paused under load, the streams' history checked afterwards (its own flow and
//!   report: it starts its own processes).
//! - [`report`]: the JSON report, the summary table, percentiles and the Gini coefficient.
//! - [`plots`]: SVG charts of a report. [`progress`]: the live progress bar.
//! - [`server`]: starting a `dispatchd` process when no target is given; [`cluster_log`]:
//!   with `--cluster-log`, that process in cluster mode (one region, its log on NATS).
//! - [`viewers`]: simulated live-map viewers (a snapshot, then the SSE stream's deltas), opt-in.
//! - [`whatif`]: `dispatch-replay`, a recorded journal or a trips CSV replayed in-process under
//!   several configs, side by side, with a driver-behaviour model (a binary of its own).
//!
//! The flow of city mode: warm-up (every driver GoOnline) -> the measured window, in which one
//! simulation task ticks every 50 ms, issues trip requests at the target rate, sends due
//! location reports as batches on the gateway streams, and plays each driver's answers to the
//! offers arriving on the gateway offer streams -> a short drain -> the report.

pub mod city;
pub mod cluster_log;
pub mod config;
pub mod drive;
pub mod error;
pub mod failover;
pub mod fleet;
mod ingest;
pub mod ledger;
mod nearby;
pub mod plots;
pub mod progress;
pub mod report;
pub mod rpc;
pub mod server;
mod sim;
pub mod streets;
pub mod viewers;
mod warmup;
pub mod whatif;

pub use config::{Config, Mode};
pub use error::{Error, Result};
pub use report::{Percentiles, Report};

use progress::Progress;
use std::future::Future;

/// Runs `config` against the server at `target` (`host:port`) for the configured duration and
/// returns what it measured.
pub async fn run(config: &Config, target: &str) -> Result<Report> {
    run_until(config, target, std::future::pending()).await
}

/// Like [`run`], but ends the measured window early when `stop` resolves (e.g. on Ctrl-C) and
/// still reports what was measured until then.
pub async fn run_until(
    config: &Config,
    target: &str,
    stop: impl Future<Output = ()>,
) -> Result<Report> {
    config.validate().map_err(Error::Config)?;
    let token = match &config.token_file {
        None => None,
        Some(path) => Some(std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?),
    };
    let auth = rpc::Auth::new(token.as_deref())?;
    let channels = rpc::connect(target, config.connections, auth).await?;
    let progress = Progress::new(config.progress);
    let cpu_before = report::process_cpu_s();
    let report = match config.mode {
        Mode::City => sim::run(config, channels, stop, &progress).await,
        Mode::Ingest => ingest::run(config, channels, stop, &progress).await,
        Mode::Nearby => nearby::run(config, channels, stop, &progress).await,
        Mode::Failover => Err(Error::Config(
            "--mode failover starts its own cluster: run it from loadgen's command line \
             (failover::run), not against a target"
                .into(),
        )),
    };
    progress.finish();
    report.map(|mut r| {
        r.loadgen_cpu_s = report::process_cpu_s() - cpu_before;
        r.host_load_1m = report::load_average_1m();
        r
    })
}
