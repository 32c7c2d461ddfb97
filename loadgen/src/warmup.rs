//! Bringing a fleet online before a measured window (ingest and nearby modes), and taking it
//! offline after the run.
//!
//! 100k GoOnline calls are made from one task with a bounded number in flight, spread over the
//! connections; this takes a few seconds and is reported as `warmup_s`, outside the window.

use crate::city::City;
use crate::config::Config;
use crate::fleet::{mix3, mix64, unit};
use crate::progress::Progress;
use crate::report::Report;
use crate::rpc::Conn;
use crate::rpc::{self, Ids};
use dispatch::pb;
use dispatch::pb::driver_service_client::DriverServiceClient;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// GoOnline calls in flight at most.
const IN_FLIGHT: usize = 512;

/// The seeded city every mode runs in: the same seed gives the same streets and hotspots.
/// With `--map` the streets are the map's roads (read and prepared here, in a second or so).
pub(crate) fn city_for(cfg: &Config, rng: &mut ChaCha8Rng) -> crate::Result<City> {
    if let Some(path) = &cfg.map {
        let graph = crate::streets::Streets::load_graph(path).map_err(crate::Error::Config)?;
        return Ok(City::on_streets(
            std::sync::Arc::new(graph),
            cfg.hotspots,
            rng,
        ));
    }
    Ok(City::new(
        cfg.centre_lat,
        cfg.centre_lng,
        cfg.city_km,
        cfg.block_m,
        cfg.hotspots,
        rng,
    ))
}

/// Brings the fleet online for a query-only mode (ingest, nearby) and starts its report with
/// the warm-up's time and errors. Also returns each driver's starting position.
pub(crate) async fn warm_up_report(
    cfg: &Config,
    mode: &str,
    channels: &[Conn],
    city: &City,
    ids: &Ids,
    progress: &Progress,
) -> (Report, Vec<(f64, f64)>) {
    let mut report = Report {
        mode: mode.into(),
        drivers: cfg.drivers as u64,
        seed: cfg.seed,
        ..Report::default()
    };
    progress.phase(&format!("bringing {} drivers online", cfg.drivers));
    let start = tokio::time::Instant::now();
    let warm = bring_online(channels, city, ids, cfg.drivers, cfg.gateways, cfg.seed).await;
    report.warmup_s = start.elapsed().as_secs_f64();
    report.errors += warm.errors;
    report.error_examples.extend(warm.examples);
    (report, warm.positions)
}

/// Outcome of a warm-up.
#[derive(Debug, Default)]
pub(crate) struct Warmup {
    /// Drivers that went online.
    pub(crate) online: u64,
    /// Calls that failed.
    pub(crate) errors: u64,
    /// Up to 10 failures.
    pub(crate) examples: Vec<String>,
    /// Each driver's starting position, degrees (lat, lng).
    pub(crate) positions: Vec<(f64, f64)>,
}

/// Puts `n` drivers online at seeded positions (half around demand hotspots, half uniform),
/// spread over `gateways` gateway ids.
pub(crate) async fn bring_online(
    channels: &[Conn],
    city: &City,
    ids: &Ids,
    n: usize,
    gateways: usize,
    seed: u64,
) -> Warmup {
    let mut rng = ChaCha8Rng::seed_from_u64(mix64(seed ^ 0x0A11_0E11));
    let fleet = crate::fleet::Fleet::new(city, n, seed, 4.0, &mut rng);
    let positions: Vec<(f64, f64)> = fleet.legs.iter().map(|l| city.to_lat_lng(l.from)).collect();
    let clients: Vec<DriverServiceClient<Conn>> = channels
        .iter()
        .cloned()
        .map(DriverServiceClient::new)
        .collect();
    let mut w = Warmup::default();
    let mut in_flight = FuturesUnordered::new();
    let mut next = 0usize;
    // Bounded: each iteration either starts one of the n calls or finishes one.
    while next < n || !in_flight.is_empty() {
        while next < n && in_flight.len() < IN_FLIGHT {
            let (lat, lng) = positions[next];
            let h = mix3(seed, next as u64, 0x5EED_0001);
            let req = pb::GoOnlineRequest {
                driver_id: ids.driver(next),
                location: Some(pb::LatLng {
                    lat_deg: lat,
                    lng_deg: lng,
                }),
                rating: 4.0 + unit(mix64(h)),
                vehicle_class: pb::VehicleClass::Economy as i32,
                // Every driver names a gateway (the engine refuses none); these modes open no
                // offer streams, as their drivers are never requested.
                gateway_id: ids.gateway(next % gateways.max(1)),
            };
            let mut client = clients[next % clients.len()].clone();
            in_flight.push(async move { client.go_online(req).await });
            next += 1;
        }
        match in_flight.next().await {
            Some(Ok(_)) => w.online += 1,
            Some(Err(status)) => {
                w.errors += 1;
                if w.examples.len() < 10 {
                    w.examples.push(rpc::describe("GoOnline", &status));
                }
            }
            None => {}
        }
    }
    w.positions = positions;
    w
}

/// Takes `drivers` offline after a run, with a bounded number of calls in flight. Returns how
/// many calls failed (drivers on a trip refuse; that is expected and not reported).
pub(crate) async fn take_offline(channels: &[Conn], ids: &Ids, drivers: &[usize]) -> u64 {
    let clients: Vec<DriverServiceClient<Conn>> = channels
        .iter()
        .cloned()
        .map(DriverServiceClient::new)
        .collect();
    let mut in_flight = FuturesUnordered::new();
    let mut failed = 0;
    let mut next = 0usize;
    // Bounded: each iteration either starts one of the calls or finishes one.
    while next < drivers.len() || !in_flight.is_empty() {
        while next < drivers.len() && in_flight.len() < IN_FLIGHT {
            let req = pb::GoOfflineRequest {
                driver_id: ids.driver(drivers[next]),
            };
            let mut client = clients[next % clients.len()].clone();
            in_flight.push(async move { client.go_offline(req).await });
            next += 1;
        }
        if let Some(Err(_)) = in_flight.next().await {
            failed += 1;
        }
    }
    failed
}
