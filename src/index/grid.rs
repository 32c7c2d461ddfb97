//! The default spatial index: a hashed grid of cells a few hundred metres wide that covers the
//! whole Earth.
//!
//! Why a grid: drivers report every few seconds and almost every report lands in the cell the
//! driver was already in, so a move is a table probe and one slot write, with no tree to
//! rebalance. A nearest query looks at a handful of cells around the rider.
//!
//! # Layout
//! - Latitude is cut into *bands* of a fixed height (`cell_m` metres of latitude). Each band is
//!   cut into `cols` equal longitude columns, `cols` chosen per band so that cells stay roughly
//!   square in metres (few columns near the poles, many at the equator). A cell is named by
//!   `(band, col)`, so any coordinate on Earth has a cell: there is no city box.
//! - Only occupied cells exist: an open-addressing table (`table.rs`) from cell key to the
//!   cell's compact array of `(position, key)` (removal is a swap-remove).
//! - `DriverKey` is dense, so driver -> (cell, slot-in-cell) is a `Vec` indexed by key (memory
//!   grows with the largest key ever upserted, 16 bytes per key).
//!
//! # Exact nearest queries
//! The query (`search.rs`) visits windows of cells that grow by one ring of `cell_m` metres at
//! a time; each ring's cells are looked up together so their cache misses overlap. After
//! ring `r` every unvisited driver is provably farther than `D_r = r * cell_m`: bands come from
//! `distance >= R * |delta latitude|`, and each band's column window from the haversine formula
//! with a lower bound of `cos(latitude)` over the band, which stays correct next to the poles
//! (where a window may take a whole band) and across the antimeridian (columns wrap).
//!
//! Candidates are ranked first by a trig-free proxy `dlat^2 + cos(lat_q) cos_min(band) dlng^2`
//! that is a proven lower bound of the distance and, close to the query, within a factor
//! `RHO2` of it. Only candidates that can still be among the k best by that bound get an exact
//! [`LatLng::distance_m`], so a query does about k haversines. Far from the query (more than a
//! degree) or very near a pole the proxy is not tight enough and the exact distance is used.
//! If the windows would grow past the number of occupied cells (a huge radius over a sparse
//! index) the query switches to a scan of all occupied cells with a per-cell lower bound.

use super::{Neighbor, SpatialIndex};
use crate::domain::{DriverKey, EARTH_RADIUS_M, LatLng};
use std::f64::consts::PI;
use table::{CellTable, EMPTY};

mod count;
mod search;
mod table;

/// Cell edge length used by [`GridIndex::new`], metres. Chosen by measurement (see the
/// `index` benchmark): 150, 250, 400 and 600 m were compared.
pub const DEFAULT_CELL_M: f64 = 250.0;

/// Metres per degree of latitude on the engine's sphere.
const M_PER_DEG: f64 = EARTH_RADIUS_M * PI / 180.0;
/// The trig-free proxy is used only when the candidate is within this many degrees of the query
/// in both latitude and longitude; beyond, `sin(x) ~ x` is not tight enough.
const FAST_SPAN_DEG: f64 = 1.0;
/// Upper bound of (proxy-derived distance / true distance)^2 wherever the proxy is used.
const RHO2: f64 = 1.001;
/// Relative slack on every comparison that decides to skip something, so floating-point
/// rounding can only make the index look at more, never at less.
const SLACK: f64 = 1e-9;
/// Extra longitude, in degrees, added to each side of a column window (rounding of col_of).
const EPS_DEG: f64 = 1e-9;
/// `Slot::cell` of a key that is not in the index.
const ABSENT: u64 = EMPTY;
/// Most empty cell vectors kept for reuse by new cells.
const SPARE_MAX: usize = 1024;

/// One latitude band of the grid.
#[derive(Clone, Copy, Debug)]
struct Band {
    /// Number of longitude columns (>= 1).
    cols: u32,
    /// A lower bound of `cos(latitude)` over the band (rounded down), >= 0.
    cos_min: f32,
}

/// Where a driver is stored: index `idx` of cell `cell` (a cell key, [`ABSENT`] if none).
#[derive(Clone, Copy, Debug)]
struct Slot {
    cell: u64,
    idx: u32,
}

/// One driver inside a cell.
#[derive(Clone, Copy, Debug)]
struct Entry {
    pos: LatLng,
    key: DriverKey,
}

/// The default [`SpatialIndex`]: a hashed grid over the whole Earth with O(1) in-cell moves.
///
/// ```
/// use dispatch::LatLng;
/// use dispatch::domain::DriverKey;
/// use dispatch::index::{GridIndex, SpatialIndex};
///
/// let mut index = GridIndex::new();
/// index.upsert(DriverKey(0), LatLng::new(40.7128, -74.0060).unwrap());
/// index.upsert(DriverKey(1), LatLng::new(40.7306, -73.9352).unwrap());
/// let mut out = Vec::new();
/// index.nearest(LatLng::new(40.72, -74.0).unwrap(), 5_000.0, 1, &mut |_| true, &mut out);
/// assert_eq!(out[0].key, DriverKey(0));
/// ```
#[derive(Debug)]
pub struct GridIndex {
    cell_m: f64,
    inv_band_deg: f64,
    band_deg: f64,
    bands: Vec<Band>,
    /// Bands `fast_lo..=fast_hi` have a cos bound tight enough for the proxy.
    fast_lo: usize,
    fast_hi: usize,
    slots: Vec<Slot>,
    cells: CellTable,
    /// Emptied cell vectors, reused by new cells to spare allocator churn.
    spare: Vec<Vec<Entry>>,
    len: usize,
    /// `sigma^2 (pi/360)^2`: proxy (degrees^2) to a lower bound of haversine `h`.
    lb_coef: f64,
}

impl Default for GridIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl GridIndex {
    /// An empty index with [`DEFAULT_CELL_M`] cells.
    ///
    /// # Runtime
    /// O(number of bands), as [`GridIndex::with_cell_m`].
    pub fn new() -> Self {
        Self::with_cell_m(DEFAULT_CELL_M)
    }

    /// An empty index with cells about `cell_m` metres on a side.
    ///
    /// # Panics
    /// If `cell_m` is not within `10.0..=100_000.0`.
    ///
    /// # Runtime
    /// O(number of bands) = O(20,000 km / `cell_m`): builds the band table (about 640 KB at
    /// 250 m).
    pub fn with_cell_m(cell_m: f64) -> Self {
        assert!(
            (10.0..=100_000.0).contains(&cell_m),
            "cell_m must be within 10..=100000 m, got {cell_m}"
        );
        let band_deg = cell_m / M_PER_DEG;
        let band_count = (180.0 / band_deg).ceil() as usize;
        let u = (FAST_SPAN_DEG / 2.0).to_radians();
        // sin(x)/x is decreasing, so for |x| <= u, sin(x) >= x * sigma.
        let sigma = (u.sin() / u) * (1.0 - 1e-12);
        let sigma2 = sigma * sigma;
        let lb_coef = sigma2 * (PI / 360.0) * (PI / 360.0);
        let mut bands = Vec::with_capacity(band_count);
        let (mut fast_lo, mut fast_hi) = (usize::MAX, 0);
        for b in 0..band_count {
            let lo = (b as f64 * band_deg - 90.0 - EPS_DEG).max(-90.0);
            let hi = if b + 1 == band_count {
                90.0
            } else {
                ((b + 1) as f64 * band_deg - 90.0 + EPS_DEG).min(90.0)
            };
            let (c_lo, c_hi) = (lo.to_radians().cos(), hi.to_radians().cos());
            let cos_min64 = (c_lo.min(c_hi) * (1.0 - 1e-12) - 1e-15).max(0.0);
            let mut cos_min = cos_min64 as f32;
            if f64::from(cos_min) > cos_min64 {
                cos_min = cos_min.next_down().max(0.0);
            }
            let cos_max = if lo <= 0.0 && hi >= 0.0 {
                1.0
            } else {
                c_lo.max(c_hi)
            };
            let center = ((lo + hi) / 2.0).to_radians();
            let cols = (2.0 * PI * EARTH_RADIUS_M * center.cos() / cell_m)
                .round()
                .clamp(1.0, 1.0e9) as u32;
            // The proxy's upper-bound ratio in this band: cos spread times the sin/asin
            // linearisation error within FAST_SPAN_DEG.
            let fast = cos_min > 0.0
                && cos_max / f64::from(cos_min) / (sigma2 * (1.0 - 2.0 * u * u)) * (1.0 + SLACK)
                    <= RHO2;
            if fast {
                fast_lo = fast_lo.min(b);
                fast_hi = fast_hi.max(b);
            }
            bands.push(Band { cols, cos_min });
        }
        GridIndex {
            cell_m,
            inv_band_deg: 1.0 / band_deg,
            band_deg,
            bands,
            fast_lo,
            fast_hi,
            slots: Vec::new(),
            cells: CellTable::new(),
            spare: Vec::new(),
            len: 0,
            lb_coef,
        }
    }

    /// The cell edge length this index was built with, metres.
    ///
    /// # Runtime
    /// O(1).
    pub fn cell_m(&self) -> f64 {
        self.cell_m
    }

    /// Heap bytes held by the index, computed from the capacities of its vectors and hash map
    /// (the band table included).
    ///
    /// # Runtime
    /// O(occupied cells).
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        let entries: usize = self
            .cells
            .buckets()
            .iter()
            .map(|b| b.entries.capacity() * size_of::<Entry>())
            .sum::<usize>()
            + self
                .spare
                .iter()
                .map(|v| v.capacity() * size_of::<Entry>())
                .sum::<usize>();
        self.bands.capacity() * size_of::<Band>()
            + self.slots.capacity() * size_of::<Slot>()
            + std::mem::size_of_val(self.cells.buckets())
            + self.spare.capacity() * size_of::<Vec<Entry>>()
            + entries
    }

    #[inline]
    fn band_of(&self, lat_deg: f64) -> usize {
        // `as usize` saturates: negative values (only from rounding) become band 0.
        (((lat_deg + 90.0) * self.inv_band_deg) as usize).min(self.bands.len() - 1)
    }

    /// Unwrapped column of longitude `lng_deg` (any value, not only -180..=180) in a band of
    /// `cols` columns. Monotone in `lng_deg`; the one formula every caller uses.
    #[inline]
    fn col_of(lng_deg: f64, cols: u32) -> i64 {
        let x = (lng_deg + 180.0) * (f64::from(cols) * (1.0 / 360.0));
        // floor without a libm call (baseline x86-64 has no rounding instruction): truncate,
        // then step down for negative non-integers. |x| is far below 2^63.
        let t = x as i64;
        if (t as f64) > x { t - 1 } else { t }
    }

    #[inline]
    fn cell_key(band: usize, col: i64, cols: u32) -> u64 {
        ((band as u64) << 32) | col.rem_euclid(i64::from(cols)) as u64
    }

    #[inline]
    fn cell_key_of(&self, pos: LatLng) -> u64 {
        let band = self.band_of(pos.lat_deg());
        let cols = self.bands[band].cols;
        Self::cell_key(band, Self::col_of(pos.lng_deg(), cols), cols)
    }

    /// Removes the entry at `slot` from its cell, fixing the slot of the entry swapped in.
    fn detach(&mut self, slot: Slot) {
        // A present driver's cell always exists: cells are freed only when emptied.
        let i = self.cells.find(slot.cell).expect("a driver's cell exists");
        let entries = &mut self.cells.bucket_mut(i).entries;
        entries.swap_remove(slot.idx as usize);
        if let Some(moved) = entries.get(slot.idx as usize) {
            self.slots[moved.key.0 as usize].idx = slot.idx;
        } else if entries.is_empty() {
            let spare = self.cells.remove_at(i);
            if self.spare.len() < SPARE_MAX && spare.capacity() <= 64 {
                self.spare.push(spare);
            }
        }
    }

    /// Appends `entry` to the cell `ck`, creating the cell if needed; returns its slot.
    fn attach(&mut self, ck: u64, entry: Entry) -> Slot {
        let i = self.cells.find_or_insert(ck, &mut self.spare);
        let entries = &mut self.cells.bucket_mut(i).entries;
        entries.push(entry);
        Slot {
            cell: ck,
            idx: (entries.len() - 1) as u32,
        }
    }
}

impl SpatialIndex for GridIndex {
    /// Inserts or moves a driver.
    ///
    /// # Runtime
    /// O(1): a slot write when the driver stays in its cell; otherwise a swap-remove from the
    /// old cell and a push (amortised) to the new one, one hash lookup each.
    fn upsert(&mut self, key: DriverKey, position: LatLng) {
        let ck = self.cell_key_of(position);
        let k = key.0 as usize;
        if k >= self.slots.len() {
            self.slots.resize(
                k + 1,
                Slot {
                    cell: ABSENT,
                    idx: 0,
                },
            );
        }
        let slot = self.slots[k];
        if slot.cell != ABSENT {
            if slot.cell == ck {
                // The driver's cell exists while the driver is in it.
                let i = self.cells.find(ck).expect("a driver's cell exists");
                self.cells.bucket_mut(i).entries[slot.idx as usize].pos = position;
                return;
            }
            self.detach(slot);
        } else {
            self.len += 1;
        }
        self.slots[k] = self.attach(ck, Entry { pos: position, key });
    }

    /// # Runtime
    /// O(1).
    fn remove(&mut self, key: DriverKey) -> bool {
        let Some(&slot) = self.slots.get(key.0 as usize) else {
            return false;
        };
        if slot.cell == ABSENT {
            return false;
        }
        self.detach(slot);
        self.slots[key.0 as usize].cell = ABSENT;
        self.len -= 1;
        true
    }

    /// # Runtime
    /// O(1).
    fn position(&self, key: DriverKey) -> Option<LatLng> {
        let slot = self.slots.get(key.0 as usize)?;
        if slot.cell == ABSENT {
            return None;
        }
        let i = self.cells.find(slot.cell)?;
        Some(self.cells.bucket(i).entries[slot.idx as usize].pos)
    }

    /// # Runtime
    /// O(1).
    fn len(&self) -> usize {
        self.len
    }

    /// Counts whole cells whose centre is within the radius (see `grid/count.rs`).
    ///
    /// # Runtime
    /// O(cells in the radius' window), independent of the drivers they hold.
    fn count_near(&self, center: LatLng, radius_m: f64) -> usize {
        self.count_cells_near(center, radius_m, None)
    }

    /// Counts the drivers passing `filter` in the same cells as `count_near`.
    ///
    /// # Runtime
    /// O(cells in the radius' window + the drivers they hold): one filter call per driver,
    /// no distance computed.
    fn count_near_where(
        &self,
        center: LatLng,
        radius_m: f64,
        filter: &mut dyn FnMut(DriverKey) -> bool,
    ) -> usize {
        self.count_cells_near(center, radius_m, Some(filter))
    }

    /// # Runtime
    /// O(c + m + k log k) where c is the number of cells within about the k-th distance of
    /// `center` (plus one ring) and m the drivers in them; about k haversines. For a radius that
    /// would span more cells than are occupied, O(occupied cells + n) instead.
    fn nearest(
        &self,
        center: LatLng,
        radius_m: f64,
        k: usize,
        filter: &mut dyn FnMut(DriverKey) -> bool,
        out: &mut Vec<Neighbor>,
    ) {
        self.search(center, radius_m, k, filter, out);
    }
}
