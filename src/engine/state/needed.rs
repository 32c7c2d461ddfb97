//! [`Needed`]: the lowest log offset the state needs to be rebuilt, kept up to date as it
//! changes instead of found by a walk.
//!
//! Log retention asks for it at every check (`engine::runner`). It used to walk every trip in
//! memory and every driver: O(t + d), ~700k records at city scale with the default trip
//! retention, on the dispatcher thread. Here the trips in the maps (by id, which is the offset
//! of their first event) and the online drivers (by the offset of their online event) are kept
//! in ordered sets, updated where `apply` and `pop_due` change them: O(log n) per change, O(1)
//! per question. Not part of the image: `restore` rebuilds it.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::persist::PMap;
use super::{Chunked, TripEntry};
use crate::domain::{DriverKey, TripId};
use crate::engine::records::{DriverRecord, DriverStatus};

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Needed {
    trips: BTreeSet<TripId>,
    online: BTreeSet<(u64, DriverKey)>,
}

impl Needed {
    /// A trip entered the trip map. O(log t).
    pub(crate) fn trip_added(&mut self, trip: TripId) {
        self.trips.insert(trip);
    }

    /// A trip left the trip map. O(log t).
    pub(crate) fn trip_removed(&mut self, trip: TripId) {
        self.trips.remove(&trip);
    }

    /// A driver went online at event `offset`. O(log d).
    pub(crate) fn driver_online(&mut self, offset: u64, key: DriverKey) {
        self.online.insert((offset, key));
    }

    /// A driver who went online at event `offset` went offline. O(log d).
    pub(crate) fn driver_offline(&mut self, offset: u64, key: DriverKey) {
        self.online.remove(&(offset, key));
    }

    /// The lowest offset of a trip or an online driver. O(log n).
    pub(crate) fn oldest(&self) -> Option<u64> {
        let trip = self.trips.first().map(|t| t.0);
        let driver = self.online.first().map(|(offset, _)| *offset);
        trip.into_iter().chain(driver).min()
    }

    /// From the maps of a restored state. O((t + d) log(t + d)).
    pub(crate) fn rebuild(
        &mut self,
        trips: &PMap<TripId, Arc<TripEntry>>,
        drivers: &Chunked<DriverRecord>,
    ) {
        self.trips = trips.keys().copied().collect();
        self.online = drivers
            .iter()
            .filter(|d| d.status != DriverStatus::Offline)
            .map(|d| (d.online_offset, d.key))
            .collect();
    }

    pub(crate) fn clear(&mut self) {
        self.trips.clear();
        self.online.clear();
    }
}
