//! Counts per grid cell, for viewers beyond their point budget: drivers `(count, available)`
//! and open trips by status with their pending offers, the cell items' JSON, and the cells
//! whose counts changed between two views.
//!
//! Why: zoomed out, a viewer is shown density, not items. Drivers were already sent as cells,
//! but trips and offers still went one by one, so a city-wide viewer's ticks carried every
//! trip change of the city (663 KB/s per viewer at 1,000 requests/s) and its snapshots every
//! open trip. Counting trips and offers into the drivers' cells bounds what a zoomed-out
//! viewer is sent by the cells in its viewport, whatever the city's trip rate.
//!
//! A trip counts in the cell of its pickup, an offer in the cell of the pickup it leads to.
//! Cells are whole, as for drivers: an edge cell counts everything in it, also what lies just
//! outside the bbox.

use std::io::Write;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::tiles::{Bounds, cell_key, close_array, r};
use crate::engine::MapView;
use crate::events::TripStatus;

/// A cell's `(row, col)`: `floor(lat / size)`, `floor(lng / size)`.
pub(super) type Key = (i64, i64);

/// A cell's open trips and pending offers: `[open, searching, offered, accepted, arrived,
/// in_progress, offers]` (`open` is the sum of the five statuses).
pub(super) type TripCount = [u32; 7];

/// What a cell item carries after its centre; all zero is an empty cell.
pub(super) trait Counts: Copy + PartialEq + Default {
    /// Writes `,a,b,...`.
    fn write(&self, out: &mut Vec<u8>);
}

fn write_numbers(out: &mut Vec<u8>, numbers: &[u32]) {
    for n in numbers {
        // Writing to a Vec cannot fail.
        let _ = write!(out, ",{n}");
    }
}

impl Counts for (u32, u32) {
    fn write(&self, out: &mut Vec<u8>) {
        write_numbers(out, &[self.0, self.1]);
    }
}

impl Counts for TripCount {
    fn write(&self, out: &mut Vec<u8>) {
        write_numbers(out, self);
    }
}

/// Writes the item `[lng, lat, counts...],` of cell `key` of side `size` (its centre).
pub(super) fn write_item<V: Counts>(out: &mut Vec<u8>, size: f64, (row, col): Key, v: &V) {
    let centre = |i: i64| r((i as f64 + 0.5) * size);
    out.push(b'[');
    // Finite numbers always serialise.
    let _ = serde_json::to_writer(&mut *out, &centre(col));
    out.push(b',');
    let _ = serde_json::to_writer(&mut *out, &centre(row));
    v.write(out);
    out.extend_from_slice(b"],");
}

/// `[open, searching, ..., offers]` per cell of side `size` over the open trips and pending
/// offers of `view`: O(trips + offers).
pub(super) fn trip_counts(view: &MapView, size: f64) -> FxHashMap<Key, TripCount> {
    let mut counts: FxHashMap<Key, TripCount> = FxHashMap::default();
    for t in &view.trips {
        let at = match t.status {
            TripStatus::Searching => 1,
            TripStatus::Offered => 2,
            TripStatus::Accepted => 3,
            TripStatus::Arrived => 4,
            TripStatus::InProgress => 5,
            // A view holds open trips only.
            TripStatus::Completed | TripStatus::Cancelled | TripStatus::NoDrivers => continue,
        };
        let c = counts
            .entry(cell_key(size, t.pickup.lng_deg(), t.pickup.lat_deg()))
            .or_default();
        c[0] += 1;
        c[at] += 1;
    }
    for o in &view.offers {
        counts
            .entry(cell_key(size, o.to.lng_deg(), o.to.lat_deg()))
            .or_default()[6] += 1;
    }
    counts
}

/// The `(row, col)` range of cells of side `size` that `b` touches.
pub(super) fn covered(size: f64, b: Bounds) -> (Key, Key) {
    (cell_key(size, b[0], b[1]), cell_key(size, b[2], b[3]))
}

/// The cells of one size whose counts changed between two views (all zero when emptied),
/// sorted by `(row, col)` and encoded once, with the newer view's counts for the next delta.
#[derive(Debug)]
pub(super) struct Changed<V> {
    /// Cell side, degrees.
    pub(super) size: f64,
    keys: Vec<Key>,
    /// Item `i` is `text[ends[i - 1]..ends[i]]` (from 0 for the first).
    ends: Vec<usize>,
    text: Vec<u8>,
    /// The counts of the newer view.
    pub(super) counts: Arc<FxHashMap<Key, V>>,
}

impl<V: Counts> Changed<V> {
    /// The cells of side `size` that differ between `before` and `after`.
    pub(super) fn new(
        size: f64,
        before: &FxHashMap<Key, V>,
        after: Arc<FxHashMap<Key, V>>,
    ) -> Changed<V> {
        let mut changed: Vec<(Key, V)> = after
            .iter()
            .filter(|(k, c)| before.get(k) != Some(c))
            .map(|(&k, &c)| (k, c))
            .collect();
        changed.extend(
            before
                .keys()
                .filter(|k| !after.contains_key(k))
                .map(|&k| (k, V::default())),
        );
        changed.sort_unstable_by_key(|&(k, _)| k);
        let mut out = Changed {
            size,
            keys: Vec::with_capacity(changed.len()),
            ends: Vec::with_capacity(changed.len()),
            text: Vec::with_capacity(changed.len() * 32),
            counts: after,
        };
        for (key, v) in changed {
            write_item(&mut out.text, size, key, &v);
            out.keys.push(key);
            out.ends.push(out.text.len());
        }
        out
    }

    /// Writes `[item, ...]`: the changed cells `bbox` touches (every one with `None`).
    pub(super) fn write(&self, out: &mut Vec<u8>, bbox: Option<Bounds>) {
        out.push(b'[');
        let start = out.len();
        let cover = bbox.map(|b| covered(self.size, b));
        let mut from = 0;
        for (i, &(row, col)) in self.keys.iter().enumerate() {
            let shown = cover.is_none_or(|(lo, hi)| {
                (lo.0..=hi.0).contains(&row) && (lo.1..=hi.1).contains(&col)
            });
            if shown {
                out.extend_from_slice(&self.text[from..self.ends[i]]);
            }
            from = self.ends[i];
        }
        close_array(out, start);
    }
}

#[cfg(test)]
#[path = "cells_tests.rs"]
mod tests;
