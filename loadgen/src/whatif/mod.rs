//! What-if replay (`dispatch-replay`): a recorded day (an input journal, `record.enabled` on
//! the engine) or real demand (a trips CSV with a synthetic fleet) replayed in-process under
//! several configs, side by side, as fast as the CPU allows.
//!
//! - [`source`]: a journal's exogenous inputs and what it recorded; [`demand`]: the same from
//!   a trips CSV and a synthetic fleet.
//! - [`model`]: the driver-behaviour model (answers, delays, leg durations), seeded.
//! - [`sim`]: one run of one variant with one seed, on engine time only.
//! - [`metrics`]: per-run and per-hour figures, intervals over seeds.
//! - [`report`]: the stdout table, the JSON report, the SVG charts.
//!
//! Each variant is the base config (the journal's recorded one, or the defaults for a CSV) with
//! a TOML file of overrides on top (`--variant name=path.toml`), read and validated exactly as
//! `dispatchd --config` reads a file. Every (variant, seed) run is independent; they share the
//! machine's cores.

pub mod demand;
pub mod metrics;
pub mod model;
pub mod report;
pub mod sim;
pub mod source;

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dispatch::config::Config;

use sim::RunStats;
use source::Source;

/// One configuration to replay under.
#[derive(Clone, Debug)]
pub struct Variant {
    /// Its name in the report.
    pub name: String,
    /// The full config.
    pub config: Config,
}

/// Parses `name=path.toml` (or a bare `name`: the base config unchanged) over `base`.
pub fn variant(base: &Config, spec: &str) -> Result<Variant, String> {
    let (name, path) = match spec.split_once('=') {
        Some((name, path)) => (name.trim(), Some(path.trim())),
        None => (spec.trim(), None),
    };
    if name.is_empty() {
        return Err(format!("--variant {spec}: expected NAME=PATH.toml or NAME"));
    }
    let mut base = base.clone();
    // The replay never writes: no log, no journal.
    base.log.data_dir = None;
    base.record = Default::default();
    let config = match path.filter(|p| !p.is_empty()) {
        Some(path) => {
            dispatch::config_load::load_over(base, Some(Path::new(path)), Vec::new(), &[])
                .map_err(|e| format!("--variant {name}: {e}"))?
        }
        None => base,
    };
    Ok(Variant {
        name: name.to_string(),
        config,
    })
}

/// The runs of one variant, one per seed.
#[derive(Debug)]
pub struct VariantRuns {
    /// The variant's name.
    pub name: String,
    /// One per seed, in seed order.
    pub runs: Vec<RunStats>,
    /// CPU time its runs took together (their threads' time on a core; the wall time where
    /// the system does not say).
    pub cpu: Duration,
    /// Wall time its runs took together (summed over threads: on a shared machine it
    /// includes waiting for a core).
    pub wall: Duration,
}

/// The calling thread's time on a core so far, from Linux's `/proc/thread-self/schedstat`
/// (nanoseconds); `None` elsewhere. On a machine shared with other work a run's wall time
/// includes waiting for a core, its CPU time does not.
pub fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Runs every variant under seeds `0..seeds` on up to `threads` threads.
pub fn run_all(src: &Source, variants: &[Variant], seeds: u32, threads: usize) -> Vec<VariantRuns> {
    let seeds = seeds.max(1) as usize;
    let jobs = variants.len() * seeds;
    let results: Vec<Mutex<Option<(RunStats, Duration, Duration)>>> =
        (0..jobs).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, jobs.max(1)) {
            scope.spawn(|| {
                loop {
                    let job = next.fetch_add(1, Ordering::Relaxed);
                    if job >= jobs {
                        return;
                    }
                    let (v, seed) = (job / seeds, job % seeds);
                    let started = Instant::now();
                    let cpu_before = thread_cpu();
                    let run = sim::simulate(src, &variants[v].config, seed as u64);
                    let took = started.elapsed();
                    let cpu = match (cpu_before, thread_cpu()) {
                        (Some(a), Some(b)) => b.saturating_sub(a),
                        _ => took,
                    };
                    // A poisoned slot would mean a panicking run, which already aborted the scope.
                    if let Ok(mut slot) = results[job].lock() {
                        *slot = Some((run, cpu, took));
                    }
                }
            });
        }
    });
    let mut out: Vec<VariantRuns> = variants
        .iter()
        .map(|v| VariantRuns {
            name: v.name.clone(),
            runs: Vec::with_capacity(seeds),
            cpu: Duration::ZERO,
            wall: Duration::ZERO,
        })
        .collect();
    for (job, slot) in results.into_iter().enumerate() {
        let v = job / seeds;
        if let Some((run, cpu, took)) = slot.into_inner().ok().flatten() {
            out[v].runs.push(run);
            out[v].cpu += cpu;
            out[v].wall += took;
        }
    }
    out
}
