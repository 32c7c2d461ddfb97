//! The simulated city on the shipped Monaco map: drivers stay on the roads and move at road
//! speeds, trip legs follow routes whose times add up and end where they should, and demand
//! lies on roads. Pure simulation, no server.

use dispatch::LatLng;
use dispatch::eta::road::{EdgeId, RoadGraph};
use loadgen::city::{City, Xy};
use loadgen::fleet::{Fleet, Phase};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, OnceLock};

const MONACO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/maps/monaco.osm.pbf");

/// The map is read and prepared once per test binary.
fn monaco() -> &'static City {
    static CITY: OnceLock<City> = OnceLock::new();
    CITY.get_or_init(|| {
        let graph = RoadGraph::load(std::path::Path::new(MONACO)).expect("the shipped map loads");
        City::on_streets(Arc::new(graph), 6, &mut ChaCha8Rng::seed_from_u64(4))
    })
}

/// Metres from `p` to the nearest road of the engine's graph (its own snapping index, not the
/// simulation's interpolation), or infinity beyond 50 m.
fn off_road_m(city: &City, p: Xy) -> f64 {
    let (lat, lng) = city.to_lat_lng(p);
    let graph = city.streets.as_ref().unwrap().graph();
    graph
        .snap_within(LatLng::new(lat, lng).unwrap(), 50.0)
        .map_or(f64::INFINITY, |s| s.distance_m)
}

fn fastest_road_mps(city: &City) -> f64 {
    let graph = city.streets.as_ref().unwrap().graph();
    graph
        .edges()
        .iter()
        .map(|e| e.speed_mps())
        .fold(0.0, f64::max)
}

#[test]
fn cruising_drivers_stay_on_roads_at_road_speeds() {
    let city = monaco();
    let mut f = Fleet::new(city, 200, 9, 4.0, &mut ChaCha8Rng::seed_from_u64(9));
    for i in 0..f.len() {
        f.set_phase(i, Phase::Idle);
    }
    let vmax = fastest_road_mps(city);
    let mut last: Vec<Xy> = (0..f.len()).map(|i| f.position(city, i, 0.0)).collect();
    let mut moved = 0.0;
    for step in 1..=150 {
        let t = step as f64 * 4.0;
        for (i, prev) in last.iter_mut().enumerate() {
            let p = f.position(city, i, t);
            let off = off_road_m(city, p);
            assert!(off < 1.0, "driver {i} at t={t} is {off} m off the road");
            let d = ((p.x_m - prev.x_m).powi(2) + (p.y_m - prev.y_m).powi(2)).sqrt();
            // A straight line is never longer than the road driven, at most vmax for 4 s.
            assert!(d <= vmax * 4.0 + 0.5, "driver {i} jumped {d} m in 4 s");
            moved += d;
            *prev = p;
        }
    }
    // They do drive: on average several metres per second even as the crow flies.
    let mean_mps = moved / (200.0 * 600.0);
    assert!(mean_mps > 2.0, "{mean_mps}");
}

#[test]
fn demand_pickups_and_dropoffs_lie_on_roads() {
    let city = monaco();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for _ in 0..2000 {
        let p = city.sample_demand(&mut rng);
        assert!(off_road_m(city, p) < 0.5, "{p:?}");
        let d = city.sample_dropoff(p, &mut rng);
        assert!(off_road_m(city, d) < 0.5, "{d:?}");
        // A point on a road snaps to itself.
        let q = city.snap(p);
        assert!((q.x_m - p.x_m).abs() < 0.5 && (q.y_m - p.y_m).abs() < 0.5);
    }
}

#[test]
fn trip_legs_follow_routes_and_arrive_at_the_routed_time() {
    let city = monaco();
    let st = city.streets.as_ref().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut f = Fleet::new(city, 50, 5, 4.0, &mut rng);
    let mut total_s = 0.0;
    for i in 0..f.len() {
        f.set_phase(i, Phase::Idle);
        let t = 10.0 + i as f64;
        let to = city.sample_demand(&mut rng);
        let real_s = f.drive_time_s(city, i, t, to);
        f.set_phase(i, Phase::ToPickup);
        let arrive = f.drive_to(city, i, t, to, 10.0);
        // The leg takes the routed time, scaled, and its edges join up.
        assert!(
            ((arrive - t) * 10.0 - real_s).abs() < 0.05,
            "{real_s} vs {}",
            (arrive - t) * 10.0
        );
        let leg = &f.road[i];
        for w in leg.route.edges.windows(2) {
            assert_eq!(
                st.ends(w[0]).1,
                st.ends(w[1]).0,
                "route breaks between edges"
            );
        }
        // Milliseconds of rounding per edge at most.
        let edges = leg.route.edges.len() as f64;
        assert!((leg.end_s.last().unwrap() - real_s).abs() <= 0.001 * (edges + 2.0));
        // It ends at the pickup and stays there.
        for dt in [0.0, 30.0] {
            let p = f.position(city, i, arrive + dt);
            let miss = ((p.x_m - to.x_m).powi(2) + (p.y_m - to.y_m).powi(2)).sqrt();
            assert!(miss < 0.5, "driver {i} ends {miss} m from the pickup");
        }
        // On the way it is on the road.
        let mid = f.position(city, i, (t + arrive) / 2.0);
        assert!(off_road_m(city, mid) < 1.0);
        total_s += real_s;
    }
    // Routed pickups across Monaco take minutes, not zero.
    assert!(total_s / 50.0 > 30.0, "{}", total_s / 50.0);
}

#[test]
fn parked_drivers_stay_and_resume_cruising_from_where_they_stopped() {
    let city = monaco();
    let mut f = Fleet::new(city, 5, 1, 4.0, &mut ChaCha8Rng::seed_from_u64(1));
    f.set_phase(0, Phase::Idle);
    let p = f.position(city, 0, 20.0);
    f.park(city, 0, 20.0);
    f.set_phase(0, Phase::AtPickup);
    assert_eq!(f.position(city, 0, 200.0), p);
    f.set_phase(0, Phase::Idle);
    // Cruising resumes from the parked point at the park time's leg (no teleport).
    let q = f.position(city, 0, 20.5);
    let d = ((q.x_m - p.x_m).powi(2) + (q.y_m - p.y_m).powi(2)).sqrt();
    assert!(d <= fastest_road_mps(city) * 0.5 + 0.5, "{d}");
}

#[test]
fn a_driver_turns_around_on_a_two_way_street_but_not_on_a_one_way() {
    use loadgen::streets::{RoadPos, TURN_AROUND_S};
    let st = monaco().streets.as_ref().unwrap();
    let graph = st.graph();
    // Long enough that driving on to the end and back takes longer than turning around.
    let long = |two_way: bool| {
        (0..st.edge_count() as u32)
            .find(|&e| {
                let far = 120.0 + TURN_AROUND_S * graph.edge(EdgeId(e)).speed_mps();
                st.len_m(e) > far && graph.edge(EdgeId(e)).twin.is_some() == two_way
            })
            .expect("Monaco has long one-way and two-way streets")
    };
    let at = |edge: u32, offset_m: f64| RoadPos { edge, offset_m };
    // A point 50 m behind, on a two-way street: turn around and drive back.
    let e = long(true);
    let twin = graph.edge(EdgeId(e)).twin.unwrap().0;
    let back = st.route(at(e, 120.0), at(e, 70.0));
    let len = st.len_m(twin);
    let expected = TURN_AROUND_S + st.part_time_s(twin, len - 120.0, len - 70.0);
    assert!(
        back.time_s <= expected + 0.002,
        "{} > {expected}",
        back.time_s
    );
    assert_eq!(back.edges, vec![twin]);
    // Ahead on the same street: just drive on, no waiting.
    let ahead = st.route(at(e, 70.0), at(e, 120.0));
    assert_eq!(ahead.start_delay_s, 0.0);
    assert!((ahead.time_s - st.part_time_s(e, 70.0, 120.0)).abs() < 1e-9);
    // On a one-way street a point behind means driving on to the end first.
    let o = long(false);
    let around = st.route(at(o, 120.0), at(o, 70.0));
    assert_eq!(around.start_delay_s, 0.0);
    assert!(around.time_s >= st.part_time_s(o, 120.0, st.len_m(o)));
    assert!(around.edges.len() >= 3, "{:?}", around.edges);
}
