//! Trip decisions: a request (deduplicated by request id; offered at once, batched, or ended as
//! NO_DRIVERS), the assigned driver's steps, and the rider's cancel.

use super::{Decide, Dispatcher, TripAction, TripRequest, offer_ref, unknown_trip};
use crate::domain::{ExternalId, TripId};
use crate::engine::records::Trip;
use crate::error::Error;
use crate::events::{CancelledBy, EventKind, MatchPolicy, OfferCancelReason, TripStatus};

impl Decide<'_> {
    /// A retry of an earlier request (same rider and request id): that trip, or a refusal if
    /// the retry asks for something else. `None`: a new request, if the rider may make one.
    fn check_request(&self, req: &TripRequest) -> Result<Option<Trip>, Error> {
        if let Some(request_id) = &req.request_id
            && let Some(trip) = self.s.trip_by_request(&req.rider, request_id)
        {
            if trip.pickup != req.pickup || trip.dropoff != req.dropoff || trip.class != req.class {
                return Err(Error::FailedPrecondition(format!(
                    "request_id {request_id} was already used by rider {} for trip {} with a \
                     different pickup, drop-off or vehicle class; use a new request_id for a \
                     new trip",
                    req.rider, trip.id
                )));
            }
            return Ok(Some(trip.clone()));
        }
        if let Some(open) = self.s.open_trip_of(&req.rider) {
            // An open trip is in memory (ended trips leave the rider index first).
            let status = self.s.trip(open).map(|t| t.status.to_string());
            return Err(Error::FailedPrecondition(format!(
                "rider {} already has open trip {open} ({}); cancel it or wait for it to end",
                req.rider,
                status.as_deref().unwrap_or("open")
            )));
        }
        Ok(None)
    }

    /// A new trip, then its first step: an offer to the best candidate (greedy), the pending
    /// batch (batch; joining is part of applying TripRequested), or NO_DRIVERS when nobody is
    /// in range.
    fn request_trip(&mut self, req: TripRequest, surge_multiplier: f64) -> TripId {
        // A trip's id is the offset of its TripRequested event: unique forever, with no counter
        // that recovery would have to rebuild.
        let id = TripId(self.next_offset());
        let (best, candidates) = self.find_best(req.pickup, req.class, &[]);
        let (pickup, dropoff) = (req.pickup, req.dropoff);
        self.emit(EventKind::TripRequested {
            trip: id,
            rider: req.rider,
            request_id: req.request_id,
            pickup,
            dropoff,
            class: req.class,
            surge_multiplier,
            candidates,
            policy: self.rules.policy,
        });
        match (best, self.rules.policy) {
            (Some(choice), MatchPolicy::Greedy) => {
                let offer = self.offer_for(id, pickup, dropoff, 1, surge_multiplier, &choice);
                self.emit(EventKind::OfferSent(offer));
            }
            (Some(_), MatchPolicy::Batch) => {}
            // Nobody free, but someone online who could serve it is in range: it waits (for a
            // retry, or a driver freeing up nearby; batch: the next flush) until its dispatch
            // deadline.
            (None, policy) if self.anyone_could_serve(pickup, req.class) => {
                if policy == MatchPolicy::Greedy {
                    let retry_at_ms = self.now_ms.saturating_add(
                        self.rules
                            .retry_interval_ms
                            .min(self.rules.dispatch_timeout_ms),
                    );
                    self.emit(EventKind::SearchRetryScheduled {
                        trip: id,
                        retry_at_ms,
                    });
                }
            }
            (None, _) => self.emit(EventKind::NoDrivers {
                trip: id,
                surge_multiplier,
                offers_made: 0,
            }),
        }
        id
    }

    fn trip_action(
        &mut self,
        trip_id: TripId,
        driver: &ExternalId,
        action: TripAction,
    ) -> Result<(), Error> {
        let entry = self.s.entry(trip_id).ok_or_else(|| unknown_trip(trip_id))?;
        let trip = &entry.trip;
        let key = match (&trip.driver, entry.driver_key) {
            (Some(id), Some(key)) if id == driver => key,
            _ => {
                return Err(Error::PermissionDenied(format!(
                    "trip {trip_id} is not assigned to driver {driver}"
                )));
            }
        };
        let status = trip.status;
        let allowed = match action {
            TripAction::Arrive => status == TripStatus::Accepted,
            TripAction::Start => status == TripStatus::Arrived,
            TripAction::Complete => status == TripStatus::InProgress,
            TripAction::Cancel => matches!(
                status,
                TripStatus::Accepted | TripStatus::Arrived | TripStatus::InProgress
            ),
        };
        if !allowed {
            let hint = match status {
                TripStatus::Offered => "; accept the offer first",
                s if s.is_terminal() => "; the trip has ended",
                _ => "",
            };
            return Err(Error::FailedPrecondition(format!(
                "cannot {} trip {trip_id}: it is {status}{hint}",
                action.verb()
            )));
        }
        let driver = driver.clone();
        let kind = match action {
            TripAction::Arrive => EventKind::DriverArrived {
                trip: trip_id,
                driver,
            },
            TripAction::Start => EventKind::TripStarted {
                trip: trip_id,
                driver,
            },
            TripAction::Complete => EventKind::TripCompleted {
                trip: trip_id,
                driver,
            },
            TripAction::Cancel => EventKind::TripCancelled {
                trip: trip_id,
                driver: Some(driver),
                gateway: self.s.record(key).gateway.clone(),
                by: CancelledBy::Driver,
                previous: status,
            },
        };
        self.emit(kind);
        Ok(())
    }

    fn cancel_trip(&mut self, trip_id: TripId, rider: &ExternalId) -> Result<(), Error> {
        let entry = self.s.entry(trip_id).ok_or_else(|| unknown_trip(trip_id))?;
        let trip = &entry.trip;
        if trip.rider != *rider {
            return Err(Error::PermissionDenied(format!(
                "trip {trip_id} was not requested by rider {rider}"
            )));
        }
        let previous = trip.status;
        if previous.is_terminal() {
            return Err(Error::FailedPrecondition(format!(
                "trip {trip_id} has already ended: it is {previous}"
            )));
        }
        let mut released = (None, None);
        if let Some(offer) = trip.offer.and_then(|o| self.s.offer(o)) {
            self.emit(EventKind::OfferCancelled(
                offer_ref(&offer.details),
                OfferCancelReason::TripCancelled,
            ));
        } else if let (Some(id), Some(key)) = (&trip.driver, entry.driver_key) {
            released = (Some(id.clone()), self.s.record(key).gateway.clone());
        }
        self.emit(EventKind::TripCancelled {
            trip: trip_id,
            driver: released.0,
            gateway: released.1,
            by: CancelledBy::Rider,
            previous,
        });
        Ok(())
    }
}

impl Dispatcher {
    /// Creates a trip and offers it to the best candidate (greedy policy) or adds it to the
    /// pending batch (batch policy), or ends it at once as NO_DRIVERS when nobody is in range.
    /// Returns the trip and whether it was a deduplicated retry.
    pub fn request_trip(&mut self, now_ms: u64, req: TripRequest) -> Result<(Trip, bool), Error> {
        if let Some(trip) = self.decide(now_ms, |c| c.check_request(&req))? {
            return Ok((trip, true));
        }
        // Demand and the reading are the state's non-durable part; the multiplier travels in
        // the event.
        self.state.record_demand(req.pickup, req.class, now_ms);
        let surge = self
            .state
            .surge_reading(req.pickup, req.class, now_ms)
            .multiplier;
        let id = self.decide(now_ms, |c| c.request_trip(req, surge));
        Ok((self.trip_snapshot(id)?, false))
    }

    /// The assigned driver moves the trip along (arrive, start, complete) or cancels it.
    pub fn trip_action(
        &mut self,
        now_ms: u64,
        trip_id: TripId,
        driver: &ExternalId,
        action: TripAction,
    ) -> Result<Trip, Error> {
        self.decide(now_ms, |c| c.trip_action(trip_id, driver, action))?;
        if matches!(action, TripAction::Complete | TripAction::Cancel) {
            self.serve_waiting(now_ms, self.state.driver_key(driver.as_str()));
        }
        self.trip_snapshot(trip_id)
    }

    /// The rider cancels a non-terminal trip; any offered or assigned driver is released.
    pub fn cancel_trip(
        &mut self,
        now_ms: u64,
        trip_id: TripId,
        rider: &ExternalId,
    ) -> Result<Trip, Error> {
        let driver = self.state.entry(trip_id).and_then(|e| e.driver_key);
        self.decide(now_ms, |c| c.cancel_trip(trip_id, rider))?;
        self.serve_waiting(now_ms, driver);
        self.trip_snapshot(trip_id)
    }
}
