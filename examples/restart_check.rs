//! A check a person can run: load, kill -9, restart, time to SERVING.
//!
//! Starts `dispatchd` on a fresh data dir, drives it with `loadgen --target` for `--load-secs`,
//! kills it with SIGKILL mid-load, restarts it on the same data dir and prints how long the new
//! process took to report gRPC health SERVING, with what recovery did (the snapshot it started
//! from, the events it replayed, where the time went), the CPU time the restarting process had
//! used by then (so a restart slowed by a busy machine shows as wall time well above CPU time)
//! and the size of the data dir: at the kill, and the largest it was while loading (sampled
//! every 500 ms).
//!
//! ```text
//! cargo build --release --bin dispatchd && cargo build --release -p loadgen
//! cargo run --release --example restart_check -- --load-secs 120 --drivers 100000 \
//!     --requests-per-sec 1000
//! ```
//!
//! Flags: `--load-secs N` (default 60), `--drivers N`, `--requests-per-sec N` (passed to
//! loadgen), `--bin-dir DIR` (where `dispatchd` and `loadgen` are; default `target/release`),
//! `--keep` (keep the data dir as it was at the kill and print its path), `--from-data DIR`
//! (no load: restart on a copy of a data dir kept earlier), `--runs N` (restart N times, each
//! on a fresh copy of the data dir at the kill, and print the median), `--compare-bin-dir DIR`
//! (alternate the restarts between this `dispatchd` and the one in `--bin-dir`, A B A B, on the
//! same data: an A/B of two builds). Server settings come from the environment `dispatchd`
//! inherits, e.g. `DISPATCH_LOG__RETENTION_BYTES=268435456` for a 256 MB log retention, and
//! `RUST_LOG` (default here `info,dispatch::trips=warn`: no line per trip event). Times are
//! wall clock on whatever else the machine is doing: say so when quoting them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Args {
    load_secs: u64,
    drivers: String,
    rps: String,
    bin_dir: PathBuf,
    keep: bool,
    from_data: Option<PathBuf>,
    runs: usize,
    compare: Option<PathBuf>,
}

fn args() -> Result<Args> {
    let mut a = Args {
        load_secs: 60,
        drivers: "100000".into(),
        rps: "1000".into(),
        bin_dir: PathBuf::from("target/release"),
        keep: false,
        from_data: None,
        runs: 1,
        compare: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--load-secs" => a.load_secs = value()?.parse()?,
            "--drivers" => a.drivers = value()?,
            "--requests-per-sec" => a.rps = value()?,
            "--bin-dir" => a.bin_dir = value()?.into(),
            "--keep" => a.keep = true,
            "--from-data" => a.from_data = Some(value()?.into()),
            "--runs" => a.runs = value()?.parse::<usize>()?.max(1),
            "--compare-bin-dir" => a.compare = Some(value()?.into()),
            other => return Err(format!("unknown flag {other} (see the file's docs)").into()),
        }
    }
    Ok(a)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_server(bin: &Path, data: &Path, port: u16, log: &Path) -> Result<Child> {
    let mut cmd = Command::new(bin);
    if std::env::var_os("RUST_LOG").is_none() {
        // Not a line per trip event: at city load that is ~0.5 GB of log in 10 minutes, and
        // a disk slow to take it stalls the server's logging threads.
        cmd.env("RUST_LOG", "info,dispatch::trips=warn");
    }
    Ok(cmd
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--http-listen",
            "off",
        ])
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?)
}

/// Polls gRPC health until SERVING; the time it took.
async fn until_serving(port: u16, server: &mut Child, limit: Duration) -> Result<Duration> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let started = Instant::now();
    let uri = format!("http://127.0.0.1:{port}");
    while started.elapsed() < limit {
        if let Some(status) = server.try_wait()? {
            return Err(format!("dispatchd exited with {status} before serving").into());
        }
        let probe = async {
            let channel = tonic::transport::Endpoint::from_shared(uri.clone())?
                .connect()
                .await?;
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
            Ok::<i32, Box<dyn std::error::Error>>(reply.into_inner().status)
        };
        if let Ok(Ok(1)) = tokio::time::timeout(Duration::from_millis(500), probe).await {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("not SERVING within {limit:?}").into())
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// Copies a data dir (files and subdirectories) to `to`.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.metadata()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// User + system CPU time a process has used so far, ms, its exited threads included (Linux
/// `/proc/<pid>/stat`, in clock ticks of 10 ms); `None` where that file does not exist.
fn cpu_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (in parentheses, possibly with spaces): state is field 3,
    // utime field 14, stime field 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((ticks(11)? + ticks(12)?) * 10)
}

/// What one restart took.
struct Restart {
    serving_ms: u64,
    cpu_ms: Option<u64>,
    recovery_line: String,
}

/// Starts `dispatchd` on `data` and waits for SERVING; then stops it.
async fn restart(dispatchd: &Path, data: &Path, log: &Path) -> Result<Restart> {
    let port = free_port()?;
    let restarted_at = Instant::now();
    let mut server = start_server(dispatchd, data, port, log)?;
    let waited = until_serving(port, &mut server, Duration::from_secs(600)).await;
    let serving_ms = restarted_at.elapsed().as_millis() as u64;
    let cpu_ms = cpu_ms(server.id());
    let _ = server.kill();
    let _ = server.wait();
    waited?;
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let recovery_line = text
        .lines()
        .find(|l| l.contains("event log recovered"))
        .unwrap_or("(no recovery line in the log)")
        .trim()
        .to_string();
    Ok(Restart {
        serving_ms,
        cpu_ms,
        recovery_line,
    })
}

/// Loads a fresh server for `a.load_secs`, kills it and moves its data dir to `killed`.
async fn load_and_kill(a: &Args, dispatchd: &Path, work: &Path, killed: &Path) -> Result<()> {
    let loadgen = a.bin_dir.join("loadgen");
    if !loadgen.exists() {
        return Err(format!(
            "{} not found: cargo build --release -p loadgen",
            loadgen.display()
        )
        .into());
    }
    let data = work.join("data");
    let port = free_port()?;
    let mut server = start_server(dispatchd, &data, port, &work.join("first.log"))?;
    until_serving(port, &mut server, Duration::from_secs(60)).await?;
    println!(
        "loading: {} drivers, {} requests/s for {} s",
        a.drivers, a.rps, a.load_secs
    );
    let mut load = Command::new(&loadgen)
        .args(["--target", &format!("127.0.0.1:{port}"), "--no-progress"])
        .args(["--drivers", &a.drivers, "--requests-per-sec", &a.rps])
        .args(["--duration", &format!("{}s", a.load_secs + 600)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // The data dir's size while loading: its peak is what retention must bound.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, data) = (sampling.clone(), data.clone());
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(Ordering::Relaxed) {
                peak = peak.max(dir_bytes(&data));
                std::thread::sleep(Duration::from_millis(500));
            }
            peak
        })
    };
    tokio::time::sleep(Duration::from_secs(a.load_secs)).await;
    // SIGKILL mid-load: no drain, no final fsync beyond what was acknowledged.
    server.kill()?;
    server.wait()?;
    let _ = load.kill();
    let _ = load.wait();
    let bytes = dir_bytes(&data);
    sampling.store(false, Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(0).max(bytes);
    println!(
        "data dir: {:.1} MB at the kill, peak {:.1} MB while loading",
        bytes as f64 / 1e6,
        peak as f64 / 1e6
    );
    std::fs::rename(&data, killed)?;
    Ok(())
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let mut builds = vec![("A", a.bin_dir.join("dispatchd"))];
    if let Some(other) = &a.compare {
        builds.push(("B", other.join("dispatchd")));
    }
    for (_, bin) in &builds {
        if !bin.exists() {
            return Err(format!(
                "{} not found: cargo build --release --bin dispatchd",
                bin.display()
            )
            .into());
        }
    }
    let work = tempfile::tempdir()?;
    // The data dir as it was at the kill; every restart runs on a copy of it.
    let killed = work.path().join("killed");
    match &a.from_data {
        Some(from) => {
            copy_dir(from, &killed)?;
            println!("restarting on a copy of {}", from.display());
        }
        None => load_and_kill(&a, &builds[0].1, work.path(), &killed).await?,
    }
    let what = match &a.from_data {
        Some(_) => "restart".to_string(),
        None => format!("restart after kill -9 at {} s of load", a.load_secs),
    };
    let mut times: Vec<Vec<u64>> = vec![Vec::new(); builds.len()];
    for run in 0..a.runs {
        for (b, (label, bin)) in builds.iter().enumerate() {
            let data = work.path().join(format!("run-{run}-{label}"));
            copy_dir(&killed, &data)?;
            let log = work.path().join(format!("restart-{run}-{label}.log"));
            let r = restart(bin, &data, &log).await?;
            std::fs::remove_dir_all(&data)?;
            let cpu = r.cpu_ms.map_or("n/a".into(), |ms| format!("{ms} ms"));
            let build = if builds.len() > 1 {
                format!(" [{label}: {}]", bin.display())
            } else {
                String::new()
            };
            println!(
                "{what}{build}: SERVING after {} ms (dispatchd CPU by then {cpu})",
                r.serving_ms
            );
            println!("recovery: {}", r.recovery_line);
            times[b].push(r.serving_ms);
        }
    }
    if a.runs > 1 || builds.len() > 1 {
        for ((label, bin), t) in builds.iter().zip(times) {
            println!(
                "median over {} runs [{label}: {}]: SERVING after {} ms",
                a.runs,
                bin.display(),
                median(t)
            );
        }
    }
    if a.keep {
        println!("kept: {}", work.keep().join("killed").display());
    }
    Ok(())
}
