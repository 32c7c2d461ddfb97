//! A car road graph read from an OpenStreetMap `.osm.pbf`: routed driving times between any
//! two points, and many candidates to one pickup in one call.
//!
//! Built once at start-up ([`RoadGraph::load`]): drivable ways ([`osm`]) become a directed
//! graph of intersections with shaped edges, of which the largest strongly connected component
//! is kept ([`build`]); `fast_paths` prepares contraction hierarchies over it, which the
//! many-to-one bucket search reads ([`ch`]); a uniform grid of road segments snaps points onto
//! edges ([`snap`]). Afterwards the graph is read-only and shared (`&self` everywhere; the
//! per-query search state comes from a small pool), so the dispatcher and a simulator can use
//! the same graph from several threads.
//!
//! Times are free-flow times from the map's speeds; congestion by hour is applied by the ETA
//! model on top. A point's snap distance (from the point to its road) is driven at
//! [`RoadOptions::snap_speed_mps`], so a pickup in a courtyard costs its walk-in.

mod build;
mod ch;
mod osm;
mod query;
mod snap;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use parking_lot::Mutex;

use crate::domain::LatLng;

pub use query::Route;

/// A graph node (an intersection or a dead end), `0..node_count()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// A directed edge, `0..edge_count()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeId(pub u32);

/// One directed road piece between two nodes, with its shape.
#[derive(Clone, Debug)]
pub struct RoadEdge {
    /// Where it starts.
    pub from: NodeId,
    /// Where it ends.
    pub to: NodeId,
    /// Length along its shape, metres.
    pub length_m: f64,
    /// Free-flow driving time, seconds (length over the way's speed).
    pub time_s: f64,
    /// Indexes of its shape points (see [`RoadGraph::shape`]).
    shape: Range<u32>,
    /// The same street driven the other way, when it is two-way.
    pub twin: Option<EdgeId>,
}

impl RoadEdge {
    /// Driving speed on this edge, metres per second.
    pub fn speed_mps(&self) -> f64 {
        if self.time_s > 0.0 {
            self.length_m / self.time_s
        } else {
            1.0
        }
    }
}

/// Where a point lands on the road graph.
#[derive(Clone, Copy, Debug)]
pub struct Snap {
    /// The edge it lands on (of a two-way street, either direction; see [`RoadEdge::twin`]).
    pub edge: EdgeId,
    /// Metres along the edge from its `from` node to the landing point.
    pub offset_m: f64,
    /// The landing point on the road.
    pub point: LatLng,
    /// Metres from the original point to the landing point.
    pub distance_m: f64,
}

/// Tuning of snapping.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoadOptions {
    /// A point farther than this from every road does not snap, metres.
    pub max_snap_m: f64,
    /// The snap distance is covered at this speed, metres per second (slow: a courtyard,
    /// a car park, a walk to the kerb).
    pub snap_speed_mps: f64,
}

impl Default for RoadOptions {
    fn default() -> Self {
        RoadOptions {
            max_snap_m: 150.0,
            snap_speed_mps: 3.0,
        }
    }
}

/// Why a map could not be loaded. The message names the file.
#[derive(Debug, thiserror::Error)]
pub enum RoadError {
    /// The file could not be opened or read.
    #[error("cannot read road map {path}: {why}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        why: String,
    },
    /// The file is not an OpenStreetMap PBF, or is damaged.
    #[error("road map {path} is not a readable .osm.pbf file: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the reader said.
        why: String,
    },
    /// The file holds no connected drivable roads.
    #[error("road map {path} has no connected drivable roads (found {nodes} intersections)")]
    NoRoads {
        /// The file.
        path: PathBuf,
        /// Nodes left in the largest connected part.
        nodes: usize,
    },
    /// Preparing the hierarchy failed (a bug, not bad input).
    #[error("road map {path}: cannot prepare routing: {why}")]
    Prepare {
        /// The file.
        path: PathBuf,
        /// What failed.
        why: String,
    },
}

/// What loading took, for the start-up log.
#[derive(Clone, Copy, Debug)]
pub struct LoadStats {
    /// Reading the file, seconds.
    pub read_s: f64,
    /// Building the graph and its component, seconds.
    pub build_s: f64,
    /// Preparing contraction hierarchies, seconds.
    pub contract_s: f64,
    /// Building the snapping index, seconds.
    pub snap_index_s: f64,
    /// Everything, seconds.
    pub total_s: f64,
    /// Drivable ways read.
    pub ways: usize,
    /// Approximate bytes held by the graph, hierarchy and index.
    pub memory_bytes: usize,
}

/// A read-only road graph with routing and snapping. See the module docs.
#[derive(Debug)]
pub struct RoadGraph {
    nodes: Vec<LatLng>,
    edges: Vec<RoadEdge>,
    shapes: Vec<LatLng>,
    /// Out-edges of each node: `out_edges[out_first[v]..out_first[v + 1]]`.
    out_first: Vec<u32>,
    out_edges: Vec<u32>,
    fast: fast_paths::FastGraph,
    upward: ch::Upward,
    snap: snap::SnapIndex,
    options: RoadOptions,
    stats: LoadStats,
    /// Search state handed to one query at a time; grows to the number of concurrent callers.
    pool: Mutex<Vec<query::Scratch>>,
}

impl RoadGraph {
    /// Reads `path` (`.osm.pbf`) and prepares routing with default [`RoadOptions`].
    ///
    /// # Runtime
    /// About a second for a city extract of a few MB (release build); logged.
    pub fn load(path: impl AsRef<Path>) -> Result<RoadGraph, RoadError> {
        RoadGraph::load_with(path, RoadOptions::default())
    }

    /// Like [`RoadGraph::load`] with these options.
    pub fn load_with(path: impl AsRef<Path>, options: RoadOptions) -> Result<RoadGraph, RoadError> {
        let path = path.as_ref();
        let t0 = Instant::now();
        // Open first, so a missing file says so plainly rather than as a decoder error.
        std::fs::File::open(path).map_err(|e| RoadError::Read {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        let roads = osm::read(path).map_err(|e| RoadError::Format {
            path: path.to_path_buf(),
            why: e.to_string(),
        })?;
        let read_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let built = build::build(&roads);
        let ways = roads.ways.len();
        drop(roads);
        if built.nodes.len() < 2 {
            return Err(RoadError::NoRoads {
                path: path.to_path_buf(),
                nodes: built.nodes.len(),
            });
        }
        let build_s = t1.elapsed().as_secs_f64();
        let mut graph =
            RoadGraph::from_built(built, options).map_err(|why| RoadError::Prepare {
                path: path.to_path_buf(),
                why,
            })?;
        graph.stats.read_s = read_s;
        graph.stats.build_s = build_s;
        graph.stats.ways = ways;
        graph.stats.total_s = t0.elapsed().as_secs_f64();
        let s = &graph.stats;
        tracing::info!(
            map = %path.display(),
            ways = s.ways,
            nodes = graph.node_count(),
            edges = graph.edge_count(),
            memory_mib = format!("{:.1}", s.memory_bytes as f64 / (1 << 20) as f64),
            read_s = format!("{:.3}", s.read_s),
            build_s = format!("{:.3}", s.build_s),
            contract_s = format!("{:.3}", s.contract_s),
            snap_index_s = format!("{:.3}", s.snap_index_s),
            total_s = format!("{:.3}", s.total_s),
            "road graph loaded"
        );
        Ok(graph)
    }

    fn from_built(b: build::Built, options: RoadOptions) -> Result<RoadGraph, String> {
        let n = b.nodes.len();
        let (out_first, out_edges) = build::csr(
            n,
            b.edges
                .iter()
                .enumerate()
                .map(|(i, e)| (e.from.0, i as u32)),
        );
        let t = Instant::now();
        let mut input = fast_paths::InputGraph::new();
        for e in &b.edges {
            input.add_edge(
                e.from.0 as usize,
                e.to.0 as usize,
                query::weight_ms(e.time_s) as usize,
            );
        }
        input.freeze();
        let fast = fast_paths::prepare(&input);
        if fast.get_num_nodes() != n {
            return Err(format!(
                "hierarchy has {} nodes, graph {n}",
                fast.get_num_nodes()
            ));
        }
        let upward = ch::Upward::from_fast_graph(&fast)?;
        let contract_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let snap = snap::SnapIndex::build(&b.nodes, &b.edges, &b.shapes);
        let snap_index_s = t.elapsed().as_secs_f64();
        let fast_bytes =
            (fast.get_num_out_edges() + fast.get_num_in_edges()) * std::mem::size_of::<usize>() * 5
                + n * std::mem::size_of::<usize>() * 3;
        let memory_bytes = b.nodes.len() * std::mem::size_of::<LatLng>()
            + b.edges.len() * std::mem::size_of::<RoadEdge>()
            + b.shapes.len() * std::mem::size_of::<LatLng>()
            + (out_first.len() + out_edges.len()) * 4
            + fast_bytes
            + upward.heap_bytes()
            + snap.heap_bytes();
        Ok(RoadGraph {
            nodes: b.nodes,
            edges: b.edges,
            shapes: b.shapes,
            out_first,
            out_edges,
            fast,
            upward,
            snap,
            options,
            stats: LoadStats {
                read_s: 0.0,
                build_s: 0.0,
                contract_s,
                snap_index_s,
                total_s: 0.0,
                ways: 0,
                memory_bytes,
            },
            pool: Mutex::new(Vec::new()),
        })
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of directed edges.
    pub fn edge_count(&self) -> usize {
        self.edges.len()
    }

    /// Position of a node. Panics on an id not below [`RoadGraph::node_count`].
    pub fn node(&self, id: NodeId) -> LatLng {
        self.nodes[id.0 as usize]
    }

    /// An edge. Panics on an id not below [`RoadGraph::edge_count`].
    pub fn edge(&self, id: EdgeId) -> &RoadEdge {
        &self.edges[id.0 as usize]
    }

    /// Every edge, indexed by `EdgeId.0`.
    pub fn edges(&self) -> &[RoadEdge] {
        &self.edges
    }

    /// The edges leaving a node.
    pub fn out_edges(&self, node: NodeId) -> impl ExactSizeIterator<Item = EdgeId> + '_ {
        let v = node.0 as usize;
        self.out_edges[self.out_first[v] as usize..self.out_first[v + 1] as usize]
            .iter()
            .map(|&e| EdgeId(e))
    }

    /// The shape of an edge, from its `from` node to its `to` node (at least two points).
    pub fn shape(&self, id: EdgeId) -> &[LatLng] {
        let r = &self.edges[id.0 as usize].shape;
        &self.shapes[r.start as usize..r.end as usize]
    }

    /// The point `offset_m` metres along an edge's shape (clamped to the edge).
    ///
    /// # Runtime
    /// O(shape points of the edge).
    pub fn point_along(&self, id: EdgeId, offset_m: f64) -> LatLng {
        let pts = self.shape(id);
        let mut left = offset_m.max(0.0);
        for w in pts.windows(2) {
            let d = w[0].distance_m(w[1]);
            if left <= d {
                return snap::lerp(w[0], w[1], if d > 0.0 { left / d } else { 0.0 });
            }
            left -= d;
        }
        pts[pts.len() - 1]
    }

    /// South-west and north-east corners of the box holding every node.
    pub fn bounds(&self) -> (LatLng, LatLng) {
        let (mut lo, mut hi) = ((90.0f64, 180.0f64), (-90.0f64, -180.0f64));
        for p in &self.nodes {
            lo = (lo.0.min(p.lat_deg()), lo.1.min(p.lng_deg()));
            hi = (hi.0.max(p.lat_deg()), hi.1.max(p.lng_deg()));
        }
        // Extremes of valid points are valid points.
        let sw = LatLng::new(lo.0, lo.1).unwrap_or(self.nodes[0]);
        let ne = LatLng::new(hi.0, hi.1).unwrap_or(self.nodes[0]);
        (sw, ne)
    }

    /// The snapping options in force.
    pub fn options(&self) -> RoadOptions {
        self.options
    }

    /// What loading took and how much memory the graph holds.
    pub fn stats(&self) -> LoadStats {
        self.stats
    }

    /// The nearest road position within [`RoadOptions::max_snap_m`], or `None` when the point
    /// is off the map.
    ///
    /// # Runtime
    /// O(segments within the snap distance of `p`): about a microsecond on a city.
    pub fn snap(&self, p: LatLng) -> Option<Snap> {
        self.snap_within(p, self.options.max_snap_m)
    }

    /// Like [`RoadGraph::snap`] with another maximum distance, metres.
    pub fn snap_within(&self, p: LatLng, max_m: f64) -> Option<Snap> {
        let (landing, distance_m) = self.snap.snap(p, max_m, &self.edges, &self.shapes)?;
        Some(Snap {
            edge: landing.edge,
            offset_m: landing.offset_m,
            point: landing.point,
            distance_m,
        })
    }
}
