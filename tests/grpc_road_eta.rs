//! The road ETA model over real gRPC on the shipped Monaco map: offers, NearbyDrivers and the
//! event stream carry the routed ETA (with the hour's congestion), a pickup off the map falls
//! back to the straight-line estimate with the flag, and a bad map stops start-up naming it.

mod support;

use std::path::PathBuf;

use dispatch::LatLng;
use dispatch::config::Config;
use dispatch::eta::road::{EdgeId, RoadGraph};
use dispatch::matching::{EtaConfig, EtaModelKind, HaversineEta};
use dispatch::pb::{self, dispatch_event::Detail};
use support::*;

fn monaco_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/maps/monaco.osm.pbf"
    ))
}

fn road_config(congestion: f64) -> Config {
    let mut c = Config::default();
    c.eta.model = EtaModelKind::Road;
    c.eta.road_map = Some(monaco_path());
    c.eta.road_congestion_by_hour = [congestion; 24];
    c
}

/// The graph the server uses (same file and options: the process shares one load).
fn graph(c: &Config) -> std::sync::Arc<RoadGraph> {
    dispatch::eta::shared_graph(&monaco_path(), dispatch::eta::road_options(&c.eta)).unwrap()
}

/// A driver position and a pickup on Monaco's streets about a kilometre apart.
fn driver_and_pickup(g: &RoadGraph) -> (LatLng, LatLng) {
    let pickup = g.point_along(EdgeId(0), g.edge(EdgeId(0)).length_m / 2.0);
    let driver = (0..g.edge_count() as u32)
        .map(|e| g.point_along(EdgeId(e), g.edge(EdgeId(e)).length_m / 2.0))
        .find(|p| (800.0..1_200.0).contains(&p.distance_m(pickup)))
        .expect("Monaco has streets a kilometre apart");
    (driver, pickup)
}

async fn online_at(s: &TestServer, id: &str, at: LatLng) {
    s.drivers()
        .go_online(pb::GoOnlineRequest {
            driver_id: id.into(),
            location: ll(at.lat_deg(), at.lng_deg()),
            rating: 4.8,
            vehicle_class: 0,
            gateway_id: "gw".into(),
        })
        .await
        .unwrap();
}

async fn request_at(s: &TestServer, pickup: LatLng) -> pb::Trip {
    let mut r = trip_request("r-1", "req-1");
    r.pickup = ll(pickup.lat_deg(), pickup.lng_deg());
    r.dropoff = r.pickup;
    s.riders()
        .request_trip(r)
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap()
}

#[tokio::test]
async fn offers_nearby_and_events_carry_the_routed_eta() {
    for congestion in [1.0, 1.5] {
        let config = road_config(congestion);
        let g = graph(&config);
        let (driver, pickup) = driver_and_pickup(&g);
        let routed = g.route_time_s(driver, pickup).unwrap() * congestion;
        let straight = HaversineEta::new(EtaConfig::default())
            .straight_line_s(driver.distance_m(pickup), T0_MS);
        assert!(
            (routed - straight).abs() > 1.0,
            "the two models differ here"
        );

        let s = start_with(config).await;
        let mut events = s
            .events()
            .subscribe(pb::SubscribeRequest {
                from_offset: Some(0),
                kinds: vec![pb::EventKind::OfferSent as i32],
            })
            .await
            .unwrap()
            .into_inner();
        online_at(&s, "d-1", driver).await;
        let near = s
            .queries()
            .nearby_drivers(pb::NearbyDriversRequest {
                location: ll(pickup.lat_deg(), pickup.lng_deg()),
                radius_m: 0.0,
                limit: 0,
                vehicle_class: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .drivers;
        assert_eq!(near.len(), 1);
        assert_eq!(near[0].eta_source(), pb::EtaSource::Road);
        assert!((near[0].eta_s - routed).abs() < 1e-6);
        let mut offers = offer_stream(&s, "gw").await;
        let trip = request_at(&s, pickup).await;
        assert_eq!(trip.driver_id, "d-1");
        let offer = offer_of(next(&mut offers).await);
        assert!(
            (offer.pickup_eta_s - routed).abs() < 1e-6,
            "{} vs {routed}",
            offer.pickup_eta_s
        );
        assert_eq!(offer.eta_source(), pb::EtaSource::Road);
        assert!((trip.pickup_eta_s - routed).abs() < 1e-6);

        let event = next(&mut events).await;
        let Some(Detail::OfferSent(sent)) = event.detail else {
            panic!("expected an OfferSent detail, got {:?}", event.detail)
        };
        assert_eq!(sent.eta_source(), pb::EtaSource::Road);
        assert!((sent.pickup_eta_s - routed).abs() < 1e-6);

        s.stop().await;
    }
}

#[tokio::test]
async fn an_off_map_pickup_falls_back_to_the_straight_line_with_the_flag() {
    let config = road_config(1.0);
    let g = graph(&config);
    let (driver, _) = driver_and_pickup(&g);
    // Out at sea, about 2 km off the coast: within the search radius, beyond any road.
    let pickup = LatLng::new(driver.lat_deg() - 0.02, driver.lng_deg() + 0.01).unwrap();
    assert!(
        g.snap(pickup).is_none(),
        "the test point must be off the map"
    );
    let expected =
        HaversineEta::new(EtaConfig::default()).straight_line_s(driver.distance_m(pickup), T0_MS);

    let s = start_with(config).await;
    online_at(&s, "d-1", driver).await;
    let mut offers = offer_stream(&s, "gw").await;
    let trip = request_at(&s, pickup).await;
    assert_eq!(trip.driver_id, "d-1", "an off-map pickup is still matched");
    let offer = offer_of(next(&mut offers).await);
    assert_eq!(offer.eta_source(), pb::EtaSource::StraightLineFallback);
    assert!((offer.pickup_eta_s - expected).abs() < 1e-6);
    s.stop().await;
}

#[tokio::test]
async fn the_haversine_model_says_so() {
    let s = start().await;
    online(&s, "d-1", 300.0, 4.9, "gw").await;
    let mut offers = offer_stream(&s, "gw").await;
    request(&s, "r-1", "req-1").await;
    let offer = offer_of(next(&mut offers).await);
    assert_eq!(offer.eta_source(), pb::EtaSource::StraightLine);
    s.stop().await;
}

#[tokio::test]
async fn a_missing_map_stops_start_up_naming_the_file() {
    let mut config = road_config(1.0);
    config.eta.road_map = Some(PathBuf::from("/nonexistent/maps/atlantis.osm.pbf"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = dispatch::server::serve(listener, config, std::future::pending())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/maps/atlantis.osm.pbf"), "{msg}");
    assert!(msg.contains("No such file"), "{msg}");

    // The road model without a map is refused by the config loader, naming the key.
    let e = dispatch::config_load::load(
        None,
        vec![("DISPATCH_ETA__MODEL".to_string(), "road".to_string())],
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("eta.road_map"), "{e}");
    // Set from the environment, the path is read as text.
    let c = dispatch::config_load::load(
        None,
        vec![
            ("DISPATCH_ETA__MODEL".to_string(), "road".to_string()),
            (
                "DISPATCH_ETA__ROAD_MAP".to_string(),
                "data/maps/monaco.osm.pbf".to_string(),
            ),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(
        c.eta.road_map,
        Some(PathBuf::from("data/maps/monaco.osm.pbf"))
    );
}
