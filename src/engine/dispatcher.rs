//! The dispatcher: decisions over a [`DispatchState`], and the loop that applies them.
//!
//! It is a plain synchronous state machine. Its only inputs are method calls and the `now_ms`
//! each call is handed; it never reads a clock, spawns, locks or waits. So one thread can own
//! it without locks (no driver can be offered two trips by a race), tests drive it directly
//! with a manual clock, and the same inputs always produce the same state and the same events.
//!
//! State and decisions are separate types. A decision (the child modules: `drivers`, `trips`,
//! `offers`, `search`, `batch`, `timers`, `moves`) runs on a [`Decide`], which holds the state by shared
//! reference only, and pushes the events it decides; the compiler, not a convention, keeps it
//! from changing state. [`Dispatcher::decide`] then applies each decided event through
//! [`DispatchState::apply`] (the state's only mutator) before the next decision runs, so a
//! cascade (decline, then search again) sees the state the decline left. Recovery applies the
//! logged events through the same `apply`, so the log reproduces the state that wrote it.
//!
//! The scratch buffers of the candidate search belong to the decision side: they carry nothing
//! from one decision to the next.

mod batch;
mod drivers;
mod moves;
mod offers;
mod search;
mod timers;
mod trips;
pub mod view;

use std::sync::Arc;

use super::records::{Driver, Stats, Trip};
use super::state::DispatchState;
use crate::config::Config;
use crate::domain::{DriverKey, ExternalId, LatLng, Rating, TripId, VehicleClass};
use crate::error::Error;
use crate::events::{Event, EventKind, MatchPolicy, OfferDetails};
use crate::index::{Neighbor, SpatialIndex};
use crate::matching::{EtaModel, Scorer};
use crate::surge::SurgeReading;

pub use super::records::LocationRejection;
pub(crate) use offers::offer_ref;
pub(crate) use search::Choice;

/// Input of [`Dispatcher::go_online`].
#[derive(Clone, Debug)]
pub struct GoOnline {
    /// The driver.
    pub driver: ExternalId,
    /// Where the driver is.
    pub position: LatLng,
    /// Rating.
    pub rating: Rating,
    /// Vehicle class.
    pub class: VehicleClass,
    /// Gateway that routes the driver's offers.
    pub gateway: Option<ExternalId>,
}

/// Input of [`Dispatcher::request_trip`].
#[derive(Clone, Debug)]
pub struct TripRequest {
    /// Who asks.
    pub rider: ExternalId,
    /// Idempotency key.
    pub request_id: Option<ExternalId>,
    /// Pickup.
    pub pickup: LatLng,
    /// Drop-off.
    pub dropoff: LatLng,
    /// Requested class (`Any` for any).
    pub class: VehicleClass,
}

/// A driver's step through an assigned trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TripAction {
    /// ACCEPTED -> ARRIVED.
    Arrive,
    /// ARRIVED -> IN_PROGRESS.
    Start,
    /// IN_PROGRESS -> COMPLETED; the driver is free at the drop-off.
    Complete,
    /// Any assigned state -> CANCELLED by the driver.
    Cancel,
}

impl TripAction {
    /// The verb error messages use ("cannot start trip ...").
    pub(crate) fn verb(self) -> &'static str {
        match self {
            TripAction::Arrive => "mark arrival for",
            TripAction::Start => "start",
            TripAction::Complete => "complete",
            TripAction::Cancel => "cancel",
        }
    }
}

/// The settings decisions follow.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    pub(crate) search_radius_m: f64,
    pub(crate) max_candidates: usize,
    pub(crate) offer_timeout_ms: u64,
    pub(crate) retry_interval_ms: u64,
    pub(crate) dispatch_timeout_ms: u64,
    pub(crate) policy: MatchPolicy,
}

/// Reusable buffers of the candidate search (decision side, never state).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub(crate) neighbors: Vec<Neighbor>,
    pub(crate) choices: Vec<Choice>,
    /// The candidates' positions and straight-line distances, for one many-to-one ETA call.
    pub(crate) from: Vec<(LatLng, f64)>,
    /// Their ETAs, in the same order.
    pub(crate) etas: Vec<crate::matching::Eta>,
}

/// What a decision sees and where its events go. It holds the state by shared reference, so
/// a decision can read anything and change nothing.
pub(crate) struct Decide<'a> {
    pub(crate) s: &'a DispatchState,
    pub(crate) rules: &'a Rules,
    pub(crate) eta: &'a dyn EtaModel,
    pub(crate) scorer: &'a Scorer,
    pub(crate) scratch: &'a mut Scratch,
    pub(crate) now_ms: u64,
    out: &'a mut Vec<EventKind>,
}

impl Decide<'_> {
    /// Decides an event; it is applied after the decision returns.
    pub(crate) fn emit(&mut self, kind: EventKind) {
        self.out.push(kind);
    }

    /// The offset the next decided event will get (ids of trips and offers are the offsets of
    /// the events that create them).
    pub(crate) fn next_offset(&self) -> u64 {
        self.s.next_offset() + self.out.len() as u64
    }
}

/// The dispatch state plus the decisions over it. See the module docs.
pub struct Dispatcher {
    state: DispatchState,
    rules: Rules,
    eta: Box<dyn EtaModel>,
    scorer: Scorer,
    scratch: Scratch,
    decided: Vec<EventKind>,
    events: Vec<Event>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("state", &self.state)
            .field("unpublished", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// An empty dispatcher whose first event gets `first_offset`.
    pub fn new(config: &Config, index: Box<dyn SpatialIndex>, first_offset: u64) -> Self {
        let d = &config.dispatch;
        Dispatcher {
            state: DispatchState::new(config, index, first_offset),
            rules: Rules {
                search_radius_m: d.search_radius_m,
                max_candidates: d.max_candidates,
                offer_timeout_ms: d.offer_timeout.as_millis() as u64,
                retry_interval_ms: (d.retry_interval.as_millis() as u64).max(1),
                dispatch_timeout_ms: d.dispatch_timeout.as_millis() as u64,
                policy: d.policy,
            },
            // The one place the ETA model is chosen; only the candidate search uses it.
            eta: crate::eta::model_or_fallback(config),
            scorer: Scorer::new(config.scoring.clone()),
            scratch: Scratch {
                neighbors: Vec::with_capacity(64),
                choices: Vec::with_capacity(64),
                from: Vec::with_capacity(64),
                etas: Vec::with_capacity(64),
            },
            decided: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The dispatch state (read-only).
    pub fn state(&self) -> &DispatchState {
        &self.state
    }

    /// Runs one decision at `now_ms`, then applies the events it decided, in order.
    fn decide<T>(&mut self, now_ms: u64, f: impl FnOnce(&mut Decide<'_>) -> T) -> T {
        let mut ctx = Decide {
            s: &self.state,
            rules: &self.rules,
            eta: &*self.eta,
            scorer: &self.scorer,
            scratch: &mut self.scratch,
            now_ms,
            out: &mut self.decided,
        };
        let value = f(&mut ctx);
        for kind in self.decided.drain(..) {
            let event = Event {
                offset: self.state.next_offset(),
                at_ms: now_ms,
                kind,
            };
            self.state.apply(&event);
            self.events.push(event);
        }
        value
    }

    /// After an offer failed and its event was applied: the trip's next step.
    fn search_again(&mut self, now_ms: u64, trip: Option<TripId>) {
        if let Some(trip) = trip {
            self.decide(now_ms, |c| c.continue_search(trip));
        }
    }

    /// After a driver may have become AVAILABLE (a decline, an expiry, a withdrawn offer, a
    /// drop-off, a cancel, going online): the greedy trips waiting near it are searched again
    /// now, oldest first, until the driver holds an offer or no waiting trip could take it, so
    /// a freed driver is offered in the same command instead of on the next retry tick.
    ///
    /// # Runtime
    /// O(w) per trip searched, for w waiting trips (`DispatchState::waiting`), plus one
    /// candidate search per trip searched; the loop ends once the driver is offered, and every
    /// trip it searches leaves the waiting set (its best candidate includes this driver).
    fn serve_waiting(&mut self, now_ms: u64, driver: Option<DriverKey>) {
        let Some(key) = driver else {
            return;
        };
        let mut skip: Vec<TripId> = Vec::new();
        loop {
            let next = self.decide(now_ms, |c| c.next_waiting_for(key, &skip));
            let Some(trip) = next else {
                return;
            };
            skip.push(trip);
            self.decide(now_ms, |c| c.continue_search(trip));
        }
    }

    fn snapshot(&self, key: DriverKey) -> Driver {
        self.state.driver(key)
    }

    fn trip_snapshot(&self, trip: TripId) -> Result<Trip, Error> {
        self.state
            .trip(trip)
            .cloned()
            .ok_or_else(|| unknown_trip(trip))
    }

    // ---------------------------------------------------------------------------------------
    // Reads
    // ---------------------------------------------------------------------------------------

    /// One driver's record.
    pub fn driver(&self, driver: &str) -> Result<Driver, Error> {
        let key = self
            .state
            .driver_key(driver)
            .ok_or_else(|| unknown_driver(driver))?;
        Ok(self.snapshot(key))
    }

    /// One trip's record (open, or ended within the retention).
    pub fn trip(&self, trip_id: TripId) -> Result<Trip, Error> {
        self.trip_snapshot(trip_id)
    }

    /// The surge for `class` at a point (`Any`: the whole market).
    pub fn surge(&mut self, now_ms: u64, point: LatLng, class: VehicleClass) -> SurgeReading {
        self.state.surge_reading(point, class, now_ms)
    }

    /// Counters describing the engine now.
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }

    /// Pending offers routed to `gateway` (all pending offers for `None`), oldest first.
    pub fn pending_offers(&self, gateway: Option<&ExternalId>) -> Vec<Arc<OfferDetails>> {
        self.state.pending_offers(gateway)
    }

    // ---------------------------------------------------------------------------------------
    // Events and recovery
    // ---------------------------------------------------------------------------------------

    /// Takes the events produced since the last call, in offset order.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Whether events are waiting to be taken.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// The offset the next event will get.
    pub fn next_offset(&self) -> u64 {
        self.state.next_offset()
    }

    /// The earliest pending deadline, ms since epoch.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.state.next_deadline_ms()
    }

    /// The lowest event offset recovery needs; see [`DispatchState::oldest_needed_offset`].
    pub fn oldest_needed_offset(&self) -> u64 {
        self.state.oldest_needed_offset()
    }

    /// Rebuilds state from one logged event (recovery). Events must come in offset order, the
    /// first at this dispatcher's `next_offset`.
    pub fn replay(&mut self, event: &Event) -> Result<(), Error> {
        self.state.replay(event)
    }

    /// Starts a fresh dispatcher's offsets at `offset`: recovery from a log whose oldest
    /// segments retention has deleted begins there. Refused once anything has happened.
    pub fn resume_at(&mut self, offset: u64) -> Result<(), Error> {
        if self.has_events() {
            return Err(Error::FailedPrecondition(
                "resume_at is only for a fresh dispatcher".into(),
            ));
        }
        self.state.resume_at(offset)
    }

    /// Restores a fresh dispatcher to the state a snapshot holds; see
    /// [`DispatchState::restore`]. Recovery then replays the log from its offset.
    pub fn restore(&mut self, image: super::state::StateImage) -> Result<(), String> {
        if self.has_events() {
            return Err("a snapshot is only restored into a fresh dispatcher".into());
        }
        self.state.restore(image)
    }

    /// Back to a fresh state, keeping the rules and the index (recovery starting over).
    pub(crate) fn clear_state(&mut self) {
        self.state.clear();
    }

    /// Ends a recovery at `now_ms`. Every deadline came back with the log, so little is left:
    /// a pending batch whose flush fell due while the engine was down waits one fresh window
    /// (its drivers may have moved on), and a searching trip left without a next search (a log
    /// torn inside one command's events) searches now. Call `fire_due` afterwards so offers that
    /// expired meanwhile expire and cascade.
    pub fn finish_recovery(&mut self, now_ms: u64) {
        self.decide(now_ms, |c| c.rearm_overdue_batch());
        for trip in self.state.stranded_trips() {
            self.decide(now_ms, |c| c.continue_search(trip));
        }
    }

    /// Checks the cross-record invariants; see [`DispatchState::check_invariants`].
    pub fn check_invariants(&self) -> Result<(), String> {
        self.state.check_invariants()
    }

    /// The canonical text of the durable state; see [`DispatchState::durable_digest`].
    pub fn durable_digest(&self) -> String {
        self.state.durable_digest()
    }
}

pub(crate) fn unknown_driver(driver: &str) -> Error {
    Error::NotFound(format!("unknown driver {driver}; call GoOnline first"))
}

pub(crate) fn unknown_trip(trip_id: TripId) -> Error {
    Error::NotFound(format!(
        "unknown trip {trip_id} (never issued, or ended and expired from memory)"
    ))
}
