//! How long the ETAs of one search take: 20 candidates to one pickup on Monaco's streets.
//!
//! - `eta/road/20_to_1`: the road model as the dispatcher calls it (snap the 20 candidates
//!   and the pickup, one many-to-one bucket search, congestion), the question the 60 us target
//!   asks.
//! - `eta/road_pairwise/20_to_1`: the same answers as 20 `fast_paths` point-to-point searches
//!   with one reused calculator (points already snapped), the alternative the bucket method
//!   was measured against.
//! - `eta/road_bucket/20_to_1`: the bucket search alone on the same snapped points, so the two
//!   search strategies compare like for like.
//! - `eta/road_snap/21`: snapping the 20 candidates and the pickup alone, the rest of
//!   `eta/road/20_to_1`.
//! - `eta/haversine/20_to_1`: the straight-line model, the floor.
//!
//! Pickups and candidates are random points on the map's roads (seeded); the candidates of a
//! pickup are its 20 nearest among 2,000 drivers, as the index would hand them over. 64
//! scenarios rotate so no single search stays in cache.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use dispatch::LatLng;
use dispatch::config::Config;
use dispatch::eta::road::{EdgeId, RoadGraph, Snap};
use dispatch::matching::{Eta, EtaModelKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const T0: u64 = 1_700_000_000_000;

fn on_road(g: &RoadGraph, rng: &mut ChaCha8Rng) -> LatLng {
    let e = EdgeId(rng.random_range(0..g.edge_count() as u32));
    g.point_along(e, g.edge(e).length_m * rng.random_range(0.0..1.0))
}

/// (pickup, candidates with their great-circle metres), nearest first.
type Scenario = (LatLng, Vec<(LatLng, f64)>);

fn scenarios(g: &RoadGraph) -> Vec<Scenario> {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let fleet: Vec<LatLng> = (0..2_000).map(|_| on_road(g, &mut rng)).collect();
    (0..64)
        .map(|_| {
            let pickup = on_road(g, &mut rng);
            let mut near: Vec<(LatLng, f64)> =
                fleet.iter().map(|&p| (p, p.distance_m(pickup))).collect();
            near.sort_by(|a, b| a.1.total_cmp(&b.1));
            near.truncate(20);
            (pickup, near)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/maps/monaco.osm.pbf"
    ));
    let mut config = Config::default();
    config.eta.model = EtaModelKind::Road;
    config.eta.road_map = Some(path.to_path_buf());
    let road = dispatch::eta::from_config(&config).expect("the shipped map loads");
    let haversine = dispatch::eta::from_config(&Config::default()).unwrap();
    let graph: Arc<RoadGraph> =
        dispatch::eta::shared_graph(path, dispatch::eta::road_options(&config.eta)).unwrap();
    let scenarios = scenarios(&graph);
    let snapped: Vec<(Snap, Vec<Option<Snap>>)> = scenarios
        .iter()
        .map(|(p, cands)| {
            let to = graph.snap(*p).unwrap();
            (to, cands.iter().map(|&(q, _)| graph.snap(q)).collect())
        })
        .collect();

    let mut group = c.benchmark_group("eta");
    let mut out: Vec<Eta> = Vec::with_capacity(20);
    for (name, model) in [("road", &road), ("haversine", &haversine)] {
        let mut i = 0usize;
        group.bench_function(format!("{name}/20_to_1"), |b| {
            b.iter(|| {
                let (pickup, cands) = &scenarios[i % scenarios.len()];
                i += 1;
                model.many_to_one(cands, *pickup, T0, &mut out);
                black_box(&out);
            })
        });
    }
    let mut times = Vec::with_capacity(20);
    let mut i = 0usize;
    group.bench_function("road_pairwise/20_to_1", |b| {
        b.iter(|| {
            let (to, from) = &snapped[i % snapped.len()];
            i += 1;
            graph.many_to_one_pairwise(from, to, &mut times);
            black_box(&times);
        })
    });
    group.bench_function("road_bucket/20_to_1", |b| {
        b.iter(|| {
            let (to, from) = &snapped[i % snapped.len()];
            i += 1;
            graph.many_to_one_snapped(from, to, &mut times);
            black_box(&times);
        })
    });
    let mut i = 0usize;
    group.bench_function("road_snap/21", |b| {
        b.iter(|| {
            let (pickup, cands) = &scenarios[i % scenarios.len()];
            i += 1;
            black_box(graph.snap(*pickup));
            for &(p, _) in cands {
                black_box(graph.snap(p));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
