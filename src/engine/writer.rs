//! The log writer thread: the commit stage of the pipeline when the engine has a durable log.
//!
//! The dispatcher hands over each command group's events and pending replies, in order, on a
//! bounded channel, and goes on deciding. The writer takes everything that queued up while it
//! was busy, appends it, makes it durable with one fsync (group commit), publishes the events
//! to the bus, and only then runs the replies. Order is kept end to end, so a reply never goes
//! out before the events of any earlier command are durable. If the log fails, the writer
//! stops: the bus closes, pending callers get UNAVAILABLE, and the dispatcher stops at its
//! next hand-over instead of acknowledging anything that is not on disk.
//!
//! A state snapshot queued by the dispatcher goes to the snapshot thread only after the events
//! before it are durable, so no snapshot is ever ahead of the log.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::watch;

use super::Deferred;
use super::snapshot::Snapshotter;
use super::state::StateImage;
use crate::events::{Event, EventBus, EventLog};

/// What the writer commits to: the local segment log, or (cluster mode) a region's JetStream
/// stream. The one seam between the engine and the kind of log it has.
pub trait CommitLog: Send + 'static {
    /// Appends `events` and makes them durable. An error stops the engine: the log failed,
    /// or (a stream) another owner appended, so this process has lost the region.
    fn commit_events(&mut self, events: &[Event]) -> Result<(), String>;
    /// History before `keep_from` is no longer needed to rebuild the state (default: kept);
    /// `beside` bytes of the retention budget are taken by the snapshots.
    fn retain_from(&mut self, _keep_from: u64, _beside: u64) {}
    /// Where the log stands after the last commit, in its own terms: a stream's last sequence
    /// (a snapshot taken here is stored with it, so a new owner reads the stream after it);
    /// 0 for the local log, whose offsets say it all.
    fn position(&self) -> u64 {
        0
    }
}

impl CommitLog for EventLog {
    fn commit_events(&mut self, events: &[Event]) -> Result<(), String> {
        self.append(events)
            .and_then(|()| self.commit())
            .map_err(|e| e.to_string())
    }

    fn retain_from(&mut self, keep_from: u64, beside: u64) {
        match self.enforce_retention_beside(keep_from, beside) {
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
    /// Delete old segments no longer needed from this offset on, the snapshots taking this
    /// many bytes of the budget.
    Retain(u64, u64),
    /// The state at the end of the groups before it, for the snapshot thread.
    Snapshot(Box<StateImage>),
}

/// The dispatcher's handle to the writer thread.
pub(super) struct Writer {
    tx: Sender<Job>,
    thread: JoinHandle<()>,
    /// The cause, once the log failed (the writer then takes nothing more).
    failure: watch::Receiver<Option<String>>,
}

impl Writer {
    /// Starts the writer thread owning `log` (and the snapshot thread, if any).
    pub(super) fn start(
        log: Box<dyn CommitLog>,
        bus: Arc<EventBus>,
        snapshots: Option<Snapshotter>,
        failure: watch::Sender<Option<String>>,
    ) -> Writer {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let failed = failure.subscribe();
        let thread = std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || {
                run(log, bus, rx, snapshots.as_ref(), &failure);
                if let Some(s) = snapshots {
                    s.finish();
                }
            })
            .expect("spawning the log writer thread needs only memory");
        Writer {
            tx,
            thread,
            failure: failed,
        }
    }

    /// Whether the log failed. Groups queued behind the failing one stay in the bounded
    /// channel (a crossbeam array channel keeps its messages until its last sender drops), so
    /// their callers are answered only once the dispatcher sees this and lets go of the
    /// writer: it cannot wait for its next `submit` to fail, as none may come.
    pub(super) fn failed(&self) -> bool {
        self.failure.borrow().is_some()
    }

    /// Queues a group; false if the writer has stopped (the log failed).
    pub(super) fn submit(&self, events: Vec<Event>, replies: Vec<Deferred>) -> bool {
        self.tx.send(Job::Commit(events, replies)).is_ok()
    }

    /// Asks for old segments before `keep_from` to be deleted within the retention limits,
    /// `beside` bytes of which the snapshots take.
    pub(super) fn retain_from(&self, keep_from: u64, beside: u64) {
        let _ = self.tx.try_send(Job::Retain(keep_from, beside));
    }

    /// Queues a snapshot of the state after the groups already submitted; skipped if the
    /// writer is backed up (the next one will do).
    pub(super) fn snapshot(&self, image: StateImage) {
        let _ = self.tx.try_send(Job::Snapshot(Box::new(image)));
    }

    /// Lets the writer commit what it was given, then waits for it.
    pub(super) fn finish(self) {
        drop(self.tx);
        // A panic on the writer thread was already reported by the panic hook.
        let _ = self.thread.join();
    }
}

/// The writer loop, until the dispatcher is done or the log cannot be written (then the cause
/// goes to `failure`).
fn run(
    mut log: Box<dyn CommitLog>,
    bus: Arc<EventBus>,
    rx: Receiver<Job>,
    snaps: Option<&Snapshotter>,
    failure: &watch::Sender<Option<String>>,
) {
    let mut events = Vec::new();
    let mut replies: Vec<Deferred> = Vec::new();
    while let Ok(first) = rx.recv() {
        // Merge commits; a retention or snapshot job ends the group, so it is handled after
        // exactly the commits queued before it (and before the replies of any after it).
        let mut retain = None;
        let mut image = None;
        let mut job = Some(first);
        let mut merged = 0;
        while let Some(next) = job.take() {
            match next {
                Job::Commit(e, r) => {
                    events.extend(e);
                    replies.extend(r);
                }
                Job::Retain(from, beside) => retain = Some((from, beside)),
                Job::Snapshot(i) => image = Some(i),
            }
            merged += 1;
            if retain.is_some() || image.is_some() || merged == MERGE_MAX {
                break;
            }
            job = rx.try_recv().ok();
        }
        if !events.is_empty() {
            if let Err(e) = log.commit_events(&events) {
                tracing::error!(
                    error = %e,
                    "event log write failed; the engine stops acknowledging anything"
                );
                // Set before the pending replies drop with this frame, so their callers (who
                // get UNAVAILABLE) and health hear why.
                failure.send_replace(Some(e));
                bus.close();
                // The groups already queued behind this one are refused now (their replies
                // drop); any the dispatcher hands over later wait until it sees `failed`.
                while rx.try_recv().is_ok() {}
                return;
            }
            bus.publish(events.drain(..));
        }
        for reply in replies.drain(..) {
            reply();
        }
        if let (Some(image), Some(snaps)) = (image, snaps) {
            snaps.offer(image, log.position());
        }
        if let Some((keep_from, beside)) = retain {
            log.retain_from(keep_from, beside);
        }
    }
    bus.close();
}
