//! One what-if run: a [`Source`]'s inputs through an in-process [`Dispatcher`] under one
//! config, with the behaviour model answering offers and driving legs, on engine time only
//! (the loop jumps from one input, model action or engine deadline to the next, so it runs as
//! fast as the CPU allows).
//!
//! Drivers on a modelled trip ignore their recorded position reports (the recording has them
//! elsewhere); they are put at the pickup on arrival and the engine frees them at the drop-off,
//! after which their recorded reports take over again.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use dispatch::LatLng;
use dispatch::config::Config;
use dispatch::domain::{ExternalId, OfferId, TripId};
use dispatch::engine::{Dispatcher, TripAction};
use dispatch::events::{Event, EventKind};
use dispatch::journal::Entry;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::metrics::{Acc, Stats, hour_of, split_by_hour};
use super::model::Answer;
use super::source::{Exo, Keys, Source};

/// The figures of one run: the whole run and each hour of day (by request time).
#[derive(Clone, Debug)]
pub struct RunStats {
    /// The whole run.
    pub total: Stats,
    /// Hours 0-23.
    pub hours: Vec<Stats>,
    /// Events the engine produced.
    pub events: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Act {
    Respond(OfferId, ExternalId, bool),
    Step(TripId, ExternalId, u8),
}

struct TripRec {
    n: u32,
    hour: usize,
    requested_at: u64,
    offered: bool,
    pickup: LatLng,
    dropoff: LatLng,
    assigned_at: Option<u64>,
}

struct Sim<'a> {
    src: &'a Source,
    d: Dispatcher,
    rng: ChaCha8Rng,
    /// Model actions due: (at, sequence, slot in `slots`). The heap holds only these 24 bytes,
    /// the action itself waits in its slot (sifting wide entries was ~4 % of a run).
    acts: BinaryHeap<Reverse<(u64, u64, u32)>>,
    slots: Vec<Option<Act>>,
    free: Vec<u32>,
    seq: u64,
    trips: HashMap<TripId, TripRec>,
    trip_of_request: HashMap<u32, TripId>,
    /// By interned driver ([`Source::drivers`]): on a modelled trip, so their recorded
    /// reports are ignored.
    on_trip: Vec<bool>,
    keys: Keys,
    online_since: HashMap<String, u64>,
    total: Acc,
    hours: Vec<Acc>,
    open: u64,
    events: u64,
    utc: i64,
}

/// Runs `src` under `config` with the model seeded by `seed`.
pub fn simulate(src: &Source, config: &Config, seed: u64) -> RunStats {
    let mut sim = Sim {
        src,
        d: Dispatcher::new(config, dispatch::index::default_index(), 0),
        rng: ChaCha8Rng::seed_from_u64(seed),
        acts: BinaryHeap::new(),
        slots: Vec::new(),
        free: Vec::new(),
        seq: 0,
        trips: HashMap::new(),
        trip_of_request: HashMap::new(),
        on_trip: vec![false; src.drivers.len()],
        keys: Keys::default(),
        online_since: HashMap::new(),
        total: Acc::default(),
        hours: (0..24).map(|_| Acc::default()).collect(),
        open: 0,
        events: 0,
        utc: i64::from(config.eta.utc_offset_hours),
    };
    let mut i = 0;
    let mut now = src.inputs.first().map_or(0, |x| x.0);
    loop {
        let next_input = src.inputs.get(i).map(|x| x.0);
        let next_act = sim.acts.peek().map(|r| r.0.0);
        if next_input.is_none() && next_act.is_none() && sim.open == 0 {
            break;
        }
        let next_deadline = sim.d.next_deadline_ms();
        let Some(at) = [next_input, next_act, next_deadline]
            .into_iter()
            .flatten()
            .min()
        else {
            break;
        };
        now = now.max(at);
        sim.d.fire_due(now);
        sim.drain(now);
        while let Some((at, exo)) = src.inputs.get(i) {
            if *at > now {
                break;
            }
            sim.input(now, exo);
            sim.drain(now);
            i += 1;
        }
        while sim.acts.peek().is_some_and(|r| r.0.0 <= now) {
            let Some(act) = sim.pop_act() else {
                break;
            };
            sim.act(now, act);
            sim.drain(now);
        }
    }
    for (driver, since) in std::mem::take(&mut sim.online_since) {
        sim.online(&driver, since, now);
    }
    RunStats {
        total: sim.total.stats(),
        hours: sim.hours.iter().map(Acc::stats).collect(),
        events: sim.events,
    }
}

impl Sim<'_> {
    fn push(&mut self, at: u64, act: Act) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(act);
                slot
            }
            None => {
                self.slots.push(Some(act));
                (self.slots.len() - 1) as u32
            }
        };
        self.acts.push(Reverse((at, self.seq, slot)));
    }

    fn pop_act(&mut self) -> Option<Act> {
        let Reverse((_, _, slot)) = self.acts.pop()?;
        self.free.push(slot);
        self.slots[slot as usize].take()
    }

    fn input(&mut self, now: u64, exo: &Exo) {
        match exo {
            Exo::Locations(updates) => {
                for &(i, position) in updates {
                    if !self.on_trip.get(i as usize).copied().unwrap_or(false) {
                        self.keys
                            .apply(&mut self.d, self.src.drivers.names(), i, position);
                    }
                }
            }
            Exo::Input(input) => {
                let entry = Entry {
                    now_ms: now,
                    input: input.clone(),
                };
                let _ = dispatch::replay::apply(&mut self.d, &entry);
            }
            Exo::Request(n, input) => {
                let Some(req) = dispatch::replay::trip_request(input) else {
                    return;
                };
                let (pickup, dropoff) = (req.pickup, req.dropoff);
                self.d.fire_due(now);
                if let Ok((trip, false)) = self.d.request_trip(now, req) {
                    let hour = hour_of(now, self.utc);
                    self.total.requests += 1;
                    self.hours[hour].requests += 1;
                    self.open += 1;
                    self.trip_of_request.insert(*n, trip.id);
                    self.trips.insert(
                        trip.id,
                        TripRec {
                            n: *n,
                            hour,
                            requested_at: now,
                            offered: false,
                            pickup,
                            dropoff,
                            assigned_at: None,
                        },
                    );
                }
            }
            Exo::Cancel(n, rider) => {
                if let Some(trip) = self.trip_of_request.get(n) {
                    self.d.fire_due(now);
                    let _ = self.d.cancel_trip(now, *trip, rider);
                }
            }
        }
    }

    fn act(&mut self, now: u64, act: Act) {
        self.d.fire_due(now);
        match act {
            // A late answer (the offer expired or was withdrawn meanwhile) is refused: fine.
            Act::Respond(offer, driver, accept) => {
                let _ = self.d.respond(now, offer, &driver, accept);
            }
            Act::Step(trip, driver, step) => {
                let action = match step {
                    0 => {
                        if let Some(rec) = self.trips.get(&trip) {
                            let _ = self.d.apply_location(driver.as_str(), rec.pickup);
                        }
                        TripAction::Arrive
                    }
                    1 => TripAction::Start,
                    _ => TripAction::Complete,
                };
                let _ = self.d.trip_action(now, trip, &driver, action);
            }
        }
    }

    fn drain(&mut self, now: u64) {
        for e in self.d.take_events() {
            self.events += 1;
            self.event(now, e);
        }
    }

    fn event(&mut self, now: u64, e: Event) {
        match e.kind {
            EventKind::DriverOnline { driver, .. } => {
                self.online_since
                    .insert(driver.as_str().to_string(), e.at_ms);
            }
            EventKind::DriverJoinedRegion(j) => {
                self.online_since
                    .insert(j.driver.as_str().to_string(), e.at_ms);
            }
            EventKind::DriverOffline { driver } | EventKind::DriverLeftRegion { driver, .. } => {
                if let Some(since) = self.online_since.remove(driver.as_str()) {
                    self.online(driver.as_str(), since, e.at_ms);
                }
            }
            EventKind::OfferSent(o) => {
                let Some(rec) = self.trips.get_mut(&o.trip) else {
                    return;
                };
                self.total.offers += 1;
                self.hours[rec.hour].offers += 1;
                if !rec.offered {
                    rec.offered = true;
                    let ms = (e.at_ms - rec.requested_at) as f64;
                    self.total.to_offer_ms.push(ms);
                    self.hours[rec.hour].to_offer_ms.push(ms);
                }
                let n = rec.n;
                match self.src.facts.answer(n, o.driver.as_str(), &mut self.rng) {
                    Answer::Accept(ms) => {
                        self.push(now + ms, Act::Respond(o.offer, o.driver.clone(), true))
                    }
                    Answer::Decline(ms) => {
                        self.push(now + ms, Act::Respond(o.offer, o.driver.clone(), false))
                    }
                    Answer::Ignore => {}
                }
            }
            EventKind::TripAssigned {
                trip,
                driver,
                pickup_eta_s,
                ..
            } => {
                let Some(rec) = self.trips.get_mut(&trip) else {
                    return;
                };
                rec.assigned_at = Some(e.at_ms);
                let (pickup_ms, boarding_ms, ride_ms) = self.src.facts.legs(
                    rec.n,
                    driver.as_str(),
                    pickup_eta_s,
                    rec.pickup,
                    rec.dropoff,
                );
                let hour = rec.hour;
                for acc in [&mut self.total, &mut self.hours[hour]] {
                    acc.matched += 1;
                    acc.etas_s.push(pickup_eta_s);
                    acc.actual_s.push(pickup_ms as f64 / 1000.0);
                }
                self.set_on_trip(driver.as_str(), true);
                let arrive = e.at_ms + pickup_ms;
                self.push(arrive, Act::Step(trip, driver.clone(), 0));
                self.push(arrive + boarding_ms, Act::Step(trip, driver.clone(), 1));
                self.push(arrive + boarding_ms + ride_ms, Act::Step(trip, driver, 2));
            }
            EventKind::TripCompleted { trip, driver } => {
                self.end_trip(trip, Some(&driver), e.at_ms);
                if let Some(rec) = self.trips.get(&trip) {
                    let hour = rec.hour;
                    let name = driver.as_str().to_string();
                    *self.total.driver_trips.entry(name.clone()).or_default() += 1;
                    *self.hours[hour].driver_trips.entry(name).or_default() += 1;
                }
            }
            EventKind::TripCancelled { trip, driver, .. } => {
                if let Some(rec) = self.trips.get(&trip) {
                    let hour = rec.hour;
                    self.total.cancellations += 1;
                    self.hours[hour].cancellations += 1;
                }
                self.end_trip(trip, driver.as_ref(), e.at_ms);
            }
            EventKind::NoDrivers { trip, .. } => {
                if let Some(rec) = self.trips.get(&trip) {
                    let hour = rec.hour;
                    self.total.no_drivers += 1;
                    self.hours[hour].no_drivers += 1;
                }
                self.end_trip(trip, None, e.at_ms);
            }
            _ => {}
        }
    }

    fn end_trip(&mut self, trip: TripId, driver: Option<&ExternalId>, at: u64) {
        let Some(rec) = self.trips.get(&trip) else {
            return;
        };
        self.open = self.open.saturating_sub(1);
        if let (Some(driver), Some(from)) = (driver, rec.assigned_at) {
            self.set_on_trip(driver.as_str(), false);
            let (total, hours, utc) = (&mut self.total, &mut self.hours, self.utc);
            total.busy_ms += at.saturating_sub(from);
            split_by_hour(from, at, utc, |h, ms| hours[h].busy_ms += ms);
        }
    }

    fn set_on_trip(&mut self, driver: &str, on: bool) {
        if let Some(slot) = self
            .src
            .drivers
            .get(driver)
            .and_then(|i| self.on_trip.get_mut(i as usize))
        {
            *slot = on;
        }
    }

    /// A driver was online over `[from, to)`.
    fn online(&mut self, driver: &str, from: u64, to: u64) {
        self.total.online_ms += to.saturating_sub(from);
        self.total
            .driver_trips
            .entry(driver.to_string())
            .or_default();
        let (hours, utc) = (&mut self.hours, self.utc);
        split_by_hour(from, to, utc, |h, ms| {
            hours[h].online_ms += ms;
            hours[h].driver_trips.entry(driver.to_string()).or_default();
        });
    }
}
