//! Short scenarios of every mode against an in-process `dispatch` server on 127.0.0.1:0,
//! checking the report's invariants: every request accounted for, no errors in a healthy run,
//! monotone percentiles. Each stops by itself within a few seconds.

use dispatch::pb;
use dispatch::pb::query_service_client::QueryServiceClient;
use loadgen::{Config, Mode, Report};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A running in-process server; dropping it shuts the server down.
struct TestServer {
    addr: String,
    _shutdown: oneshot::Sender<()>,
}

async fn start_server() -> TestServer {
    start_server_with(dispatch::config::Config::default()).await
}

async fn start_server_with(config: dispatch::config::Config) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let options = dispatch::server::RunOptions::default();
    tokio::spawn(dispatch::server::run(listener, config, options, shutdown));
    TestServer {
        addr,
        _shutdown: tx,
    }
}

fn small_city(mode: Mode) -> Config {
    Config {
        mode,
        drivers: 500,
        requests_per_sec: 20.0,
        duration: Duration::from_secs(4),
        drain: Duration::from_secs(2),
        trip_time_scale: 60.0,
        city_km: 10.0,
        connections: 2,
        gateways: 2,
        clients: 2,
        batch_size: 100,
        seed: 42,
        id_prefix: format!("t{}-", mode.as_str()),
        ..Config::default()
    }
}

fn assert_monotone(name: &str, r: &Report) {
    for (what, p) in [
        ("request_to_offer_ms", r.request_to_offer_ms),
        ("request_to_accept_ms", r.request_to_accept_ms),
        ("nearby_ms", r.nearby_ms),
    ] {
        assert!(p.is_monotone(), "{name}: {what} not monotone: {p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_city_run_accounts_for_every_request_without_errors() {
    let server = start_server().await;
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        loadgen::run(&small_city(Mode::City), &server.addr),
    )
    .await
    .expect("the run stops by itself")
    .expect("the run completes");
    println!("{}", report.table());
    assert_eq!(report.errors, 0, "{:?}", report.error_examples);
    assert!(report.accounted(), "{report:?}");
    assert!(
        report.requests >= 60,
        "about 20/s for 4 s: {}",
        report.requests
    );
    assert_eq!(report.requests_sent, report.requests);
    assert!(report.matched > 0 && report.offers >= report.matched);
    assert!(report.match_rate > 0.8, "{}", report.match_rate);
    // Every driver reports about every 4 s for 4 s; the server confirms them.
    assert!(
        report.location_updates >= 300,
        "{}",
        report.location_updates
    );
    // Only a driver going offline while its update is in flight is refused.
    assert!(report.location_rejected <= report.driver_churn);
    // Nearly every trip gets an offer at once (a few may wait for a busy driver to free up).
    assert!(report.request_to_offer_ms.count <= report.requests);
    assert!(report.request_to_offer_ms.count * 10 >= report.requests * 9);
    assert!(report.request_to_offer_ms.p50 > 0.0);
    assert!(report.mean_pickup_eta_s > 0.0);
    assert!((0.0..=1.0).contains(&report.driver_trips_gini));
    assert_monotone("city", &report);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["mode"], "city");
    // The run took its drivers offline at the end (all but those on a trip).
    let mut q = QueryServiceClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let stats = q
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        stats.drivers_available + stats.drivers_offered < 25,
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_ingest_run_counts_confirmed_updates() {
    let server = start_server().await;
    let cfg = Config {
        duration: Duration::from_secs(2),
        ..small_city(Mode::Ingest)
    };
    let report = tokio::time::timeout(Duration::from_secs(60), loadgen::run(&cfg, &server.addr))
        .await
        .expect("the run stops by itself")
        .expect("the run completes");
    println!("{}", report.table());
    assert_eq!(report.errors, 0, "{:?}", report.error_examples);
    assert!(report.location_updates > 0);
    assert!(report.location_updates + report.location_rejected <= report.location_updates_sent);
    assert!(report.location_updates_per_s > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_nearby_run_measures_queries() {
    let server = start_server().await;
    let cfg = Config {
        duration: Duration::from_secs(2),
        ..small_city(Mode::Nearby)
    };
    let report = tokio::time::timeout(Duration::from_secs(60), loadgen::run(&cfg, &server.addr))
        .await
        .expect("the run stops by itself")
        .expect("the run completes");
    println!("{}", report.table());
    assert_eq!(report.errors, 0, "{:?}", report.error_examples);
    assert!(report.nearby_queries > 0);
    assert_eq!(report.nearby_ms.count, report.nearby_queries);
    assert_monotone("nearby", &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_tokens_is_driven_with_a_token_file() {
    use dispatch::config::{AuthConfig, Role, TokenConfig};
    let secret = "loadgen-test-secret";
    let config = dispatch::config::Config {
        auth: AuthConfig {
            tokens: vec![TokenConfig {
                name: "loadgen".into(),
                token: secret.into(),
                roles: vec![
                    Role::DriverGateway,
                    Role::RiderGateway,
                    Role::Subscriber,
                    Role::Admin,
                ],
            }],
        },
        ..dispatch::config::Config::default()
    };
    let server = start_server_with(config).await;
    let token_file = std::env::temp_dir().join(format!("loadgen-token-{}", std::process::id()));
    std::fs::write(&token_file, format!("{secret}\n")).unwrap();
    let cfg = Config {
        drivers: 100,
        duration: Duration::from_secs(1),
        drain: Duration::from_millis(200),
        token_file: Some(token_file.clone()),
        id_prefix: "tauth-".into(),
        ..small_city(Mode::City)
    };
    let report = tokio::time::timeout(Duration::from_secs(60), loadgen::run(&cfg, &server.addr))
        .await
        .expect("the run stops by itself")
        .expect("the run completes with the token");
    assert_eq!(report.errors, 0, "{:?}", report.error_examples);
    assert!(report.requests > 0);
    // Without the token the server refuses the gateway streams, and the run says so.
    let refused = Config {
        token_file: None,
        id_prefix: "tnoauth-".into(),
        ..cfg
    };
    let err = loadgen::run(&refused, &server.addr).await.unwrap_err();
    assert!(
        err.to_string().contains("Unauthenticated") || err.to_string().contains("token"),
        "{err}"
    );
    let _ = std::fs::remove_file(&token_file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_city_run_with_trip_watchers_keeps_them_open_and_measures_the_server() {
    let server = start_server().await;
    let cfg = Config {
        watch_trips: 10,
        // This test process is the server: its CPU over the window is the server's (and
        // loadgen's), enough to check the measurement is made and divided by the events.
        server_pid: Some(std::process::id()),
        id_prefix: "twatch-".into(),
        ..small_city(Mode::City)
    };
    let report = tokio::time::timeout(Duration::from_secs(60), loadgen::run(&cfg, &server.addr))
        .await
        .expect("the run stops by itself")
        .expect("the run completes");
    assert_eq!(report.errors, 0, "{:?}", report.error_examples);
    assert_eq!(report.watch_trips, 10);
    assert!(report.watch_streams_opened >= 10, "{report:?}");
    // Each watch starts with the trip's snapshot, then its changes.
    assert!(
        report.watch_updates > report.watch_streams_opened,
        "{report:?}"
    );
    let events = report.events_published.expect("measured over the window");
    assert!(events >= report.requests, "a request is at least one event");
    assert!(report.server_cpu_us_per_event.is_some_and(|us| us > 0.0));
    assert!(report.table().contains("server CPU per event"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_city_on_monaco_streets_drives_on_roads_and_measures_actual_pickups() {
    let map = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/maps/monaco.osm.pbf"
    ));
    let server = start_server().await;
    let cfg = Config {
        drivers: 80,
        requests_per_sec: 4.0,
        duration: Duration::from_secs(6),
        drain: Duration::from_secs(6),
        // Pickups take minutes and trips up to ~15 min on Monaco's hills: at 300x a trip is
        // driven within the drain.
        trip_time_scale: 300.0,
        map: Some(map.clone()),
        // Keep the fleet online: its last reported positions are checked below.
        leave_online: true,
        online_minutes: 0.0,
        id_prefix: "tmap-".into(),
        ..small_city(Mode::City)
    };
    let report = tokio::time::timeout(Duration::from_secs(120), loadgen::run(&cfg, &server.addr))
        .await
        .expect("the run stops by itself")
        .expect("the run completes");
    println!("{}", report.table());
    assert_eq!(report.errors, 0, "{:?}", report.error_examples);
    let table = report.table();
    assert!(report.accounted(), "{table}");
    assert!(report.matched > 0, "{table}");
    assert!(report.trips_completed > 0, "{table}");
    assert!(report.location_updates >= 80, "{}", report.location_updates);
    // The drive the rider waits for, on the simulation's own roads: present and positive.
    let json = serde_json::to_value(&report).unwrap();
    assert!(
        json["mean_actual_pickup_s"].as_f64().unwrap() > 0.0,
        "{json}"
    );
    assert!(json["map"].as_str().unwrap().ends_with("monaco.osm.pbf"));

    // Every driver the engine holds sits where it last reported (or went online): on a road of
    // the map, as the engine's own road graph snaps it.
    let graph = dispatch::eta::road::RoadGraph::load(&map).unwrap();
    let (sw, ne) = graph.bounds();
    let mut q = QueryServiceClient::connect(format!("http://{}", server.addr))
        .await
        .unwrap();
    let near = q
        .nearby_drivers(pb::NearbyDriversRequest {
            location: Some(pb::LatLng {
                lat_deg: (sw.lat_deg() + ne.lat_deg()) / 2.0,
                lng_deg: (sw.lng_deg() + ne.lng_deg()) / 2.0,
            }),
            radius_m: 50_000.0,
            limit: 200,
            vehicle_class: pb::VehicleClass::Unspecified as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(near.drivers.len() >= 40, "{}", near.drivers.len());
    for d in &near.drivers {
        let p = d.location.unwrap();
        let at = dispatch::LatLng::new(p.lat_deg, p.lng_deg).unwrap();
        let snap = graph.snap_within(at, 50.0);
        assert!(
            snap.is_some_and(|s| s.distance_m < 2.0),
            "{} reported {p:?}, off the road: {snap:?}",
            d.driver_id
        );
    }
}
