//! The driver-behaviour model: how drivers answer offers and how long trip legs take, for the
//! offers and trips a recording never saw (another policy picks another driver).
//!
//! - An offer the recording made (same request, same driver) gets the recorded answer after
//!   the recorded delay.
//! - Any other offer: the driver's recorded outcomes (accepted, declined, let expire) give the
//!   odds once the driver has at least [`MIN_ANSWERS`]; else the fleet's; with no recording at
//!   all (a trips CSV), [`DEFAULT_ODDS`]. The delay is drawn from the recorded delays (else
//!   2-6 s uniform).
//! - Legs: the pickup drive takes the recorded time when the recorded driver got the trip, else
//!   the ETA the engine offered with; boarding and the ride take the recorded (or CSV) times,
//!   else [`DEFAULT_BOARDING_MS`] and the straight line x 1.3 at 8 m/s.
//!
//! Every draw comes from the run's seeded RNG, so `--seeds N` gives N independent, repeatable
//! runs of the model.

use std::collections::HashMap;

use dispatch::LatLng;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// A driver needs this many recorded outcomes before their own odds are used.
pub const MIN_ANSWERS: u32 = 3;
/// Accept, decline, expire odds when nothing was recorded.
pub const DEFAULT_ODDS: [f64; 3] = [0.85, 0.10, 0.05];
/// Time from arrival to the rider boarding when nothing was recorded, ms.
pub const DEFAULT_BOARDING_MS: u64 = 30_000;
/// Ride speed and detour when no duration was recorded.
const RIDE_SPEED_MPS: f64 = 8.0;
const DETOUR: f64 = 1.3;

/// Recorded outcomes of offers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// Accepted.
    pub accepted: u32,
    /// Declined.
    pub declined: u32,
    /// Let expire.
    pub expired: u32,
}

impl Tally {
    fn total(self) -> u32 {
        self.accepted + self.declined + self.expired
    }

    /// The acceptance rate.
    pub fn accept_rate(self) -> f64 {
        f64::from(self.accepted) / f64::from(self.total().max(1))
    }
}

/// What one request's trip did in the recording (engine times, ms).
#[derive(Clone, Debug, Default)]
pub struct Legs {
    /// The driver the recording assigned.
    pub driver: Option<String>,
    /// Assigned.
    pub assigned_at: Option<u64>,
    /// Arrived at the pickup.
    pub arrived_at: Option<u64>,
    /// Rider on board.
    pub started_at: Option<u64>,
    /// Dropped off.
    pub completed_at: Option<u64>,
    /// A ride duration given directly (a trips CSV), ms.
    pub ride_ms: Option<u64>,
}

/// Everything the model answers from.
#[derive(Debug, Default)]
pub struct Facts {
    /// Recorded answers by (request, driver): accepted?, delay ms.
    pub answers: HashMap<(u32, String), (bool, u64)>,
    /// Recorded outcomes per driver.
    pub tally: HashMap<String, Tally>,
    /// Recorded outcomes of the whole fleet.
    pub fleet: Tally,
    /// Recorded answer delays, sorted, ms.
    pub delays_ms: Vec<u64>,
    /// Per request, in request order.
    pub legs: Vec<Legs>,
}

/// A modelled answer to an offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Accept after this many ms.
    Accept(u64),
    /// Decline after this many ms.
    Decline(u64),
    /// Never answer (the offer expires).
    Ignore,
}

impl Facts {
    /// How `driver` answers an offer for request `n`.
    pub fn answer(&self, n: u32, driver: &str, rng: &mut ChaCha8Rng) -> Answer {
        if let Some(&(accept, delay)) = self.answers.get(&(n, driver.to_string())) {
            return if accept {
                Answer::Accept(delay)
            } else {
                Answer::Decline(delay)
            };
        }
        let odds = self.odds(driver);
        let roll: f64 = rng.random_range(0.0..1.0);
        let delay = if self.delays_ms.is_empty() {
            rng.random_range(2_000..6_000)
        } else {
            self.delays_ms[rng.random_range(0..self.delays_ms.len())]
        };
        if roll < odds[0] {
            Answer::Accept(delay)
        } else if roll < odds[0] + odds[1] {
            Answer::Decline(delay)
        } else {
            Answer::Ignore
        }
    }

    fn odds(&self, driver: &str) -> [f64; 3] {
        let t = match self.tally.get(driver) {
            Some(t) if t.total() >= MIN_ANSWERS => *t,
            _ if self.fleet.total() >= MIN_ANSWERS => self.fleet,
            _ => return DEFAULT_ODDS,
        };
        let n = f64::from(t.total());
        [
            f64::from(t.accepted) / n,
            f64::from(t.declined) / n,
            f64::from(t.expired) / n,
        ]
    }

    /// The pickup drive, boarding and ride of request `n` driven by `driver`, ms.
    pub fn legs(
        &self,
        n: u32,
        driver: &str,
        offered_eta_s: f64,
        pickup: LatLng,
        dropoff: LatLng,
    ) -> (u64, u64, u64) {
        let l = self.legs.get(n as usize).cloned().unwrap_or_default();
        let same_driver = l.driver.as_deref() == Some(driver);
        let pickup_ms = match (same_driver, l.assigned_at, l.arrived_at) {
            (true, Some(a), Some(b)) => b.saturating_sub(a),
            _ => (offered_eta_s.max(0.0) * 1000.0) as u64,
        };
        let boarding_ms = match (l.arrived_at, l.started_at) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => DEFAULT_BOARDING_MS,
        };
        let ride_ms = match (l.ride_ms, l.started_at, l.completed_at) {
            (Some(ms), _, _) => ms,
            (None, Some(a), Some(b)) => b.saturating_sub(a),
            _ => (pickup.distance_m(dropoff) * DETOUR / RIDE_SPEED_MPS * 1000.0) as u64,
        };
        (pickup_ms, boarding_ms, ride_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn facts_with(tally: Tally) -> Facts {
        let mut f = Facts {
            fleet: tally,
            ..Facts::default()
        };
        f.tally.insert("d".into(), tally);
        f.delays_ms = vec![1_000, 3_000];
        f
    }

    #[test]
    fn a_driver_who_always_declined_declines_with_a_recorded_delay() {
        let f = facts_with(Tally {
            declined: 5,
            ..Tally::default()
        });
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            match f.answer(0, "d", &mut rng) {
                Answer::Decline(ms) => assert!(ms == 1_000 || ms == 3_000),
                other => panic!("expected a decline, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_recorded_answer_wins_and_odds_follow_the_recording() {
        let mut f = facts_with(Tally {
            accepted: 3,
            declined: 1,
            expired: 0,
        });
        f.answers.insert((7, "d".into()), (false, 4_200));
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        assert_eq!(f.answer(7, "d", &mut rng), Answer::Decline(4_200));
        let accepted = (0..4_000)
            .filter(|_| matches!(f.answer(1, "d", &mut rng), Answer::Accept(_)))
            .count();
        let rate = accepted as f64 / 4_000.0;
        assert!((rate - 0.75).abs() < 0.03, "acceptance {rate}");
        // A driver never seen answers at the fleet's odds.
        let unseen = (0..4_000)
            .filter(|_| matches!(f.answer(1, "x", &mut rng), Answer::Accept(_)))
            .count();
        assert!((unseen as f64 / 4_000.0 - 0.75).abs() < 0.03);
    }
}
