//! How fast are moves and nearest queries, grid versus R-tree, at 10k, 100k and 1M drivers?
//!
//! Workload (seeded): drivers uniform at ~111 per km^2 in a square around 40.7 N, 74.0 W
//! (9.5 km for 10k, 30 km for 100k, 95 km for 1M).
//! - `upsert/{grid,rtree}/N`: move one random driver to a point within 50 m of its starting
//!   position (pre-generated moves, cycled).
//! - `nearest/{grid,rtree}/N`: the 20 nearest within 5 km of a random point in the square,
//!   filter accepting all (pre-generated query points, cycled).
//!
//! It also prints the measured heap bytes per driver of each index (a counting global
//! allocator: bytes allocated after building minus before, divided by the driver count).
//! `INDEX_BENCH_CELL_M=400 cargo bench --bench index -- grid` runs the grid with another cell
//! size (how the default was chosen).
#![allow(
    unsafe_code,
    reason = "the counting global allocator implements GlobalAlloc"
)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dispatch::LatLng;
use dispatch::domain::{DriverKey, EARTH_RADIUS_M};
use dispatch::index::{DEFAULT_CELL_M, GridIndex, Neighbor, RTreeIndex, SpatialIndex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Counts live heap bytes so the benchmark can measure (not estimate) index memory.
struct CountingAlloc;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged;
// the counter is only bookkeeping.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract (layout has non-zero size).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract (ptr came from this allocator with this layout).
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const CENTER: (f64, f64) = (40.7, -74.0);
const MOVES: usize = 1 << 16;
// Many distinct queries, so cycling through them does not keep the touched cells cache-resident.
const QUERIES: usize = 1 << 16;

/// Drivers, moves and query points for one size; everything random is drawn here, outside
/// the timed loops.
struct Fixture {
    n: usize,
    drivers: Vec<LatLng>,
    moves: Vec<(DriverKey, LatLng)>,
    queries: Vec<LatLng>,
}

impl Fixture {
    fn new(n: usize, side_km: f64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
        let m_per_deg = EARTH_RADIUS_M.to_radians();
        let half_lat = side_km * 500.0 / m_per_deg;
        let half_lng = half_lat / CENTER.0.to_radians().cos();
        let in_box = |rng: &mut ChaCha8Rng| {
            LatLng::new(
                CENTER.0 + rng.random_range(-half_lat..half_lat),
                CENTER.1 + rng.random_range(-half_lng..half_lng),
            )
            .expect("inside the box")
        };
        let drivers: Vec<LatLng> = (0..n).map(|_| in_box(&mut rng)).collect();
        let moves = (0..MOVES)
            .map(|_| {
                let key = rng.random_range(0..n);
                let from = drivers[key];
                // Uniform in a disc of 50 m.
                let r_m = 50.0 * rng.random_range(0.0f64..1.0).sqrt();
                let theta = rng.random_range(0.0..std::f64::consts::TAU);
                let dlat = r_m * theta.sin() / m_per_deg;
                let dlng = r_m * theta.cos() / (m_per_deg * from.lat_deg().to_radians().cos());
                let to = LatLng::new(from.lat_deg() + dlat, from.lng_deg() + dlng)
                    .expect("a few metres from a valid point");
                (DriverKey(key as u32), to)
            })
            .collect();
        let queries = (0..QUERIES).map(|_| in_box(&mut rng)).collect();
        Fixture {
            n,
            drivers,
            moves,
            queries,
        }
    }

    /// Builds an index with every driver and reports its measured heap bytes per driver.
    fn build<I: SpatialIndex>(&self, name: &str, make: impl FnOnce() -> I) -> I {
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        let mut index = make();
        for (key, &p) in self.drivers.iter().enumerate() {
            index.upsert(DriverKey(key as u32), p);
        }
        let after = LIVE_BYTES.load(Ordering::Relaxed);
        println!(
            "memory {name}/{}: {:.1} bytes/driver measured (allocated after build - before) / {} drivers",
            self.n,
            (after - before) as f64 / self.n as f64,
            self.n
        );
        index
    }
}

fn bench_upsert(c: &mut Criterion, f: &Fixture, name: &str, index: &mut dyn SpatialIndex) {
    let mut group = c.benchmark_group("upsert");
    let mut i = 0usize;
    group.bench_function(BenchmarkId::new(name, f.n), |b| {
        b.iter(|| {
            let (key, p) = f.moves[i % MOVES];
            i += 1;
            index.upsert(black_box(key), black_box(p));
        })
    });
    group.finish();
}

fn bench_nearest(c: &mut Criterion, f: &Fixture, name: &str, index: &dyn SpatialIndex) {
    let mut group = c.benchmark_group("nearest");
    let mut out: Vec<Neighbor> = Vec::with_capacity(64);
    let mut i = 0usize;
    group.bench_function(BenchmarkId::new(name, f.n), |b| {
        b.iter(|| {
            let center = f.queries[i % QUERIES];
            i += 1;
            index.nearest(black_box(center), 5_000.0, 20, &mut |_| true, &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

/// Whether to build the `name` index: building a million-driver R-tree takes seconds, so a
/// filter that names only the other index (`-- upsert/grid`) skips it.
fn wanted(name: &str) -> bool {
    let other = if name == "grid" { "rtree" } else { "grid" };
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty()
        || filters
            .iter()
            .any(|f| f.contains(name) || !f.contains(other))
}

fn index_benches(c: &mut Criterion) {
    let cell_m = std::env::var("INDEX_BENCH_CELL_M")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(DEFAULT_CELL_M);
    println!("grid cell size: {cell_m} m");
    for (n, side_km) in [(10_000, 9.5), (100_000, 30.0), (1_000_000, 95.0)] {
        let f = Fixture::new(n, side_km);
        if !wanted("grid") {
            continue;
        }
        let mut grid = f.build("grid", || GridIndex::with_cell_m(cell_m));
        println!(
            "memory grid/{n}: {:.1} bytes/driver by GridIndex::memory_bytes",
            grid.memory_bytes() as f64 / n as f64
        );
        bench_upsert(c, &f, "grid", &mut grid);
        bench_nearest(c, &f, "grid", &grid);
        drop(grid);
        if !wanted("rtree") {
            continue;
        }
        let mut rtree = f.build("rtree", RTreeIndex::new);
        bench_upsert(c, &f, "rtree", &mut rtree);
        bench_nearest(c, &f, "rtree", &rtree);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = index_benches
}
criterion_main!(benches);
