//! Minimum-cost assignment of requests (rows) to drivers (columns), for batched matching.
//!
//! Greedy matching gives each request the best driver at that instant and often takes the only
//! close driver from the request that arrives a second later. Batched matching collects the
//! requests of a short window and pairs them all at once so the *sum* of the costs is least
//! (the approach DiDi described at KDD 2018, solved with the Hungarian method).
//!
//! The problem here is sparse and rectangular: a request only has edges to its own candidates
//! (at most `max_candidates` drivers nearby), drivers outnumber requests or the other way
//! round, and a request may stay unassigned (it joins the next batch). So:
//! - an absent edge is an infeasible pairing; nothing is ever paired along it;
//! - each row also gets a private "unassigned" column whose cost is set by [`Unassigned`],
//!   which makes every instance feasible and lets rows stay unmatched;
//! - the rows and columns are first split into connected components (union-find over the
//!   edges); each component is solved on its own, so a city-wide batch is many small problems;
//! - each component starts with a row reduction (every row's potential is its cheapest edge,
//!   and rows whose cheapest column is free take it), then the remaining rows are placed by
//!   successive shortest augmenting paths with dual potentials
//!   (the Hungarian method in the Jonker-Volgenant / Crouse form): one Dijkstra-like search per
//!   row over reduced costs, visiting only the edges it reaches, with arrays reset only where
//!   they were touched. Minimum scans are linear over the reached columns, which beats a heap
//!   on dense components.
//!
//! Results are deterministic: the same edges in the same order give the same assignment.

/// A feasible pairing of `row` with `col` at `cost` (lower is better). Any finite cost is
/// allowed; where the same pair appears twice, the cheaper edge counts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Edge {
    /// Row (request) index, `< rows`.
    pub row: usize,
    /// Column (driver) index, `< cols`.
    pub col: usize,
    /// Cost of pairing them.
    pub cost: f64,
}

/// What leaving a row unassigned costs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unassigned {
    /// Each unassigned row adds this cost: a row is paired only along an edge cheaper than it,
    /// or where pairing it lowers the total.
    Cost(f64),
    /// As many rows as possible are paired; among the assignments of that size, the cheapest.
    /// This is what dispatch wants: any feasible driver beats waiting for the next batch.
    MaximizeMatches,
}

/// The solution of [`solve`].
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    /// The column paired with each row, `None` when the row is unassigned.
    pub col_for_row: Vec<Option<usize>>,
    /// Rows paired.
    pub matched: usize,
    /// Sum of the costs of the edges used (unassigned penalties excluded).
    pub matched_cost: f64,
}

/// Solves the assignment: each row is paired with at most one column and each column with at
/// most one row, along edges only, minimising the total cost (edges used plus the
/// [`Unassigned`] cost of each unpaired row).
///
/// # Panics
/// If an edge's row or column is out of range, or its cost (or the `Unassigned::Cost`) is not
/// finite: both are caller bugs.
///
/// # Runtime
/// Per connected component of `k` rows, `c` columns and `e` edges: `O(k · (e + k + c)²)` in
/// the worst case and far less in practice (each search stops at the first free column it
/// reaches); the split into components is `O(rows + cols + edges · α)`. A dense 500 x 500
/// instance is solved in a few tens of milliseconds (see `benches/assign.rs`). Memory is
/// `O(rows + cols + edges)`.
///
/// # Example
/// ```
/// use dispatch::matching::assign::{solve, Edge, Unassigned};
/// // Two requests, two drivers: driver 0 is closest to both, but only request 0 can use
/// // driver 1 cheaply, so the best pairing is 0-1 and 1-0.
/// let edges = [
///     Edge { row: 0, col: 0, cost: 1.0 },
///     Edge { row: 0, col: 1, cost: 2.0 },
///     Edge { row: 1, col: 0, cost: 1.5 },
/// ];
/// let a = solve(2, 2, &edges, Unassigned::MaximizeMatches);
/// assert_eq!(a.col_for_row, vec![Some(1), Some(0)]);
/// assert_eq!(a.matched_cost, 3.5);
/// ```
pub fn solve(rows: usize, cols: usize, edges: &[Edge], unassigned: Unassigned) -> Assignment {
    if let Unassigned::Cost(p) = unassigned {
        assert!(p.is_finite(), "the unassigned cost must be finite, got {p}");
    }
    for e in edges {
        assert!(
            e.row < rows && e.col < cols,
            "edge ({}, {}) outside a {rows} x {cols} problem",
            e.row,
            e.col
        );
        assert!(
            e.cost.is_finite(),
            "edge cost must be finite, got {}",
            e.cost
        );
    }
    let mut paired = vec![None; rows];
    let mut solver = Solver::default();
    for component in components(rows, cols, edges) {
        solver.solve_component(&component, unassigned, &mut paired);
    }
    Assignment {
        matched: paired.iter().flatten().count(),
        matched_cost: paired.iter().flatten().map(|&(_, cost)| cost).sum(),
        col_for_row: paired.iter().map(|p| p.map(|(col, _)| col)).collect(),
    }
}

/// One connected component, with rows and columns renumbered from 0.
#[derive(Debug, Default)]
struct Component {
    /// Global index of each local row.
    rows: Vec<usize>,
    /// Global index of each local column.
    cols: Vec<usize>,
    /// Edges as (local row, local col, cost), grouped by row in `row_start` order.
    adj_col: Vec<u32>,
    adj_cost: Vec<f64>,
    /// Edges of local row `r` are `row_start[r]..row_start[r + 1]`.
    row_start: Vec<usize>,
}

/// Splits the problem into connected components (rows without edges are left out: they can
/// only stay unassigned). Components come out in order of their first row.
fn components(rows: usize, cols: usize, edges: &[Edge]) -> Vec<Component> {
    // Union-find over rows (0..rows) and columns (rows..rows + cols).
    let mut parent: Vec<u32> = (0..(rows + cols) as u32).collect();
    fn find(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            let grand = parent[parent[x as usize] as usize];
            parent[x as usize] = grand;
            x = grand;
        }
        x
    }
    for e in edges {
        let a = find(&mut parent, e.row as u32);
        let b = find(&mut parent, (rows + e.col) as u32);
        if a != b {
            // Smaller root wins, so the result does not depend on edge order within a pair.
            let (lo, hi) = if a < b { (a, b) } else { (b, a) };
            parent[hi as usize] = lo;
        }
    }
    // Component id per root, numbered by first row.
    const NONE: u32 = u32::MAX;
    let mut comp_of_root = vec![NONE; rows + cols];
    let mut comps: Vec<Component> = Vec::new();
    let mut local_row = vec![0u32; rows];
    let mut degree_by_row = vec![0usize; rows];
    for e in edges {
        degree_by_row[e.row] += 1;
    }
    let mut comp_of_row = vec![NONE; rows];
    for (row, &degree) in degree_by_row.iter().enumerate() {
        if degree == 0 {
            continue;
        }
        let root = find(&mut parent, row as u32) as usize;
        if comp_of_root[root] == NONE {
            comp_of_root[root] = comps.len() as u32;
            comps.push(Component::default());
        }
        let c = comp_of_root[root];
        comp_of_row[row] = c;
        let comp = &mut comps[c as usize];
        local_row[row] = comp.rows.len() as u32;
        comp.rows.push(row);
    }
    // Local columns, in order of first appearance in the edge list.
    let mut local_col = vec![NONE; cols];
    for e in edges {
        if local_col[e.col] == NONE {
            let comp = &mut comps[comp_of_row[e.row] as usize];
            local_col[e.col] = comp.cols.len() as u32;
            comp.cols.push(e.col);
        }
    }
    // Adjacency (CSR) per component, edges of a row kept in input order.
    for comp in &mut comps {
        let mut start = Vec::with_capacity(comp.rows.len() + 1);
        let mut acc = 0;
        start.push(0);
        for &row in &comp.rows {
            acc += degree_by_row[row];
            start.push(acc);
        }
        comp.row_start = start;
        comp.adj_col = vec![0; acc];
        comp.adj_cost = vec![0.0; acc];
    }
    let mut fill: Vec<usize> = vec![0; rows];
    for e in edges {
        let comp = &mut comps[comp_of_row[e.row] as usize];
        let r = local_row[e.row] as usize;
        let at = comp.row_start[r] + fill[e.row];
        fill[e.row] += 1;
        comp.adj_col[at] = local_col[e.col];
        comp.adj_cost[at] = e.cost;
    }
    comps
}

/// Working arrays of the shortest-augmenting-path solver, reused across components.
#[derive(Debug, Default)]
struct Solver {
    /// Row potentials.
    u: Vec<f64>,
    /// Column potentials (real columns, then one private "unassigned" column per row).
    v: Vec<f64>,
    col_for_row: Vec<u32>,
    row_for_col: Vec<u32>,
    /// Shortest path length found so far to each column in the current search.
    dist: Vec<f64>,
    /// Row from which each column was reached.
    via: Vec<u32>,
    done_col: Vec<bool>,
    /// Columns reached but not yet finalised.
    frontier: Vec<u32>,
    /// Columns finalised in this search, in order.
    done_cols: Vec<u32>,
    /// Rows visited in this search.
    done_rows: Vec<u32>,
}

const FREE: u32 = u32::MAX;

impl Solver {
    fn solve_component(
        &mut self,
        comp: &Component,
        unassigned: Unassigned,
        out: &mut [Option<(usize, f64)>],
    ) {
        let k = comp.rows.len();
        let c = comp.cols.len();
        // A single row takes its cheapest column if that beats staying unassigned.
        if k == 1 {
            let best = (0..comp.adj_col.len()).min_by(|&a, &b| {
                comp.adj_cost[a]
                    .total_cmp(&comp.adj_cost[b])
                    .then(a.cmp(&b))
            });
            if let Some(at) = best {
                let take = match unassigned {
                    Unassigned::Cost(p) => comp.adj_cost[at] < p,
                    Unassigned::MaximizeMatches => true,
                };
                if take {
                    out[comp.rows[0]] =
                        Some((comp.cols[comp.adj_col[at] as usize], comp.adj_cost[at]));
                }
            }
            return;
        }
        // Shift costs to be non-negative (every row ends on exactly one column, real or its
        // own unassigned one, so a constant shift leaves the optimum unchanged), and price the
        // unassigned columns.
        let (lo, hi) = comp
            .adj_cost
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        let (shift, penalty) = match unassigned {
            Unassigned::Cost(p) => {
                let lo = lo.min(p);
                (lo, p - lo)
            }
            // With costs in [0, r], a pairing with one more row costs at most (k)·r more in
            // edges, so a penalty above k·r makes size come first. +1 keeps it positive when
            // all costs are equal.
            Unassigned::MaximizeMatches => (lo, (hi - lo) * (k as f64 + 1.0) + 1.0),
        };
        let n_cols = c + k;
        self.reset(k, n_cols);

        // Row reduction: each row's potential is its cheapest edge (its unassigned column
        // included), which keeps every reduced cost non-negative; a row whose cheapest column
        // is still free takes it at once (a tight edge). Most rows of a batch are placed here
        // and only the contested ones need a search.
        for r in 0..k {
            let (mut best, mut best_cost) = ((c + r) as u32, penalty);
            for at in comp.row_start[r]..comp.row_start[r + 1] {
                let cost = comp.adj_cost[at] - shift;
                if cost < best_cost {
                    (best, best_cost) = (comp.adj_col[at], cost);
                }
            }
            self.u[r] = best_cost;
            if self.row_for_col[best as usize] == FREE {
                self.row_for_col[best as usize] = r as u32;
                self.col_for_row[r] = best;
            }
        }

        for cur in 0..k {
            if self.col_for_row[cur] != FREE {
                continue;
            }
            let mut min_val = 0.0;
            let mut i = cur;
            let sink = loop {
                self.done_rows.push(i as u32);
                let ui = self.u[i];
                // Real edges of row i, then its own unassigned column.
                let edges = comp.row_start[i]..comp.row_start[i + 1];
                let own = (c + i) as u32;
                let adj = edges
                    .map(|at| (comp.adj_col[at], comp.adj_cost[at] - shift))
                    .chain(std::iter::once((own, penalty)));
                for (j, cost) in adj {
                    let ju = j as usize;
                    if self.done_col[ju] {
                        continue;
                    }
                    let r = min_val + cost - ui - self.v[ju];
                    if r < self.dist[ju] {
                        if self.dist[ju] == f64::INFINITY {
                            self.frontier.push(j);
                        }
                        self.dist[ju] = r;
                        self.via[ju] = i as u32;
                    }
                }
                // The closest reached column; on ties a free one ends the search sooner.
                // The frontier is never empty here: row `cur`'s own unassigned column is free
                // until `cur` is paired, and it was reached on the first step.
                let mut best = 0;
                for at in 1..self.frontier.len() {
                    let (a, b) = (self.frontier[at] as usize, self.frontier[best] as usize);
                    if self.dist[a] < self.dist[b]
                        || (self.dist[a] == self.dist[b]
                            && self.row_for_col[a] == FREE
                            && self.row_for_col[b] != FREE)
                    {
                        best = at;
                    }
                }
                let j = self.frontier.swap_remove(best) as usize;
                min_val = self.dist[j];
                self.done_col[j] = true;
                self.done_cols.push(j as u32);
                match self.row_for_col[j] {
                    FREE => break j,
                    row => i = row as usize,
                }
            };
            // Dual update keeps reduced costs non-negative and zero on paired edges.
            self.u[cur] += min_val;
            for &row in &self.done_rows[1..] {
                let row = row as usize;
                let col = self.col_for_row[row] as usize;
                self.u[row] += min_val - self.dist[col];
            }
            for &col in &self.done_cols {
                let col = col as usize;
                self.v[col] -= min_val - self.dist[col];
            }
            // Augment along the path back to `cur`.
            let mut j = sink;
            loop {
                let row = self.via[j] as usize;
                self.row_for_col[j] = row as u32;
                let prev = std::mem::replace(&mut self.col_for_row[row], j as u32);
                if row == cur {
                    break;
                }
                j = prev as usize;
            }
            // Reset only what this search touched.
            for &col in self.done_cols.iter().chain(self.frontier.iter()) {
                self.dist[col as usize] = f64::INFINITY;
                self.done_col[col as usize] = false;
            }
            self.done_cols.clear();
            self.frontier.clear();
            self.done_rows.clear();
        }
        for (r, &col) in self.col_for_row[..k].iter().enumerate() {
            if (col as usize) < c {
                // The cheapest of the row's edges to that column (duplicates are allowed).
                let cost = (comp.row_start[r]..comp.row_start[r + 1])
                    .filter(|&at| comp.adj_col[at] == col)
                    .map(|at| comp.adj_cost[at])
                    .fold(f64::INFINITY, f64::min);
                out[comp.rows[r]] = Some((comp.cols[col as usize], cost));
            }
        }
    }

    fn reset(&mut self, rows: usize, cols: usize) {
        self.u.clear();
        self.u.resize(rows, 0.0);
        self.col_for_row.clear();
        self.col_for_row.resize(rows, FREE);
        self.v.clear();
        self.v.resize(cols, 0.0);
        self.row_for_col.clear();
        self.row_for_col.resize(cols, FREE);
        self.dist.clear();
        self.dist.resize(cols, f64::INFINITY);
        self.via.clear();
        self.via.resize(cols, FREE);
        self.done_col.clear();
        self.done_col.resize(cols, false);
    }
}

#[cfg(test)]
mod tests;
