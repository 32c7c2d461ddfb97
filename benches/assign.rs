//! How long the batch assignment solver takes on a 500-request x 500-driver batch.
//!
//! - `assign_500x500/dense`: every request can take every driver (250,000 edges, uniform random
//!   costs in 0..1). The worst case for the solver, and the question the 50 ms target asks.
//! - `assign_500x500/candidates_20`: what the dispatcher builds: requests and drivers scattered
//!   over a city, each request with edges to its 20 nearest drivers, cost `1 - score` where the
//!   score falls with distance. The components are large (neighbourhoods overlap).
//!
//! - `batch_flush/500_requests_10k_drivers`: the whole flush in the dispatcher (500 waiting
//!   requests' candidate searches and scoring, the assignment, 500 offers and their events),
//!   i.e. how long one flush holds the dispatcher thread in a busy city.
//!
//! Fixtures are built outside the timed loop; each iteration solves from the edge list (the
//! flush bench builds a fresh dispatcher per iteration, untimed).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use dispatch::config::Config;
use dispatch::domain::{ExternalId, LatLng, Rating, VehicleClass};
use dispatch::engine::{Dispatcher, GoOnline, TripRequest};
use dispatch::events::MatchPolicy;
use dispatch::matching::assign::{Edge, Unassigned, solve};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N: usize = 500;

fn dense(seed: u64) -> Vec<Edge> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..N * N)
        .map(|at| Edge {
            row: at / N,
            col: at % N,
            cost: rng.random_range(0.0..1.0),
        })
        .collect()
}

/// Requests and drivers uniform in a 10 km square; each request's 20 nearest drivers.
fn candidates(seed: u64, k: usize) -> Vec<Edge> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut point = || {
        (
            rng.random_range(0.0..10_000.0),
            rng.random_range(0.0..10_000.0),
        )
    };
    let requests: Vec<(f64, f64)> = (0..N).map(|_| point()).collect();
    let drivers: Vec<(f64, f64)> = (0..N).map(|_| point()).collect();
    let mut edges = Vec::with_capacity(N * k);
    for (row, r) in requests.iter().enumerate() {
        let mut near: Vec<(f64, usize)> = drivers
            .iter()
            .enumerate()
            .map(|(col, d)| (((r.0 - d.0).powi(2) + (r.1 - d.1).powi(2)).sqrt(), col))
            .collect();
        near.sort_by(|a, b| a.0.total_cmp(&b.0));
        for &(distance_m, col) in near.iter().take(k) {
            let score = 0.6 * (1.0 - (distance_m / 5_000.0).min(1.0)) + 0.4 * 0.7;
            edges.push(Edge {
                row,
                col,
                cost: 1.0 - score,
            });
        }
    }
    edges
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("assign_500x500");
    let dense = dense(1);
    group.bench_function("dense", |b| {
        b.iter(|| solve(N, N, black_box(&dense), Unassigned::MaximizeMatches))
    });
    let sparse = candidates(2, 20);
    group.bench_function("candidates_20", |b| {
        b.iter(|| solve(N, N, black_box(&sparse), Unassigned::MaximizeMatches))
    });
    group.finish();

    let mut group = c.benchmark_group("batch_flush");
    group.sample_size(20);
    let (drivers, riders) = city(10_000, 500);
    // The fixture is what it says: every request gets an offer at the flush.
    let mut check = waiting_batch(&drivers, &riders);
    check.fire_due(T0 + WINDOW_MS);
    assert_eq!(check.pending_offers(None).len(), riders.len());
    group.bench_function("500_requests_10k_drivers", |b| {
        b.iter_batched(
            || waiting_batch(&drivers, &riders),
            |mut d| {
                d.fire_due(T0 + WINDOW_MS);
                d
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

const T0: u64 = 1_700_000_000_000;
const WINDOW_MS: u64 = 2_000;

/// `drivers` drivers at ~111 per km² around 40.7 N, 74.0 W, and `riders` requests among them.
fn city(drivers: usize, riders: usize) -> (Vec<GoOnline>, Vec<TripRequest>) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let half_km = (drivers as f64 / 111.0).sqrt() / 2.0;
    let mut point = || {
        let north = rng.random_range(-half_km..half_km) / 111.195;
        let east = rng.random_range(-half_km..half_km) / (111.195 * 40.7f64.to_radians().cos());
        LatLng::new(40.7 + north, -74.0 + east).unwrap()
    };
    let online = (0..drivers)
        .map(|i| GoOnline {
            driver: ExternalId::new("driver_id", &format!("d-{i}")).unwrap(),
            position: point(),
            rating: Rating::new(4.8).unwrap(),
            class: VehicleClass::Any,
            gateway: None,
        })
        .collect();
    let requests = (0..riders)
        .map(|i| TripRequest {
            rider: ExternalId::new("rider_id", &format!("r-{i}")).unwrap(),
            request_id: None,
            pickup: point(),
            dropoff: point(),
            class: VehicleClass::Any,
        })
        .collect();
    (online, requests)
}

/// A batch-policy dispatcher with every driver online and every request waiting for the flush
/// at `T0 + WINDOW_MS`.
fn waiting_batch(drivers: &[GoOnline], riders: &[TripRequest]) -> Dispatcher {
    let mut config = Config::default();
    config.dispatch.policy = MatchPolicy::Batch;
    config.dispatch.batch_window = Duration::from_millis(WINDOW_MS);
    let mut d = Dispatcher::new(&config, dispatch::index::default_index(), 0);
    for g in drivers {
        d.go_online(T0, g.clone()).unwrap();
    }
    for r in riders {
        d.request_trip(T0, r.clone()).unwrap();
    }
    d.take_events();
    d
}

criterion_group!(benches, bench);
criterion_main!(benches);
