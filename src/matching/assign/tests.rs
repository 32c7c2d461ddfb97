//! Tests of the assignment solver: brute-force agreement on random small problems, and the
//! hand-made cases that show why batching beats greedy.

use super::*;
use proptest::prelude::*;

fn cheapest_edges(edges: &[Edge]) -> rustc_hash::FxHashMap<(usize, usize), f64> {
    let mut best = rustc_hash::FxHashMap::default();
    for e in edges {
        best.entry((e.row, e.col))
            .and_modify(|c: &mut f64| *c = c.min(e.cost))
            .or_insert(e.cost);
    }
    best
}

/// Exhaustive optimum: (matched, matched cost, total cost with `Cost` penalties).
fn brute(rows: usize, cols: usize, edges: &[Edge], unassigned: Unassigned) -> (usize, f64) {
    let best = cheapest_edges(edges);
    let mut used = vec![false; cols];
    // Returns the best (key, matched, cost) over rows r.. where key orders solutions.
    fn go(
        r: usize,
        rows: usize,
        cols: usize,
        best: &rustc_hash::FxHashMap<(usize, usize), f64>,
        used: &mut [bool],
        unassigned: Unassigned,
    ) -> (usize, f64) {
        if r == rows {
            return (0, 0.0);
        }
        let better = |a: (usize, f64), b: (usize, f64)| -> bool {
            match unassigned {
                Unassigned::Cost(p) => {
                    a.1 + p * ((rows - a.0) as f64) < b.1 + p * ((rows - b.0) as f64)
                }
                Unassigned::MaximizeMatches => a.0 > b.0 || (a.0 == b.0 && a.1 < b.1),
            }
        };
        let mut top = go(r + 1, rows, cols, best, used, unassigned);
        for c in 0..cols {
            if let (false, Some(&cost)) = (used[c], best.get(&(r, c))) {
                used[c] = true;
                let (m, x) = go(r + 1, rows, cols, best, used, unassigned);
                used[c] = false;
                let cand = (m + 1, x + cost);
                if better(cand, top) {
                    top = cand;
                }
            }
        }
        top
    }
    // The recursion compares partial solutions over the remaining rows only; with the
    // `Cost` penalty the comparison is shift-invariant, so this is the global optimum.
    go(0, rows, cols, &best, &mut used, unassigned)
}

fn check_valid(rows: usize, cols: usize, edges: &[Edge], a: &Assignment) {
    let best = cheapest_edges(edges);
    let mut used = vec![false; cols];
    assert_eq!(a.col_for_row.len(), rows);
    let mut cost = 0.0;
    for (r, c) in a.col_for_row.iter().enumerate() {
        if let Some(c) = *c {
            assert!(!used[c], "column {c} used twice");
            used[c] = true;
            cost += best
                .get(&(r, c))
                .expect("paired along a missing edge (infeasible pair)");
        }
    }
    assert!((cost - a.matched_cost).abs() < 1e-9);
}

fn problem() -> impl Strategy<Value = (usize, usize, Vec<Edge>)> {
    (0usize..=6, 0usize..=6).prop_flat_map(|(rows, cols)| {
        let cells = rows * cols;
        (
            Just(rows),
            Just(cols),
            proptest::collection::vec(
                (proptest::bool::weighted(0.55), -20i32..=100, 0u8..3),
                cells,
            )
            .prop_map(move |cells| {
                let mut edges = Vec::new();
                for (at, (present, cost, dup)) in cells.into_iter().enumerate() {
                    if present {
                        let e = Edge {
                            row: at / cols,
                            col: at % cols,
                            cost: f64::from(cost) / 4.0,
                        };
                        edges.push(e);
                        if dup == 0 {
                            edges.push(Edge {
                                cost: e.cost + 3.0,
                                ..e
                            });
                        }
                    }
                }
                edges
            }),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn maximize_matches_agrees_with_brute_force((rows, cols, edges) in problem()) {
        let a = solve(rows, cols, &edges, Unassigned::MaximizeMatches);
        check_valid(rows, cols, &edges, &a);
        let (m, cost) = brute(rows, cols, &edges, Unassigned::MaximizeMatches);
        prop_assert_eq!(a.matched, m);
        prop_assert!((a.matched_cost - cost).abs() < 1e-9, "{} vs {}", a.matched_cost, cost);
    }

    #[test]
    fn penalty_agrees_with_brute_force(
        (rows, cols, edges) in problem(),
        penalty in -5i32..=120,
    ) {
        let p = f64::from(penalty) / 4.0;
        let a = solve(rows, cols, &edges, Unassigned::Cost(p));
        check_valid(rows, cols, &edges, &a);
        let (m, cost) = brute(rows, cols, &edges, Unassigned::Cost(p));
        let total = |m: usize, c: f64| c + p * (rows - m) as f64;
        prop_assert!(
            (total(a.matched, a.matched_cost) - total(m, cost)).abs() < 1e-9,
            "{} vs {}", total(a.matched, a.matched_cost), total(m, cost)
        );
    }
}

#[test]
fn batch_beats_greedy_on_the_classic_pair() {
    // Request 0 is 1 min from driver 0 and 2 min from driver 1; request 1 is 1.5 min
    // from driver 0 only. Greedy serves request 0 first with driver 0 and strands
    // request 1; the assignment serves both.
    let edges = [
        Edge {
            row: 0,
            col: 0,
            cost: 1.0,
        },
        Edge {
            row: 0,
            col: 1,
            cost: 2.0,
        },
        Edge {
            row: 1,
            col: 0,
            cost: 1.5,
        },
    ];
    let a = solve(2, 2, &edges, Unassigned::MaximizeMatches);
    assert_eq!(a.col_for_row, vec![Some(1), Some(0)]);
    assert_eq!(a.matched, 2);
}

#[test]
fn rows_without_edges_stay_unassigned() {
    let edges = [Edge {
        row: 1,
        col: 2,
        cost: 0.3,
    }];
    let a = solve(3, 4, &edges, Unassigned::MaximizeMatches);
    assert_eq!(a.col_for_row, vec![None, Some(2), None]);
    let a = solve(3, 4, &[], Unassigned::Cost(1.0));
    assert_eq!(a.matched, 0);
}

#[test]
fn a_penalty_below_the_edge_leaves_the_row_unassigned() {
    let edges = [Edge {
        row: 0,
        col: 0,
        cost: 2.0,
    }];
    assert_eq!(solve(1, 1, &edges, Unassigned::Cost(1.0)).matched, 0);
    assert_eq!(solve(1, 1, &edges, Unassigned::Cost(3.0)).matched, 1);
}

#[test]
fn independent_components_are_solved_separately() {
    // Two copies of the classic pair on disjoint drivers.
    let mut edges = Vec::new();
    for (r, c) in [(0, 0), (2, 3)] {
        edges.push(Edge {
            row: r,
            col: c,
            cost: 1.0,
        });
        edges.push(Edge {
            row: r,
            col: c + 1,
            cost: 2.0,
        });
        edges.push(Edge {
            row: r + 1,
            col: c,
            cost: 1.5,
        });
    }
    let a = solve(4, 5, &edges, Unassigned::MaximizeMatches);
    assert_eq!(a.col_for_row, vec![Some(1), Some(0), Some(4), Some(3)]);
    assert_eq!(components(4, 5, &edges).len(), 2);
}

#[test]
fn dense_random_is_a_valid_perfect_assignment() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let n = 120;
    let edges: Vec<Edge> = (0..n * n)
        .map(|at| Edge {
            row: at / n,
            col: at % n,
            cost: rng.random_range(0.0..1.0),
        })
        .collect();
    let a = solve(n, n, &edges, Unassigned::MaximizeMatches);
    check_valid(n, n, &edges, &a);
    assert_eq!(a.matched, n);
}
