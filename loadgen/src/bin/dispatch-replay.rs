//! `dispatch-replay`: replay a recorded day (or a trips CSV) under several configs, side by
//! side, in-process and as fast as the CPU allows. See `loadgen::whatif` and the README.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use loadgen::whatif::{self, demand, report, source};
use serde_json::{Map, json};

/// Replays an input journal or a trips CSV under several configs and compares them.
#[derive(Debug, Parser)]
#[command(name = "dispatch-replay", version)]
struct Args {
    /// An input journal directory (`<data dir>/inputs` of an engine run with
    /// --record-inputs).
    #[arg(long, value_name = "DIR", conflicts_with = "trips")]
    journal: Option<PathBuf>,
    /// A trips CSV (request time, pickup and drop-off lat/lng, optional duration), replayed
    /// with a synthetic fleet.
    #[arg(long, value_name = "CSV")]
    trips: Option<PathBuf>,
    /// A variant: NAME=PATH.toml (overrides of the base config) or NAME (the base config).
    /// Repeatable; the first is the one the others are compared with. [default: base]
    #[arg(long = "variant", value_name = "NAME=PATH.toml")]
    variants: Vec<String>,
    /// Runs of the driver-behaviour model per variant (seeds 0..N).
    #[arg(long, default_value_t = 1)]
    seeds: u32,
    /// Synthetic fleet size (with --trips).
    #[arg(long, default_value_t = 300)]
    drivers: u32,
    /// Shift length of each synthetic driver, hours (with --trips).
    #[arg(long, default_value_t = 10.0)]
    shift_hours: f64,
    /// Seed of the synthetic fleet's shifts and start positions (with --trips).
    #[arg(long, default_value_t = 1)]
    fleet_seed: u64,
    /// Go on past corrupt journal records instead of stopping at the first.
    #[arg(long)]
    skip_corrupt: bool,
    /// Write the JSON report here.
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,
    /// Write SVG charts per hour of day into this directory.
    #[arg(long, value_name = "DIR")]
    plots: Option<PathBuf>,
    /// Worker threads for the runs. [default: the machine's cores]
    #[arg(long)]
    threads: Option<usize>,
    /// Exact replay check instead: replay the journal under its recorded config with the
    /// recorded answers and compare with the event log in this directory (`<data dir>/events`).
    #[arg(long, value_name = "DIR", requires = "journal")]
    check_log: Option<PathBuf>,
}

/// mimalloc instead of the system allocator (as `dispatchd`): a replay runs engines as fast as the CPU allows, and they allocate per event.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    dispatch::allocator::keep_freed_memory();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dispatch-replay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let started = Instant::now();
    if let (Some(journal), Some(log)) = (&args.journal, &args.check_log) {
        return check_log(journal, log, args.skip_corrupt);
    }
    let src = match (&args.journal, &args.trips) {
        (Some(dir), None) => source::from_journal(dir, args.skip_corrupt)?,
        (None, Some(csv)) => demand::from_csv(
            csv,
            demand::Fleet {
                drivers: args.drivers,
                shift_hours: args.shift_hours,
                seed: args.fleet_seed,
            },
        )?,
        _ => return Err("give --journal DIR or --trips CSV".into()),
    };
    let loaded_s = started.elapsed().as_secs_f64();
    // The main thread's CPU so far: reading the journal and its learning pass (the decoder
    // thread's share is in `src.load_cpu`).
    let load_cpu_s =
        whatif::thread_cpu().map_or(loaded_s, |c| c.as_secs_f64()) + src.load_cpu.as_secs_f64();
    for p in &src.problems {
        eprintln!("warning: {p}");
    }
    let specs = if args.variants.is_empty() {
        vec!["base".to_string()]
    } else {
        args.variants.clone()
    };
    let variants = specs
        .iter()
        .map(|s| whatif::variant(&src.base, s))
        .collect::<Result<Vec<_>, _>>()?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let span_ms = match (src.inputs.first(), src.inputs.last()) {
        (Some(a), Some(b)) => b.0 - a.0,
        _ => 0,
    };
    println!(
        "{} requests, {} inputs over {:.0} s of engine time; {} variant(s) x {} seed(s)",
        src.requests,
        src.inputs.len(),
        span_ms as f64 / 1000.0,
        variants.len(),
        args.seeds.max(1)
    );
    let sim_started = Instant::now();
    let results = whatif::run_all(&src, &variants, args.seeds, threads);
    let sim_s = sim_started.elapsed().as_secs_f64();
    print!("{}", report::table(&results));
    let span_s = span_ms as f64 / 1000.0;
    for v in &results {
        let runs = v.runs.len().max(1) as f64;
        let (cpu, wall) = (v.cpu.as_secs_f64() / runs, v.wall.as_secs_f64() / runs);
        println!(
            "{}: {cpu:.2} s CPU ({wall:.2} s wall) per run, {:.0}x real time by CPU ({:.0}x by wall)",
            v.name,
            span_s / cpu.max(1e-9),
            span_s / wall.max(1e-9)
        );
    }
    println!(
        "loaded in {loaded_s:.2} s ({load_cpu_s:.2} s CPU), replayed in {sim_s:.2} s on {threads} \
         thread(s)"
    );
    if let Some(path) = &args.report {
        let mut meta = Map::new();
        let source = args.journal.as_ref().or(args.trips.as_ref());
        meta.insert(
            "source".into(),
            json!(source.map(|p| p.display().to_string())),
        );
        meta.insert("requests".into(), json!(src.requests));
        meta.insert("span_s".into(), json!(span_ms as f64 / 1000.0));
        meta.insert("seeds".into(), json!(args.seeds.max(1)));
        meta.insert("load_s".into(), json!(loaded_s));
        meta.insert("load_cpu_s".into(), json!(load_cpu_s));
        meta.insert("replay_s".into(), json!(sim_s));
        meta.insert("problems".into(), json!(src.problems));
        let text = serde_json::to_string_pretty(&report::json(&results, meta))
            .map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(dir) = &args.plots {
        let files = report::svg(dir, &results)?;
        println!("{} charts in {}", files.len(), dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn check_log(
    journal: &std::path::Path,
    log: &std::path::Path,
    skip: bool,
) -> Result<ExitCode, String> {
    let started = Instant::now();
    let reader =
        dispatch::journal::JournalReader::open(journal, skip).map_err(|e| e.to_string())?;
    let replayed = dispatch::replay::replay_exact(reader, None)?;
    let mut cursor = dispatch::events::LogCursor::new(log.to_path_buf(), 0);
    let mut logged = Vec::new();
    while cursor
        .read(100_000, &mut logged)
        .map_err(|e| e.to_string())?
    {}
    let same = replayed
        .events
        .iter()
        .zip(&logged)
        .take_while(|(a, b)| a == b)
        .count();
    println!(
        "{} journal entries, {} events replayed in {:.2} s; the log has {}; {} identical from \
         the start{}",
        replayed.entries,
        replayed.events.len(),
        started.elapsed().as_secs_f64(),
        logged.len(),
        same,
        replayed
            .stopped_by
            .as_ref()
            .map(|e| format!("; journal stopped: {e}"))
            .unwrap_or_default()
    );
    if replayed.lost > 0 {
        println!("the recording lost {} entries (queue full)", replayed.lost);
    }
    let exact = same == logged.len() && same == replayed.events.len();
    // Inputs reach the journal before their events reach the log: an engine stopped hard
    // leaves a journal that goes a little further than the log.
    let prefix = same == logged.len() && same < replayed.events.len();
    // The other way round: the journal writer is a thread behind the dispatcher, so an engine
    // killed (SIGKILL, as loadgen stops the dispatchd it started) loses the entries still
    // queued for it, while their events were already committed to the log.
    let journal_short = same == replayed.events.len() && same < logged.len();
    if exact {
        println!("EXACT");
    } else if prefix {
        println!(
            "EXACT up to the log's end: the replay goes {} events further (inputs journalled \
             whose events never reached the log: the engine stopped before committing them)",
            replayed.events.len() - same
        );
    } else if journal_short {
        println!(
            "EXACT up to the journal's end: the log goes {} events further (inputs executed \
             whose journal entries were never written: the engine was killed first)",
            logged.len() - same
        );
    } else {
        println!("DIFFERENT from event {same} on");
    }
    Ok(if exact || prefix || journal_short {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
