//! What publishing the live map's view costs: `Dispatcher::map_view` (the whole build) and
//! `Dispatcher::view_parts` (the dispatcher thread's share: the map-view thread builds the rest)
//! at 100k online drivers (plus a few hundred open trips and pending offers and some surge),
//! the work done every 250 ms of engine time while anyone watches.
//!
//! Criterion reports the typical time; after it, a plain loop of 200 builds prints the median
//! and p99 (the tail matters here: it is time every queued command waits).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use dispatch::config::Config;
use dispatch::domain::{ExternalId, LatLng, Rating, VehicleClass};
use dispatch::engine::{Dispatcher, GoOnline, TripRequest};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const CENTER: (f64, f64) = (40.7, -74.0);
const T0: u64 = 1_700_000_000_000;
const DRIVERS: usize = 100_000;
const TRIPS: usize = 500;

fn point(rng: &mut ChaCha8Rng) -> LatLng {
    // ~30 km x 30 km: 111 drivers per km² at 100k.
    LatLng::new(
        CENTER.0 + rng.random_range(-0.135..0.135),
        CENTER.1 + rng.random_range(-0.18..0.18),
    )
    .unwrap()
}

/// A dispatcher with 100k drivers online and `TRIPS` trips requested (each holding an offer).
fn city() -> Dispatcher {
    let mut d = Dispatcher::new(&Config::default(), dispatch::index::default_index(), 0);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for i in 0..DRIVERS {
        let req = GoOnline {
            driver: ExternalId::new("driver_id", &format!("d-{i}")).unwrap(),
            position: point(&mut rng),
            rating: Rating::new(rng.random_range(4.0..5.0)).unwrap(),
            class: VehicleClass::Any,
            gateway: None,
        };
        d.go_online(T0, req).unwrap();
    }
    for i in 0..TRIPS {
        // Clustered pickups so some cells surge.
        let pickup = if i % 2 == 0 {
            LatLng::new(CENTER.0, CENTER.1).unwrap()
        } else {
            point(&mut rng)
        };
        let req = TripRequest {
            rider: ExternalId::new("rider_id", &format!("r-{i}")).unwrap(),
            request_id: None,
            pickup,
            dropoff: point(&mut rng),
            class: VehicleClass::Any,
        };
        d.request_trip(T0 + i as u64, req).unwrap();
    }
    d.take_events();
    d
}

fn bench(c: &mut Criterion) {
    let d = city();
    let now = T0 + 1_000;
    let view = d.map_view(now);
    assert_eq!(view.drivers.len(), DRIVERS);
    assert_eq!(view.trips.len(), TRIPS);
    // The whole build, as one thread would do it; then the dispatcher thread's share of it
    // (the parts copied at a group boundary), the rest being the map-view thread's.
    c.bench_function("map_view/publish/100k_drivers", |b| {
        b.iter(|| black_box(d.map_view(black_box(now))))
    });
    c.bench_function("map_view/parts/100k_drivers", |b| {
        b.iter(|| black_box(d.view_parts(black_box(now))))
    });

    let timed = |f: &dyn Fn()| {
        let mut times: Vec<Duration> = (0..200)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect();
        times.sort();
        (times[times.len() / 2], times[times.len() * 99 / 100])
    };
    let whole = timed(&|| {
        black_box(d.map_view(now));
    });
    let parts = timed(&|| {
        black_box(d.view_parts(now));
    });
    println!(
        "map_view at {DRIVERS} drivers, {TRIPS} trips, {} surge cells, over 200 builds: whole \
         median {:?}, p99 {:?}; the dispatcher thread's parts median {:?}, p99 {:?}",
        view.surge.len(),
        whole.0,
        whole.1,
        parts.0,
        parts.1
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(5));
    targets = bench
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
