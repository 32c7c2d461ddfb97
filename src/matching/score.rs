//! Candidate scoring: which nearby driver gets the offer.
//!
//! Four terms, each normalised to `0..=1` (higher is better) and weighted from the config:
//! - ETA: `1 - eta / eta_horizon`, so a driver at the pickup scores 1.
//! - rating: `(rating - 1) / 4`.
//! - acceptance: the driver's rolling acceptance rate, learned from its own offers.
//! - fairness: half idle time (`idle / idle_horizon`, capped), half `1 / (1 + trips today)`,
//!   so drivers who waited long or earned little today win close calls.
//!
//! Every offer carries the weighted terms ([`ScoreBreakdown`]) so a person can see why that
//! driver won.

/// Weights and horizons of the score.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreWeights {
    /// Weight of the ETA term.
    pub eta: f64,
    /// Weight of the rating term.
    pub rating: f64,
    /// Weight of the acceptance-rate term.
    pub acceptance: f64,
    /// Weight of the fairness term.
    pub fairness: f64,
    /// An ETA this long (or longer) scores 0 on the ETA term, seconds.
    pub eta_horizon_s: f64,
    /// Idle time this long (or longer) scores the full idle half of fairness, seconds.
    pub idle_horizon_s: f64,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        ScoreWeights {
            eta: 0.6,
            rating: 0.1,
            acceptance: 0.15,
            fairness: 0.15,
            eta_horizon_s: 900.0,
            idle_horizon_s: 1_800.0,
        }
    }
}

/// What the scorer needs to know about one candidate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CandidateFacts {
    /// Estimated seconds to the pickup.
    pub eta_s: f64,
    /// Rating, 1..=5.
    pub rating: f64,
    /// Rolling acceptance rate, 0..=1.
    pub acceptance_rate: f64,
    /// Seconds since the driver last became free (went online or finished a trip).
    pub idle_s: f64,
    /// Trips completed today.
    pub trips_today: u32,
}

/// The weighted terms of a score and their sum.
#[derive(Clone, Copy, Debug, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct ScoreBreakdown {
    /// Weighted ETA term.
    pub eta: f64,
    /// Weighted rating term.
    pub rating: f64,
    /// Weighted acceptance term.
    pub acceptance: f64,
    /// Weighted fairness term.
    pub fairness: f64,
    /// Sum of the terms; the candidate with the highest total wins.
    pub total: f64,
}

/// Scores candidates with fixed weights.
#[derive(Clone, Debug)]
pub struct Scorer {
    weights: ScoreWeights,
}

impl Scorer {
    /// A scorer with these weights.
    pub fn new(weights: ScoreWeights) -> Self {
        Scorer { weights }
    }

    /// Scores one candidate.
    pub fn score(&self, c: &CandidateFacts) -> ScoreBreakdown {
        let w = &self.weights;
        let eta = w.eta * (1.0 - (c.eta_s / w.eta_horizon_s).clamp(0.0, 1.0));
        let rating = w.rating * ((c.rating - 1.0) / 4.0).clamp(0.0, 1.0);
        let acceptance = w.acceptance * c.acceptance_rate.clamp(0.0, 1.0);
        let idle = (c.idle_s / w.idle_horizon_s).clamp(0.0, 1.0);
        let earned = 1.0 / (1.0 + f64::from(c.trips_today));
        let fairness = w.fairness * 0.5 * (idle + earned);
        ScoreBreakdown {
            eta,
            rating,
            acceptance,
            fairness,
            total: eta + rating + acceptance + fairness,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(eta_s: f64) -> CandidateFacts {
        CandidateFacts {
            eta_s,
            rating: 4.8,
            acceptance_rate: 0.9,
            idle_s: 60.0,
            trips_today: 3,
        }
    }

    #[test]
    fn closer_driver_scores_higher_all_else_equal() {
        let s = Scorer::new(ScoreWeights::default());
        assert!(s.score(&facts(60.0)).total > s.score(&facts(300.0)).total);
    }

    #[test]
    fn fairness_breaks_a_tie_for_the_idle_driver() {
        let s = Scorer::new(ScoreWeights::default());
        let busy = facts(120.0);
        let idle = CandidateFacts {
            idle_s: 1_500.0,
            trips_today: 0,
            ..busy
        };
        assert!(s.score(&idle).total > s.score(&busy).total);
    }

    #[test]
    fn breakdown_sums_to_total() {
        let b = Scorer::new(ScoreWeights::default()).score(&facts(200.0));
        assert!((b.eta + b.rating + b.acceptance + b.fairness - b.total).abs() < 1e-12);
    }
}
