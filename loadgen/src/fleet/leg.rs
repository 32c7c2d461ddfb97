//! One simulated driver's movement leg and phase: the per-row values the fleet's vectors hold,
//! and the pure functions over them (where a leg is at a time, which phases report).

use crate::city::Xy;

/// A straight-line-on-the-grid movement: along one axis, then the other, at a constant speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Leg {
    /// Where the leg starts.
    pub from: Xy,
    /// Where the leg ends.
    pub to: Xy,
    /// Simulation time the leg starts, seconds.
    pub start_s: f64,
    /// Speed along the leg, metres per second (> 0).
    pub speed_mps: f64,
    /// Move along x first (the driver is on an east-west street), else along y first.
    pub x_first: bool,
}

impl Leg {
    /// A leg that stays put at `at`.
    pub fn parked(at: Xy, start_s: f64) -> Leg {
        Leg {
            from: at,
            to: at,
            start_s,
            speed_mps: 1.0,
            x_first: true,
        }
    }

    /// Seconds the leg takes.
    pub fn duration_s(&self) -> f64 {
        self.from.grid_distance_m(self.to) / self.speed_mps
    }

    /// Simulation time the leg ends, seconds.
    pub fn end_s(&self) -> f64 {
        self.start_s + self.duration_s()
    }

    /// Where the driver is at time `t_s` (clamped to the leg's ends).
    pub fn position(&self, t_s: f64) -> Xy {
        let mut d = (t_s - self.start_s).max(0.0) * self.speed_mps;
        let dx = self.to.x_m - self.from.x_m;
        let dy = self.to.y_m - self.from.y_m;
        let (first, second) = if self.x_first { (dx, dy) } else { (dy, dx) };
        let a = d.min(first.abs()).copysign(first);
        d -= first.abs();
        let b = d.clamp(0.0, second.abs()).copysign(second);
        let (mx, my) = if self.x_first { (a, b) } else { (b, a) };
        Xy {
            x_m: self.from.x_m + mx,
            y_m: self.from.y_m + my,
        }
    }
}

/// What a simulated driver is doing, as the load generator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not online; not reporting.
    Offline,
    /// GoOnline sent, no reply yet.
    GoingOnline,
    /// Online and available, cruising.
    Idle,
    /// Holding an offer, still cruising, answer pending.
    Offered,
    /// Accept sent, no reply yet.
    Accepting,
    /// Driving to the pickup.
    ToPickup,
    /// At the pickup (MarkArrived sent or done, StartTrip pending).
    AtPickup,
    /// Driving the rider to the drop-off.
    OnTrip,
    /// CompleteTrip sent, no reply yet.
    Completing,
    /// GoOffline sent, no reply yet.
    GoingOffline,
}

impl Phase {
    /// Whether the driver sends location reports in this phase (the engine knows it online).
    pub fn reports(self) -> bool {
        !matches!(
            self,
            Phase::Offline | Phase::GoingOnline | Phase::GoingOffline
        )
    }

    /// Whether the driver wanders the streets (no trip leg) in this phase.
    pub fn cruising(self) -> bool {
        matches!(self, Phase::Idle | Phase::Offered | Phase::Accepting)
    }
}
