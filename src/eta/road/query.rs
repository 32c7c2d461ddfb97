//! Routing queries on a [`RoadGraph`]: point to point, many to one, and full routes with
//! their edges (for a simulator that drives them).
//!
//! A snapped point sits part-way along an edge, so a search starts from the edge's end node(s)
//! with the rest of the edge already paid (and ends at the start node(s) with the first part
//! still to pay); two points on the same street may also be joined directly along it. Two-way
//! streets offer both directions.

use fast_paths::PathCalculator;

use super::ch::{self, INF, Seed};
use super::{EdgeId, RoadGraph, Snap};
use crate::domain::LatLng;

/// Edge and seed times are whole milliseconds in the hierarchy: fine enough that rounding
/// never reorders two candidates a person would tell apart.
pub(super) fn weight_ms(time_s: f64) -> u64 {
    ((time_s * 1000.0).round() as u64).max(1)
}

fn ms(time_s: f64) -> u64 {
    (time_s * 1000.0).round().max(0.0) as u64
}

/// Search state for one query at a time.
pub(super) struct Scratch {
    ch: ch::Scratch,
    calc: PathCalculator,
    sources: Vec<[Seed; 2]>,
    direct: Vec<u64>,
    times: Vec<u64>,
}

impl std::fmt::Debug for Scratch {
    // `PathCalculator` has no Debug; its contents are transient search state anyway.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch").finish_non_exhaustive()
    }
}

/// A driving route between two snapped points.
#[derive(Clone, Debug)]
pub struct Route {
    /// Free-flow driving time along the roads, seconds (snap distances excluded).
    pub time_s: f64,
    /// The edges driven, in order: the first from the start's offset, the last up to the
    /// end's offset; one edge when both points lie on it.
    pub edges: Vec<EdgeId>,
    /// Metres along `edges[0]` where the route starts.
    pub start_offset_m: f64,
    /// Metres along the last edge where the route ends.
    pub end_offset_m: f64,
}

impl RoadGraph {
    fn with_scratch<T>(&self, f: impl FnOnce(&mut Scratch) -> T) -> T {
        let taken = self.pool.lock().pop();
        let mut s = taken.unwrap_or_else(|| Scratch {
            ch: ch::Scratch::default(),
            calc: fast_paths::create_calculator(&self.fast),
            sources: Vec::new(),
            direct: Vec::new(),
            times: Vec::new(),
        });
        let out = f(&mut s);
        self.pool.lock().push(s);
        out
    }

    /// The directed positions of a snap: its edge, and its twin (offset mirrored) if two-way.
    fn positions(&self, s: &Snap) -> [(EdgeId, f64); 2] {
        let e = self.edge(s.edge);
        let twin = e
            .twin
            .map_or((s.edge, f64::NAN), |t| (t, e.length_m - s.offset_m));
        [(s.edge, s.offset_m), twin]
    }

    fn part_time_s(&self, e: EdgeId, from_m: f64, to_m: f64) -> f64 {
        let edge = self.edge(e);
        if edge.length_m > 0.0 {
            edge.time_s * ((to_m - from_m) / edge.length_m).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// Seeds leaving a source point: each direction's end node with the rest of its edge.
    fn source_seeds(&self, s: &Snap) -> [Seed; 2] {
        self.positions(s).map(|(e, o)| {
            if o.is_nan() {
                return (self.edge(e).to.0, INF);
            }
            let rest = self.part_time_s(e, o, self.edge(e).length_m);
            (self.edge(e).to.0, ms(rest))
        })
    }

    /// Seeds entering a target point: each direction's start node with the part still to go.
    fn target_seeds(&self, s: &Snap) -> [Seed; 2] {
        self.positions(s).map(|(e, o)| {
            if o.is_nan() {
                return (self.edge(e).from.0, INF);
            }
            (self.edge(e).from.0, ms(self.part_time_s(e, 0.0, o)))
        })
    }

    /// Time joining the two points along one street without passing a node, ms.
    fn direct_ms(&self, from: &Snap, to: &Snap) -> u64 {
        let mut best = INF;
        for (e1, o1) in self.positions(from) {
            for (e2, o2) in self.positions(to) {
                if e1 == e2 && !o1.is_nan() && o2 >= o1 {
                    best = best.min(ms(self.part_time_s(e1, o1, o2)));
                }
            }
        }
        best
    }

    /// Seconds to cover both snap distances at the snap speed.
    fn snap_legs_s(&self, from: &Snap, to: &Snap) -> f64 {
        (from.distance_m + to.distance_m) / self.options.snap_speed_mps
    }

    /// Free-flow driving time from `from` to `to`, seconds, including both snap distances at
    /// the snap speed; `None` when either point does not snap.
    ///
    /// # Runtime
    /// One bidirectional hierarchy search: tens of microseconds on a city.
    pub fn route_time_s(&self, from: LatLng, to: LatLng) -> Option<f64> {
        let (a, b) = (self.snap(from)?, self.snap(to)?);
        Some(self.snapped_time_s(&a, &b))
    }

    /// Like [`RoadGraph::route_time_s`] between two points already snapped.
    pub fn snapped_time_s(&self, from: &Snap, to: &Snap) -> f64 {
        let mut out = Vec::with_capacity(1);
        self.many_to_one_snapped(&[Some(*from)], to, &mut out);
        out[0].unwrap_or(f64::INFINITY)
    }

    /// Driving times from each of `from` to `to`, seconds (as [`RoadGraph::route_time_s`]);
    /// `None` for a point that does not snap (all `None` when `to` does not).
    ///
    /// # Runtime
    /// One backward search from `to`, then one short forward search per source (the bucket
    /// method): about 20 us for 20 candidates on a city in a release build.
    pub fn many_to_one(&self, from: &[LatLng], to: LatLng) -> Vec<Option<f64>> {
        let mut out = Vec::with_capacity(from.len());
        match self.snap(to) {
            Some(t) => {
                let snaps: Vec<Option<Snap>> = from.iter().map(|&p| self.snap(p)).collect();
                self.many_to_one_snapped(&snaps, &t, &mut out);
            }
            None => out.resize(from.len(), None),
        }
        out
    }

    /// [`RoadGraph::many_to_one`] on points already snapped, written to `out` (no allocation
    /// once warm).
    pub fn many_to_one_snapped(
        &self,
        from: &[Option<Snap>],
        to: &Snap,
        out: &mut Vec<Option<f64>>,
    ) {
        out.clear();
        let target = self.target_seeds(to);
        self.with_scratch(|s| {
            s.sources.clear();
            s.direct.clear();
            for f in from.iter().flatten() {
                s.sources.push(self.source_seeds(f));
                s.direct.push(self.direct_ms(f, to));
            }
            self.upward
                .many_to_one(&mut s.ch, &s.sources, &target, &mut s.times);
            let mut k = 0;
            for f in from {
                out.push(f.as_ref().and_then(|f| {
                    let best = s.times[k].min(s.direct[k]);
                    k += 1;
                    (best != INF).then(|| best as f64 / 1000.0 + self.snap_legs_s(f, to))
                }));
            }
        });
    }

    /// The same answers as [`RoadGraph::many_to_one_snapped`], computed as one `fast_paths`
    /// point-to-point search per source with a reused calculator. Kept to measure the bucket
    /// method against (`cargo bench --bench eta`).
    pub fn many_to_one_pairwise(
        &self,
        from: &[Option<Snap>],
        to: &Snap,
        out: &mut Vec<Option<f64>>,
    ) {
        out.clear();
        let target: Vec<(usize, usize)> = live(self.target_seeds(to));
        self.with_scratch(|s| {
            for f in from {
                out.push(f.as_ref().and_then(|f| {
                    let seeds = live(self.source_seeds(f));
                    let routed = s
                        .calc
                        .calc_path_multiple_sources_and_targets(&self.fast, seeds, target.clone())
                        .map_or(INF, |p| p.get_weight() as u64);
                    let best = routed.min(self.direct_ms(f, to));
                    (best != INF).then(|| best as f64 / 1000.0 + self.snap_legs_s(f, to))
                }));
            }
        });
    }

    /// The fastest route between two snapped points, with its edges; `None` if there is none
    /// (cannot happen within one strongly connected graph, but the type says so).
    pub fn route(&self, from: &Snap, to: &Snap) -> Option<Route> {
        let direct = self.direct_ms(from, to);
        let path = self.with_scratch(|s| {
            s.calc.calc_path_multiple_sources_and_targets(
                &self.fast,
                live(self.source_seeds(from)),
                live(self.target_seeds(to)),
            )
        });
        let routed = path.as_ref().map_or(INF, |p| p.get_weight() as u64);
        if direct <= routed {
            if direct == INF {
                return None;
            }
            let [(e1, o1), _] = self.positions(from);
            let (edge, o1) = self
                .positions(from)
                .into_iter()
                .find(|&(e, o)| {
                    self.positions(to)
                        .iter()
                        .any(|&(e2, o2)| e2 == e && !o.is_nan() && o2 >= o)
                })
                .unwrap_or((e1, o1));
            let o2 = self
                .positions(to)
                .into_iter()
                .find(|&(e, _)| e == edge)
                .map_or(o1, |(_, o)| o);
            return Some(Route {
                time_s: direct as f64 / 1000.0,
                edges: vec![edge],
                start_offset_m: o1,
                end_offset_m: o2,
            });
        }
        let path = path?;
        let nodes = path.get_nodes();
        let (first, last) = (nodes[0] as u32, nodes[nodes.len() - 1] as u32);
        let (start_edge, start_offset_m) = self
            .positions(from)
            .into_iter()
            .find(|&(e, o)| !o.is_nan() && self.edge(e).to.0 == first)?;
        let (end_edge, end_offset_m) = self
            .positions(to)
            .into_iter()
            .find(|&(e, o)| !o.is_nan() && self.edge(e).from.0 == last)?;
        let mut edges = vec![start_edge];
        for w in nodes.windows(2) {
            let (a, b) = (w[0] as u32, w[1] as u32);
            let e = self
                .out_edges(super::NodeId(a))
                .filter(|&e| self.edge(e).to.0 == b)
                .min_by_key(|&e| weight_ms(self.edge(e).time_s))?;
            edges.push(e);
        }
        edges.push(end_edge);
        Some(Route {
            time_s: routed as f64 / 1000.0,
            edges,
            start_offset_m,
            end_offset_m,
        })
    }

    /// Driving time by plain Dijkstra on the uncontracted graph, seconds, with the same
    /// rounding as the hierarchy: slow, the reference the hierarchy is tested against.
    pub fn dijkstra_time_s(&self, from: &Snap, to: &Snap) -> Option<f64> {
        let out: Vec<(u32, u64)> = self
            .out_edges
            .iter()
            .map(|&e| {
                let e = self.edge(EdgeId(e));
                (e.to.0, weight_ms(e.time_s))
            })
            .collect();
        let routed = ch::dijkstra(
            &self.out_first,
            &out,
            &self.source_seeds(from),
            &self.target_seeds(to),
        );
        let best = routed.min(self.direct_ms(from, to));
        (best != INF).then(|| best as f64 / 1000.0 + self.snap_legs_s(from, to))
    }
}

/// Seeds in `fast_paths`' form, without the unused direction.
fn live(seeds: [Seed; 2]) -> Vec<(usize, usize)> {
    seeds
        .into_iter()
        .filter(|&(_, w)| w != INF)
        .map(|(v, w)| (v as usize, w as usize))
        .collect()
}
