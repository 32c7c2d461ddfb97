//! The grid's nearest search: exact k-nearest-within-radius by growing rings of cells.
//!
//! Kept apart from the storage (`grid.rs`) because it is where the geometry lives: the bounds
//! that make skipping a cell or a candidate safe near the poles and across the antimeridian.
//! See the `grid` module docs for the method.

use super::{
    EARTH_RADIUS_M, EPS_DEG, Entry, FAST_SPAN_DEG, GridIndex, M_PER_DEG, RHO2, SLACK, table::EMPTY,
};
use crate::domain::{DriverKey, LatLng};
use crate::index::{Neighbor, neighbor_order};
use std::cell::RefCell;

/// A cell a ring search is about to visit.
#[derive(Clone, Copy, Debug)]
struct Todo {
    cell: u64,
    /// The proxy's longitude weight, NaN where the proxy may not be used.
    w: f64,
}

/// Per-thread vectors reused by ring searches.
#[derive(Debug, Default)]
struct Scratch {
    /// Column windows of the bands at and above the query's band, and below it.
    up: Vec<Win>,
    down: Vec<Win>,
    /// Cells of the current ring, then the occupied ones among them `(cell index, w)`.
    todo: Vec<Todo>,
    found: Vec<(usize, f64)>,
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
    /// Reused vectors of ring searches, so a warm query allocates nothing.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A lower bound of `sin(x)^2` for `0 <= x <= pi/2`, without trig (`sin x >= x - x^3/6`).
#[inline]
fn sin2_lower(x: f64) -> f64 {
    let s = (x - x * x * x / 6.0).max(0.0);
    s * s
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
        self.compact_at = (self.out.len() * 2).max(self.k.saturating_add(32));
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
        entries: &[Entry],
        q: &Query,
        w: Option<f64>,
        center: LatLng,
        filter: &mut dyn FnMut(DriverKey) -> bool,
        best: &mut Best<'_>,
    ) {
        match w {
            Some(w) => {
                for e in entries {
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
                for e in entries {
                    let p = q.dist_to_p(center.distance_m(e.pos)) * (1.0 - SLACK);
                    if p <= q.radius_p && p <= best.cut_p && filter(e.key) {
                        best.push(e.key, e.pos, p);
                    }
                }
            }
        }
    }

    /// Scans the cells in `todo` that are occupied and empties `todo`; returns the number of
    /// drivers they held.
    ///
    /// Why in passes: at a million drivers nearly every cell is a cache (and TLB) miss, and
    /// a miss costs ~300 ns on small VMs. Looking all cells of a ring up first, then touching
    /// their arrays, then scanning, lets the CPU overlap those misses instead of paying them
    /// one after another.
    fn visit_batch(
        &self,
        todo: &mut Vec<Todo>,
        found: &mut Vec<(usize, f64)>,
        q: &Query,
        center: LatLng,
        filter: &mut dyn FnMut(DriverKey) -> bool,
        best: &mut Best<'_>,
    ) -> usize {
        found.clear();
        for t in todo.drain(..) {
            if let Some(i) = self.cells.find(t.cell) {
                found.push((i, t.w));
            }
        }
        let mut touched = 0u32;
        for &(ci, _) in found.iter() {
            // One read per 48 bytes touches every cache line of the array.
            for e in self.cells.bucket(ci).entries.iter().step_by(2) {
                touched ^= e.key.0;
            }
        }
        std::hint::black_box(touched);
        let mut seen = 0;
        for &(ci, w) in found.iter() {
            let entries = &self.cells.bucket(ci).entries;
            let w = (!w.is_nan()).then_some(w);
            self.scan_cell(entries, q, w, center, filter, best);
            seen += entries.len();
        }
        seen
    }

    /// Ring search; returns false if it gave up (too many cells) and the caller must scan.
    fn nearest_rings(
        &self,
        center: LatLng,
        q: &Query,
        filter: &mut dyn FnMut(DriverKey) -> bool,
        best: &mut Best<'_>,
        scratch: &mut Scratch,
    ) -> bool {
        let Scratch {
            up,
            down,
            todo,
            found,
        } = scratch;
        let nb = self.bands.len();
        let b0 = self.band_of(q.lat);
        up.clear();
        down.clear();
        todo.clear();
        let occupied = self.cells.len();
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
                    let width = 360.0 / f64::from(b.cols);
                    let w = q.cos_lat * f64::from(b.cos_min);
                    for col in (from_a..=to_a).chain(from_b..=to_b) {
                        let fast = win_copy.fast_lat
                            && ((col - win_copy.qcol).abs() + 1) as f64 * width <= FAST_SPAN_DEG;
                        todo.push(Todo {
                            cell: Self::cell_key(band, col, b.cols),
                            w: if fast { w } else { f64::NAN },
                        });
                    }
                }
                all_full &= win_copy.full;
            }
            if ring == 0 && !all_full {
                // Ring 0 alone can never end the search; batch it with ring 1.
                ring += 1;
                continue;
            }
            cells_visited += todo.len();
            seen += self.visit_batch(todo, found, q, center, filter, best);
            // Everything unvisited is now farther than d_m.
            if seen == self.len || all_full {
                return true;
            }
            let d_p = q.dist_to_p(d_m);
            if d_p > q.radius_p {
                return true;
            }
            if best.out.len() >= best.k {
                // A stale cut is still an upper bound; refresh it only if it does not suffice.
                if d_p > best.cut_p {
                    return true;
                }
                if best.dirty {
                    best.compact();
                    if d_p > best.cut_p {
                        return true;
                    }
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
        for cell in self.cells.buckets() {
            if cell.key == EMPTY {
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

impl GridIndex {
    /// The body of [`SpatialIndex::nearest`](crate::index::SpatialIndex::nearest) for the grid.
    pub(super) fn search(
        &self,
        center: LatLng,
        radius_m: f64,
        k: usize,
        filter: &mut dyn FnMut(DriverKey) -> bool,
        out: &mut Vec<Neighbor>,
    ) {
        out.clear();
        // A negative or NaN radius admits nothing.
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
            compact_at: k.saturating_mul(2).max(k.saturating_add(32)),
            dirty: false,
        };
        // Window scratch per thread, so a query allocates nothing once warm. A filter that
        // queries another index on the same thread finds it borrowed and gets fresh vectors.
        let finished = SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut s) => self.nearest_rings(center, &q, filter, &mut best, &mut s),
            Err(_) => self.nearest_rings(center, &q, filter, &mut best, &mut Scratch::default()),
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
