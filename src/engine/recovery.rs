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

use std::path::Path;
use std::time::Instant;

use super::dispatcher::Dispatcher;
use super::snapshot::SnapshotStore;
use crate::clock::Clock;
use crate::config::Config;
use crate::events::log::RecoveryReport;
use crate::events::{Event, EventLog, LogError};

/// What recovery opened and started from.
#[derive(Debug)]
pub(super) struct Recovered {
    /// The log, ready for appends.
    pub(super) log: EventLog,
    /// The offset of the snapshot the state was restored from, if any.
    pub(super) snapshot: Option<u64>,
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
    // Where the time goes (reported below): loading snapshots, replaying the log after one.
    let (mut snapshot_ms, mut replay_ms) = (0, 0);
    let (log, report, snapshot) = loop {
        let loading = Instant::now();
        let mut chosen = None;
        while let Some((offset, path)) = candidates.pop() {
            if offset > log_end {
                tracing::warn!(
                    snapshot = %path.display(),
                    log_end,
                    "snapshot is ahead of the log's end; deleting it"
                );
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match store
                .load(&path)
                .and_then(|image| dispatcher.restore(image))
            {
                Ok(()) => {
                    chosen = Some(offset);
                    break;
                }
                Err(why) => tracing::warn!(
                    snapshot = %path.display(),
                    "snapshot unusable ({why}); trying an older one"
                ),
            }
        }
        snapshot_ms += loading.elapsed().as_millis() as u64;
        let replaying = Instant::now();
        let (log, report) = replay_log(config, dir, dispatcher, chosen, first_offset)?;
        replay_ms += replaying.elapsed().as_millis() as u64;
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
        snapshot_ms,
        replay_ms,
        took_ms = started.elapsed().as_millis() as u64,
        dir = %dir.display(),
        "event log recovered"
    );
    dispatcher.finish_recovery(clock.now_ms());
    Ok(Some(Recovered { log, snapshot }))
}

/// Replays the log into `dispatcher`: from the snapshot's offset if one was restored, else
/// all of it. An empty log starts at `first_offset` (a region's first id).
fn replay_log(
    config: &Config,
    dir: &Path,
    dispatcher: &mut Dispatcher,
    snapshot: Option<u64>,
    first_offset: u64,
) -> Result<(EventLog, RecoveryReport), LogError> {
    let mut first = snapshot.is_none();
    let from = snapshot.unwrap_or(0);
    let (log, report) = EventLog::open_from(&config.log, dir, from, first_offset, |event| {
        if std::mem::take(&mut first) {
            // Retention may have deleted the oldest segments.
            dispatcher
                .resume_at(event.offset)
                .map_err(|e| e.to_string())?;
        }
        dispatcher.replay(&event).map_err(|e| e.to_string())
    })?;
    if report.events == 0 && snapshot.is_none() {
        // An empty log (possibly an empty segment after retention) goes on from its next
        // offset; nothing else has touched the fresh dispatcher.
        let _ = dispatcher.resume_at(log.next_offset());
    }
    Ok((log, report))
}

/// Replays a history read from elsewhere (a region's JetStream stream) into a fresh
/// `dispatcher`, in order, then finishes recovery as for the local log.
pub(super) fn replay_history(
    dispatcher: &mut Dispatcher,
    history: &[Event],
    clock: &dyn Clock,
) -> Result<(), LogError> {
    for (i, event) in history.iter().enumerate() {
        let failed = |e: crate::error::Error| LogError::Replay {
            offset: event.offset,
            why: e.to_string(),
        };
        if i == 0 {
            dispatcher.resume_at(event.offset).map_err(failed)?;
        }
        dispatcher.replay(event).map_err(failed)?;
    }
    dispatcher.finish_recovery(clock.now_ms());
    Ok(())
}
