//! The dispatcher: the single owner of everything that changes (drivers, the spatial index,
//! trips, offers, deadlines, surge counters).
//!
//! It is a plain synchronous state machine. Its only inputs are method calls and the `now_ms`
//! each call is handed; it never reads a clock, spawns, locks or waits. So one thread can own
//! it without locks (no driver can be offered two trips by a race), tests drive it directly
//! with a manual clock, and the same inputs always produce the same state and the same events.
//! Every state change appends an [`Event`] with the next offset; the runner publishes them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::records::{
    Driver, DriverStatus, NearbyDriver, OfferOutcome, PendingOffer, Stats, Trip, day_of,
};
use crate::config::Config;
use crate::domain::{DriverKey, ExternalId, LatLng, OfferId, Rating, TripId, VehicleClass};
use crate::error::Error;
use crate::events::{
    CancelledBy, Event, EventKind, MatchPolicy, OfferCancelReason, OfferDetails, OfferRef,
    TripStatus,
};
use crate::index::{Neighbor, SpatialIndex};
use crate::matching::{CandidateFacts, EtaModel, HaversineEta, ScoreBreakdown, Scorer};
use crate::surge::{SurgeReading, SurgeTracker};

/// A new driver's acceptance rate before it has answered anything.
const ACCEPTANCE_PRIOR: f64 = 0.8;
/// Weight of the newest answer in the rolling acceptance rate.
const ACCEPTANCE_ALPHA: f64 = 0.1;
/// Supply counted for a GetSurge query stops here.
const SURGE_SUPPLY_CAP: usize = 10_000;
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
}

/// The best candidate of a search.
#[derive(Clone, Copy, Debug)]
struct Choice {
    key: DriverKey,
    distance_m: f64,
    eta_s: f64,
    score: ScoreBreakdown,
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

    index: Box<dyn SpatialIndex>,
    eta: Box<dyn EtaModel>,
    scorer: Scorer,
    surge: SurgeTracker,

    drivers: Vec<Driver>,
    driver_keys: FxHashMap<ExternalId, DriverKey>,
    trips: FxHashMap<TripId, Trip>,
    next_trip: u64,
    offers: FxHashMap<OfferId, PendingOffer>,
    next_offer: u64,
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
            index,
            eta: Box::new(HaversineEta::new(config.eta.clone())),
            scorer: Scorer::new(config.scoring.clone()),
            surge: SurgeTracker::new(config.surge.clone()),
            drivers: Vec::new(),
            driver_keys: FxHashMap::default(),
            trips: FxHashMap::default(),
            next_trip: 1,
            offers: FxHashMap::default(),
            next_offer: 1,
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
        }
    }

    // ---------------------------------------------------------------------------------------
    // Drivers
    // ---------------------------------------------------------------------------------------

    /// Puts a driver online (or updates the profile of an online driver).
    pub fn go_online(&mut self, now_ms: u64, req: GoOnline) -> Result<Driver, Error> {
        let key = match self.driver_keys.get(req.driver.as_str()) {
            Some(&key) => key,
            None => {
                let key = u32::try_from(self.drivers.len()).map_err(|_| {
                    Error::ResourceExhausted("the driver table is full".to_string())
                })?;
                let key = DriverKey(key);
                self.drivers.push(Driver {
                    id: req.driver.clone(),
                    key,
                    status: DriverStatus::Offline,
                    position: req.position,
                    rating: req.rating,
                    class: req.class,
                    gateway: None,
                    acceptance_rate: ACCEPTANCE_PRIOR,
                    trips_today: 0,
                    trips_day: day_of(now_ms),
                    free_since_ms: now_ms,
                });
                self.driver_keys.insert(req.driver.clone(), key);
                self.stats.drivers_offline += 1;
                key
            }
        };
        let d = &mut self.drivers[key.0 as usize];
        d.position = req.position;
        d.rating = req.rating;
        d.class = req.class;
        d.gateway = req.gateway.clone();
        match d.status {
            DriverStatus::Offline => {
                d.free_since_ms = now_ms;
                self.set_status(key, DriverStatus::Available);
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
            }
            DriverStatus::Available => self.index.upsert(key, req.position),
            DriverStatus::Offered(_) | DriverStatus::OnTrip(_) => {}
        }
        Ok(self.drivers[key.0 as usize].clone())
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
                let pending = self.end_offer(offer, OfferOutcome::Cancelled);
                let trip = pending.details.trip;
                self.set_status(key, DriverStatus::Offline);
                self.release_offered_trip(trip);
                self.emit(
                    now_ms,
                    EventKind::OfferCancelled(
                        offer_ref(&pending.details),
                        OfferCancelReason::DriverOffline,
                    ),
                );
                self.emit(
                    now_ms,
                    EventKind::DriverOffline {
                        driver: driver.clone(),
                    },
                );
                self.continue_search(trip, now_ms);
            }
            DriverStatus::Available => {
                self.set_status(key, DriverStatus::Offline);
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

    /// Creates a trip and offers it to the best candidate, or ends it at once as NO_DRIVERS
    /// when nobody is in range. Returns the trip and whether it was a deduplicated retry.
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

        let id = TripId(self.next_trip);
        self.next_trip += 1;
        self.surge.record_request(req.pickup, now_ms);
        let surge_multiplier = self.surge_reading(req.pickup, now_ms, None).multiplier;
        self.trips.insert(
            id,
            Trip {
                id,
                rider: req.rider.clone(),
                request_id: req.request_id.clone(),
                status: TripStatus::Searching,
                pickup: req.pickup,
                dropoff: req.dropoff,
                class: req.class,
                driver: None,
                offer: None,
                tried: Vec::new(),
                pickup_eta_s: 0.0,
                surge_multiplier,
                offers_made: 0,
                requested_at_ms: now_ms,
                assigned_at_ms: 0,
                ended_at_ms: 0,
                dispatch_deadline_ms: now_ms.saturating_add(self.dispatch_timeout_ms),
                cancelled_by: None,
                policy: MatchPolicy::Greedy,
                last_event_offset: 0,
            },
        );
        self.open_by_rider.insert(req.rider.clone(), id);
        if let Some(request_id) = &req.request_id {
            self.by_request
                .insert((req.rider.clone(), request_id.clone()), id);
        }
        self.stats.trips_requested += 1;

        let (best, candidates) = self.find_best(id, now_ms);
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
                policy: MatchPolicy::Greedy,
            },
        );
        match best {
            Some(choice) => self.make_offer(id, choice, now_ms),
            None => self.end_no_drivers(id, now_ms),
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
        let outcome = if accept {
            OfferOutcome::Accepted
        } else {
            OfferOutcome::Declined
        };
        let pending = self.end_offer(offer, outcome);
        let trip_id = pending.details.trip;
        let oref = offer_ref(&pending.details);
        if accept {
            self.set_status(pending.driver, DriverStatus::OnTrip(trip_id));
            let trip = self.trip_mut(trip_id);
            trip.status = TripStatus::Accepted;
            trip.offer = None;
            trip.assigned_at_ms = now_ms;
            let (eta, policy) = (trip.pickup_eta_s, trip.policy);
            self.emit(now_ms, EventKind::OfferAccepted(oref));
            self.emit(
                now_ms,
                EventKind::TripAssigned {
                    trip: trip_id,
                    driver: driver.clone(),
                    pickup_eta_s: eta,
                    policy,
                },
            );
        } else {
            self.set_status(pending.driver, DriverStatus::Available);
            self.release_offered_trip(trip_id);
            self.emit(now_ms, EventKind::OfferDeclined(oref));
            self.continue_search(trip_id, now_ms);
        }
        Ok(self.trips[&trip_id].clone())
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
                TripStatus::Offered => "; accept the offer first".to_string(),
                s if s.is_terminal() => "; the trip has ended".to_string(),
                _ => String::new(),
            };
            return Err(Error::FailedPrecondition(format!(
                "cannot {action:?} trip {trip_id}: it is {status:?}{hint}"
            )));
        }
        let driver = driver.clone();
        match action {
            TripAction::Arrive => {
                self.trip_mut(trip_id).status = TripStatus::Arrived;
                self.emit(
                    now_ms,
                    EventKind::DriverArrived {
                        trip: trip_id,
                        driver,
                    },
                );
            }
            TripAction::Start => {
                self.trip_mut(trip_id).status = TripStatus::InProgress;
                self.emit(
                    now_ms,
                    EventKind::TripStarted {
                        trip: trip_id,
                        driver,
                    },
                );
            }
            TripAction::Complete => {
                let dropoff = self.trip_mut(trip_id).dropoff;
                let d = &mut self.drivers[key.0 as usize];
                d.position = dropoff;
                d.trips_today = d.trips_on(now_ms) + 1;
                d.trips_day = day_of(now_ms);
                d.free_since_ms = now_ms;
                self.set_status(key, DriverStatus::Available);
                self.finish_trip(trip_id, TripStatus::Completed, now_ms);
                self.emit(
                    now_ms,
                    EventKind::TripCompleted {
                        trip: trip_id,
                        driver,
                    },
                );
            }
            TripAction::Cancel => {
                self.drivers[key.0 as usize].free_since_ms = now_ms;
                self.set_status(key, DriverStatus::Available);
                let gateway = self.drivers[key.0 as usize].gateway.clone();
                self.trip_mut(trip_id).cancelled_by = Some(CancelledBy::Driver);
                self.finish_trip(trip_id, TripStatus::Cancelled, now_ms);
                self.emit(
                    now_ms,
                    EventKind::TripCancelled {
                        trip: trip_id,
                        driver: Some(driver),
                        gateway,
                        by: CancelledBy::Driver,
                        previous: status,
                    },
                );
            }
        }
        Ok(self.trips[&trip_id].clone())
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
        let mut released = None;
        if let Some(offer) = offer {
            let pending = self.end_offer(offer, OfferOutcome::Cancelled);
            self.set_status(pending.driver, DriverStatus::Available);
            self.emit(
                now_ms,
                EventKind::OfferCancelled(
                    offer_ref(&pending.details),
                    OfferCancelReason::TripCancelled,
                ),
            );
        } else if let Some((key, id)) = assigned {
            self.drivers[key.0 as usize].free_since_ms = now_ms;
            self.set_status(key, DriverStatus::Available);
            released = Some((id, self.drivers[key.0 as usize].gateway.clone()));
        }
        let trip = self.trip_mut(trip_id);
        trip.cancelled_by = Some(CancelledBy::Rider);
        if offer.is_some() {
            trip.driver = None;
            trip.offer = None;
        }
        self.finish_trip(trip_id, TripStatus::Cancelled, now_ms);
        let (driver, gateway) = released.map_or((None, None), |(d, g)| (Some(d), g));
        self.emit(
            now_ms,
            EventKind::TripCancelled {
                trip: trip_id,
                driver,
                gateway,
                by: CancelledBy::Rider,
                previous,
            },
        );
        Ok(self.trips[&trip_id].clone())
    }

    /// One trip's record (open, or ended within the retention).
    pub fn trip(&self, trip_id: TripId) -> Result<Trip, Error> {
        self.trip_ref(trip_id).cloned()
    }

    // ---------------------------------------------------------------------------------------
    // Queries
    // ---------------------------------------------------------------------------------------

    /// Available drivers within `radius_m` of `center` serving `class`, nearest first.
    pub fn nearby(
        &mut self,
        now_ms: u64,
        center: LatLng,
        radius_m: f64,
        limit: usize,
        class: VehicleClass,
    ) -> Vec<NearbyDriver> {
        let drivers = &self.drivers;
        self.index.nearest(
            center,
            radius_m,
            limit,
            &mut |k| drivers[k.0 as usize].class.serves(class),
            &mut self.scratch,
        );
        self.scratch
            .iter()
            .map(|n| {
                let d = &self.drivers[n.key.0 as usize];
                NearbyDriver {
                    id: d.id.clone(),
                    position: n.position,
                    distance_m: n.distance_m,
                    eta_s: self.eta.eta_s(n.position, center, n.distance_m, now_ms),
                    rating: d.rating,
                    class: d.class,
                }
            })
            .collect()
    }

    /// The surge at a point, counting supply fully (up to 10,000 drivers).
    pub fn surge(&mut self, now_ms: u64, point: LatLng) -> SurgeReading {
        self.surge_reading(point, now_ms, Some(SURGE_SUPPLY_CAP))
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
    /// retries, and forgetting ended trips past their retention.
    pub fn fire_due(&mut self, now_ms: u64) {
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if at > now_ms {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::OfferDeadline(offer) => {
                    if self.offers.contains_key(&offer) {
                        self.expire_offer(offer, now_ms);
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

    /// Checks the cross-record invariants; returns what is broken. Used by tests after every
    /// step: a driver holds at most one offer and one trip, a trip at most one offer and one
    /// driver, AVAILABLE drivers and only they are in the index, counters match the records.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut by_state = [0u64; 4];
        for d in &self.drivers {
            let in_index = self.index.position(d.key).is_some();
            match d.status {
                DriverStatus::Offline => by_state[0] += 1,
                DriverStatus::Available => by_state[1] += 1,
                DriverStatus::Offered(o) => {
                    by_state[2] += 1;
                    let p = self
                        .offers
                        .get(&o)
                        .ok_or(format!("{} holds ended offer {o}", d.id))?;
                    if p.driver != d.key {
                        return Err(format!("{} holds offer {o} made to another driver", d.id));
                    }
                }
                DriverStatus::OnTrip(t) => {
                    by_state[3] += 1;
                    let trip = self
                        .trips
                        .get(&t)
                        .ok_or(format!("{} on unknown trip {t}", d.id))?;
                    let assigned = matches!(
                        trip.status,
                        TripStatus::Accepted | TripStatus::Arrived | TripStatus::InProgress
                    );
                    if !assigned || trip.driver.as_ref().map(|x| x.0) != Some(d.key) {
                        return Err(format!(
                            "{} on trip {t} which is {:?} with {:?}",
                            d.id, trip.status, trip.driver
                        ));
                    }
                }
            }
            if in_index != (d.status == DriverStatus::Available) {
                return Err(format!(
                    "{} is {:?} but in_index={in_index}",
                    d.id, d.status
                ));
            }
        }
        let s = &self.stats;
        if by_state
            != [
                s.drivers_offline,
                s.drivers_available,
                s.drivers_offered,
                s.drivers_on_trip,
            ]
        {
            return Err(format!(
                "driver counters {s:?} disagree with records {by_state:?}"
            ));
        }
        if self.index.len() as u64 != s.drivers_available {
            return Err("index size differs from available drivers".into());
        }
        for (id, p) in &self.offers {
            let trip = self
                .trips
                .get(&p.details.trip)
                .ok_or(format!("offer {id} for unknown trip"))?;
            if trip.status != TripStatus::Offered || trip.offer != Some(*id) {
                return Err(format!(
                    "offer {id} pending but trip {} is {:?} with offer {:?}",
                    trip.id, trip.status, trip.offer
                ));
            }
            if self.drivers[p.driver.0 as usize].status != DriverStatus::Offered(*id) {
                return Err(format!(
                    "offer {id} pending but its driver is not holding it"
                ));
            }
        }
        let mut open = 0;
        for trip in self.trips.values() {
            if !trip.status.is_terminal() {
                open += 1;
                if self.open_by_rider.get(&trip.rider) != Some(&trip.id) {
                    return Err(format!(
                        "open trip {} not registered for rider {}",
                        trip.id, trip.rider
                    ));
                }
            }
            if trip.status == TripStatus::Offered
                && trip.offer.is_none_or(|o| !self.offers.contains_key(&o))
            {
                return Err(format!("trip {} OFFERED without a pending offer", trip.id));
            }
            if let (Some((key, _)), true) = (&trip.driver, !trip.status.is_terminal()) {
                let expected = match trip.status {
                    TripStatus::Offered => trip.offer.map(DriverStatus::Offered),
                    TripStatus::Searching => None,
                    _ => Some(DriverStatus::OnTrip(trip.id)),
                };
                if expected != Some(self.drivers[key.0 as usize].status) {
                    return Err(format!(
                        "trip {} ({:?}) and its driver disagree",
                        trip.id, trip.status
                    ));
                }
            }
        }
        if open != self.open_by_rider.len() {
            return Err(format!(
                "{open} open trips but {} riders with one",
                self.open_by_rider.len()
            ));
        }
        Ok(())
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

    fn trip_mut(&mut self, trip_id: TripId) -> &mut Trip {
        // Internal callers pass ids of trips they just looked up or that a live offer or driver
        // references; trips leave the map only through `forget_trip`, once terminal and
        // referenced by nothing. A miss is a dispatcher bug, so it is not a recoverable error.
        self.trips
            .get_mut(&trip_id)
            .expect("dispatcher invariant: referenced trips exist")
    }

    /// Keeps driver counters and index membership in step with the driver's status.
    fn set_status(&mut self, key: DriverKey, status: DriverStatus) {
        let d = &mut self.drivers[key.0 as usize];
        let old = d.status;
        d.status = status;
        let position = d.position;
        *self.state_counter(old) -= 1;
        *self.state_counter(status) += 1;
        match (
            old == DriverStatus::Available,
            status == DriverStatus::Available,
        ) {
            (true, false) => {
                self.index.remove(key);
            }
            (_, true) => self.index.upsert(key, position),
            (false, false) => {}
        }
    }

    fn state_counter(&mut self, status: DriverStatus) -> &mut u64 {
        match status {
            DriverStatus::Offline => &mut self.stats.drivers_offline,
            DriverStatus::Available => &mut self.stats.drivers_available,
            DriverStatus::Offered(_) => &mut self.stats.drivers_offered,
            DriverStatus::OnTrip(_) => &mut self.stats.drivers_on_trip,
        }
    }

    fn emit(&mut self, now_ms: u64, kind: EventKind) {
        let offset = self.next_offset;
        self.next_offset += 1;
        if let Some(trip) = kind.trip().and_then(|t| self.trips.get_mut(&t)) {
            trip.last_event_offset = offset;
        }
        self.events.push(Event {
            offset,
            at_ms: now_ms,
            kind,
        });
    }

    fn surge_reading(&mut self, point: LatLng, now_ms: u64, cap: Option<usize>) -> SurgeReading {
        let (_, demand) = self.surge.demand(point, now_ms);
        // Past `demand` drivers the multiplier is 1 whatever the count, so a trip request stops
        // counting there; a GetSurge query counts up to its cap to report supply.
        let cap = cap.unwrap_or(demand as usize + 1);
        let supply = if cap == 0 {
            0
        } else {
            self.index.nearest(
                point,
                self.surge.supply_radius_m(),
                cap,
                &mut |_| true,
                &mut self.scratch,
            );
            self.scratch.len() as u64
        };
        self.surge.reading(point, supply, now_ms)
    }

    /// The best untried candidate for a trip, and how many candidates were in range.
    fn find_best(&mut self, trip_id: TripId, now_ms: u64) -> (Option<Choice>, u32) {
        let Some(trip) = self.trips.get(&trip_id) else {
            return (None, 0);
        };
        let (pickup, class) = (trip.pickup, trip.class);
        let drivers = &self.drivers;
        let tried = &trip.tried;
        self.index.nearest(
            pickup,
            self.search_radius_m,
            self.max_candidates,
            &mut |k| drivers[k.0 as usize].class.serves(class) && !tried.contains(&k),
            &mut self.scratch,
        );
        let mut best: Option<Choice> = None;
        for n in &self.scratch {
            let d = &self.drivers[n.key.0 as usize];
            let eta_s = self.eta.eta_s(n.position, pickup, n.distance_m, now_ms);
            let score = self.scorer.score(&CandidateFacts {
                eta_s,
                rating: d.rating.get(),
                acceptance_rate: d.acceptance_rate,
                idle_s: now_ms.saturating_sub(d.free_since_ms) as f64 / 1000.0,
                trips_today: d.trips_on(now_ms),
            });
            if best.is_none_or(|b| score.total > b.score.total) {
                best = Some(Choice {
                    key: n.key,
                    distance_m: n.distance_m,
                    eta_s,
                    score,
                });
            }
        }
        (best, self.scratch.len() as u32)
    }

    fn make_offer(&mut self, trip_id: TripId, choice: Choice, now_ms: u64) {
        let offer = OfferId(self.next_offer);
        self.next_offer += 1;
        let expires_at_ms = now_ms.saturating_add(self.offer_timeout_ms);
        let d = &self.drivers[choice.key.0 as usize];
        let (driver, gateway) = (d.id.clone(), d.gateway.clone());
        let trip = self.trip_mut(trip_id);
        trip.offers_made += 1;
        trip.tried.push(choice.key);
        trip.status = TripStatus::Offered;
        trip.offer = Some(offer);
        trip.driver = Some((choice.key, driver.clone()));
        trip.pickup_eta_s = choice.eta_s;
        let details = Arc::new(OfferDetails {
            offer,
            trip: trip_id,
            driver,
            gateway,
            pickup: trip.pickup,
            dropoff: trip.dropoff,
            pickup_eta_s: choice.eta_s,
            pickup_distance_m: choice.distance_m,
            expires_at_ms,
            score: choice.score,
            attempt: trip.offers_made,
            surge_multiplier: trip.surge_multiplier,
        });
        self.offers.insert(
            offer,
            PendingOffer {
                details: details.clone(),
                driver: choice.key,
            },
        );
        self.set_status(choice.key, DriverStatus::Offered(offer));
        self.timers
            .push(Reverse((expires_at_ms, Timer::OfferDeadline(offer))));
        self.emit(now_ms, EventKind::OfferSent(details));
    }

    /// Removes a pending offer, remembers how it ended and learns the driver's acceptance.
    /// The caller moves the driver and the trip on.
    fn end_offer(&mut self, offer: OfferId, outcome: OfferOutcome) -> PendingOffer {
        let pending = self
            .offers
            .remove(&offer)
            .expect("dispatcher invariant: callers end only pending offers");
        let answered = match outcome {
            OfferOutcome::Accepted => Some(1.0),
            OfferOutcome::Declined | OfferOutcome::Expired => Some(0.0),
            OfferOutcome::Cancelled => None,
        };
        if let Some(x) = answered {
            let d = &mut self.drivers[pending.driver.0 as usize];
            d.acceptance_rate += ACCEPTANCE_ALPHA * (x - d.acceptance_rate);
        }
        self.ended_offers.insert(offer, outcome);
        self.ended_order.push_back(offer);
        while self.ended_order.len() > self.ended_offer_memory {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended_offers.remove(&old);
            }
        }
        pending
    }

    fn offer_gone(&self, offer: OfferId) -> Error {
        match self.ended_offers.get(&offer) {
            Some(outcome) => Error::FailedPrecondition(format!(
                "offer {offer} has already ended ({outcome:?}); an offer can be answered once, \
                 within its window"
            )),
            None if offer.0 < self.next_offer => {
                Error::FailedPrecondition(format!("offer {offer} has already ended"))
            }
            None => Error::NotFound(format!("unknown offer {offer}")),
        }
    }

    /// A trip whose offer ended without assignment goes back to searching.
    fn release_offered_trip(&mut self, trip_id: TripId) {
        let trip = self.trip_mut(trip_id);
        trip.status = TripStatus::Searching;
        trip.offer = None;
        trip.driver = None;
    }

    fn expire_offer(&mut self, offer: OfferId, now_ms: u64) {
        let pending = self.end_offer(offer, OfferOutcome::Expired);
        let trip = pending.details.trip;
        self.set_status(pending.driver, DriverStatus::Available);
        self.release_offered_trip(trip);
        self.emit(now_ms, EventKind::OfferExpired(offer_ref(&pending.details)));
        self.continue_search(trip, now_ms);
    }

    /// After an offer failed: offer the next candidate, or wait and retry, or give up at the
    /// dispatch deadline.
    fn continue_search(&mut self, trip_id: TripId, now_ms: u64) {
        let deadline = self.trip_mut(trip_id).dispatch_deadline_ms;
        if now_ms >= deadline {
            self.end_no_drivers(trip_id, now_ms);
            return;
        }
        match self.find_best(trip_id, now_ms).0 {
            Some(choice) => self.make_offer(trip_id, choice, now_ms),
            None => {
                let at = now_ms.saturating_add(self.retry_interval_ms).min(deadline);
                self.timers.push(Reverse((at, Timer::Retry(trip_id))));
            }
        }
    }

    fn end_no_drivers(&mut self, trip_id: TripId, now_ms: u64) {
        self.finish_trip(trip_id, TripStatus::NoDrivers, now_ms);
        let trip = &self.trips[&trip_id];
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

    fn finish_trip(&mut self, trip_id: TripId, status: TripStatus, now_ms: u64) {
        let retention = self.trip_retention_ms;
        let trip = self.trip_mut(trip_id);
        trip.status = status;
        trip.ended_at_ms = now_ms;
        let rider = trip.rider.clone();
        if self.open_by_rider.get(&rider) == Some(&trip_id) {
            self.open_by_rider.remove(&rider);
        }
        match status {
            TripStatus::Completed => self.stats.trips_completed += 1,
            TripStatus::Cancelled => self.stats.trips_cancelled += 1,
            _ => self.stats.trips_no_drivers += 1,
        }
        self.timers.push(Reverse((
            now_ms.saturating_add(retention),
            Timer::Forget(trip_id),
        )));
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
