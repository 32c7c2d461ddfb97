//! The log writer thread: the commit stage of the pipeline when the engine has a durable log.
//!
//! The dispatcher hands over each command group's events and pending replies, in order, on a
//! bounded channel, and goes on deciding. The writer takes everything that queued up while it
//! was busy, appends it, makes it durable with one fsync (group commit), publishes the events
//! to the bus, and only then runs the replies. Order is kept end to end, so a reply never goes
//! out before the events of any earlier command are durable. If the log fails, the writer
//! stops: the bus closes, pending callers get UNAVAILABLE, and the dispatcher stops at its
//! next hand-over instead of acknowledging anything that is not on disk.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use super::Deferred;
use crate::events::{Event, EventBus, EventLog};

/// What the writer commits to: the local segment log, or (cluster mode) a region's JetStream
/// stream. The one seam between the engine and the kind of log it has.
pub trait CommitLog: Send + 'static {
    /// Appends `events` and makes them durable. An error stops the engine: the log failed,
    /// or (a stream) another owner appended, so this process has lost the region.
    fn commit_events(&mut self, events: &[Event]) -> Result<(), String>;
    /// History before `keep_from` is no longer needed to rebuild the state (default: kept).
    fn retain_from(&mut self, _keep_from: u64) {}
}

impl CommitLog for EventLog {
    fn commit_events(&mut self, events: &[Event]) -> Result<(), String> {
        self.append(events)
            .and_then(|()| self.commit())
            .map_err(|e| e.to_string())
    }

    fn retain_from(&mut self, keep_from: u64) {
        match self.enforce_retention(keep_from) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                segments = n,
                first_offset = self.first_offset(),
                "event log retention"
            ),
            Err(e) => tracing::warn!(error = %e, "event log retention failed"),
        }
    }
}

/// Groups waiting for the writer before the dispatcher is held back.
const QUEUE: usize = 1024;
/// Most groups merged into one fsync.
const MERGE_MAX: usize = 256;

enum Job {
    Commit(Vec<Event>, Vec<Deferred>),
    /// Delete old segments no longer needed from this offset on.
    Retain(u64),
}

/// The dispatcher's handle to the writer thread.
pub(super) struct Writer {
    tx: Sender<Job>,
    thread: JoinHandle<()>,
}

impl Writer {
    /// Starts the writer thread owning `log`.
    pub(super) fn start(log: Box<dyn CommitLog>, bus: Arc<EventBus>) -> Writer {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let thread = std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || run(log, bus, rx))
            .expect("spawning the log writer thread needs only memory");
        Writer { tx, thread }
    }

    /// Queues a group; false if the writer has stopped (the log failed).
    pub(super) fn submit(&self, events: Vec<Event>, replies: Vec<Deferred>) -> bool {
        self.tx.send(Job::Commit(events, replies)).is_ok()
    }

    /// Asks for old segments before `keep_from` to be deleted within the retention limits.
    pub(super) fn retain_from(&self, keep_from: u64) {
        let _ = self.tx.try_send(Job::Retain(keep_from));
    }

    /// Lets the writer commit what it was given, then waits for it.
    pub(super) fn finish(self) {
        drop(self.tx);
        // A panic on the writer thread was already reported by the panic hook.
        let _ = self.thread.join();
    }
}

fn run(mut log: Box<dyn CommitLog>, bus: Arc<EventBus>, rx: Receiver<Job>) {
    let mut events = Vec::new();
    let mut replies: Vec<Deferred> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut retain = None;
        let mut take = |job: Job, events: &mut Vec<Event>, replies: &mut Vec<Deferred>| match job {
            Job::Commit(e, r) => {
                events.extend(e);
                replies.extend(r);
            }
            Job::Retain(from) => retain = Some(from),
        };
        take(first, &mut events, &mut replies);
        for _ in 1..MERGE_MAX {
            match rx.try_recv() {
                Ok(job) => take(job, &mut events, &mut replies),
                Err(_) => break,
            }
        }
        if !events.is_empty() {
            if let Err(e) = log.commit_events(&events) {
                tracing::error!(error = %e, "event log write failed; the engine stops");
                bus.close();
                return;
            }
            bus.publish(events.drain(..));
        }
        for reply in replies.drain(..) {
            reply();
        }
        if let Some(keep_from) = retain {
            log.retain_from(keep_from);
        }
    }
    bus.close();
}
