//! Driving along the road graph: a driver's current movement as a run of edges, and where on
//! it the driver is at any time.
//!
//! Like the grid's legs, a road leg is a pure function of time, so a driver's position is
//! computed only when it reports. A leg is a [`Route`] started at a simulation time and driven
//! at the edges' free-flow speeds times a time scale (1 while cruising, `--trip-time-scale` on
//! a trip). Cruising drivers get a new random-walk leg of about a minute whenever the last one
//! ended: at each intersection a seeded choice among the ways on, never straight back unless
//! the street is a dead end.

use crate::city::Xy;
use crate::streets::{RoadPos, Route, Streets};

/// Seconds of driving a cruising leg covers (then the next one is drawn).
const CRUISE_S: f64 = 60.0;
/// Edges a cruising leg holds at most (short edges downtown would otherwise make long legs).
const CRUISE_EDGES: usize = 48;

/// A driver's movement along the road graph.
#[derive(Debug, Clone, PartialEq)]
pub struct RoadLeg {
    /// The route driven.
    pub route: Route,
    /// Seconds (real time, before scaling) from the leg's start to the end of each edge's
    /// part of the route.
    pub end_s: Vec<f64>,
    /// Simulation time the leg starts, seconds.
    pub start_s: f64,
    /// Time scale: the route is driven this many times faster than its free-flow time.
    pub scale: f64,
}

impl RoadLeg {
    /// A leg that stays put at `at` from `start_s` on.
    pub fn parked(at: RoadPos, start_s: f64) -> RoadLeg {
        RoadLeg {
            route: Route {
                edges: vec![at.edge],
                from_m: at.offset_m,
                to_m: at.offset_m,
                start_delay_s: 0.0,
                time_s: 0.0,
            },
            end_s: vec![0.0],
            start_s,
            scale: 1.0,
        }
    }

    /// Drives `route` from `start_s` at `scale` times its free-flow speed.
    pub fn along(streets: &Streets, route: Route, start_s: f64, scale: f64) -> RoadLeg {
        let n = route.edges.len();
        let mut end_s = Vec::with_capacity(n);
        let mut acc = route.start_delay_s;
        for (k, &e) in route.edges.iter().enumerate() {
            let a = if k == 0 { route.from_m } else { 0.0 };
            let b = if k + 1 == n {
                route.to_m
            } else {
                streets.len_m(e)
            };
            acc += streets.part_time_s(e, a, b);
            end_s.push(acc);
        }
        RoadLeg {
            route,
            end_s,
            start_s,
            scale,
        }
    }

    /// Simulation time the leg ends, seconds.
    pub fn end_s(&self) -> f64 {
        self.start_s + self.end_s.last().copied().unwrap_or(0.0) / self.scale
    }

    /// Where on the graph the driver is at `t_s` (clamped to the leg's ends).
    ///
    /// # Runtime
    /// O(log edges of the leg).
    pub fn road_pos(&self, streets: &Streets, t_s: f64) -> RoadPos {
        let n = self.route.edges.len();
        let e_s = ((t_s - self.start_s) * self.scale).max(0.0);
        let k = self.end_s.partition_point(|&c| c < e_s).min(n - 1);
        let edge = self.route.edges[k];
        let a = if k == 0 { self.route.from_m } else { 0.0 };
        let b = if k + 1 == n {
            self.route.to_m
        } else {
            streets.len_m(edge)
        };
        let t0 = if k == 0 {
            self.route.start_delay_s
        } else {
            self.end_s[k - 1]
        };
        let t1 = self.end_s[k];
        let f = if t1 > t0 {
            ((e_s - t0) / (t1 - t0)).clamp(0.0, 1.0)
        } else {
            1.0
        };
        RoadPos {
            edge,
            offset_m: a + f * (b - a),
        }
    }

    /// The driver's point at `t_s`.
    pub fn position(&self, streets: &Streets, t_s: f64) -> Xy {
        streets.point(self.road_pos(streets, t_s))
    }

    /// Where the leg ends.
    pub fn end_pos(&self) -> RoadPos {
        RoadPos {
            edge: *self.route.edges.last().unwrap_or(&0),
            offset_m: self.route.to_m,
        }
    }
}

/// A cruising leg from `at`, starting at `start_s`: on to the end of the current edge, then a
/// random walk of about [`CRUISE_S`] seconds. `draw` gives uniform numbers in [0, 1).
pub fn cruise(
    streets: &Streets,
    at: RoadPos,
    start_s: f64,
    mut draw: impl FnMut() -> f64,
    scratch: &mut Vec<u32>,
) -> RoadLeg {
    let mut edges = vec![at.edge];
    let mut time_s = streets.part_time_s(at.edge, at.offset_m, streets.len_m(at.edge));
    // Bounded by CRUISE_EDGES; every edge has a way on (the graph is strongly connected).
    while time_s < CRUISE_S && edges.len() < CRUISE_EDGES {
        let last = *edges.last().unwrap_or(&at.edge);
        streets.next_edges(last, scratch);
        if scratch.is_empty() {
            break;
        }
        let k = ((draw() * scratch.len() as f64) as usize).min(scratch.len() - 1);
        let e = scratch[k];
        edges.push(e);
        time_s += streets.time_s(e);
    }
    let to_m = streets.len_m(*edges.last().unwrap_or(&at.edge));
    let route = Route {
        edges,
        from_m: at.offset_m,
        to_m,
        start_delay_s: 0.0,
        time_s,
    };
    RoadLeg::along(streets, route, start_s, 1.0)
}
