//! Snapping: a point to the nearest position on a road segment, through a uniform grid of
//! every shape segment.
//!
//! Segments are indexed in a local plane (equirectangular around the map's centre, metres):
//! over a city-sized extract its distance error is far below GPS noise, and planar segment
//! distance is cheap and exact. Why a grid rather than an R-tree: snaps ask for a point near a
//! road, within a snap distance of about a hundred metres, so the answer lies in the few cells
//! around the point; a grid finds them by arithmetic, where a tree search walks nodes and a
//! priority queue (an `rstar` nearest search took ~3.5 us here, the grid well under one).
//!
//! The search visits rings of cells outward from the point's cell and stops once the best
//! segment found is nearer than anything in the next ring can be, so the answer is exactly
//! the nearest segment of the whole map; equal distances go to the lower segment index, so
//! the answer does not depend on the order cells are visited in.

use super::{EdgeId, RoadEdge};
use crate::domain::{EARTH_RADIUS_M, LatLng};

/// Degrees to metres in the local plane around a centre.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plane {
    lat0: f64,
    lng0: f64,
    m_per_deg_lat: f64,
    m_per_deg_lng: f64,
}

impl Plane {
    pub(super) fn around(points: &[LatLng]) -> Plane {
        let n = points.len().max(1) as f64;
        let lat0 = points.iter().map(|p| p.lat_deg()).sum::<f64>() / n;
        let lng0 = points.iter().map(|p| p.lng_deg()).sum::<f64>() / n;
        let m_per_deg_lat = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;
        Plane {
            lat0,
            lng0,
            m_per_deg_lat,
            m_per_deg_lng: m_per_deg_lat * lat0.to_radians().cos(),
        }
    }

    pub(super) fn xy(&self, p: LatLng) -> [f64; 2] {
        [
            (p.lng_deg() - self.lng0) * self.m_per_deg_lng,
            (p.lat_deg() - self.lat0) * self.m_per_deg_lat,
        ]
    }
}

/// A segment in the plane: `[ax, ay, bx, by]`, metres.
type Line = [f64; 4];

/// Where a segment lies on its edge.
#[derive(Clone, Copy, Debug, PartialEq)]
struct SegmentData {
    edge: EdgeId,
    /// Index of its first shape point within the edge.
    k: u32,
    /// Metres along the edge where it starts (great-circle, as the edge's length).
    before_m: f64,
    /// Its own great-circle length, metres.
    length_m: f64,
}

/// The fraction along `s` of the point nearest to `q`, and the squared distance to it (m²).
#[inline]
fn project(q: [f64; 2], s: &Line) -> (f64, f64) {
    let (dx, dy) = (s[2] - s[0], s[3] - s[1]);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((q[0] - s[0]) * dx + (q[1] - s[1]) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (fx, fy) = (s[0] + dx * t - q[0], s[1] + dy * t - q[1]);
    (t, fx * fx + fy * fy)
}

/// Square cells over the segments' bounding box; each cell lists every segment whose bounding
/// box overlaps it, as compressed rows.
#[derive(Debug)]
struct Grid {
    /// South-west corner of cell (0, 0) in the plane, metres.
    x0: f64,
    y0: f64,
    cell_m: f64,
    /// Columns and rows.
    w: i64,
    h: i64,
    /// Segments of cell `(x, y)`: `items[first[y * w + x]..first[y * w + x + 1]]`.
    first: Vec<u32>,
    items: Vec<u32>,
}

impl Grid {
    fn build(lines: &[Line], cell_m: f64) -> Grid {
        let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
        for s in lines {
            lo = [lo[0].min(s[0]).min(s[2]), lo[1].min(s[1]).min(s[3])];
            hi = [hi[0].max(s[0]).max(s[2]), hi[1].max(s[1]).max(s[3])];
        }
        if lines.is_empty() {
            (lo, hi) = ([0.0; 2], [0.0; 2]);
        }
        let w = (((hi[0] - lo[0]) / cell_m).floor() as i64 + 1).max(1);
        let h = (((hi[1] - lo[1]) / cell_m).floor() as i64 + 1).max(1);
        let mut grid = Grid {
            x0: lo[0],
            y0: lo[1],
            cell_m,
            w,
            h,
            first: vec![0; (w * h + 1) as usize],
            items: Vec::new(),
        };
        // Two passes: count each cell's segments, then place them.
        let mut counts = vec![0u32; (w * h) as usize];
        for s in lines {
            let (x_lo, x_hi, y_lo, y_hi) = grid.cell_box(s);
            for y in y_lo..=y_hi {
                for x in x_lo..=x_hi {
                    counts[(y * w + x) as usize] += 1;
                }
            }
        }
        let mut at = 0u32;
        for (c, &n) in counts.iter().enumerate() {
            grid.first[c] = at;
            at += n;
        }
        grid.first[(w * h) as usize] = at;
        grid.items = vec![0; at as usize];
        let mut next: Vec<u32> = grid.first[..(w * h) as usize].to_vec();
        for (i, s) in lines.iter().enumerate() {
            let (x_lo, x_hi, y_lo, y_hi) = grid.cell_box(s);
            for y in y_lo..=y_hi {
                for x in x_lo..=x_hi {
                    let c = (y * w + x) as usize;
                    grid.items[next[c] as usize] = i as u32;
                    next[c] += 1;
                }
            }
        }
        grid
    }

    /// The cell column and row holding plane point `(x, y)`, unclamped (outside the grid
    /// for a point off the map).
    fn cell_of(&self, x: f64, y: f64) -> (i64, i64) {
        (
            ((x - self.x0) / self.cell_m).floor() as i64,
            ((y - self.y0) / self.cell_m).floor() as i64,
        )
    }

    /// The cells a segment's bounding box overlaps, clamped to the grid: `(x_lo, x_hi, y_lo,
    /// y_hi)`, inclusive.
    fn cell_box(&self, s: &Line) -> (i64, i64, i64, i64) {
        let (xa, ya) = self.cell_of(s[0].min(s[2]), s[1].min(s[3]));
        let (xb, yb) = self.cell_of(s[0].max(s[2]), s[1].max(s[3]));
        (
            xa.clamp(0, self.w - 1),
            xb.clamp(0, self.w - 1),
            ya.clamp(0, self.h - 1),
            yb.clamp(0, self.h - 1),
        )
    }

    #[inline]
    fn cell(&self, x: i64, y: i64) -> &[u32] {
        let c = (y * self.w + x) as usize;
        &self.items[self.first[c] as usize..self.first[c + 1] as usize]
    }
}

/// Cell side aimed at: this many cells per segment over the map's bounding box (sea, parks
/// and countryside leave most cells empty, so a dense street has a few segments per cell).
/// Measured on Monaco (`cargo bench --bench eta -- road_snap`, 21 snaps): 1 → 6.5 us (69 m
/// cells), 2 → 7.7 us, 4 → 4.9 us, 8 → 3.8 us (24 m), 16 → 3.3 us; the R-tree 42-84 us.
/// Eight keeps the cell table at 32 bytes per segment.
const CELLS_PER_SEGMENT: f64 = 8.0;
/// Smallest cell side, metres: a snap radius should not span hundreds of cells. There is no
/// largest: on a sparse extract with a wide box (far islands) larger cells cost some speed,
/// where a cap would let the cell table grow with the box's area rather than the roads.
const MIN_CELL_M: f64 = 10.0;
/// Allowance for rounding in cell arithmetic when deciding that no unseen segment can be
/// nearer, metres (far below anything a snap distinguishes).
const SLACK_M: f64 = 1e-3;

/// The nearest-segment index.
#[derive(Debug)]
pub(super) struct SnapIndex {
    plane: Plane,
    lines: Vec<Line>,
    data: Vec<SegmentData>,
    grid: Grid,
}

/// Where a point lands on an edge.
#[derive(Clone, Copy, Debug)]
pub(super) struct Landing {
    pub(super) edge: EdgeId,
    pub(super) offset_m: f64,
    pub(super) point: LatLng,
}

/// The best segment seen so far: squared distance (m²), segment index, fraction along it.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Best {
    d2: f64,
    seg: u32,
    t: f64,
}

impl Best {
    const NONE: Best = Best {
        d2: f64::INFINITY,
        seg: u32::MAX,
        t: 0.0,
    };

    /// Keeps segment `seg` if nearer, or as near with a lower index (so ties do not depend
    /// on the order segments are looked at).
    #[inline]
    fn offer(&mut self, q: [f64; 2], seg: u32, line: &Line) {
        let (t, d2) = project(q, line);
        if d2 < self.d2 || (d2 == self.d2 && seg < self.seg) {
            *self = Best { d2, seg, t };
        }
    }
}

impl SnapIndex {
    /// Indexes every edge's shape; of two twin edges (one two-way street) only the first is
    /// indexed, since they share their shape.
    pub(super) fn build(nodes: &[LatLng], edges: &[RoadEdge], shapes: &[LatLng]) -> SnapIndex {
        let plane = Plane::around(nodes);
        let mut lines = Vec::new();
        let mut data = Vec::new();
        for (i, e) in edges.iter().enumerate() {
            if e.twin.is_some_and(|t| (t.0 as usize) < i) {
                continue;
            }
            let pts = &shapes[e.shape.start as usize..e.shape.end as usize];
            let mut before_m = 0.0;
            for (k, w) in pts.windows(2).enumerate() {
                let ([ax, ay], [bx, by]) = (plane.xy(w[0]), plane.xy(w[1]));
                lines.push([ax, ay, bx, by]);
                let length_m = w[0].distance_m(w[1]);
                data.push(SegmentData {
                    edge: EdgeId(i as u32),
                    k: k as u32,
                    before_m,
                    length_m,
                });
                before_m += length_m;
            }
        }
        let grid = Grid::build(&lines, cell_side_m(&lines));
        SnapIndex {
            plane,
            lines,
            data,
            grid,
        }
    }

    /// The nearest segment to plane point `q` if one lies within `max_m` of it (unchecked:
    /// the caller compares the distance), else possibly [`Best::NONE`] or a farther one.
    ///
    /// # Runtime
    /// O(cells and segments within the answer's distance, or `max_m`, of `q`): a few dozen
    /// segments for a point near a street.
    fn nearest(&self, q: [f64; 2], max_m: f64) -> Best {
        let g = &self.grid;
        let fx = (q[0] - g.x0) / g.cell_m;
        let fy = (q[1] - g.y0) / g.cell_m;
        let (cx, cy) = (fx.floor() as i64, fy.floor() as i64);
        // Distance from q to the sides of its own cell: ring r + 1 is at least r cells
        // farther than that.
        let margin_m = (fx - cx as f64)
            .min(cx as f64 + 1.0 - fx)
            .min(fy - cy as f64)
            .min(cy as f64 + 1.0 - fy)
            * g.cell_m;
        let mut best = Best::NONE;
        let scan = |x: i64, y: i64, best: &mut Best| {
            for &i in g.cell(x, y) {
                best.offer(q, i, &self.lines[i as usize]);
            }
        };
        // Rings nearer than the grid hold no cell: start at the first that does.
        let mut r = 0i64
            .max(-cx)
            .max(cx - (g.w - 1))
            .max(-cy)
            .max(cy - (g.h - 1));
        loop {
            let (x_lo, x_hi) = ((cx - r).max(0), (cx + r).min(g.w - 1));
            if cy - r >= 0 {
                (x_lo..=x_hi).for_each(|x| scan(x, cy - r, &mut best));
            }
            if r > 0 && cy + r < g.h {
                (x_lo..=x_hi).for_each(|x| scan(x, cy + r, &mut best));
            }
            if r > 0 {
                let (y_lo, y_hi) = ((cy - r + 1).max(0), (cy + r - 1).min(g.h - 1));
                if cx - r >= 0 {
                    (y_lo..=y_hi).for_each(|y| scan(cx - r, y, &mut best));
                }
                if cx + r < g.w {
                    (y_lo..=y_hi).for_each(|y| scan(cx + r, y, &mut best));
                }
            }
            // Every segment not yet seen lies in cells of later rings only (a segment is
            // listed in every cell its box overlaps, so in the cell of its point nearest q).
            let unseen_m = r as f64 * g.cell_m + margin_m - SLACK_M;
            let covered = cx - r <= 0 && cx + r >= g.w - 1 && cy - r <= 0 && cy + r >= g.h - 1;
            if covered || unseen_m > max_m || (unseen_m > 0.0 && best.d2 < unseen_m * unseen_m) {
                return best;
            }
            r += 1;
        }
    }

    /// The nearest road position to `p` within `max_m`, if any.
    ///
    /// # Runtime
    /// See [`SnapIndex::nearest`]: about a microsecond on a city, no walk along the edge's
    /// shape.
    pub(super) fn snap(
        &self,
        p: LatLng,
        max_m: f64,
        edges: &[RoadEdge],
        shapes: &[LatLng],
    ) -> Option<(Landing, f64)> {
        let best = self.nearest(self.plane.xy(p), max_m);
        let seg = *self.data.get(best.seg as usize)?;
        // The plane is exact to far below GPS noise over a city: measure the snap there.
        let distance_m = best.d2.sqrt();
        if distance_m > max_m {
            return None;
        }
        let e = &edges[seg.edge.0 as usize];
        let pts = &shapes[e.shape.start as usize..e.shape.end as usize];
        let point = lerp(pts[seg.k as usize], pts[seg.k as usize + 1], best.t);
        let offset_m = (seg.before_m + seg.length_m * best.t).min(e.length_m);
        Some((
            Landing {
                edge: seg.edge,
                offset_m,
                point,
            },
            distance_m,
        ))
    }

    /// Bytes held by the index.
    pub(super) fn heap_bytes(&self) -> usize {
        self.lines.len() * std::mem::size_of::<Line>()
            + self.data.len() * std::mem::size_of::<SegmentData>()
            + (self.grid.first.len() + self.grid.items.len()) * 4
    }
}

/// The cell side for these segments: [`CELLS_PER_SEGMENT`] over their bounding box, at least
/// [`MIN_CELL_M`], so the grid has about that many cells per segment at most.
fn cell_side_m(lines: &[Line]) -> f64 {
    let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for s in lines {
        lo = [lo[0].min(s[0]).min(s[2]), lo[1].min(s[1]).min(s[3])];
        hi = [hi[0].max(s[0]).max(s[2]), hi[1].max(s[1]).max(s[3])];
    }
    let area_m2 = (hi[0] - lo[0]).max(0.0) * (hi[1] - lo[1]).max(0.0);
    let side = (area_m2 / (lines.len().max(1) as f64 * CELLS_PER_SEGMENT)).sqrt();
    if side.is_finite() {
        side.max(MIN_CELL_M)
    } else {
        MIN_CELL_M
    }
}

/// The point a fraction `t` of the way from `a` to `b` (linear in degrees: segments are short).
pub(super) fn lerp(a: LatLng, b: LatLng, t: f64) -> LatLng {
    let lat = a.lat_deg() + (b.lat_deg() - a.lat_deg()) * t;
    let lng = a.lng_deg() + (b.lng_deg() - a.lng_deg()) * t;
    // Between two valid points, a convex combination is valid.
    LatLng::new(lat, lng).unwrap_or(a)
}

#[cfg(test)]
mod tests {
    //! The grid against a scan of every segment of the shipped Monaco map: the same segment,
    //! the same distance, bit for bit.

    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::*;
    use crate::eta::road::RoadGraph;

    fn monaco() -> &'static RoadGraph {
        static G: OnceLock<RoadGraph> = OnceLock::new();
        G.get_or_init(|| {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/maps/monaco.osm.pbf");
            RoadGraph::load(path).expect("the shipped Monaco map loads")
        })
    }

    /// The answer by looking at every segment.
    fn brute_force(ix: &SnapIndex, q: [f64; 2]) -> Best {
        let mut best = Best::NONE;
        for (i, line) in ix.lines.iter().enumerate() {
            best.offer(q, i as u32, line);
        }
        best
    }

    fn check(q: [f64; 2], max_m: f64) -> Result<(), TestCaseError> {
        let ix = &monaco().snap;
        let grid = ix.nearest(q, max_m);
        let all = brute_force(ix, q);
        if all.d2.sqrt() <= max_m {
            prop_assert_eq!(grid, all, "at {:?} within {} m", q, max_m);
        } else {
            // Nothing within reach: whatever the grid saw is beyond it too.
            prop_assert!(grid.d2.sqrt() > max_m, "{:?} vs {:?}", grid, all);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Points near roads, with the engine's snap distance and without a limit.
        #[test]
        fn near_a_road_the_grid_finds_the_nearest_segment(
            seg in 0usize..usize::MAX, t in 0.0..1.0f64, dx in -200.0..200.0f64,
            dy in -200.0..200.0f64,
        ) {
            let ix = &monaco().snap;
            let s = ix.lines[seg % ix.lines.len()];
            let q = [s[0] + (s[2] - s[0]) * t + dx, s[1] + (s[3] - s[1]) * t + dy];
            check(q, 150.0)?;
            check(q, f64::INFINITY)?;
        }

        /// Anywhere over the map and a kilometre around it (sea, off the extract).
        #[test]
        fn anywhere_the_grid_finds_the_nearest_segment(
            u in -0.3..1.3f64, v in -0.3..1.3f64, max_m in 1.0..2_000.0f64,
        ) {
            let g = &monaco().snap.grid;
            let (span_x, span_y) = (g.w as f64 * g.cell_m, g.h as f64 * g.cell_m);
            let q = [g.x0 + u * span_x, g.y0 + v * span_y];
            check(q, max_m)?;
            check(q, f64::INFINITY)?;
        }
    }

    #[test]
    fn points_on_cell_corners_and_segment_ends_find_the_nearest_segment() {
        let ix = &monaco().snap;
        let g = &ix.grid;
        for k in (0..ix.lines.len()).step_by(97) {
            let s = ix.lines[k];
            check([s[0], s[1]], 150.0).unwrap();
            let (cx, cy) = g.cell_of(s[2], s[3]);
            let corner = [g.x0 + cx as f64 * g.cell_m, g.y0 + cy as f64 * g.cell_m];
            check(corner, 150.0).unwrap();
            check(corner, f64::INFINITY).unwrap();
        }
    }
}
