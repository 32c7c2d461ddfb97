//! The records of drivers and trips, and the one fold of events into a [`Trip`].
//!
//! They are plain data owned by the dispatch state; clones of them are what the engine hands
//! back to callers (a snapshot, never a live view). [`Trip::apply`] is the trip lifecycle,
//! written once: the dispatch state folds every event into its trips with it, and WatchTrip
//! folds the same events into the snapshot it streams, so the two cannot disagree.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::{DriverKey, ExternalId, LatLng, OfferId, Rating, TripId, VehicleClass};
use crate::events::{CancelledBy, Event, EventKind, MatchPolicy, OfferDetails, TripStatus};

/// Where a driver is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriverStatus {
    /// Not taking trips.
    Offline,
    /// A candidate for trips (and in the spatial index).
    Available,
    /// Holding this pending offer.
    Offered(OfferId),
    /// Assigned to this trip.
    OnTrip(TripId),
}

/// A driver as the engine sees it: its durable record plus its last known position.
#[derive(Clone, Debug)]
pub struct Driver {
    /// Caller-chosen id.
    pub id: ExternalId,
    /// Dense engine handle.
    pub key: DriverKey,
    /// Lifecycle state.
    pub status: DriverStatus,
    /// Last reported position.
    pub position: LatLng,
    /// Average rating.
    pub rating: Rating,
    /// Vehicle class.
    pub class: VehicleClass,
    /// Gateway that routes the driver's offers.
    pub gateway: Option<ExternalId>,
    /// Exponentially weighted share of offers accepted (answered or expired), 0..=1.
    pub acceptance_rate: f64,
    /// Trips completed on `trips_day`.
    pub trips_today: u32,
    /// The UTC day number `trips_today` counts for.
    pub trips_day: u64,
    /// When the driver last became free (online or trip ended), ms since epoch.
    pub free_since_ms: u64,
    /// Offset of the event that last put the driver online (recovery needs it).
    pub online_offset: u64,
}

/// A driver's durable record: everything about it that events set. Its position is not here
/// but in the state's non-durable part (positions change between events).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct DriverRecord {
    pub(crate) id: ExternalId,
    pub(crate) key: DriverKey,
    pub(crate) status: DriverStatus,
    pub(crate) rating: Rating,
    pub(crate) class: VehicleClass,
    pub(crate) gateway: Option<ExternalId>,
    pub(crate) acceptance_rate: f64,
    pub(crate) trips_today: u32,
    pub(crate) trips_day: u64,
    pub(crate) free_since_ms: u64,
    pub(crate) online_offset: u64,
}

impl DriverRecord {
    /// Trips completed on the UTC day of `now_ms`.
    pub(crate) fn trips_on(&self, now_ms: u64) -> u32 {
        trips_on(self.trips_today, self.trips_day, now_ms)
    }

    /// The snapshot handed to callers.
    pub(crate) fn snapshot(&self, position: LatLng) -> Driver {
        Driver {
            id: self.id.clone(),
            key: self.key,
            status: self.status,
            position,
            rating: self.rating,
            class: self.class,
            gateway: self.gateway.clone(),
            acceptance_rate: self.acceptance_rate,
            trips_today: self.trips_today,
            trips_day: self.trips_day,
            free_since_ms: self.free_since_ms,
            online_offset: self.online_offset,
        }
    }
}

impl Driver {
    /// Trips completed on the UTC day of `now_ms`.
    pub fn trips_on(&self, now_ms: u64) -> u32 {
        trips_on(self.trips_today, self.trips_day, now_ms)
    }
}

/// `trips_today` if it counts the UTC day of `now_ms`, else 0 (a new day).
fn trips_on(trips_today: u32, trips_day: u64, now_ms: u64) -> u32 {
    if trips_day == day_of(now_ms) {
        trips_today
    } else {
        0
    }
}

/// The UTC day number of an instant.
pub(crate) fn day_of(now_ms: u64) -> u64 {
    now_ms / 86_400_000
}

/// A trip request and everything that happened to it. Its id is the offset of its
/// TripRequested event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trip {
    /// Engine-issued id.
    pub id: TripId,
    /// Who asked.
    pub rider: ExternalId,
    /// The client's idempotency key.
    pub request_id: Option<ExternalId>,
    /// Lifecycle state.
    pub status: TripStatus,
    /// Pickup point.
    pub pickup: LatLng,
    /// Drop-off point.
    pub dropoff: LatLng,
    /// Requested class.
    pub class: VehicleClass,
    /// Assigned driver (ACCEPTED and later) or the driver holding the pending offer.
    pub driver: Option<ExternalId>,
    /// The pending offer while OFFERED.
    pub offer: Option<OfferId>,
    /// Pickup ETA of the offered or assigned driver, seconds.
    pub pickup_eta_s: f64,
    /// Surge at the pickup when requested.
    pub surge_multiplier: f64,
    /// Offers made so far.
    pub offers_made: u32,
    /// When requested, ms since epoch.
    pub requested_at_ms: u64,
    /// When assigned (0 until then).
    pub assigned_at_ms: u64,
    /// When it ended (0 while open).
    pub ended_at_ms: u64,
    /// Past this instant the trip stops searching and ends as NO_DRIVERS.
    pub dispatch_deadline_ms: u64,
    /// Set when cancelled.
    pub cancelled_by: Option<CancelledBy>,
    /// Policy that matched it.
    pub policy: MatchPolicy,
    /// Offset of the last event about this trip.
    pub last_event_offset: u64,
}

impl Trip {
    /// The trip a TripRequested event creates (`None` for any other event). Its dispatch
    /// deadline is `dispatch_timeout_ms` after the request.
    pub fn requested(event: &Event, dispatch_timeout_ms: u64) -> Option<Trip> {
        let EventKind::TripRequested {
            trip,
            rider,
            request_id,
            pickup,
            dropoff,
            class,
            surge_multiplier,
            policy,
            ..
        } = &event.kind
        else {
            return None;
        };
        Some(Trip {
            id: *trip,
            rider: rider.clone(),
            request_id: request_id.clone(),
            status: TripStatus::Searching,
            pickup: *pickup,
            dropoff: *dropoff,
            class: *class,
            driver: None,
            offer: None,
            pickup_eta_s: 0.0,
            surge_multiplier: *surge_multiplier,
            offers_made: 0,
            requested_at_ms: event.at_ms,
            assigned_at_ms: 0,
            ended_at_ms: 0,
            dispatch_deadline_ms: event.at_ms.saturating_add(dispatch_timeout_ms),
            cancelled_by: None,
            policy: *policy,
            last_event_offset: event.offset,
        })
    }

    /// Folds one event of this trip's lifecycle into it. Returns whether the event was one
    /// (events of other trips, driver events and scheduling events change nothing). The
    /// dispatch state and WatchTrip both use this, so a watched snapshot is always what
    /// GetTrip would answer at the same offset.
    pub fn apply(&mut self, event: &Event) -> bool {
        if event.kind.trip() != Some(self.id) {
            return false;
        }
        let now = event.at_ms;
        match &event.kind {
            EventKind::OfferSent(o) => {
                self.status = TripStatus::Offered;
                self.offer = Some(o.offer);
                self.driver = Some(o.driver.clone());
                self.pickup_eta_s = o.pickup_eta_s;
                self.offers_made = o.attempt;
            }
            EventKind::OfferDeclined(_)
            | EventKind::OfferExpired(_)
            | EventKind::OfferCancelled(..) => {
                self.status = TripStatus::Searching;
                self.offer = None;
                self.driver = None;
            }
            // The driver and the status move on with the TripAssigned that follows.
            EventKind::OfferAccepted(_) => self.offer = None,
            EventKind::TripAssigned {
                driver,
                pickup_eta_s,
                policy,
                ..
            } => {
                self.status = TripStatus::Accepted;
                self.offer = None;
                self.driver = Some(driver.clone());
                self.pickup_eta_s = *pickup_eta_s;
                self.assigned_at_ms = now;
                self.policy = *policy;
            }
            EventKind::DriverArrived { .. } => self.status = TripStatus::Arrived,
            EventKind::TripStarted { .. } => self.status = TripStatus::InProgress,
            EventKind::TripCompleted { .. } => self.end(TripStatus::Completed, now),
            EventKind::TripCancelled { by, .. } => {
                self.cancelled_by = Some(*by);
                self.end(TripStatus::Cancelled, now);
            }
            EventKind::NoDrivers { .. } => self.end(TripStatus::NoDrivers, now),
            // Creation is `requested`; a retry being scheduled is not part of the lifecycle.
            EventKind::TripRequested { .. } | EventKind::SearchRetryScheduled { .. } => {
                return false;
            }
            EventKind::DriverOnline { .. }
            | EventKind::DriverOffline { .. }
            | EventKind::DriverProfileUpdated { .. }
            | EventKind::DriverLeftRegion { .. }
            | EventKind::DriverJoinedRegion(_)
            | EventKind::RegionTakenOver { .. }
            | EventKind::BatchFlushed { .. } => return false,
        }
        self.last_event_offset = event.offset;
        true
    }

    fn end(&mut self, status: TripStatus, now_ms: u64) {
        self.status = status;
        self.ended_at_ms = now_ms;
    }
}

/// A pending offer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct PendingOffer {
    pub(crate) details: Arc<OfferDetails>,
    pub(crate) driver: DriverKey,
}

/// How an offer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OfferOutcome {
    /// The driver accepted.
    Accepted,
    /// The driver declined.
    Declined,
    /// Nobody answered within the window.
    Expired,
    /// Withdrawn (trip cancelled, driver offline).
    Cancelled,
}

/// A lower-case word (`expired`): what error messages say.
impl std::fmt::Display for OfferOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OfferOutcome::Accepted => "accepted",
            OfferOutcome::Declined => "declined",
            OfferOutcome::Expired => "expired",
            OfferOutcome::Cancelled => "cancelled",
        })
    }
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

/// What a person reads in a location summary's examples.
impl std::fmt::Display for LocationRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LocationRejection::InvalidCoordinates => "invalid coordinates",
            LocationRejection::InvalidDriverId => "invalid driver_id",
            LocationRejection::UnknownDriver => "unknown driver; call GoOnline first",
            LocationRejection::DriverOffline => {
                "the driver is offline; call GoOnline before reporting locations"
            }
            LocationRejection::Shed => "shed: the engine is overloaded",
        })
    }
}

/// One nearby available driver.
#[derive(Clone, Debug, PartialEq)]
pub struct NearbyDriver {
    /// The driver.
    pub id: ExternalId,
    /// Where.
    pub position: LatLng,
    /// Great-circle metres from the query point.
    pub distance_m: f64,
    /// Estimated seconds to the query point.
    pub eta_s: f64,
    /// How `eta_s` was estimated (routed, or a straight-line fallback).
    pub eta_source: crate::matching::EtaSource,
    /// Rating.
    pub rating: Rating,
    /// Vehicle class.
    pub class: VehicleClass,
}

impl NearbyDriver {
    /// The answer for one index neighbour with its ETA, the driver being `id` with `rating`
    /// and `class` (the dispatcher's search and the read view both answer this way).
    pub(crate) fn found(
        n: &crate::index::Neighbor,
        eta: &crate::matching::Eta,
        id: ExternalId,
        rating: Rating,
        class: VehicleClass,
    ) -> NearbyDriver {
        NearbyDriver {
            id,
            position: n.position,
            distance_m: n.distance_m,
            eta_s: eta.eta_s,
            eta_source: eta.source,
            rating,
            class,
        }
    }
}

/// Counters describing the engine. The state counts and the trip counters are rebuilt by
/// replaying the event log; `location_updates` is not (positions are not logged), so it counts
/// from this engine's start only. The proto's `GetStatsResponse` names each one's lifetime.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Known drivers who are offline.
    pub drivers_offline: u64,
    /// Available drivers.
    pub drivers_available: u64,
    /// Drivers holding an offer.
    pub drivers_offered: u64,
    /// Drivers on a trip.
    pub drivers_on_trip: u64,
    /// Trips not in a terminal state.
    pub open_trips: u64,
    /// Offers awaiting an answer.
    pub pending_offers: u64,
    /// Offset of the next event.
    pub next_event_offset: u64,
    /// Location updates applied since this engine started (not rebuilt by replay).
    pub location_updates: u64,
    /// Trips requested, over the replayed log.
    pub trips_requested: u64,
    /// Trips completed, over the replayed log.
    pub trips_completed: u64,
    /// Trips cancelled, over the replayed log.
    pub trips_cancelled: u64,
    /// Trips that ended with no driver, over the replayed log.
    pub trips_no_drivers: u64,
}
