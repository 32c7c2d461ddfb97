//! What drawing drivers across a region border does for pickups near it, over real gRPC.
//!
//! Two regions side by side (west and east of 73.99 W, each about 13.5 km by 11 km), one
//! process, drivers at seeded uniform positions over both. Requests alternate between border
//! pickups (within 300 m of the line, either side) and interior pickups (more than 6 km from
//! it, farther than the 5 km search radius, so they never pull). Each trip is cancelled by its
//! rider at once, so the supply stays the same for the next request. The same seed runs with
//! `cluster.border_pull = 0` and `= 3`, alternated A B A B in one process run.
//!
//! Run: `cargo run --release --example border_pull [drivers] [requests]` (defaults 40 and
//! 400). Prints per variant and pickup kind: requests, share offered a driver at once, mean
//! pickup ETA of those offered (s), and median and p90 RequestTrip latency (ms).

use std::time::Instant;

use dispatch::cluster::regions::RegionConfig;
use dispatch::config::Config;
use dispatch::pb::{
    self, driver_service_client::DriverServiceClient, rider_service_client::RiderServiceClient,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::net::TcpListener;
use tonic::transport::Channel;

const LINE: f64 = -73.99;
/// 1 km in degrees of longitude at 40.75 N.
const KM_LNG: f64 = 1.0 / (111.195 * 0.7575);

fn region(name: &str, lng0: f64, lng1: f64) -> RegionConfig {
    RegionConfig {
        name: name.into(),
        geojson: Some(format!(
            r#"{{"type":"Polygon","coordinates":[[[{lng0},40.7],[{lng1},40.7],[{lng1},40.8],[{lng0},40.8],[{lng0},40.7]]]}}"#
        )),
        geojson_file: None,
    }
}

fn ll(lat: f64, lng: f64) -> Option<pb::LatLng> {
    Some(pb::LatLng {
        lat_deg: lat,
        lng_deg: lng,
    })
}

#[derive(Default)]
struct Tally {
    requests: u64,
    offered: u64,
    eta_s: Vec<f64>,
    latency_ms: Vec<f64>,
}

impl Tally {
    fn line(&self, name: &str) -> String {
        let mut lat = self.latency_ms.clone();
        lat.sort_by(f64::total_cmp);
        let q = |p: f64| lat.get(((lat.len() as f64 - 1.0) * p) as usize).copied();
        let mean_eta = self.eta_s.iter().sum::<f64>() / self.eta_s.len().max(1) as f64;
        format!(
            "{name:<9} requests {:>4}  offered {:>5.1} %  mean pickup ETA {:>6.1} s  \
             latency p50 {:>6.2} ms  p90 {:>6.2} ms",
            self.requests,
            100.0 * self.offered as f64 / self.requests.max(1) as f64,
            mean_eta,
            q(0.5).unwrap_or(0.0),
            q(0.9).unwrap_or(0.0),
        )
    }
}

async fn run(pull: usize, drivers: usize, requests: usize) -> (Tally, Tally) {
    let mut config = Config {
        regions: vec![
            region("west", LINE - 13.5 * KM_LNG, LINE),
            region("east", LINE, LINE + 13.5 * KM_LNG),
        ],
        ..Config::default()
    };
    config.cluster.border_pull = pull;
    config.telemetry.http_listen = None;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        dispatch::server::run(listener, config, Default::default(), async {
            let _ = stop_rx.await;
        })
        .await
        .expect("server runs")
    });
    let channel = loop {
        if let Ok(c) = Channel::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        {
            break c;
        }
        tokio::task::yield_now().await;
    };
    let mut d = DriverServiceClient::new(channel.clone());
    let mut r = RiderServiceClient::new(channel);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for i in 0..drivers {
        let lng = LINE + rng.random_range(-13.4..13.4) * KM_LNG;
        d.go_online(pb::GoOnlineRequest {
            driver_id: format!("d{i}"),
            location: ll(rng.random_range(40.705..40.795), lng),
            rating: 4.7,
            vehicle_class: 0,
            gateway_id: "gw".into(),
        })
        .await
        .expect("online");
    }
    let (mut border, mut interior) = (Tally::default(), Tally::default());
    for i in 0..requests {
        let side = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        let at_border = i % 2 == 0;
        let km = if at_border {
            rng.random_range(0.0..0.3)
        } else {
            rng.random_range(6.5..12.5)
        };
        let pickup = ll(rng.random_range(40.72..40.78), LINE + side * km * KM_LNG);
        let started = Instant::now();
        let trip = r
            .request_trip(pb::RequestTripRequest {
                rider_id: format!("r{i}"),
                request_id: format!("q{i}"),
                pickup,
                dropoff: ll(40.75, LINE + side * 5.0 * KM_LNG),
                vehicle_class: 0,
            })
            .await
            .expect("request")
            .into_inner()
            .trip
            .expect("trip");
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let tally = if at_border {
            &mut border
        } else {
            &mut interior
        };
        tally.requests += 1;
        tally.latency_ms.push(ms);
        if !trip.driver_id.is_empty() {
            tally.offered += 1;
            tally.eta_s.push(trip.pickup_eta_s);
        }
        // A trip nobody could take has ended already (NO_DRIVERS): nothing to cancel.
        let _ = r
            .cancel_trip(pb::CancelTripRequest {
                trip_id: trip.trip_id,
                rider_id: format!("r{i}"),
            })
            .await;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    (border, interior)
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: [drivers] [requests]"))
        .collect();
    let drivers = args.first().copied().unwrap_or(40);
    let requests = args.get(1).copied().unwrap_or(400);
    for round in 1..=2 {
        for pull in [0, 3] {
            let (border, interior) = run(pull, drivers, requests).await;
            println!("round {round}, border_pull {pull}:");
            println!("  {}", border.line("border"));
            println!("  {}", interior.line("interior"));
        }
    }
}
