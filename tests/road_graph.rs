//! The road graph on the shipped maps: building (one-ways respected), hierarchy answers equal
//! to plain Dijkstra, snapping, routes that drive connected edges, and load errors that name
//! the file.

use std::path::Path;
use std::sync::OnceLock;

use dispatch::LatLng;
use dispatch::eta::road::{EdgeId, RoadError, RoadGraph, Snap};
use proptest::prelude::*;

fn map(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/maps")
        .join(name)
}

fn monaco() -> &'static RoadGraph {
    static G: OnceLock<RoadGraph> = OnceLock::new();
    G.get_or_init(|| RoadGraph::load(map("monaco.osm.pbf")).expect("the shipped Monaco map loads"))
}

fn isle_of_man() -> &'static RoadGraph {
    static G: OnceLock<RoadGraph> = OnceLock::new();
    G.get_or_init(|| {
        RoadGraph::load(map("isle-of-man.osm.pbf")).expect("the shipped Isle of Man map loads")
    })
}

/// A snap at `offset_m` along `edge`, found by snapping the point there.
fn on_edge(g: &RoadGraph, edge: EdgeId, offset_m: f64) -> Snap {
    g.snap(g.point_along(edge, offset_m))
        .expect("a point on a road snaps")
}

#[test]
fn the_shipped_maps_build_connected_graphs() {
    for (name, g) in [("monaco", monaco()), ("isle of man", isle_of_man())] {
        check_graph(name, g);
    }
    // The island is the larger network; both extracts span their areas.
    assert!(isle_of_man().node_count() > 2 * monaco().node_count());
    let (sw, ne) = isle_of_man().bounds();
    assert!(ne.distance_m(sw) > 30_000.0, "{sw} .. {ne}");
}

fn check_graph(name: &str, g: &RoadGraph) {
    let s = g.stats();
    eprintln!(
        "{name}: {} nodes, {} edges, {:.1} MiB, {:.2} s",
        g.node_count(),
        g.edge_count(),
        s.memory_bytes as f64 / 1048576.0,
        s.total_s
    );
    assert!(g.node_count() > 1_000, "{} nodes", g.node_count());
    assert!(g.edge_count() > g.node_count());
    assert!(s.memory_bytes > 0);
    // Every edge's shape runs from its from-node to its to-node.
    for (i, e) in g.edges().iter().enumerate() {
        let shape = g.shape(EdgeId(i as u32));
        assert!(shape.len() >= 2);
        assert_eq!(shape[0], g.node(e.from));
        assert_eq!(shape[shape.len() - 1], g.node(e.to));
        assert!(e.time_s >= 0.0 && e.length_m >= 0.0 && e.time_s.is_finite());
        if let Some(t) = e.twin {
            let t = g.edge(t);
            assert_eq!(
                (t.from, t.to),
                (e.to, e.from),
                "a twin is the same street reversed"
            );
        }
    }
    // Strongly connected: every node reaches node 0 and is reached from it.
    let a = g.snap(g.node(dispatch::eta::road::NodeId(0))).unwrap();
    for k in 0..20u32 {
        let v = dispatch::eta::road::NodeId(k * 7_919 % g.node_count() as u32);
        let b = g.snap(g.node(v)).unwrap();
        assert!(g.snapped_time_s(&a, &b).is_finite() && g.snapped_time_s(&b, &a).is_finite());
    }
}

#[test]
fn a_route_against_a_one_way_street_is_longer() {
    let g = monaco();
    let mut checked = 0;
    for (i, e) in g.edges().iter().enumerate() {
        if e.twin.is_some() || e.length_m < 80.0 {
            continue;
        }
        let id = EdgeId(i as u32);
        let a = on_edge(g, id, e.length_m * 0.25);
        let b = on_edge(g, id, e.length_m * 0.75);
        if a.edge != id || b.edge != id {
            continue; // landed on an overlapping street; pick another
        }
        let along = g.snapped_time_s(&a, &b);
        let against = g.snapped_time_s(&b, &a);
        assert!(
            (along - e.time_s * 0.5).abs() < 0.01,
            "{along} vs {}",
            e.time_s
        );
        assert!(
            against > along,
            "edge {i}: against {against} s, along {along} s"
        );
        checked += 1;
        if checked == 20 {
            break;
        }
    }
    assert_eq!(checked, 20, "the map has one-way streets");
}

#[test]
fn snapping_finds_the_road_and_refuses_far_points() {
    let g = monaco();
    let e = EdgeId(0);
    let p = g.point_along(e, g.edge(e).length_m / 2.0);
    let s = g.snap(p).unwrap();
    assert!(s.distance_m < 0.5, "{}", s.distance_m);
    // 30 m north of the road: still snaps, at most 30 m away.
    let q = LatLng::new(p.lat_deg() + 30.0 / 111_195.0, p.lng_deg()).unwrap();
    let s = g.snap(q).unwrap();
    assert!(s.distance_m <= 30.5, "{}", s.distance_m);
    // The middle of the sea is off the map.
    assert!(g.snap(LatLng::new(43.60, 7.55).unwrap()).is_none());
    assert!(
        g.route_time_s(q, LatLng::new(43.60, 7.55).unwrap())
            .is_none()
    );
}

/// Distance from `p` to segment `a`-`b`, metres, in a local plane around `p`.
fn segment_distance_m(p: LatLng, a: LatLng, b: LatLng) -> f64 {
    let m_lat = 111_195.0;
    let m_lng = m_lat * p.lat_deg().to_radians().cos();
    let xy = |q: LatLng| {
        (
            (q.lng_deg() - p.lng_deg()) * m_lng,
            (q.lat_deg() - p.lat_deg()) * m_lat,
        )
    };
    let ((ax, ay), (bx, by)) = (xy(a), xy(b));
    let (dx, dy) = (bx - ax, by - ay);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (-(ax * dx + ay * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    ((ax + dx * t).powi(2) + (ay + dy * t).powi(2)).sqrt()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A snap lands on the nearest segment of the whole map (checked against every segment),
    /// and its edge offset leads back to the point it reports.
    #[test]
    fn snaps_land_on_the_nearest_road_at_a_consistent_offset(
        edge in 0u32..1_000, along in 0.0..1.0f64, north_m in -40.0..40.0f64
    ) {
        let g = monaco();
        let e = EdgeId(edge % g.edge_count() as u32);
        let on = g.point_along(e, g.edge(e).length_m * along);
        let p = LatLng::new(on.lat_deg() + north_m / 111_195.0, on.lng_deg()).unwrap();
        let s = g.snap(p).expect("a point within 40 m of a road snaps");
        let nearest = g
            .edges()
            .iter()
            .enumerate()
            .flat_map(|(i, _)| g.shape(EdgeId(i as u32)).windows(2))
            .map(|w| segment_distance_m(p, w[0], w[1]))
            .fold(f64::INFINITY, f64::min);
        prop_assert!((s.distance_m - nearest).abs() < 0.5, "{} vs {nearest}", s.distance_m);
        prop_assert!(s.point.distance_m(p) - s.distance_m < 0.5);
        let back = g.point_along(s.edge, s.offset_m);
        prop_assert!(back.distance_m(s.point) < 1.0, "{} m", back.distance_m(s.point));
    }
}

#[test]
fn routes_drive_connected_edges_in_the_routed_time() {
    let g = monaco();
    let n = g.edge_count() as u32;
    for k in 0..50u32 {
        let (ea, eb) = (EdgeId(k * 7919 % n), EdgeId(k * 104_729 % n));
        let a = on_edge(g, ea, g.edge(ea).length_m * 0.3);
        let b = on_edge(g, eb, g.edge(eb).length_m * 0.6);
        let r = g
            .route(&a, &b)
            .expect("one component: every pair has a route");
        for w in r.edges.windows(2) {
            assert_eq!(g.edge(w[0]).to, g.edge(w[1]).from);
        }
        let t =
            g.snapped_time_s(&a, &b) - (a.distance_m + b.distance_m) / g.options().snap_speed_mps;
        assert!(
            (r.time_s - t).abs() < 1e-6,
            "route {} s, query {t} s",
            r.time_s
        );
        let first = g.edge(r.edges[0]);
        let last = g.edge(*r.edges.last().unwrap());
        let mut sum: f64 = r.edges.iter().map(|&e| g.edge(e).time_s).sum();
        if r.edges.len() == 1 {
            sum = first.time_s * (r.end_offset_m - r.start_offset_m) / first.length_m;
        } else {
            sum -= first.time_s * r.start_offset_m / first.length_m;
            sum -= last.time_s * (1.0 - r.end_offset_m / last.length_m);
        }
        assert!(
            (sum - r.time_s).abs() < 0.002 * r.edges.len() as f64 + 0.01,
            "{sum} vs {}",
            r.time_s
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Hierarchy (bucket many-to-one, fast_paths pairwise) = Dijkstra on the plain graph.
    #[test]
    fn hierarchy_answers_equal_dijkstra(
        target in (0u32..u32::MAX, 0.0f64..1.0),
        sources in prop::collection::vec((0u32..u32::MAX, 0.0f64..1.0), 1..6),
    ) {
        let g = monaco();
        let n = g.edge_count() as u32;
        let at = |(e, f): (u32, f64)| {
            let e = EdgeId(e % n);
            on_edge(g, e, g.edge(e).length_m * f)
        };
        let to = at(target);
        let from: Vec<Option<Snap>> = sources.into_iter().map(|s| Some(at(s))).collect();
        let mut bucket = Vec::new();
        let mut pairwise = Vec::new();
        g.many_to_one_snapped(&from, &to, &mut bucket);
        g.many_to_one_pairwise(&from, &to, &mut pairwise);
        for (i, f) in from.iter().enumerate() {
            let oracle = g.dijkstra_time_s(f.as_ref().unwrap(), &to);
            prop_assert!(oracle.is_some());
            prop_assert_eq!(bucket[i], oracle);
            prop_assert_eq!(pairwise[i], oracle);
        }
    }
}

#[test]
fn a_missing_or_damaged_map_is_named_in_the_error() {
    let missing = Path::new("/nonexistent/city.osm.pbf");
    let e = RoadGraph::load(missing).unwrap_err();
    assert!(matches!(e, RoadError::Read { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/city.osm.pbf"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.osm.pbf");
    std::fs::write(&junk, b"this is not a protobuf file at all").unwrap();
    let e = RoadGraph::load(&junk).unwrap_err();
    assert!(e.to_string().contains("junk.osm.pbf"), "{e}");
}
