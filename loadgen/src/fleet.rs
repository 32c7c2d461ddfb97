//! The simulated drivers, held as plain vectors and advanced lazily.
//!
//! 100k drivers must cost the load generator little, so there is no task or timer per driver:
//! each driver is a row (a movement leg, a phase, the time of its next report) and the
//! simulation loop scans the rows once per tick for the reports that are due. A driver's
//! position is a pure function of its current leg and the time, so it is computed only when
//! reported. Per-driver random choices (cruising waypoints, report jitter) come from a hash of
//! (seed, driver, draw number), so they do not depend on the order the loop visits drivers in.

use crate::city::{City, Xy};
use crate::drive::{RoadLeg, cruise};
use crate::streets::Streets;
use rand::Rng;

mod leg;

pub use leg::{Leg, Phase};

/// How far an idle driver wanders per cruising leg, metres (at most, each axis).
const CRUISE_REACH_M: f64 = 1500.0;

/// Every simulated driver, one row per index.
#[derive(Debug)]
pub struct Fleet {
    seed: u64,
    report_interval_s: f64,
    /// Current movement of each driver.
    pub legs: Vec<Leg>,
    /// Phase of each driver.
    pub phase: Vec<Phase>,
    /// Bumped on every phase change; timers and replies carrying an older value are stale.
    pub generation: Vec<u32>,
    /// Simulation time of each driver's next location report, seconds.
    pub next_report_s: Vec<f64>,
    /// City speed of each driver, metres per second.
    pub speed_mps: Vec<f64>,
    /// Trips assigned to each driver (accepted offers).
    pub trips_assigned: Vec<u32>,
    /// With a map, each driver's movement along the roads (then `legs` only hold the
    /// starting points); empty on the grid.
    pub road: Vec<RoadLeg>,
    draws: Vec<u32>,
    scratch: Vec<u32>,
}

impl Fleet {
    /// `n` drivers, offline, placed half by the demand distribution and half uniformly over
    /// the city, each on an intersection.
    pub fn new(
        city: &City,
        n: usize,
        seed: u64,
        report_interval_s: f64,
        rng: &mut impl Rng,
    ) -> Fleet {
        let mut legs = Vec::with_capacity(n);
        let mut speed_mps = Vec::with_capacity(n);
        let mut next_report_s = Vec::with_capacity(n);
        let mut road = Vec::new();
        for _ in 0..n {
            let at = if rng.random_bool(0.5) {
                city.sample_demand(rng)
            } else {
                city.snap(city.sample_uniform(rng))
            };
            if let Some(st) = &city.streets {
                road.push(RoadLeg::parked(city.road_pos_of(at, st), 0.0));
            }
            legs.push(Leg::parked(at, 0.0));
            // 22 to 40 km/h: city traffic.
            speed_mps.push(rng.random_range(6.0..11.0));
            next_report_s.push(rng.random_range(0.0..report_interval_s));
        }
        Fleet {
            seed,
            report_interval_s,
            legs,
            phase: vec![Phase::Offline; n],
            generation: vec![0; n],
            next_report_s,
            speed_mps,
            trips_assigned: vec![0; n],
            road,
            draws: vec![0; n],
            scratch: Vec::new(),
        }
    }

    /// Number of drivers.
    pub fn len(&self) -> usize {
        self.legs.len()
    }

    /// Whether the fleet has no drivers.
    pub fn is_empty(&self) -> bool {
        self.legs.is_empty()
    }

    /// Sets a driver's phase and invalidates everything scheduled for its previous phase.
    pub fn set_phase(&mut self, i: usize, phase: Phase) {
        self.phase[i] = phase;
        self.generation[i] = self.generation[i].wrapping_add(1);
    }

    /// A deterministic uniform number in [0, 1) for driver `i`'s next random choice.
    fn draw(&mut self, i: usize) -> f64 {
        draw(self.seed, &mut self.draws[i], i)
    }

    /// Where driver `i` is at `t_s` on the roads; a cruising driver whose leg ended drives on
    /// along a new random walk until its leg covers `t_s`.
    fn road_position(&mut self, st: &Streets, i: usize, t_s: f64) -> Xy {
        if self.phase[i].cruising() {
            // Each cruising leg covers about a minute of driving, so a few iterations cover any
            // gap; the bound only guards against a degenerate map.
            for _ in 0..1000 {
                let leg = &self.road[i];
                let end = leg.end_s();
                if end >= t_s {
                    break;
                }
                let at = leg.end_pos();
                let (seed, n) = (self.seed, &mut self.draws[i]);
                self.road[i] = cruise(st, at, end, || draw(seed, n, i), &mut self.scratch);
            }
        }
        self.road[i].position(st, t_s)
    }

    /// Where driver `i` is at `t_s`. A cruising driver whose leg ended picks new waypoints
    /// (nearby intersections) until its leg covers `t_s`.
    pub fn position(&mut self, city: &City, i: usize, t_s: f64) -> Xy {
        if let Some(st) = &city.streets {
            return self.road_position(st, i, t_s);
        }
        if self.phase[i].cruising() {
            // Each leg lasts at least one block at the driver's speed, so a few iterations cover
            // any report gap; the bound only guards against a degenerate city.
            for _ in 0..1000 {
                let leg = self.legs[i];
                let end = leg.end_s();
                if end >= t_s {
                    break;
                }
                let dx = (self.draw(i) * 2.0 - 1.0) * CRUISE_REACH_M;
                let dy = (self.draw(i) * 2.0 - 1.0) * CRUISE_REACH_M;
                let mut to = city.snap(Xy {
                    x_m: leg.to.x_m + dx,
                    y_m: leg.to.y_m + dy,
                });
                if to == leg.to {
                    // Never a zero-length leg: go one block along whichever axis has room.
                    to.x_m = if to.x_m + city.block_m <= city.size_m {
                        to.x_m + city.block_m
                    } else {
                        to.x_m - city.block_m
                    };
                }
                self.legs[i] = Leg {
                    from: leg.to,
                    to,
                    start_s: end,
                    speed_mps: self.speed_mps[i],
                    x_first: city.on_line(leg.to.y_m),
                };
            }
        }
        self.legs[i].position(t_s)
    }

    /// Starts a trip leg for driver `i` from where it is at `t_s` to `to`, at its speed times
    /// `time_scale`. Returns the simulation time of arrival.
    pub fn drive_to(&mut self, city: &City, i: usize, t_s: f64, to: Xy, time_scale: f64) -> f64 {
        if let Some(st) = &city.streets {
            self.road_position(st, i, t_s);
            let from = self.road[i].road_pos(st, t_s);
            let route = st.route(from, city.road_pos_of(to, st));
            self.road[i] = RoadLeg::along(st, route, t_s, time_scale);
            return self.road[i].end_s();
        }
        let from = self.position(city, i, t_s);
        let leg = Leg {
            from,
            to,
            start_s: t_s,
            speed_mps: self.speed_mps[i] * time_scale,
            x_first: city.on_line(from.y_m),
        };
        self.legs[i] = leg;
        leg.end_s()
    }

    /// Seconds driver `i` would need at real speed to drive from where it is at `t_s` to `to`
    /// (what [`Fleet::drive_to`] would take at a time scale of 1).
    pub fn drive_time_s(&mut self, city: &City, i: usize, t_s: f64, to: Xy) -> f64 {
        if let Some(st) = &city.streets {
            self.road_position(st, i, t_s);
            let from = self.road[i].road_pos(st, t_s);
            return st.drive_time_s(from, city.road_pos_of(to, st));
        }
        let from = self.position(city, i, t_s);
        from.grid_distance_m(to) / self.speed_mps[i]
    }

    /// Stops driver `i` where it is at `t_s`; if it is cruising it picks a new waypoint on its
    /// next report.
    pub fn park(&mut self, city: &City, i: usize, t_s: f64) {
        if let Some(st) = &city.streets {
            self.road_position(st, i, t_s);
            let at = self.road[i].road_pos(st, t_s);
            self.road[i] = RoadLeg::parked(at, t_s);
            return;
        }
        let at = self.position(city, i, t_s);
        // Parking mid-block is fine: the next cruising leg leaves along the current street.
        self.legs[i] = Leg::parked(at, t_s);
    }

    /// Collects into `due` the drivers whose report is due at `t_s` and who report in their
    /// phase, and schedules each one's next report one jittered interval (80-120 %) later.
    pub fn due_reports(&mut self, t_s: f64, due: &mut Vec<u32>) {
        for i in 0..self.len() {
            if self.next_report_s[i] > t_s {
                continue;
            }
            let jitter = 0.8 + 0.4 * self.draw(i);
            let next = self.next_report_s[i] + self.report_interval_s * jitter;
            // A driver that fell far behind (e.g. was offline) restarts from now.
            self.next_report_s[i] = if next < t_s {
                t_s + self.report_interval_s * jitter
            } else {
                next
            };
            if self.phase[i].reports() {
                due.push(i as u32);
            }
        }
    }
}

/// Driver `i`'s next deterministic uniform number in [0, 1), counting its draws in `n`.
fn draw(seed: u64, n: &mut u32, i: usize) -> f64 {
    let k = *n;
    *n = k.wrapping_add(1);
    unit(mix3(seed, i as u64, u64::from(k)))
}

/// SplitMix64's finaliser: a fast, well-mixed 64-bit hash.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A hash of three words, for deterministic per-entity random choices.
pub fn mix3(a: u64, b: u64, c: u64) -> u64 {
    mix64(mix64(mix64(a) ^ b) ^ c)
}

/// Maps a hash to a uniform number in [0, 1).
pub fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn city() -> City {
        City::new(
            40.7,
            -74.0,
            30.0,
            200.0,
            8,
            &mut ChaCha8Rng::seed_from_u64(3),
        )
    }

    #[test]
    fn a_leg_goes_along_one_axis_then_the_other() {
        let leg = Leg {
            from: Xy { x_m: 0.0, y_m: 0.0 },
            to: Xy {
                x_m: 400.0,
                y_m: -200.0,
            },
            start_s: 10.0,
            speed_mps: 10.0,
            x_first: true,
        };
        assert_eq!(leg.duration_s(), 60.0);
        assert_eq!(leg.position(0.0), leg.from);
        assert_eq!(
            leg.position(30.0),
            Xy {
                x_m: 200.0,
                y_m: 0.0
            }
        );
        assert_eq!(
            leg.position(50.0),
            Xy {
                x_m: 400.0,
                y_m: 0.0
            }
        );
        assert_eq!(
            leg.position(60.0),
            Xy {
                x_m: 400.0,
                y_m: -100.0
            }
        );
        assert_eq!(leg.position(1000.0), leg.to);
        let y_first = Leg {
            x_first: false,
            ..leg
        };
        assert_eq!(
            y_first.position(25.0),
            Xy {
                x_m: 0.0,
                y_m: -150.0
            }
        );
        assert_eq!(
            y_first.position(40.0),
            Xy {
                x_m: 100.0,
                y_m: -200.0
            }
        );
    }

    #[test]
    fn cruising_drivers_stay_on_streets_inside_the_city_at_their_speed() {
        let c = city();
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut f = Fleet::new(&c, 200, 9, 4.0, &mut rng);
        for i in 0..f.len() {
            f.set_phase(i, Phase::Idle);
        }
        let mut last: Vec<Xy> = (0..f.len()).map(|i| f.position(&c, i, 0.0)).collect();
        for step in 1..=300 {
            let t = step as f64 * 4.0;
            for (i, prev) in last.iter_mut().enumerate() {
                let p = f.position(&c, i, t);
                assert!(
                    c.on_line(p.x_m) || c.on_line(p.y_m),
                    "driver {i} off the grid at {p:?}"
                );
                assert!((0.0..=c.size_m).contains(&p.x_m) && (0.0..=c.size_m).contains(&p.y_m));
                // Never faster than its speed (grid distance is the path length bound).
                assert!(prev.grid_distance_m(p) <= f.speed_mps[i] * 4.0 + 1e-6);
                *prev = p;
            }
        }
    }

    #[test]
    fn trip_legs_arrive_at_the_scaled_time_and_stay() {
        let c = city();
        let mut f = Fleet::new(&c, 1, 1, 4.0, &mut ChaCha8Rng::seed_from_u64(1));
        f.set_phase(0, Phase::ToPickup);
        let start = f.position(&c, 0, 5.0);
        let to = c.snap(Xy {
            x_m: start.x_m + 2000.0,
            y_m: start.y_m - 1000.0,
        });
        let real_s = f.drive_time_s(&c, 0, 5.0, to);
        let arrive = f.drive_to(&c, 0, 5.0, to, 10.0);
        let expected = 5.0 + start.grid_distance_m(to) / (f.speed_mps[0] * 10.0);
        assert!((arrive - expected).abs() < 1e-9);
        assert!((real_s - 10.0 * (arrive - 5.0)).abs() < 1e-9);
        assert_eq!(f.position(&c, 0, arrive + 100.0), to);
    }

    #[test]
    fn reports_come_every_interval_with_jitter_and_only_when_online() {
        let c = city();
        let mut f = Fleet::new(&c, 1000, 5, 4.0, &mut ChaCha8Rng::seed_from_u64(5));
        for i in 0..500 {
            f.set_phase(i, Phase::Idle);
        }
        let mut due = Vec::new();
        let mut total = 0;
        for tick in 1..=400 {
            due.clear();
            f.due_reports(tick as f64 * 0.1, &mut due);
            assert!(due.iter().all(|&i| i < 500));
            total += due.len();
        }
        // 500 online drivers over 40 s at one report per ~4 s.
        let expected = 500.0 * 40.0 / 4.0;
        assert!((total as f64 - expected).abs() < 0.05 * expected, "{total}");
    }

    #[test]
    fn per_driver_draws_do_not_depend_on_visit_order() {
        let c = city();
        let mut a = Fleet::new(&c, 50, 11, 4.0, &mut ChaCha8Rng::seed_from_u64(11));
        let mut b = Fleet::new(&c, 50, 11, 4.0, &mut ChaCha8Rng::seed_from_u64(11));
        for i in 0..50 {
            a.set_phase(i, Phase::Idle);
            b.set_phase(i, Phase::Idle);
        }
        let pa: Vec<Xy> = (0..50).map(|i| a.position(&c, i, 500.0)).collect();
        let pb: Vec<Xy> = (0..50).rev().map(|i| b.position(&c, i, 500.0)).collect();
        assert!(pa.iter().zip(pb.iter().rev()).all(|(x, y)| x == y));
    }

    #[test]
    fn unit_is_in_range_and_roughly_uniform() {
        let n = 100_000;
        let mean: f64 = (0..n).map(|k| unit(mix3(1, 2, k))).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01);
        assert!((0..n).all(|k| (0.0..1.0).contains(&unit(mix64(k)))));
    }
}
