//! `DispatchState`: everything the dispatcher knows, and the one way it changes.
//!
//! The engine's promise is that replaying the log rebuilds exactly the state that wrote it. So
//! the durable state (drivers, trips, pending and recently ended offers, the rider and request
//! indexes, every deadline, the counters, the next offset, which drivers the spatial index
//! holds) has private fields and a single mutator, [`DispatchState::apply`]. Decision code gets
//! `&DispatchState` and returns events; the dispatcher applies each as it is emitted, and
//! recovery applies the logged ones, through the same function (`apply.rs`).
//!
//! Two narrow exceptions, both named and documented where they live:
//! - [`Live`] (`live.rs`): what is deliberately not durable. Driver positions between events
//!   (gateways re-report within seconds), surge demand counters and the location-update
//!   counter. Its mutators are the location report and the surge calls.
//! - Time passing ([`DispatchState::pop_due`]): a deadline that comes due leaves the timer
//!   queue, and an ended trip whose retention passed is forgotten. Both follow from deadlines
//!   `apply` set and from `now` alone, so a replayed state reaches the same point.

mod apply;
mod chunked;
mod cold;
mod image;
mod invariants;
mod live;
mod needed;
mod persist;
mod view_source;
mod wire;

use std::collections::BTreeSet;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use chunked::Chunked;
use cold::Cold;
pub use image::StateImage;
pub use live::Live;
use needed::Needed;
use persist::{PMap, TimerQueue};
pub use view_source::ViewSource;

use super::records::{
    Driver, DriverRecord, DriverStatus, LocationRejection, OfferOutcome, PendingOffer, Stats, Trip,
};
use crate::config::Config;
use crate::domain::{DriverKey, ExternalId, LatLng, OfferId, TripId, VehicleClass};
use crate::error::Error;
use crate::events::{Event, MatchPolicy, OfferDetails, TripStatus};
use crate::index::SpatialIndex;
use crate::surge::SurgeReading;

/// A deadline the state keeps. Entries that no longer match the state when they come due
/// (an offer answered before its expiry, a retry overtaken by an offer) are dropped.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub(crate) enum Timer {
    /// The pending offer's window closes.
    OfferDeadline(OfferId),
    /// The searching trip searches again (greedy policy).
    Retry(TripId),
    /// The ended trip is forgotten (its retention passed).
    Forget(TripId),
    /// The pending batch is matched (batch policy).
    BatchFlush,
}

/// A deadline that came due and needs a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Due {
    /// This pending offer expired.
    OfferDeadline(OfferId),
    /// This searching trip searches again.
    Retry(TripId),
    /// The pending batch is matched.
    BatchFlush,
}

/// A trip and what only the engine needs about it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct TripEntry {
    /// The record callers see, folded by [`Trip::apply`].
    pub(crate) trip: Trip,
    /// The driver holding its offer or assigned to it.
    pub(crate) driver_key: Option<DriverKey>,
    /// Drivers already offered this trip; never offered it again.
    pub(crate) tried: Vec<DriverKey>,
    /// When it searches again, while SEARCHING under the greedy policy.
    pub(crate) retry_at_ms: Option<u64>,
}

/// Settings `apply` needs to derive deadlines from events.
#[derive(Clone, Debug)]
struct Rules {
    dispatch_timeout_ms: u64,
    trip_retention_ms: u64,
    ended_offer_memory: usize,
    batch_window_ms: u64,
}

/// The dispatch state. See the module docs.
pub struct DispatchState {
    rules: Rules,
    index: Box<dyn SpatialIndex>,
    drivers: Chunked<DriverRecord>,
    driver_keys: FxHashMap<ExternalId, DriverKey>,
    /// Persistent maps and queue (`persist.rs`): a snapshot copy is O(1); a write copies the
    /// path (and the trip entry) it changes only while a copy still holds them.
    trips: PMap<TripId, Arc<TripEntry>>,
    offers: PMap<OfferId, PendingOffer>,
    ended_offers: PMap<OfferId, OfferOutcome>,
    ended_order: imbl::Vector<OfferId>,
    open_by_rider: PMap<ExternalId, TripId>,
    by_request: PMap<(ExternalId, ExternalId), TripId>,
    timers: TimerQueue,
    /// Batch policy: the SEARCHING batch trips, waiting for the next flush.
    batch: BTreeSet<TripId>,
    /// When the pending batch is matched; `Some` exactly while `batch` is not empty.
    batch_flush_at_ms: Option<u64>,
    /// Greedy policy: the SEARCHING trips waiting for a driver (a retry armed), oldest first.
    /// Exactly the trips whose `retry_at_ms` is set; a driver who frees up scans it for the
    /// trips near it (see `Decide::next_waiting_for`), so it stays small: the trips of the last
    /// dispatch timeout that found nobody free.
    waiting: BTreeSet<TripId>,
    stats: Stats,
    next_offset: u64,
    live: Live,
    /// Ended trips restored from a snapshot, still encoded (`cold.rs`); never also in `trips`.
    cold: Cold,
    /// What the log must keep for the state (`needed.rs`), kept with `trips` and `drivers`.
    needed: Needed,
}

impl std::fmt::Debug for DispatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatchState")
            .field("drivers", &self.drivers.len())
            .field("indexed", &self.index.len())
            .field("trips", &self.trips.len())
            .field("pending_offers", &self.offers.len())
            .field("next_offset", &self.next_offset)
            .finish_non_exhaustive()
    }
}

impl DispatchState {
    /// An empty state whose first event gets `first_offset`.
    pub fn new(config: &Config, index: Box<dyn SpatialIndex>, first_offset: u64) -> Self {
        let d = &config.dispatch;
        DispatchState {
            rules: Rules {
                dispatch_timeout_ms: d.dispatch_timeout.as_millis() as u64,
                trip_retention_ms: d.trip_retention.as_millis() as u64,
                ended_offer_memory: d.ended_offer_memory,
                // Validated at the edge (100 ms..=10 s); never 0 so a flush cannot spin.
                batch_window_ms: (d.batch_window.as_millis() as u64).max(1),
            },
            index,
            drivers: Chunked::new(),
            driver_keys: FxHashMap::default(),
            trips: PMap::default(),
            offers: PMap::default(),
            ended_offers: PMap::default(),
            ended_order: imbl::Vector::new(),
            open_by_rider: PMap::default(),
            by_request: PMap::default(),
            timers: TimerQueue::default(),
            batch: BTreeSet::new(),
            batch_flush_at_ms: None,
            waiting: BTreeSet::new(),
            stats: Stats::default(),
            next_offset: first_offset,
            live: Live::new(config.surge.clone()),
            cold: Cold::default(),
            needed: Needed::default(),
        }
    }

    /// Applies one logged event (recovery). Events must come in offset order, the first at
    /// this state's next offset.
    pub fn replay(&mut self, event: &Event) -> Result<(), Error> {
        if event.offset != self.next_offset {
            return Err(Error::FailedPrecondition(format!(
                "event log gap: expected offset {}, found {}",
                self.next_offset, event.offset
            )));
        }
        self.apply(event);
        Ok(())
    }

    /// Starts a fresh state's offsets at `offset`: recovery from a log whose oldest segments
    /// retention has deleted begins there. Refused once anything has happened.
    pub fn resume_at(&mut self, offset: u64) -> Result<(), Error> {
        if !self.drivers.is_empty() || !self.trips.is_empty() {
            return Err(Error::FailedPrecondition(
                "resume_at is only for a fresh state".into(),
            ));
        }
        self.next_offset = offset;
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Reads (what decisions see)
    // ---------------------------------------------------------------------------------------

    /// The offset the next event gets.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    pub(crate) fn index(&self) -> &dyn SpatialIndex {
        &*self.index
    }

    pub(crate) fn driver_key(&self, driver: &str) -> Option<DriverKey> {
        self.driver_keys.get(driver).copied()
    }

    pub(crate) fn driver_count(&self) -> usize {
        self.drivers.len()
    }

    /// Every driver record, by dense key.
    pub(crate) fn records(&self) -> &Chunked<DriverRecord> {
        &self.drivers
    }

    pub(crate) fn record(&self, key: DriverKey) -> &DriverRecord {
        &self.drivers[key.0 as usize]
    }

    /// The snapshot of one driver, with its last known position.
    pub(crate) fn driver(&self, key: DriverKey) -> Driver {
        self.record(key).snapshot(self.live.position(key))
    }

    pub(crate) fn entry(&self, trip: TripId) -> Option<&TripEntry> {
        match self.trips.get(&trip) {
            Some(e) => Some(&**e),
            None => self.cold.get(trip),
        }
    }

    pub(crate) fn trip(&self, trip: TripId) -> Option<&Trip> {
        self.entry(trip).map(|e| &e.trip)
    }

    pub(crate) fn trip_by_request(
        &self,
        rider: &ExternalId,
        request: &ExternalId,
    ) -> Option<&Trip> {
        match self.by_request.get(&(rider.clone(), request.clone())) {
            Some(id) => self.trip(*id),
            None => self.cold.by_request(rider, request).map(|e| &e.trip),
        }
    }

    pub(crate) fn open_trip_of(&self, rider: &ExternalId) -> Option<TripId> {
        self.open_by_rider.get(rider).copied()
    }

    pub(crate) fn offer(&self, offer: OfferId) -> Option<&PendingOffer> {
        self.offers.get(&offer)
    }

    pub(crate) fn offer_outcome(&self, offer: OfferId) -> Option<OfferOutcome> {
        self.ended_offers.get(&offer).copied()
    }

    /// The batch trips waiting for the next flush, oldest first.
    pub(crate) fn batch(&self) -> &BTreeSet<TripId> {
        &self.batch
    }

    /// The greedy trips waiting for a driver (SEARCHING, a retry armed), oldest first.
    pub(crate) fn waiting(&self) -> &BTreeSet<TripId> {
        &self.waiting
    }

    pub(crate) fn batch_window_ms(&self) -> u64 {
        self.rules.batch_window_ms
    }

    /// Counters describing the engine now.
    pub fn stats(&self) -> Stats {
        Stats {
            open_trips: self.open_by_rider.len() as u64,
            pending_offers: self.offers.len() as u64,
            next_event_offset: self.next_offset,
            location_updates: self.live.location_updates(),
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

    /// Searching greedy trips with no retry armed. Empty after any whole command; after
    /// recovery from a log torn inside a command's events it lists the trips left stranded.
    pub(crate) fn stranded_trips(&self) -> Vec<TripId> {
        let mut out: Vec<TripId> = self
            .trips
            .values()
            .filter(|e| {
                e.trip.status == TripStatus::Searching
                    && e.trip.policy == MatchPolicy::Greedy
                    && e.retry_at_ms.is_none()
            })
            .map(|e| e.trip.id)
            .collect();
        out.sort_unstable();
        out
    }

    /// When the pending batch is matched, if a batch is pending.
    pub(crate) fn batch_flush_at_ms(&self) -> Option<u64> {
        self.batch_flush_at_ms
    }

    /// The earliest deadline in the queue, ms since epoch (it may turn out spent).
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.timers.peek().map(|(at, _)| at)
    }

    /// The lowest event offset recovery needs to rebuild today's state: the first event of
    /// every trip still in memory and the online event of every online driver. Log retention
    /// never deletes from here on.
    ///
    /// # Runtime
    /// O(log n): kept up to date as trips and drivers change (`needed.rs`).
    pub fn oldest_needed_offset(&self) -> u64 {
        let cold = self.cold.oldest().map(|t| t.0);
        self.needed
            .oldest()
            .into_iter()
            .chain(cold)
            .min()
            .unwrap_or(self.next_offset)
    }

    // ---------------------------------------------------------------------------------------
    // Time passing
    // ---------------------------------------------------------------------------------------

    /// Takes the earliest deadline due at or before `now_ms` that still matches the state.
    /// Spent entries are dropped and ended trips past their retention are forgotten on the
    /// way (time alone decides both). O(log q) per entry for q queued deadlines.
    pub(crate) fn pop_due(&mut self, now_ms: u64) -> Option<Due> {
        while let Some((at, timer)) = self.timers.peek() {
            if at > now_ms {
                return None;
            }
            self.timers.pop();
            match timer {
                Timer::OfferDeadline(offer) if self.offers.contains_key(&offer) => {
                    return Some(Due::OfferDeadline(offer));
                }
                Timer::Retry(trip)
                    if self.trips.get(&trip).is_some_and(|e| {
                        e.retry_at_ms == Some(at) && e.trip.status == TripStatus::Searching
                    }) =>
                {
                    return Some(Due::Retry(trip));
                }
                Timer::BatchFlush if self.batch_flush_at_ms == Some(at) => {
                    return Some(Due::BatchFlush);
                }
                Timer::Forget(trip) => self.forget(trip),
                _ => {}
            }
        }
        None
    }

    fn forget(&mut self, trip_id: TripId) {
        let Some(entry) = self.trips.get(&trip_id) else {
            self.cold.forget(trip_id);
            return;
        };
        let trip = &entry.trip;
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
        self.needed.trip_removed(trip_id);
    }

    // ---------------------------------------------------------------------------------------
    // The non-durable part's mutators (see `live.rs`)
    // ---------------------------------------------------------------------------------------

    /// The non-durable part.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Applies one location report: the driver's position (and its index entry while
    /// available). Not an event: positions are not part of the dispatch log.
    pub(crate) fn report_location(
        &mut self,
        driver: &str,
        position: LatLng,
    ) -> Result<DriverKey, LocationRejection> {
        let Some(key) = self.driver_key(driver) else {
            return Err(LocationRejection::UnknownDriver);
        };
        self.report_location_key(key, position)
    }

    /// [`report_location`](Self::report_location) for a driver already resolved to its key
    /// (a key never changes while the state lives: drivers are only ever added).
    pub(crate) fn report_location_key(
        &mut self,
        key: DriverKey,
        position: LatLng,
    ) -> Result<DriverKey, LocationRejection> {
        if key.0 as usize >= self.drivers.len() {
            return Err(LocationRejection::UnknownDriver);
        }
        match self.drivers[key.0 as usize].status {
            DriverStatus::Offline => return Err(LocationRejection::DriverOffline),
            DriverStatus::Available => self.index.upsert(key, position),
            DriverStatus::Offered(_) | DriverStatus::OnTrip(_) => {}
        }
        self.live.set_position(key, position);
        self.live.count_location_update();
        Ok(key)
    }

    /// Moves an online driver without counting a location report (a repeated GoOnline).
    pub(crate) fn move_driver(&mut self, key: DriverKey, position: LatLng) {
        if self.drivers[key.0 as usize].status == DriverStatus::Available {
            self.index.upsert(key, position);
        }
        self.live.set_position(key, position);
    }

    /// Counts a request for `class` in the surge demand at `pickup`.
    pub(crate) fn record_demand(&mut self, pickup: LatLng, class: VehicleClass, now_ms: u64) {
        self.live.surge_mut().record_request(pickup, class, now_ms);
    }

    /// The surge for `class` at `point`, with supply counted by the index around it.
    pub(crate) fn surge_reading(
        &mut self,
        point: LatLng,
        class: VehicleClass,
        now_ms: u64,
    ) -> SurgeReading {
        let supply = self.supply_near(point, self.live.surge().supply_radius_m(), class);
        self.live.surge_mut().reading(point, class, supply, now_ms)
    }

    /// Sweeps stale surge cells now and then.
    pub(crate) fn sweep_surge(&mut self, now_ms: u64) {
        self.live.sweep(now_ms);
    }
}
