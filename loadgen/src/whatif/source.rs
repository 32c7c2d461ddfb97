//! Where a what-if run's demand comes from: a recorded input journal, or a trips CSV with a
//! synthetic fleet. Either way the result is the same shape: the exogenous inputs (drivers going
//! online and offline, their positions, trip requests, rider cancels) in time order, which
//! every variant replays identically, and the [`Facts`] the behaviour model answers from.
//!
//! From a journal, one exact replay under the recorded config (`dispatch::replay::apply`)
//! learns what the recording saw: each offer's answer and delay, each trip's legs. Offers,
//! answers and driver trip steps are *not* exogenous: under another policy they happen to other
//! trips, so the model produces them.

use std::collections::HashMap;
use std::path::Path;

use dispatch::config::Config;
use dispatch::domain::{ExternalId, OfferId, TripId};
use dispatch::engine::Dispatcher;
use dispatch::events::EventKind;
use dispatch::journal::{Entry, Input, JournalReader, Step};

use super::model::{Facts, Legs, Tally};

/// An input every variant replays as it is.
#[derive(Clone, Debug)]
pub enum Exo {
    /// GoOnline, GoOffline or Locations, executed as recorded.
    Input(Input),
    /// The `n`th trip request (its facts are `Facts::legs[n]`).
    Request(u32, Input),
    /// The rider of request `n` cancelled.
    Cancel(u32, ExternalId),
}

/// A run's demand and what the model knows.
#[derive(Debug)]
pub struct Source {
    /// The config variants override (the recorded one, or the defaults).
    pub base: Config,
    /// Exogenous inputs with their engine time, in order.
    pub inputs: Vec<(u64, Exo)>,
    /// What the behaviour model answers from.
    pub facts: Facts,
    /// Problems met reading the input (bad records, bad rows), for the report.
    pub problems: Vec<String>,
    /// Trip requests.
    pub requests: u32,
}

/// Reads a journal: exogenous inputs, and facts from one exact replay of it.
pub fn from_journal(dir: &Path, skip_corrupt: bool) -> Result<Source, String> {
    let mut reader = JournalReader::open(dir, skip_corrupt).map_err(|e| e.to_string())?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut problems = Vec::new();
    for entry in reader.by_ref() {
        match entry {
            Ok(e) => entries.push(e),
            Err(e) => {
                problems.push(e.to_string());
                break;
            }
        }
    }
    problems.extend(reader.skipped.iter().map(|e| format!("skipped: {e}")));
    let Some(Entry {
        input: Input::Start { config_toml, .. },
        ..
    }) = entries.first()
    else {
        return Err(format!(
            "the journal in {} does not begin with a Start entry (its oldest segments were \
             deleted by retention?)",
            dir.display()
        ));
    };
    let base = dispatch::replay::recorded_config(config_toml)?;
    let mut d = Dispatcher::new(&base, dispatch::index::default_index(), 0);
    let mut learn = Learn::default();
    let mut inputs = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if let Input::Gap { lost } = entry.input {
            problems.push(format!(
                "the recording lost {lost} entries at {} ms",
                entry.now_ms
            ));
        }
        if matches!(entry.input, Input::Start { .. }) && i > 0 {
            problems
                .push("a second engine start in the journal: replayed from the first only".into());
            break;
        }
        // Refused commands were refused in the recording too.
        let _ = dispatch::replay::apply(&mut d, entry);
        let events = d.take_events();
        let now = entry.now_ms;
        match &entry.input {
            Input::GoOnline { .. } | Input::GoOffline { .. } | Input::Locations { .. } => {
                inputs.push((now, Exo::Input(entry.input.clone())));
            }
            Input::RequestTrip { .. } => {
                let n = learn.legs.len() as u32;
                learn.legs.push(Legs::default());
                inputs.push((now, Exo::Request(n, entry.input.clone())));
                for e in &events {
                    if let EventKind::TripRequested { trip, .. } = &e.kind {
                        learn.request_of.insert(*trip, n);
                    }
                }
            }
            Input::CancelTrip { trip, rider } => {
                if let Some(n) = learn.request_of.get(trip) {
                    inputs.push((now, Exo::Cancel(*n, rider.clone())));
                }
            }
            Input::Respond { offer, accept, .. } => learn.answer(*offer, *accept, now),
            Input::TripAction {
                trip,
                step: Step::Arrive,
                ..
            } => learn.step(*trip, now, |l, at| l.arrived_at = Some(at)),
            Input::TripAction {
                trip,
                step: Step::Start,
                ..
            } => learn.step(*trip, now, |l, at| l.started_at = Some(at)),
            Input::TripAction {
                trip,
                step: Step::Complete,
                ..
            } => learn.step(*trip, now, |l, at| l.completed_at = Some(at)),
            _ => {}
        }
        for e in events {
            learn.event(&e.kind, e.at_ms);
        }
    }
    let requests = learn.legs.len() as u32;
    Ok(Source {
        base,
        inputs,
        facts: learn.into_facts(),
        problems,
        requests,
    })
}

#[derive(Default)]
struct Learn {
    request_of: HashMap<TripId, u32>,
    offers: HashMap<OfferId, (u32, String, u64)>,
    legs: Vec<Legs>,
    answers: HashMap<(u32, String), (bool, u64)>,
    tally: HashMap<String, Tally>,
    fleet: Tally,
    delays_ms: Vec<u64>,
}

impl Learn {
    fn answer(&mut self, offer: OfferId, accept: bool, now: u64) {
        let Some((n, driver, sent_at)) = self.offers.get(&offer).cloned() else {
            return;
        };
        let delay = now.saturating_sub(sent_at);
        self.delays_ms.push(delay);
        let t = self.tally.entry(driver.clone()).or_default();
        for t in [t, &mut self.fleet] {
            if accept {
                t.accepted += 1;
            } else {
                t.declined += 1;
            }
        }
        self.answers.insert((n, driver), (accept, delay));
    }

    fn step(&mut self, trip: TripId, now: u64, set: impl FnOnce(&mut Legs, u64)) {
        if let Some(n) = self.request_of.get(&trip) {
            set(&mut self.legs[*n as usize], now);
        }
    }

    fn event(&mut self, kind: &EventKind, at: u64) {
        match kind {
            EventKind::OfferSent(o) => {
                if let Some(n) = self.request_of.get(&o.trip) {
                    self.offers
                        .insert(o.offer, (*n, o.driver.as_str().to_string(), at));
                }
            }
            EventKind::OfferExpired(o) => {
                let t = self.tally.entry(o.driver.as_str().to_string()).or_default();
                t.expired += 1;
                self.fleet.expired += 1;
            }
            EventKind::TripAssigned { trip, driver, .. } => {
                if let Some(n) = self.request_of.get(trip) {
                    let l = &mut self.legs[*n as usize];
                    l.driver = Some(driver.as_str().to_string());
                    l.assigned_at = Some(at);
                }
            }
            _ => {}
        }
    }

    fn into_facts(mut self) -> Facts {
        self.delays_ms.sort_unstable();
        Facts {
            answers: self.answers,
            tally: self.tally,
            fleet: self.fleet,
            delays_ms: self.delays_ms,
            legs: self.legs,
        }
    }
}
