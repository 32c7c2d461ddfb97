//! How a trip picks its driver: estimate each candidate's time to the pickup ([`eta`]) and
//! score the candidates ([`score`]). Today's policy is greedy best-first: the dispatcher offers
//! the trip to the highest score among the available candidates at request time.

pub mod eta;
pub mod score;

pub use eta::{EtaConfig, EtaModel, HaversineEta};
pub use score::{CandidateFacts, ScoreBreakdown, ScoreWeights, Scorer};
