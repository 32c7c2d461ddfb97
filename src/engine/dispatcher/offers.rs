//! Offer decisions: a driver's answer, the offer to a chosen candidate, and what a trip does
//! after an offer failed (the next candidate, the next batch, a retry later, or NO_DRIVERS at
//! the dispatch deadline).

use std::sync::Arc;

use super::{Choice, Decide, Dispatcher};
use crate::domain::{ExternalId, LatLng, OfferId, TripId};
use crate::engine::records::Trip;
use crate::error::Error;
use crate::events::{EventKind, MatchPolicy, OfferDetails, OfferRef, TripStatus};

impl Decide<'_> {
    /// Returns the trip to search again for after a decline.
    fn respond(
        &mut self,
        offer: OfferId,
        driver: &ExternalId,
        accept: bool,
    ) -> Result<(TripId, Option<TripId>), Error> {
        let Some(pending) = self.s.offer(offer) else {
            return Err(self.offer_gone(offer));
        };
        let details = &pending.details;
        if details.driver != *driver {
            return Err(Error::PermissionDenied(format!(
                "offer {offer} was not made to driver {driver}; only its driver may answer it"
            )));
        }
        let trip_id = details.trip;
        let o = offer_ref(details);
        if accept {
            let policy = self
                .s
                .trip(trip_id)
                .map_or(MatchPolicy::Greedy, |t| t.policy);
            let pickup_eta_s = details.pickup_eta_s;
            self.emit(EventKind::OfferAccepted(o));
            self.emit(EventKind::TripAssigned {
                trip: trip_id,
                driver: driver.clone(),
                pickup_eta_s,
                policy,
            });
            Ok((trip_id, None))
        } else {
            self.emit(EventKind::OfferDeclined(o));
            Ok((trip_id, Some(trip_id)))
        }
    }

    fn offer_gone(&self, offer: OfferId) -> Error {
        match self.s.offer_outcome(offer) {
            Some(outcome) => Error::FailedPrecondition(format!(
                "offer {offer} has already ended: it was {outcome}; an offer can be answered once, \
                 within its window"
            )),
            None => Error::NotFound(format!(
                "unknown offer {offer} (never issued, or ended long ago)"
            )),
        }
    }

    /// The offer of a trip to a chosen candidate; its id is the offset of its OfferSent.
    pub(super) fn offer_for(
        &self,
        trip: TripId,
        pickup: LatLng,
        dropoff: LatLng,
        attempt: u32,
        surge_multiplier: f64,
        choice: &Choice,
    ) -> Arc<OfferDetails> {
        let d = self.s.record(choice.key);
        Arc::new(OfferDetails {
            offer: OfferId(self.next_offset()),
            trip,
            driver: d.id.clone(),
            gateway: d.gateway.clone(),
            pickup,
            dropoff,
            pickup_eta_s: choice.eta_s,
            eta_source: choice.eta_source,
            pickup_distance_m: choice.distance_m,
            expires_at_ms: self.now_ms.saturating_add(self.rules.offer_timeout_ms),
            score: choice.score,
            attempt,
            surge_multiplier,
        })
    }

    /// Offers a trip in the state to a chosen candidate.
    pub(super) fn offer_trip(&mut self, trip: &Trip, choice: &Choice) {
        let offer = self.offer_for(
            trip.id,
            trip.pickup,
            trip.dropoff,
            trip.offers_made + 1,
            trip.surge_multiplier,
            choice,
        );
        self.emit(EventKind::OfferSent(offer));
    }

    /// A searching trip's next step: past its dispatch deadline NO_DRIVERS; a batch trip has
    /// already joined the next batch (applying the failure did that); a greedy trip is offered
    /// its best untried candidate, or retries after the retry interval.
    pub(crate) fn continue_search(&mut self, trip_id: TripId) {
        let Some(entry) = self.s.entry(trip_id) else {
            return;
        };
        let trip = &entry.trip;
        if trip.status != TripStatus::Searching {
            return;
        }
        let deadline = trip.dispatch_deadline_ms;
        if self.now_ms >= deadline {
            self.no_drivers(trip);
            return;
        }
        if trip.policy == MatchPolicy::Batch {
            return;
        }
        match self.find_best(trip.pickup, trip.class, &entry.tried).0 {
            Some(choice) => self.offer_trip(trip, &choice),
            None => {
                let retry_at_ms = self
                    .now_ms
                    .saturating_add(self.rules.retry_interval_ms)
                    .min(deadline);
                self.emit(EventKind::SearchRetryScheduled {
                    trip: trip_id,
                    retry_at_ms,
                });
            }
        }
    }

    pub(super) fn no_drivers(&mut self, trip: &Trip) {
        self.emit(EventKind::NoDrivers {
            trip: trip.id,
            surge_multiplier: trip.surge_multiplier,
            offers_made: trip.offers_made,
        });
    }
}

impl Dispatcher {
    /// A driver answers an offer.
    pub fn respond(
        &mut self,
        now_ms: u64,
        offer: OfferId,
        driver: &ExternalId,
        accept: bool,
    ) -> Result<Trip, Error> {
        let (trip, search) = self.decide(now_ms, |c| c.respond(offer, driver, accept))?;
        self.search_again(now_ms, search);
        if !accept {
            // The decliner is free again: a rider waiting nearby gets it now.
            self.serve_waiting(now_ms, self.state.driver_key(driver.as_str()));
        }
        self.trip_snapshot(trip)
    }
}

/// The reference to an offer that events ending it carry.
pub(crate) fn offer_ref(details: &OfferDetails) -> OfferRef {
    OfferRef {
        offer: details.offer,
        trip: details.trip,
        driver: details.driver.clone(),
        gateway: details.gateway.clone(),
    }
}
