//! The simulated city: a square box of streets around a centre point, with demand hotspots.
//!
//! Everything inside the simulation works in local metres (`x` east, `y` north, origin at the
//! box's south-west corner) because moving along a street grid is simple arithmetic there; only
//! the wire sees degrees. The box is small (tens of km), so an equirectangular projection around
//! the centre is accurate to well under a metre, which is all a load generator needs.

use crate::streets::{RoadPos, Streets};
use dispatch::LatLng;
use dispatch::eta::road::RoadGraph;
use rand::Rng;
use rand::distr::{Distribution, Uniform};
use std::sync::Arc;

/// Metres per degree of latitude (mean; the load generator does not need an ellipsoid).
const M_PER_DEG_LAT: f64 = 111_320.0;
/// On a map, a sampled point lands on the nearest road within this distance, metres (a demand
/// blob may reach into the sea or a park); farther points are drawn again on the roads.
const ROAD_SNAP_M: f64 = 3000.0;

/// A point in local metres.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Xy {
    /// Metres east of the box's west edge.
    pub x_m: f64,
    /// Metres north of the box's south edge.
    pub y_m: f64,
}

impl Xy {
    /// Street (Manhattan) distance in metres: what a driver on the grid covers.
    pub fn grid_distance_m(self, other: Xy) -> f64 {
        (self.x_m - other.x_m).abs() + (self.y_m - other.y_m).abs()
    }
}

/// A demand hotspot: a Gaussian blob of trip requests.
#[derive(Debug, Clone, Copy)]
pub struct Hotspot {
    /// Centre of the blob.
    pub centre: Xy,
    /// Standard deviation of the blob, metres.
    pub sigma_m: f64,
    /// Relative weight among hotspots.
    pub weight: f64,
}

/// The city: its box, its street grid (or a map's roads) and its hotspots.
#[derive(Debug, Clone)]
pub struct City {
    /// The map's roads with `--map`; `None` for the street grid.
    pub streets: Option<Arc<Streets>>,
    centre_lat_deg: f64,
    centre_lng_deg: f64,
    m_per_deg_lng: f64,
    /// Side of the square box, metres.
    pub size_m: f64,
    /// Street spacing, metres (blocks are `block_m` x `block_m`).
    pub block_m: f64,
    /// Demand hotspots.
    pub hotspots: Vec<Hotspot>,
    /// Cumulative hotspot weights, normalised to end at 1, for sampling.
    cumulative: Vec<f64>,
    /// Share of demand that falls uniformly over the whole box instead of in a hotspot.
    pub background_share: f64,
}

impl City {
    /// A city of `size_km` x `size_km` around the centre, with `hotspots` hotspots placed by
    /// `rng` in the inner part of the box (so their blobs stay mostly inside it).
    pub fn new(
        centre_lat_deg: f64,
        centre_lng_deg: f64,
        size_km: f64,
        block_m: f64,
        hotspots: usize,
        rng: &mut impl Rng,
    ) -> City {
        let size_m = size_km * 1000.0;
        let inner = Uniform::new_inclusive(0.2 * size_m, 0.8 * size_m)
            .expect("0.2 * size <= 0.8 * size for a positive size"); // size_km is validated positive
        let spots: Vec<Hotspot> = (0..hotspots)
            .map(|_| Hotspot {
                centre: Xy {
                    x_m: inner.sample(rng),
                    y_m: inner.sample(rng),
                },
                sigma_m: rng.random_range(0.03..0.08) * size_m,
                weight: rng.random_range(0.5..2.0),
            })
            .collect();
        let total: f64 = spots.iter().map(|h| h.weight).sum();
        let mut acc = 0.0;
        let cumulative = spots
            .iter()
            .map(|h| {
                acc += h.weight / total;
                acc
            })
            .collect();
        City {
            streets: None,
            centre_lat_deg,
            centre_lng_deg,
            m_per_deg_lng: M_PER_DEG_LAT * centre_lat_deg.to_radians().cos(),
            size_m,
            block_m,
            hotspots: spots,
            cumulative,
            background_share: 0.2,
        }
    }

    /// The city of a road map: its box is the square around the graph's nodes, drivers and
    /// demand stay on its roads, and the `hotspots` hotspots sit on roads drawn by `rng`
    /// (uniformly per metre of road, so mostly where the streets are dense).
    pub fn on_streets(graph: Arc<RoadGraph>, hotspots: usize, rng: &mut impl Rng) -> City {
        let (sw, ne) = graph.bounds();
        let centre_lat_deg = (sw.lat_deg() + ne.lat_deg()) / 2.0;
        let centre_lng_deg = (sw.lng_deg() + ne.lng_deg()) / 2.0;
        let m_per_deg_lng = M_PER_DEG_LAT * centre_lat_deg.to_radians().cos();
        let size_m = ((ne.lat_deg() - sw.lat_deg()) * M_PER_DEG_LAT)
            .max((ne.lng_deg() - sw.lng_deg()) * m_per_deg_lng)
            .max(1.0);
        let mut city = City::new(centre_lat_deg, centre_lng_deg, size_m / 1000.0, 1.0, 0, rng);
        let streets = Streets::new(graph, |p| city.to_xy(p.lat_deg(), p.lng_deg()));
        city.streets = Some(Arc::new(streets));
        city.hotspots = (0..hotspots)
            .map(|_| Hotspot {
                centre: city.sample_uniform(rng),
                sigma_m: rng.random_range(0.03..0.08) * size_m,
                weight: rng.random_range(0.5..2.0),
            })
            .collect();
        let total: f64 = city.hotspots.iter().map(|h| h.weight).sum();
        let mut acc = 0.0;
        city.cumulative = city
            .hotspots
            .iter()
            .map(|h| {
                acc += h.weight / total;
                acc
            })
            .collect();
        city
    }

    /// The road position nearest to `p` (with a map), drawn anew on the roads when nothing
    /// is within a few km.
    pub fn road_pos(&self, p: Xy, streets: &Streets, rng: &mut impl Rng) -> RoadPos {
        let (lat, lng) = self.to_lat_lng(p);
        LatLng::new(lat, lng)
            .ok()
            .and_then(|ll| streets.snap(ll, ROAD_SNAP_M))
            .unwrap_or_else(|| streets.uniform(rng.random(), rng.random()))
    }

    /// The road position at a point already on a road (e.g. one this city sampled, after a
    /// round trip through degrees); the nearest road for any other point.
    pub fn road_pos_of(&self, p: Xy, streets: &Streets) -> RoadPos {
        let (lat, lng) = self.to_lat_lng(p);
        LatLng::new(lat, lng)
            .ok()
            .and_then(|ll| {
                streets
                    .snap(ll, ROAD_SNAP_M)
                    .or_else(|| streets.snap(ll, 100.0 * self.size_m))
            })
            .unwrap_or(RoadPos {
                edge: 0,
                offset_m: 0.0,
            })
    }

    /// Latitude and longitude (degrees) of a local point.
    pub fn to_lat_lng(&self, p: Xy) -> (f64, f64) {
        let half = self.size_m / 2.0;
        (
            self.centre_lat_deg + (p.y_m - half) / M_PER_DEG_LAT,
            self.centre_lng_deg + (p.x_m - half) / self.m_per_deg_lng,
        )
    }

    /// The local point of a latitude and longitude (degrees); the inverse of [`City::to_lat_lng`].
    pub fn to_xy(&self, lat_deg: f64, lng_deg: f64) -> Xy {
        let half = self.size_m / 2.0;
        Xy {
            x_m: (lng_deg - self.centre_lng_deg) * self.m_per_deg_lng + half,
            y_m: (lat_deg - self.centre_lat_deg) * M_PER_DEG_LAT + half,
        }
    }

    /// Clamps a point into the box.
    pub fn clamp(&self, p: Xy) -> Xy {
        Xy {
            x_m: p.x_m.clamp(0.0, self.size_m),
            y_m: p.y_m.clamp(0.0, self.size_m),
        }
    }

    /// The street intersection nearest to `p` (inside the box); with a map, the nearest point
    /// on a road.
    pub fn snap(&self, p: Xy) -> Xy {
        if let Some(st) = &self.streets {
            return st.point(self.road_pos_of(p, st));
        }
        let p = self.clamp(p);
        let max = (self.size_m / self.block_m).floor() * self.block_m;
        Xy {
            x_m: ((p.x_m / self.block_m).round() * self.block_m).min(max),
            y_m: ((p.y_m / self.block_m).round() * self.block_m).min(max),
        }
    }

    /// A point drawn uniformly over the box; with a map, uniformly per metre of road.
    pub fn sample_uniform(&self, rng: &mut impl Rng) -> Xy {
        if let Some(st) = &self.streets {
            return st.point(st.uniform(rng.random(), rng.random()));
        }
        Xy {
            x_m: rng.random_range(0.0..self.size_m),
            y_m: rng.random_range(0.0..self.size_m),
        }
    }

    /// A point drawn from the demand distribution: a hotspot (by weight) with a Gaussian blob,
    /// or, with probability `background_share`, anywhere in the box. Snapped to an intersection.
    pub fn sample_demand(&self, rng: &mut impl Rng) -> Xy {
        if self.hotspots.is_empty() || rng.random_bool(self.background_share) {
            let p = self.sample_uniform(rng);
            return if self.streets.is_some() {
                p
            } else {
                self.snap(p)
            };
        }
        let u: f64 = rng.random();
        let i = self
            .cumulative
            .iter()
            .position(|&c| u <= c)
            .unwrap_or(self.hotspots.len() - 1);
        let h = self.hotspots[i];
        let (gx, gy) = gaussian_pair(rng);
        self.land(
            Xy {
                x_m: h.centre.x_m + gx * h.sigma_m,
                y_m: h.centre.y_m + gy * h.sigma_m,
            },
            rng,
        )
    }

    /// A sampled point made a street point: an intersection, or on a map the nearest road
    /// (or a fresh road point where no road is near).
    fn land(&self, p: Xy, rng: &mut impl Rng) -> Xy {
        match &self.streets {
            Some(st) => st.point(self.road_pos(p, st, rng)),
            None => self.snap(p),
        }
    }

    /// A trip's drop-off for a pickup: half the time another demand point (people go to
    /// hotspots), otherwise 1 to 8 km away in a random direction, kept inside the box.
    pub fn sample_dropoff(&self, pickup: Xy, rng: &mut impl Rng) -> Xy {
        if rng.random_bool(0.5) {
            return self.sample_demand(rng);
        }
        let d = rng.random_range(1000.0..8000.0);
        let a = rng.random_range(0.0..std::f64::consts::TAU);
        self.land(
            Xy {
                x_m: pickup.x_m + d * a.cos(),
                y_m: pickup.y_m + d * a.sin(),
            },
            rng,
        )
    }

    /// Whether `v` (metres) lies on a street line of the grid.
    pub fn on_line(&self, v: f64) -> bool {
        let r = v / self.block_m;
        (r - r.round()).abs() < 1e-6
    }
}

/// Two independent standard normal samples (Box-Muller); avoids a `rand_distr` dependency.
pub fn gaussian_pair(rng: &mut impl Rng) -> (f64, f64) {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    let r = (-2.0 * u1.ln()).sqrt();
    let t = std::f64::consts::TAU * u2;
    (r * t.cos(), r * t.sin())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn city() -> City {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        City::new(40.7, -74.0, 30.0, 200.0, 8, &mut rng)
    }

    #[test]
    fn projection_round_trips_and_centre_is_the_middle() {
        let c = city();
        let (lat, lng) = c.to_lat_lng(Xy {
            x_m: 15_000.0,
            y_m: 15_000.0,
        });
        assert!((lat - 40.7).abs() < 1e-12 && (lng + 74.0).abs() < 1e-12);
        let p = Xy {
            x_m: 1234.5,
            y_m: 28_000.25,
        };
        let (lat, lng) = c.to_lat_lng(p);
        let q = c.to_xy(lat, lng);
        assert!((p.x_m - q.x_m).abs() < 1e-6 && (p.y_m - q.y_m).abs() < 1e-6);
        // The box spans about 0.27 degrees of latitude.
        let (s, _) = c.to_lat_lng(Xy { x_m: 0.0, y_m: 0.0 });
        let (n, _) = c.to_lat_lng(Xy {
            x_m: 0.0,
            y_m: 30_000.0,
        });
        assert!((n - s - 0.2695).abs() < 1e-3);
    }

    #[test]
    fn snapped_points_are_intersections_inside_the_box() {
        let c = city();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..10_000 {
            let p = c.sample_demand(&mut rng);
            assert!(c.on_line(p.x_m) && c.on_line(p.y_m), "{p:?}");
            assert!((0.0..=c.size_m).contains(&p.x_m) && (0.0..=c.size_m).contains(&p.y_m));
            let d = c.sample_dropoff(p, &mut rng);
            assert!(c.on_line(d.x_m) && c.on_line(d.y_m), "{d:?}");
        }
    }

    #[test]
    fn demand_concentrates_around_hotspots() {
        let c = city();
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let n = 20_000;
        let near = (0..n)
            .filter(|_| {
                let p = c.sample_demand(&mut rng);
                c.hotspots
                    .iter()
                    .any(|h| h.centre.grid_distance_m(p) < 3.0 * h.sigma_m)
            })
            .count();
        // 80 % of demand is in hotspots and nearly all of it within 3 sigma (Manhattan); a
        // uniform spread would put far fewer points there.
        assert!(near as f64 / n as f64 > 0.75, "{near}");
    }

    #[test]
    fn same_seed_same_city() {
        let a = city();
        let b = city();
        assert_eq!(a.hotspots.len(), b.hotspots.len());
        for (x, y) in a.hotspots.iter().zip(&b.hotspots) {
            assert_eq!(x.centre, y.centre);
        }
    }
}
