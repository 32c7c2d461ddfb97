//! The engine: the dispatcher running on its own thread, and the cloneable handle the edge
//! talks to it through.
//!
//! - [`dispatcher`]: the single-owner state machine (no locks, no clock, no channels).
//! - [`records`]: drivers, trips and the snapshots handed back to callers.
//! - `command`: the bounded-channel messages, one variant per operation.
//!
//! The runner thread loops: fire due deadlines, then take a group of ready commands (control
//! commands before location batches) and execute each with `now` from the [`Clock`]. The
//! group's events and pending replies then go to the commit stage, in order. Without a log that
//! is immediate: publish to the [`EventBus`], reply. With a log it is a writer thread (`writer`),
//! so the dispatcher goes on deciding while the disk syncs: the writer appends everything that
//! queued up, makes it durable with one fsync, publishes, and only then replies. So an
//! acknowledged call is on disk, subscribers never see an event that could be lost, and a caller
//! that gets an answer and then subscribes from the trip's offset misses nothing. All channels
//! are bounded: when full, calls fail fast with `RESOURCE_EXHAUSTED`, location batches are shed
//! (counted), and a writer that falls behind holds the dispatcher back.
//!
//! On start, the engine replays the log into the dispatcher (see `dispatcher::apply`), then
//! fires what fell due while it was down: offers that expired meanwhile expire and cascade.

mod command;
pub mod dispatcher;
pub mod records;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError, select};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::config::Config;
use crate::domain::{ExternalId, LatLng, OfferId, TripId, VehicleClass};
use crate::error::Error;
use crate::events::{EventBus, EventLog, FsyncPolicy, LogError, OfferDetails};
use crate::index::SpatialIndex;
use crate::surge::SurgeReading;

pub use command::LocationOutcome;
use command::{Command, LocationBatch, Reply};
pub use dispatcher::{Dispatcher, GoOnline, LocationRejection, TripAction, TripRequest};
pub use records::{Driver, DriverStatus, NearbyDriver, Stats, Trip};

/// Longest the runner sleeps without a command or a deadline, so a stop request is noticed.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// Most commands executed before their events are committed and their replies sent.
const GROUP_MAX: usize = 512;
/// How often the log's retention limits are checked, ms.
const RETENTION_CHECK_MS: u64 = 60_000;

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
    log_dir: Option<std::path::PathBuf>,
    started_at_ms: u64,
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
        let mut dispatcher = Dispatcher::new(config, index, 0);
        let log = match &config.log.data_dir {
            None => None,
            Some(dir) => {
                let mut first = true;
                let (log, report) = EventLog::open(&config.log, dir, |event| {
                    if std::mem::take(&mut first) {
                        // Retention may have deleted the oldest segments.
                        dispatcher
                            .resume_at(event.offset)
                            .map_err(|e| e.to_string())?;
                    }
                    dispatcher.replay(&event).map_err(|e| e.to_string())
                })?;
                if report.events == 0 {
                    // An empty log (possibly an empty segment after retention) goes on from its
                    // next offset; nothing else has touched the fresh dispatcher.
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
                Some(log)
            }
        };
        let log_dir = log.as_ref().map(|l| l.dir().to_path_buf());
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
        let sink = match log {
            None => Sink::Memory(bus.clone()),
            Some(log) => Sink::Log(writer::Writer::start(log, bus.clone())),
        };
        let started_at_ms = clock.now_ms();
        let runner = Runner {
            dispatcher,
            control_rx,
            location_rx,
            clock,
            stop: stop.clone(),
            sink,
            group_max,
            deferred: Vec::with_capacity(group_max),
            next_retention_ms: 0,
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
                log_dir,
                started_at_ms,
            }),
        })
    }

    /// Where the durable event log's segments are, if the engine has one.
    pub fn log_dir(&self) -> Option<&std::path::Path> {
        self.inner.log_dir.as_deref()
    }

    /// When this engine started (after recovering its log), ms since the Unix epoch by its
    /// clock. Counters that are not rebuilt from the log (location updates) count from here.
    pub fn started_at_ms(&self) -> u64 {
        self.inner.started_at_ms
    }

    /// The event stream.
    pub fn bus(&self) -> &Arc<EventBus> {
        &self.inner.bus
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
            Err(TrySendError::Disconnected(_)) => return Err(stopped()),
        }
        rx.await.map_err(|_| stopped())?
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
        match self
            .inner
            .location_tx
            .try_send(LocationBatch { updates, reply })
        {
            Ok(()) => rx.await.map(Some).map_err(|_| stopped()),
            Err(TrySendError::Full(_)) => {
                self.inner
                    .counters
                    .shed_location_batches
                    .fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            Err(TrySendError::Disconnected(_)) => Err(stopped()),
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

    /// See [`Dispatcher::driver`].
    pub async fn driver(&self, driver: ExternalId) -> Result<Driver, Error> {
        self.call(|r| Command::GetDriver(driver, r)).await
    }

    /// See [`Dispatcher::nearby`].
    pub async fn nearby(
        &self,
        center: LatLng,
        radius_m: f64,
        limit: usize,
        class: VehicleClass,
    ) -> Result<Vec<NearbyDriver>, Error> {
        self.call(|reply| Command::Nearby {
            center,
            radius_m,
            limit,
            class,
            reply,
        })
        .await
    }

    /// See [`Dispatcher::surge`].
    pub async fn surge(&self, point: LatLng) -> Result<SurgeReading, Error> {
        self.call(|r| Command::Surge(point, r)).await
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

    /// Makes the dispatcher fire due deadlines now; returns once their events are published.
    /// Used after moving a manual clock.
    pub async fn tick(&self) -> Result<(), Error> {
        self.call(Command::Tick).await
    }
}

fn stopped() -> Error {
    Error::Unavailable("the dispatcher has stopped (server shutting down)".into())
}

/// A reply waiting for its command group to be committed.
pub(crate) type Deferred = Box<dyn FnOnce() + Send>;

/// Where a command group's events and replies go.
enum Sink {
    /// No log: publish and reply at once.
    Memory(Arc<EventBus>),
    /// The log writer thread: append, fsync, publish, reply.
    Log(writer::Writer),
}

/// Work taken from the channels.
enum Work {
    Control(Command),
    Locations(LocationBatch),
}

/// The dispatcher thread's loop.
struct Runner {
    dispatcher: Dispatcher,
    control_rx: Receiver<Command>,
    location_rx: Receiver<LocationBatch>,
    clock: Arc<dyn Clock>,
    stop: Arc<AtomicBool>,
    sink: Sink,
    group_max: usize,
    deferred: Vec<Deferred>,
    next_retention_ms: u64,
}

impl Runner {
    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let now = self.clock.now_ms();
            self.dispatcher.fire_due(now);
            let wait = self.dispatcher.next_deadline_ms().map_or(IDLE_WAIT, |at| {
                Duration::from_millis(at.saturating_sub(now)).min(IDLE_WAIT)
            });
            let mut taken = 0;
            let mut disconnected = false;
            // Wait for the first piece of work only if nothing (e.g. an expiry) needs committing.
            let first = if self.dispatcher.has_events() {
                self.try_take()
            } else {
                self.take(wait)
            };
            match first {
                Ok(Some(work)) => {
                    self.handle(work);
                    taken += 1;
                }
                Ok(None) => {}
                Err(()) => disconnected = true,
            }
            while taken > 0 && taken < self.group_max {
                match self.try_take() {
                    Ok(Some(work)) => {
                        self.handle(work);
                        taken += 1;
                    }
                    Ok(None) => break,
                    Err(()) => {
                        disconnected = true;
                        break;
                    }
                }
            }
            if !self.commit() || disconnected {
                break;
            }
            self.enforce_retention(now);
        }
        self.commit();
        match self.sink {
            // Wait until everything handed over is durable and answered.
            Sink::Log(writer) => writer.finish(),
            Sink::Memory(bus) => bus.close(),
        }
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
    fn commit(&mut self) -> bool {
        let events = self.dispatcher.take_events();
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
        writer.retain_from(self.dispatcher.oldest_needed_offset());
    }

    fn apply_batch(&mut self, batch: LocationBatch) {
        let mut outcome = LocationOutcome::default();
        for (driver, position) in &batch.updates {
            match self.dispatcher.apply_location(driver, position.to_owned()) {
                Ok(()) => outcome.accepted += 1,
                Err(why) => {
                    if why == LocationRejection::DriverOffline {
                        outcome.driver_offline += 1;
                    } else {
                        outcome.unknown_driver += 1;
                    }
                    if outcome.examples.len() < 10 {
                        outcome.examples.push(format!("{driver}: {why:?}"));
                    }
                }
            }
        }
        // Positions are not logged, so the summary need not wait for a commit. The gateway may
        // have hung up; its summary is then moot.
        let _ = batch.reply.send(outcome);
    }

    fn execute(&mut self, cmd: Command) {
        let now = self.clock.now_ms();
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
            Command::UpdateLocation(id, pos, r) => answer!(r, d.update_location(&id, pos)),
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
            Command::GetDriver(id, r) => answer!(r, d.driver(id.as_str())),
            Command::Nearby {
                center,
                radius_m,
                limit,
                class,
                reply,
            } => {
                // Positions and surge demand are never logged, so these answers need not wait
                // for a commit (and skip a hop through the log writer).
                let _ = reply.send(Ok(d.nearby(now, center, radius_m, limit, class)));
            }
            Command::Surge(point, r) => {
                let _ = r.send(Ok(d.surge(now, point)));
            }
            Command::Stats(r) => answer!(r, Ok(d.stats())),
            Command::PendingOffers(gateway, r) => {
                answer!(r, Ok((d.pending_offers(gateway.as_ref()), d.next_offset())))
            }
            Command::Tick(r) => answer!(r, Ok(())),
        }
    }
}
