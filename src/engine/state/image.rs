//! [`StateImage`]: an owned copy of the durable state, what a snapshot holds.
//!
//! Recovery used to replay the whole log, so restart time grew with uptime. A snapshot bounds
//! it: the state at some offset, then only the log after it. The copy is taken on the
//! dispatcher thread at a group boundary (where every invariant holds), so it must be cheap,
//! and it is O(1) in the trips, offers and deadlines: the maps and the deadline queue are
//! persistent (`persist.rs`) and copy as one pointer each, the driver table and the positions
//! are shared in chunks (`chunked.rs`, O(d / 1024)). Only the batch and the waiting trips are
//! cloned (small: the trips of the last window or dispatch timeout). No encoding here: that
//! and the disk happen on another thread (`engine::snapshot`).
//!
//! What is left out is what can be rebuilt: the rider-to-driver-key map (from the records) and
//! the spatial index (every AVAILABLE driver at its position). Positions are in the image
//! although they are not durable: the last reported ones are better than none, and a gateway
//! corrects them within seconds anyway.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::cold::Cold;
use super::persist::{PMap, TimerQueue, seq_values};
use super::{Chunked, DispatchState, TripEntry};
use crate::domain::{ExternalId, LatLng, OfferId, TripId};
use crate::engine::records::DriverRecord;
use crate::engine::records::{DriverStatus, OfferOutcome, PendingOffer, Stats};
use rustc_hash::FxHashMap;

/// The durable state at one offset (see the module docs). Opaque: made by
/// [`DispatchState::image`], turned back into a state by [`DispatchState::restore`], written
/// and read by `wire.rs` (the snapshot payload formats).
#[derive(Clone, Debug)]
pub struct StateImage {
    pub(super) next_offset: u64,
    pub(super) drivers: Chunked<DriverRecord>,
    pub(super) positions: Chunked<LatLng>,
    pub(super) trips: PMap<TripId, Arc<TripEntry>>,
    pub(super) offers: PMap<OfferId, PendingOffer>,
    pub(super) ended_offers: PMap<OfferId, OfferOutcome>,
    pub(super) ended_order: imbl::Vector<OfferId>,
    pub(super) open_by_rider: PMap<ExternalId, TripId>,
    pub(super) by_request: PMap<(ExternalId, ExternalId), TripId>,
    pub(super) timers: TimerQueue,
    pub(super) batch: BTreeSet<TripId>,
    pub(super) batch_flush_at_ms: Option<u64>,
    pub(super) waiting: BTreeSet<TripId>,
    pub(super) stats: Stats,
    /// The ended trips a snapshot restored and nothing has needed since (`cold.rs`).
    pub(super) cold: Cold,
}

impl seq_values::Keyed for Arc<TripEntry> {
    type Key = TripId;
    fn key(&self) -> TripId {
        self.trip.id
    }
}

impl seq_values::Keyed for PendingOffer {
    type Key = OfferId;
    fn key(&self) -> OfferId {
        self.details.offer
    }
}

impl StateImage {
    /// The offset of the first event the image does not include.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Drivers in the image.
    pub fn driver_count(&self) -> usize {
        self.drivers.len()
    }
}

impl DispatchState {
    /// An owned copy of the durable state (see the module docs).
    ///
    /// # Runtime
    /// O(d / 1024 + b + w) for d drivers, b batch and w waiting trips; O(1) in the trips,
    /// offers and deadlines.
    pub fn image(&self) -> StateImage {
        StateImage {
            next_offset: self.next_offset,
            drivers: self.drivers.clone(),
            positions: self.live.positions().clone(),
            trips: self.trips.clone(),
            offers: self.offers.clone(),
            ended_offers: self.ended_offers.clone(),
            ended_order: self.ended_order.clone(),
            open_by_rider: self.open_by_rider.clone(),
            by_request: self.by_request.clone(),
            timers: self.timers.clone(),
            batch: self.batch.clone(),
            batch_flush_at_ms: self.batch_flush_at_ms,
            waiting: self.waiting.clone(),
            stats: self.stats.clone(),
            cold: self.cold.clone(),
        }
    }

    /// Turns this fresh state (nothing applied yet, empty index) into the state `image` was
    /// taken of: the rules stay this state's (from the config it was made with), the index
    /// gets every AVAILABLE driver. Refuses an image whose records do not fit together (a
    /// snapshot from a bug or another version), leaving this state fresh: the caller falls
    /// back to an older snapshot or to the whole log.
    ///
    /// # Runtime
    /// O(d + t log t) for t trips in the maps (the open ones, with a format 2 snapshot), plus one
    /// index insert per available driver (the maps come built from decoding).
    pub fn restore(&mut self, image: StateImage) -> Result<(), String> {
        if !self.drivers.is_empty() || !self.trips.is_empty() || !self.index.is_empty() {
            return Err("a snapshot is only restored into a fresh state".into());
        }
        check_keys(&image)?;
        let mut driver_keys = FxHashMap::default();
        driver_keys.reserve(image.drivers.len());
        for d in &image.drivers {
            driver_keys.insert(d.id.clone(), d.key);
        }
        if driver_keys.len() != image.drivers.len() {
            return Err("two drivers share an id".into());
        }
        for (d, position) in image.drivers.iter().zip(image.positions.iter()) {
            self.live.set_position(d.key, *position);
            if d.status == DriverStatus::Available {
                self.index.upsert(d.key, *position);
            }
        }
        self.driver_keys = driver_keys;
        self.drivers = image.drivers;
        self.trips = image.trips;
        self.offers = image.offers;
        self.ended_offers = image.ended_offers;
        self.ended_order = image.ended_order;
        self.open_by_rider = image.open_by_rider;
        self.by_request = image.by_request;
        self.timers = image.timers;
        self.batch = image.batch;
        self.batch_flush_at_ms = image.batch_flush_at_ms;
        self.waiting = image.waiting;
        self.stats = image.stats;
        self.next_offset = image.next_offset;
        self.cold = image.cold;
        self.needed.rebuild(&self.trips, &self.drivers);
        if let Err(broken) = self.check_invariants() {
            self.clear();
            return Err(format!("inconsistent snapshot: {broken}"));
        }
        Ok(())
    }

    /// Back to a fresh state (after a refused image, or a recovery that starts over).
    pub(crate) fn clear(&mut self) {
        for d in &self.drivers {
            self.index.remove(d.key);
        }
        self.drivers.clear();
        self.driver_keys.clear();
        self.trips.clear();
        self.offers.clear();
        self.ended_offers.clear();
        self.ended_order.clear();
        self.open_by_rider.clear();
        self.by_request.clear();
        self.timers.clear();
        self.batch.clear();
        self.batch_flush_at_ms = None;
        self.waiting.clear();
        self.stats = Stats::default();
        self.next_offset = 0;
        self.live.clear_positions();
        self.cold = Cold::default();
        self.needed.clear();
    }
}

/// Every driver key in the image names a driver, so nothing below indexes out of range.
fn check_keys(image: &StateImage) -> Result<(), String> {
    let n = image.drivers.len();
    if image.positions.len() != n {
        return Err(format!(
            "{} positions for {n} drivers",
            image.positions.len()
        ));
    }
    if let Some((i, _)) = image
        .drivers
        .iter()
        .enumerate()
        .find(|(i, d)| d.key.0 as usize != *i)
    {
        return Err(format!("driver {i} has key {:?}", image.drivers[i].key));
    }
    let in_range = |k: crate::domain::DriverKey| (k.0 as usize) < n;
    let trips_ok = image
        .trips
        .values()
        .all(|e| e.driver_key.is_none_or(in_range) && e.tried.iter().copied().all(in_range));
    if !trips_ok || !image.offers.values().all(|p| in_range(p.driver)) {
        return Err("a trip or an offer names a driver the image does not hold".into());
    }
    Ok(())
}
