//! The only place durable dispatch state changes: applying an event.
//!
//! Live operation and recovery both go through [`DispatchState::apply`], so replaying the
//! durable log rebuilds exactly the state that produced it: drivers and their profiles, trips
//! (folded by [`Trip::apply`], the same fold WatchTrip uses), pending offers, every deadline
//! (offer expiries, search retries, the batch flush, trip retention), acceptance rates and
//! counters.
//!
//! `apply` never panics on an event that does not fit the current state (a log from another
//! version, a hand-edited file): it skips what it cannot attach, so recovery degrades instead
//! of refusing to start.

use std::sync::Arc;

use super::{DispatchState, Timer, TripEntry};
use crate::domain::{DriverKey, OfferId, TripId};
use crate::engine::records::{
    DriverRecord, DriverStatus, OfferOutcome, PendingOffer, Trip, day_of,
};
use crate::events::{Event, EventKind, MatchPolicy, RegionJoin, TripStatus};

/// A new driver's acceptance rate before it has answered anything.
const ACCEPTANCE_PRIOR: f64 = 0.8;
/// Weight of the newest answer in the rolling acceptance rate.
const ACCEPTANCE_ALPHA: f64 = 0.1;

impl DispatchState {
    /// Applies one event's state change; the next event gets the following offset.
    pub fn apply(&mut self, event: &Event) {
        let now = event.at_ms;
        self.next_offset = event.offset + 1;
        if let EventKind::TripRequested { .. } = event.kind {
            self.trip_requested(event);
            return;
        }
        // The trip's own record first, then what the event means for drivers, offers and
        // deadlines. An ended trip still encoded from a snapshot moves to the map first.
        if let Some(trip) = event.kind.trip() {
            self.warm(trip);
        }
        if let Some(trip) = event.kind.trip()
            && let Some(entry) = self.trips.get_mut(&trip).map(Arc::make_mut)
        {
            entry.trip.apply(event);
        }
        match &event.kind {
            EventKind::DriverOnline {
                driver,
                position,
                rating,
                class,
                gateway,
            } => {
                let key = match self.driver_key(driver.as_str()) {
                    Some(key) => key,
                    None => {
                        let key = DriverKey(self.drivers.len() as u32);
                        self.drivers.push(DriverRecord {
                            id: driver.clone(),
                            key,
                            status: DriverStatus::Offline,
                            rating: *rating,
                            class: *class,
                            gateway: None,
                            acceptance_rate: ACCEPTANCE_PRIOR,
                            trips_today: 0,
                            trips_day: day_of(now),
                            free_since_ms: now,
                            online_offset: event.offset,
                        });
                        self.driver_keys.insert(driver.clone(), key);
                        self.stats.drivers_offline += 1;
                        key
                    }
                };
                self.live.set_position(key, *position);
                let d = &mut self.drivers[key.0 as usize];
                d.rating = *rating;
                d.class = *class;
                d.gateway = gateway.clone();
                if d.status == DriverStatus::Offline {
                    d.free_since_ms = now;
                    d.online_offset = event.offset;
                    self.set_status(key, DriverStatus::Available);
                }
            }
            EventKind::DriverProfileUpdated {
                driver,
                rating,
                class,
                gateway,
            } => {
                let Some(key) = self.driver_key(driver.as_str()) else {
                    return;
                };
                let d = &mut self.drivers[key.0 as usize];
                d.rating = *rating;
                d.class = *class;
                d.gateway = gateway.clone();
                // A pending offer follows its driver to the new gateway: the new gateway's
                // offer stream starts with it and its end is told there.
                if let DriverStatus::Offered(offer) = d.status
                    && let Some(p) = self.offers.get_mut(&offer)
                {
                    let mut details = (*p.details).clone();
                    details.gateway = gateway.clone();
                    p.details = Arc::new(details);
                }
            }
            EventKind::DriverOffline { driver } | EventKind::DriverLeftRegion { driver, .. } => {
                if let Some(key) = self.driver_key(driver.as_str()) {
                    self.set_status(key, DriverStatus::Offline);
                }
            }
            EventKind::DriverJoinedRegion(j) => self.driver_joined(j, event.offset),
            EventKind::TripRequested { .. } => {}
            EventKind::OfferSent(details) => {
                let Some(key) = self.driver_key(details.driver.as_str()) else {
                    return;
                };
                let Some(entry) = self.trips.get_mut(&details.trip).map(Arc::make_mut) else {
                    return;
                };
                entry.tried.push(key);
                entry.driver_key = Some(key);
                entry.retry_at_ms = None;
                self.waiting.remove(&details.trip);
                self.batch_leave(details.trip);
                self.offers.insert(
                    details.offer,
                    PendingOffer {
                        details: details.clone(),
                        driver: key,
                    },
                );
                self.set_status(key, DriverStatus::Offered(details.offer));
                self.timers
                    .push(details.expires_at_ms, Timer::OfferDeadline(details.offer));
            }
            EventKind::OfferAccepted(o) => {
                // The driver and the trip move on with the TripAssigned that follows.
                self.end_offer(o.offer, OfferOutcome::Accepted);
            }
            EventKind::OfferDeclined(o) => {
                self.offer_failed(o.offer, o.trip, OfferOutcome::Declined, now)
            }
            EventKind::OfferExpired(o) => {
                self.offer_failed(o.offer, o.trip, OfferOutcome::Expired, now)
            }
            EventKind::OfferCancelled(o, _) => {
                // A driver going offline is taken offline by the DriverOffline that follows.
                self.offer_failed(o.offer, o.trip, OfferOutcome::Cancelled, now)
            }
            EventKind::TripAssigned { trip, driver, .. } => {
                let Some(key) = self.driver_key(driver.as_str()) else {
                    return;
                };
                let Some(entry) = self.trips.get_mut(trip).map(Arc::make_mut) else {
                    return;
                };
                entry.driver_key = Some(key);
                self.set_status(key, DriverStatus::OnTrip(*trip));
            }
            EventKind::DriverArrived { .. } | EventKind::TripStarted { .. } => {}
            EventKind::TripCompleted { trip, driver } => {
                if let (Some(key), Some(e)) =
                    (self.driver_key(driver.as_str()), self.trips.get(trip))
                {
                    self.live.set_position(key, e.trip.dropoff);
                    let d = &mut self.drivers[key.0 as usize];
                    d.trips_today = d.trips_on(now) + 1;
                    d.trips_day = day_of(now);
                    d.free_since_ms = now;
                    self.set_status(key, DriverStatus::Available);
                }
                self.finish_trip(*trip, TripStatus::Completed, now);
            }
            EventKind::TripCancelled { trip, driver, .. } => {
                if let Some(key) = driver.as_ref().and_then(|d| self.driver_key(d.as_str())) {
                    self.drivers[key.0 as usize].free_since_ms = now;
                    self.set_status(key, DriverStatus::Available);
                }
                self.finish_trip(*trip, TripStatus::Cancelled, now);
            }
            EventKind::NoDrivers { trip, .. } => {
                self.finish_trip(*trip, TripStatus::NoDrivers, now)
            }
            EventKind::SearchRetryScheduled { trip, retry_at_ms } => {
                if let Some(entry) = self.trips.get_mut(trip).map(Arc::make_mut) {
                    entry.retry_at_ms = Some(*retry_at_ms);
                    self.waiting.insert(*trip);
                    self.timers.push(*retry_at_ms, Timer::Retry(*trip));
                }
            }
            EventKind::BatchFlushed {
                next_flush_at_ms, ..
            } => {
                if self.batch.is_empty() {
                    self.batch_flush_at_ms = None;
                } else {
                    self.arm_flush(*next_flush_at_ms);
                }
            }
            // Who serves the region is not dispatch state: only the offset moves.
            EventKind::RegionTakenOver { .. } => {}
        }
    }

    /// A driver from another region arrives available, with the counters it had there (a
    /// driver this region knows as online already is left as it is: a move never doubles one).
    fn driver_joined(&mut self, j: &RegionJoin, offset: u64) {
        let key = match self.driver_key(j.driver.as_str()) {
            Some(key) => key,
            None => {
                let key = DriverKey(self.drivers.len() as u32);
                self.drivers.push(DriverRecord {
                    id: j.driver.clone(),
                    key,
                    status: DriverStatus::Offline,
                    rating: j.rating,
                    class: j.class,
                    gateway: None,
                    acceptance_rate: j.acceptance_rate,
                    trips_today: j.trips_today,
                    trips_day: j.trips_day,
                    free_since_ms: j.free_since_ms,
                    online_offset: offset,
                });
                self.driver_keys.insert(j.driver.clone(), key);
                self.stats.drivers_offline += 1;
                key
            }
        };
        if self.drivers[key.0 as usize].status != DriverStatus::Offline {
            return;
        }
        self.live.set_position(key, j.position);
        let d = &mut self.drivers[key.0 as usize];
        d.rating = j.rating;
        d.class = j.class;
        d.gateway = j.gateway.clone();
        d.acceptance_rate = j.acceptance_rate;
        d.trips_today = j.trips_today;
        d.trips_day = j.trips_day;
        d.free_since_ms = j.free_since_ms;
        d.online_offset = offset;
        self.set_status(key, DriverStatus::Available);
    }

    fn trip_requested(&mut self, event: &Event) {
        let Some(trip) = Trip::requested(event, self.rules.dispatch_timeout_ms) else {
            return;
        };
        let id = trip.id;
        self.open_by_rider.insert(trip.rider.clone(), id);
        if let Some(request_id) = &trip.request_id {
            self.by_request
                .insert((trip.rider.clone(), request_id.clone()), id);
        }
        self.stats.trips_requested += 1;
        // Batch policy: a request waits for the next flush. One that nobody online could
        // serve ends at once as NO_DRIVERS, in the event that follows, which leaves the batch
        // again (logs written when only requests with candidates joined replay the same).
        let joins = trip.policy == MatchPolicy::Batch;
        self.trips.insert(
            id,
            Arc::new(TripEntry {
                trip,
                driver_key: None,
                tried: Vec::new(),
                retry_at_ms: None,
            }),
        );
        self.needed.trip_added(id);
        if joins {
            self.batch_join(id, event.at_ms);
        }
    }

    /// Moves `trip` from the snapshot's encoded ended trips (`cold.rs`) to the trip map, where
    /// an event can change it (with its request key, as `trip_requested` files it).
    fn warm(&mut self, trip: TripId) {
        if self.trips.contains_key(&trip) {
            return;
        }
        let Some(entry) = self.cold.take(trip) else {
            return;
        };
        if let Some(request_id) = &entry.trip.request_id {
            self.by_request
                .insert((entry.trip.rider.clone(), request_id.clone()), trip);
        }
        self.trips.insert(trip, entry);
        self.needed.trip_added(trip);
    }

    /// Keeps driver counters and index membership in step with the driver's status.
    fn set_status(&mut self, key: DriverKey, status: DriverStatus) {
        let d = &mut self.drivers[key.0 as usize];
        let old = d.status;
        d.status = status;
        match (
            old == DriverStatus::Offline,
            status == DriverStatus::Offline,
        ) {
            (true, false) => self.needed.driver_online(d.online_offset, key),
            (false, true) => self.needed.driver_offline(d.online_offset, key),
            _ => {}
        }
        *self.state_counter(old) -= 1;
        *self.state_counter(status) += 1;
        match (
            old == DriverStatus::Available,
            status == DriverStatus::Available,
        ) {
            (true, false) => {
                self.index.remove(key);
            }
            (_, true) => self.index.upsert(key, self.live.position(key)),
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

    /// Removes a pending offer, remembers how it ended and learns the driver's acceptance.
    fn end_offer(&mut self, offer: OfferId, outcome: OfferOutcome) -> Option<PendingOffer> {
        let pending = self.offers.remove(&offer)?;
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
        while self.ended_order.len() > self.rules.ended_offer_memory {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended_offers.remove(&old);
            }
        }
        Some(pending)
    }

    /// An offer ended without assignment: its driver is free, its trip searches again (a
    /// batch trip by joining the next batch, unless its dispatch deadline has passed).
    fn offer_failed(&mut self, offer: OfferId, trip: TripId, outcome: OfferOutcome, now: u64) {
        if let Some(pending) = self.end_offer(offer, outcome) {
            self.set_status(pending.driver, DriverStatus::Available);
        }
        let Some(entry) = self.trips.get_mut(&trip).map(Arc::make_mut) else {
            return;
        };
        entry.driver_key = None;
        let t = &entry.trip;
        if t.policy == MatchPolicy::Batch && now < t.dispatch_deadline_ms {
            self.batch_join(trip, now);
        }
    }

    fn finish_trip(&mut self, trip_id: TripId, status: TripStatus, now_ms: u64) {
        let Some(entry) = self.trips.get_mut(&trip_id).map(Arc::make_mut) else {
            return;
        };
        entry.retry_at_ms = None;
        self.waiting.remove(&trip_id);
        let rider = entry.trip.rider.clone();
        if self.open_by_rider.get(&rider) == Some(&trip_id) {
            self.open_by_rider.remove(&rider);
        }
        self.batch_leave(trip_id);
        match status {
            TripStatus::Completed => self.stats.trips_completed += 1,
            TripStatus::Cancelled => self.stats.trips_cancelled += 1,
            _ => self.stats.trips_no_drivers += 1,
        }
        self.timers.push(
            now_ms.saturating_add(self.rules.trip_retention_ms),
            Timer::Forget(trip_id),
        );
    }

    /// A batch trip waits for the next flush; the first to join an empty batch arms it one
    /// window ahead, so no trip waits longer than a window for its first offer.
    fn batch_join(&mut self, trip: TripId, now_ms: u64) {
        self.batch.insert(trip);
        if self.batch_flush_at_ms.is_none() {
            self.arm_flush(now_ms.saturating_add(self.rules.batch_window_ms));
        }
    }

    fn batch_leave(&mut self, trip: TripId) {
        if self.batch.remove(&trip) && self.batch.is_empty() {
            self.batch_flush_at_ms = None;
        }
    }

    fn arm_flush(&mut self, at_ms: u64) {
        self.batch_flush_at_ms = Some(at_ms);
        self.timers.push(at_ms, Timer::BatchFlush);
    }
}
