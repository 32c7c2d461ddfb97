//! NO_DRIVERS only when nobody could ever serve (issue 12, item 3), over real gRPC with the
//! manual clock: a request whose candidates are all busy keeps SEARCHING until its dispatch
//! deadline, and a driver who frees up (decline, expiry, drop-off, going online, a repeated
//! GoOnline from a new place or with a new class) is offered to the oldest rider waiting near
//! it in the same call, not on the next retry tick.

mod support;

use std::time::Duration;

use dispatch::config::Config;
use dispatch::pb;
use support::*;

fn config() -> Config {
    let mut config = Config::default();
    config.dispatch.dispatch_timeout = Duration::from_secs(30);
    config
}

/// The opening most tests share: `d-1` online and offered the first rider (`r-1`), so the
/// second (`r-2`) waits, SEARCHING. Returns both trips.
async fn one_busy_driver_one_waiting_rider(s: &TestServer) -> (pb::Trip, pb::Trip) {
    online(s, "d-1", 200.0, 4.8, "gw").await;
    let first = request(s, "r-1", "q").await;
    let waiting = request(s, "r-2", "q").await;
    assert_eq!(status(&first), pb::TripStatus::Offered);
    assert_eq!(status(&waiting), pb::TripStatus::Searching);
    (first, waiting)
}

/// Asserts that `trip` is now offered to `driver`.
async fn assert_offered_to(s: &TestServer, trip: &pb::Trip, driver: &str) {
    let t = get_trip(s, &trip.trip_id).await;
    assert_eq!(
        (status(&t), t.driver_id.as_str()),
        (pb::TripStatus::Offered, driver)
    );
}

#[tokio::test]
async fn a_burst_waits_for_the_one_driver_and_a_decline_hands_it_on_at_once() {
    let s = start_with(config()).await;
    online(&s, "d-1", 200.0, 4.8, "gw").await;
    let mut trips = Vec::new();
    for r in 0..10 {
        trips.push(request(&s, &format!("r-{r}"), "q").await);
    }
    assert_eq!(status(&trips[0]), pb::TripStatus::Offered);
    for t in &trips[1..] {
        assert_eq!(status(t), pb::TripStatus::Searching, "{}", t.trip_id);
    }
    // The driver declines: the next waiting rider (the oldest) is offered the driver in the
    // same call, with no clock advance; the decliner's own trip waits on.
    decline(&s, &trips[0].offer_id, "d-1").await;
    let next = get_trip(&s, &trips[1].trip_id).await;
    assert_eq!(status(&next), pb::TripStatus::Offered);
    assert_eq!(next.driver_id, "d-1");
    assert_eq!(
        status(&get_trip(&s, &trips[0].trip_id).await),
        pb::TripStatus::Searching
    );
    for t in &trips[2..] {
        assert_eq!(
            status(&get_trip(&s, &t.trip_id).await),
            pb::TripStatus::Searching
        );
    }
    // Accept and drop off: the driver is free at the drop-off, 2.8 km from the pickups and so
    // inside the 5 km search radius: the next waiting rider gets it at once.
    accept(&s, &next.offer_id, "d-1").await;
    let action = pb::TripActionRequest {
        trip_id: next.trip_id.clone(),
        driver_id: "d-1".into(),
    };
    let mut d = s.drivers();
    d.mark_arrived(action.clone()).await.unwrap();
    d.start_trip(action.clone()).await.unwrap();
    d.complete_trip(action).await.unwrap();
    let third = get_trip(&s, &trips[2].trip_id).await;
    assert_eq!(status(&third), pb::TripStatus::Offered);
    assert_eq!(third.driver_id, "d-1");
    s.stop().await;
}

#[tokio::test]
async fn a_driver_going_online_takes_the_oldest_waiting_rider() {
    let s = start_with(config()).await;
    let (_, waiting) = one_busy_driver_one_waiting_rider(&s).await;
    let d2 = online(&s, "d-2", 300.0, 4.8, "gw").await;
    assert_eq!(d2.state(), pb::DriverState::Offered);
    assert_offered_to(&s, &waiting, "d-2").await;
    s.stop().await;
}

#[tokio::test]
async fn a_repeated_go_online_that_brings_a_driver_near_takes_the_waiting_rider() {
    let s = start_with(config()).await;
    let (_, waiting) = one_busy_driver_one_waiting_rider(&s).await;
    // 20 km away: outside the 5 km search radius, the rider keeps waiting.
    let far = online(&s, "d-2", 20_000.0, 4.8, "gw").await;
    assert_eq!(far.state(), pb::DriverState::Available);
    assert_eq!(
        status(&get_trip(&s, &waiting.trip_id).await),
        pb::TripStatus::Searching
    );
    // The same driver online again from 300 m: offered the waiting rider in that call.
    let near = online(&s, "d-2", 300.0, 4.8, "gw").await;
    assert_eq!(near.state(), pb::DriverState::Offered);
    assert_offered_to(&s, &waiting, "d-2").await;
    s.stop().await;
}

#[tokio::test]
async fn an_expiry_hands_the_driver_to_a_waiting_rider() {
    let s = start_with(config()).await;
    let (first, waiting) = one_busy_driver_one_waiting_rider(&s).await;
    // The offer window (15 s) passes unanswered.
    s.advance(Duration::from_secs(16)).await;
    assert_eq!(
        status(&get_trip(&s, &first.trip_id).await),
        pb::TripStatus::Searching
    );
    assert_offered_to(&s, &waiting, "d-1").await;
    s.stop().await;
}

#[tokio::test]
async fn no_online_driver_of_the_class_in_range_is_no_drivers_at_once() {
    let s = start_with(config()).await;
    // A COMFORT driver nearby, an XL driver 20 km away (outside the 5 km search radius).
    for (id, north_m, class) in [
        ("c-1", 200.0, pb::VehicleClass::Comfort),
        ("x-1", 20_000.0, pb::VehicleClass::Xl),
    ] {
        s.drivers()
            .go_online(pb::GoOnlineRequest {
                driver_id: id.into(),
                location: north_of_pickup(north_m),
                rating: 4.8,
                vehicle_class: class as i32,
                gateway_id: "gw".into(),
            })
            .await
            .unwrap();
    }
    let mut req = trip_request("r-1", "q");
    req.vehicle_class = pb::VehicleClass::Xl as i32;
    let trip = s
        .riders()
        .request_trip(req)
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap();
    assert_eq!(status(&trip), pb::TripStatus::NoDrivers);
    s.stop().await;
}

#[tokio::test]
async fn a_waiting_trip_ends_no_drivers_at_its_dispatch_deadline() {
    let s = start_with(config()).await;
    online(&s, "d-1", 200.0, 4.8, "gw").await;
    let first = request(&s, "r-1", "q").await;
    accept(&s, &first.offer_id, "d-1").await;
    // The only driver is on a trip: the next rider waits.
    let waiting = request(&s, "r-2", "q").await;
    assert_eq!(status(&waiting), pb::TripStatus::Searching);
    s.advance(Duration::from_secs(29)).await;
    assert_eq!(
        status(&get_trip(&s, &waiting.trip_id).await),
        pb::TripStatus::Searching
    );
    s.advance(Duration::from_secs(2)).await;
    assert_eq!(
        status(&get_trip(&s, &waiting.trip_id).await),
        pb::TripStatus::NoDrivers
    );
    s.stop().await;
}
