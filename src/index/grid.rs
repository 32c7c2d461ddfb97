//! The default spatial index: a hashed grid of cells a few hundred metres wide that covers the
//! whole Earth.
//!
//! Why a grid: drivers report every few seconds and almost every report lands in the cell the
//! driver was already in, so a move is one slot write, with no tree to rebalance. A nearest query
//! looks at a handful of cells around the rider.
//!
//! # Layout
//! - Latitude is cut into *bands* of a fixed height (`cell_m` metres of latitude). Each band is
//!   cut into `cols` equal longitude columns, `cols` chosen per band so that cells stay roughly
//!   square in metres (few columns near the poles, many at the equator). A cell is named by
//!   `(band, col)`, so any coordinate on Earth has a cell: there is no city box.
//! - Only occupied cells exist: a hash map from cell key to a slot in a cell slab; a cell holds a
//!   compact array of `(position, key)` (removal is a swap-remove).
//! - `DriverKey` is dense, so driver -> (cell, slot-in-cell) is a `Vec` indexed by key.
//!
//! # Exact nearest queries
//! The query visits windows of cells that grow by one ring of `cell_m` metres at a time. After
//! ring `r` every unvisited driver is provably farther than `D_r = r * cell_m`: bands come from
//! `distance >= R * |delta latitude|`, and each band's column window from the haversine formula
//! with a lower bound of `cos(latitude)` over the band, which stays correct next to the poles
//! (where a window may take a whole band) and across the antimeridian (columns wrap).
//!
//! Candidates are ranked first by a trig-free proxy `dlat^2 + cos(lat_q) cos_min(band) dlng^2`
//! that is a proven lower bound of the distance and, close to the query, within a factor
//! [`RHO2`] of it. Only candidates that can still be among the k best by that bound get an exact
//! [`LatLng::distance_m`], so a query does about k haversines. Far from the query (more than a
//! degree) or very near a pole the proxy is not tight enough and the exact distance is used.
//! If the windows would grow past the number of occupied cells (a huge radius over a sparse
//! index) the query switches to a scan of all occupied cells with a per-cell lower bound.

use super::{Neighbor, SpatialIndex, neighbor_order};
use crate::domain::{DriverKey, EARTH_RADIUS_M, LatLng};
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::f64::consts::PI;

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
const ABSENT: u32 = u32::MAX;

/// One latitude band of the grid.
#[derive(Clone, Copy, Debug)]
struct Band {
    /// Number of longitude columns (>= 1).
    cols: u32,
    /// A lower bound of `cos(latitude)` over the band (rounded down), >= 0.
    cos_min: f32,
}

/// Where a driver is stored: `cells[cell].entries[idx]`.
#[derive(Clone, Copy, Debug)]
struct Slot {
    cell: u32,
    idx: u32,
}

/// One driver inside a cell.
#[derive(Clone, Copy, Debug)]
struct Entry {
    pos: LatLng,
    key: DriverKey,
}

/// An occupied cell (or a free slab slot, with no entries).
#[derive(Debug, Default)]
struct Cell {
    key: u64,
    entries: Vec<Entry>,
}

/// A column window already visited in one band during a ring search.
#[derive(Clone, Copy, Debug, Default)]
struct Win {
    /// Whether the band has been entered (lo/hi valid).
    entered: bool,
    /// The whole band has been visited.
    full: bool,
    /// Visited unwrapped columns `lo..=hi`.
    lo: i64,
    hi: i64,
    /// Unwrapped column of the query's longitude in this band.
    qcol: i64,
    /// Minimum latitude gap between the query and the band, radians.
    gap_rad: f64,
    /// The proxy may be used in this band (tight cos bound, within FAST_SPAN_DEG in latitude).
    fast_lat: bool,
}

thread_local! {
    /// Reused column-window vectors of ring searches (bands at and above, below the query).
    static SCRATCH: RefCell<(Vec<Win>, Vec<Win>)> = const { RefCell::new((Vec::new(), Vec::new())) };
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
    cells: Vec<Cell>,
    free_cells: Vec<u32>,
    cell_of_key: FxHashMap<u64, u32>,
    len: usize,
    /// `sigma^2 (pi/360)^2`: proxy (degrees^2) to a lower bound of haversine `h`.
    lb_coef: f64,
}

impl Default for GridIndex {
    fn default() -> Self {
        Self::new()
    }
}

/// A lower bound of `sin(x)^2` for `0 <= x <= pi/2`, without trig (`sin x >= x - x^3/6`).
#[inline]
fn sin2_lower(x: f64) -> f64 {
    let s = (x - x * x * x / 6.0).max(0.0);
    s * s
}

impl GridIndex {
    /// An empty index with [`DEFAULT_CELL_M`] cells.
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
            cells: Vec::new(),
            free_cells: Vec::new(),
            cell_of_key: FxHashMap::default(),
            len: 0,
            lb_coef,
        }
    }

    /// The cell edge length this index was built with, metres.
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
            .iter()
            .map(|c| c.entries.capacity() * size_of::<Entry>())
            .sum();
        // hashbrown: buckets are a power of two with a 7/8 load factor; one control byte per
        // bucket plus a 16-byte group tail.
        let map = if self.cell_of_key.capacity() == 0 {
            0
        } else {
            let buckets = (self.cell_of_key.capacity() * 8 / 7).next_power_of_two();
            buckets * (size_of::<(u64, u32)>() + 1) + 16
        };
        self.bands.capacity() * size_of::<Band>()
            + self.slots.capacity() * size_of::<Slot>()
            + self.cells.capacity() * size_of::<Cell>()
            + self.free_cells.capacity() * size_of::<u32>()
            + entries
            + map
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
        ((lng_deg + 180.0) * (f64::from(cols) * (1.0 / 360.0))).floor() as i64
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
        let cell = &mut self.cells[slot.cell as usize];
        cell.entries.swap_remove(slot.idx as usize);
        if let Some(moved) = cell.entries.get(slot.idx as usize) {
            self.slots[moved.key.0 as usize].idx = slot.idx;
        } else if cell.entries.is_empty() {
            // Keep the allocation: the slab slot is reused by the next new cell.
            self.cell_of_key.remove(&cell.key);
            self.free_cells.push(slot.cell);
        }
    }

    /// Appends `entry` to the cell `ck`, creating the cell if needed; returns its slot.
    fn attach(&mut self, ck: u64, entry: Entry) -> Slot {
        let cell = match self.cell_of_key.get(&ck) {
            Some(&c) => c,
            None => {
                let c = match self.free_cells.pop() {
                    Some(c) => c,
                    None => {
                        self.cells.push(Cell::default());
                        (self.cells.len() - 1) as u32
                    }
                };
                self.cells[c as usize].key = ck;
                self.cell_of_key.insert(ck, c);
                c
            }
        };
        let entries = &mut self.cells[cell as usize].entries;
        entries.push(entry);
        Slot {
            cell,
            idx: (entries.len() - 1) as u32,
        }
    }
}

/// Per-query constants.
struct Query {
    lat: f64,
    lng: f64,
    /// cos(lat), rounded down a little.
    cos_lat: f64,
    /// Proxy threshold for the radius (inclusive, with slack).
    radius_p: f64,
    /// `1 / (4 R^2 lb_coef)`: distance^2 (m^2) to proxy units.
    m2_to_p: f64,
}

impl Query {
    #[inline]
    fn dist_to_p(&self, d_m: f64) -> f64 {
        d_m * d_m * self.m2_to_p
    }
}

/// The best-k candidate buffer (kept in the caller's `out`, `distance_m` holding the proxy).
struct Best<'a> {
    out: &'a mut Vec<Neighbor>,
    k: usize,
    /// Candidates with a proxy above this cannot be in the answer (+inf until k are known).
    cut_p: f64,
    /// Compact when the buffer reaches this length.
    compact_at: usize,
    /// Entries were pushed since the last compaction.
    dirty: bool,
}

impl Best<'_> {
    /// Recomputes `cut_p` from the k-th smallest proxy and drops what cannot make the answer.
    fn compact(&mut self) {
        self.dirty = false;
        if self.out.len() < self.k {
            return;
        }
        let kth = *self
            .out
            .select_nth_unstable_by(self.k - 1, |a, b| a.distance_m.total_cmp(&b.distance_m))
            .1;
        self.cut_p = self.cut_p.min(kth.distance_m * RHO2 * (1.0 + SLACK));
        let cut = self.cut_p;
        self.out.retain(|n| n.distance_m <= cut);
        self.compact_at = (self.out.len() * 2).max(self.k + 32);
    }

    #[inline]
    fn push(&mut self, key: DriverKey, position: LatLng, p: f64) {
        self.out.push(Neighbor {
            key,
            position,
            distance_m: p,
        });
        self.dirty = true;
        if self.out.len() >= self.compact_at {
            self.compact();
        }
    }
}

impl GridIndex {
    /// Scans one occupied cell into `best`. `w` is the proxy's longitude weight, `None` when
    /// the proxy may not be used for this cell.
    #[inline]
    fn scan_cell(
        &self,
        cell: &Cell,
        q: &Query,
        w: Option<f64>,
        center: LatLng,
        filter: &mut dyn FnMut(DriverKey) -> bool,
        best: &mut Best<'_>,
    ) {
        match w {
            Some(w) => {
                for e in &cell.entries {
                    let dlat = e.pos.lat_deg() - q.lat;
                    let mut dlng = e.pos.lng_deg() - q.lng;
                    if dlng > 180.0 {
                        dlng -= 360.0;
                    } else if dlng < -180.0 {
                        dlng += 360.0;
                    }
                    let p = dlat * dlat + w * dlng * dlng;
                    if p <= q.radius_p && p <= best.cut_p && filter(e.key) {
                        best.push(e.key, e.pos, p);
                    }
                }
            }
            None => {
                for e in &cell.entries {
                    let p = q.dist_to_p(center.distance_m(e.pos)) * (1.0 - SLACK);
                    if p <= q.radius_p && p <= best.cut_p && filter(e.key) {
                        best.push(e.key, e.pos, p);
                    }
                }
            }
        }
    }

    /// Visits cell `(band, col)` if occupied; returns the number of drivers it held.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn visit(
        &self,
        band: usize,
        win: &Win,
        col: i64,
        q: &Query,
        center: LatLng,
        filter: &mut dyn FnMut(DriverKey) -> bool,
        best: &mut Best<'_>,
    ) -> usize {
        let b = self.bands[band];
        let Some(&ci) = self.cell_of_key.get(&Self::cell_key(band, col, b.cols)) else {
            return 0;
        };
        let cell = &self.cells[ci as usize];
        let width = 360.0 / f64::from(b.cols);
        let fast = win.fast_lat && ((col - win.qcol).abs() + 1) as f64 * width <= FAST_SPAN_DEG;
        let w = fast.then(|| q.cos_lat * f64::from(b.cos_min));
        self.scan_cell(cell, q, w, center, filter, best);
        cell.entries.len()
    }

    /// Ring search; returns false if it gave up (too many cells) and the caller must scan.
    fn nearest_rings(
        &self,
        center: LatLng,
        q: &Query,
        filter: &mut dyn FnMut(DriverKey) -> bool,
        best: &mut Best<'_>,
        up: &mut Vec<Win>,
        down: &mut Vec<Win>,
    ) -> bool {
        let nb = self.bands.len();
        let b0 = self.band_of(q.lat);
        up.clear();
        down.clear();
        let occupied = self.cells.len() - self.free_cells.len();
        let budget = occupied + 64;
        let mut cells_visited = 0usize;
        let mut seen = 0usize;
        let two_r = 2.0 * EARTH_RADIUS_M;
        let mut ring = 0usize;
        loop {
            let d_m = ring as f64 * self.cell_m;
            // Windows are computed for a slightly larger distance than the one claimed.
            let dw_m = d_m * (1.0 + SLACK) + 1e-6;
            let dw_deg = dw_m / M_PER_DEG;
            let blo = self.band_of((q.lat - dw_deg).max(-90.0));
            let bhi = self.band_of((q.lat + dw_deg).min(90.0));
            // up[b - b0] for bands b >= b0, down[b0 - 1 - b] below; the range only grows.
            up.resize(up.len().max(bhi + 1 - b0), Win::default());
            down.resize(down.len().max(b0 - blo), Win::default());
            let half = dw_m / two_r;
            let half2 = half * half;
            let mut all_full = blo == 0 && bhi == nb - 1;
            for band in blo..=bhi {
                let b = self.bands[band];
                let win = if band >= b0 {
                    &mut up[band - b0]
                } else {
                    &mut down[b0 - 1 - band]
                };
                if !win.entered {
                    let lo_deg = band as f64 * self.band_deg - 90.0 - EPS_DEG;
                    let hi_deg = (band + 1) as f64 * self.band_deg - 90.0 + EPS_DEG;
                    let gap_deg = if band == b0 {
                        0.0
                    } else if band > b0 {
                        (lo_deg - q.lat).max(0.0)
                    } else {
                        (q.lat - hi_deg).max(0.0)
                    };
                    let span_deg = (q.lat - lo_deg).abs().max((hi_deg - q.lat).abs());
                    win.gap_rad = gap_deg.to_radians();
                    win.fast_lat =
                        (self.fast_lo..=self.fast_hi).contains(&band) && span_deg <= FAST_SPAN_DEG;
                    win.qcol = Self::col_of(q.lng, b.cols);
                }
                if win.full {
                    continue;
                }
                // Half-width L of the longitude window: any point of this band with
                // |dlng| > L has haversine h > sin^2(dw/2R), i.e. is farther than dw.
                let s2 = half2 - sin2_lower(win.gap_rad / 2.0);
                let wc = q.cos_lat * f64::from(b.cos_min);
                let (full, lo, hi) = if s2 <= 0.0 {
                    (false, win.qcol, win.qcol)
                } else if wc <= 0.0 || s2 >= wc {
                    (true, 0, 0)
                } else {
                    let x2 = s2 / wc;
                    // 2 asin(x) <= 2 x / sqrt(1 - x^2)
                    let l_deg =
                        (2.0 * (x2 / (1.0 - x2)).sqrt()).to_degrees() * (1.0 + SLACK) + EPS_DEG;
                    if l_deg >= 180.0 {
                        (true, 0, 0)
                    } else {
                        let lo = Self::col_of(q.lng - l_deg, b.cols);
                        let hi = Self::col_of(q.lng + l_deg, b.cols);
                        (hi - lo + 1 >= i64::from(b.cols), lo, hi)
                    }
                };
                let win_copy;
                {
                    let cols = i64::from(b.cols);
                    let (from_a, to_a, from_b, to_b);
                    if full {
                        if win.entered {
                            (from_a, to_a) = (win.hi + 1, win.lo + cols - 1);
                        } else {
                            (from_a, to_a) = (win.qcol, win.qcol + cols - 1);
                        }
                        (from_b, to_b) = (1, 0);
                        win.full = true;
                    } else if win.entered {
                        let (lo, hi) = (lo.min(win.lo), hi.max(win.hi));
                        (from_a, to_a) = (lo, win.lo - 1);
                        (from_b, to_b) = (win.hi + 1, hi);
                        win.lo = lo;
                        win.hi = hi;
                    } else {
                        (from_a, to_a) = (lo, hi);
                        (from_b, to_b) = (1, 0);
                        win.lo = lo;
                        win.hi = hi;
                    }
                    win.entered = true;
                    win_copy = *win;
                    for col in (from_a..=to_a).chain(from_b..=to_b) {
                        cells_visited += 1;
                        seen += self.visit(band, &win_copy, col, q, center, filter, best);
                    }
                }
                all_full &= win_copy.full;
            }
            // Everything unvisited is now farther than d_m.
            if seen == self.len || all_full {
                return true;
            }
            let d_p = q.dist_to_p(d_m);
            if d_p > q.radius_p {
                return true;
            }
            if best.out.len() >= best.k {
                if best.dirty {
                    best.compact();
                }
                if d_p > best.cut_p {
                    return true;
                }
            }
            if cells_visited > budget {
                return false;
            }
            ring += 1;
        }
    }

    /// Scans every occupied cell, skipping cells whose lower-bound distance is too large.
    /// Fills `out` with the exact answer.
    fn nearest_scan(
        &self,
        center: LatLng,
        q: &Query,
        radius_m: f64,
        k: usize,
        filter: &mut dyn FnMut(DriverKey) -> bool,
        out: &mut Vec<Neighbor>,
    ) {
        out.clear();
        let two_r = 2.0 * EARTH_RADIUS_M;
        let limit = |out: &Vec<Neighbor>| {
            let kth = if out.len() == k {
                out[k - 1].distance_m
            } else {
                f64::INFINITY
            };
            kth.min(radius_m)
        };
        for cell in &self.cells {
            if cell.entries.is_empty() {
                continue;
            }
            let band = (cell.key >> 32) as usize;
            let col = (cell.key & 0xffff_ffff) as i64;
            let b = self.bands[band];
            let lo_deg = band as f64 * self.band_deg - 90.0 - EPS_DEG;
            let hi_deg = (band + 1) as f64 * self.band_deg - 90.0 + EPS_DEG;
            let gap_lat = (lo_deg - q.lat).max(q.lat - hi_deg).max(0.0);
            let width = 360.0 / f64::from(b.cols);
            let c_lo = col as f64 * width - 180.0 - EPS_DEG;
            let c_hi = (col + 1) as f64 * width - 180.0 + EPS_DEG;
            // Angle from the cell's west edge east to the query, then the gap on the circle.
            let east = (q.lng - c_lo).rem_euclid(360.0);
            let span = c_hi - c_lo;
            let gap_lng = if east <= span {
                0.0
            } else {
                (east - span).min(360.0 - east).clamp(0.0, 180.0)
            };
            let h_lb = sin2_lower(gap_lat.to_radians() / 2.0)
                + q.cos_lat * f64::from(b.cos_min) * sin2_lower(gap_lng.to_radians() / 2.0);
            // asin(y) >= y
            let d_lb = two_r * h_lb.sqrt() * (1.0 - SLACK);
            if d_lb > limit(out) {
                continue;
            }
            for e in &cell.entries {
                let d = center.distance_m(e.pos);
                if d > radius_m {
                    continue;
                }
                let n = Neighbor {
                    key: e.key,
                    position: e.pos,
                    distance_m: d,
                };
                if out.len() == k && neighbor_order(&n, &out[k - 1]).is_ge() {
                    continue;
                }
                if !filter(e.key) {
                    continue;
                }
                let at = out.partition_point(|o| neighbor_order(o, &n).is_lt());
                out.insert(at, n);
                out.truncate(k);
            }
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
            let cell = &mut self.cells[slot.cell as usize];
            if cell.key == ck {
                cell.entries[slot.idx as usize].pos = position;
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
        Some(self.cells[slot.cell as usize].entries[slot.idx as usize].pos)
    }

    fn len(&self) -> usize {
        self.len
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
        out.clear();
        // `radius_m.is_nan() || radius_m < 0.0` also refuses NaN.
        if k == 0 || self.len == 0 || radius_m.is_nan() || radius_m < 0.0 {
            return;
        }
        let m2_to_p = 1.0 / (4.0 * EARTH_RADIUS_M * EARTH_RADIUS_M * self.lb_coef);
        let q = Query {
            lat: center.lat_deg(),
            lng: center.lng_deg(),
            cos_lat: (center.lat_deg().to_radians().cos() * (1.0 - 1e-12) - 1e-15).max(0.0),
            radius_p: radius_m * radius_m * m2_to_p * (1.0 + SLACK) + 1e-300,
            m2_to_p,
        };
        let mut best = Best {
            out: &mut *out,
            k,
            cut_p: f64::INFINITY,
            compact_at: (2 * k).max(k + 32),
            dirty: false,
        };
        // Window scratch per thread, so a query allocates nothing once warm. A filter that
        // queries another index on the same thread finds it borrowed and gets fresh vectors.
        let finished = SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut s) => {
                let (up, down) = &mut *s;
                self.nearest_rings(center, &q, filter, &mut best, up, down)
            }
            Err(_) => {
                let (mut up, mut down) = (Vec::new(), Vec::new());
                self.nearest_rings(center, &q, filter, &mut best, &mut up, &mut down)
            }
        });
        if !finished {
            self.nearest_scan(center, &q, radius_m, k, filter, out);
            return;
        }
        if best.dirty {
            best.compact();
        }
        for n in out.iter_mut() {
            n.distance_m = center.distance_m(n.position);
        }
        out.retain(|n| n.distance_m <= radius_m);
        out.sort_unstable_by(neighbor_order);
        out.truncate(k);
    }
}
