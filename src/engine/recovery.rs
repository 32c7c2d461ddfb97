//! Recovery: rebuilding the dispatcher from the durable log on start.
//!
//! Every logged event goes through the same `DispatchState::apply` that live operation uses, so
//! the state (deadlines included) is the one that wrote the log. Then `finish_recovery` gives a
//! batch whose flush fell due while down a fresh window and searches for any trip a torn log
//! left without a next search; the runner's first `fire_due` expires the offers whose window
//! passed meanwhile, and they cascade.

use super::dispatcher::Dispatcher;
use crate::clock::Clock;
use crate::config::Config;
use crate::events::{Event, EventLog, LogError};

/// Opens the log in `config.log.data_dir` (if any) and replays it into `dispatcher`.
pub(super) fn recover(
    config: &Config,
    dispatcher: &mut Dispatcher,
    clock: &dyn Clock,
    first_offset: u64,
) -> Result<Option<EventLog>, LogError> {
    let Some(dir) = &config.log.data_dir else {
        return Ok(None);
    };
    let mut first = true;
    let (log, report) = EventLog::open_from(&config.log, dir, first_offset, |event| {
        if std::mem::take(&mut first) {
            // Retention may have deleted the oldest segments.
            dispatcher
                .resume_at(event.offset)
                .map_err(|e| e.to_string())?;
        }
        dispatcher.replay(&event).map_err(|e| e.to_string())
    })?;
    if report.events == 0 {
        // An empty log (possibly an empty segment after retention) goes on from its next
        // offset; nothing else has touched the fresh dispatcher.
        let _ = dispatcher.resume_at(log.next_offset());
    }
    for warning in &report.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        events = report.events,
        segments = report.segments,
        next_offset = log.next_offset(),
        dir = %dir.display(),
        "event log recovered"
    );
    dispatcher.finish_recovery(clock.now_ms());
    Ok(Some(log))
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
