//! Recovery: rebuilding the dispatcher from the newest good snapshot and the log after it.
//!
//! The newest snapshot that decodes and fits is restored (a corrupt one is skipped with a
//! warning, the next older tried), then every logged event from its offset on goes through the
//! same `DispatchState::apply` that live operation uses, so the state (deadlines included) is
//! the one that wrote the log. With no usable snapshot the whole log is replayed. A snapshot
//! ahead of the log's end (the log was cut at a corrupt record) belongs to a history that is
//! gone: it is deleted and an older one used.
//!
//! Then `finish_recovery` gives a batch whose flush fell due while down a fresh window and
//! searches for any trip a torn log left without a next search; the runner's first `fire_due`
//! expires the offers whose window passed meanwhile, and they cascade.
//!
//! The log after the snapshot is read, verified and decoded on a thread of its own ([`Tail`])
//! while this one decodes and restores the snapshot and then applies the events: the file's
//! offset is in its name, so reading can start before the snapshot is decoded. Applying is the
//! only part that needs the state, and it stays on this thread, in offset order.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::dispatcher::Dispatcher;
use super::snapshot::SnapshotStore;
use crate::clock::Clock;
use crate::config::Config;
use crate::events::log::RecoveryReport;
use crate::events::{Event, EventLog, LogConfig, LogError};

/// Events per message from the tail reader: one channel operation per this many events.
const TAIL_BATCH: usize = 1024;
/// Batches the tail reader may run ahead of the applying thread (memory bound: ~64k events).
const TAIL_AHEAD: usize = 64;

/// What recovery opened and started from.
#[derive(Debug)]
pub(super) struct Recovered {
    /// The log, ready for appends.
    pub(super) log: EventLog,
    /// The offset of the snapshot the state was restored from, if any.
    pub(super) snapshot: Option<u64>,
}

/// Where recovery's time went, ms (the recovery log line reports them).
#[derive(Debug, Default)]
struct Timings {
    /// Reading, decoding and restoring snapshots.
    snapshot_ms: u64,
    /// From the restored snapshot to the last event applied.
    replay_ms: u64,
    /// Of `replay_ms`, waiting for the tail reader (reading and decoding is the bottleneck
    /// when this is most of it; applying when it is near 0).
    tail_wait_ms: u64,
}

/// Opens the log in `config.log.data_dir` (if any) and rebuilds `dispatcher` (fresh) from it.
pub(super) fn recover(
    config: &Config,
    dispatcher: &mut Dispatcher,
    clock: &dyn Clock,
    first_offset: u64,
) -> Result<Option<Recovered>, LogError> {
    let Some(dir) = &config.log.data_dir else {
        return Ok(None);
    };
    let started = Instant::now();
    let store = SnapshotStore::new(dir);
    let mut candidates = if config.log.snapshot_keep > 0 {
        store.list()?
    } else {
        Vec::new()
    };
    let mut log_end = u64::MAX;
    let mut t = Timings::default();
    let (log, report, snapshot) = loop {
        // The newest snapshot not ahead of the log: the tail reader starts at its offset
        // while it is decoded. With none left, the whole log.
        let candidate = next_candidate(&mut candidates, log_end);
        let from = candidate.as_ref().map_or(0, |(offset, _)| *offset);
        let tail = Tail::start(&config.log, dir, from, first_offset);
        let mut chosen = None;
        if let Some((offset, path)) = candidate {
            let loading = Instant::now();
            let restored = store
                .load(&path)
                .and_then(|image| dispatcher.restore(image));
            t.snapshot_ms += loading.elapsed().as_millis() as u64;
            match restored {
                Ok(()) => chosen = Some(offset),
                Err(why) => {
                    tracing::warn!(
                        snapshot = %path.display(),
                        "snapshot unusable ({why}); trying an older one"
                    );
                    // The tail read from its offset is of no use: read again from the next.
                    tail.abandon();
                    continue;
                }
            }
        }
        let replaying = Instant::now();
        let (log, report) = apply_tail(tail, dispatcher, chosen, &mut t)?;
        t.replay_ms += replaying.elapsed().as_millis() as u64;
        match chosen {
            Some(offset) if log.next_offset() < offset => {
                // Only a log cut at a corrupt record ends before a snapshot: start over below.
                log_end = log.next_offset();
                candidates.push((offset, store.path(offset)));
                dispatcher.clear_state();
            }
            _ => break (log, report, chosen),
        }
    };
    for warning in &report.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        snapshot = ?snapshot,
        events = report.events,
        segments = report.segments,
        next_offset = log.next_offset(),
        snapshot_ms = t.snapshot_ms,
        replay_ms = t.replay_ms,
        tail_wait_ms = t.tail_wait_ms,
        took_ms = started.elapsed().as_millis() as u64,
        dir = %dir.display(),
        "event log recovered"
    );
    dispatcher.finish_recovery(clock.now_ms());
    Ok(Some(Recovered { log, snapshot }))
}

/// Takes the newest snapshot in `candidates` (oldest first) at or before `log_end`, deleting
/// the ones after it: they belong to a history the log no longer holds.
fn next_candidate(candidates: &mut Vec<(u64, PathBuf)>, log_end: u64) -> Option<(u64, PathBuf)> {
    while let Some((offset, path)) = candidates.pop() {
        if offset <= log_end {
            return Some((offset, path));
        }
        tracing::warn!(
            snapshot = %path.display(),
            log_end,
            "snapshot is ahead of the log's end; deleting it"
        );
        let _ = std::fs::remove_file(&path);
    }
    None
}

/// The log from some offset on, read, verified and decoded on its own thread
/// (`EventLog::open_from`, repairs of a torn tail included) and handed over in batches.
struct Tail {
    batches: Receiver<Vec<Event>>,
    thread: JoinHandle<Result<(EventLog, RecoveryReport), LogError>>,
}

impl Tail {
    /// Starts reading the log in `dir` from offset `from` (an empty log starts at
    /// `first_offset`).
    fn start(config: &LogConfig, dir: &Path, from: u64, first_offset: u64) -> Tail {
        let (tx, batches) = crossbeam_channel::bounded::<Vec<Event>>(TAIL_AHEAD);
        let (config, dir) = (config.clone(), dir.to_path_buf());
        let thread = std::thread::Builder::new()
            .name("log-replay".into())
            .spawn(move || read_tail(&config, &dir, from, first_offset, &tx))
            .expect("spawning the log replay thread needs only memory");
        Tail { batches, thread }
    }

    /// Stops the reader (it finds nobody listening at its next batch) and waits for it, so
    /// nothing else touches the log files meanwhile.
    fn abandon(self) {
        drop(self.batches);
        let _ = self.thread.join();
    }

    /// Waits for the reader's end: the opened log, or why it failed.
    fn finish(self) -> Result<(EventLog, RecoveryReport), LogError> {
        drop(self.batches);
        self.thread.join().unwrap_or_else(|_| {
            Err(LogError::Replay {
                offset: 0,
                why: "the log replay thread panicked (see the log above)".into(),
            })
        })
    }
}

/// The reader thread: `open_from`, its events sent on in batches. A send fails only once the
/// applying side stopped listening (it failed, or abandoned this tail): then reading stops.
fn read_tail(
    config: &LogConfig,
    dir: &Path,
    from: u64,
    first_offset: u64,
    tx: &Sender<Vec<Event>>,
) -> Result<(EventLog, RecoveryReport), LogError> {
    let mut batch = Vec::with_capacity(TAIL_BATCH);
    let stopped = || "recovery stopped reading".to_string();
    let (log, report) = EventLog::open_from(config, dir, from, first_offset, |event| {
        batch.push(event);
        if batch.len() == TAIL_BATCH {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(TAIL_BATCH));
            tx.send(full).map_err(|_| stopped())?;
        }
        Ok(())
    })?;
    if !batch.is_empty() {
        tx.send(batch).map_err(|_| LogError::Replay {
            offset: log.next_offset(),
            why: stopped(),
        })?;
    }
    Ok((log, report))
}

/// Applies the tail's events to `dispatcher`: from the snapshot's offset if one was restored,
/// else all of them. An empty log starts at the tail's first offset (a region's first id).
fn apply_tail(
    tail: Tail,
    dispatcher: &mut Dispatcher,
    snapshot: Option<u64>,
    t: &mut Timings,
) -> Result<(EventLog, RecoveryReport), LogError> {
    let mut first = snapshot.is_none();
    let mut waited = std::time::Duration::ZERO;
    let mut apply = || -> Result<(), LogError> {
        loop {
            let waiting = Instant::now();
            let Ok(batch) = tail.batches.recv() else {
                return Ok(());
            };
            waited += waiting.elapsed();
            for event in &batch {
                let failed = |e: crate::error::Error| LogError::Replay {
                    offset: event.offset,
                    why: e.to_string(),
                };
                if std::mem::take(&mut first) {
                    // Retention may have deleted the oldest segments.
                    dispatcher.resume_at(event.offset).map_err(failed)?;
                }
                dispatcher.replay(event).map_err(failed)?;
            }
        }
    };
    if let Err(e) = apply() {
        tail.abandon();
        return Err(e);
    }
    t.tail_wait_ms += waited.as_millis() as u64;
    let (log, report) = tail.finish()?;
    if report.events == 0 && snapshot.is_none() {
        // An empty log (possibly an empty segment after retention) goes on from its next
        // offset; nothing else has touched the fresh dispatcher.
        let _ = dispatcher.resume_at(log.next_offset());
    }
    Ok((log, report))
}

/// What an engine on another log starts from (a region's JetStream stream in cluster mode):
/// the region's newest snapshot if there is one, the log's events after it, and where its
/// next snapshots go.
pub struct LogStart<'a> {
    /// The state at some offset; `None`: `history` starts at the region's first offset.
    pub image: Option<super::state::StateImage>,
    /// The log's events after the image (all of them without one), in order.
    pub history: &'a [crate::events::Event],
    /// Where the engine's snapshots go; `None`: it takes none.
    pub snapshots: Option<Box<dyn super::SnapshotSink>>,
    /// Where its followers catch up from (the stream the history came from); `None`: nowhere.
    pub backlog: Option<std::sync::Arc<dyn crate::events::RemoteBacklog>>,
}

impl std::fmt::Debug for LogStart<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStart")
            .field(
                "image_offset",
                &self.image.as_ref().map(|i| i.next_offset()),
            )
            .field("history", &self.history.len())
            .field("snapshots", &self.snapshots.is_some())
            .finish()
    }
}

/// Where an engine on another log stores its snapshots.
type Sink = Box<dyn super::SnapshotSink>;

/// Rebuilds a fresh `dispatcher` from `start` (its snapshot, then its history, which must
/// follow on without a gap), then finishes recovery as for the local log. Without a snapshot
/// the history must begin at `first_offset`: a log whose beginning is gone (a trimmed stream)
/// with no snapshot before it cannot rebuild the state, and is refused rather than served
/// half-empty. Returns the snapshot's offset, if one was used, and the sink.
pub(super) fn replay_history(
    dispatcher: &mut Dispatcher,
    start: LogStart<'_>,
    first_offset: u64,
    clock: &dyn Clock,
) -> Result<(Option<u64>, Option<Sink>), LogError> {
    let from = match start.image {
        Some(image) => {
            let offset = image.next_offset();
            dispatcher.restore(image).map_err(|why| LogError::Replay {
                offset,
                why: format!("the snapshot at offset {offset} does not restore: {why}"),
            })?;
            Some(offset)
        }
        None => None,
    };
    if let (None, Some(first)) = (from, start.history.first())
        && first.offset != first_offset
    {
        return Err(LogError::Replay {
            offset: first.offset,
            why: format!(
                "the log begins at offset {} but the region's first is {first_offset}, and no \
                 snapshot covers the events before it",
                first.offset
            ),
        });
    }
    for event in start.history {
        dispatcher.replay(event).map_err(|e| LogError::Replay {
            offset: event.offset,
            why: e.to_string(),
        })?;
    }
    dispatcher.finish_recovery(clock.now_ms());
    Ok((from, start.snapshots))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::{ExternalId, LatLng, Rating, VehicleClass};
    use crate::engine::dispatcher::{GoOnline, TripRequest};
    use crate::engine::snapshot::SnapshotStore;

    const T0: u64 = 1_700_000_000_000;

    fn id(s: &str) -> ExternalId {
        ExternalId::new("id", s).expect("a valid id")
    }

    fn online(d: &mut Dispatcher, i: u64) {
        let go = GoOnline {
            driver: id(&format!("d-{i}")),
            position: LatLng::new(40.70 + (i % 100) as f64 * 0.001, -73.99).expect("valid"),
            rating: Rating::new(4.5).expect("valid"),
            class: VehicleClass::Economy,
            gateway: Some(id("gw")),
        };
        d.go_online(T0 + i, go).expect("goes online");
    }

    fn ride(d: &mut Dispatcher, i: u64) {
        let rider = id(&format!("r-{i}"));
        let req = TripRequest {
            rider: rider.clone(),
            request_id: Some(id(&format!("q-{i}"))),
            pickup: LatLng::new(40.75, -73.99).expect("valid"),
            dropoff: LatLng::new(40.77, -73.97).expect("valid"),
            class: VehicleClass::Any,
        };
        let (trip, _) = d.request_trip(T0 + 5_000 + i, req).expect("requested");
        if i.is_multiple_of(2) {
            d.cancel_trip(T0 + 5_000 + i, trip.id, &rider)
                .expect("cancelled");
        }
    }

    /// A log whose tail after the snapshot spans several of the reader's batches (and ends in
    /// a partial one) recovers the state that wrote it, digest for digest: from the snapshot,
    /// from the whole log with snapshots off, and from the whole log when the only snapshot is
    /// garbage (the tail read from its offset is abandoned and read again from 0).
    #[test]
    fn the_tail_read_on_its_own_thread_rebuilds_the_state_that_wrote_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.log.data_dir = Some(dir.path().to_path_buf());
        let index = crate::index::default_index;
        let mut live = Dispatcher::new(&config, index(), 0);
        let (mut log, _) = EventLog::open(&config.log, dir.path(), |_| Ok(())).expect("opens");
        let commit = |d: &mut Dispatcher, log: &mut EventLog| {
            log.append(&d.take_events()).expect("appends");
            log.commit().expect("commits");
        };
        for i in 0..1_000 {
            online(&mut live, i);
        }
        commit(&mut live, &mut log);
        let at = live.next_offset();
        SnapshotStore::new(dir.path())
            .write(&live.state().image())
            .expect("snapshot written");
        for i in 1_000..2_000 {
            online(&mut live, i);
        }
        for i in 0..1_500 {
            ride(&mut live, i);
        }
        commit(&mut live, &mut log);
        let tail = live.next_offset() - at;
        assert!(
            tail > 4 * TAIL_BATCH as u64 && !tail.is_multiple_of(TAIL_BATCH as u64),
            "{tail}"
        );
        drop(log);
        let clock = ManualClock::new(T0 + 5_000);
        let recovered = |config: &Config| {
            let mut d = Dispatcher::new(config, index(), 0);
            let r = recover(config, &mut d, &clock, 0)
                .expect("recovers")
                .expect("a data dir");
            assert_eq!(r.log.next_offset(), live.next_offset());
            d.check_invariants().expect("invariants hold");
            (r.snapshot, d.durable_digest())
        };
        let want = live.durable_digest();
        assert_eq!(recovered(&config), (Some(at), want.clone()));
        let mut whole = config.clone();
        whole.log.snapshot_keep = 0;
        assert_eq!(recovered(&whole), (None, want.clone()));
        std::fs::write(SnapshotStore::new(dir.path()).path(at), b"garbage").expect("writes");
        assert_eq!(recovered(&config), (None, want));
    }
}
