//! Where every driver is: the moving-object index the dispatcher asks "who is near?".
//!
//! Drivers report every ~4 s, so the index takes tens to hundreds of thousands of moves per
//! second while answering "k nearest within r metres" for every trip request. One trait, three
//! implementations:
//! - [`GridIndex`]: the default, a grid of cells keyed for any coordinate on Earth, O(1) moves
//!   inside a cell.
//! - [`RTreeIndex`]: an `rstar` R-tree (remove + re-insert on move), the baseline the
//!   benchmarks compare against.
//! - [`BruteForceIndex`]: a linear scan, the oracle the property tests check both against.
//!
//! Results are exact: ascending haversine distance ([`LatLng::distance_m`]), ties broken by
//! ascending key, only drivers within `radius_m` (inclusive) that pass the filter.

use crate::domain::{DriverKey, LatLng};

mod brute;
mod grid;
mod rtree;

pub use brute::BruteForceIndex;
pub use grid::{DEFAULT_CELL_M, GridIndex};
pub use rtree::RTreeIndex;

/// The index the engine uses: a [`GridIndex`] with [`DEFAULT_CELL_M`] cells.
///
/// # Runtime
/// O(number of grid bands): builds the grid's band table (about 640 KB).
pub fn default_index() -> Box<dyn SpatialIndex> {
    Box::new(GridIndex::new())
}

/// One answer of a nearest query.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbor {
    /// The driver.
    pub key: DriverKey,
    /// Where the index has the driver.
    pub position: LatLng,
    /// Haversine distance from the query point, metres.
    pub distance_m: f64,
}

/// A moving-object index over drivers.
///
/// It is a logic error to rely on a key's position after `remove`; keys may be re-added.
pub trait SpatialIndex: Send {
    /// Inserts `key` at `position`, or moves it there if already present.
    fn upsert(&mut self, key: DriverKey, position: LatLng);

    /// Removes `key`; returns whether it was present.
    fn remove(&mut self, key: DriverKey) -> bool;

    /// Where `key` is, if present.
    fn position(&self, key: DriverKey) -> Option<LatLng>;

    /// Number of drivers in the index.
    fn len(&self) -> usize;

    /// Whether the index is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// About how many drivers are within `radius_m` of `center`: for signals that need a
    /// count rather than who (surge supply). Implementations may count at cell granularity;
    /// this default counts exactly.
    fn count_near(&self, center: LatLng, radius_m: f64) -> usize {
        let mut out = Vec::new();
        self.nearest(center, radius_m, usize::MAX, &mut |_| true, &mut out);
        out.len()
    }

    /// About how many drivers within `radius_m` of `center` pass `filter` (surge supply of one
    /// vehicle class), at the same granularity as [`count_near`](Self::count_near). This
    /// default counts exactly.
    fn count_near_where(
        &self,
        center: LatLng,
        radius_m: f64,
        filter: &mut dyn FnMut(DriverKey) -> bool,
    ) -> usize {
        let mut out = Vec::new();
        self.nearest(center, radius_m, usize::MAX, filter, &mut out);
        out.len()
    }

    /// Clears `out` and fills it with up to `k` drivers within `radius_m` metres (inclusive) of
    /// `center` for which `filter` returns true, in ascending distance (ties: ascending key).
    fn nearest(
        &self,
        center: LatLng,
        radius_m: f64,
        k: usize,
        filter: &mut dyn FnMut(DriverKey) -> bool,
        out: &mut Vec<Neighbor>,
    );
}

/// Orders neighbors by (distance, key): the order every implementation must answer in.
pub(crate) fn neighbor_order(a: &Neighbor, b: &Neighbor) -> std::cmp::Ordering {
    a.distance_m
        .total_cmp(&b.distance_m)
        .then(a.key.cmp(&b.key))
}
