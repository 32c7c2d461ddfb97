//! A check a person can run: load, kill -9, restart, time to SERVING.
//!
//! Starts `dispatchd` on a fresh data dir, drives it with `loadgen --target` for `--load-secs`,
//! kills it with SIGKILL mid-load, restarts it on the same data dir and prints how long the new
//! process took to report gRPC health SERVING, with what recovery did (the snapshot it started
//! from, the events it replayed, where the time went) and the size of the data dir: at the
//! kill, and the largest it was while loading (sampled every 500 ms).
//!
//! ```text
//! cargo build --release --bin dispatchd && cargo build --release -p loadgen
//! cargo run --release --example restart_check -- --load-secs 120 --drivers 100000 \
//!     --requests-per-sec 1000
//! ```
//!
//! Flags: `--load-secs N` (default 60), `--drivers N`, `--requests-per-sec N` (passed to
//! loadgen), `--bin-dir DIR` (where `dispatchd` and `loadgen` are; default `target/release`),
//! `--keep` (keep the data dir and print its path). Server settings come from the environment
//! `dispatchd` inherits, e.g. `DISPATCH_LOG__RETENTION_BYTES=268435456` for a 256 MB log
//! retention. Times are wall clock on whatever else the machine is doing: say so when quoting
//! them.

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
}

fn args() -> Result<Args> {
    let mut a = Args {
        load_secs: 60,
        drivers: "100000".into(),
        rps: "1000".into(),
        bin_dir: PathBuf::from("target/release"),
        keep: false,
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
    Ok(Command::new(bin)
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

#[tokio::main]
async fn main() -> Result<()> {
    let a = args()?;
    let dispatchd = a.bin_dir.join("dispatchd");
    let loadgen = a.bin_dir.join("loadgen");
    for bin in [&dispatchd, &loadgen] {
        if !bin.exists() {
            return Err(format!(
                "{} not found: cargo build --release --bin dispatchd && cargo build --release -p loadgen",
                bin.display()
            )
            .into());
        }
    }
    let work = tempfile::tempdir()?;
    let data = work.path().join("data");
    let port = free_port()?;
    let mut server = start_server(&dispatchd, &data, port, &work.path().join("first.log"))?;
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
    let restart_log = work.path().join("restart.log");
    let restarted_at = Instant::now();
    let mut server = start_server(&dispatchd, &data, port, &restart_log)?;
    let waited = until_serving(port, &mut server, Duration::from_secs(600)).await;
    let total = restarted_at.elapsed();
    let _ = server.kill();
    let _ = server.wait();
    let log = std::fs::read_to_string(&restart_log).unwrap_or_default();
    let recovered = log
        .lines()
        .find(|l| l.contains("event log recovered"))
        .unwrap_or("(no recovery line in the log)");
    waited?;
    println!(
        "restart after kill -9 at {} s of load: SERVING after {} ms",
        a.load_secs,
        total.as_millis()
    );
    println!(
        "data dir: {:.1} MB at the kill, peak {:.1} MB while loading",
        bytes as f64 / 1e6,
        peak as f64 / 1e6
    );
    println!("recovery: {}", recovered.trim());
    if a.keep {
        println!("kept: {}", work.keep().display());
    }
    Ok(())
}
