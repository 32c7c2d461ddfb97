//! Trip detail for the map: one task follows the event bus (like any subscriber) and keeps a
//! bounded timeline per recent trip (its events, its offers with their score breakdowns, the
//! winning one), and turns every trip and offer change into one feed item the SSE streams
//! share (serialised once, however many viewers).
//!
//! Bounds: the newest [`MAX_TRIPS`] trips requested since the server started, each with at
//! most [`MAX_EVENTS`] events and [`MAX_OFFERS`] offers; older trips are forgotten first.
//! `GET /api/trips/{id}` for a trip the follower does not hold (older, or from before a
//! restart) answers from the engine (its state, no events).
//!
//! Cost while nobody looks: the follower keeps the events themselves (shared ids, no text) and
//! writes them as JSON only when a trip is asked for; feed items are serialised only while a
//! stream is subscribed. Building both per event for nobody was ~7 % of the server's CPU in the
//! city run.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::describe::{describe, untracked};
use super::{ApiError, AppState};
use crate::domain::{ExternalId, LatLng, OfferId, TripId};
use crate::events::{Event, EventBus, EventKind, OfferCancelReason, OfferDetails, TripStatus};

/// Trips whose timelines are kept.
pub(super) const MAX_TRIPS: usize = 10_000;
/// Events kept per trip (a trip cascading through many declines stops recording after this).
pub(super) const MAX_EVENTS: usize = 128;
/// Offers kept per trip.
pub(super) const MAX_OFFERS: usize = 32;
/// Feed items buffered for slow viewers; one that falls further behind skips ahead.
const FEED_BUFFER: usize = 4_096;
/// Events copied out of the bus per read.
const READ_BATCH: usize = 1_024;

/// The proto name of a trip status, as the API shows it.
pub(super) fn status_name(s: TripStatus) -> &'static str {
    match s {
        TripStatus::Searching => "TRIP_STATUS_SEARCHING",
        TripStatus::Offered => "TRIP_STATUS_OFFERED",
        TripStatus::Accepted => "TRIP_STATUS_ACCEPTED",
        TripStatus::Arrived => "TRIP_STATUS_ARRIVED",
        TripStatus::InProgress => "TRIP_STATUS_IN_PROGRESS",
        TripStatus::Completed => "TRIP_STATUS_COMPLETED",
        TripStatus::Cancelled => "TRIP_STATUS_CANCELLED",
        TripStatus::NoDrivers => "TRIP_STATUS_NO_DRIVERS",
    }
}

/// One change for the SSE streams: the event name and its JSON data.
#[derive(Debug)]
pub(super) struct FeedItem {
    pub(super) event: &'static str,
    pub(super) data: String,
    /// The trip's pickup, which decides which viewports are sent the change; `None` (a trip
    /// the follower does not remember) for every viewport.
    pub(super) pickup: Option<LatLng>,
}

struct OfferEntry {
    details: Arc<OfferDetails>,
    state: &'static str,
}

struct Timeline {
    status: TripStatus,
    rider: ExternalId,
    pickup: LatLng,
    dropoff: LatLng,
    driver: Option<ExternalId>,
    requested_at_ms: u64,
    /// As they came; described (`describe`) only when the trip is asked for.
    events: Vec<Event>,
    offers: Vec<OfferEntry>,
    winning: Option<OfferId>,
}

#[derive(Default)]
struct Timelines {
    by_trip: FxHashMap<TripId, Timeline>,
    order: VecDeque<TripId>,
}

/// The follower's shared state and its feed.
pub(super) struct Follower {
    timelines: Arc<Mutex<Timelines>>,
    feed: broadcast::Sender<Arc<FeedItem>>,
}

impl Follower {
    /// Starts following `bus` from its head; the task ends when the bus closes.
    pub(super) fn spawn(bus: Arc<EventBus>) -> (Follower, JoinHandle<()>) {
        let timelines = Arc::new(Mutex::new(Timelines::default()));
        let (feed, _) = broadcast::channel(FEED_BUFFER);
        let task = tokio::spawn({
            let (timelines, feed) = (timelines.clone(), feed.clone());
            async move {
                let mut watch = bus.watch();
                let mut from = bus.next_offset();
                let mut batch = Vec::with_capacity(READ_BATCH);
                loop {
                    batch.clear();
                    match bus.read_from(from, READ_BATCH, &mut batch) {
                        Err(lagged) => {
                            tracing::warn!(
                                missed = lagged.oldest_offset - from,
                                "map trip follower fell behind the event ring; some trip \
                                 timelines miss events"
                            );
                            from = lagged.oldest_offset;
                            continue;
                        }
                        Ok(next) => {
                            if !batch.is_empty() {
                                // Feed items are for streams; none open, none written.
                                let emit = feed.receiver_count() > 0;
                                let mut t = timelines.lock();
                                for event in &batch {
                                    for item in t.apply(event, emit) {
                                        // No viewer subscribed is not an error.
                                        let _ = feed.send(Arc::new(item));
                                    }
                                }
                            }
                            if next != from {
                                from = next;
                                continue;
                            }
                        }
                    }
                    if watch.changed().await.is_err() || watch.borrow().is_none() {
                        return;
                    }
                }
            }
        });
        (Follower { timelines, feed }, task)
    }

    /// A receiver of every feed item from now on.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Arc<FeedItem>> {
        self.feed.subscribe()
    }
}

pub(super) fn trip_item(
    offset: u64,
    trip: TripId,
    status: TripStatus,
    driver: Option<&ExternalId>,
) -> FeedItem {
    FeedItem {
        event: "trip",
        data: json!({
            "offset": offset, "trip": trip.to_string(), "status": status_name(status),
            "driver": driver.map(|d| d.as_str()),
        })
        .to_string(),
        pickup: None,
    }
}

fn offer_json(o: &OfferDetails) -> Value {
    json!({
        "offer": o.offer.to_string(), "driver": o.driver.as_str(),
        "pickup_eta_s": o.pickup_eta_s, "pickup_distance_m": o.pickup_distance_m,
        "score": {
            "total": o.score.total, "eta": o.score.eta, "rating": o.score.rating,
            "acceptance": o.score.acceptance, "fairness": o.score.fairness,
        },
    })
}

impl Timelines {
    /// Records one event; returns the feed items of the trip and offer changes it made (none
    /// unless `emit`: no stream would read them).
    fn apply(&mut self, event: &Event, emit: bool) -> Vec<FeedItem> {
        let Some(trip) = event.kind.trip() else {
            return Vec::new();
        };
        if let EventKind::TripRequested {
            rider,
            pickup,
            dropoff,
            ..
        } = &event.kind
        {
            if self.order.len() >= MAX_TRIPS
                && let Some(old) = self.order.pop_front()
            {
                self.by_trip.remove(&old);
            }
            self.order.push_back(trip);
            self.by_trip.insert(
                trip,
                Timeline {
                    status: TripStatus::Searching,
                    rider: rider.clone(),
                    pickup: *pickup,
                    dropoff: *dropoff,
                    driver: None,
                    requested_at_ms: event.at_ms,
                    events: Vec::new(),
                    offers: Vec::new(),
                    winning: None,
                },
            );
        }
        let Some(t) = self.by_trip.get_mut(&trip) else {
            return if emit {
                untracked(event, trip)
            } else {
                Vec::new()
            };
        };
        if t.events.len() < MAX_EVENTS {
            t.events.push(event.clone());
        }
        let offer_change = |t: &mut Timeline, offer: OfferId, state: &'static str| {
            let entry = t.offers.iter_mut().find(|o| o.details.offer == offer)?;
            entry.state = state;
            if !emit {
                return None;
            }
            let d = &entry.details;
            Some(FeedItem {
                event: "offer",
                data: json!({
                    "offset": event.offset, "offer": d.offer.to_string(),
                    "trip": d.trip.to_string(), "driver": d.driver.as_str(), "state": state,
                    "expires_at_ms": d.expires_at_ms,
                })
                .to_string(),
                pickup: None,
            })
        };
        let mut out = Vec::with_capacity(2);
        let status = |t: &mut Timeline, s: TripStatus, driver: Option<ExternalId>| {
            t.status = s;
            t.driver = driver;
            emit.then(|| trip_item(event.offset, trip, s, t.driver.as_ref()))
        };
        match &event.kind {
            EventKind::TripRequested { .. } => out.extend(status(t, TripStatus::Searching, None)),
            EventKind::OfferSent(o) => {
                if t.offers.len() < MAX_OFFERS {
                    t.offers.push(OfferEntry {
                        details: o.clone(),
                        state: "SENT",
                    });
                }
                out.extend(status(t, TripStatus::Offered, Some(o.driver.clone())));
                out.extend(offer_change(t, o.offer, "SENT"));
            }
            EventKind::OfferAccepted(o) => {
                t.winning = Some(o.offer);
                out.extend(offer_change(t, o.offer, "ACCEPTED"));
            }
            EventKind::OfferDeclined(o) | EventKind::OfferExpired(o) => {
                let state = if matches!(event.kind, EventKind::OfferDeclined(_)) {
                    "DECLINED"
                } else {
                    "EXPIRED"
                };
                out.extend(offer_change(t, o.offer, state));
                out.extend(status(t, TripStatus::Searching, None));
            }
            EventKind::OfferCancelled(o, why) => {
                out.extend(offer_change(t, o.offer, "CANCELLED"));
                // A cancelled trip reports its own change; a driver going offline sends the
                // trip back to searching.
                if *why == OfferCancelReason::DriverOffline {
                    out.extend(status(t, TripStatus::Searching, None));
                }
            }
            EventKind::TripAssigned { driver, .. } => {
                out.extend(status(t, TripStatus::Accepted, Some(driver.clone())))
            }
            EventKind::DriverArrived { driver, .. } => {
                out.extend(status(t, TripStatus::Arrived, Some(driver.clone())))
            }
            EventKind::TripStarted { driver, .. } => {
                out.extend(status(t, TripStatus::InProgress, Some(driver.clone())))
            }
            EventKind::TripCompleted { driver, .. } => {
                out.extend(status(t, TripStatus::Completed, Some(driver.clone())))
            }
            EventKind::TripCancelled { driver, .. } => {
                out.extend(status(t, TripStatus::Cancelled, driver.clone()))
            }
            EventKind::NoDrivers { .. } => out.extend(status(t, TripStatus::NoDrivers, None)),
            EventKind::DriverOnline { .. }
            | EventKind::DriverOffline { .. }
            | EventKind::DriverProfileUpdated { .. }
            | EventKind::DriverLeftRegion { .. }
            | EventKind::DriverJoinedRegion(_)
            | EventKind::RegionTakenOver { .. }
            | EventKind::SearchRetryScheduled { .. }
            | EventKind::BatchFlushed { .. } => {}
        }
        for item in &mut out {
            item.pickup = Some(t.pickup);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::OfferRef;

    fn event(offset: u64, kind: EventKind) -> Event {
        Event {
            offset,
            at_ms: 1_000 + offset,
            kind,
        }
    }

    fn requested(trip: u64, rider: &str) -> EventKind {
        let p = LatLng::new(40.75, -73.99).unwrap();
        EventKind::TripRequested {
            trip: TripId(trip),
            rider: ExternalId::new("rider_id", rider).unwrap(),
            request_id: None,
            pickup: p,
            dropoff: p,
            class: crate::domain::VehicleClass::Any,
            surge_multiplier: 1.0,
            candidates: 0,
            policy: crate::events::MatchPolicy::Greedy,
        }
    }

    #[test]
    fn timelines_keep_the_newest_trips_and_still_report_forgotten_ones() {
        let mut t = Timelines::default();
        for i in 0..(MAX_TRIPS as u64 + 5) {
            let items = t.apply(&event(i, requested(i, &format!("r-{i}"))), true);
            assert_eq!(items.len(), 1);
        }
        assert_eq!(t.by_trip.len(), MAX_TRIPS);
        assert!(!t.by_trip.contains_key(&TripId(4)));
        assert!(t.by_trip.contains_key(&TripId(5)));
        // A forgotten trip's change still goes to viewers.
        let d = ExternalId::new("driver_id", "d-1").unwrap();
        let o = OfferRef {
            offer: OfferId(99),
            trip: TripId(0),
            driver: d,
            gateway: None,
        };
        let items = t.apply(&event(20_000, EventKind::OfferExpired(o)), true);
        let names: Vec<_> = items.iter().map(|i| i.event).collect();
        assert_eq!(names, ["offer", "trip"]);
        assert!(
            items[1].data.contains("TRIP_STATUS_SEARCHING"),
            "{}",
            items[1].data
        );
        assert_eq!(t.by_trip.len(), MAX_TRIPS);
    }

    #[test]
    fn a_trip_timeline_is_bounded() {
        let mut t = Timelines::default();
        t.apply(&event(0, requested(0, "r-0")), true);
        for i in 1..(MAX_EVENTS as u64 * 2) {
            let trip = TripId(0);
            let driver = ExternalId::new("driver_id", "d").unwrap();
            t.apply(&event(i, EventKind::DriverArrived { trip, driver }), true);
        }
        assert_eq!(t.by_trip[&TripId(0)].events.len(), MAX_EVENTS);
    }

    #[test]
    fn with_no_stream_open_nothing_is_serialised_but_the_timeline_is_the_same() {
        let driver = ExternalId::new("driver_id", "d-1").unwrap();
        let offer = OfferRef {
            offer: OfferId(7),
            trip: TripId(0),
            driver: driver.clone(),
            gateway: None,
        };
        let events = [
            event(0, requested(0, "r-0")),
            event(1, EventKind::OfferExpired(offer)),
            event(
                2,
                EventKind::DriverArrived {
                    trip: TripId(0),
                    driver: driver.clone(),
                },
            ),
        ];
        let (mut quiet, mut watched) = (Timelines::default(), Timelines::default());
        let mut items = 0;
        for e in &events {
            assert!(quiet.apply(e, false).is_empty());
            items += watched.apply(e, true).len();
        }
        assert!(items >= 3);
        let (q, w) = (&quiet.by_trip[&TripId(0)], &watched.by_trip[&TripId(0)]);
        assert_eq!(q.status, TripStatus::Arrived);
        assert_eq!((q.status, &q.driver), (w.status, &w.driver));
        assert_eq!(q.events, w.events);
        assert_eq!(q.events.len(), 3);
        let shown = event_json(&q.events[2]);
        assert_eq!(shown["kind"], "DRIVER_ARRIVED", "{shown}");
        assert_eq!(shown["offset"], 2);
    }
}

/// One timeline entry as the API shows it.
fn event_json(event: &Event) -> Value {
    let (kind, text) = describe(&event.kind);
    json!({ "offset": event.offset, "at_ms": event.at_ms, "kind": kind, "text": text })
}

fn point(p: LatLng) -> [f64; 2] {
    [p.lng_deg(), p.lat_deg()]
}

#[derive(Serialize)]
pub(super) struct TripDetail {
    trip: Value,
    events: Vec<Value>,
    winning_offer: Option<Value>,
    offers: Vec<Value>,
}

/// `GET /api/trips/{trip_id}`.
pub(super) async fn trip(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<TripDetail>, ApiError> {
    let unknown = || ApiError(StatusCode::NOT_FOUND, format!("unknown trip {raw:?}"));
    let id = TripId::parse(&raw).ok_or_else(unknown)?;
    {
        let timelines = s.trips.timelines.lock();
        if let Some(t) = timelines.by_trip.get(&id) {
            let offers = t
                .offers
                .iter()
                .map(|o| {
                    let mut v = offer_json(&o.details);
                    v["state"] = json!(o.state);
                    v
                })
                .collect();
            let winning_offer = t
                .winning
                .and_then(|w| t.offers.iter().find(|o| o.details.offer == w))
                .map(|o| offer_json(&o.details));
            return Ok(Json(TripDetail {
                trip: json!({
                    "trip": id.to_string(), "status": status_name(t.status),
                    "rider": t.rider.as_str(), "pickup": point(t.pickup),
                    "dropoff": point(t.dropoff), "driver": t.driver.as_ref().map(|d| d.as_str()),
                    "requested_at_ms": t.requested_at_ms, "ended": t.status.is_terminal(),
                }),
                events: t.events.iter().map(event_json).collect(),
                winning_offer,
                offers,
            }));
        }
    }
    // Not followed here (older than the bound, or from before a restart): the engine still
    // knows it until its retention ends. One command per click, not per viewer tick.
    let (t, _) = s.engine.trip(id).await.map_err(|e| match e {
        crate::Error::NotFound(_) => unknown(),
        other => ApiError(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
    })?;
    Ok(Json(TripDetail {
        trip: json!({
            "trip": id.to_string(), "status": status_name(t.status), "rider": t.rider.as_str(),
            "pickup": point(t.pickup), "dropoff": point(t.dropoff),
            "driver": t.driver.as_ref().map(|d| d.as_str()),
            "requested_at_ms": t.requested_at_ms, "ended": t.status.is_terminal(),
        }),
        events: Vec::new(),
        winning_offer: None,
        offers: Vec::new(),
    }))
}
