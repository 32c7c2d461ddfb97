//! How long the batch assignment solver takes on a 500-request x 500-driver batch.
//!
//! - `assign_500x500/dense`: every request can take every driver (250,000 edges, uniform random
//!   costs in 0..1). The worst case for the solver, and the question the 50 ms target asks.
//! - `assign_500x500/candidates_20`: what the dispatcher builds: requests and drivers scattered
//!   over a city, each request with edges to its 20 nearest drivers, cost `1 - score` where the
//!   score falls with distance. The components are large (neighbourhoods overlap).
//!
//! Fixtures are built outside the timed loop; each iteration solves from the edge list.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dispatch::matching::assign::{Edge, Unassigned, solve};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const N: usize = 500;

fn dense(seed: u64) -> Vec<Edge> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..N * N)
        .map(|at| Edge {
            row: at / N,
            col: at % N,
            cost: rng.random_range(0.0..1.0),
        })
        .collect()
}

/// Requests and drivers uniform in a 10 km square; each request's 20 nearest drivers.
fn candidates(seed: u64, k: usize) -> Vec<Edge> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut point = || {
        (
            rng.random_range(0.0..10_000.0),
            rng.random_range(0.0..10_000.0),
        )
    };
    let requests: Vec<(f64, f64)> = (0..N).map(|_| point()).collect();
    let drivers: Vec<(f64, f64)> = (0..N).map(|_| point()).collect();
    let mut edges = Vec::with_capacity(N * k);
    for (row, r) in requests.iter().enumerate() {
        let mut near: Vec<(f64, usize)> = drivers
            .iter()
            .enumerate()
            .map(|(col, d)| (((r.0 - d.0).powi(2) + (r.1 - d.1).powi(2)).sqrt(), col))
            .collect();
        near.sort_by(|a, b| a.0.total_cmp(&b.0));
        for &(distance_m, col) in near.iter().take(k) {
            let score = 0.6 * (1.0 - (distance_m / 5_000.0).min(1.0)) + 0.4 * 0.7;
            edges.push(Edge {
                row,
                col,
                cost: 1.0 - score,
            });
        }
    }
    edges
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("assign_500x500");
    let dense = dense(1);
    group.bench_function("dense", |b| {
        b.iter(|| solve(N, N, black_box(&dense), Unassigned::MaximizeMatches))
    });
    let sparse = candidates(2, 20);
    group.bench_function("candidates_20", |b| {
        b.iter(|| solve(N, N, black_box(&sparse), Unassigned::MaximizeMatches))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
