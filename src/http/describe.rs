//! How dispatch events read on the map: each trip event's kind name and a line a person reads
//! (the trip detail's timeline), and the feed items of trips the follower keeps no timeline
//! for. Split from `trips` so the follower's bookkeeping reads on its own.

use serde_json::json;

use super::trips::{FeedItem, status_name, trip_item};
use crate::domain::{ExternalId, TripId};
use crate::events::{Event, EventKind, OfferCancelReason, TripStatus};

/// The event kind's name (as the EventService names it) and a line a person reads.
pub(super) fn describe(kind: &EventKind) -> (&'static str, String) {
    match kind {
        EventKind::TripRequested {
            rider,
            candidates,
            surge_multiplier,
            ..
        } => (
            "TRIP_REQUESTED",
            format!(
                "requested by {rider}; {candidates} candidates nearby, surge x{surge_multiplier:.2}"
            ),
        ),
        EventKind::OfferSent(o) => (
            "OFFER_SENT",
            format!(
                "offer {} (attempt {}) to {}: pickup in {:.0} s over {:.0} m, score {:.3}",
                o.offer, o.attempt, o.driver, o.pickup_eta_s, o.pickup_distance_m, o.score.total
            ),
        ),
        EventKind::OfferAccepted(o) => (
            "OFFER_ACCEPTED",
            format!("{} accepted {}", o.driver, o.offer),
        ),
        EventKind::OfferDeclined(o) => (
            "OFFER_DECLINED",
            format!("{} declined {}", o.driver, o.offer),
        ),
        EventKind::OfferExpired(o) => (
            "OFFER_EXPIRED",
            format!("{} did not answer {} in time", o.driver, o.offer),
        ),
        EventKind::OfferCancelled(o, why) => (
            "OFFER_CANCELLED",
            match why {
                OfferCancelReason::TripCancelled => {
                    format!("{} withdrawn: trip cancelled", o.offer)
                }
                OfferCancelReason::DriverOffline => {
                    format!("{} withdrawn: {} went offline", o.offer, o.driver)
                }
            },
        ),
        EventKind::TripAssigned {
            driver,
            pickup_eta_s,
            ..
        } => (
            "TRIP_ASSIGNED",
            format!("assigned to {driver}, pickup in {pickup_eta_s:.0} s"),
        ),
        EventKind::DriverArrived { driver, .. } => {
            ("DRIVER_ARRIVED", format!("{driver} is at the pickup"))
        }
        EventKind::TripStarted { driver, .. } => {
            ("TRIP_STARTED", format!("rider on board with {driver}"))
        }
        EventKind::TripCompleted { driver, .. } => {
            ("TRIP_COMPLETED", format!("dropped off by {driver}"))
        }
        EventKind::TripCancelled { by, previous, .. } => (
            "TRIP_CANCELLED",
            format!(
                "cancelled by the {} while {}",
                match by {
                    crate::events::CancelledBy::Rider => "rider",
                    crate::events::CancelledBy::Driver => "driver",
                },
                status_name(*previous)
                    .trim_start_matches("TRIP_STATUS_")
                    .to_lowercase()
            ),
        ),
        EventKind::NoDrivers { offers_made, .. } => (
            "NO_DRIVERS",
            format!("no driver found after {offers_made} offer(s)"),
        ),
        EventKind::DriverOnline { .. } => ("DRIVER_ONLINE", String::new()),
        EventKind::DriverOffline { .. } => ("DRIVER_OFFLINE", String::new()),
        EventKind::DriverProfileUpdated { .. } => ("DRIVER_PROFILE_UPDATED", String::new()),
        EventKind::DriverLeftRegion { to, .. } => ("DRIVER_LEFT_REGION", format!("to region {to}")),
        EventKind::DriverJoinedRegion(j) => {
            ("DRIVER_JOINED_REGION", format!("from region {}", j.from))
        }
        EventKind::RegionTakenOver { owner, .. } => {
            ("REGION_TAKEN_OVER", format!("now served by {owner}"))
        }
        EventKind::SearchRetryScheduled { retry_at_ms, .. } => (
            "SEARCH_RETRY_SCHEDULED",
            format!("no driver yet; searches again at {retry_at_ms} ms"),
        ),
        EventKind::BatchFlushed { waiting, .. } => (
            "BATCH_FLUSHED",
            format!("{waiting} trip(s) wait for the next batch"),
        ),
    }
}

/// Feed items for a trip without a timeline here (requested before the server started, or
/// forgotten for the bound): its changes still reach viewers, with what the event itself says.
pub(super) fn untracked(event: &Event, trip: TripId) -> Vec<FeedItem> {
    let offer = |o: &crate::events::OfferRef, state: &str, expires: Option<u64>| FeedItem {
        event: "offer",
        data: json!({
            "offset": event.offset, "offer": o.offer.to_string(), "trip": trip.to_string(),
            "driver": o.driver.as_str(), "state": state, "expires_at_ms": expires,
        })
        .to_string(),
        pickup: None,
    };
    let trip_to = |s: TripStatus, d: Option<&ExternalId>| trip_item(event.offset, trip, s, d);
    match &event.kind {
        EventKind::OfferSent(o) => vec![
            trip_to(TripStatus::Offered, Some(&o.driver)),
            FeedItem {
                event: "offer",
                data: json!({
                    "offset": event.offset, "offer": o.offer.to_string(),
                    "trip": trip.to_string(), "driver": o.driver.as_str(), "state": "SENT",
                    "expires_at_ms": o.expires_at_ms,
                })
                .to_string(),
                pickup: None,
            },
        ],
        EventKind::OfferAccepted(o) => vec![offer(o, "ACCEPTED", None)],
        EventKind::OfferDeclined(o) => vec![
            offer(o, "DECLINED", None),
            trip_to(TripStatus::Searching, None),
        ],
        EventKind::OfferExpired(o) => vec![
            offer(o, "EXPIRED", None),
            trip_to(TripStatus::Searching, None),
        ],
        EventKind::OfferCancelled(o, why) => {
            let mut items = vec![offer(o, "CANCELLED", None)];
            if *why == OfferCancelReason::DriverOffline {
                items.push(trip_to(TripStatus::Searching, None));
            }
            items
        }
        EventKind::TripAssigned { driver, .. } => vec![trip_to(TripStatus::Accepted, Some(driver))],
        EventKind::DriverArrived { driver, .. } => vec![trip_to(TripStatus::Arrived, Some(driver))],
        EventKind::TripStarted { driver, .. } => {
            vec![trip_to(TripStatus::InProgress, Some(driver))]
        }
        EventKind::TripCompleted { driver, .. } => {
            vec![trip_to(TripStatus::Completed, Some(driver))]
        }
        EventKind::TripCancelled { driver, .. } => {
            vec![trip_to(TripStatus::Cancelled, driver.as_ref())]
        }
        EventKind::NoDrivers { .. } => vec![trip_to(TripStatus::NoDrivers, None)],
        // Nothing a viewer draws changes: a retry keeps the trip searching.
        EventKind::TripRequested { .. }
        | EventKind::DriverOnline { .. }
        | EventKind::DriverOffline { .. }
        | EventKind::DriverProfileUpdated { .. }
        | EventKind::DriverLeftRegion { .. }
        | EventKind::DriverJoinedRegion(_)
        | EventKind::RegionTakenOver { .. }
        | EventKind::SearchRetryScheduled { .. }
        | EventKind::BatchFlushed { .. } => Vec::new(),
    }
}
