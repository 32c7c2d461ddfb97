//! Faults the crash test injects besides SIGKILL, on a stopped process's data dir or on a
//! running process: a torn write at a random byte of the last segment's would-be next record,
//! a newest snapshot cut at a random byte, and a SIGSTOP/SIGCONT pause. Each is something a
//! crash or a stalled host really produces; none may lose an acknowledged call.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dispatch::domain::ExternalId;
use dispatch::events::{Event, EventKind};
use dispatch::pb::{self, query_service_client::QueryServiceClient};
use rand::Rng;
use tonic::transport::Channel;

/// SIGKILL rounds: `CHAOS_KILLS` (e.g. 50 for the long run), 4 by default.
pub(crate) fn kills() -> usize {
    std::env::var("CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

fn newest(dir: &Path, suffix: &str) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(suffix)))
        .collect();
    files.sort();
    files.pop()
}

/// Appends a random-length prefix of one more record to the last segment, as a crash in the
/// middle of a write leaves it (the record was never acknowledged). Returns the bytes added.
pub(crate) fn tear_last_segment(data_dir: &Path, rng: &mut impl Rng) -> usize {
    let Some(segment) = newest(&data_dir.join("events"), ".log") else {
        return 0;
    };
    let event = Event {
        offset: u64::MAX / 2,
        at_ms: 1,
        kind: EventKind::DriverOffline {
            driver: ExternalId::new("id", "torn-write").unwrap(),
        },
    };
    let mut record = Vec::new();
    dispatch::events::log::encode_record(&event, &mut record);
    let cut = rng.random_range(1..record.len());
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&record[..cut]);
    std::fs::write(&segment, bytes).unwrap();
    cut
}

/// Cuts the newest snapshot at a random byte (recovery must fall back to an older one or to
/// the log). Returns the snapshot and where it was cut.
pub(crate) fn tear_newest_snapshot(
    data_dir: &Path,
    rng: &mut impl Rng,
) -> Option<(PathBuf, usize)> {
    let snapshot = newest(&data_dir.join("snapshots"), ".snap")?;
    let bytes = std::fs::read(&snapshot).unwrap();
    let cut = rng.random_range(0..bytes.len());
    std::fs::write(&snapshot, &bytes[..cut]).unwrap();
    Some((snapshot, cut))
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

async fn answers(channel: &Channel, within: Duration) -> bool {
    let mut q = QueryServiceClient::new(channel.clone());
    let call = q.get_stats(pb::GetStatsRequest {});
    matches!(tokio::time::timeout(within, call).await, Ok(Ok(_)))
}

/// Whether every thread of `pid` is stopped (state `T` in `/proc/<pid>/task/*/stat`). A
/// thread inside an uninterruptible call (an fsync) only stops once the call returns.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            // The state follows the parenthesised command name.
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T'))
        })
    })
}

/// SIGSTOPs the server until it is stopped (every thread) and visibly stops answering, then
/// SIGCONTs it and waits until it answers again: calls in flight meanwhile just wait.
pub(crate) async fn pause_and_resume(pid: u32, channel: &Channel) {
    signal(pid, "-STOP");
    let mut waited = 0;
    while !all_threads_stopped(pid) {
        assert!(waited < 30_000, "dispatchd never stopped after SIGSTOP");
        tokio::time::sleep(Duration::from_millis(1)).await;
        waited += 1;
    }
    assert!(
        !answers(channel, Duration::from_millis(300)).await,
        "a stopped process answered"
    );
    signal(pid, "-CONT");
    for _ in 0..200 {
        if answers(channel, Duration::from_secs(1)).await {
            return;
        }
    }
    panic!("the server never answered again after SIGCONT");
}
