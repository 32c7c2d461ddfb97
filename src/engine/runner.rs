//! The dispatcher thread's loop.
//!
//! It loops: fire due deadlines, then take a group of ready work and execute each piece with
//! `now` from the [`Clock`]. A group is control commands, or location batches (at most
//! [`GROUP_UPDATES`] updates, ended early by a waiting control command), never both, and
//! control commands go first: a trip request's reply never waits for location work. The group's events and
//! pending replies then go to the commit stage, in order. Without a log that is immediate:
//! publish to the [`EventBus`], reply. With a log it is a writer thread (`writer`), so the
//! dispatcher goes on deciding while the disk syncs: the writer appends everything that queued
//! up, makes it durable with one fsync, publishes, and only then replies. So an acknowledged
//! call is on disk, subscribers never see an event that could be lost, and a caller that gets an
//! answer and then subscribes from the trip's offset misses nothing.
//!
//! At each commit the runner first publishes the read view (`reads`) with what the group
//! touched, then answers the group's location batches, then hands the rest on: so every reply
//! comes after the view shows its change.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, select};
use tokio::sync::oneshot;

use super::Deferred;
use super::command::{Command, LocationBatch, LocationOutcome};
use super::dispatcher::{Dispatcher, LocationRejection};
use super::writer;
use crate::clock::Clock;
use crate::events::EventBus;

/// Longest the runner sleeps without a command or a deadline, so a stop request is noticed.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// How often the log's retention limits are checked, ms.
const RETENTION_CHECK_MS: u64 = 1_000;

/// Where a command group's events and replies go.
pub(super) enum Sink {
    /// No log: publish and reply at once.
    Memory(Arc<EventBus>),
    /// The log writer thread: append, fsync, publish, reply.
    Log(writer::Writer),
}

/// Location updates one group applies at most before it commits (it takes whole batches, and
/// always its first): a control command that arrives meanwhile waits for at most this much
/// location work.
const GROUP_UPDATES: usize = 256;

/// What a command group holds so far. A group is control commands or location batches, never
/// both: a trip request's reply would otherwise wait, at its group's commit, for every location
/// batch taken after it.
struct Fill {
    locations: bool,
    taken: usize,
    updates: usize,
}

impl Fill {
    fn of(work: &Work) -> Fill {
        let mut fill = Fill {
            locations: matches!(work, Work::Locations(_)),
            taken: 0,
            updates: 0,
        };
        fill.add(work);
        fill
    }

    fn add(&mut self, work: &Work) {
        self.taken += 1;
        if let Work::Locations(batch) = work {
            self.updates += batch.keyed.len() + batch.named.len();
        }
    }

    fn locations(&self) -> bool {
        self.locations
    }

    /// Whether the group takes more work.
    fn room(&self, group_max: usize) -> bool {
        self.taken < group_max && self.updates < GROUP_UPDATES
    }
}

/// Work taken from the channels.
enum Work {
    Control(Command),
    Locations(LocationBatch),
}

/// The dispatcher thread's loop.
pub(super) struct Runner {
    pub(super) dispatcher: Dispatcher,
    pub(super) control_rx: Receiver<Command>,
    pub(super) location_rx: Receiver<LocationBatch>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) sink: Sink,
    pub(super) group_max: usize,
    pub(super) deferred: Vec<Deferred>,
    pub(super) next_retention_ms: u64,
    /// Publishes the map view every `VIEW_INTERVAL_MS` of engine time.
    pub(super) view: super::map_view::ViewPublisher,
    /// When to snapshot the state (with a log and snapshots on).
    pub(super) snapshots: Option<super::snapshot::Schedule>,
    /// Publishes the read view at every commit.
    pub(super) reads: super::reads::ReadPublisher,
    /// The group's location batch outcomes, sent once the read view shows them.
    pub(super) location_replies: Vec<(oneshot::Sender<LocationOutcome>, LocationOutcome)>,
    /// The input journal, when `record.enabled`.
    pub(super) recorder: Option<super::recording::Recorder>,
    /// Dropped with the runner: tells callers still waiting that no reply will come.
    pub(super) _alive: tokio::sync::watch::Sender<()>,
}

impl Runner {
    pub(super) fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let now = self.clock.now_ms();
            if let Some(r) = &mut self.recorder {
                r.fire(now, self.dispatcher.next_deadline_ms());
            }
            self.dispatcher.fire_due(now);
            let wait = self.dispatcher.next_deadline_ms().map_or(IDLE_WAIT, |at| {
                Duration::from_millis(at.saturating_sub(now)).min(IDLE_WAIT)
            });
            let mut disconnected = false;
            // Wait for the first piece of work only if nothing (e.g. an expiry) needs committing.
            let first = if self.dispatcher.has_events() {
                self.try_take()
            } else {
                self.take(wait)
            };
            let mut fill = match first {
                Ok(Some(work)) => {
                    let fill = Fill::of(&work);
                    self.handle(work);
                    Some(fill)
                }
                Ok(None) => None,
                Err(()) => {
                    disconnected = true;
                    None
                }
            };
            while let Some(f) = fill.as_mut().filter(|f| f.room(self.group_max)) {
                match self.try_take_more(f.locations()) {
                    Ok(Some(work)) => {
                        f.add(&work);
                        self.handle(work);
                    }
                    Ok(None) => break,
                    Err(()) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            if !self.commit(now) || disconnected || self.sink_failed() {
                break;
            }
            self.enforce_retention(now);
            self.maybe_snapshot(now);
            self.view.maybe_publish(&self.dispatcher, now);
        }
        self.commit(self.clock.now_ms());
        match self.sink {
            // Wait until everything handed over is durable and answered.
            Sink::Log(writer) => writer.finish(),
            Sink::Memory(bus) => bus.close(),
        }
        if let Some(r) = self.recorder {
            r.finish();
        }
    }

    /// Whether the log writer failed, even if nothing was handed to it since.
    fn sink_failed(&self) -> bool {
        matches!(&self.sink, Sink::Log(writer) if writer.failed())
    }

    /// Ready work without waiting: control first. `Err` once the engine handle is gone.
    fn try_take(&self) -> Result<Option<Work>, ()> {
        match self.control_rx.try_recv() {
            Ok(cmd) => return Ok(Some(Work::Control(cmd))),
            Err(crossbeam_channel::TryRecvError::Disconnected) => return Err(()),
            Err(crossbeam_channel::TryRecvError::Empty) => {}
        }
        Ok(self.location_rx.try_recv().ok().map(Work::Locations))
    }

    /// More work for a group: control commands for a group of them; location batches for a
    /// group of those, and none once a control command waits (it starts the next group).
    fn try_take_more(&self, locations: bool) -> Result<Option<Work>, ()> {
        if !locations {
            return match self.control_rx.try_recv() {
                Ok(cmd) => Ok(Some(Work::Control(cmd))),
                Err(crossbeam_channel::TryRecvError::Disconnected) => Err(()),
                Err(crossbeam_channel::TryRecvError::Empty) => Ok(None),
            };
        }
        if !self.control_rx.is_empty() {
            return Ok(None);
        }
        Ok(self.location_rx.try_recv().ok().map(Work::Locations))
    }

    /// Work, waiting up to `wait` for some.
    fn take(&self, wait: Duration) -> Result<Option<Work>, ()> {
        if let Some(work) = self.try_take()? {
            return Ok(Some(work));
        }
        select! {
            recv(self.control_rx) -> msg => msg.map(|c| Some(Work::Control(c))).map_err(|_| ()),
            recv(self.location_rx) -> msg => Ok(msg.ok().map(Work::Locations)),
            default(wait) => Ok(None),
        }
    }

    fn handle(&mut self, work: Work) {
        match work {
            Work::Control(cmd) => self.execute(cmd),
            Work::Locations(batch) => self.apply_batch(batch),
        }
    }

    /// Hands the group's events and replies to the commit stage. Returns false once the log
    /// writer has failed: the engine then stops rather than acknowledge what is not on disk.
    fn commit(&mut self, now_ms: u64) -> bool {
        let events = self.dispatcher.take_events();
        self.reads.publish(&self.dispatcher, &events, now_ms);
        for (reply, outcome) in self.location_replies.drain(..) {
            // The gateway may have hung up; its summary is then moot.
            let _ = reply.send(outcome);
        }
        let replies = std::mem::take(&mut self.deferred);
        match &self.sink {
            Sink::Memory(bus) => {
                if !events.is_empty() {
                    bus.publish(events);
                }
                for reply in replies {
                    reply();
                }
                true
            }
            Sink::Log(writer) => {
                if events.is_empty() && replies.is_empty() {
                    return true;
                }
                writer.submit(events, replies)
            }
        }
    }

    fn enforce_retention(&mut self, now: u64) {
        let Sink::Log(writer) = &self.sink else {
            return;
        };
        if now < self.next_retention_ms {
            return;
        }
        self.next_retention_ms = now.saturating_add(RETENTION_CHECK_MS);
        let needed = self.dispatcher.oldest_needed_offset();
        let floor = self
            .snapshots
            .as_ref()
            .map_or(needed, |s| s.retention_floor(needed));
        let beside = self.snapshots.as_ref().map_or(0, |s| s.disk_bytes());
        writer.retain_from(floor, beside);
    }

    /// At a group boundary (every invariant holds, the group's events handed over): copies
    /// the state for a snapshot when one is due. The copy is the only pause it causes here.
    fn maybe_snapshot(&mut self, now: u64) {
        let (Sink::Log(writer), Some(schedule)) = (&self.sink, &mut self.snapshots) else {
            return;
        };
        if !schedule.due(self.dispatcher.next_offset(), now) {
            return;
        }
        let started = std::time::Instant::now();
        let image = self.dispatcher.state().image();
        let pause_us = started.elapsed().as_micros() as u64;
        tracing::info!(
            offset = image.next_offset(),
            drivers = image.driver_count(),
            pause_us,
            "state copied for a snapshot"
        );
        writer.snapshot(image);
    }

    fn apply_batch(&mut self, batch: LocationBatch) {
        let mut outcome = LocationOutcome::default();
        for &(key, position) in &batch.keyed {
            let applied = self.dispatcher.apply_location_key(key, position);
            if let Some(why) = count_location(&mut self.reads, &mut outcome, applied) {
                let driver = &self.dispatcher.state().record(key).id;
                outcome.examples.push(format!("{driver}: {why}"));
            }
        }
        for (driver, position) in &batch.named {
            let applied = self.dispatcher.apply_location(driver, position.to_owned());
            if let Some(why) = count_location(&mut self.reads, &mut outcome, applied) {
                outcome.examples.push(format!("{driver}: {why}"));
            }
        }
        if let Some(r) = &mut self.recorder {
            // By name, in the order applied: a replay resolves names itself.
            let state = self.dispatcher.state();
            let mut updates = Vec::with_capacity(batch.keyed.len() + batch.named.len());
            for &(key, position) in &batch.keyed {
                updates.push((state.record(key).id.as_str().to_owned(), position));
            }
            updates.extend(batch.named);
            r.locations(self.clock.now_ms(), updates);
        }
        // Positions are not logged, so the summary need not wait for the log: it goes out once
        // the read view shows the batch, at this group's commit.
        self.location_replies.push((batch.reply, outcome));
    }

    fn execute(&mut self, cmd: Command) {
        let now = self.clock.now_ms();
        if let Some(r) = &mut self.recorder {
            r.command(now, &cmd);
        }
        let d = &mut self.dispatcher;
        d.fire_due(now);
        let deferred = &mut self.deferred;
        // Each arm computes its result now; the reply waits for the group commit. A caller
        // that stopped waiting (deadline, disconnect) makes `send` fail: nothing to do.
        macro_rules! answer {
            ($reply:expr, $result:expr) => {{
                let result = $result;
                let reply = $reply;
                deferred.push(Box::new(move || {
                    let _ = reply.send(result);
                }));
            }};
        }
        match cmd {
            Command::GoOnline(req, r) => answer!(r, d.go_online(now, req)),
            Command::GoOffline(id, r) => answer!(r, d.go_offline(now, &id)),
            Command::UpdateLocation(id, pos, r) => {
                let result = d.update_location(&id, pos);
                // As for a batch: the read view (GetDriver) shows the new position.
                if result.is_ok()
                    && let Some(key) = d.state().driver_key(id.as_str())
                {
                    self.reads.touch(key);
                }
                answer!(r, result)
            }
            Command::RequestTrip(req, r) => answer!(r, d.request_trip(now, req)),
            Command::Respond {
                offer,
                driver,
                accept,
                reply,
            } => {
                answer!(reply, d.respond(now, offer, &driver, accept))
            }
            Command::TripAction {
                trip,
                driver,
                action,
                reply,
            } => {
                answer!(reply, d.trip_action(now, trip, &driver, action))
            }
            Command::CancelTrip { trip, rider, reply } => {
                answer!(reply, d.cancel_trip(now, trip, &rider))
            }
            // The offset is read after this group's events are counted, so following from
            // it misses nothing and repeats nothing.
            Command::GetTrip(trip, r) => answer!(r, d.trip(trip).map(|t| (t, d.next_offset()))),
            Command::Stats(r) => answer!(r, Ok(d.stats())),
            Command::PendingOffers(gateway, r) => {
                answer!(r, Ok((d.pending_offers(gateway.as_ref()), d.next_offset())))
            }
            Command::Tick(r) => answer!(r, Ok(())),
            Command::LeaveRegion(id, to, r) => answer!(r, d.leave_region(now, &id, &to)),
            Command::JoinRegion(join, r) => answer!(r, d.join_region(now, *join)),
        }
    }
}

/// Counts one applied (or rejected) location report into `outcome`. Returns the reason when a
/// rejection should also be given as an example (the first few are).
fn count_location(
    reads: &mut super::reads::ReadPublisher,
    outcome: &mut LocationOutcome,
    applied: Result<crate::domain::DriverKey, LocationRejection>,
) -> Option<LocationRejection> {
    match applied {
        Ok(key) => {
            reads.touch(key);
            outcome.accepted += 1;
            None
        }
        Err(why) => {
            if why == LocationRejection::DriverOffline {
                outcome.driver_offline += 1;
            } else {
                outcome.unknown_driver += 1;
            }
            (outcome.examples.len() < 10).then_some(why)
        }
    }
}
