//! How a trip picks its driver: estimate each candidate's time to the pickup ([`eta`]) and
//! score the candidates ([`score`]). Two policies use them: greedy best-first (the dispatcher
//! offers the trip to the highest score among the available candidates at request time) and
//! batched (requests of a short window are paired with drivers all at once by a minimum-cost
//! assignment over the same scores, [`assign`]).

pub mod assign;
pub mod eta;
pub mod score;

pub use eta::{Eta, EtaConfig, EtaModel, EtaModelKind, EtaSource, HaversineEta};
pub use score::{CandidateFacts, ScoreBreakdown, ScoreWeights, Scorer};
