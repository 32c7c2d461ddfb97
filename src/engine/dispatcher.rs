//! The dispatcher: the single owner of everything that changes (drivers, the spatial index,
//! trips, offers, deadlines, surge counters).
//!
//! It is a plain synchronous state machine. Its only inputs are method calls and the `now_ms`
//! each call is handed; it never reads a clock, spawns, locks or waits. So one thread can own
//! it without locks (no driver can be offered two trips by a race), tests drive it directly
//! with a manual clock, and the same inputs always produce the same state and the same events.
//!
//! It is event-sourced: a command handler validates and decides, then emits events; every state
//! change happens in `apply` (see `apply.rs`) as the event is emitted. Recovery replays the
//! durable log through the same `apply`, so the log reproduces the state that wrote it.
//!
//! Child modules: `apply` (state transitions), `search` (candidates, scoring, surge, nearby),
//! `batch` (the batch policy: pending batch, flush, assignment), `invariants` (the
//! cross-record checks tests run after every step).

mod apply;
mod batch;
mod invariants;
mod search;
pub mod view;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::records::{Driver, DriverStatus, OfferOutcome, PendingOffer, Stats, Trip};
use crate::config::Config;
use crate::domain::{DriverKey, ExternalId, LatLng, OfferId, Rating, TripId, VehicleClass};
use crate::error::Error;
use crate::events::{
    CancelledBy, Event, EventKind, MatchPolicy, OfferCancelReason, OfferDetails, OfferRef,
    TripStatus,
};
use crate::index::{Neighbor, SpatialIndex};
use crate::matching::{EtaModel, HaversineEta, Scorer};
use crate::surge::{SurgeReading, SurgeTracker};
use search::Choice;

/// A new driver's acceptance rate before it has answered anything.
const ACCEPTANCE_PRIOR: f64 = 0.8;
/// Weight of the newest answer in the rolling acceptance rate.
const ACCEPTANCE_ALPHA: f64 = 0.1;
/// How often stale surge cells are swept, ms.
const SURGE_SWEEP_MS: u64 = 60_000;

/// Input of [`Dispatcher::go_online`].
#[derive(Clone, Debug)]
pub struct GoOnline {
    /// The driver.
    pub driver: ExternalId,
    /// Where the driver is.
    pub position: LatLng,
    /// Rating.
    pub rating: Rating,
    /// Vehicle class.
    pub class: VehicleClass,
    /// Gateway that routes the driver's offers.
    pub gateway: Option<ExternalId>,
}

/// Input of [`Dispatcher::request_trip`].
#[derive(Clone, Debug)]
pub struct TripRequest {
    /// Who asks.
    pub rider: ExternalId,
    /// Idempotency key.
    pub request_id: Option<ExternalId>,
    /// Pickup.
    pub pickup: LatLng,
    /// Drop-off.
    pub dropoff: LatLng,
    /// Requested class (`Any` for any).
    pub class: VehicleClass,
}

/// A driver's step through an assigned trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TripAction {
    /// ACCEPTED -> ARRIVED.
    Arrive,
    /// ARRIVED -> IN_PROGRESS.
    Start,
    /// IN_PROGRESS -> COMPLETED; the driver is free at the drop-off.
    Complete,
    /// Any assigned state -> CANCELLED by the driver.
    Cancel,
}

/// Why a location update was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LocationRejection {
    /// Bad coordinates (found at the edge).
    InvalidCoordinates,
    /// Bad driver id (found at the edge).
    InvalidDriverId,
    /// The driver never went online.
    UnknownDriver,
    /// The driver is offline.
    DriverOffline,
    /// Shed under overload (decided by the runner).
    Shed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    OfferDeadline(OfferId),
    Retry(TripId),
    Forget(TripId),
    /// Match the pending batch (batch policy); at most one is armed at a time.
    BatchFlush,
}

/// The single owner of the dispatch state. See the module docs.
pub struct Dispatcher {
    search_radius_m: f64,
    max_candidates: usize,
    offer_timeout_ms: u64,
    dispatch_timeout_ms: u64,
    retry_interval_ms: u64,
    trip_retention_ms: u64,
    ended_offer_memory: usize,
    policy: MatchPolicy,
    batch_window_ms: u64,

    index: Box<dyn SpatialIndex>,
    eta: Box<dyn EtaModel>,
    scorer: Scorer,
    surge: SurgeTracker,

    drivers: Vec<Driver>,
    driver_keys: FxHashMap<ExternalId, DriverKey>,
    trips: FxHashMap<TripId, Trip>,
    offers: FxHashMap<OfferId, PendingOffer>,
    ended_offers: FxHashMap<OfferId, OfferOutcome>,
    ended_order: VecDeque<OfferId>,
    open_by_rider: FxHashMap<ExternalId, TripId>,
    by_request: FxHashMap<(ExternalId, ExternalId), TripId>,
    timers: BinaryHeap<Reverse<(u64, Timer)>>,
    next_sweep_ms: u64,

    events: Vec<Event>,
    next_offset: u64,
    stats: Stats,
    scratch: Vec<Neighbor>,
    choices: Vec<Choice>,
    /// Batch policy: SEARCHING trips waiting for the next flush (scheduling state, like
    /// `timers`; see `batch.rs`).
    batch: Vec<TripId>,
    /// When the armed flush fires, if one is armed.
    batch_flush_at_ms: Option<u64>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("drivers", &self.drivers.len())
            .field("indexed", &self.index.len())
            .field("trips", &self.trips.len())
            .field("pending_offers", &self.offers.len())
            .field("next_offset", &self.next_offset)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// An empty dispatcher whose first event gets `first_offset`.
    pub fn new(config: &Config, index: Box<dyn SpatialIndex>, first_offset: u64) -> Self {
        let d = &config.dispatch;
        Dispatcher {
            search_radius_m: d.search_radius_m,
            max_candidates: d.max_candidates,
            offer_timeout_ms: d.offer_timeout.as_millis() as u64,
            dispatch_timeout_ms: d.dispatch_timeout.as_millis() as u64,
            retry_interval_ms: (d.retry_interval.as_millis() as u64).max(1),
            trip_retention_ms: d.trip_retention.as_millis() as u64,
            ended_offer_memory: d.ended_offer_memory,
            policy: d.policy,
            // Validated at the edge (100 ms..=10 s); never 0 so a flush cannot spin.
            batch_window_ms: (d.batch_window.as_millis() as u64).max(1),
            index,
            eta: Box::new(HaversineEta::new(config.eta.clone())),
            scorer: Scorer::new(config.scoring.clone()),
            surge: SurgeTracker::new(config.surge.clone()),
            drivers: Vec::new(),
            driver_keys: FxHashMap::default(),
            trips: FxHashMap::default(),
            offers: FxHashMap::default(),
            ended_offers: FxHashMap::default(),
            ended_order: VecDeque::new(),
            open_by_rider: FxHashMap::default(),
            by_request: FxHashMap::default(),
            timers: BinaryHeap::new(),
            next_sweep_ms: 0,
            events: Vec::new(),
            next_offset: first_offset,
            stats: Stats::default(),
            scratch: Vec::with_capacity(64),
            choices: Vec::with_capacity(64),
            batch: Vec::new(),
            batch_flush_at_ms: None,
        }
    }

    // ---------------------------------------------------------------------------------------
    // Drivers
    // ---------------------------------------------------------------------------------------

    /// Puts a driver online (or updates the profile of an online driver, which is not an
    /// event: profiles are re-sent by gateways, not part of the dispatch log).
    pub fn go_online(&mut self, now_ms: u64, req: GoOnline) -> Result<Driver, Error> {
        let known = self.driver_keys.get(req.driver.as_str()).copied();
        if let Some(key) = known {
            let d = &mut self.drivers[key.0 as usize];
            if d.status != DriverStatus::Offline {
                d.position = req.position;
                d.rating = req.rating;
                d.class = req.class;
                d.gateway = req.gateway;
                if d.status == DriverStatus::Available {
                    self.index.upsert(key, req.position);
                }
                return Ok(self.drivers[key.0 as usize].clone());
            }
        } else if u32::try_from(self.drivers.len()).is_err() {
            return Err(Error::ResourceExhausted("the driver table is full".into()));
        }
        let id = req.driver.clone();
        self.emit(
            now_ms,
            EventKind::DriverOnline {
                driver: req.driver,
                position: req.position,
                rating: req.rating,
                class: req.class,
                gateway: req.gateway,
            },
        );
        self.driver(id.as_str())
    }

    /// Takes a driver offline; a pending offer is cancelled and its trip cascades.
    pub fn go_offline(&mut self, now_ms: u64, driver: &ExternalId) -> Result<Driver, Error> {
        let key = self.driver_key(driver.as_str())?;
        match self.drivers[key.0 as usize].status {
            DriverStatus::Offline => {}
            DriverStatus::OnTrip(trip) => {
                return Err(Error::FailedPrecondition(format!(
                    "driver {driver} is on trip {trip}; complete or cancel it before going offline"
                )));
            }
            DriverStatus::Offered(offer) => {
                let details = self.offers[&offer].details.clone();
                self.emit(
                    now_ms,
                    EventKind::OfferCancelled(
                        offer_ref(&details),
                        OfferCancelReason::DriverOffline,
                    ),
                );
                self.emit(
                    now_ms,
                    EventKind::DriverOffline {
                        driver: driver.clone(),
                    },
                );
                self.continue_search(details.trip, now_ms);
            }
            DriverStatus::Available => {
                self.emit(
                    now_ms,
                    EventKind::DriverOffline {
                        driver: driver.clone(),
                    },
                );
            }
        }
        Ok(self.drivers[key.0 as usize].clone())
    }

    /// Applies one location report. Not an event: locations are not part of the dispatch log.
    pub fn apply_location(
        &mut self,
        driver: &str,
        position: LatLng,
    ) -> Result<(), LocationRejection> {
        let Some(&key) = self.driver_keys.get(driver) else {
            return Err(LocationRejection::UnknownDriver);
        };
        let d = &mut self.drivers[key.0 as usize];
        match d.status {
            DriverStatus::Offline => return Err(LocationRejection::DriverOffline),
            DriverStatus::Available => self.index.upsert(key, position),
            DriverStatus::Offered(_) | DriverStatus::OnTrip(_) => {}
        }
        d.position = position;
        self.stats.location_updates += 1;
        Ok(())
    }

    /// [`apply_location`](Self::apply_location) with errors a person can read.
    pub fn update_location(&mut self, driver: &ExternalId, position: LatLng) -> Result<(), Error> {
        self.apply_location(driver.as_str(), position)
            .map_err(|why| match why {
                LocationRejection::DriverOffline => Error::FailedPrecondition(format!(
                    "driver {driver} is offline; call GoOnline before reporting locations"
                )),
                _ => Error::NotFound(format!(
                    "unknown driver {driver}; call GoOnline before reporting locations"
                )),
            })
    }

    /// One driver's record.
    pub fn driver(&self, driver: &str) -> Result<Driver, Error> {
        let key = self.driver_key(driver)?;
        Ok(self.drivers[key.0 as usize].clone())
    }

    // ---------------------------------------------------------------------------------------
    // Trips
    // ---------------------------------------------------------------------------------------

    /// Creates a trip and offers it to the best candidate (greedy policy) or adds it to the
    /// pending batch (batch policy), or ends it at once as NO_DRIVERS when nobody is in range.
    /// Returns the trip and whether it was a deduplicated retry.
    pub fn request_trip(&mut self, now_ms: u64, req: TripRequest) -> Result<(Trip, bool), Error> {
        if let Some(request_id) = &req.request_id {
            let key = (req.rider.clone(), request_id.clone());
            if let Some(trip) = self.by_request.get(&key).and_then(|id| self.trips.get(id)) {
                if trip.pickup != req.pickup
                    || trip.dropoff != req.dropoff
                    || trip.class != req.class
                {
                    return Err(Error::FailedPrecondition(format!(
                        "request_id {request_id} was already used by rider {} for trip {} with a \
                         different pickup, drop-off or vehicle class; use a new request_id for a \
                         new trip",
                        req.rider, trip.id
                    )));
                }
                return Ok((trip.clone(), true));
            }
        }
        if let Some(open) = self.open_by_rider.get(&req.rider) {
            let status = self.trips.get(open).map(|t| t.status);
            return Err(Error::FailedPrecondition(format!(
                "rider {} already has open trip {open} ({status:?}); cancel it or wait for it to end",
                req.rider
            )));
        }

        // A trip's id is the offset of its TripRequested event: unique forever, with no counter
        // that recovery would have to rebuild.
        let id = TripId(self.next_offset);
        self.surge.record_request(req.pickup, now_ms);
        let surge_multiplier = self.surge_reading(req.pickup, now_ms).multiplier;
        let (best, candidates) = self.find_best(req.pickup, req.class, &[], now_ms);
        self.emit(
            now_ms,
            EventKind::TripRequested {
                trip: id,
                rider: req.rider,
                request_id: req.request_id,
                pickup: req.pickup,
                dropoff: req.dropoff,
                class: req.class,
                surge_multiplier,
                candidates,
                policy: self.policy,
            },
        );
        match (best, self.policy) {
            (Some(choice), MatchPolicy::Greedy) => self.make_offer(id, choice, now_ms),
            (Some(_), MatchPolicy::Batch) => self.join_batch(id, now_ms),
            (None, _) => self.end_no_drivers(id, now_ms),
        }
        Ok((self.trips[&id].clone(), false))
    }

    /// A driver answers an offer.
    pub fn respond(
        &mut self,
        now_ms: u64,
        offer: OfferId,
        driver: &ExternalId,
        accept: bool,
    ) -> Result<Trip, Error> {
        let Some(pending) = self.offers.get(&offer) else {
            return Err(self.offer_gone(offer));
        };
        if pending.details.driver != *driver {
            return Err(Error::PermissionDenied(format!(
                "offer {offer} was not made to driver {driver}; only its driver may answer it"
            )));
        }
        let details = pending.details.clone();
        let trip_id = details.trip;
        if accept {
            self.emit(now_ms, EventKind::OfferAccepted(offer_ref(&details)));
            let policy = self
                .trips
                .get(&trip_id)
                .map_or(MatchPolicy::Greedy, |t| t.policy);
            self.emit(
                now_ms,
                EventKind::TripAssigned {
                    trip: trip_id,
                    driver: driver.clone(),
                    pickup_eta_s: details.pickup_eta_s,
                    policy,
                },
            );
        } else {
            self.emit(now_ms, EventKind::OfferDeclined(offer_ref(&details)));
            self.continue_search(trip_id, now_ms);
        }
        self.trip(trip_id)
    }

    /// The assigned driver moves the trip along (arrive, start, complete) or cancels it.
    pub fn trip_action(
        &mut self,
        now_ms: u64,
        trip_id: TripId,
        driver: &ExternalId,
        action: TripAction,
    ) -> Result<Trip, Error> {
        let trip = self.trip_ref(trip_id)?;
        let key = match &trip.driver {
            Some((key, id)) if id == driver => *key,
            _ => {
                return Err(Error::PermissionDenied(format!(
                    "trip {trip_id} is not assigned to driver {driver}"
                )));
            }
        };
        let status = trip.status;
        let allowed = match action {
            TripAction::Arrive => status == TripStatus::Accepted,
            TripAction::Start => status == TripStatus::Arrived,
            TripAction::Complete => status == TripStatus::InProgress,
            TripAction::Cancel => matches!(
                status,
                TripStatus::Accepted | TripStatus::Arrived | TripStatus::InProgress
            ),
        };
        if !allowed {
            let hint = match status {
                TripStatus::Offered => "; accept the offer first",
                s if s.is_terminal() => "; the trip has ended",
                _ => "",
            };
            return Err(Error::FailedPrecondition(format!(
                "cannot {action:?} trip {trip_id}: it is {status:?}{hint}"
            )));
        }
        let driver = driver.clone();
        let kind = match action {
            TripAction::Arrive => EventKind::DriverArrived {
                trip: trip_id,
                driver,
            },
            TripAction::Start => EventKind::TripStarted {
                trip: trip_id,
                driver,
            },
            TripAction::Complete => EventKind::TripCompleted {
                trip: trip_id,
                driver,
            },
            TripAction::Cancel => EventKind::TripCancelled {
                trip: trip_id,
                driver: Some(driver),
                gateway: self.drivers[key.0 as usize].gateway.clone(),
                by: CancelledBy::Driver,
                previous: status,
            },
        };
        self.emit(now_ms, kind);
        self.trip(trip_id)
    }

    /// The rider cancels a non-terminal trip; any offered or assigned driver is released.
    pub fn cancel_trip(
        &mut self,
        now_ms: u64,
        trip_id: TripId,
        rider: &ExternalId,
    ) -> Result<Trip, Error> {
        let trip = self.trip_ref(trip_id)?;
        if trip.rider != *rider {
            return Err(Error::PermissionDenied(format!(
                "trip {trip_id} was not requested by rider {rider}"
            )));
        }
        let previous = trip.status;
        if previous.is_terminal() {
            return Err(Error::FailedPrecondition(format!(
                "trip {trip_id} has already ended ({previous:?})"
            )));
        }
        let (offer, assigned) = (trip.offer, trip.driver.clone());
        let mut released = (None, None);
        if let Some(offer) = offer {
            let details = self.offers[&offer].details.clone();
            self.emit(
                now_ms,
                EventKind::OfferCancelled(offer_ref(&details), OfferCancelReason::TripCancelled),
            );
        } else if let Some((key, id)) = assigned {
            released = (Some(id), self.drivers[key.0 as usize].gateway.clone());
        }
        self.emit(
            now_ms,
            EventKind::TripCancelled {
                trip: trip_id,
                driver: released.0,
                gateway: released.1,
                by: CancelledBy::Rider,
                previous,
            },
        );
        self.trip(trip_id)
    }

    /// One trip's record (open, or ended within the retention).
    pub fn trip(&self, trip_id: TripId) -> Result<Trip, Error> {
        self.trip_ref(trip_id).cloned()
    }

    // ---------------------------------------------------------------------------------------
    // Queries
    // ---------------------------------------------------------------------------------------

    /// The surge at a point.
    pub fn surge(&mut self, now_ms: u64, point: LatLng) -> SurgeReading {
        self.surge_reading(point, now_ms)
    }

    /// Counters describing the engine now.
    pub fn stats(&self) -> Stats {
        Stats {
            open_trips: self.open_by_rider.len() as u64,
            pending_offers: self.offers.len() as u64,
            next_event_offset: self.next_offset,
            ..self.stats.clone()
        }
    }

    /// Pending offers routed to `gateway` (all pending offers for `None`), oldest first.
    pub fn pending_offers(&self, gateway: Option<&ExternalId>) -> Vec<Arc<OfferDetails>> {
        let mut offers: Vec<_> = self
            .offers
            .values()
            .filter(|p| gateway.is_none() || p.details.gateway.as_ref() == gateway)
            .map(|p| p.details.clone())
            .collect();
        offers.sort_by_key(|o| o.offer);
        offers
    }

    // ---------------------------------------------------------------------------------------
    // Time and events
    // ---------------------------------------------------------------------------------------

    /// Fires every deadline at or before `now_ms`: offer expiries (which cascade), search
    /// retries, batch flushes (batch policy), and forgetting ended trips past their retention.
    pub fn fire_due(&mut self, now_ms: u64) {
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if at > now_ms {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::OfferDeadline(offer) => {
                    if let Some(p) = self.offers.get(&offer) {
                        let details = p.details.clone();
                        self.emit(now_ms, EventKind::OfferExpired(offer_ref(&details)));
                        self.continue_search(details.trip, now_ms);
                    }
                }
                Timer::Retry(trip) => {
                    let searching = self
                        .trips
                        .get(&trip)
                        .is_some_and(|t| t.status == TripStatus::Searching);
                    if searching {
                        self.continue_search(trip, now_ms);
                    }
                }
                Timer::Forget(trip) => self.forget_trip(trip),
                Timer::BatchFlush => self.flush_batch(now_ms),
            }
        }
        if now_ms >= self.next_sweep_ms {
            self.surge.sweep(now_ms);
            self.next_sweep_ms = now_ms.saturating_add(SURGE_SWEEP_MS);
        }
    }

    /// The earliest pending deadline, ms since epoch.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the events produced since the last call, in offset order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Whether events are waiting to be taken.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The offset the next event will get.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The lowest event offset recovery needs to rebuild today's state: the first event of
    /// every trip still in memory and the online event of every online driver. Log retention
    /// never deletes from here on.
    pub fn oldest_needed_offset(&self) -> u64 {
        let trips = self.trips.keys().map(|t| t.0);
        let drivers = self
            .drivers
            .iter()
            .filter(|d| d.status != DriverStatus::Offline)
            .map(|d| d.online_offset);
        trips.chain(drivers).min().unwrap_or(self.next_offset)
    }

    // ---------------------------------------------------------------------------------------
    // Internals
    // ---------------------------------------------------------------------------------------

    fn driver_key(&self, driver: &str) -> Result<DriverKey, Error> {
        self.driver_keys
            .get(driver)
            .copied()
            .ok_or_else(|| Error::NotFound(format!("unknown driver {driver}; call GoOnline first")))
    }

    fn trip_ref(&self, trip_id: TripId) -> Result<&Trip, Error> {
        self.trips.get(&trip_id).ok_or_else(|| {
            Error::NotFound(format!(
                "unknown trip {trip_id} (never issued, or ended and expired from memory)"
            ))
        })
    }

    /// Records an event: applies its state change, then queues it for publishing.
    fn emit(&mut self, now_ms: u64, kind: EventKind) {
        let event = Event {
            offset: self.next_offset,
            at_ms: now_ms,
            kind,
        };
        self.next_offset += 1;
        self.apply(&event);
        self.events.push(event);
    }

    fn make_offer(&mut self, trip_id: TripId, choice: Choice, now_ms: u64) {
        let Some(trip) = self.trips.get(&trip_id) else {
            return;
        };
        let d = &self.drivers[choice.key.0 as usize];
        let details = Arc::new(OfferDetails {
            // Like trips, an offer's id is the offset of its OfferSent event.
            offer: OfferId(self.next_offset),
            trip: trip_id,
            driver: d.id.clone(),
            gateway: d.gateway.clone(),
            pickup: trip.pickup,
            dropoff: trip.dropoff,
            pickup_eta_s: choice.eta_s,
            pickup_distance_m: choice.distance_m,
            expires_at_ms: now_ms.saturating_add(self.offer_timeout_ms),
            score: choice.score,
            attempt: trip.offers_made + 1,
            surge_multiplier: trip.surge_multiplier,
        });
        self.emit(now_ms, EventKind::OfferSent(details));
    }

    fn offer_gone(&self, offer: OfferId) -> Error {
        match self.ended_offers.get(&offer) {
            Some(outcome) => Error::FailedPrecondition(format!(
                "offer {offer} has already ended ({outcome:?}); an offer can be answered once, \
                 within its window"
            )),
            None => Error::NotFound(format!(
                "unknown offer {offer} (never issued, or ended long ago)"
            )),
        }
    }

    /// After an offer failed: offer the next candidate (greedy) or join the next batch (batch),
    /// or wait and retry, or give up at the dispatch deadline.
    fn continue_search(&mut self, trip_id: TripId, now_ms: u64) {
        let Some(trip) = self.trips.get(&trip_id) else {
            return;
        };
        let deadline = trip.dispatch_deadline_ms;
        if now_ms >= deadline {
            self.end_no_drivers(trip_id, now_ms);
            return;
        }
        if trip.policy == MatchPolicy::Batch {
            self.join_batch(trip_id, now_ms);
            return;
        }
        let (pickup, class) = (trip.pickup, trip.class);
        let tried = self
            .trips
            .get_mut(&trip_id)
            .map(|t| std::mem::take(&mut t.tried))
            .unwrap_or_default();
        let (best, _) = self.find_best(pickup, class, &tried, now_ms);
        if let Some(t) = self.trips.get_mut(&trip_id) {
            t.tried = tried;
        }
        match best {
            Some(choice) => self.make_offer(trip_id, choice, now_ms),
            None => {
                let at = now_ms.saturating_add(self.retry_interval_ms).min(deadline);
                self.timers.push(Reverse((at, Timer::Retry(trip_id))));
            }
        }
    }

    fn end_no_drivers(&mut self, trip_id: TripId, now_ms: u64) {
        let Some(trip) = self.trips.get(&trip_id) else {
            return;
        };
        let (surge_multiplier, offers_made) = (trip.surge_multiplier, trip.offers_made);
        self.emit(
            now_ms,
            EventKind::NoDrivers {
                trip: trip_id,
                surge_multiplier,
                offers_made,
            },
        );
    }

    fn forget_trip(&mut self, trip_id: TripId) {
        let Some(trip) = self.trips.get(&trip_id) else {
            return;
        };
        if !trip.status.is_terminal() {
            return;
        }
        if let Some(request_id) = &trip.request_id {
            let key = (trip.rider.clone(), request_id.clone());
            if self.by_request.get(&key) == Some(&trip_id) {
                self.by_request.remove(&key);
            }
        }
        self.trips.remove(&trip_id);
    }
}

fn offer_ref(details: &OfferDetails) -> OfferRef {
    OfferRef {
        offer: details.offer,
        trip: details.trip,
        driver: details.driver.clone(),
        gateway: details.gateway.clone(),
    }
}
