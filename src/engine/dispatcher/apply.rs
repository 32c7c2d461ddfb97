//! The only place dispatch state changes: applying an event.
//!
//! Command handlers validate, decide, and emit events; `apply` turns each event into its state
//! change. Because live operation and recovery both go through `apply`, replaying the durable
//! log rebuilds exactly the state that produced it (drivers, trips, pending offers with their
//! deadlines, acceptance rates, counters). What is not an event is not durable by design:
//! driver positions between events (drivers re-report within seconds) and surge demand.
//!
//! `apply` never panics on an event that does not fit the current state (a log from another
//! version, a hand-edited file): it skips what it cannot attach, so recovery degrades instead
//! of refusing to start.

use std::cmp::Reverse;

use super::{ACCEPTANCE_ALPHA, ACCEPTANCE_PRIOR, Dispatcher, Timer};
use crate::domain::{DriverKey, OfferId, TripId};
use crate::engine::records::{Driver, DriverStatus, OfferOutcome, PendingOffer, Trip, day_of};
use crate::error::Error;
use crate::events::{Event, EventKind, TripStatus};

impl Dispatcher {
    /// Rebuilds state from one logged event (recovery). Events must come in offset order, the
    /// first at this dispatcher's `next_offset`.
    pub fn replay(&mut self, event: &Event) -> Result<(), Error> {
        if event.offset != self.next_offset {
            return Err(Error::FailedPrecondition(format!(
                "event log gap: expected offset {}, found {}",
                self.next_offset, event.offset
            )));
        }
        self.apply(event);
        self.next_offset = event.offset + 1;
        Ok(())
    }

    /// Starts a fresh dispatcher's offsets at `offset`: recovery from a log whose oldest
    /// segments retention has deleted begins there. Refused once anything has happened.
    pub fn resume_at(&mut self, offset: u64) -> Result<(), Error> {
        if !self.drivers.is_empty() || !self.trips.is_empty() || self.has_events() {
            return Err(Error::FailedPrecondition(
                "resume_at is only for a fresh dispatcher".into(),
            ));
        }
        self.next_offset = offset;
        Ok(())
    }

    /// Ends a recovery: trips that were searching search again at `now_ms`. Call `fire_due`
    /// afterwards so offers that expired while the engine was down expire and cascade.
    pub fn finish_recovery(&mut self, now_ms: u64) {
        let searching: Vec<TripId> = self
            .trips
            .values()
            .filter(|t| t.status == TripStatus::Searching)
            .map(|t| t.id)
            .collect();
        for trip in searching {
            self.timers.push(Reverse((now_ms, Timer::Retry(trip))));
        }
    }

    /// Applies one event's state change.
    pub(super) fn apply(&mut self, event: &Event) {
        let now = event.at_ms;
        match &event.kind {
            EventKind::DriverOnline {
                driver,
                position,
                rating,
                class,
                gateway,
            } => {
                let key = match self.driver_keys.get(driver.as_str()) {
                    Some(&key) => key,
                    None => {
                        let key = DriverKey(self.drivers.len() as u32);
                        self.drivers.push(Driver {
                            id: driver.clone(),
                            key,
                            status: DriverStatus::Offline,
                            position: *position,
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
                let d = &mut self.drivers[key.0 as usize];
                d.position = *position;
                d.rating = *rating;
                d.class = *class;
                d.gateway = gateway.clone();
                if d.status == DriverStatus::Offline {
                    d.free_since_ms = now;
                    d.online_offset = event.offset;
                    self.set_status(key, DriverStatus::Available);
                }
            }
            EventKind::DriverOffline { driver } => {
                if let Some(&key) = self.driver_keys.get(driver.as_str()) {
                    self.set_status(key, DriverStatus::Offline);
                }
            }
            EventKind::TripRequested {
                trip,
                rider,
                request_id,
                pickup,
                dropoff,
                class,
                surge_multiplier,
                policy,
                ..
            } => {
                self.trips.insert(
                    *trip,
                    Trip {
                        id: *trip,
                        rider: rider.clone(),
                        request_id: request_id.clone(),
                        status: TripStatus::Searching,
                        pickup: *pickup,
                        dropoff: *dropoff,
                        class: *class,
                        driver: None,
                        offer: None,
                        tried: Vec::new(),
                        pickup_eta_s: 0.0,
                        surge_multiplier: *surge_multiplier,
                        offers_made: 0,
                        requested_at_ms: now,
                        assigned_at_ms: 0,
                        ended_at_ms: 0,
                        dispatch_deadline_ms: now.saturating_add(self.dispatch_timeout_ms),
                        cancelled_by: None,
                        policy: *policy,
                        last_event_offset: event.offset,
                    },
                );
                self.open_by_rider.insert(rider.clone(), *trip);
                if let Some(request_id) = request_id {
                    self.by_request
                        .insert((rider.clone(), request_id.clone()), *trip);
                }
                self.stats.trips_requested += 1;
            }
            EventKind::OfferSent(details) => {
                let Some(&key) = self.driver_keys.get(details.driver.as_str()) else {
                    return;
                };
                let Some(trip) = self.trips.get_mut(&details.trip) else {
                    return;
                };
                trip.offers_made = details.attempt;
                trip.tried.push(key);
                trip.status = TripStatus::Offered;
                trip.offer = Some(details.offer);
                trip.driver = Some((key, details.driver.clone()));
                trip.pickup_eta_s = details.pickup_eta_s;
                self.offers.insert(
                    details.offer,
                    PendingOffer {
                        details: details.clone(),
                        driver: key,
                    },
                );
                self.set_status(key, DriverStatus::Offered(details.offer));
                self.timers.push(Reverse((
                    details.expires_at_ms,
                    Timer::OfferDeadline(details.offer),
                )));
            }
            EventKind::OfferAccepted(o) => {
                // The driver and the trip move on with the TripAssigned that follows.
                self.end_offer(o.offer, OfferOutcome::Accepted);
            }
            EventKind::OfferDeclined(o) => {
                self.offer_failed(o.offer, o.trip, OfferOutcome::Declined)
            }
            EventKind::OfferExpired(o) => self.offer_failed(o.offer, o.trip, OfferOutcome::Expired),
            EventKind::OfferCancelled(o, _) => {
                // A driver going offline is taken offline by the DriverOffline that follows.
                self.offer_failed(o.offer, o.trip, OfferOutcome::Cancelled)
            }
            EventKind::TripAssigned { trip, driver, .. } => {
                let Some(&key) = self.driver_keys.get(driver.as_str()) else {
                    return;
                };
                let Some(t) = self.trips.get_mut(trip) else {
                    return;
                };
                t.status = TripStatus::Accepted;
                t.offer = None;
                t.driver = Some((key, driver.clone()));
                t.assigned_at_ms = now;
                self.set_status(key, DriverStatus::OnTrip(*trip));
            }
            EventKind::DriverArrived { trip, .. } => {
                self.set_trip_status(*trip, TripStatus::Arrived)
            }
            EventKind::TripStarted { trip, .. } => {
                self.set_trip_status(*trip, TripStatus::InProgress)
            }
            EventKind::TripCompleted { trip, driver } => {
                if let (Some(&key), Some(t)) =
                    (self.driver_keys.get(driver.as_str()), self.trips.get(trip))
                {
                    let dropoff = t.dropoff;
                    let d = &mut self.drivers[key.0 as usize];
                    d.position = dropoff;
                    d.trips_today = d.trips_on(now) + 1;
                    d.trips_day = day_of(now);
                    d.free_since_ms = now;
                    self.set_status(key, DriverStatus::Available);
                }
                self.finish_trip(*trip, TripStatus::Completed, now);
            }
            EventKind::TripCancelled {
                trip, driver, by, ..
            } => {
                if let Some(&key) = driver
                    .as_ref()
                    .and_then(|d| self.driver_keys.get(d.as_str()))
                {
                    self.drivers[key.0 as usize].free_since_ms = now;
                    self.set_status(key, DriverStatus::Available);
                }
                if let Some(t) = self.trips.get_mut(trip) {
                    t.cancelled_by = Some(*by);
                }
                self.finish_trip(*trip, TripStatus::Cancelled, now);
            }
            EventKind::NoDrivers { trip, .. } => {
                self.finish_trip(*trip, TripStatus::NoDrivers, now)
            }
        }
        if let Some(trip) = event.kind.trip().and_then(|t| self.trips.get_mut(&t)) {
            trip.last_event_offset = event.offset;
        }
    }

    /// Keeps driver counters and index membership in step with the driver's status.
    pub(super) fn set_status(&mut self, key: DriverKey, status: DriverStatus) {
        let d = &mut self.drivers[key.0 as usize];
        let old = d.status;
        d.status = status;
        let position = d.position;
        *self.state_counter(old) -= 1;
        *self.state_counter(status) += 1;
        match (
            old == DriverStatus::Available,
            status == DriverStatus::Available,
        ) {
            (true, false) => {
                self.index.remove(key);
            }
            (_, true) => self.index.upsert(key, position),
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

    fn set_trip_status(&mut self, trip: TripId, status: TripStatus) {
        if let Some(t) = self.trips.get_mut(&trip) {
            t.status = status;
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
        while self.ended_order.len() > self.ended_offer_memory {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended_offers.remove(&old);
            }
        }
        Some(pending)
    }

    /// An offer ended without assignment: its driver is free, its trip searches again.
    fn offer_failed(&mut self, offer: OfferId, trip: TripId, outcome: OfferOutcome) {
        if let Some(pending) = self.end_offer(offer, outcome) {
            self.set_status(pending.driver, DriverStatus::Available);
        }
        if let Some(t) = self.trips.get_mut(&trip) {
            t.status = TripStatus::Searching;
            t.offer = None;
            t.driver = None;
        }
    }

    fn finish_trip(&mut self, trip_id: TripId, status: TripStatus, now_ms: u64) {
        let Some(trip) = self.trips.get_mut(&trip_id) else {
            return;
        };
        trip.status = status;
        trip.ended_at_ms = now_ms;
        let rider = trip.rider.clone();
        if self.open_by_rider.get(&rider) == Some(&trip_id) {
            self.open_by_rider.remove(&rider);
        }
        match status {
            TripStatus::Completed => self.stats.trips_completed += 1,
            TripStatus::Cancelled => self.stats.trips_cancelled += 1,
            _ => self.stats.trips_no_drivers += 1,
        }
        self.timers.push(Reverse((
            now_ms.saturating_add(self.trip_retention_ms),
            Timer::Forget(trip_id),
        )));
    }
}
