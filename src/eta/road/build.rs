//! From drivable ways to a compact directed road graph: intersections become nodes, the way
//! pieces between them become edges (with their shape), and only the largest strongly connected
//! component is kept.
//!
//! Why compress: a map has ten times more shape points than intersections; routing over
//! intersections only keeps the contraction hierarchy small and its preparation fast, while the
//! edge shapes keep snapping and driving along streets exact. Why one component: a point
//! snapped onto an island of the graph (a car park whose exit lies outside the extract) could
//! reach nothing, and every ETA from or to it would be "no route".

use rustc_hash::FxHashMap;

use super::osm::{Direction, OsmRoads};
use super::{EdgeId, NodeId, RoadEdge};
use crate::domain::LatLng;

/// The graph before indexes: what [`super::RoadGraph`] is built around.
#[derive(Debug, Default)]
pub(super) struct Built {
    pub(super) nodes: Vec<LatLng>,
    pub(super) edges: Vec<RoadEdge>,
    /// Shape points of every edge, `edges[i].shape` indexes into it.
    pub(super) shapes: Vec<LatLng>,
}

/// Builds the graph from the ways and keeps the largest strongly connected component.
pub(super) fn build(osm: &OsmRoads) -> Built {
    let full = compress(osm);
    largest_component(full)
}

fn compress(osm: &OsmRoads) -> Built {
    // How many ways use each node (ends count twice): a node used twice is an intersection.
    let mut uses: FxHashMap<i64, u32> = FxHashMap::default();
    for w in &osm.ways {
        for &n in &w.nodes {
            *uses.entry(n).or_default() += 1;
        }
        for end in [w.nodes[0], w.nodes[w.nodes.len() - 1]] {
            *uses.entry(end).or_default() += 1;
        }
    }
    let mut out = Built::default();
    let mut ids: FxHashMap<i64, u32> = FxHashMap::default();
    let mut node_id = |osm_id: i64, at: LatLng, out: &mut Built| -> NodeId {
        NodeId(*ids.entry(osm_id).or_insert_with(|| {
            out.nodes.push(at);
            out.nodes.len() as u32 - 1
        }))
    };
    for w in &osm.ways {
        // A node missing from the extract cuts the way: the pieces either side stay usable.
        let located: Vec<Option<LatLng>> = w
            .nodes
            .iter()
            .map(|n| {
                osm.nodes
                    .get(n)
                    .and_then(|&(lat, lng)| LatLng::new(lat, lng).ok())
            })
            .collect();
        let mut start = 0;
        while start < w.nodes.len() {
            let mut end = start;
            while end < w.nodes.len() && located[end].is_some() {
                end += 1;
            }
            // nodes[start..end] all have positions.
            let mut piece_from = start;
            for i in start + 1..end {
                let is_node = i == end - 1 || uses[&w.nodes[i]] >= 2;
                if !is_node {
                    continue;
                }
                let ids_piece = &w.nodes[piece_from..=i];
                let pts: Vec<LatLng> = located[piece_from..=i].iter().flatten().copied().collect();
                if ids_piece[0] == ids_piece[ids_piece.len() - 1] {
                    // A closed loop from a node back to itself: split it at its middle point
                    // so that neither half is a self-loop.
                    if pts.len() >= 3 {
                        let mid = pts.len() / 2;
                        let a = node_id(ids_piece[0], pts[0], &mut out);
                        let m = node_id(ids_piece[mid], pts[mid], &mut out);
                        push_edges(&mut out, a, m, &pts[..=mid], w.direction, w.speed_mps);
                        push_edges(&mut out, m, a, &pts[mid..], w.direction, w.speed_mps);
                    }
                } else {
                    let a = node_id(ids_piece[0], pts[0], &mut out);
                    let b = node_id(ids_piece[ids_piece.len() - 1], pts[pts.len() - 1], &mut out);
                    push_edges(&mut out, a, b, &pts, w.direction, w.speed_mps);
                }
                piece_from = i;
            }
            start = end + 1;
        }
    }
    out
}

/// Adds the directed edge(s) of one way piece `a -> b` with shape `pts` (in way order).
fn push_edges(
    out: &mut Built,
    a: NodeId,
    b: NodeId,
    pts: &[LatLng],
    direction: Direction,
    speed_mps: f64,
) {
    let length_m: f64 = pts.windows(2).map(|p| p[0].distance_m(p[1])).sum();
    let time_s = length_m / speed_mps;
    let mut add = |from: NodeId, to: NodeId, forward: bool| -> EdgeId {
        let first = out.shapes.len() as u32;
        if forward {
            out.shapes.extend_from_slice(pts);
        } else {
            out.shapes.extend(pts.iter().rev());
        }
        out.edges.push(RoadEdge {
            from,
            to,
            length_m,
            time_s,
            shape: first..out.shapes.len() as u32,
            twin: None,
        });
        EdgeId(out.edges.len() as u32 - 1)
    };
    match direction {
        Direction::Forward => {
            add(a, b, true);
        }
        Direction::Backward => {
            add(b, a, false);
        }
        Direction::Both => {
            let f = add(a, b, true);
            let r = add(b, a, false);
            out.edges[f.0 as usize].twin = Some(r);
            out.edges[r.0 as usize].twin = Some(f);
        }
    }
}

/// Out-edges of every node as a compressed sparse row: `(first[n]..first[n + 1])` indexes
/// `targets`.
pub(super) fn csr(
    n: usize,
    pairs: impl Iterator<Item = (u32, u32)> + Clone,
) -> (Vec<u32>, Vec<u32>) {
    let mut first = vec![0u32; n + 1];
    for (from, _) in pairs.clone() {
        first[from as usize + 1] += 1;
    }
    for i in 0..n {
        first[i + 1] += first[i];
    }
    let mut fill = first.clone();
    let mut targets = vec![0u32; first[n] as usize];
    for (from, to) in pairs {
        targets[fill[from as usize] as usize] = to;
        fill[from as usize] += 1;
    }
    (first, targets)
}

/// Component id of every node (Kosaraju, iterative so deep graphs cannot overflow the stack).
fn strong_components(n: usize, edges: &[RoadEdge]) -> Vec<u32> {
    let (fwd_first, fwd) = csr(n, edges.iter().map(|e| (e.from.0, e.to.0)));
    let (bwd_first, bwd) = csr(n, edges.iter().map(|e| (e.to.0, e.from.0)));
    // Pass 1: finishing order of a depth-first search on the graph.
    let mut order = Vec::with_capacity(n);
    let mut seen = vec![false; n];
    let mut stack: Vec<(u32, u32)> = Vec::new();
    for root in 0..n as u32 {
        if seen[root as usize] {
            continue;
        }
        seen[root as usize] = true;
        stack.push((root, fwd_first[root as usize]));
        while let Some((v, next)) = stack.last_mut() {
            let v = *v;
            if *next < fwd_first[v as usize + 1] {
                let w = fwd[*next as usize];
                *next += 1;
                if !seen[w as usize] {
                    seen[w as usize] = true;
                    stack.push((w, fwd_first[w as usize]));
                }
            } else {
                order.push(v);
                stack.pop();
            }
        }
    }
    // Pass 2: on the reversed graph in reverse finishing order, each search is one component.
    let mut comp = vec![u32::MAX; n];
    let mut count = 0;
    let mut todo = Vec::new();
    for &root in order.iter().rev() {
        if comp[root as usize] != u32::MAX {
            continue;
        }
        comp[root as usize] = count;
        todo.push(root);
        while let Some(v) = todo.pop() {
            for &w in &bwd[bwd_first[v as usize] as usize..bwd_first[v as usize + 1] as usize] {
                if comp[w as usize] == u32::MAX {
                    comp[w as usize] = count;
                    todo.push(w);
                }
            }
        }
        count += 1;
    }
    comp
}

fn largest_component(full: Built) -> Built {
    let n = full.nodes.len();
    if n == 0 {
        return full;
    }
    let comp = strong_components(n, &full.edges);
    let mut sizes: FxHashMap<u32, u32> = FxHashMap::default();
    for &c in &comp {
        *sizes.entry(c).or_default() += 1;
    }
    // Ties broken by the smaller id so the choice never depends on hash order.
    let keep = sizes
        .iter()
        .max_by_key(|&(c, s)| (*s, std::cmp::Reverse(*c)))
        .map(|(c, _)| *c)
        .unwrap_or(0);
    let mut new_node = vec![u32::MAX; n];
    let mut out = Built::default();
    for (i, p) in full.nodes.iter().enumerate() {
        if comp[i] == keep {
            new_node[i] = out.nodes.len() as u32;
            out.nodes.push(*p);
        }
    }
    let mut new_edge = vec![u32::MAX; full.edges.len()];
    for (i, e) in full.edges.iter().enumerate() {
        if comp[e.from.0 as usize] == keep && comp[e.to.0 as usize] == keep {
            new_edge[i] = out.edges.len() as u32;
            let shape = &full.shapes[e.shape.start as usize..e.shape.end as usize];
            let first = out.shapes.len() as u32;
            out.shapes.extend_from_slice(shape);
            out.edges.push(RoadEdge {
                from: NodeId(new_node[e.from.0 as usize]),
                to: NodeId(new_node[e.to.0 as usize]),
                shape: first..out.shapes.len() as u32,
                twin: e.twin,
                ..*e
            });
        }
    }
    for e in &mut out.edges {
        e.twin = e
            .twin
            .map(|t| new_edge[t.0 as usize])
            .filter(|&t| t != u32::MAX)
            .map(EdgeId);
    }
    out
}
