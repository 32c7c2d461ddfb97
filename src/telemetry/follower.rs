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
use crate::events::{Event, EventKind, FollowError, Follower, OfferCancelReason};

/// Starts observing with `events` (the engine's bus and log, from the offset the metrics
/// start at); it ends when the bus closes.
///
/// With a durable log a follower that falls out of the ring catches up from the log, so no
/// event goes uncounted. Without one the events that left the ring are gone: the follower
/// warns with how many it missed, forgets the offers it was timing (their end may be among
/// the missed) and goes on from the oldest event still held.
pub(crate) fn spawn_follower(mut events: Follower, metrics: Arc<Metrics>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut observer = Observer {
            metrics,
            sent_at_ms: HashMap::new(),
        };
        // Where it starts is counted already (a region taken over has its own key).
        observer.metrics.followed_up_to(events.position());
        let mut batch = Vec::new();
        loop {
            batch.clear();
            match events.next_batch(&mut batch).await {
                Ok(()) => {
                    for event in &batch {
                        observer.observe(event);
                    }
                    observer.metrics.followed_up_to(events.position());
                }
                Err(FollowError::Closed) => return,
                Err(error) => {
                    let from = events.position();
                    let oldest = match error {
                        FollowError::Lagged { oldest, .. } => oldest,
                        // The log lost what we need: go on from what the ring holds.
                        _ => events.bus().next_offset(),
                    };
                    tracing::warn!(
                        missed = oldest.saturating_sub(from),
                        %error,
                        "metrics fell behind the event ring; some events were not counted"
                    );
                    events.skip_to(oldest);
                    // Offers whose end we may have missed would otherwise stay forever.
                    observer.sent_at_ms.clear();
                }
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
            | EventKind::DriverLeftRegion { .. }
            | EventKind::DriverJoinedRegion(_)
            | EventKind::RegionTakenOver { .. }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ExternalId, LatLng, TripId, VehicleClass};
    use crate::events::{EventBus, EventLog, LogConfig, MatchPolicy};

    fn requested(offset: u64) -> Event {
        let here = LatLng::new(52.5, 13.4).unwrap();
        Event {
            offset,
            at_ms: offset,
            kind: EventKind::TripRequested {
                trip: TripId(offset),
                rider: ExternalId::new("rider_id", "r").unwrap(),
                request_id: None,
                pickup: here,
                dropoff: here,
                class: VehicleClass::Any,
                surge_multiplier: 1.0,
                candidates: 0,
                policy: MatchPolicy::Greedy,
            },
        }
    }

    /// 300 trip requests published before the follower starts, into a ring of 8: the follower
    /// starts 292 events out of the ring. Returns how many it counted once at the head.
    async fn counted(with_log: bool) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let events: Vec<Event> = (0..300).map(requested).collect();
        let log_dir = with_log.then(|| {
            let (mut log, _) =
                EventLog::open(&LogConfig::default(), dir.path(), |_| Ok(())).unwrap();
            log.append(&events).unwrap();
            log.commit().unwrap();
            log.dir().to_path_buf()
        });
        let bus = Arc::new(EventBus::new(8, 0));
        bus.publish(events);
        let metrics = Arc::new(Metrics::new(0));
        let task = spawn_follower(Follower::new(bus.clone(), log_dir, 0), metrics.clone());
        metrics
            .wait_followed(300, std::time::Duration::from_secs(10))
            .await;
        bus.close();
        task.await.unwrap();
        metrics.trips_requested()
    }

    #[tokio::test]
    async fn with_a_log_the_metrics_follower_catches_up_instead_of_losing_events() {
        assert_eq!(counted(true).await, 300);
    }

    #[tokio::test]
    async fn without_a_log_the_metrics_follower_counts_what_the_ring_still_holds() {
        assert_eq!(counted(false).await, 8);
    }
}
