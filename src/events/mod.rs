//! Dispatch events: every state change of a driver, trip or offer, in the order the dispatcher
//! made it, each with a gap-free offset.
//!
//! They are the only way dispatch state changes (`engine::state::DispatchState::apply`), so
//! besides the lifecycle events there are a few that only schedule: a driver's profile update,
//! a search retry being armed, a batch flush re-armed. They make every deadline the engine
//! keeps durable, so a restart resumes the same schedule instead of inventing one.
//!
//! - [`log`]: the durable segment log they are committed to (record format, recovery,
//!   appender, cursor).
//! - [`bus`]: the in-memory ring they are published to, read by any number of followers.
//! - [`follow`]: the one follow loop, bus first and the log when a reader lagged out of the
//!   ring; used by every stream and by the metrics.
//! - [`router`]: one follower that hands each event only to the watchers of its key (a trip's
//!   watchers, a gateway's offer stream), so no stream scans the events of others.

pub mod bus;
pub mod follow;
pub mod log;
pub mod router;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::{ExternalId, LatLng, OfferId, Rating, TripId, VehicleClass};
use crate::matching::ScoreBreakdown;

pub use bus::{EventBus, Lagged};
pub use follow::{Backlog, FollowError, Follower, RemoteBacklog};
pub use log::{EventLog, FsyncPolicy, LogConfig, LogCursor, LogError, OnLogFailure};
pub use router::{RouteKey, Router, RouterStats, Watch};

/// One state change, as published.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the stream: 0, 1, 2... with no gaps.
    pub offset: u64,
    /// When the dispatcher made the change, ms since the Unix epoch.
    pub at_ms: u64,
    /// What changed.
    pub kind: EventKind,
}

/// Where a trip is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TripStatus {
    /// Looking for a driver, no offer pending.
    Searching,
    /// One offer pending.
    Offered,
    /// A driver accepted and is driving to the pickup.
    Accepted,
    /// The driver is at the pickup.
    Arrived,
    /// The rider is on board.
    InProgress,
    /// Terminal: dropped off.
    Completed,
    /// Terminal: cancelled by rider or driver.
    Cancelled,
    /// Terminal: nobody accepted in time.
    NoDrivers,
}

/// The proto's name (`TRIP_STATUS_ACCEPTED`): the words error messages use.
impl std::fmt::Display for TripStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TripStatus::Searching => "TRIP_STATUS_SEARCHING",
            TripStatus::Offered => "TRIP_STATUS_OFFERED",
            TripStatus::Accepted => "TRIP_STATUS_ACCEPTED",
            TripStatus::Arrived => "TRIP_STATUS_ARRIVED",
            TripStatus::InProgress => "TRIP_STATUS_IN_PROGRESS",
            TripStatus::Completed => "TRIP_STATUS_COMPLETED",
            TripStatus::Cancelled => "TRIP_STATUS_CANCELLED",
            TripStatus::NoDrivers => "TRIP_STATUS_NO_DRIVERS",
        })
    }
}

impl TripStatus {
    /// Whether the trip has ended.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TripStatus::Completed | TripStatus::Cancelled | TripStatus::NoDrivers
        )
    }
}

/// Who cancelled a trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelledBy {
    /// The rider.
    Rider,
    /// The assigned driver.
    Driver,
}

/// Why an offer was withdrawn before the driver answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OfferCancelReason {
    /// The rider cancelled the trip.
    TripCancelled,
    /// The driver went offline.
    DriverOffline,
}

/// The matching policy that produced an offer or assignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchPolicy {
    /// Best driver at the instant of the request.
    #[default]
    Greedy,
    /// Requests of a short window paired with drivers together by a minimum-cost assignment.
    Batch,
}

/// An offer as sent to a driver (shared: it travels in events, snapshots and streams).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OfferDetails {
    /// The offer.
    pub offer: OfferId,
    /// The trip offered.
    pub trip: TripId,
    /// The driver offered to.
    pub driver: ExternalId,
    /// The driver's gateway, which routes the offer to the driver.
    pub gateway: Option<ExternalId>,
    /// Pickup point.
    pub pickup: LatLng,
    /// Drop-off point.
    pub dropoff: LatLng,
    /// Estimated seconds from the driver to the pickup.
    pub pickup_eta_s: f64,
    /// Great-circle metres from the driver to the pickup.
    pub pickup_distance_m: f64,
    /// The driver must answer before this instant (ms since epoch).
    pub expires_at_ms: u64,
    /// Why this driver won.
    pub score: ScoreBreakdown,
    /// 1 for the trip's first offer, 2 for the next...
    pub attempt: u32,
    /// Surge multiplier at the pickup when requested.
    pub surge_multiplier: f64,
    /// How `pickup_eta_s` was estimated (routed, or a straight-line fallback).
    pub eta_source: crate::matching::EtaSource,
}

/// Identifies an offer and who it concerned, for events that end it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OfferRef {
    /// The offer.
    pub offer: OfferId,
    /// Its trip.
    pub trip: TripId,
    /// Its driver.
    pub driver: ExternalId,
    /// The driver's gateway.
    pub gateway: Option<ExternalId>,
}

/// What changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// A driver went from offline to available.
    DriverOnline {
        /// The driver.
        driver: ExternalId,
        /// Where.
        position: LatLng,
        /// Rating.
        rating: Rating,
        /// Vehicle class.
        class: VehicleClass,
        /// Gateway routing its offers.
        gateway: Option<ExternalId>,
    },
    /// An online driver's profile changed (a repeated GoOnline with another rating, class or
    /// gateway). Its pending offer, if any, is routed to the new gateway from here on.
    DriverProfileUpdated {
        /// The driver.
        driver: ExternalId,
        /// Rating.
        rating: Rating,
        /// Vehicle class.
        class: VehicleClass,
        /// Gateway routing its offers.
        gateway: Option<ExternalId>,
    },
    /// A driver went offline.
    DriverOffline {
        /// The driver.
        driver: ExternalId,
    },
    /// A rider asked for a trip.
    TripRequested {
        /// The new trip.
        trip: TripId,
        /// Who asked.
        rider: ExternalId,
        /// The client's idempotency key.
        request_id: Option<ExternalId>,
        /// Pickup.
        pickup: LatLng,
        /// Drop-off.
        dropoff: LatLng,
        /// Requested class.
        class: VehicleClass,
        /// Surge at the pickup.
        surge_multiplier: f64,
        /// Candidates in range at request time.
        candidates: u32,
        /// Matching policy in force.
        policy: MatchPolicy,
    },
    /// A trip was offered to a driver.
    OfferSent(Arc<OfferDetails>),
    /// The driver accepted.
    OfferAccepted(OfferRef),
    /// The driver declined.
    OfferDeclined(OfferRef),
    /// The offer window passed without an answer.
    OfferExpired(OfferRef),
    /// The offer was withdrawn.
    OfferCancelled(OfferRef, OfferCancelReason),
    /// A driver is assigned to the trip.
    TripAssigned {
        /// The trip.
        trip: TripId,
        /// Its driver.
        driver: ExternalId,
        /// Pickup ETA at offer time, seconds.
        pickup_eta_s: f64,
        /// Policy that matched.
        policy: MatchPolicy,
    },
    /// The driver is at the pickup.
    DriverArrived {
        /// The trip.
        trip: TripId,
        /// Its driver.
        driver: ExternalId,
    },
    /// The rider is on board.
    TripStarted {
        /// The trip.
        trip: TripId,
        /// Its driver.
        driver: ExternalId,
    },
    /// Dropped off; the driver is free at the drop-off.
    TripCompleted {
        /// The trip.
        trip: TripId,
        /// Its driver.
        driver: ExternalId,
    },
    /// The trip was cancelled.
    TripCancelled {
        /// The trip.
        trip: TripId,
        /// The driver released, if one was assigned.
        driver: Option<ExternalId>,
        /// That driver's gateway.
        gateway: Option<ExternalId>,
        /// Who cancelled.
        by: CancelledBy,
        /// Status before cancelling.
        previous: TripStatus,
    },
    /// A searching trip found no candidate; it searches again at `retry_at_ms` (greedy policy).
    SearchRetryScheduled {
        /// The trip.
        trip: TripId,
        /// When it searches again, ms since epoch (never past its dispatch deadline).
        retry_at_ms: u64,
    },
    /// A batch was matched and some trips are still waiting (batch policy); the next batch is
    /// matched at `next_flush_at_ms`.
    BatchFlushed {
        /// When the waiting trips are matched next, ms since epoch.
        next_flush_at_ms: u64,
        /// Trips still waiting.
        waiting: u32,
    },
    /// Nobody could be found or nobody accepted in time.
    NoDrivers {
        /// The trip.
        trip: TripId,
        /// Surge at the pickup when it was requested.
        surge_multiplier: f64,
        /// Offers made before giving up.
        offers_made: u32,
    },
    /// An available driver left this region for the neighbouring region `to` (it crossed the
    /// border, or a pickup across it drew it there). Here it is offline from now on; the
    /// matching [`EventKind::DriverJoinedRegion`] is in `to`'s stream. Appended after every
    /// older kind, so logs and snapshots written before it still decode.
    DriverLeftRegion {
        /// The driver.
        driver: ExternalId,
        /// The region it moves to.
        to: String,
    },
    /// A driver that left region `from` joined this one, available, with the profile and the
    /// counters scoring reads (acceptance, fairness), so a move does not reset them.
    DriverJoinedRegion(Arc<RegionJoin>),
    /// Cluster mode: a process took this region's lease and serves it from this event on. The
    /// first event its owner appends, before any other, in the same stream message that fences
    /// the previous owner out. It changes no dispatch state: followers see in the stream itself
    /// where one owner's events end and the next one's begin. Appended after every older kind.
    RegionTakenOver {
        /// The member id of the new owner (the `Dispatch-Owner` of every message it writes).
        owner: String,
        /// The owner of the last message before, if the stream held any.
        previous: Option<String>,
        /// Events the new owner replayed to rebuild the state (after its snapshot, if any).
        replayed: u64,
        /// The offset of the snapshot the state was restored from; `None`: the whole stream.
        from_snapshot: Option<u64>,
    },
}

/// A driver arriving from a neighbouring region: everything its old region knew of it that
/// matters for dispatch here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionJoin {
    /// The driver.
    pub driver: ExternalId,
    /// The region it left.
    pub from: String,
    /// Where it is.
    pub position: LatLng,
    /// Rating.
    pub rating: Rating,
    /// Vehicle class.
    pub class: VehicleClass,
    /// Gateway routing its offers.
    pub gateway: Option<ExternalId>,
    /// Rolling acceptance rate, 0..1.
    pub acceptance_rate: f64,
    /// Trips completed on the UTC day `trips_day`.
    pub trips_today: u32,
    /// The UTC day (days since the epoch) `trips_today` counts.
    pub trips_day: u64,
    /// Free (available) since this instant, ms since the epoch (fairness: idle time).
    pub free_since_ms: u64,
}

impl EventKind {
    /// The trip concerned, if any.
    pub fn trip(&self) -> Option<TripId> {
        match self {
            EventKind::DriverOnline { .. }
            | EventKind::DriverOffline { .. }
            | EventKind::DriverProfileUpdated { .. }
            | EventKind::DriverLeftRegion { .. }
            | EventKind::DriverJoinedRegion(_)
            | EventKind::RegionTakenOver { .. }
            | EventKind::BatchFlushed { .. } => None,
            EventKind::TripRequested { trip, .. }
            | EventKind::SearchRetryScheduled { trip, .. }
            | EventKind::TripAssigned { trip, .. }
            | EventKind::DriverArrived { trip, .. }
            | EventKind::TripStarted { trip, .. }
            | EventKind::TripCompleted { trip, .. }
            | EventKind::TripCancelled { trip, .. }
            | EventKind::NoDrivers { trip, .. } => Some(*trip),
            EventKind::OfferSent(o) => Some(o.trip),
            EventKind::OfferAccepted(o)
            | EventKind::OfferDeclined(o)
            | EventKind::OfferExpired(o)
            | EventKind::OfferCancelled(o, _) => Some(o.trip),
        }
    }

    /// The gateway that serves the driver concerned, for routing to offer streams.
    pub fn gateway(&self) -> Option<&ExternalId> {
        match self {
            EventKind::OfferSent(o) => o.gateway.as_ref(),
            EventKind::OfferExpired(o) | EventKind::OfferCancelled(o, _) => o.gateway.as_ref(),
            EventKind::TripCancelled { gateway, .. } => gateway.as_ref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ExternalId {
        ExternalId::new("driver_id", s).unwrap()
    }

    /// Log records and snapshots are postcard, which writes an enum variant as its index: the
    /// region-move kinds are appended after every older kind, so a record written before they
    /// existed decodes unchanged, and the older kinds keep their bytes.
    #[test]
    fn records_written_before_the_region_moves_still_decode() {
        // `Event { offset: 5, at_ms: 7, kind: DriverOffline { driver: "d" } }` as every
        // earlier version wrote it: offset, at_ms, variant 2, a one-byte string.
        let old = [5u8, 7, 2, 1, b'd'];
        let event: Event = postcard::from_bytes(&old).unwrap();
        assert_eq!(event.kind, EventKind::DriverOffline { driver: id("d") });
        assert_eq!(postcard::to_allocvec(&event).unwrap(), old);
        // The new kinds come after NoDrivers, the 17th (index 16).
        let left = EventKind::DriverLeftRegion {
            driver: id("d"),
            to: "east".into(),
        };
        assert_eq!(postcard::to_allocvec(&left).unwrap()[0], 17);
        let joined = EventKind::DriverJoinedRegion(Arc::new(RegionJoin {
            driver: id("d"),
            from: "west".into(),
            position: LatLng::new(40.75, -74.0).unwrap(),
            rating: Rating::new(4.5).unwrap(),
            class: VehicleClass::default(),
            gateway: Some(id("gw")),
            acceptance_rate: 0.7,
            trips_today: 3,
            trips_day: 20_000,
            free_since_ms: 123,
        }));
        let bytes = postcard::to_allocvec(&joined).unwrap();
        assert_eq!(bytes[0], 18);
        assert_eq!(postcard::from_bytes::<EventKind>(&bytes).unwrap(), joined);
    }
}
