//! Queries on the contraction hierarchy that `fast_paths` prepares: the many-to-one bucket
//! search (our own code), and plain Dijkstra on the uncontracted graph as the oracle tests
//! compare against.
//!
//! `fast_paths` answers one source-target pair per call. Twenty candidates to one pickup would
//! be twenty bidirectional searches, each repeating the same backward search from the pickup.
//! The bucket method (as in OSRM's table service) runs that backward upward search once, keeps
//! its distances, and then runs only the short forward upward search of each candidate,
//! meeting the stored distances. The crate keeps its hierarchy's edges private but serialises
//! them (serde), so we read them once at start-up through that stable, documented form into
//! our own upward adjacency arrays.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::Deserialize;

/// The hierarchy as `fast_paths` serialises it (field order is the crate's; checked at load).
#[derive(Deserialize)]
struct FastGraphForm {
    num_nodes: usize,
    ranks: Vec<usize>,
    edges_fwd: Vec<EdgeForm>,
    first_edge_ids_fwd: Vec<usize>,
    edges_bwd: Vec<EdgeForm>,
    first_edge_ids_bwd: Vec<usize>,
}

#[derive(Deserialize)]
#[allow(dead_code)] // every field must be read, in order, to decode the form
struct EdgeForm {
    base_node: usize,
    adj_node: usize,
    weight: usize,
    replaced_in_edge: usize,
    replaced_out_edge: usize,
}

/// Upward edges of every node, both directions, as compressed rows: for node `v`,
/// `up[first[v]..first[v + 1]]` holds `(neighbour, weight_ms)`.
#[derive(Debug)]
pub(super) struct Upward {
    fwd_first: Vec<u32>,
    fwd: Vec<(u32, u32)>,
    bwd_first: Vec<u32>,
    bwd: Vec<(u32, u32)>,
}

/// Unreached.
pub(super) const INF: u64 = u64::MAX;

/// A start or end of a search: a node and the time already spent reaching it (ms).
pub(super) type Seed = (u32, u64);

impl Upward {
    /// Reads the hierarchy's upward edges out of a prepared graph.
    pub(super) fn from_fast_graph(g: &fast_paths::FastGraph) -> Result<Upward, String> {
        let bytes = postcard::to_allocvec(g).map_err(|e| e.to_string())?;
        let form: FastGraphForm = postcard::from_bytes(&bytes).map_err(|e| e.to_string())?;
        let n = form.num_nodes;
        let consistent = form.ranks.len() == n
            && form.first_edge_ids_fwd.len() == n + 1
            && form.first_edge_ids_bwd.len() == n + 1
            && form.first_edge_ids_fwd[n] == form.edges_fwd.len()
            && form.first_edge_ids_bwd[n] == form.edges_bwd.len();
        if !consistent {
            return Err("the contraction hierarchy's layout is not the expected one".into());
        }
        let rows = |first: &[usize], edges: &[EdgeForm]| {
            let mut out_first = Vec::with_capacity(n + 1);
            let mut out = Vec::with_capacity(edges.len());
            out_first.push(0u32);
            for v in 0..n {
                let r = form.ranks[v];
                for e in &edges[first[r]..first[r + 1]] {
                    out.push((e.adj_node as u32, e.weight.min(u32::MAX as usize) as u32));
                }
                out_first.push(out.len() as u32);
            }
            (out_first, out)
        };
        let (fwd_first, fwd) = rows(&form.first_edge_ids_fwd, &form.edges_fwd);
        let (bwd_first, bwd) = rows(&form.first_edge_ids_bwd, &form.edges_bwd);
        Ok(Upward {
            fwd_first,
            fwd,
            bwd_first,
            bwd,
        })
    }

    fn nodes(&self) -> usize {
        self.fwd_first.len() - 1
    }

    fn up_fwd(&self, v: u32) -> &[(u32, u32)] {
        &self.fwd[self.fwd_first[v as usize] as usize..self.fwd_first[v as usize + 1] as usize]
    }

    fn up_bwd(&self, v: u32) -> &[(u32, u32)] {
        &self.bwd[self.bwd_first[v as usize] as usize..self.bwd_first[v as usize + 1] as usize]
    }

    /// Bytes held by the upward arrays.
    pub(super) fn heap_bytes(&self) -> usize {
        (self.fwd_first.len() + self.bwd_first.len()) * 4 + (self.fwd.len() + self.bwd.len()) * 8
    }

    /// Shortest time (ms) from each source's seeds to the target's seeds, written to `out`
    /// (`INF` where none). One backward upward search from the target, then one pruned
    /// forward upward search per source that meets it.
    ///
    /// # Runtime
    /// O(B log B + k F log F) for backward and forward search spaces B and F (a few hundred
    /// nodes each on a city graph), k sources.
    pub(super) fn many_to_one(
        &self,
        scratch: &mut Scratch,
        sources: &[[Seed; 2]],
        target: &[Seed],
        out: &mut Vec<u64>,
    ) {
        scratch.fit(self.nodes());
        out.clear();
        // Backward: every node the target's upward search reaches, with its distance.
        scratch.bwd.next_round();
        let heap = &mut scratch.heap;
        heap.clear();
        for &(v, w) in target {
            if w < scratch.bwd.get(v) {
                scratch.bwd.set(v, w);
                heap.push(Reverse((w, v)));
            }
        }
        while let Some(Reverse((d, v))) = heap.pop() {
            if d > scratch.bwd.get(v) {
                continue;
            }
            for &(u, w) in self.up_bwd(v) {
                let nd = d + u64::from(w);
                if nd < scratch.bwd.get(u) {
                    scratch.bwd.set(u, nd);
                    heap.push(Reverse((nd, u)));
                }
            }
        }
        // Forward, per source: stop once the queue's minimum cannot improve the best meeting.
        for seeds in sources {
            scratch.fwd.next_round();
            heap.clear();
            for &(v, w) in seeds {
                if w < scratch.fwd.get(v) {
                    scratch.fwd.set(v, w);
                    heap.push(Reverse((w, v)));
                }
            }
            let mut best = INF;
            while let Some(Reverse((d, v))) = heap.pop() {
                if d >= best {
                    break;
                }
                if d > scratch.fwd.get(v) {
                    continue;
                }
                let b = scratch.bwd.get(v);
                if b != INF {
                    best = best.min(d + b);
                }
                // Stall on demand: reached more cheaply from above, v leads nowhere shorter.
                let stalled = self.up_bwd(v).iter().any(|&(u, w)| {
                    let du = scratch.fwd.get(u);
                    du != INF && du + u64::from(w) < d
                });
                if stalled {
                    continue;
                }
                for &(u, w) in self.up_fwd(v) {
                    let nd = d + u64::from(w);
                    if nd < scratch.fwd.get(u) {
                        scratch.fwd.set(u, nd);
                        heap.push(Reverse((nd, u)));
                    }
                }
            }
            out.push(best);
        }
    }
}

/// Distances with a round stamp, so a new search clears them in O(1).
#[derive(Debug, Default)]
pub(super) struct Stamped {
    dist: Vec<u64>,
    round: Vec<u32>,
    now: u32,
}

impl Stamped {
    fn fit(&mut self, n: usize) {
        if self.dist.len() != n {
            self.dist = vec![INF; n];
            self.round = vec![0; n];
            self.now = 0;
        }
    }

    fn next_round(&mut self) {
        self.now = self.now.wrapping_add(1);
        if self.now == 0 {
            self.round.fill(0);
            self.now = 1;
        }
    }

    #[inline]
    fn get(&self, v: u32) -> u64 {
        if self.round[v as usize] == self.now {
            self.dist[v as usize]
        } else {
            INF
        }
    }

    #[inline]
    fn set(&mut self, v: u32, d: u64) {
        self.round[v as usize] = self.now;
        self.dist[v as usize] = d;
    }
}

/// Reusable search state (one per thread at a time).
#[derive(Debug, Default)]
pub(super) struct Scratch {
    fwd: Stamped,
    bwd: Stamped,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
}

impl Scratch {
    fn fit(&mut self, n: usize) {
        self.fwd.fit(n);
        self.bwd.fit(n);
    }
}

/// Plain Dijkstra over the uncontracted graph, seeds to seeds, ms: the oracle for tests.
/// `out_first`/`out` are the graph's out-edges as compressed rows of `(to, weight_ms)`.
pub(super) fn dijkstra(out_first: &[u32], out: &[(u32, u64)], from: &[Seed], to: &[Seed]) -> u64 {
    let n = out_first.len() - 1;
    let mut dist = vec![INF; n];
    let mut heap = BinaryHeap::new();
    for &(v, w) in from {
        if w < dist[v as usize] {
            dist[v as usize] = w;
            heap.push(Reverse((w, v)));
        }
    }
    let mut end = vec![INF; n];
    for &(v, w) in to {
        end[v as usize] = end[v as usize].min(w);
    }
    let mut best = INF;
    while let Some(Reverse((d, v))) = heap.pop() {
        if d >= best {
            break;
        }
        if d > dist[v as usize] {
            continue;
        }
        if end[v as usize] != INF {
            best = best.min(d + end[v as usize]);
        }
        for &(u, w) in &out[out_first[v as usize] as usize..out_first[v as usize + 1] as usize] {
            let nd = d + w;
            if nd < dist[u as usize] {
                dist[u as usize] = nd;
                heap.push(Reverse((nd, u)));
            }
        }
    }
    best
}
