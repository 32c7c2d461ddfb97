//! The engine: the dispatch state, the decisions over it on their own thread, and the cloneable
//! handle the edge talks to it through (this file).
//!
//! - [`state`]: `DispatchState`, everything that is known, changed only by applying events
//!   (plus its named non-durable part: positions, surge demand).
//! - [`dispatcher`]: the decisions (drivers, trips, offers, search, batch, timers) that read the
//!   state and return events; a plain synchronous state machine (no locks, clock or channels).
//! - [`records`]: drivers, trips (with the one trip fold) and the snapshots handed to callers.
//! - `command`: the bounded-channel messages, one variant per operation.
//! - `runner`: the dispatcher thread's loop and its commit stage; `writer`: the log writer
//!   thread behind it; `recovery`: the newest good snapshot plus the log after it on start;
//!   `recording`: the runner's hand-over of each command to the input journal (`record.*`).
//! - [`snapshot`]: the state on disk at an offset (atomic files, CRC, format version), written
//!   by its own thread from a copy the dispatcher takes at a group boundary.
//! - `reads`: the read view NearbyDrivers, GetSurge and GetDriver are answered from on the
//!   caller's thread (one copy behind a lock, updated at each command group's commit), never
//!   through the queue.
//!
//! All channels are bounded: when full, calls fail fast with `RESOURCE_EXHAUSTED`, location
//! batches are shed (counted), and a writer that falls behind holds the dispatcher back.

mod command;
pub mod dispatcher;
mod latest;
mod reads;
mod recording;
pub mod records;
mod recovery;
mod runner;
pub mod snapshot;
pub mod state;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::{ExternalId, LatLng, OfferId, TripId, VehicleClass};
use crate::error::Error;
use crate::events::{Backlog, EventBus, FsyncPolicy, LogError, OfferDetails};
use crate::index::SpatialIndex;
use crate::surge::SurgeReading;

pub use command::LocationOutcome;
use command::{Command, LocationBatch, Reply};
pub use dispatcher::view::{self as map_view, MapView};
pub use dispatcher::{Dispatcher, GoOnline, LocationRejection, TripAction, TripRequest};
pub use records::{Driver, DriverStatus, NearbyDriver, Stats, Trip};
pub use recovery::LogStart;
use runner::{Runner, Sink};
pub use snapshot::SnapshotSink;
pub use state::DispatchState;
pub use writer::CommitLog;

/// Most commands executed before their events are committed and their replies sent.
const GROUP_MAX: usize = 512;

/// Counters the runner and the handle keep outside the dispatcher.
#[derive(Debug, Default)]
pub struct EngineCounters {
    /// Control commands refused because the dispatcher queue was full.
    pub shed_commands: AtomicU64,
    /// Location batches shed because the location queue was full.
    pub shed_location_batches: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    control_tx: Sender<Command>,
    location_tx: Sender<LocationBatch>,
    bus: Arc<EventBus>,
    counters: EngineCounters,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Where followers catch up from: the local log's directory, or the region's stream.
    backlog: Backlog,
    view: tokio::sync::watch::Receiver<Arc<MapView>>,
    /// Set while the view is not being published (nobody watches).
    view_stale: Arc<std::sync::atomic::AtomicBool>,
    reads: reads::ReadView,
    started_at_ms: u64,
    recovered_from: Option<u64>,
    /// Why the event log cannot be written, once it cannot.
    log_failure: tokio::sync::watch::Receiver<Option<String>>,
    /// Closed when the dispatcher thread's runner is gone (its sender drops with it). A bounded
    /// crossbeam channel keeps the messages queued when its receiver drops, so a command sent
    /// just before the runner ended would wait forever for its reply: callers watch this too.
    runner_alive: tokio::sync::watch::Receiver<()>,
}

/// A handle to the running engine. Cheap to clone; every clone talks to the same dispatcher.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Starts the dispatcher thread with an index, a clock and the config's queue bounds. With
    /// a data dir configured, first recovers the state from the event log there.
    pub fn start(
        config: &Config,
        index: Box<dyn SpatialIndex>,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, LogError> {
        Engine::start_at(config, index, clock, 0)
    }

    /// [`Engine::start`] for one region: a fresh state or log issues offsets (and so trip and
    /// offer ids) from `first_offset` (see `cluster::regions`).
    pub fn start_at(
        config: &Config,
        index: Box<dyn SpatialIndex>,
        clock: Arc<dyn Clock>,
        first_offset: u64,
    ) -> Result<Engine, LogError> {
        let mut dispatcher = Dispatcher::new(config, index, first_offset);
        let recovered = recovery::recover(config, &mut dispatcher, &*clock, first_offset)?;
        let backlog = Backlog::from(recovered.as_ref().map(|r| r.log.dir().to_path_buf()));
        let recovered_from = recovered.as_ref().and_then(|r| r.snapshot);
        let log = recovered.map(|r| Box::new(r.log) as Box<dyn CommitLog>);
        Engine::run(
            config,
            dispatcher,
            log,
            backlog,
            recovered_from,
            None,
            clock,
        )
    }

    /// [`Engine::start_at`] on another log (a region's JetStream stream in cluster mode): the
    /// state is rebuilt from `start` (the newest snapshot, then that log's events after it, in
    /// order), then every command group is committed to `log` before its replies go out.
    pub fn start_on_log(
        config: &Config,
        index: Box<dyn SpatialIndex>,
        clock: Arc<dyn Clock>,
        first_offset: u64,
        log: Box<dyn CommitLog>,
        start: LogStart<'_>,
    ) -> Result<Engine, LogError> {
        let mut dispatcher = Dispatcher::new(config, index, first_offset);
        let backlog = start.backlog.clone().map_or(Backlog::None, Backlog::Remote);
        let from = recovery::replay_history(&mut dispatcher, start, first_offset, &*clock)?;
        Engine::run(
            config,
            dispatcher,
            Some(log),
            backlog,
            from.0,
            from.1,
            clock,
        )
    }

    fn run(
        config: &Config,
        dispatcher: Dispatcher,
        log: Option<Box<dyn CommitLog>>,
        backlog: Backlog,
        recovered_from: Option<u64>,
        sink: Option<Box<dyn SnapshotSink>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Engine, LogError> {
        let bus = Arc::new(EventBus::new(
            config.limits.event_buffer,
            dispatcher.next_offset(),
        ));
        let (control_tx, control_rx) =
            crossbeam_channel::bounded(config.limits.control_queue.max(1));
        let (location_tx, location_rx) =
            crossbeam_channel::bounded(config.limits.location_queue.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let group_max = if config.log.fsync == FsyncPolicy::Always {
            1
        } else {
            GROUP_MAX
        };
        let (failure_tx, log_failure) = tokio::sync::watch::channel(None);
        let (sink, snapshots) = match log {
            None => (Sink::Memory(bus.clone()), None),
            Some(log) => {
                // Snapshots go beside a local log, or to the sink of another log.
                let (offset, now_ms) = (dispatcher.next_offset(), clock.now_ms());
                let (snapshotter, schedule) = match (backlog.dir(), sink) {
                    (Some(_), _) => snapshot::start(config, recovered_from, offset, now_ms),
                    (None, Some(sink)) => snapshot::start_remote(config, sink, offset, now_ms),
                    (None, None) => (None, None),
                };
                let writer = writer::Writer::start(log, bus.clone(), snapshotter, failure_tx);
                (Sink::Log(writer), schedule)
            }
        };
        let (view, view_rx, view_stale) = map_view::ViewPublisher::new();
        let (reads, read_publisher) = reads::ReadView::new(config, &dispatcher, clock.clone());
        let started_at_ms = clock.now_ms();
        let recorder = recording::Recorder::start(config, dispatcher.next_offset(), started_at_ms)?;
        let (alive, runner_alive) = tokio::sync::watch::channel(());
        let runner = Runner {
            _alive: alive,
            recorder,
            view,
            reads: read_publisher,
            location_replies: Vec::new(),
            dispatcher,
            control_rx,
            location_rx,
            clock,
            stop: stop.clone(),
            sink,
            group_max,
            deferred: Vec::with_capacity(group_max),
            next_retention_ms: 0,
            snapshots,
        };
        let thread = std::thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || runner.run())
            .expect("spawning the dispatcher thread needs only memory");
        Ok(Engine {
            inner: Arc::new(Inner {
                control_tx,
                location_tx,
                bus,
                counters: EngineCounters::default(),
                stop,
                thread: Mutex::new(Some(thread)),
                backlog,
                view: view_rx,
                view_stale,
                reads,
                started_at_ms,
                recovered_from,
                log_failure,
                runner_alive,
            }),
        })
    }

    /// Where followers of this engine's events catch up from when they lag out of the bus.
    pub fn backlog(&self) -> Backlog {
        self.inner.backlog.clone()
    }

    /// When this engine started (after recovering its log), ms since the Unix epoch by its
    /// clock. Counters that are not rebuilt from the log (location updates) count from here.
    pub fn started_at_ms(&self) -> u64 {
        self.inner.started_at_ms
    }

    /// The offset of the snapshot this engine's state was restored from at start (`None`:
    /// no log, no usable snapshot, or snapshots off; the whole log was replayed).
    pub fn recovered_from_snapshot(&self) -> Option<u64> {
        self.inner.recovered_from
    }

    /// Why the event log cannot be written, once it cannot (the engine then acknowledges
    /// nothing more); watch it to turn health NOT_SERVING.
    pub fn log_failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.inner.log_failure.clone()
    }

    /// Whether the dispatcher still takes calls: its log has not failed and it has not ended.
    pub fn is_serving(&self) -> bool {
        self.inner.log_failure.borrow().is_none() && self.inner.runner_alive.has_changed().is_ok()
    }

    /// The error for a call the dispatcher can no longer take: shutting down, or the log
    /// failed (named).
    fn stopped(&self) -> Error {
        match &*self.inner.log_failure.borrow() {
            Some(cause) => Error::Unavailable(format!(
                "the event log cannot be written ({cause}); this server acknowledges nothing \
                 until it is restarted: retry on another instance"
            )),
            None => Error::Unavailable("the dispatcher has stopped (server shutting down)".into()),
        }
    }

    /// The event stream.
    pub fn bus(&self) -> &Arc<EventBus> {
        &self.inner.bus
    }

    /// The map view the dispatcher publishes every [`map_view::VIEW_INTERVAL_MS`] of engine
    /// time while someone holds a receiver; clone it per viewer (reading it never reaches the
    /// dispatcher).
    pub fn map_view(&self) -> tokio::sync::watch::Receiver<Arc<MapView>> {
        self.inner.view.clone()
    }

    /// The latest map view, fresh: when nobody was watching (so none was built), waits up to
    /// a second for the one the dispatcher builds now that somebody is.
    pub async fn fresh_map_view(&self) -> Arc<MapView> {
        map_view::fresh(&self.inner.view, &self.inner.view_stale).await
    }

    /// Shed counters.
    pub fn counters(&self) -> &EngineCounters {
        &self.inner.counters
    }

    /// Messages waiting for the dispatcher: (control commands, location batches).
    pub fn queue_depth(&self) -> (usize, usize) {
        (self.inner.control_tx.len(), self.inner.location_tx.len())
    }

    /// Stops the dispatcher thread and waits for it; subscribers' streams end. Blocking: call
    /// from a blocking context. Idempotent.
    pub fn shutdown(&self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        let thread = self.inner.thread.lock().take();
        if let Some(thread) = thread {
            // A panic on the dispatcher thread was already reported by the panic hook.
            let _ = thread.join();
        }
        self.inner.bus.close();
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        match self.inner.control_tx.try_send(make(tx)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.inner
                    .counters
                    .shed_commands
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Error::ResourceExhausted(
                    "the dispatcher queue is full; retry with backoff".into(),
                ));
            }
            Err(TrySendError::Disconnected(_)) => return Err(self.stopped()),
        }
        self.answer(rx).await?
    }

    /// The dispatcher's answer to work it was handed, or the reason it can no longer come:
    /// the reply dropped, or the runner ended with the work still queued, unread.
    async fn answer<T>(&self, rx: oneshot::Receiver<T>) -> Result<T, Error> {
        let mut alive = self.inner.runner_alive.clone();
        tokio::select! {
            // Every reply is sent before the runner ends (the writer is joined first), so a
            // ready reply wins over the runner's end.
            biased;
            reply = rx => reply.map_err(|_| self.stopped()),
            // Nothing is ever sent on it: `changed` returns only once the runner is gone.
            _ = alive.changed() => Err(self.stopped()),
        }
    }

    /// See [`Dispatcher::go_online`].
    pub async fn go_online(&self, req: GoOnline) -> Result<Driver, Error> {
        self.call(|r| Command::GoOnline(req, r)).await
    }

    /// See [`Dispatcher::go_offline`].
    pub async fn go_offline(&self, driver: ExternalId) -> Result<Driver, Error> {
        self.call(|r| Command::GoOffline(driver, r)).await
    }

    /// See [`Dispatcher::update_location`].
    pub async fn update_location(&self, driver: ExternalId, position: LatLng) -> Result<(), Error> {
        self.call(|r| Command::UpdateLocation(driver, position, r))
            .await
    }

    /// Applies a batch of validated updates. `None` means the batch was shed (queue full).
    pub async fn apply_locations(
        &self,
        updates: Vec<(String, LatLng)>,
    ) -> Result<Option<LocationOutcome>, Error> {
        let (reply, rx) = oneshot::channel();
        let batch = self.inner.reads.resolve(updates, reply);
        match self.inner.location_tx.try_send(batch) {
            Ok(()) => self.answer(rx).await.map(Some),
            Err(TrySendError::Full(_)) => {
                self.inner
                    .counters
                    .shed_location_batches
                    .fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            Err(TrySendError::Disconnected(_)) => Err(self.stopped()),
        }
    }

    /// See [`Dispatcher::request_trip`].
    pub async fn request_trip(&self, req: TripRequest) -> Result<(Trip, bool), Error> {
        self.call(|r| Command::RequestTrip(req, r)).await
    }

    /// See [`Dispatcher::respond`].
    pub async fn respond(
        &self,
        offer: OfferId,
        driver: ExternalId,
        accept: bool,
    ) -> Result<Trip, Error> {
        self.call(|reply| Command::Respond {
            offer,
            driver,
            accept,
            reply,
        })
        .await
    }

    /// See [`Dispatcher::trip_action`].
    pub async fn trip_action(
        &self,
        trip: TripId,
        driver: ExternalId,
        action: TripAction,
    ) -> Result<Trip, Error> {
        self.call(|reply| Command::TripAction {
            trip,
            driver,
            action,
            reply,
        })
        .await
    }

    /// See [`Dispatcher::cancel_trip`].
    pub async fn cancel_trip(&self, trip: TripId, rider: ExternalId) -> Result<Trip, Error> {
        self.call(|reply| Command::CancelTrip { trip, rider, reply })
            .await
    }

    /// A trip and the offset of the next event (subscribe from it to follow the trip).
    pub async fn trip(&self, trip: TripId) -> Result<(Trip, u64), Error> {
        self.call(|r| Command::GetTrip(trip, r)).await
    }

    /// See [`Dispatcher::driver`]. Answered from the read view on the caller's thread, as of
    /// the last committed command group (see `reads`).
    pub async fn driver(&self, driver: ExternalId) -> Result<Driver, Error> {
        self.inner.reads.driver(driver.as_str())
    }

    /// See [`Dispatcher::nearby`]. Answered from the read view on the caller's thread, as of
    /// the last committed command group.
    pub async fn nearby(
        &self,
        center: LatLng,
        radius_m: f64,
        limit: usize,
        class: VehicleClass,
    ) -> Result<Vec<NearbyDriver>, Error> {
        Ok(self.inner.reads.nearby(center, radius_m, limit, class))
    }

    /// See [`Dispatcher::surge`]. Answered from the read view on the caller's thread, as of
    /// the last committed command group.
    pub async fn surge(&self, point: LatLng, class: VehicleClass) -> Result<SurgeReading, Error> {
        Ok(self.inner.reads.surge(point, class))
    }

    /// See [`Dispatcher::stats`].
    pub async fn stats(&self) -> Result<Stats, Error> {
        self.call(Command::Stats).await
    }

    /// Pending offers for a gateway and the offset to follow the stream from.
    pub async fn pending_offers(
        &self,
        gateway: Option<ExternalId>,
    ) -> Result<(Vec<Arc<OfferDetails>>, u64), Error> {
        self.call(|r| Command::PendingOffers(gateway, r)).await
    }

    /// See [`Dispatcher::leave_region`].
    pub async fn leave_region(&self, driver: ExternalId, to: String) -> Result<Driver, Error> {
        self.call(|r| Command::LeaveRegion(driver, to, r)).await
    }

    /// See [`Dispatcher::join_region`].
    pub async fn join_region(&self, join: crate::events::RegionJoin) -> Result<Driver, Error> {
        self.call(|r| Command::JoinRegion(Box::new(join), r)).await
    }

    /// Makes the dispatcher fire due deadlines now; returns once their events are published.
    /// Used after moving a manual clock.
    pub async fn tick(&self) -> Result<(), Error> {
        self.call(Command::Tick).await
    }
}

/// A reply waiting for its command group to be committed.
pub(crate) type Deferred = Box<dyn FnOnce() + Send>;
