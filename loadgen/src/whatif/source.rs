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
use std::time::Duration;

use dispatch::LatLng;
use dispatch::config::Config;
use dispatch::domain::{DriverKey, ExternalId, OfferId, TripId};
use dispatch::engine::Dispatcher;
use dispatch::events::EventKind;
use dispatch::journal::{Entry, Input, JournalReader, Step};

use rustc_hash::FxHashMap;

use super::model::{Facts, Legs, Tally};

/// An input every variant replays as it is.
#[derive(Clone, Debug)]
pub enum Exo {
    /// GoOnline or GoOffline, executed as recorded.
    Input(Input),
    /// Location reports, each driver named by its index in [`Source::drivers`] (a replay
    /// resolves each name to the engine's key once, not once per report: see [`Keys`]).
    Locations(Vec<(u32, LatLng)>),
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
    /// The drivers [`Exo::Locations`] name, by index.
    pub drivers: Drivers,
    /// CPU time spent reading on threads other than the caller's (the journal decoder).
    pub load_cpu: Duration,
}

/// Driver names interned to dense indices, so the per-report work of a replay is an array
/// lookup instead of hashing and comparing a name (at 100k drivers those lookups miss the
/// cache and were the largest single cost of applying a report).
#[derive(Debug, Default)]
pub struct Drivers {
    names: Vec<ExternalId>,
    index: FxHashMap<ExternalId, u32>,
}

impl Drivers {
    /// The index of `name`, interning it if new.
    pub fn intern(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len() as u32;
        // A name the journal held is a valid id (the engine accepted it); skip one that is not.
        let Ok(id) = ExternalId::new("driver", name) else {
            return u32::MAX;
        };
        self.names.push(id.clone());
        self.index.insert(id, i);
        i
    }

    /// The index of a driver seen in a location report, if any.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    /// How many drivers are interned.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names, by index.
    pub fn names(&self) -> &[ExternalId] {
        &self.names
    }
}

/// One dispatcher's keys for the interned drivers, resolved on first use (a driver's key
/// never changes in a dispatcher's life), so a report is applied by key.
#[derive(Debug, Default)]
pub struct Keys(Vec<Option<DriverKey>>);

impl Keys {
    /// Applies the report of driver `i` at `position` to `d`, as `apply_location` by name
    /// would (a driver the engine does not know changes nothing).
    pub fn apply(&mut self, d: &mut Dispatcher, names: &[ExternalId], i: u32, position: LatLng) {
        let Some(name) = names.get(i as usize) else {
            return;
        };
        if self.0.len() <= i as usize {
            self.0.resize(names.len(), None);
        }
        let slot = &mut self.0[i as usize];
        let key = match *slot {
            Some(key) => key,
            None => match d.driver_key(name.as_str()) {
                Some(key) => *slot.insert(key),
                None => return,
            },
        };
        // Refused (offline driver): changed nothing, as the engine refused it.
        let _ = d.apply_location_key(key, position);
    }
}

/// Reads a journal: exogenous inputs, and facts from one exact replay of it.
pub fn from_journal(dir: &Path, skip_corrupt: bool) -> Result<Source, String> {
    let mut reader = JournalReader::open(dir, skip_corrupt).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    let first = match reader.next() {
        Some(Ok(entry)) => Some(entry),
        Some(Err(e)) => {
            problems.push(e.to_string());
            None
        }
        None => None,
    };
    let Some(Entry {
        input: Input::Start { config_toml, .. },
        ..
    }) = first
    else {
        return Err(format!(
            "the journal in {} does not begin with a Start entry (its oldest segments were \
             deleted by retention?)",
            dir.display()
        ));
    };
    let base = dispatch::replay::recorded_config(&config_toml)?;
    let mut d = Dispatcher::new(&base, dispatch::index::default_index(), 0);
    let mut learn = Learn::default();
    let mut inputs = Vec::new();
    let mut names: Vec<ExternalId> = Vec::new();
    let mut keys = Keys::default();
    // Decoding and interning run on their own thread, a batch ahead of this one (which runs
    // the engine): the learning pass is the serial part of a what-if run.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Decoded>>(8);
    let (drivers, skipped, load_cpu) = std::thread::scope(|scope| {
        let decoder = scope.spawn(move || decode(reader, &tx));
        for entry in rx.into_iter().flatten() {
            let entry = match entry {
                Decoded::Entry(entry) => entry,
                Decoded::Locations {
                    now_ms,
                    updates,
                    new_names,
                } => {
                    names.extend(new_names);
                    for &(i, position) in &updates {
                        keys.apply(&mut d, &names, i, position);
                    }
                    inputs.push((now_ms, Exo::Locations(updates)));
                    continue;
                }
                Decoded::Failed(e) => {
                    problems.push(e);
                    break;
                }
            };
            let now = entry.now_ms;
            if let Input::Gap { lost } = entry.input {
                problems.push(format!(
                    "the recording lost {lost} entries at {} ms",
                    entry.now_ms
                ));
            }
            if matches!(entry.input, Input::Start { .. }) {
                problems.push(
                    "a second engine start in the journal: replayed from the first only".into(),
                );
                break;
            }
            // Refused commands were refused in the recording too.
            let _ = dispatch::replay::apply(&mut d, &entry);
            let events = d.take_events();
            match &entry.input {
                Input::GoOnline { .. } | Input::GoOffline { .. } => {
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
        // Leaving the loop early (a second Start, a bad record) dropped the receiver, which
        // ends the decoder's sends; it returns what it has.
        decoder.join()
    })
    .map_err(|_| "the journal decoder thread panicked".to_string())?;
    problems.extend(skipped.iter().map(|e| format!("skipped: {e}")));
    let requests = learn.legs.len() as u32;
    Ok(Source {
        base,
        inputs,
        facts: learn.into_facts(),
        problems,
        requests,
        drivers,
        load_cpu,
    })
}

/// What the decoder thread hands the learning pass.
enum Decoded {
    /// Any entry but location reports, as read.
    Entry(Entry),
    /// Location reports with their drivers interned; `new_names` are the names first seen
    /// here, in index order (the learning pass keeps its own copy of the names).
    Locations {
        now_ms: u64,
        updates: Vec<(u32, LatLng)>,
        new_names: Vec<ExternalId>,
    },
    /// The journal could not be read further (the reader names segment and byte).
    Failed(String),
}

/// Entries handed over per send: one channel operation per batch, not per entry.
const DECODE_BATCH: usize = 512;

/// Reads the journal after its Start entry, interning drivers, and sends it in batches until
/// the end, a bad record, or the receiver leaving. Returns the interned drivers and the
/// records skipped (with `--skip-corrupt`) and the thread's CPU time.
fn decode(
    mut reader: JournalReader,
    tx: &std::sync::mpsc::SyncSender<Vec<Decoded>>,
) -> (Drivers, Vec<dispatch::journal::JournalError>, Duration) {
    let mut drivers = Drivers::default();
    let mut batch = Vec::with_capacity(DECODE_BATCH);
    for entry in reader.by_ref() {
        let (item, stop) = match entry {
            Ok(Entry {
                now_ms,
                input: Input::Locations { updates },
            }) => {
                let known = drivers.len();
                let updates = updates
                    .iter()
                    .map(|(name, position)| (drivers.intern(name), *position))
                    .collect();
                let new_names = drivers.names[known..].to_vec();
                let item = Decoded::Locations {
                    now_ms,
                    updates,
                    new_names,
                };
                (item, false)
            }
            Ok(entry) => (Decoded::Entry(entry), false),
            Err(e) => (Decoded::Failed(e.to_string()), true),
        };
        batch.push(item);
        if (stop || batch.len() == DECODE_BATCH) && tx.send(std::mem::take(&mut batch)).is_err() {
            break;
        }
        if stop {
            break;
        }
    }
    if !batch.is_empty() {
        // The receiver may have left: nothing more to do either way.
        let _ = tx.send(batch);
    }
    let cpu = super::thread_cpu().unwrap_or_default();
    (drivers, std::mem::take(&mut reader.skipped), cpu)
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

#[cfg(test)]
mod tests {
    use super::*;
    use dispatch::domain::{Rating, VehicleClass};
    use dispatch::engine::GoOnline;

    fn at(north_m: f64) -> LatLng {
        LatLng::new(40.75 + north_m / 111_195.0, -73.99).unwrap()
    }

    #[test]
    fn a_report_by_interned_key_does_what_a_report_by_name_does() {
        let mut d = Dispatcher::new(&Config::default(), dispatch::index::default_index(), 0);
        for name in ["d0", "d1"] {
            d.go_online(
                1_000,
                GoOnline {
                    driver: ExternalId::new("driver", name).unwrap(),
                    position: at(0.0),
                    rating: Rating::new(4.8).unwrap(),
                    class: VehicleClass::Economy,
                    gateway: None,
                },
            )
            .unwrap();
        }
        d.go_offline(2_000, &ExternalId::new("driver", "d0").unwrap())
            .unwrap();
        let mut drivers = Drivers::default();
        let (d1, d0, ghost) = (
            drivers.intern("d1"),
            drivers.intern("d0"),
            drivers.intern("ghost"),
        );
        assert_eq!(drivers.intern("d1"), d1, "interned once");
        assert_eq!(drivers.get("ghost"), Some(ghost));
        let mut keys = Keys::default();
        // Twice: the second goes by the cached key.
        for north in [500.0, 900.0] {
            for i in [d1, d0, ghost, u32::MAX] {
                keys.apply(&mut d, drivers.names(), i, at(north));
            }
            assert_eq!(d.driver("d1").unwrap().position, at(north));
        }
        // An offline driver's report is refused by key as by name: d0 stays where it was.
        assert_eq!(d.driver("d0").unwrap().position, at(0.0));
        assert!(d.apply_location("d0", at(900.0)).is_err());
        assert!(d.driver("ghost").is_err());
    }
}
