//! The engine: the dispatcher running on its own thread, and the cloneable handle the edge
//! talks to it through.
//!
//! - [`dispatcher`]: the single-owner state machine (no locks, no clock, no channels).
//! - [`records`]: drivers, trips and the snapshots handed back to callers.
//! - `command`: the bounded-channel messages, one variant per operation.
//!
//! The runner thread loops: fire due deadlines, take one command (control commands before
//! location batches), execute it with `now` from the [`Clock`], publish the resulting events to
//! the [`EventBus`], then reply. Replies go out after publishing, so a caller that gets an
//! answer and then subscribes from the trip's offset misses nothing. Both channels are bounded:
//! when full, calls fail fast with `RESOURCE_EXHAUSTED` and location batches are shed, counted.

mod command;
pub mod dispatcher;
pub mod records;

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
use crate::events::{EventBus, OfferDetails};
use crate::index::SpatialIndex;
use crate::surge::SurgeReading;

pub use command::LocationOutcome;
use command::{Command, LocationBatch, Reply};
pub use dispatcher::{Dispatcher, GoOnline, LocationRejection, TripAction, TripRequest};
pub use records::{Driver, DriverStatus, NearbyDriver, Stats, Trip};

/// Longest the runner sleeps without a command or a deadline, so a stop request is noticed.
const IDLE_WAIT: Duration = Duration::from_millis(50);

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
}

/// A handle to the running engine. Cheap to clone; every clone talks to the same dispatcher.
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Starts the dispatcher thread with an index, a clock and the config's queue bounds.
    pub fn start(config: &Config, index: Box<dyn SpatialIndex>, clock: Arc<dyn Clock>) -> Engine {
        let dispatcher = Dispatcher::new(config, index, 0);
        let bus = Arc::new(EventBus::new(
            config.limits.event_buffer,
            dispatcher.next_offset(),
        ));
        let (control_tx, control_rx) =
            crossbeam_channel::bounded(config.limits.control_queue.max(1));
        let (location_tx, location_rx) =
            crossbeam_channel::bounded(config.limits.location_queue.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let runner = Runner {
            dispatcher,
            control_rx,
            location_rx,
            bus: bus.clone(),
            clock,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || runner.run())
            .expect("spawning the dispatcher thread needs only memory");
        Engine {
            inner: Arc::new(Inner {
                control_tx,
                location_tx,
                bus,
                counters: EngineCounters::default(),
                stop,
                thread: Mutex::new(Some(thread)),
            }),
        }
    }

    /// The event stream.
    pub fn bus(&self) -> &Arc<EventBus> {
        &self.inner.bus
    }

    /// Shed counters.
    pub fn counters(&self) -> &EngineCounters {
        &self.inner.counters
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

/// The dispatcher thread's loop.
struct Runner {
    dispatcher: Dispatcher,
    control_rx: Receiver<Command>,
    location_rx: Receiver<LocationBatch>,
    bus: Arc<EventBus>,
    clock: Arc<dyn Clock>,
    stop: Arc<AtomicBool>,
}

impl Runner {
    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            let now = self.clock.now_ms();
            self.dispatcher.fire_due(now);
            self.publish();
            // Control first: requests and answers never wait behind a location flood.
            match self.control_rx.try_recv() {
                Ok(cmd) => {
                    self.execute(cmd);
                    continue;
                }
                Err(crossbeam_channel::TryRecvError::Disconnected) => break,
                Err(crossbeam_channel::TryRecvError::Empty) => {}
            }
            let wait = self.dispatcher.next_deadline_ms().map_or(IDLE_WAIT, |at| {
                Duration::from_millis(at.saturating_sub(now)).min(IDLE_WAIT)
            });
            select! {
                recv(self.control_rx) -> msg => match msg {
                    Ok(cmd) => self.execute(cmd),
                    Err(_) => break,
                },
                recv(self.location_rx) -> msg => if let Ok(batch) = msg {
                    self.apply_batch(batch);
                },
                default(wait) => {}
            }
        }
        self.publish();
    }

    fn publish(&mut self) {
        if self.dispatcher.has_events() {
            self.bus.publish(self.dispatcher.take_events());
        }
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
        // The gateway may have hung up; its summary is then moot.
        let _ = batch.reply.send(outcome);
    }

    fn execute(&mut self, cmd: Command) {
        let now = self.clock.now_ms();
        let d = &mut self.dispatcher;
        d.fire_due(now);
        // Each arm computes its result, the events are published, then the reply goes out. A
        // caller that stopped waiting (deadline, disconnect) makes `send` fail: nothing to do.
        macro_rules! answer {
            ($reply:expr, $result:expr) => {{
                let result = $result;
                self.publish();
                let _ = $reply.send(result);
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
            Command::GetTrip(trip, r) => answer!(r, d.trip(trip).map(|t| (t, d.next_offset()))),
            Command::GetDriver(id, r) => answer!(r, d.driver(id.as_str())),
            Command::Nearby {
                center,
                radius_m,
                limit,
                class,
                reply,
            } => {
                answer!(reply, Ok(d.nearby(now, center, radius_m, limit, class)))
            }
            Command::Surge(point, r) => answer!(r, Ok(d.surge(now, point))),
            Command::Stats(r) => answer!(r, Ok(d.stats())),
            Command::PendingOffers(gateway, r) => {
                answer!(r, Ok((d.pending_offers(gateway.as_ref()), d.next_offset())))
            }
            Command::Tick(r) => answer!(r, Ok(())),
        }
    }
}
