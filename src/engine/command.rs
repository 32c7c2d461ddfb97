//! The messages the edge sends to the dispatcher thread: one `Command` variant per operation,
//! each carrying the sender its typed reply goes back on. Location batches travel on their own
//! channel so that a flood of positions never delays a trip request or an offer answer.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::dispatcher::{GoOnline, TripAction, TripRequest};
use super::records::{Driver, Stats, Trip};
use crate::domain::{DriverKey, ExternalId, LatLng, OfferId, TripId};
use crate::error::Error;
use crate::events::{OfferDetails, RegionJoin};

/// Where a command's answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// One operation on the dispatcher.
#[derive(Debug)]
pub(crate) enum Command {
    GoOnline(GoOnline, Reply<Driver>),
    GoOffline(ExternalId, Reply<Driver>),
    UpdateLocation(ExternalId, LatLng, Reply<()>),
    RequestTrip(TripRequest, Reply<(Trip, bool)>),
    Respond {
        offer: OfferId,
        driver: ExternalId,
        accept: bool,
        reply: Reply<Trip>,
    },
    TripAction {
        trip: TripId,
        driver: ExternalId,
        action: TripAction,
        reply: Reply<Trip>,
    },
    CancelTrip {
        trip: TripId,
        rider: ExternalId,
        reply: Reply<Trip>,
    },
    /// The trip and the offset of the next event, read atomically.
    GetTrip(TripId, Reply<(Trip, u64)>),
    Stats(Reply<Stats>),
    /// Pending offers for a gateway and the offset of the next event, read atomically.
    PendingOffers(Option<ExternalId>, Reply<(Vec<Arc<OfferDetails>>, u64)>),
    /// Fire due deadlines now (after a manual clock moved).
    Tick(Reply<()>),
    /// An available driver leaves for the named region (the driver as it was comes back).
    LeaveRegion(ExternalId, String, Reply<Driver>),
    /// A driver arrives from another region.
    JoinRegion(Box<RegionJoin>, Reply<Driver>),
}

/// Many drivers' positions, already validated at the edge.
#[derive(Debug)]
pub(crate) struct LocationBatch {
    /// Updates for drivers the read view knew, resolved to their keys on the caller's thread
    /// (a key is a driver's for the engine's life), so the dispatcher neither hashes a name nor
    /// frees a string for them.
    pub(crate) keyed: Vec<(DriverKey, LatLng)>,
    /// Updates for names the read view did not know (a driver newer than its last publish, or
    /// none at all): the dispatcher resolves these.
    pub(crate) named: Vec<(String, LatLng)>,
    pub(crate) reply: oneshot::Sender<LocationOutcome>,
}

/// What happened to a batch's updates.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LocationOutcome {
    /// Applied.
    pub accepted: u64,
    /// For drivers that never went online.
    pub unknown_driver: u64,
    /// For offline drivers.
    pub driver_offline: u64,
    /// A few offending driver ids with the reason, for a person to look at.
    pub examples: Vec<String>,
}
