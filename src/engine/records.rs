//! The dispatcher's records of drivers and trips. They are plain data owned by the dispatcher;
//! clones of them are what the engine hands back to callers (a snapshot, never a live view).

use std::sync::Arc;

use crate::domain::{DriverKey, ExternalId, LatLng, OfferId, Rating, TripId, VehicleClass};
use crate::events::{CancelledBy, MatchPolicy, OfferDetails, TripStatus};

/// Where a driver is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// A driver as the engine sees it.
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

impl Driver {
    /// Trips completed on the UTC day of `now_ms`.
    pub fn trips_on(&self, now_ms: u64) -> u32 {
        if self.trips_day == day_of(now_ms) {
            self.trips_today
        } else {
            0
        }
    }
}

/// The UTC day number of an instant.
pub(crate) fn day_of(now_ms: u64) -> u64 {
    now_ms / 86_400_000
}

/// A trip request and everything that happened to it. Its id is the offset of its
/// TripRequested event.
#[derive(Clone, Debug)]
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
    pub driver: Option<(DriverKey, ExternalId)>,
    /// The pending offer while OFFERED.
    pub offer: Option<OfferId>,
    /// Drivers already offered this trip; never offered it again.
    pub tried: Vec<DriverKey>,
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

/// A pending offer.
#[derive(Clone, Debug)]
pub(crate) struct PendingOffer {
    pub(crate) details: Arc<OfferDetails>,
    pub(crate) driver: DriverKey,
}

/// How an offer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Rating.
    pub rating: Rating,
    /// Vehicle class.
    pub class: VehicleClass,
}

/// Counters describing the engine. The state counts and the trip counters are rebuilt by
/// replaying the event log; `location_updates` is not (positions are not logged), so it counts
/// from this engine's start only. The proto's `GetStatsResponse` names each one's lifetime.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
