//! The drivers of one published [`MapView`], sorted into rows of fixed tiles and encoded as
//! JSON once, so a viewer's snapshot is a few binary searches and byte copies instead of a
//! walk over every driver and an encode of every visible one.
//!
//! Why: the page re-fetches its viewport on every view publish (four times a second). With
//! 50 people watching different parts of a 100k-driver city, building each answer from
//! scratch walked 100k drivers and encoded up to 20k points 200 times a second, on the same
//! two cores that answer gRPC. Here the walk and the encoding happen once per view (lazily,
//! on the first snapshot that needs them), and each viewer pays for the rows its viewport
//! covers and the bytes it is sent.
//!
//! Points are exact: a driver is sent if and only if its position is inside the bbox (tiles
//! strictly inside the bbox are copied whole; the drivers of edge tiles are checked one by
//! one). Cells (when more than `max_points` drivers are in view) are counted over the whole
//! view, so an edge cell counts all its drivers, including those just outside the bbox: the
//! page draws whole cells, and an edge cell that counted only its inside part would read as
//! a thin area.

use std::sync::{Arc, OnceLock};

use rustc_hash::FxHashMap;

use super::cells::{self, Counts};
use crate::engine::MapView;

/// Tile side for points, degrees (about 220 m of latitude): small enough that an edge row's
/// checks stay few, large enough that a city has a few hundred rows.
const TILE_DEG: f64 = 0.002;

/// Rounded to 1e-5 degrees (about a metre): the page needs no more, and the JSON is shorter.
pub(super) fn r(x: f64) -> f64 {
    (x * 1e5).round() / 1e5
}

/// A viewport, `[min_lng, min_lat, max_lng, max_lat]` in degrees.
pub(super) type Bounds = [f64; 4];

/// Cell items (JSON array elements, each followed by a comma) sorted by `(row, col)`.
#[derive(Debug, Default)]
struct Rows {
    /// Tile side, degrees.
    size: f64,
    /// `(row, col)` of item `i`.
    keys: Vec<(i64, i64)>,
    /// Item `i` is `text[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<usize>,
    text: Vec<u8>,
}

impl Rows {
    fn tile(size: f64, lng: f64, lat: f64) -> (i64, i64) {
        ((lat / size).floor() as i64, (lng / size).floor() as i64)
    }

    /// The cells of `counts`, sorted and encoded.
    fn from_counts<V: Counts>(size: f64, counts: FxHashMap<(i64, i64), V>) -> Rows {
        let mut sorted: Vec<_> = counts.into_iter().collect();
        sorted.sort_unstable_by_key(|&(key, _)| key);
        let mut rows = Rows {
            size,
            keys: Vec::with_capacity(sorted.len()),
            offsets: Vec::with_capacity(sorted.len() + 1),
            text: Vec::with_capacity(sorted.len() * 32),
        };
        rows.offsets.push(0);
        for (key, v) in sorted {
            cells::write_item(&mut rows.text, size, key, &v);
            rows.keys.push(key);
            rows.offsets.push(rows.text.len());
        }
        rows
    }

    /// Items `lo..hi` of row `row` with a column in `cols`.
    fn span(&self, row: i64, cols: (i64, i64)) -> (usize, usize) {
        let lo = self.keys.partition_point(|&k| k < (row, cols.0));
        let hi = self.keys.partition_point(|&k| k <= (row, cols.1));
        (lo, hi)
    }

    /// Appends items `lo..hi`.
    fn copy(&self, out: &mut Vec<u8>, lo: usize, hi: usize) {
        if lo < hi {
            out.extend_from_slice(&self.text[self.offsets[lo]..self.offsets[hi]]);
        }
    }
}

/// The tile rows and columns of side `size` that `b` covers, cut to those `within` (the
/// view's bounds) covers; `None` when they share none.
fn cover(size: f64, b: Bounds, within: Bounds) -> Option<((i64, i64), (i64, i64))> {
    let cut = [
        b[0].max(within[0]),
        b[1].max(within[1]),
        b[2].min(within[2]),
        b[3].min(within[3]),
    ];
    // Compared as tiles, not degrees: a bbox that ends just short of the view's bounds still
    // touches the cell that holds the nearest drivers (cells are whole).
    let (r0, c0) = Rows::tile(size, cut[0], cut[1]);
    let (r1, c1) = Rows::tile(size, cut[2], cut[3]);
    (r0 <= r1 && c0 <= c1).then_some(((r0, r1), (c0, c1)))
}

/// The `(row, col)` of the cell of side `size` degrees that holds `(lng, lat)`.
pub(super) fn cell_key(size: f64, lng: f64, lat: f64) -> (i64, i64) {
    Rows::tile(size, lng, lat)
}

/// `(count, available)` per cell of side `size` over every driver of `view`: O(drivers).
pub(super) fn cell_counts(view: &MapView, size: f64) -> FxHashMap<(i64, i64), (u32, u32)> {
    let mut counts: FxHashMap<(i64, i64), (u32, u32)> = FxHashMap::default();
    for d in &view.drivers {
        let (lng, lat) = (d.position.lng_deg(), d.position.lat_deg());
        let c = counts.entry(Rows::tile(size, lng, lat)).or_default();
        c.0 += 1;
        c.1 += u32::from(d.state as u8 == 0);
    }
    counts
}

/// Closes a list of comma-terminated items written after `start` into a JSON array.
pub(super) fn close_array(out: &mut Vec<u8>, start: usize) {
    if out.len() > start && out.last() == Some(&b',') {
        out.pop();
    }
    out.push(b']');
}

/// The point items of one tile row, encoded the first time a viewport touches the row.
#[derive(Debug)]
struct Encoded {
    /// Item `j` of the row is `text[offsets[j]..offsets[j + 1]]`.
    offsets: Vec<usize>,
    text: Vec<u8>,
}

/// One view's drivers, indexed for viewport answers. Built at the first snapshot of a view.
#[derive(Debug)]
pub(super) struct ViewTiles {
    view: Arc<MapView>,
    /// The view's bounds (every online driver), `None` with none online.
    bounds: Option<Bounds>,
    /// `(row, col)` of each driver in sorted order, its position, and its index in the view.
    keys: Vec<(i64, i64)>,
    positions: Vec<(f64, f64)>,
    source: Vec<u32>,
    /// The first row's number, and where each row starts in the sorted order (one more entry
    /// than rows).
    first_row: i64,
    row_starts: Vec<usize>,
    /// Each row's point items, encoded on first use.
    encoded: Vec<OnceLock<Encoded>>,
    /// Cells per size of `cell_sizes`, each built when first asked for.
    cells: Vec<OnceLock<Rows>>,
    /// Trip cells per size, likewise.
    trip_cells: Vec<OnceLock<Rows>>,
    cell_sizes: &'static [f64],
}

impl ViewTiles {
    /// Sorts the drivers of `view` into tile rows: O(n log n) once per view; encoding waits
    /// until a viewport needs a row.
    pub(super) fn new(view: Arc<MapView>, cell_sizes: &'static [f64]) -> ViewTiles {
        let mut order: Vec<((i64, i64), u32)> = view
            .drivers
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let key = Rows::tile(TILE_DEG, d.position.lng_deg(), d.position.lat_deg());
                (key, i as u32)
            })
            .collect();
        order.sort_unstable();
        let keys: Vec<(i64, i64)> = order.iter().map(|&(k, _)| k).collect();
        let source: Vec<u32> = order.iter().map(|&(_, i)| i).collect();
        let positions = source
            .iter()
            .map(|&i| {
                let p = view.drivers[i as usize].position;
                (p.lng_deg(), p.lat_deg())
            })
            .collect();
        let (first_row, last_row) = match (keys.first(), keys.last()) {
            (Some(a), Some(b)) => (a.0, b.0),
            _ => (0, -1),
        };
        let row_starts: Vec<usize> = (first_row..=last_row + 1)
            .map(|row| keys.partition_point(|k| k.0 < row))
            .collect();
        let rows = row_starts.len().saturating_sub(1);
        ViewTiles {
            bounds: view.bounds,
            keys,
            positions,
            source,
            first_row,
            row_starts,
            encoded: (0..rows).map(|_| OnceLock::new()).collect(),
            cells: cell_sizes.iter().map(|_| OnceLock::new()).collect(),
            trip_cells: cell_sizes.iter().map(|_| OnceLock::new()).collect(),
            cell_sizes,
            view,
        }
    }

    /// Items `lo..hi` (sorted order) of `row` with a column in `cols`.
    fn span(&self, row: i64, cols: (i64, i64)) -> (usize, usize) {
        let Some(at) = usize::try_from(row - self.first_row)
            .ok()
            .filter(|&at| at + 1 < self.row_starts.len())
        else {
            return (0, 0);
        };
        let (start, end) = (self.row_starts[at], self.row_starts[at + 1]);
        let keys = &self.keys[start..end];
        let lo = start + keys.partition_point(|k| k.1 < cols.0);
        let hi = start + keys.partition_point(|k| k.1 <= cols.1);
        (lo, hi)
    }

    /// The drivers inside `b` (the whole view with `None`): their count and, if it is at most
    /// `limit`, the runs of sorted items that hold them, as `(row, lo, hi)`.
    fn visible(&self, b: Option<Bounds>, limit: usize) -> (usize, Vec<(i64, usize, usize)>) {
        let Some(within) = self.bounds else {
            return (0, Vec::new());
        };
        let b = b.unwrap_or(within);
        let Some(((r0, r1), (c0, c1))) = cover(TILE_DEG, b, within) else {
            return (0, Vec::new());
        };
        let inside = |i: usize| {
            let (lng, lat) = self.positions[i];
            (b[0]..=b[2]).contains(&lng) && (b[1]..=b[3]).contains(&lat)
        };
        let mut count = 0;
        let mut runs: Vec<(i64, usize, usize)> = Vec::new();
        for row in r0..=r1 {
            let (lo, hi) = self.span(row, (c0, c1));
            // In an interior row, the tiles strictly between the edge columns lie inside
            // the bbox whole; everything else is checked driver by driver.
            let (ilo, ihi) = if row > r0 && row < r1 && c1 - c0 >= 2 {
                self.span(row, (c0 + 1, c1 - 1))
            } else {
                (hi, hi)
            };
            for i in (lo..ilo).chain(ilo..ihi).chain(ihi..hi) {
                if (ilo..ihi).contains(&i) || inside(i) {
                    count += 1;
                    match runs.last_mut() {
                        Some(run) if run.0 == row && run.2 == i => run.2 = i + 1,
                        _ => runs.push((row, i, i + 1)),
                    }
                }
            }
            if count > limit {
                return (count, Vec::new());
            }
        }
        (count, runs)
    }

    /// The encoded items of `row`.
    fn encoded(&self, row: i64) -> (&Encoded, usize) {
        let at = (row - self.first_row) as usize;
        let start = self.row_starts[at];
        let encoded = self.encoded[at].get_or_init(|| {
            let end = self.row_starts[at + 1];
            let mut text = Vec::with_capacity((end - start) * 40);
            let mut offsets = Vec::with_capacity(end - start + 1);
            offsets.push(0);
            for &i in &self.source[start..end] {
                let d = &self.view.drivers[i as usize];
                let (lng, lat) = (d.position.lng_deg(), d.position.lat_deg());
                let item = (r(lng), r(lat), d.state as u8, d.id.as_str());
                // Plain tuples of numbers and strings always serialise.
                let _ = serde_json::to_writer(&mut text, &item);
                text.push(b',');
                offsets.push(text.len());
            }
            Encoded { offsets, text }
        });
        (encoded, start)
    }

    /// The number of drivers inside `b` (the whole view with `None`), exact up to `limit`
    /// (above it, some number above `limit`).
    pub(super) fn count(&self, b: Option<Bounds>, limit: usize) -> usize {
        self.visible(b, limit).0
    }

    /// Writes `[point, ...]` for the drivers inside `b` if there are at most `max_points` of
    /// them, and answers whether it did.
    pub(super) fn write_points(&self, out: &mut Vec<u8>, b: Option<Bounds>, max: usize) -> bool {
        let (count, runs) = self.visible(b, max);
        if count > max {
            return false;
        }
        let start = out.len();
        out.push(b'[');
        for (row, lo, hi) in runs {
            let (e, first) = self.encoded(row);
            out.extend_from_slice(&e.text[e.offsets[lo - first]..e.offsets[hi - first]]);
        }
        close_array(out, start + 1);
        true
    }

    /// Writes `[[lng, lat, count, available], ...]` for the cells of size index `level`
    /// that `b` touches, rows south to north and west to east.
    pub(super) fn write_cells(&self, out: &mut Vec<u8>, b: Option<Bounds>, level: usize) {
        let start = out.len();
        out.push(b'[');
        if let Some(within) = self.bounds {
            let cells = self.cells[level].get_or_init(|| self.build_cells(level));
            let b = b.unwrap_or(within);
            if let Some(((r0, r1), (c0, c1))) = cover(cells.size, b, within) {
                for row in r0..=r1 {
                    let (lo, hi) = cells.span(row, (c0, c1));
                    cells.copy(out, lo, hi);
                }
            }
        }
        close_array(out, start + 1);
    }

    /// Writes `[[lng, lat, open, searching, offered, accepted, arrived, in_progress, offers],
    /// ...]` for the trip cells of size index `level` that `b` touches (every one with
    /// `None`): open trips by the cell of their pickup, pending offers by the pickup's cell.
    pub(super) fn write_trip_cells(&self, out: &mut Vec<u8>, b: Option<Bounds>, level: usize) {
        let size = self.cell_sizes[level];
        let cells = self.trip_cells[level]
            .get_or_init(|| Rows::from_counts(size, cells::trip_counts(&self.view, size)));
        let start = out.len();
        out.push(b'[');
        match b {
            Some(b) => {
                let ((r0, c0), (r1, c1)) = cells::covered(size, b);
                for row in r0..=r1 {
                    let (lo, hi) = cells.span(row, (c0, c1));
                    cells.copy(out, lo, hi);
                }
            }
            None => cells.copy(out, 0, cells.keys.len()),
        }
        close_array(out, start + 1);
    }

    fn build_cells(&self, level: usize) -> Rows {
        let size = self.cell_sizes[level];
        Rows::from_counts(size, cell_counts(&self.view, size))
    }
}

/// A view for tests of this module and `delta`: view number `seq` (published at `seq` x 250
/// ms) holding the drivers `(key, lng, lat, state)`, given in key order; driver `k` is
/// `d-{k}`, state `0` available, `1` offered, `2` on a trip.
#[cfg(test)]
pub(super) fn test_view(seq: u64, dots: &[(u32, f64, f64, u8)]) -> Arc<MapView> {
    use crate::domain::{ExternalId, LatLng};
    use crate::engine::map_view::{DotState, DriverDot};
    let drivers: Vec<DriverDot> = dots
        .iter()
        .map(|&(key, lng, lat, state)| DriverDot {
            key,
            position: LatLng::new(lat, lng).unwrap(),
            state: [DotState::Available, DotState::Offered, DotState::OnTrip]
                [usize::from(state % 3)],
            id: ExternalId::new("driver_id", &format!("d-{key}")).unwrap(),
        })
        .collect();
    let bounds = (!drivers.is_empty()).then(|| {
        drivers
            .iter()
            .fold([f64::MAX, f64::MAX, f64::MIN, f64::MIN], |b, d| {
                let (lng, lat) = (d.position.lng_deg(), d.position.lat_deg());
                [b[0].min(lng), b[1].min(lat), b[2].max(lng), b[3].max(lat)]
            })
    });
    Arc::new(MapView {
        seq,
        at_ms: seq * 250,
        bounds,
        drivers,
        ..MapView::default()
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SIZES: [f64; 3] = [0.001, 0.01, 0.1];

    fn view(points: &[(f64, f64, u8)]) -> Arc<MapView> {
        let dots: Vec<_> = (0u32..)
            .zip(points)
            .map(|(i, &(lng, lat, state))| (i, lng, lat, state))
            .collect();
        test_view(0, &dots)
    }

    fn ids(json: &[u8]) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(json).unwrap();
        let mut ids: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[3].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    }

    proptest! {
        /// The points sent are exactly the drivers inside the bbox, whatever the bbox.
        #[test]
        fn points_are_exactly_the_drivers_inside(
            points in prop::collection::vec((-74.05..-73.95f64, 40.65..40.75f64, 0u8..3), 0..400),
            corner in (-74.1..-73.9f64, 40.6..40.8f64),
            size in (0.0001..0.2f64, 0.0001..0.2f64),
        ) {
            let v = view(&points);
            let tiles = ViewTiles::new(v.clone(), &SIZES);
            let b = [corner.0, corner.1, corner.0 + size.0, corner.1 + size.1];
            let mut out = Vec::new();
            prop_assert!(tiles.write_points(&mut out, Some(b), usize::MAX));
            let mut expected: Vec<String> = v
                .drivers
                .iter()
                .filter(|d| {
                    let (lng, lat) = (d.position.lng_deg(), d.position.lat_deg());
                    (b[0]..=b[2]).contains(&lng) && (b[1]..=b[3]).contains(&lat)
                })
                .map(|d| d.id.as_str().to_string())
                .collect();
            expected.sort();
            prop_assert_eq!(ids(&out), expected.clone());
            // Over the limit, nothing is written and the caller sends cells.
            if !expected.is_empty() {
                let mut none = Vec::new();
                prop_assert!(!tiles.write_points(&mut none, Some(b), expected.len() - 1));
            }
        }

        /// Cells over the whole view count every driver once, and available ones as such.
        #[test]
        fn cells_count_every_driver_once(
            points in prop::collection::vec((-74.05..-73.95f64, 40.65..40.75f64, 0u8..3), 1..400),
            level in 0usize..3,
        ) {
            let v = view(&points);
            let tiles = ViewTiles::new(v.clone(), &SIZES);
            let mut out = Vec::new();
            tiles.write_cells(&mut out, None, level);
            let cells: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let sum = |k: usize| -> u64 {
                cells.as_array().unwrap().iter().map(|c| c[k].as_u64().unwrap()).sum()
            };
            prop_assert_eq!(sum(2), points.len() as u64);
            let available = points.iter().filter(|p| p.2 % 3 == 0).count() as u64;
            prop_assert_eq!(sum(3), available);
        }
    }

    #[test]
    fn an_empty_view_or_a_bbox_away_from_it_sends_nothing() {
        let empty = ViewTiles::new(view(&[]), &SIZES);
        let mut out = Vec::new();
        assert!(empty.write_points(&mut out, None, 10));
        assert_eq!(out, b"[]");
        let city = ViewTiles::new(view(&[(-74.0, 40.7, 0)]), &SIZES);
        let mut out = Vec::new();
        assert!(city.write_points(&mut out, Some([10.0, 10.0, 11.0, 11.0]), 10));
        assert_eq!(out, b"[]");
        let mut out = Vec::new();
        city.write_cells(&mut out, Some([10.0, 10.0, 11.0, 11.0]), 1);
        assert_eq!(out, b"[]");
    }
}
