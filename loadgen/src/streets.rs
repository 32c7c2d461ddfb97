//! The city on real streets (`--map FILE`): the engine's road graph as the simulation sees it.
//!
//! The map is read by the engine's own reader (`dispatch::eta::road::RoadGraph`: drivable
//! ways, one-ways, speeds, the largest strongly connected part, edge shapes, snapping), so the
//! simulated drivers use exactly the streets and speeds a road-ETA engine routes on. On top of
//! it the simulation keeps what it needs to move 100k drivers cheaply: every edge's shape
//! projected into the city's local metres with cumulative lengths (a position is then a short
//! scan, no trigonometry), and its own contraction hierarchy (`fast_paths`) answering
//! point-to-point routes as node sequences. That hierarchy is the simulation's ground truth for
//! "how long does this driver really need to reach the pickup", independent of whatever the
//! engine under test estimated.

use crate::city::Xy;
use dispatch::LatLng;
use dispatch::eta::road::{EdgeId, NodeId, RoadGraph};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A place on the road graph: `offset_m` metres along edge `edge` from its start node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoadPos {
    /// The directed edge.
    pub edge: u32,
    /// Metres from the edge's start node, within `0..=length`.
    pub offset_m: f64,
}

/// A route found on the graph: the edges driven in order, starting at `from_m` on the first
/// and ending at `to_m` on the last, and its driving time.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Directed edges in driving order (at least one).
    pub edges: Vec<u32>,
    /// Where on the first edge the route starts, metres.
    pub from_m: f64,
    /// Where on the last edge it ends, metres.
    pub to_m: f64,
    /// Seconds spent at the start before driving (turning around), included in `time_s`.
    pub start_delay_s: f64,
    /// Free-flow driving time, seconds.
    pub time_s: f64,
}

/// What turning around mid-street costs a driver on a two-way street, seconds (the reference
/// router OSRM charges 20 s for a U-turn; a driver finds a driveway or does a three-point
/// turn). On a one-way street the driver has to drive on to the next intersection.
pub const TURN_AROUND_S: f64 = 20.0;

/// The road graph in local metres, with routing. Read-only after construction except for the
/// route search's scratch state, which sits behind a mutex that only the simulation task takes.
///
/// The router is the simulation's own rather than the engine's `RoadGraph::route`: a moving
/// driver goes on to the end of its street before it can turn (the engine, not knowing the
/// heading, may start either way), and the yardstick stays apart from the model it judges.
pub struct Streets {
    graph: Arc<RoadGraph>,
    /// Shape points of edge `e`: `pts[first[e]..first[e + 1]]`, with `cum_m` the metres from
    /// the edge's start to each point.
    first: Vec<u32>,
    pts: Vec<Xy>,
    cum_m: Vec<f64>,
    /// Each edge's length (metres, along its shape) and free-flow time (seconds).
    len_m: Vec<f64>,
    time_s: Vec<f64>,
    /// Cumulative edge lengths, for drawing points uniformly per metre of road.
    len_cum_m: Vec<f64>,
    fast: fast_paths::FastGraph,
    calc: Mutex<fast_paths::PathCalculator>,
}

impl std::fmt::Debug for Streets {
    // The hierarchy and its search state are large and say nothing a reader needs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streets")
            .field("edges", &self.edge_count())
            .field("shape_points", &self.pts.len())
            .finish_non_exhaustive()
    }
}

/// Routing weights are whole milliseconds (`fast_paths` takes integers; 0 is not allowed).
fn weight_ms(time_s: f64) -> usize {
    ((time_s * 1000.0).round() as usize).max(1)
}

impl Streets {
    /// Reads an `.osm.pbf` with the engine's reader. The error names the file.
    pub fn load_graph(path: &Path) -> Result<RoadGraph, String> {
        RoadGraph::load(path).map_err(|e| e.to_string())
    }

    /// The graph in the local metres of `to_xy`, with its hierarchy prepared.
    ///
    /// # Runtime
    /// Dominated by preparing the hierarchy: well under a second for a city, a few seconds
    /// for a region (release build).
    pub fn new(graph: Arc<RoadGraph>, to_xy: impl Fn(LatLng) -> Xy) -> Streets {
        let m = graph.edge_count();
        let mut first = Vec::with_capacity(m + 1);
        let mut pts = Vec::new();
        let mut cum_m = Vec::new();
        let mut len_m = Vec::with_capacity(m);
        let mut time_s = Vec::with_capacity(m);
        let mut len_cum_m = Vec::with_capacity(m);
        let mut total = 0.0;
        let mut input = fast_paths::InputGraph::new();
        for (i, e) in graph.edges().iter().enumerate() {
            first.push(pts.len() as u32);
            let mut acc = 0.0;
            let mut prev: Option<Xy> = None;
            for &p in graph.shape(EdgeId(i as u32)) {
                let q = to_xy(p);
                if let Some(prev) = prev {
                    acc += ((q.x_m - prev.x_m).powi(2) + (q.y_m - prev.y_m).powi(2)).sqrt();
                }
                pts.push(q);
                cum_m.push(acc);
                prev = Some(q);
            }
            // Positions are interpolated along the projected shape; its length agrees with the
            // graph's to well under a metre at city scale. Speeds stay the graph's.
            len_m.push(acc);
            time_s.push(e.time_s);
            total += acc;
            len_cum_m.push(total);
            input.add_edge(e.from.0 as usize, e.to.0 as usize, weight_ms(e.time_s));
        }
        first.push(pts.len() as u32);
        input.freeze();
        let fast = fast_paths::prepare(&input);
        let calc = Mutex::new(fast_paths::create_calculator(&fast));
        Streets {
            graph,
            first,
            pts,
            cum_m,
            len_m,
            time_s,
            len_cum_m,
            fast,
            calc,
        }
    }

    /// The engine's graph underneath.
    pub fn graph(&self) -> &RoadGraph {
        &self.graph
    }

    /// Number of directed edges.
    pub fn edge_count(&self) -> usize {
        self.len_m.len()
    }

    /// Length of an edge along its shape, metres.
    pub fn len_m(&self, edge: u32) -> f64 {
        self.len_m[edge as usize]
    }

    /// Free-flow time to drive the whole edge, seconds.
    pub fn time_s(&self, edge: u32) -> f64 {
        self.time_s[edge as usize]
    }

    /// Seconds to drive edge `edge` from `a_m` to `b_m` metres (`a_m <= b_m`).
    pub fn part_time_s(&self, edge: u32, a_m: f64, b_m: f64) -> f64 {
        let len = self.len_m(edge);
        if len <= 0.0 {
            return 0.0;
        }
        self.time_s(edge) * ((b_m - a_m) / len).clamp(0.0, 1.0)
    }

    /// The node an edge starts at and the one it ends at.
    pub fn ends(&self, edge: u32) -> (u32, u32) {
        let e = self.graph.edge(EdgeId(edge));
        (e.from.0, e.to.0)
    }

    /// The edges leaving the node an edge ends at, except driving straight back along the same
    /// street when there is any other way (a dead end still turns around).
    pub fn next_edges(&self, edge: u32, out: &mut Vec<u32>) {
        out.clear();
        let e = self.graph.edge(EdgeId(edge));
        let back = e.twin.map(|t| t.0);
        out.extend(
            self.graph
                .out_edges(e.to)
                .map(|x| x.0)
                .filter(|&x| Some(x) != back),
        );
        if out.is_empty() {
            out.extend(self.graph.out_edges(e.to).map(|x| x.0));
        }
    }

    /// The point `offset_m` metres along an edge (clamped to it).
    ///
    /// # Runtime
    /// O(shape points of the edge), a handful on city streets.
    pub fn point(&self, pos: RoadPos) -> Xy {
        let e = pos.edge as usize;
        let (a, b) = (self.first[e] as usize, self.first[e + 1] as usize);
        let off = pos.offset_m.clamp(0.0, self.len_m[e]);
        for k in a + 1..b {
            if off <= self.cum_m[k] {
                let (p, q) = (self.pts[k - 1], self.pts[k]);
                let seg = self.cum_m[k] - self.cum_m[k - 1];
                let f = if seg > 0.0 {
                    (off - self.cum_m[k - 1]) / seg
                } else {
                    0.0
                };
                return Xy {
                    x_m: p.x_m + f * (q.x_m - p.x_m),
                    y_m: p.y_m + f * (q.y_m - p.y_m),
                };
            }
        }
        self.pts[b - 1]
    }

    /// Distance from `p` to the nearest point of edge `edge`'s shape, metres.
    pub fn distance_to_edge_m(&self, edge: u32, p: Xy) -> f64 {
        let e = edge as usize;
        let (a, b) = (self.first[e] as usize, self.first[e + 1] as usize);
        (a + 1..b)
            .map(|k| segment_distance_m(p, self.pts[k - 1], self.pts[k]))
            .fold(f64::INFINITY, f64::min)
    }

    /// A road position drawn uniformly per metre of road (busy downtowns have more road).
    pub fn uniform(&self, u_edge: f64, u_offset: f64) -> RoadPos {
        let total = self.len_cum_m.last().copied().unwrap_or(0.0);
        let target = u_edge * total;
        let e = self
            .len_cum_m
            .partition_point(|&c| c < target)
            .min(self.edge_count() - 1);
        RoadPos {
            edge: e as u32,
            offset_m: u_offset * self.len_m[e],
        }
    }

    /// The road position nearest to `latlng` within `max_m` metres, if any.
    pub fn snap(&self, latlng: LatLng, max_m: f64) -> Option<RoadPos> {
        let s = self.graph.snap_within(latlng, max_m)?;
        let edge = s.edge.0;
        // The graph measures along the sphere, this projection in local metres (they differ by
        // up to ~1 % across a region): keep the landing point's share of the edge.
        let graph_len = self.graph.edge(s.edge).length_m;
        let share = if graph_len > 0.0 {
            (s.offset_m / graph_len).clamp(0.0, 1.0)
        } else {
            0.0
        };
        Some(RoadPos {
            edge,
            offset_m: share * self.len_m(edge),
        })
    }

    /// The directed places of a road position: its own edge, and on a two-way street the
    /// same point seen from the twin edge (offset mirrored).
    fn directions(&self, p: RoadPos) -> [Option<RoadPos>; 2] {
        let twin = self.graph.edge(EdgeId(p.edge)).twin.map(|t| RoadPos {
            edge: t.0,
            offset_m: (self.len_m(t.0) - p.offset_m).clamp(0.0, self.len_m(t.0)),
        });
        [Some(p), twin]
    }

    /// The fastest route from `from` to `to`: forward along `from`'s edge, or on a two-way
    /// street turned around on the spot for [`TURN_AROUND_S`]; arriving along `to`'s edge or
    /// its twin. Its `time_s` is what [`Streets::drive_time_s`] returns.
    pub fn route(&self, from: RoadPos, to: RoadPos) -> Route {
        // Each way of leaving `from`: (position, seconds waited before driving).
        let starts: Vec<(RoadPos, f64)> = self
            .directions(from)
            .into_iter()
            .enumerate()
            .filter_map(|(k, p)| p.map(|p| (p, if k == 0 { 0.0 } else { TURN_AROUND_S })))
            .collect();
        let ends: Vec<RoadPos> = self.directions(to).into_iter().flatten().collect();
        let route_of = |edges: Vec<u32>, s: (RoadPos, f64), to_m: f64, time_s: f64| Route {
            edges,
            from_m: s.0.offset_m,
            to_m,
            start_delay_s: s.1,
            time_s,
        };
        // Along one street without passing a node.
        let mut best: Option<Route> = None;
        for &s in &starts {
            for &e in &ends {
                if s.0.edge == e.edge && e.offset_m >= s.0.offset_m {
                    let t = s.1 + self.part_time_s(e.edge, s.0.offset_m, e.offset_m);
                    if best.as_ref().is_none_or(|b| t < b.time_s) {
                        best = Some(route_of(vec![e.edge], s, e.offset_m, t));
                    }
                }
            }
        }
        let sources: Vec<(usize, usize)> = starts
            .iter()
            .map(|&(p, wait)| {
                let rest = self.part_time_s(p.edge, p.offset_m, self.len_m(p.edge));
                (self.ends(p.edge).1 as usize, weight_ms(wait + rest))
            })
            .collect();
        let targets: Vec<(usize, usize)> = ends
            .iter()
            .map(|&p| {
                let part = self.part_time_s(p.edge, 0.0, p.offset_m);
                (self.ends(p.edge).0 as usize, weight_ms(part))
            })
            .collect();
        let path = {
            // Only the simulation task routes; a poisoned lock means it already panicked.
            let mut calc = self.calc.lock().expect("route scratch lock");
            calc.calc_path_multiple_sources_and_targets(&self.fast, sources, targets)
        };
        // The graph is one strongly connected component, so every node reaches every other.
        let path = path.expect("the road graph is strongly connected");
        let time_s = path.get_weight() as f64 / 1000.0;
        if let Some(b) = best
            && b.time_s <= time_s
        {
            return b;
        }
        let nodes = path.get_nodes();
        let (first, last) = (nodes[0] as u32, nodes[nodes.len() - 1] as u32);
        // Which start and which end the search used (distinct end nodes, so unambiguous).
        let s = starts
            .iter()
            .copied()
            .find(|&(p, _)| self.ends(p.edge).1 == first)
            .unwrap_or(starts[0]);
        let e = ends
            .iter()
            .copied()
            .find(|&p| self.ends(p.edge).0 == last)
            .unwrap_or(ends[0]);
        let mut edges = Vec::with_capacity(nodes.len() + 1);
        edges.push(s.0.edge);
        for w in nodes.windows(2) {
            edges.push(self.fastest_edge(w[0] as u32, w[1] as u32));
        }
        edges.push(e.edge);
        route_of(edges, s, e.offset_m, time_s)
    }

    /// Seconds to drive from `from` to `to` along the fastest route.
    pub fn drive_time_s(&self, from: RoadPos, to: RoadPos) -> f64 {
        self.route(from, to).time_s
    }

    /// The fastest edge from node `u` to node `v` (the hierarchy kept the fastest of parallel
    /// edges too).
    fn fastest_edge(&self, u: u32, v: u32) -> u32 {
        self.graph
            .out_edges(NodeId(u))
            .map(|e| e.0)
            .filter(|&e| self.ends(e).1 == v)
            .min_by(|&a, &b| self.time_s(a).total_cmp(&self.time_s(b)))
            // A hierarchy path only steps along input edges once unpacked.
            .expect("consecutive path nodes are joined by an edge")
    }
}

/// Distance from `p` to the segment `a`-`b`, metres.
pub fn segment_distance_m(p: Xy, a: Xy, b: Xy) -> f64 {
    let (dx, dy) = (b.x_m - a.x_m, b.y_m - a.y_m);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.x_m - a.x_m) * dx + (p.y_m - a.y_m) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (cx, cy) = (a.x_m + t * dx, a.y_m + t * dy);
    ((p.x_m - cx).powi(2) + (p.y_m - cy).powi(2)).sqrt()
}
