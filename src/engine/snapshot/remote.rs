//! Snapshots that are not files beside a local log. In cluster mode a region's log is a
//! JetStream stream, and whichever process takes the region over next must find its snapshots
//! there too (`cluster::snapshots` keeps them in JetStream); the engine knows only this seam.
//!
//! The schedule is the local one (`log.snapshot_every_events`, `log.snapshot_interval`, off
//! with `log.snapshot_keep = 0`), the copy is taken the same way on the dispatcher thread, and
//! the log writer hands it over only after everything before it is committed, now with the
//! log's position at that moment: a stream's last sequence, so the image holds exactly the
//! stream's messages up to it, and a new owner replays only the messages after it.

use std::time::Instant;

use crossbeam_channel::Receiver;

use super::{Job, Schedule, Snapshotter};
use crate::engine::state::StateImage;

/// Where a logged engine without a data dir stores its snapshots (cluster mode: a region's
/// snapshots in JetStream). Called on the snapshot thread, one image at a time.
pub trait SnapshotSink: Send + 'static {
    /// Stores `image`, taken when the log stood at `position` (its last sequence: every
    /// message up to it is in the image, none after it). Returns the bytes stored. An error
    /// only costs a longer replay on the next takeover: the log still holds everything.
    fn store(&mut self, image: &StateImage, position: u64) -> Result<u64, String>;
}

/// The snapshot thread over `sink` and the dispatcher's schedule, counting from `offset` at
/// `now_ms` (none when `log.snapshot_keep` is 0).
pub(in crate::engine) fn start_remote(
    config: &crate::config::Config,
    sink: Box<dyn SnapshotSink>,
    offset: u64,
    now_ms: u64,
) -> (Option<Snapshotter>, Option<Schedule>) {
    if config.log.snapshot_keep == 0 {
        return (None, None);
    }
    let schedule = Schedule::new(&config.log, offset, now_ms);
    (
        Some(Snapshotter::spawn(move |rx| run(sink, rx))),
        Some(schedule),
    )
}

fn run(mut sink: Box<dyn SnapshotSink>, rx: Receiver<Job>) {
    while let Ok((image, position)) = rx.recv() {
        let started = Instant::now();
        let offset = image.next_offset();
        match sink.store(&image, position) {
            Ok(bytes) => tracing::info!(
                offset,
                position,
                bytes,
                drivers = image.driver_count(),
                write_ms = started.elapsed().as_millis() as u64,
                "snapshot stored"
            ),
            Err(e) => tracing::warn!(error = %e, offset, "snapshot not stored"),
        }
    }
}
