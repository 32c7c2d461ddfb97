//! The grid and the R-tree must answer exactly like the brute-force oracle: same drivers, same
//! order (distance, then key), same distances to the last bit, for any place on Earth
//! (antimeridian and poles included), any radius and k, filters, and after any sequence of
//! moves, removals and re-additions.

use dispatch::LatLng;
use dispatch::domain::DriverKey;
use dispatch::index::{
    BruteForceIndex, GridIndex, Neighbor, RTreeIndex, SpatialIndex, default_index,
};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Places where bugs hide: a city, both sides of the antimeridian, the pole caps.
const ANCHORS: [(f64, f64); 9] = [
    (40.7, -74.0),
    (0.0, 179.995),
    (0.0, -179.995),
    (60.0, 180.0),
    (-45.0, -180.0),
    (84.9, 10.0),
    (-84.9, -170.0),
    (85.0, 179.99),
    (-84.99, -179.99),
];

fn wrap_lng(lng: f64) -> f64 {
    if (-180.0..=180.0).contains(&lng) {
        lng
    } else {
        (lng + 180.0).rem_euclid(360.0) - 180.0
    }
}

fn point_near(anchor: usize, spread_deg: f64, u: f64, v: f64) -> LatLng {
    let (lat, lng) = ANCHORS[anchor];
    let lat = (lat + u * spread_deg).clamp(-85.0, 85.0);
    // Keep the spread roughly isotropic in metres, capped near the poles.
    let lng_spread = (spread_deg / lat.to_radians().cos().max(0.1)).min(60.0);
    LatLng::new(lat, wrap_lng(lng + v * lng_spread)).unwrap()
}

fn point() -> impl Strategy<Value = LatLng> {
    prop_oneof![
        // Exactly on an anchor: many drivers at one point, ties broken by key.
        1 => (0..ANCHORS.len()).prop_map(|a| point_near(a, 0.0, 0.0, 0.0)),
        4 => (0..ANCHORS.len(), -1.0..1.0f64, -1.0..1.0f64)
            .prop_map(|(a, u, v)| point_near(a, 0.005, u, v)),
        4 => (0..ANCHORS.len(), -1.0..1.0f64, -1.0..1.0f64)
            .prop_map(|(a, u, v)| point_near(a, 0.1, u, v)),
        1 => (-85.0..=85.0f64, -180.0..=180.0f64)
            .prop_map(|(lat, lng)| LatLng::new(lat, lng).unwrap()),
    ]
}

fn radius_m() -> impl Strategy<Value = f64> {
    prop_oneof![1.0..50.0f64, 50.0..2_000.0f64, 2_000.0..50_000.0f64]
}

fn k() -> impl Strategy<Value = usize> {
    prop_oneof![1..5usize, 5..40usize, 40..=200usize]
}

#[derive(Clone, Debug)]
enum Op {
    Upsert(u32, LatLng),
    Remove(u32),
    /// center, radius_m, k, filter modulus (keys with `key % m == 1` are rejected when m > 1).
    Query(LatLng, f64, usize, u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        14 => (0..400u32, point()).prop_map(|(key, p)| Op::Upsert(key, p)),
        2 => (0..400u32).prop_map(Op::Remove),
        4 => (point(), radius_m(), k(), 1..4u32).prop_map(|(c, r, k, m)| Op::Query(c, r, k, m)),
    ]
}

/// The three indexes side by side.
struct Trio {
    brute: BruteForceIndex,
    grid: GridIndex,
    rtree: RTreeIndex,
}

impl Trio {
    fn new(cell_m: f64) -> Self {
        Trio {
            brute: BruteForceIndex::new(),
            grid: GridIndex::with_cell_m(cell_m),
            rtree: RTreeIndex::new(),
        }
    }

    fn upsert(&mut self, key: u32, p: LatLng) {
        for index in self.all() {
            index.upsert(DriverKey(key), p);
        }
    }

    fn remove(&mut self, key: u32) {
        let expected = self.brute.remove(DriverKey(key));
        assert_eq!(
            self.grid.remove(DriverKey(key)),
            expected,
            "grid remove {key}"
        );
        assert_eq!(
            self.rtree.remove(DriverKey(key)),
            expected,
            "rtree remove {key}"
        );
    }

    fn all(&mut self) -> [&mut dyn SpatialIndex; 3] {
        [&mut self.brute, &mut self.grid, &mut self.rtree]
    }

    fn check_query(&mut self, center: LatLng, radius_m: f64, k: usize, modulus: u32) {
        let mut filter = |key: DriverKey| modulus <= 1 || key.0 % modulus != 1;
        let mut expected = Vec::new();
        self.brute
            .nearest(center, radius_m, k, &mut filter, &mut expected);
        let mut got: Vec<Neighbor> = vec![Neighbor {
            key: DriverKey(u32::MAX),
            position: center,
            distance_m: -1.0,
        }];
        self.grid
            .nearest(center, radius_m, k, &mut filter, &mut got);
        assert_eq!(
            got, expected,
            "grid: center {center} radius {radius_m} k {k} mod {modulus}"
        );
        self.rtree
            .nearest(center, radius_m, k, &mut filter, &mut got);
        assert_eq!(
            got, expected,
            "rtree: center {center} radius {radius_m} k {k} mod {modulus}"
        );
    }

    fn check_state(&mut self, key: u32) {
        let p = self.brute.position(DriverKey(key));
        assert_eq!(self.grid.position(DriverKey(key)), p);
        assert_eq!(self.rtree.position(DriverKey(key)), p);
        assert_eq!(self.grid.len(), self.brute.len());
        assert_eq!(self.rtree.len(), self.brute.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random operation sequences over a few hundred keys scattered over hot spots.
    #[test]
    fn random_ops_match_the_oracle(
        ops in prop::collection::vec(op(), 1..250),
        cell_m in prop_oneof![Just(250.0), Just(150.0), Just(600.0)],
    ) {
        let mut trio = Trio::new(cell_m);
        for op in ops {
            match op {
                Op::Upsert(key, p) => {
                    trio.upsert(key, p);
                    trio.check_state(key);
                }
                Op::Remove(key) => {
                    trio.remove(key);
                    trio.check_state(key);
                }
                Op::Query(c, r, k, m) => trio.check_query(c, r, k, m),
            }
        }
    }

    /// Thousands of drivers around one anchor, so ring searches go several rings deep and use
    /// the trig-free proxy; drivers keep moving a little and some leave and come back.
    #[test]
    fn dense_clusters_match_the_oracle(
        seed in any::<u64>(),
        anchor in 0..ANCHORS.len(),
        spread_deg in prop_oneof![Just(0.02), Just(0.2), Just(2.0)],
        n in 200..2_500u32,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut trio = Trio::new(250.0);
        let mut pos = Vec::new();
        for key in 0..n {
            let p = point_near(anchor, spread_deg, rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
            pos.push(p);
            trio.upsert(key, p);
        }
        for round in 0..12 {
            for _ in 0..n / 4 {
                let key = rng.random_range(0..n);
                if rng.random_bool(0.1) {
                    trio.remove(key);
                } else {
                    // Move by up to ~100 m, or re-add.
                    let p = pos[key as usize];
                    let lat = (p.lat_deg() + rng.random_range(-0.001..0.001)).clamp(-85.0, 85.0);
                    let lng = wrap_lng(p.lng_deg() + rng.random_range(-0.001..0.001));
                    let p = LatLng::new(lat, lng).unwrap();
                    pos[key as usize] = p;
                    trio.upsert(key, p);
                }
                trio.check_state(key);
            }
            for _ in 0..3 {
                let c = point_near(anchor, spread_deg * 1.2, rng.random_range(-1.0..1.0), rng.random_range(-1.0..1.0));
                let r = [30.0, 500.0, 5_000.0, 50_000.0][rng.random_range(0..4)];
                let k = [1, 3, 20, 200][rng.random_range(0..4)];
                trio.check_query(c, r, k, round % 3 + 1);
            }
        }
    }
}

fn ll(lat: f64, lng: f64) -> LatLng {
    LatLng::new(lat, lng).unwrap()
}

#[test]
fn empty_index_and_degenerate_queries_answer_nothing() {
    let mut trio = Trio::new(250.0);
    trio.check_query(ll(0.0, 0.0), 1_000.0, 5, 1);
    trio.upsert(1, ll(10.0, 10.0));
    trio.check_query(ll(10.0, 10.0), 1_000.0, 0, 1);
    trio.check_query(ll(10.0, 10.0), f64::NAN, 3, 1);
    trio.check_query(ll(10.0, 10.0), -1.0, 3, 1);
    trio.check_query(ll(10.0, 10.0), 1e7, usize::MAX, 1);
    let mut out = vec![];
    trio.grid
        .nearest(ll(10.0, 10.0), 1.0, 3, &mut |_| false, &mut out);
    assert!(out.is_empty());
}

#[test]
fn radius_is_inclusive_and_zero_radius_finds_the_exact_point() {
    let mut trio = Trio::new(250.0);
    trio.upsert(3, ll(51.5, -0.12));
    trio.upsert(2, ll(51.5, -0.12));
    trio.upsert(9, ll(51.501, -0.12));
    trio.check_query(ll(51.5, -0.12), 0.0, 10, 1);
    let d = ll(51.5, -0.12).distance_m(ll(51.501, -0.12));
    trio.check_query(ll(51.5, -0.12), d, 10, 1);
    let mut out = vec![];
    trio.grid
        .nearest(ll(51.5, -0.12), d, 10, &mut |_| true, &mut out);
    assert_eq!(
        out.iter().map(|n| n.key.0).collect::<Vec<_>>(),
        vec![2, 3, 9]
    );
}

#[test]
fn poles_and_antimeridian_are_neighbours_not_edges() {
    let mut trio = Trio::new(250.0);
    // Drivers at and around both poles, at every longitude.
    for (i, lng) in [-180.0, -90.0, 0.0, 45.0, 180.0].into_iter().enumerate() {
        let i = i as u32;
        trio.upsert(i, ll(90.0, lng));
        trio.upsert(10 + i, ll(89.999, lng));
        trio.upsert(20 + i, ll(-90.0, lng));
        trio.upsert(30 + i, ll(-89.99, lng));
    }
    // Across the antimeridian.
    trio.upsert(40, ll(0.0, 180.0));
    trio.upsert(41, ll(0.0, -180.0));
    trio.upsert(42, ll(0.0, 179.9999));
    trio.upsert(43, ll(0.0, -179.9999));
    trio.upsert(44, ll(-16.5, 179.9));
    trio.upsert(45, ll(-16.5, -179.9));
    for c in [
        ll(90.0, 0.0),
        ll(89.9995, 123.0),
        ll(-90.0, 77.0),
        ll(-89.995, -180.0),
        ll(0.0, 180.0),
        ll(0.0, -180.0),
        ll(0.0001, -179.99995),
        ll(-16.5, 180.0),
        ll(-16.5, -179.95),
    ] {
        for r in [1.0, 15.0, 300.0, 5_000.0, 50_000.0, f64::INFINITY] {
            for k in [1, 2, 4, 7, 50] {
                trio.check_query(c, r, k, 1);
                trio.check_query(c, r, k, 3);
            }
        }
    }
}

#[test]
fn drivers_on_another_continent_are_found_with_an_unbounded_radius() {
    let mut trio = Trio::new(250.0);
    trio.upsert(0, ll(35.68, 139.76)); // Tokyo
    trio.upsert(1, ll(-33.87, 151.21)); // Sydney
    trio.check_query(ll(40.71, -74.0), f64::INFINITY, 1, 1);
    trio.check_query(ll(40.71, -74.0), f64::INFINITY, 5, 1);
    trio.check_query(ll(40.71, -74.0), 15_000_000.0, 5, 1);
}

#[test]
fn removed_keys_can_come_back_anywhere() {
    let mut trio = Trio::new(250.0);
    for round in 0..5 {
        for key in 0..50u32 {
            let p = ll(
                -60.0 + round as f64 * 30.0,
                wrap_lng(170.0 + key as f64 * 0.001),
            );
            trio.upsert(key, p);
        }
        for key in (0..50u32).step_by(3) {
            trio.remove(key);
            trio.check_state(key);
        }
        trio.check_query(ll(-60.0 + round as f64 * 30.0, 170.02), 5_000.0, 20, 1);
    }
    assert_eq!(trio.grid.len(), 33);
    trio.remove(1000);
    assert!(!trio.grid.remove(DriverKey(0)));
}

#[test]
fn city_scale_queries_match_the_oracle() {
    // The benchmark's workload, smaller: 20k drivers around New York.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut trio = Trio::new(250.0);
    for key in 0..20_000u32 {
        let p = ll(
            40.7 + rng.random_range(-0.09..0.09),
            -74.0 + rng.random_range(-0.12..0.12),
        );
        trio.upsert(key, p);
    }
    for _ in 0..200 {
        let c = ll(
            40.7 + rng.random_range(-0.1..0.1),
            -74.0 + rng.random_range(-0.13..0.13),
        );
        trio.check_query(c, 5_000.0, 20, 1);
        trio.check_query(c, 800.0, 200, 2);
    }
}

#[test]
fn memory_is_accounted_and_default_index_is_the_grid() {
    let mut grid = GridIndex::new();
    let empty = grid.memory_bytes();
    for key in 0..1_000u32 {
        grid.upsert(DriverKey(key), ll(48.85 + key as f64 * 1e-4, 2.35));
    }
    assert!(grid.memory_bytes() > empty + 1_000 * 24);
    let mut index = default_index();
    index.upsert(DriverKey(5), ll(1.0, 2.0));
    assert_eq!(index.position(DriverKey(5)), Some(ll(1.0, 2.0)));
    assert_eq!(index.len(), 1);
}

/// The point `distance_m` from `from` on initial bearing `bearing_rad` (great circle).
fn destination(from: LatLng, bearing_rad: f64, distance_m: f64) -> LatLng {
    let delta = distance_m / dispatch::domain::EARTH_RADIUS_M;
    let (lat1, lng1) = (from.lat_deg().to_radians(), from.lng_deg().to_radians());
    let lat2 = (lat1.sin() * delta.cos() + lat1.cos() * delta.sin() * bearing_rad.cos()).asin();
    let lng2 = lng1
        + (bearing_rad.sin() * delta.sin() * lat1.cos())
            .atan2(delta.cos() - lat1.sin() * lat2.sin());
    ll(
        lat2.to_degrees().clamp(-90.0, 90.0),
        wrap_lng(lng2.to_degrees()),
    )
}

#[test]
fn near_ties_on_a_circle_are_ranked_exactly() {
    // Drivers all within a centimetre of the same distance, in every direction: the trig-free
    // proxy orders them differently from the haversine, so only the exact re-ranking (and a
    // correct bound on the proxy's error) gets the k-th right.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for center in [
        ll(60.0, 179.999),
        ll(0.0, -179.9995),
        ll(84.9, 30.0),
        ll(40.7, -74.0),
    ] {
        for radius in [120.0, 300.0, 2_000.0] {
            let mut trio = Trio::new(250.0);
            for key in 0..400u32 {
                let bearing = rng.random_range(0.0..std::f64::consts::TAU);
                let d = radius + rng.random_range(-0.01..0.01);
                trio.upsert(key, destination(center, bearing, d));
            }
            for k in [1, 10, 57, 200, 399] {
                trio.check_query(center, 10_000.0, k, 1);
                trio.check_query(center, radius, k, 2);
            }
        }
    }
}
