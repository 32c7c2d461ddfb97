//! An R-tree index (rstar): the baseline the grid is benchmarked against.
//!
//! Drivers are stored as points on the unit sphere in 3D (`x, y, z`), not as `(lat, lng)`:
//! Euclidean (chord) distance in 3D grows monotonically with great-circle distance everywhere,
//! so there is no antimeridian seam and no pole singularity to special-case. rstar's
//! best-first nearest-neighbour iterator yields points by ascending chord; since
//! `arc >= chord`, the search stops as soon as the chord (scaled to metres) exceeds the k-th
//! exact haversine distance found or the radius. A move is a remove plus a re-insert, which is
//! how an R-tree has to treat moving objects; a side table maps key -> position so the old
//! point can be found.

use super::{Neighbor, SpatialIndex, neighbor_order};
use crate::domain::{DriverKey, EARTH_RADIUS_M, LatLng};
use rstar::RTree;
use rstar::primitives::GeomWithData;

/// Relative slack on the stop test, so rounding can only make the search look further.
const SLACK: f64 = 1e-9;

/// A tree item: unit-sphere point, with the driver and its exact position.
type Item = GeomWithData<[f64; 3], (DriverKey, LatLng)>;

/// The point on the unit sphere for `pos`. Deterministic, so a removal rebuilds the very item
/// that was inserted.
#[inline]
fn unit_vector(pos: LatLng) -> [f64; 3] {
    let (sin_lat, cos_lat) = pos.lat_deg().to_radians().sin_cos();
    let (sin_lng, cos_lng) = pos.lng_deg().to_radians().sin_cos();
    [cos_lat * cos_lng, cos_lat * sin_lng, sin_lat]
}

/// [`SpatialIndex`] on an `rstar` R-tree of unit-sphere points.
///
/// ```
/// use dispatch::LatLng;
/// use dispatch::domain::DriverKey;
/// use dispatch::index::{RTreeIndex, SpatialIndex};
///
/// let mut index = RTreeIndex::new();
/// index.upsert(DriverKey(7), LatLng::new(0.0, 179.9999).unwrap());
/// let mut out = Vec::new();
/// index.nearest(LatLng::new(0.0, -179.9999).unwrap(), 100.0, 5, &mut |_| true, &mut out);
/// assert_eq!(out.len(), 1);
/// ```
#[derive(Debug, Default)]
pub struct RTreeIndex {
    tree: RTree<Item>,
    /// Position of each key, `None` when absent; indexed by `DriverKey` (dense).
    positions: Vec<Option<LatLng>>,
}

impl RTreeIndex {
    /// An empty index.
    ///
    /// # Runtime
    /// O(1).
    pub fn new() -> Self {
        Self::default()
    }
}

impl SpatialIndex for RTreeIndex {
    /// # Runtime
    /// O(log n) expected: a tree removal (for a move) and a tree insertion.
    fn upsert(&mut self, key: DriverKey, position: LatLng) {
        let k = key.0 as usize;
        if k >= self.positions.len() {
            self.positions.resize(k + 1, None);
        }
        if let Some(old) = self.positions[k] {
            let removed = self.tree.remove(&Item::new(unit_vector(old), (key, old)));
            debug_assert!(removed.is_some(), "side table and tree disagree on {key:?}");
        }
        self.tree
            .insert(Item::new(unit_vector(position), (key, position)));
        self.positions[k] = Some(position);
    }

    /// # Runtime
    /// O(log n) expected.
    fn remove(&mut self, key: DriverKey) -> bool {
        let Some(old) = self
            .positions
            .get_mut(key.0 as usize)
            .and_then(Option::take)
        else {
            return false;
        };
        let removed = self.tree.remove(&Item::new(unit_vector(old), (key, old)));
        debug_assert!(removed.is_some(), "side table and tree disagree on {key:?}");
        true
    }

    /// # Runtime
    /// O(1).
    fn position(&self, key: DriverKey) -> Option<LatLng> {
        self.positions.get(key.0 as usize).copied().flatten()
    }

    /// # Runtime
    /// O(1).
    fn len(&self) -> usize {
        self.tree.size()
    }

    /// # Runtime
    /// O(log n + m log m) expected, m being the points the iterator yields before the stop test
    /// fires (about the points within the k-th distance); one haversine per yielded point.
    fn nearest(
        &self,
        center: LatLng,
        radius_m: f64,
        k: usize,
        filter: &mut dyn FnMut(DriverKey) -> bool,
        out: &mut Vec<Neighbor>,
    ) {
        out.clear();
        if k == 0 || radius_m.is_nan() || radius_m < 0.0 {
            return;
        }
        for (item, chord2) in self
            .tree
            .nearest_neighbor_iter_with_distance_2(unit_vector(center))
        {
            // Great-circle distance >= chord; with slack for rounding of the unit vectors.
            let lower_m = chord2.sqrt() * EARTH_RADIUS_M * (1.0 - SLACK) - 1e-6;
            let limit = if out.len() == k {
                out[k - 1].distance_m.min(radius_m)
            } else {
                radius_m
            };
            if lower_m > limit {
                break;
            }
            let (key, position) = item.data;
            let n = Neighbor {
                key,
                position,
                distance_m: center.distance_m(position),
            };
            if n.distance_m > radius_m
                || (out.len() == k && neighbor_order(&n, &out[k - 1]).is_ge())
                || !filter(key)
            {
                continue;
            }
            let at = out.partition_point(|o| neighbor_order(o, &n).is_lt());
            out.insert(at, n);
            out.truncate(k);
        }
    }
}
