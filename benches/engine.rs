//! How long a trip request takes to become a sent offer, in-process.
//!
//! - `request_to_offer/dispatcher/N`: the dispatcher alone (search, ETA, scoring, surge, offer,
//!   events) with N drivers online, the question the 10 us target asks.
//! - `request_to_offer/engine_handle/N`: the same through the engine handle, i.e. including the
//!   bounded channel, the hop to the dispatcher thread and the reply; what a gRPC handler waits.
//!
//! - `request_to_offer/dispatcher_road/N`: the dispatcher alone with the road ETA model on the
//!   shipped Monaco map: N drivers at random points on its roads, pickups on its roads, so
//!   every search snaps 20 candidates and runs one many-to-one road search.
//!
//! Drivers are uniform at ~111 per km² around 40.7 N, 74.0 W (road bench: on Monaco's roads). Each timed request is cancelled
//! outside the timed region so the fleet stays available, and simulated time advances 1 ms
//! per request (a city at 1,000 requests/s, so surge windows fill as they would).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dispatch::clock::ManualClock;
use dispatch::config::Config;
use dispatch::domain::{ExternalId, LatLng, Rating, VehicleClass};
use dispatch::engine::{Dispatcher, Engine, GoOnline, TripRequest};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CENTER: (f64, f64) = (40.7, -74.0);
const DENSITY_PER_KM2: f64 = 111.0;
const T0: u64 = 1_700_000_000_000;

fn config() -> Config {
    let mut c = Config::default();
    c.dispatch.trip_retention = Duration::from_secs(1);
    c
}

/// Random points in the box that holds `n` drivers at the benchmark density.
fn points(n: usize, count: usize, seed: u64) -> Vec<LatLng> {
    let side_km = (n as f64 / DENSITY_PER_KM2).sqrt();
    let dlat = side_km / 111.195 / 2.0;
    let dlng = dlat / CENTER.0.to_radians().cos();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            LatLng::new(
                CENTER.0 + rng.random_range(-dlat..dlat),
                CENTER.1 + rng.random_range(-dlng..dlng),
            )
            .unwrap()
        })
        .collect()
}

fn drivers(n: usize) -> Vec<GoOnline> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    points(n, n, 1)
        .into_iter()
        .enumerate()
        .map(|(i, position)| GoOnline {
            driver: ExternalId::new("driver_id", &format!("d-{i}")).unwrap(),
            position,
            rating: Rating::new(rng.random_range(4.0..5.0)).unwrap(),
            class: VehicleClass::Any,
            gateway: None,
        })
        .collect()
}

fn requests(n: usize) -> Vec<TripRequest> {
    let pickups = points(n, 4096, 2);
    let dropoffs = points(n, 4096, 3);
    pickups
        .into_iter()
        .zip(dropoffs)
        .enumerate()
        .map(|(i, (pickup, dropoff))| TripRequest {
            rider: ExternalId::new("rider_id", &format!("r-{i}")).unwrap(),
            request_id: None,
            pickup,
            dropoff,
            class: VehicleClass::Any,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_to_offer");
    group.measurement_time(Duration::from_secs(5));
    for n in [10_000usize, 100_000] {
        let reqs = requests(n);

        let mut d = Dispatcher::new(&config(), dispatch::index::default_index(), 0);
        for g in drivers(n) {
            d.go_online(T0, g).unwrap();
        }
        d.take_events();
        let mut now = T0;
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("dispatcher", n), |b| {
            b.iter_custom(|iters| time_requests(&mut d, &reqs, iters, &mut now, &mut i))
        });

        if n == 100_000 {
            bench_road(&mut group, n);
        }

        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let engine =
            Engine::start(&config(), dispatch::index::default_index(), clock.clone()).unwrap();
        runtime.block_on(async {
            for g in drivers(n) {
                engine.go_online(g).await.unwrap();
            }
        });
        group.bench_function(BenchmarkId::new("engine_handle", n), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let req = reqs[i % reqs.len()].clone();
                        let rider = req.rider.clone();
                        i += 1;
                        clock.advance(Duration::from_millis(1));
                        let start = Instant::now();
                        let (trip, _) = engine.request_trip(req).await.unwrap();
                        timed += start.elapsed();
                        if trip.offer.is_some() {
                            engine.cancel_trip(trip.id, rider).await.unwrap();
                        }
                    }
                    timed
                })
            })
        });
        let stopping = engine.clone();
        stopping.shutdown();
    }
    group.finish();
}

/// The dispatcher bench on Monaco's roads with the road ETA model.
fn bench_road(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    n: usize,
) {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/maps/monaco.osm.pbf"
    ));
    let mut config = config();
    config.eta.model = dispatch::matching::EtaModelKind::Road;
    config.eta.road_map = Some(path.to_path_buf());
    let graph = dispatch::eta::shared_graph(path, dispatch::eta::road_options(&config.eta))
        .expect("the shipped map loads");
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut on_road = || {
        let e = dispatch::eta::road::EdgeId(rng.random_range(0..graph.edge_count() as u32));
        graph.point_along(e, graph.edge(e).length_m * rng.random_range(0.0..1.0))
    };
    let mut d = Dispatcher::new(&config, dispatch::index::default_index(), 0);
    for (i, mut g) in drivers(n).into_iter().enumerate() {
        g.position = on_road();
        d.go_online(T0, g)
            .unwrap_or_else(|e| panic!("driver {i}: {e}"));
    }
    d.take_events();
    let reqs: Vec<TripRequest> = requests(n)
        .into_iter()
        .map(|mut r| {
            r.pickup = on_road();
            r.dropoff = on_road();
            r
        })
        .collect();
    let mut now = T0;
    let mut i = 0usize;
    group.bench_function(BenchmarkId::new("dispatcher_road", n), |b| {
        b.iter_custom(|iters| time_requests(&mut d, &reqs, iters, &mut now, &mut i))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

/// Times `iters` requests on `d` (cycling through `reqs`, one engine millisecond apart); each
/// offered trip is cancelled afterwards, outside the timing, so the fleet stays available.
fn time_requests(
    d: &mut Dispatcher,
    reqs: &[TripRequest],
    iters: u64,
    now: &mut u64,
    i: &mut usize,
) -> Duration {
    let mut timed = Duration::ZERO;
    for _ in 0..iters {
        let req = reqs[*i % reqs.len()].clone();
        let rider = req.rider.clone();
        *i += 1;
        *now += 1;
        let start = Instant::now();
        let (trip, _) = d.request_trip(*now, req).unwrap();
        timed += start.elapsed();
        black_box(&trip);
        if trip.offer.is_some() {
            d.cancel_trip(*now, trip.id, &rider).unwrap();
        }
        d.fire_due(*now);
        d.take_events();
    }
    timed
}
