//! Surge per vehicle class (issue 12, item 6), over real gRPC: demand is the requests for a
//! class, supply the available drivers who serve it (a driver serves only its own class), and
//! GetSurge reads one class (UNSPECIFIED: the whole market).

mod support;

use dispatch::pb;
use support::*;
use tonic::Code;

const ECONOMY: i32 = pb::VehicleClass::Economy as i32;
const COMFORT: i32 = pb::VehicleClass::Comfort as i32;
const XL: i32 = pb::VehicleClass::Xl as i32;
const ANY: i32 = pb::VehicleClass::Unspecified as i32;

async fn online_as(s: &TestServer, id: &str, north_m: f64, class: i32) {
    s.drivers()
        .go_online(pb::GoOnlineRequest {
            driver_id: id.into(),
            location: north_of_pickup(north_m),
            rating: 4.8,
            vehicle_class: class,
            gateway_id: "gw".into(),
        })
        .await
        .unwrap();
}

async fn request_as(s: &TestServer, rider: &str, class: i32) -> pb::Trip {
    let mut req = trip_request(rider, "q-1");
    req.vehicle_class = class;
    s.riders()
        .request_trip(req)
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap()
}

async fn surge(s: &TestServer, class: i32) -> pb::GetSurgeResponse {
    s.queries()
        .get_surge(pb::GetSurgeRequest {
            location: ll(PICKUP.0, PICKUP.1),
            vehicle_class: class,
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn an_xl_request_with_only_comfort_drivers_nearby_surges() {
    let s = start().await;
    for i in 0..3 {
        online_as(&s, &format!("c-{i}"), 200.0 + 50.0 * f64::from(i), COMFORT).await;
    }
    let mut multipliers = Vec::new();
    for r in 0..3 {
        let trip = request_as(&s, &format!("r-{r}"), XL).await;
        assert_eq!(status(&trip), pb::TripStatus::NoDrivers, "no XL driver");
        multipliers.push(trip.surge_multiplier);
    }
    // Demand 1, 2, 3 XL requests over 0 XL supply.
    assert_eq!(multipliers, vec![1.0, 2.0, 3.0]);
    let xl = surge(&s, XL).await;
    assert_eq!((xl.demand, xl.supply, xl.multiplier), (3, 0, 3.0));
    // The COMFORT drivers are COMFORT supply, with no COMFORT demand.
    let comfort = surge(&s, COMFORT).await;
    assert_eq!(
        (comfort.demand, comfort.supply, comfort.multiplier),
        (0, 3, 1.0)
    );
    // The whole market: three requests, three drivers.
    let any = surge(&s, ANY).await;
    assert_eq!((any.demand, any.supply, any.multiplier), (3, 3, 1.0));
    s.stop().await;
}

#[tokio::test]
async fn xl_drivers_are_no_comfort_supply() {
    let s = start().await;
    online_as(&s, "x-0", 200.0, XL).await;
    online_as(&s, "x-1", 300.0, XL).await;
    let mut multipliers = Vec::new();
    for r in 0..3 {
        let trip = request_as(&s, &format!("r-{r}"), COMFORT).await;
        // An XL driver is never offered a COMFORT trip (VehicleClass::serves), so it does not
        // count as COMFORT supply either.
        assert_eq!(status(&trip), pb::TripStatus::NoDrivers);
        multipliers.push(trip.surge_multiplier);
    }
    assert_eq!(multipliers, vec![1.0, 2.0, 3.0]);
    let comfort = surge(&s, COMFORT).await;
    assert_eq!((comfort.demand, comfort.supply), (3, 0));
    let xl = surge(&s, XL).await;
    assert_eq!((xl.demand, xl.supply, xl.multiplier), (0, 2, 1.0));
    s.stop().await;
}

#[tokio::test]
async fn get_surge_reads_one_class_and_refuses_unknown_ones() {
    let s = start().await;
    online_as(&s, "e-0", 200.0, ECONOMY).await;
    online_as(&s, "x-0", 250.0, XL).await;
    // An ECONOMY request takes the ECONOMY driver (an offer, so it leaves the supply).
    let trip = request_as(&s, "r-0", ECONOMY).await;
    assert_eq!(status(&trip), pb::TripStatus::Offered);
    let economy = surge(&s, ECONOMY).await;
    assert_eq!((economy.demand, economy.supply), (1, 0));
    let xl = surge(&s, XL).await;
    assert_eq!((xl.demand, xl.supply), (0, 1));
    let any = surge(&s, ANY).await;
    assert_eq!((any.demand, any.supply), (1, 1));
    let e = s
        .queries()
        .get_surge(pb::GetSurgeRequest {
            location: ll(PICKUP.0, PICKUP.1),
            vehicle_class: 9,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    s.stop().await;
}
