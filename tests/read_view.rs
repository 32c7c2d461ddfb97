//! NearbyDrivers, GetSurge and GetDriver are answered from the read view on the gRPC threads:
//! after each call returns, their answers over real gRPC equal what a dispatcher fed the same
//! commands at the same instants answers directly (the dispatcher is deterministic).

mod support;

use dispatch::clock::Clock;
use dispatch::config::Config;
use dispatch::domain::{ExternalId, LatLng, OfferId, Rating, VehicleClass};
use dispatch::engine::{Dispatcher, DriverStatus, GoOnline, TripRequest};
use dispatch::pb;
use support::{PICKUP, T0_MS, TestServer, ll, start};

const DRIVERS: usize = 40;
const CLASSES: [VehicleClass; 4] = [
    VehicleClass::Any,
    VehicleClass::Economy,
    VehicleClass::Comfort,
    VehicleClass::Xl,
];

fn id(raw: &str) -> ExternalId {
    ExternalId::new("id", raw).unwrap()
}

fn pb_class(c: VehicleClass) -> i32 {
    match c {
        VehicleClass::Any => 0,
        VehicleClass::Economy => 1,
        VehicleClass::Comfort => 2,
        VehicleClass::Xl => 3,
    }
}

/// Driver `i`'s spot `round` (a fixed pseudo-random scatter within ~3 km of the pickup).
fn spot(i: usize, round: usize) -> (f64, f64) {
    let h = (i * 7919 + round * 104_729) % 1000;
    let dlat = (h as f64 / 1000.0 - 0.5) * 0.05;
    let dlng = (((h * 37) % 1000) as f64 / 1000.0 - 0.5) * 0.06;
    (PICKUP.0 + dlat, PICKUP.1 + dlng)
}

/// Points the queries are asked at.
fn probes() -> Vec<(f64, f64)> {
    vec![
        PICKUP,
        (PICKUP.0 + 0.01, PICKUP.1 - 0.01),
        (PICKUP.0 - 0.02, PICKUP.1 + 0.015),
    ]
}

/// Every read over gRPC against the mirror's direct answer.
async fn assert_same(s: &TestServer, mirror: &mut Dispatcher, step: &str) {
    let now = s.clock.now_ms();
    let mut queries = s.queries();
    for (lat, lng) in probes() {
        let at = LatLng::new(lat, lng).unwrap();
        for class in CLASSES {
            for (radius_m, limit) in [(5_000.0, 20), (1_500.0, 5)] {
                let got = queries
                    .nearby_drivers(pb::NearbyDriversRequest {
                        location: ll(lat, lng),
                        radius_m,
                        limit,
                        vehicle_class: pb_class(class),
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .drivers;
                let want = mirror.nearby(now, at, radius_m, limit as usize, class);
                assert_eq!(got.len(), want.len(), "{step}: nearby count {class:?}");
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(g.driver_id, w.id.as_str(), "{step}: nearby order");
                    assert_eq!(g.distance_m, w.distance_m, "{step}: {}", g.driver_id);
                    assert_eq!(g.eta_s, w.eta_s, "{step}: {}", g.driver_id);
                    assert_eq!(g.rating, w.rating.get(), "{step}: {}", g.driver_id);
                    assert_eq!(g.vehicle_class, pb_class(w.class));
                }
            }
            let got = queries
                .get_surge(pb::GetSurgeRequest {
                    location: ll(lat, lng),
                    vehicle_class: pb_class(class),
                })
                .await
                .unwrap()
                .into_inner();
            let want = mirror.surge(now, at, class);
            assert_eq!(got.h3_cell, want.cell.to_string(), "{step}");
            assert_eq!(
                (got.demand, got.supply, got.multiplier),
                (want.demand, want.supply, want.multiplier),
                "{step}: surge {class:?} at {lat},{lng}"
            );
        }
    }
    for i in 0..DRIVERS {
        let name = format!("d-{i}");
        let got = queries
            .get_driver(pb::GetDriverRequest {
                driver_id: name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .driver
            .unwrap();
        let want = mirror.driver(&name).unwrap();
        let state = match want.status {
            DriverStatus::Offline => pb::DriverState::Offline,
            DriverStatus::Available => pb::DriverState::Available,
            DriverStatus::Offered(_) => pb::DriverState::Offered,
            DriverStatus::OnTrip(_) => pb::DriverState::OnTrip,
        };
        assert_eq!(got.state, state as i32, "{step}: {name}");
        let at = got.location.unwrap();
        assert_eq!(
            (at.lat_deg, at.lng_deg),
            (want.position.lat_deg(), want.position.lng_deg()),
            "{step}: {name}"
        );
        assert_eq!(got.acceptance_rate, want.acceptance_rate, "{step}: {name}");
        assert_eq!(got.trips_today, want.trips_today, "{step}: {name}");
    }
    let unknown = queries
        .get_driver(pb::GetDriverRequest {
            driver_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{step}");
    assert!(
        unknown.message().contains("GoOnline"),
        "{}",
        unknown.message()
    );
}

async fn request(s: &TestServer, mirror: &mut Dispatcher, k: usize) -> pb::Trip {
    let class = CLASSES[k % 4];
    let (lat, lng) = spot(k + 100, 0);
    let trip = s
        .riders()
        .request_trip(pb::RequestTripRequest {
            rider_id: format!("r-{k}"),
            request_id: format!("q-{k}"),
            pickup: ll(lat, lng),
            dropoff: ll(lat + 0.01, lng),
            vehicle_class: pb_class(class),
        })
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap();
    let (want, _) = mirror
        .request_trip(
            s.clock.now_ms(),
            TripRequest {
                rider: id(&format!("r-{k}")),
                request_id: Some(id(&format!("q-{k}"))),
                pickup: LatLng::new(lat, lng).unwrap(),
                dropoff: LatLng::new(lat + 0.01, lng).unwrap(),
                class,
            },
        )
        .unwrap();
    assert_eq!(
        trip.trip_id,
        want.id.to_string(),
        "the mirror follows the server"
    );
    trip
}

#[tokio::test]
async fn reads_from_the_view_equal_the_dispatchers_after_each_commit() {
    let s = start().await;
    let mut mirror = Dispatcher::new(&Config::default(), dispatch::index::default_index(), 0);

    for i in 0..DRIVERS {
        let (lat, lng) = spot(i, 0);
        let class = CLASSES[i % 4];
        let rating = 3.5 + (i % 10) as f64 * 0.15;
        s.drivers()
            .go_online(pb::GoOnlineRequest {
                driver_id: format!("d-{i}"),
                location: ll(lat, lng),
                rating,
                vehicle_class: pb_class(class),
                gateway_id: "gw".into(),
            })
            .await
            .unwrap();
        mirror
            .go_online(
                T0_MS,
                GoOnline {
                    driver: id(&format!("d-{i}")),
                    position: LatLng::new(lat, lng).unwrap(),
                    rating: Rating::new(rating).unwrap(),
                    class,
                    gateway: Some(id("gw")),
                },
            )
            .unwrap();
    }
    assert_same(&s, &mut mirror, "online").await;

    // A location batch moves every other driver; its summary comes after the view shows it.
    let updates: Vec<pb::LocationUpdate> = (0..DRIVERS)
        .step_by(2)
        .map(|i| {
            let (lat, lng) = spot(i, 1);
            pb::LocationUpdate {
                driver_id: format!("d-{i}"),
                location: ll(lat, lng),
                recorded_at_ms: 0,
            }
        })
        .collect();
    for u in &updates {
        let at = u.location.unwrap();
        mirror
            .apply_location(&u.driver_id, LatLng::new(at.lat_deg, at.lng_deg).unwrap())
            .unwrap();
    }
    let summary = s
        .drivers()
        .report_locations(tokio_stream::iter(vec![pb::LocationBatch { updates }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.accepted, (DRIVERS / 2) as u64);
    assert_same(&s, &mut mirror, "moved").await;

    // Requests: offered drivers leave the index, demand counts in surge.
    let mut trips = Vec::new();
    for k in 0..6 {
        trips.push(request(&s, &mut mirror, k).await);
    }
    assert_same(&s, &mut mirror, "requested").await;

    // One accepts, one declines (the trip cascades to someone else).
    for (trip, accept) in trips.iter().zip([true, false]) {
        let offer = OfferId::parse(&trip.offer_id).expect("an offered trip");
        s.drivers()
            .respond_to_offer(pb::RespondToOfferRequest {
                offer_id: trip.offer_id.clone(),
                driver_id: trip.driver_id.clone(),
                accept,
            })
            .await
            .unwrap();
        mirror
            .respond(s.clock.now_ms(), offer, &id(&trip.driver_id), accept)
            .unwrap();
    }
    assert_same(&s, &mut mirror, "answered").await;

    // The offers left unanswered expire (a timer, no call) and cascade.
    s.advance(std::time::Duration::from_secs(16)).await;
    mirror.fire_due(s.clock.now_ms());
    assert_same(&s, &mut mirror, "expired").await;

    // A driver going offline leaves the view with its call.
    s.drivers()
        .go_offline(pb::GoOfflineRequest {
            driver_id: "d-3".into(),
        })
        .await
        .unwrap();
    mirror.go_offline(s.clock.now_ms(), &id("d-3")).unwrap();
    assert_same(&s, &mut mirror, "offline").await;
    s.stop().await;
}
