//! The batch matching policy at the dispatcher level, with a manual `now`.
//!
//! Pins: greedy strands a request that batching serves (two requests, two drivers); a trip
//! waits at most one window for its first offer; a lone trip gets its best driver; a failed
//! offer sends the trip to the next batch, not the greedy path; cancelled trips drop out;
//! a request left unpaired at its first window is told at once, a trip whose offer failed waits
//! for the next window; events say which policy matched.

use std::time::Duration;

use dispatch::config::Config;
use dispatch::domain::{ExternalId, LatLng, Rating, TripId, VehicleClass};
use dispatch::engine::{Dispatcher, GoOnline, TripRequest};
use dispatch::events::{Event, EventKind, MatchPolicy, OfferDetails, TripStatus};

const T0: u64 = 1_700_000_000_000;
const BASE: (f64, f64) = (40.75, -73.99);
const WINDOW_MS: u64 = 2_000;

fn id(s: &str) -> ExternalId {
    ExternalId::new("id", s).unwrap()
}

/// A point `north_m` metres north of the base.
fn north(north_m: f64) -> LatLng {
    LatLng::new(BASE.0 + north_m / 111_195.0, BASE.1).unwrap()
}

fn dispatcher(policy: MatchPolicy) -> Dispatcher {
    let mut c = Config::default();
    c.dispatch.policy = policy;
    c.dispatch.batch_window = Duration::from_millis(WINDOW_MS);
    c.dispatch.validate().unwrap();
    Dispatcher::new(&c, dispatch::index::default_index(), 0)
}

fn online(d: &mut Dispatcher, now: u64, driver: &str, north_m: f64) {
    d.go_online(
        now,
        GoOnline {
            driver: id(driver),
            position: north(north_m),
            rating: Rating::new(4.8).unwrap(),
            class: VehicleClass::Economy,
            gateway: None,
        },
    )
    .unwrap();
}

fn request(d: &mut Dispatcher, now: u64, rider: &str, north_m: f64) -> TripId {
    let (trip, _) = d
        .request_trip(
            now,
            TripRequest {
                rider: id(rider),
                request_id: None,
                pickup: north(north_m),
                dropoff: north(north_m + 3_000.0),
                class: VehicleClass::Any,
            },
        )
        .unwrap();
    trip.id
}

fn offers(events: &[Event]) -> Vec<&OfferDetails> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::OfferSent(o) => Some(o.as_ref()),
            _ => None,
        })
        .collect()
}

/// The driver of the trip's pending offer.
fn offered_to(d: &Dispatcher, trip: TripId) -> Option<String> {
    d.pending_offers(None)
        .iter()
        .find(|o| o.trip == trip)
        .map(|o| o.driver.as_str().to_string())
}

/// Driver A at 0 m and B at 2,500 m north. Rider 1 at 1,000 m: A is 1,000 m away, B 1,500 m.
/// Rider 2 at -3,500 m: A is 3,500 m away, B 6,000 m (outside the 5 km search radius).
fn two_by_two(d: &mut Dispatcher) -> (TripId, TripId) {
    online(d, T0, "a", 0.0);
    online(d, T0, "b", 2_500.0);
    let r1 = request(d, T0, "r1", 1_000.0);
    let r2 = request(d, T0 + 500, "r2", -3_500.0);
    (r1, r2)
}

#[test]
fn greedy_leaves_the_second_request_waiting_that_batch_serves() {
    // Greedy: rider 1 takes A, the nearer driver; rider 2 then has nobody free in range, only A
    // (offered), so it waits for A instead of being served by B.
    let mut g = dispatcher(MatchPolicy::Greedy);
    let (r1, r2) = two_by_two(&mut g);
    assert_eq!(offered_to(&g, r1).as_deref(), Some("a"));
    assert_eq!(g.trip(r2).unwrap().status, TripStatus::Searching);

    // Batch: both wait for the window, then rider 1 gets B and rider 2 gets A.
    let mut b = dispatcher(MatchPolicy::Batch);
    let (r1, r2) = two_by_two(&mut b);
    b.fire_due(T0 + WINDOW_MS - 1);
    assert!(
        offers(&b.take_events()).is_empty(),
        "offered before the window closed"
    );
    assert_eq!(b.trip(r1).unwrap().status, TripStatus::Searching);
    assert_eq!(b.trip(r2).unwrap().status, TripStatus::Searching);
    b.fire_due(T0 + WINDOW_MS);
    let events = b.take_events();
    let sent = offers(&events);
    assert_eq!(sent.len(), 2);
    assert!(
        sent.iter()
            .all(|o| o.expires_at_ms == T0 + WINDOW_MS + 15_000)
    );
    assert_eq!(offered_to(&b, r1).as_deref(), Some("b"));
    assert_eq!(offered_to(&b, r2).as_deref(), Some("a"));
    let pickup_m: f64 = sent.iter().map(|o| o.pickup_distance_m).sum();
    assert!((pickup_m - 5_000.0).abs() < 5.0, "{pickup_m}");

    for o in b.pending_offers(None) {
        b.respond(T0 + WINDOW_MS + 100, o.offer, &o.driver, true)
            .unwrap();
    }
    b.check_invariants().unwrap();
    let events = b.take_events();
    let assigned: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TripAssigned { trip, policy, .. } => Some((*trip, *policy)),
            _ => None,
        })
        .collect();
    assert_eq!(
        assigned,
        vec![(r1, MatchPolicy::Batch), (r2, MatchPolicy::Batch)]
    );
    assert_eq!(b.trip(r1).unwrap().policy, MatchPolicy::Batch);
}

#[test]
fn trip_requested_says_which_policy_is_in_force() {
    for policy in [MatchPolicy::Greedy, MatchPolicy::Batch] {
        let mut d = dispatcher(policy);
        online(&mut d, T0, "a", 0.0);
        request(&mut d, T0, "r1", 100.0);
        let requested: Vec<_> = d
            .take_events()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::TripRequested {
                    policy, candidates, ..
                } => Some((policy, candidates)),
                _ => None,
            })
            .collect();
        assert_eq!(requested, vec![(policy, 1)]);
    }
}

#[test]
fn a_lone_trip_gets_its_best_driver_when_the_window_closes() {
    let mut d = dispatcher(MatchPolicy::Batch);
    online(&mut d, T0, "a", 0.0);
    online(&mut d, T0, "b", 2_500.0);
    let r1 = request(&mut d, T0 + 300, "r1", 1_000.0);
    // The window opened with the request, so it closes 2 s after it.
    d.fire_due(T0 + 300 + WINDOW_MS - 1);
    assert_eq!(offered_to(&d, r1), None);
    d.fire_due(T0 + 300 + WINDOW_MS);
    assert_eq!(offered_to(&d, r1).as_deref(), Some("a"));
}

#[test]
fn a_declined_offer_sends_the_trip_to_the_next_batch() {
    let mut d = dispatcher(MatchPolicy::Batch);
    online(&mut d, T0, "a", 0.0);
    online(&mut d, T0, "b", 2_500.0);
    let r1 = request(&mut d, T0, "r1", 1_000.0);
    d.fire_due(T0 + WINDOW_MS);
    let offer = d.pending_offers(None)[0].clone();
    assert_eq!(offer.driver.as_str(), "a");

    let declined_at = T0 + 5_000;
    d.respond(declined_at, offer.offer, &offer.driver, false)
        .unwrap();
    // Not offered on the spot as greedy would: it waits for the next window.
    assert_eq!(d.trip(r1).unwrap().status, TripStatus::Searching);
    assert_eq!(d.next_deadline_ms(), Some(declined_at + WINDOW_MS));
    d.fire_due(declined_at + WINDOW_MS);
    let again = d.pending_offers(None);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].driver.as_str(), "b", "A already tried");
    assert_eq!(again[0].attempt, 2);
    d.check_invariants().unwrap();
}

#[test]
fn an_expired_offer_sends_the_trip_to_the_next_batch() {
    let mut d = dispatcher(MatchPolicy::Batch);
    online(&mut d, T0, "a", 0.0);
    online(&mut d, T0, "b", 2_500.0);
    let r1 = request(&mut d, T0, "r1", 1_000.0);
    d.fire_due(T0 + WINDOW_MS);
    let expiry = T0 + WINDOW_MS + 15_000;
    d.fire_due(expiry);
    assert_eq!(d.trip(r1).unwrap().status, TripStatus::Searching);
    d.fire_due(expiry + WINDOW_MS);
    assert_eq!(offered_to(&d, r1).as_deref(), Some("b"));
}

#[test]
fn a_trip_cancelled_while_waiting_is_not_offered() {
    let mut d = dispatcher(MatchPolicy::Batch);
    let (r1, r2) = two_by_two(&mut d);
    d.cancel_trip(T0 + 1_000, r1, &id("r1")).unwrap();
    d.fire_due(T0 + WINDOW_MS);
    assert_eq!(d.trip(r1).unwrap().status, TripStatus::Cancelled);
    assert_eq!(offered_to(&d, r2).as_deref(), Some("a"));
    assert_eq!(d.pending_offers(None).len(), 1);
    d.check_invariants().unwrap();
}

#[test]
fn nobody_in_range_ends_at_once_as_in_greedy() {
    let mut d = dispatcher(MatchPolicy::Batch);
    online(&mut d, T0, "a", 0.0);
    let far = request(&mut d, T0, "r1", 9_000.0);
    assert_eq!(d.trip(far).unwrap().status, TripStatus::NoDrivers);
}

#[test]
fn a_request_left_unpaired_waits_for_a_later_window() {
    // Two riders, one driver: the solver pairs one; the other, with the driver online in range,
    // keeps searching in later windows (issue 12 item 3) and gets the driver once it declines.
    let mut d = dispatcher(MatchPolicy::Batch);
    online(&mut d, T0, "a", 0.0);
    let r1 = request(&mut d, T0, "r1", 500.0);
    let r2 = request(&mut d, T0 + 100, "r2", 2_000.0);
    d.fire_due(T0 + WINDOW_MS);
    assert_eq!(
        offered_to(&d, r1).as_deref(),
        Some("a"),
        "the nearer rider wins"
    );
    assert_eq!(d.trip(r2).unwrap().status, TripStatus::Searching);
    d.check_invariants().unwrap();
    let offer = d.trip(r1).unwrap().offer.unwrap();
    d.respond(T0 + WINDOW_MS + 10, offer, &id("a"), false)
        .unwrap();
    d.fire_due(T0 + 2 * WINDOW_MS);
    assert_eq!(offered_to(&d, r2).as_deref(), Some("a"));
    d.check_invariants().unwrap();
}

#[test]
fn a_trip_whose_offer_failed_waits_for_a_later_window_when_unpaired() {
    let mut d = dispatcher(MatchPolicy::Batch);
    online(&mut d, T0, "a", 0.0);
    let r1 = request(&mut d, T0, "r1", 500.0);
    d.fire_due(T0 + WINDOW_MS);
    let offer = d.trip(r1).unwrap().offer.unwrap();
    d.respond(T0 + WINDOW_MS + 10, offer, &id("a"), false)
        .unwrap();
    // Declined: r1 is back in a batch, but its only candidate already said no.
    d.fire_due(T0 + 2 * WINDOW_MS + 10);
    assert_eq!(d.trip(r1).unwrap().status, TripStatus::Searching);
    online(&mut d, T0 + 3 * WINDOW_MS, "c", 2_100.0);
    let mut now = T0 + 2 * WINDOW_MS + 10;
    while offered_to(&d, r1).is_none() && now < T0 + 20_000 {
        now += 100;
        d.fire_due(now);
    }
    assert_eq!(offered_to(&d, r1).as_deref(), Some("c"));
    d.check_invariants().unwrap();
}

#[test]
fn waiting_trips_end_at_the_dispatch_deadline() {
    let mut d = dispatcher(MatchPolicy::Batch);
    online(&mut d, T0, "a", 0.0);
    let r1 = request(&mut d, T0, "r1", 500.0);
    let r2 = request(&mut d, T0, "r2", 600.0);
    // Nobody ever answers and no one else comes: offers expire and both trips keep
    // rejoining batches until the 120 s dispatch deadline.
    let mut now = T0;
    while now < T0 + 200_000 {
        now += 500;
        d.fire_due(now);
        d.check_invariants().unwrap();
    }
    for t in [r1, r2] {
        assert_eq!(d.trip(t).unwrap().status, TripStatus::NoDrivers);
    }
    assert_eq!(d.next_deadline_ms().map(|at| at > now), Some(true));
}

#[test]
fn a_trip_waiting_in_a_batch_at_a_crash_is_matched_after_recovery() {
    let mut d = dispatcher(MatchPolicy::Batch);
    let (r1, r2) = two_by_two(&mut d);
    let events = d.take_events();

    // Crash before the flush: the pending batch is not durable, the SEARCHING trips are.
    let mut recovered = dispatcher(MatchPolicy::Batch);
    for e in &events {
        recovered.replay(e).unwrap();
    }
    let restart = T0 + 5_000;
    recovered.finish_recovery(restart);
    recovered.fire_due(restart);
    assert!(
        offers(&recovered.take_events()).is_empty(),
        "waits for a window"
    );
    recovered.fire_due(restart + WINDOW_MS);
    assert_eq!(offered_to(&recovered, r1).as_deref(), Some("b"));
    assert_eq!(offered_to(&recovered, r2).as_deref(), Some("a"));
    recovered.check_invariants().unwrap();
}
