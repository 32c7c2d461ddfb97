//! [`ViewSource`]: what the live map's view is built from, copied on the dispatcher thread in
//! O(d / 1024) and read on the view thread, so building the view (a walk of every online
//! driver, four times a second while anyone watches) is no longer a pause of the dispatcher.
//!
//! The driver table and the positions are shared in chunks (`chunked.rs`) and the maps are
//! persistent (`persist.rs`), as for a snapshot's [`super::StateImage`]; unlike an image it
//! holds only what the map shows, and finds the open trips through the riders' open trips
//! (`open_by_rider`) instead of walking every trip kept for `dispatch.trip_retention`. The
//! price is the same as a snapshot's: the first write into a shared chunk after a copy copies
//! that chunk (~100 kB) while the view thread still holds it.

use std::sync::Arc;

use super::chunked::Chunked;
use super::persist::PMap;
use super::{DispatchState, TripEntry};
use crate::domain::{DriverKey, ExternalId, LatLng, OfferId, TripId};
use crate::engine::records::{DriverRecord, PendingOffer, Trip};

/// The parts of the state the map view shows, as of one group boundary (see the module docs).
#[derive(Clone, Debug)]
pub struct ViewSource {
    drivers: Chunked<DriverRecord>,
    positions: Chunked<LatLng>,
    trips: PMap<TripId, Arc<TripEntry>>,
    open_by_rider: PMap<ExternalId, TripId>,
    offers: PMap<OfferId, PendingOffer>,
}

impl DispatchState {
    /// The view's source now. O(d / 1024) for d drivers; O(1) in the trips and offers.
    pub(crate) fn view_source(&self) -> ViewSource {
        ViewSource {
            drivers: self.drivers.clone(),
            positions: self.live.positions().clone(),
            trips: self.trips.clone(),
            open_by_rider: self.open_by_rider.clone(),
            offers: self.offers.clone(),
        }
    }
}

impl ViewSource {
    /// Every driver record, by dense key.
    pub(crate) fn records(&self) -> impl Iterator<Item = &DriverRecord> {
        self.drivers.iter()
    }

    /// The last known position of a known driver.
    pub(crate) fn position(&self, key: DriverKey) -> LatLng {
        self.positions[key.0 as usize]
    }

    /// Every open trip (each rider has at most one), in no order.
    pub(crate) fn open_trips(&self) -> impl Iterator<Item = &Trip> {
        self.open_by_rider
            .values()
            .filter_map(|id| self.trips.get(id))
            .map(|e| &e.trip)
    }

    /// Open trips, at most.
    pub(crate) fn open_trip_count(&self) -> usize {
        self.open_by_rider.len()
    }

    /// Every pending offer, in no order.
    pub(crate) fn offers(&self) -> impl Iterator<Item = &PendingOffer> {
        self.offers.values()
    }
}
