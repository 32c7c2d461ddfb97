//! Follows the event bus and turns dispatch events into metrics and trip log lines.
//!
//! Deriving them from events rather than instrumenting the dispatcher keeps the hot loop free
//! of observability code, and every number agrees with the event stream subscribers see. One
//! info line per trip state change (never per location update) goes to the `dispatch::trips`
//! target, so `RUST_LOG=dispatch::trips=warn` silences them.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::metrics::{Metrics, OfferOutcome, TripEnd};
use crate::domain::OfferId;
use crate::events::{Event, EventBus, EventKind, OfferCancelReason};

/// Events copied out of the bus per read lock.
const READ_BATCH: usize = 1024;

/// Starts the follower at the bus's head; it ends when the bus closes.
pub fn spawn_follower(bus: Arc<EventBus>, metrics: Arc<Metrics>, from: u64) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut watch = bus.watch();
        let mut observer = Observer {
            metrics,
            sent_at_ms: HashMap::new(),
        };
        let mut from = from;
        let mut batch = Vec::with_capacity(READ_BATCH);
        loop {
            batch.clear();
            match bus.read_from(from, READ_BATCH, &mut batch) {
                Err(lagged) => {
                    tracing::warn!(
                        missed = lagged.oldest_offset - from,
                        "metrics fell behind the event ring; some events were not counted"
                    );
                    from = lagged.oldest_offset;
                    // Offers whose end we may have missed would otherwise stay forever.
                    observer.sent_at_ms.clear();
                    continue;
                }
                Ok(next) => {
                    for event in &batch {
                        observer.observe(event);
                    }
                    if next != from {
                        from = next;
                        observer.metrics.followed_up_to(from);
                        continue;
                    }
                }
            }
            if watch.changed().await.is_err() || watch.borrow().is_none() {
                return;
            }
        }
    })
}

struct Observer {
    metrics: Arc<Metrics>,
    /// When each pending offer was sent, for time-to-accept. Bounded by the pending offers.
    sent_at_ms: HashMap<OfferId, u64>,
}

impl Observer {
    fn observe(&mut self, event: &Event) {
        let m = &self.metrics;
        let at = event.at_ms;
        match &event.kind {
            EventKind::DriverOnline { .. }
            | EventKind::DriverOffline { .. }
            | EventKind::DriverProfileUpdated { .. }
            | EventKind::SearchRetryScheduled { .. }
            | EventKind::BatchFlushed { .. } => {}
            EventKind::TripRequested {
                trip,
                rider,
                candidates,
                surge_multiplier,
                ..
            } => {
                m.trip_requested();
                tracing::info!(target: "dispatch::trips", %trip, %rider, candidates,
                    surge = surge_multiplier, "trip SEARCHING");
            }
            EventKind::OfferSent(o) => {
                m.offer_sent();
                self.sent_at_ms.insert(o.offer, at);
                tracing::info!(target: "dispatch::trips", trip = %o.trip, driver = %o.driver,
                    offer = %o.offer, attempt = o.attempt, pickup_eta_s = o.pickup_eta_s.round(),
                    "trip OFFERED");
            }
            EventKind::OfferAccepted(o) => {
                m.offer_ended(OfferOutcome::Accepted);
                if let Some(sent) = self.sent_at_ms.remove(&o.offer) {
                    m.time_to_accept
                        .observe(at.saturating_sub(sent) as f64 / 1000.0);
                }
            }
            EventKind::OfferDeclined(o) | EventKind::OfferExpired(o) => {
                let declined = matches!(event.kind, EventKind::OfferDeclined(_));
                m.offer_ended(if declined {
                    OfferOutcome::Declined
                } else {
                    OfferOutcome::Expired
                });
                self.sent_at_ms.remove(&o.offer);
                tracing::info!(target: "dispatch::trips", trip = %o.trip, driver = %o.driver,
                    offer = %o.offer, why = if declined { "declined" } else { "expired" },
                    "trip SEARCHING");
            }
            EventKind::OfferCancelled(o, why) => {
                m.offer_ended(OfferOutcome::Cancelled);
                self.sent_at_ms.remove(&o.offer);
                // A cancelled trip logs its own line; a driver going offline sends it back.
                if *why == OfferCancelReason::DriverOffline {
                    tracing::info!(target: "dispatch::trips", trip = %o.trip,
                        driver = %o.driver, offer = %o.offer, why = "driver offline",
                        "trip SEARCHING");
                }
            }
            EventKind::TripAssigned {
                trip,
                driver,
                pickup_eta_s,
                ..
            } => {
                m.pickup_eta.observe(*pickup_eta_s);
                tracing::info!(target: "dispatch::trips", %trip, %driver,
                    pickup_eta_s = pickup_eta_s.round(), "trip ACCEPTED");
            }
            EventKind::DriverArrived { trip, driver } => {
                tracing::info!(target: "dispatch::trips", %trip, %driver, "trip ARRIVED");
            }
            EventKind::TripStarted { trip, driver } => {
                tracing::info!(target: "dispatch::trips", %trip, %driver, "trip IN_PROGRESS");
            }
            EventKind::TripCompleted { trip, driver } => {
                m.trip_ended(TripEnd::Completed);
                tracing::info!(target: "dispatch::trips", %trip, %driver, "trip COMPLETED");
            }
            EventKind::TripCancelled {
                trip, by, previous, ..
            } => {
                m.trip_ended(TripEnd::Cancelled);
                tracing::info!(target: "dispatch::trips", %trip, by = ?by, previous = ?previous,
                    "trip CANCELLED");
            }
            EventKind::NoDrivers {
                trip, offers_made, ..
            } => {
                m.trip_ended(TripEnd::NoDrivers);
                tracing::info!(target: "dispatch::trips", %trip, offers_made, "trip NO_DRIVERS");
            }
        }
    }
}
