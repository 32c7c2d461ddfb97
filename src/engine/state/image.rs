//! [`StateImage`]: an owned copy of the durable state, what a snapshot holds.
//!
//! Recovery used to replay the whole log, so restart time grew with uptime. A snapshot bounds
//! it: the state at some offset, then only the log after it. The copy is taken on the
//! dispatcher thread at a group boundary (where every invariant holds), so it must be cheap:
//! the driver table is shared in chunks (`chunked.rs`) and trip entries behind `Arc`, so both
//! copy as pointers; the other maps and the timer queue are still cloned (their cost grows with
//! the ended trips in memory; see the snapshot bench). No encoding here: that and the disk
//! happen on another thread (`engine::snapshot`).
//!
//! What is left out is what can be rebuilt: the rider-to-driver-key map (from the records) and
//! the spatial index (every AVAILABLE driver at its position). Positions are in the image
//! although they are not durable: the last reported ones are better than none, and a gateway
//! corrects them within seconds anyway.

use std::cmp::Reverse;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{Chunked, DispatchState, Timer, TripEntry};
use crate::domain::{ExternalId, LatLng, OfferId, TripId};
use crate::engine::records::{DriverRecord, DriverStatus, OfferOutcome, PendingOffer, Stats};

/// The durable state at one offset (see the module docs). Opaque: made by
/// [`DispatchState::image`], turned back into a state by [`DispatchState::restore`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateImage {
    next_offset: u64,
    drivers: Chunked<DriverRecord>,
    positions: Vec<LatLng>,
    trips: Vec<Arc<TripEntry>>,
    offers: Vec<PendingOffer>,
    ended_offers: Vec<(OfferId, OfferOutcome)>,
    ended_order: VecDeque<OfferId>,
    open_by_rider: Vec<(ExternalId, TripId)>,
    by_request: Vec<((ExternalId, ExternalId), TripId)>,
    timers: Vec<(u64, Timer)>,
    batch: BTreeSet<TripId>,
    batch_flush_at_ms: Option<u64>,
    waiting: BTreeSet<TripId>,
    stats: Stats,
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
    /// O(d + t + o + q) clones for d drivers, t trips, o offers and q queued deadlines; no
    /// allocation per driver beyond the vector.
    pub fn image(&self) -> StateImage {
        StateImage {
            next_offset: self.next_offset,
            drivers: self.drivers.clone(),
            positions: self.live.positions().to_vec(),
            trips: self.trips.values().cloned().collect(),
            offers: self.offers.values().cloned().collect(),
            ended_offers: self.ended_offers.iter().map(|(k, v)| (*k, *v)).collect(),
            ended_order: self.ended_order.clone(),
            open_by_rider: self
                .open_by_rider
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            by_request: self
                .by_request
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            timers: self.timers.iter().map(|Reverse(t)| *t).collect(),
            batch: self.batch.clone(),
            batch_flush_at_ms: self.batch_flush_at_ms,
            waiting: self.waiting.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Turns this fresh state (nothing applied yet, empty index) into the state `image` was
    /// taken of: the rules stay this state's (from the config it was made with), the index
    /// gets every AVAILABLE driver. Refuses an image whose records do not fit together (a
    /// snapshot from a bug or another version), leaving this state fresh: the caller falls
    /// back to an older snapshot or to the whole log.
    ///
    /// # Runtime
    /// O(d log d + t + o + q), plus one index insert per available driver.
    pub fn restore(&mut self, image: StateImage) -> Result<(), String> {
        if !self.drivers.is_empty() || !self.trips.is_empty() || !self.index.is_empty() {
            return Err("a snapshot is only restored into a fresh state".into());
        }
        check_keys(&image)?;
        let mut driver_keys = FxHashMap::default();
        for d in &image.drivers {
            driver_keys.insert(d.id.clone(), d.key);
        }
        if driver_keys.len() != image.drivers.len() {
            return Err("two drivers share an id".into());
        }
        for (d, position) in image.drivers.iter().zip(&image.positions) {
            self.live.set_position(d.key, *position);
            if d.status == DriverStatus::Available {
                self.index.upsert(d.key, *position);
            }
        }
        self.driver_keys = driver_keys;
        self.drivers = image.drivers;
        self.trips = image.trips.into_iter().map(|e| (e.trip.id, e)).collect();
        self.offers = image
            .offers
            .into_iter()
            .map(|p| (p.details.offer, p))
            .collect();
        self.ended_offers = image.ended_offers.into_iter().collect();
        self.ended_order = image.ended_order;
        self.open_by_rider = image.open_by_rider.into_iter().collect();
        self.by_request = image.by_request.into_iter().collect();
        self.timers = image.timers.into_iter().map(Reverse).collect();
        self.batch = image.batch;
        self.batch_flush_at_ms = image.batch_flush_at_ms;
        self.waiting = image.waiting;
        self.stats = image.stats;
        self.next_offset = image.next_offset;
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
        .iter()
        .all(|e| e.driver_key.is_none_or(in_range) && e.tried.iter().copied().all(in_range));
    if !trips_ok || !image.offers.iter().all(|p| in_range(p.driver)) {
        return Err("a trip or an offer names a driver the image does not hold".into());
    }
    Ok(())
}
