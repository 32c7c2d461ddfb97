//! A linear-scan index: obviously correct, so it is the oracle the property tests compare the
//! grid and the R-tree against. O(n) per query; never use it for real traffic.

use super::{Neighbor, SpatialIndex, neighbor_order};
use crate::domain::{DriverKey, LatLng};
use rustc_hash::FxHashMap;

/// Every driver in a hash map; queries scan them all.
#[derive(Debug, Default)]
pub struct BruteForceIndex {
    positions: FxHashMap<DriverKey, LatLng>,
}

impl BruteForceIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }
}

impl SpatialIndex for BruteForceIndex {
    fn upsert(&mut self, key: DriverKey, position: LatLng) {
        self.positions.insert(key, position);
    }

    fn remove(&mut self, key: DriverKey) -> bool {
        self.positions.remove(&key).is_some()
    }

    fn position(&self, key: DriverKey) -> Option<LatLng> {
        self.positions.get(&key).copied()
    }

    fn len(&self) -> usize {
        self.positions.len()
    }

    fn nearest(
        &self,
        center: LatLng,
        radius_m: f64,
        k: usize,
        filter: &mut dyn FnMut(DriverKey) -> bool,
        out: &mut Vec<Neighbor>,
    ) {
        out.clear();
        for (&key, &position) in &self.positions {
            let distance_m = center.distance_m(position);
            if distance_m <= radius_m && filter(key) {
                out.push(Neighbor {
                    key,
                    position,
                    distance_m,
                });
            }
        }
        out.sort_by(neighbor_order);
        out.truncate(k);
    }
}
