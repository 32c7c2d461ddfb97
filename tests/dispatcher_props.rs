//! Property tests: random command sequences (with a manual clock) through the dispatcher.
//!
//! After every step the dispatcher's own cross-record invariants must hold. Over the whole
//! event stream: offsets are gap-free; a driver never holds two offers or two trips at once; a
//! trip never has two pending offers or two drivers; every offer ends exactly once; every trip
//! ends at most once and the open ones are exactly those without an end. And the same inputs
//! replay to the same events (the dispatcher is deterministic), replaying the events into a
//! fresh dispatcher (crash recovery) rebuilds the same `DispatchState` (its durable digest),
//! and from there the recovered engine fires the same deadlines into the same events. So does
//! one restored from a snapshot taken halfway (encoded and decoded) plus the events after it.
//!
//! Everything runs twice: under the greedy policy and under the batch policy (requests wait for
//! a 500 ms window and are paired by the assignment solver), where every trip request and
//! assignment must also say it was matched by the batch policy.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dispatch::config::Config;
use dispatch::domain::{ExternalId, LatLng, OfferId, Rating, TripId, VehicleClass};
use dispatch::engine::{Dispatcher, GoOnline, TripAction, TripRequest};
use dispatch::events::{Event, EventKind, MatchPolicy, TripStatus};
use proptest::prelude::*;

const DRIVERS: u8 = 8;
const RIDERS: u8 = 6;
const T0: u64 = 1_700_000_000_000;

#[derive(Clone, Debug)]
enum Op {
    Online {
        driver: u8,
        north_m: u16,
        rating_tenths: u8,
        class: u8,
    },
    Offline {
        driver: u8,
    },
    Move {
        driver: u8,
        north_m: u16,
    },
    Request {
        rider: u8,
        request_id: Option<u8>,
        class: u8,
    },
    Respond {
        pick: u8,
        wrong_driver: bool,
        stale: bool,
        accept: bool,
    },
    Act {
        pick: u8,
        action: u8,
        wrong_driver: bool,
    },
    Cancel {
        pick: u8,
        wrong_rider: bool,
    },
    Advance {
        ms: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..DRIVERS, 0u16..8_000, 10u8..=50, 0u8..3).prop_map(|(driver, north_m, rating_tenths, class)| Op::Online { driver, north_m, rating_tenths, class }),
        1 => (0..DRIVERS).prop_map(|driver| Op::Offline { driver }),
        2 => (0..DRIVERS, 0u16..8_000).prop_map(|(driver, north_m)| Op::Move { driver, north_m }),
        3 => (0..RIDERS, proptest::option::of(0u8..4), 0u8..3).prop_map(|(rider, request_id, class)| Op::Request { rider, request_id, class }),
        4 => (any::<u8>(), proptest::bool::weighted(0.1), proptest::bool::weighted(0.1), any::<bool>()).prop_map(|(pick, wrong_driver, stale, accept)| Op::Respond { pick, wrong_driver, stale, accept }),
        3 => (any::<u8>(), 0u8..4, proptest::bool::weighted(0.1)).prop_map(|(pick, action, wrong_driver)| Op::Act { pick, action, wrong_driver }),
        1 => (any::<u8>(), proptest::bool::weighted(0.2)).prop_map(|(pick, wrong_rider)| Op::Cancel { pick, wrong_rider }),
        2 => (0u32..40_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn id(prefix: &str, n: u8) -> ExternalId {
    ExternalId::new("id", &format!("{prefix}-{n}")).unwrap()
}

fn class(n: u8) -> VehicleClass {
    [
        VehicleClass::Any,
        VehicleClass::Economy,
        VehicleClass::Comfort,
    ][n as usize % 3]
}

fn config(policy: MatchPolicy) -> Config {
    let mut c = Config::default();
    c.dispatch.policy = policy;
    c.dispatch.batch_window = Duration::from_millis(500);
    c.dispatch.dispatch_timeout = Duration::from_secs(60);
    c.dispatch.trip_retention = Duration::from_secs(30);
    c.dispatch.ended_offer_memory = 4;
    c
}

/// Runs the ops; returns every event, checking the dispatcher's invariants after each step.
fn run(ops: &[Op], policy: MatchPolicy) -> Result<Vec<Event>, TestCaseError> {
    let mut d = Dispatcher::new(&config(policy), dispatch::index::default_index(), 0);
    let mut now = T0;
    let mut events = Vec::new();
    let mut trips: Vec<TripId> = Vec::new();
    let mut ended_offers: Vec<OfferId> = Vec::new();
    let mut watched: Vec<(dispatch::engine::Trip, u64)> = Vec::new();
    let base = (40.75, -73.99);
    let mut snapshot = None;
    for (step, op) in ops.iter().enumerate() {
        if step == ops.len() / 2 {
            // A snapshot between two commands, as the runner takes one at a group boundary.
            snapshot = Some(dispatch::engine::snapshot::encode(&d.state().image()));
        }
        d.fire_due(now);
        match op {
            Op::Online {
                driver,
                north_m,
                rating_tenths,
                class: c,
            } => {
                let _ = d.go_online(
                    now,
                    GoOnline {
                        driver: id("d", *driver),
                        position: LatLng::new(base.0 + f64::from(*north_m) / 111_195.0, base.1)
                            .unwrap(),
                        rating: Rating::new(f64::from(*rating_tenths) / 10.0).unwrap(),
                        class: class(*c),
                        // A repeated GoOnline may move the driver to another gateway.
                        gateway: Some(id("gw", (driver + rating_tenths) % 3)),
                    },
                );
            }
            Op::Offline { driver } => {
                let _ = d.go_offline(now, &id("d", *driver));
            }
            Op::Move { driver, north_m } => {
                let p =
                    LatLng::new(base.0 + f64::from(*north_m) / 111_195.0, base.1 + 0.001).unwrap();
                let _ = d.update_location(&id("d", *driver), p);
            }
            Op::Request {
                rider,
                request_id,
                class: c,
            } => {
                let req = TripRequest {
                    rider: id("r", *rider),
                    request_id: request_id.map(|n| id("q", n)),
                    pickup: LatLng::new(base.0, base.1).unwrap(),
                    dropoff: LatLng::new(base.0 + 0.02, base.1 + 0.02).unwrap(),
                    class: class(*c),
                };
                if let Ok((trip, false)) = d.request_trip(now, req) {
                    trips.push(trip.id);
                    // A watcher as WatchTrip starts one: the snapshot, then every event from
                    // the next offset on.
                    watched.push((trip, d.next_offset()));
                }
            }
            Op::Respond {
                pick,
                wrong_driver,
                stale,
                accept,
            } => {
                let pending = d.pending_offers(None);
                // (offer, driver, whether the answer must be refused)
                let target = if *stale && !ended_offers.is_empty() {
                    Some((
                        ended_offers[*pick as usize % ended_offers.len()],
                        id("d", 0),
                        true,
                    ))
                } else if pending.is_empty() {
                    None
                } else {
                    let o = &pending[*pick as usize % pending.len()];
                    let driver = if *wrong_driver {
                        id("d", 99)
                    } else {
                        o.driver.clone()
                    };
                    Some((o.offer, driver, *wrong_driver))
                };
                if let Some((offer, driver, must_fail)) = target {
                    let result = d.respond(now, offer, &driver, *accept);
                    if must_fail {
                        prop_assert!(result.is_err(), "stale or foreign answer accepted: {op:?}");
                    } else {
                        prop_assert!(result.is_ok(), "valid answer refused: {result:?}");
                        ended_offers.push(offer);
                    }
                }
            }
            Op::Act {
                pick,
                action,
                wrong_driver,
            } => {
                // Prefer trips with an assigned driver, so lifecycles run to completion.
                let assigned: Vec<TripId> = trips
                    .iter()
                    .copied()
                    .filter(|t| {
                        d.trip(*t).is_ok_and(|t| {
                            matches!(
                                t.status,
                                TripStatus::Accepted | TripStatus::Arrived | TripStatus::InProgress
                            )
                        })
                    })
                    .collect();
                let pool = if assigned.is_empty() || pick % 8 == 0 {
                    &trips
                } else {
                    &assigned
                };
                if !pool.is_empty() {
                    let trip = pool[*pick as usize % pool.len()];
                    let Ok(t) = d.trip(trip) else { continue };
                    let driver = t.driver;
                    let driver = if *wrong_driver {
                        Some(id("d", 98))
                    } else {
                        driver
                    };
                    // Mostly the trip's next step, sometimes a cancel, sometimes out of turn.
                    let next = match t.status {
                        TripStatus::Accepted => TripAction::Arrive,
                        TripStatus::Arrived => TripAction::Start,
                        _ => TripAction::Complete,
                    };
                    let action = match action {
                        0 | 1 => next,
                        2 => TripAction::Cancel,
                        _ => TripAction::Arrive,
                    };
                    if let Some(driver) = driver {
                        let _ = d.trip_action(now, trip, &driver, action);
                    }
                }
            }
            Op::Cancel { pick, wrong_rider } => {
                if !trips.is_empty() {
                    let trip = trips[*pick as usize % trips.len()];
                    if let Ok(t) = d.trip(trip) {
                        let rider = if *wrong_rider { id("r", 77) } else { t.rider };
                        let result = d.cancel_trip(now, trip, &rider);
                        if *wrong_rider {
                            prop_assert!(result.is_err());
                        }
                    }
                }
            }
            Op::Advance { ms } => {
                now += u64::from(*ms);
                d.fire_due(now);
            }
        }
        if let Err(broken) = d.check_invariants() {
            return Err(TestCaseError::fail(format!("after {op:?}: {broken}")));
        }
        let new = d.take_events();
        // One trip fold: a watched copy folded from the events equals the state's trip.
        for (copy, from) in &mut watched {
            for e in new.iter().filter(|e| e.offset >= *from) {
                copy.apply(e);
            }
            if let Ok(t) = d.trip(copy.id) {
                prop_assert_eq!(&*copy, &t, "watched snapshot diverged from the trip");
            }
        }
        events.extend(new);
    }
    // Crash here: a fresh dispatcher replaying the events must hold the same durable state.
    let mut recovered = Dispatcher::new(&config(policy), dispatch::index::default_index(), 0);
    for e in &events {
        recovered
            .replay(e)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    // As at a real start: fire what fell due (here: forgetting ended trips). The original
    // already fired every deadline up to `now`, so this must not produce a single event.
    recovered.fire_due(now);
    prop_assert!(
        recovered.take_events().is_empty(),
        "replay fired an overdue deadline"
    );
    // replay(log) == state, over the whole `DispatchState` (every durable field, deadlines
    // and the pending batch included).
    prop_assert_eq!(
        recovered.state().durable_digest(),
        d.state().durable_digest(),
        "replay diverged"
    );
    if let Err(broken) = recovered.check_invariants() {
        return Err(TestCaseError::fail(format!("after replay: {broken}")));
    }
    // Recovery from the snapshot plus the log after it rebuilds the same state.
    let mut restored = from_snapshot(snapshot.as_deref(), &events, policy)?;
    restored.fire_due(now);
    prop_assert!(
        restored.take_events().is_empty(),
        "snapshot recovery fired an overdue deadline"
    );
    prop_assert_eq!(
        restored.state().durable_digest(),
        d.state().durable_digest(),
        "snapshot + tail diverged from the state"
    );
    let crash_at = now;

    // Let every remaining deadline pass: all offers expire and every trip that is still
    // searching reaches its dispatch deadline. The recovered engine gets there too.
    now += 3_600_000;
    let tail_from = events.len();
    d.fire_due(now);
    events.extend(d.take_events());
    report_positions(&d, &mut recovered);
    recovered.finish_recovery(crash_at);
    recovered.fire_due(now);
    report_positions(&d, &mut restored);
    restored.finish_recovery(crash_at);
    restored.fire_due(now);
    // The snapshot-restored engine fires the same events in the same order too.
    prop_assert_eq!(
        &restored.take_events()[..],
        &events[tail_from..],
        "snapshot recovery fired other events"
    );
    prop_assert_eq!(
        restored.state().durable_digest(),
        d.state().durable_digest(),
        "snapshot recovery diverged"
    );
    // Every deadline is durable, so the recovered engine fires exactly what the original
    // fires, in the same order: the same events and the same state.
    let recovered_tail = recovered.take_events();
    prop_assert_eq!(
        &recovered_tail[..],
        &events[tail_from..],
        "recovery fired other events"
    );
    prop_assert_eq!(
        recovered.state().durable_digest(),
        d.state().durable_digest(),
        "recovery diverged"
    );
    if let Err(broken) = d.check_invariants() {
        return Err(TestCaseError::fail(format!(
            "after the final drain: {broken}"
        )));
    }
    check_stream(&events, &d, policy)?;
    Ok(events)
}

/// A dispatcher restored from an encoded snapshot, then fed the events from its offset on.
/// Positions are not durable (location reports are not events; a `Move` changes no state a
/// log holds), so a recovered engine has each driver where its last event or the snapshot put
/// it, and decisions that read positions (which waiting trip a freed driver serves, who is
/// nearest) could differ. In production the fleet re-reports within seconds of a restart; here
/// `to` gets the positions `from` has now, so what the tail checks is what is durable: every
/// deadline fires at its time and in its order, into the same events.
fn report_positions(from: &Dispatcher, to: &mut Dispatcher) {
    for n in 0..DRIVERS {
        if let Ok(driver) = from.driver(id("d", n).as_str()) {
            // Refused for an offline driver, as it would be in the original.
            let _ = to.apply_location(driver.id.as_str(), driver.position);
        }
    }
}

fn from_snapshot(
    bytes: Option<&[u8]>,
    events: &[Event],
    policy: MatchPolicy,
) -> Result<Dispatcher, TestCaseError> {
    let fail = |e: String| TestCaseError::fail(e);
    let image =
        dispatch::engine::snapshot::decode(bytes.ok_or_else(|| fail("no snapshot".into()))?)
            .map_err(fail)?;
    let from = image.next_offset();
    let mut restored = Dispatcher::new(&config(policy), dispatch::index::default_index(), 0);
    restored.restore(image).map_err(fail)?;
    for e in events.iter().filter(|e| e.offset >= from) {
        restored.replay(e).map_err(|e| fail(e.to_string()))?;
    }
    Ok(restored)
}

/// Lifecycle properties over the event stream alone.
fn check_stream(
    events: &[Event],
    d: &Dispatcher,
    policy: MatchPolicy,
) -> Result<(), TestCaseError> {
    let mut offer_of_driver: HashMap<ExternalId, OfferId> = HashMap::new();
    let mut trip_of_driver: HashMap<ExternalId, TripId> = HashMap::new();
    let mut offer_of_trip: HashMap<TripId, OfferId> = HashMap::new();
    let mut driver_of_trip: HashMap<TripId, ExternalId> = HashMap::new();
    let mut offers_open: HashSet<OfferId> = HashSet::new();
    let mut offers_ended: HashSet<OfferId> = HashSet::new();
    let mut trips_open: HashSet<TripId> = HashSet::new();
    let mut trips_ended: HashSet<TripId> = HashSet::new();
    for (i, e) in events.iter().enumerate() {
        prop_assert_eq!(e.offset, i as u64, "offsets must be gap-free");
        match &e.kind {
            EventKind::TripRequested {
                trip, policy: p, ..
            } => {
                prop_assert!(trips_open.insert(*trip), "trip {} requested twice", trip);
                prop_assert_eq!(*p, policy);
            }
            EventKind::OfferSent(o) => {
                prop_assert!(offers_open.insert(o.offer), "offer {} sent twice", o.offer);
                prop_assert!(
                    trips_open.contains(&o.trip),
                    "offer for a trip that is not open"
                );
                prop_assert!(
                    offer_of_driver.insert(o.driver.clone(), o.offer).is_none(),
                    "driver {} holds two offers",
                    o.driver
                );
                prop_assert!(
                    !trip_of_driver.contains_key(&o.driver),
                    "driver {} offered while on a trip",
                    o.driver
                );
                prop_assert!(
                    offer_of_trip.insert(o.trip, o.offer).is_none(),
                    "trip {} has two pending offers",
                    o.trip
                );
                prop_assert!(
                    !driver_of_trip.contains_key(&o.trip),
                    "assigned trip {} offered again",
                    o.trip
                );
            }
            EventKind::OfferAccepted(o)
            | EventKind::OfferDeclined(o)
            | EventKind::OfferExpired(o)
            | EventKind::OfferCancelled(o, _) => {
                prop_assert!(
                    offers_open.remove(&o.offer),
                    "offer {} ended without being open",
                    o.offer
                );
                prop_assert!(
                    offers_ended.insert(o.offer),
                    "offer {} ended twice",
                    o.offer
                );
                offer_of_driver.remove(&o.driver);
                offer_of_trip.remove(&o.trip);
            }
            EventKind::TripAssigned {
                trip,
                driver,
                policy: p,
                ..
            } => {
                prop_assert_eq!(*p, policy);
                prop_assert!(
                    driver_of_trip.insert(*trip, driver.clone()).is_none(),
                    "trip {} has two drivers",
                    trip
                );
                prop_assert!(
                    trip_of_driver.insert(driver.clone(), *trip).is_none(),
                    "driver {} on two trips",
                    driver
                );
            }
            EventKind::TripCompleted { trip, .. }
            | EventKind::TripCancelled { trip, .. }
            | EventKind::NoDrivers { trip, .. } => {
                prop_assert!(
                    trips_open.remove(trip),
                    "trip {} ended without being open",
                    trip
                );
                prop_assert!(trips_ended.insert(*trip), "trip {} ended twice", trip);
                prop_assert!(
                    !offer_of_trip.contains_key(trip),
                    "trip {} ended with a pending offer",
                    trip
                );
                if let Some(driver) = driver_of_trip.remove(trip) {
                    trip_of_driver.remove(&driver);
                }
            }
            EventKind::DriverOffline { driver } | EventKind::DriverLeftRegion { driver, .. } => {
                prop_assert!(
                    !offer_of_driver.contains_key(driver) && !trip_of_driver.contains_key(driver),
                    "driver {} went offline while busy",
                    driver
                );
            }
            // A single dispatcher never moves drivers between regions.
            EventKind::DriverJoinedRegion(_) => {}
            EventKind::SearchRetryScheduled { trip, retry_at_ms } => {
                prop_assert!(
                    trips_open.contains(trip),
                    "retry of a trip that is not open"
                );
                prop_assert!(
                    !offer_of_trip.contains_key(trip) && !driver_of_trip.contains_key(trip),
                    "retry of trip {} that is not searching",
                    trip
                );
                prop_assert!(*retry_at_ms > e.at_ms, "a retry must lie ahead");
            }
            EventKind::BatchFlushed {
                next_flush_at_ms, ..
            } => {
                prop_assert_eq!(policy, MatchPolicy::Batch);
                prop_assert!(*next_flush_at_ms > e.at_ms, "a flush must lie ahead");
            }
            EventKind::DriverOnline { .. }
            | EventKind::DriverProfileUpdated { .. }
            | EventKind::DriverArrived { .. }
            | EventKind::TripStarted { .. } => {}
            // Only a cluster member taking a region writes one, never the dispatcher.
            EventKind::RegionTakenOver { .. } => {
                prop_assert!(false, "the dispatcher wrote a takeover at {}", e.offset)
            }
        }
    }
    // After the final drain no offer can still be pending, and the open trips are exactly the
    // assigned ones that nobody finished.
    prop_assert!(
        offers_open.is_empty(),
        "offers never ended: {:?}",
        offers_open
    );
    prop_assert_eq!(d.stats().pending_offers, 0);
    prop_assert_eq!(d.stats().open_trips, trips_open.len() as u64);
    for trip in &trips_open {
        prop_assert!(
            driver_of_trip.contains_key(trip),
            "trip {} still open but unassigned",
            trip
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300), ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_every_invariant(ops in proptest::collection::vec(op(), 1..80)) {
        let first = run(&ops, MatchPolicy::Greedy)?;
        let again = run(&ops, MatchPolicy::Greedy)?;
        prop_assert_eq!(first, again, "the same inputs must replay to the same events");
    }

    #[test]
    fn batch_policy_random_command_sequences_keep_every_invariant(
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let first = run(&ops, MatchPolicy::Batch)?;
        let again = run(&ops, MatchPolicy::Batch)?;
        prop_assert_eq!(first, again, "the same inputs must replay to the same events");
    }
}
