//! Snapping: a point to the nearest position on a road segment, through an R-tree of every
//! shape segment.
//!
//! Segments are indexed in a local plane (equirectangular around the map's centre, metres):
//! over a city-sized extract its distance error is far below GPS noise, and planar segment
//! distance is what an R-tree answers exactly and fast.

use rstar::RTree;
use rstar::primitives::{GeomWithData, Line};

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

/// One shape segment, in the plane, with what a landing on it needs (worked out once at
/// build, so a snap is one tree search and a few multiplications).
type Segment = GeomWithData<Line<[f64; 2]>, SegmentData>;

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

/// The nearest-segment index.
#[derive(Debug)]
pub(super) struct SnapIndex {
    plane: Plane,
    tree: RTree<Segment>,
}

/// Where a point lands on an edge.
#[derive(Clone, Copy, Debug)]
pub(super) struct Landing {
    pub(super) edge: EdgeId,
    pub(super) offset_m: f64,
    pub(super) point: LatLng,
}

impl SnapIndex {
    /// Indexes every edge's shape; of two twin edges (one two-way street) only the first is
    /// indexed, since they share their shape.
    pub(super) fn build(nodes: &[LatLng], edges: &[RoadEdge], shapes: &[LatLng]) -> SnapIndex {
        let plane = Plane::around(nodes);
        let mut segments = Vec::new();
        for (i, e) in edges.iter().enumerate() {
            if e.twin.is_some_and(|t| (t.0 as usize) < i) {
                continue;
            }
            let pts = &shapes[e.shape.start as usize..e.shape.end as usize];
            let mut before_m = 0.0;
            for (k, w) in pts.windows(2).enumerate() {
                let line = Line::new(plane.xy(w[0]), plane.xy(w[1]));
                let length_m = w[0].distance_m(w[1]);
                let data = SegmentData {
                    edge: EdgeId(i as u32),
                    k: k as u32,
                    before_m,
                    length_m,
                };
                segments.push(Segment::new(line, data));
                before_m += length_m;
            }
        }
        SnapIndex {
            plane,
            tree: RTree::bulk_load(segments),
        }
    }

    /// The nearest road position to `p` within `max_m`, if any.
    ///
    /// # Runtime
    /// O(log s) for s segments: one tree search, no walk along the edge's shape.
    pub(super) fn snap(
        &self,
        p: LatLng,
        max_m: f64,
        edges: &[RoadEdge],
        shapes: &[LatLng],
    ) -> Option<(Landing, f64)> {
        let q = self.plane.xy(p);
        let seg = self.tree.nearest_neighbor(q)?;
        let d = seg.data;
        let [a, b] = [seg.geom().from, seg.geom().to];
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        let len2 = dx * dx + dy * dy;
        let t = if len2 > 0.0 {
            (((q[0] - a[0]) * dx + (q[1] - a[1]) * dy) / len2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        // The plane is exact to far below GPS noise over a city: measure the snap there.
        let (fx, fy) = (a[0] + dx * t - q[0], a[1] + dy * t - q[1]);
        let distance_m = (fx * fx + fy * fy).sqrt();
        if distance_m > max_m {
            return None;
        }
        let e = &edges[d.edge.0 as usize];
        let pts = &shapes[e.shape.start as usize..e.shape.end as usize];
        let point = lerp(pts[d.k as usize], pts[d.k as usize + 1], t);
        let offset_m = (d.before_m + d.length_m * t).min(e.length_m);
        Some((
            Landing {
                edge: d.edge,
                offset_m,
                point,
            },
            distance_m,
        ))
    }

    /// Bytes held by the index (approximate: its leaves).
    pub(super) fn heap_bytes(&self) -> usize {
        // Leaves dominate; inner nodes add roughly a tenth.
        self.tree.size() * std::mem::size_of::<Segment>() * 11 / 10
    }
}

/// The point a fraction `t` of the way from `a` to `b` (linear in degrees: segments are short).
pub(super) fn lerp(a: LatLng, b: LatLng, t: f64) -> LatLng {
    let lat = a.lat_deg() + (b.lat_deg() - a.lat_deg()) * t;
    let lng = a.lng_deg() + (b.lng_deg() - a.lng_deg()) * t;
    // Between two valid points, a convex combination is valid.
    LatLng::new(lat, lng).unwrap_or(a)
}
