//! The read view: NearbyDrivers, GetSurge and GetDriver answered on the gRPC threads, never
//! as a command through the dispatcher's queue.
//!
//! Why: a read that queues behind trip requests pays two thread hand-offs and a wake-up for a
//! ~3 us index search, and it takes dispatcher time from the writes. Here the dispatcher keeps
//! one copy of what those reads need (an index of the available drivers, each driver's
//! snapshot, the surge demand) behind a reader-writer lock: readers share it; at a group's
//! commit the dispatcher takes it exclusively for as long as applying the group's changes takes
//! (a location group moves at most 256 drivers: tens of microseconds), so a reader waits at most
//! one commit's changes, and the dispatcher at most the queries already running (a few
//! microseconds each). One copy, not two swapped left-right: a moved driver then costs one index
//! write here instead of two, and that second write was most of what the view cost the
//! dispatcher thread (measured in the city run: the view's publish was ~21 % of the thread).
//!
//! Freshness: the view is published before a group's replies go out, so a caller who got an
//! answer (GoOnline, a location batch's outcome, an offer) reads its own change; the view lags
//! the dispatcher by at most the group being executed. Changes are copied per driver touched
//! (a location update or an event naming the driver), so a group costs the dispatcher
//! O(drivers touched), not O(drivers); a driver that only moved copies its position, not its
//! record.

use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard};
use rustc_hash::FxHashMap;
use tokio::sync::oneshot;

use super::command::{LocationBatch, LocationOutcome};
use super::dispatcher::{Dispatcher, unknown_driver};
use super::records::{Driver, NearbyDriver};
use crate::clock::Clock;
use crate::config::Config;
use crate::domain::{DriverKey, ExternalId, LatLng, VehicleClass};
use crate::error::Error;
use crate::events::{Event, EventKind};
use crate::index::{GridIndex, SpatialIndex};
use crate::matching::EtaModel;
use crate::surge::{SurgeReading, SurgeTracker};

/// How often the copies drop surge cells with no request in the window, ms of engine time.
const SURGE_SWEEP_MS: u64 = 60_000;

/// One change to the copy.
#[derive(Debug, Clone)]
enum Op {
    /// A driver's snapshot, and its index position while it is AVAILABLE.
    Driver {
        key: DriverKey,
        driver: Driver,
        indexed: Option<LatLng>,
    },
    /// A driver that only moved since the last publish (a location report): its position, and
    /// its index entry while it is AVAILABLE. Cheaper than [`Op::Driver`]: no record copied.
    Moved {
        key: DriverKey,
        position: LatLng,
        indexed: bool,
    },
    /// A new trip request counted in the surge demand.
    Demand {
        pickup: LatLng,
        class: VehicleClass,
        at_ms: u64,
    },
    /// Drop surge cells idle for a window.
    Sweep(u64),
}

/// What the reads need.
#[derive(Debug)]
struct Copy {
    index: GridIndex,
    drivers: Vec<Option<Driver>>,
    /// Each driver's class, apart from the records: the search filter reads one byte per
    /// candidate instead of a record's cache line (the filter was ~6 % of a query's CPU).
    classes: Vec<VehicleClass>,
    ids: FxHashMap<ExternalId, DriverKey>,
    surge: SurgeTracker,
}

impl Copy {
    fn new(config: &Config) -> Copy {
        Copy {
            index: GridIndex::new(),
            drivers: Vec::new(),
            classes: Vec::new(),
            ids: FxHashMap::default(),
            surge: SurgeTracker::new(config.surge.clone()),
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Driver {
                key,
                driver,
                indexed,
            } => {
                let i = key.0 as usize;
                if self.drivers.len() <= i {
                    self.drivers.resize(i + 1, None);
                    self.classes.resize(i + 1, VehicleClass::Any);
                }
                self.classes[i] = driver.class;
                if self.drivers[i].is_none() {
                    self.ids.insert(driver.id.clone(), *key);
                }
                self.drivers[i] = Some(driver.clone());
                match indexed {
                    Some(position) => self.index.upsert(*key, *position),
                    None => {
                        self.index.remove(*key);
                    }
                }
            }
            Op::Moved {
                key,
                position,
                indexed,
            } => {
                if let Some(Some(d)) = self.drivers.get_mut(key.0 as usize) {
                    d.position = *position;
                }
                if *indexed {
                    self.index.upsert(*key, *position);
                }
            }
            Op::Demand {
                pickup,
                class,
                at_ms,
            } => self.surge.record_request(*pickup, *class, *at_ms),
            Op::Sweep(now_ms) => self.surge.sweep(*now_ms),
        }
    }

    fn serves(&self, key: DriverKey, class: VehicleClass) -> bool {
        self.classes
            .get(key.0 as usize)
            .is_some_and(|c| c.serves(class))
    }
}

#[derive(Debug)]
struct Shared {
    copy: RwLock<Copy>,
    eta: Box<dyn EtaModel>,
    clock: Arc<dyn Clock>,
}

/// The readers' handle (cheap to clone). See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct ReadView {
    shared: Arc<Shared>,
}

/// The dispatcher thread's side: collects what a group touched, publishes at its commit.
#[derive(Debug)]
pub(super) struct ReadPublisher {
    shared: Arc<Shared>,
    /// The changes of the group being published (kept for its allocation).
    ops: Vec<Op>,
    /// Drivers whose position changed in this group (from location reports).
    moved: Vec<DriverKey>,
    /// Drivers an event of this group names (their records may have changed).
    touched: Vec<DriverKey>,
    next_sweep_ms: u64,
}

impl ReadView {
    /// A view of `dispatcher`'s state now (built in full, O(drivers)), and the publisher the
    /// dispatcher thread keeps.
    pub(super) fn new(
        config: &Config,
        dispatcher: &Dispatcher,
        clock: Arc<dyn Clock>,
    ) -> (ReadView, ReadPublisher) {
        let mut copy = Copy::new(config);
        for record in dispatcher.state().records() {
            copy.apply(&driver_op(dispatcher, record.key));
        }
        let shared = Arc::new(Shared {
            copy: RwLock::new(copy),
            // The same model the dispatcher uses (a road graph is loaded once and shared).
            eta: crate::eta::model_or_fallback(config),
            clock,
        });
        let publisher = ReadPublisher {
            shared: shared.clone(),
            ops: Vec::new(),
            moved: Vec::new(),
            touched: Vec::new(),
            next_sweep_ms: 0,
        };
        (ReadView { shared }, publisher)
    }

    /// The copy as of the last commit (waits while a commit is being applied to it).
    fn read(&self) -> RwLockReadGuard<'_, Copy> {
        self.shared.copy.read()
    }

    /// Available drivers within `radius_m` of `center` serving `class`, nearest first, with
    /// their ETA to `center`: what [`Dispatcher::nearby`] answers at the last commit.
    ///
    /// # Runtime
    /// One index search plus one many-to-one ETA call for at most `limit` drivers.
    pub(crate) fn nearby(
        &self,
        center: LatLng,
        radius_m: f64,
        limit: usize,
        class: VehicleClass,
    ) -> Vec<NearbyDriver> {
        let now_ms = self.shared.clock.now_ms();
        let copy = self.read();
        let mut neighbors = Vec::with_capacity(limit.min(64));
        copy.index.nearest(
            center,
            radius_m,
            limit,
            &mut |k| copy.serves(k, class),
            &mut neighbors,
        );
        let found: Vec<_> = neighbors
            .into_iter()
            .filter_map(|n| {
                let d = copy.drivers.get(n.key.0 as usize)?.as_ref()?;
                Some((n, d.id.clone(), d.rating, d.class))
            })
            .collect();
        // The ETAs (a road graph's many-to-one search can take a while) are computed after the
        // lock is let go: a commit never waits for them.
        drop(copy);
        let from: Vec<(LatLng, f64)> = found
            .iter()
            .map(|(n, ..)| (n.position, n.distance_m))
            .collect();
        let mut etas = Vec::with_capacity(from.len());
        self.shared
            .eta
            .many_to_one(&from, center, now_ms, &mut etas);
        found
            .into_iter()
            .zip(&etas)
            .map(|((n, id, rating, class), eta)| NearbyDriver::found(&n, eta, id, rating, class))
            .collect()
    }

    /// The surge for `class` at `point`: what [`Dispatcher::surge`] answers at the last commit.
    pub(crate) fn surge(&self, point: LatLng, class: VehicleClass) -> SurgeReading {
        let now_ms = self.shared.clock.now_ms();
        let copy = self.read();
        let radius_m = copy.surge.supply_radius_m();
        // As `DispatchState::supply_near` counts it.
        let supply = if class == VehicleClass::Any {
            copy.index.count_near(point, radius_m)
        } else {
            copy.index
                .count_near_where(point, radius_m, &mut |k| copy.serves(k, class))
        } as u64;
        copy.surge.reading_at(point, class, supply, now_ms)
    }

    /// The batch the dispatcher applies for `updates`: those for drivers this view knows by
    /// key (in their order), the rest by name. One read of the copy for the whole batch:
    /// resolving names here, on the caller's thread, takes the hashing off the dispatcher.
    pub(super) fn resolve(
        &self,
        updates: Vec<(String, LatLng)>,
        reply: oneshot::Sender<LocationOutcome>,
    ) -> LocationBatch {
        let mut keyed = Vec::with_capacity(updates.len());
        let mut named = Vec::new();
        let copy = self.read();
        for (driver, position) in updates {
            match copy.ids.get(driver.as_str()) {
                Some(&key) => keyed.push((key, position)),
                None => named.push((driver, position)),
            }
        }
        drop(copy);
        LocationBatch {
            keyed,
            named,
            reply,
        }
    }

    /// One driver's record: what [`Dispatcher::driver`] answers at the last commit.
    pub(crate) fn driver(&self, driver: &str) -> Result<Driver, Error> {
        let copy = self.read();
        copy.ids
            .get(driver)
            .and_then(|k| copy.drivers.get(k.0 as usize)?.clone())
            .ok_or_else(|| unknown_driver(driver))
    }
}

impl ReadPublisher {
    /// Notes that `key`'s position changed (a location report applied).
    pub(super) fn touch(&mut self, key: DriverKey) {
        self.moved.push(key);
    }

    /// Publishes the state after a group: the drivers it touched and those its `events` name,
    /// and its new trip requests. Call before the group's replies are sent.
    pub(super) fn publish(&mut self, dispatcher: &Dispatcher, events: &[Event], now_ms: u64) {
        let s = dispatcher.state();
        let ops = &mut self.ops;
        for event in events {
            if let EventKind::TripRequested { pickup, class, .. } = &event.kind {
                ops.push(Op::Demand {
                    pickup: *pickup,
                    class: *class,
                    at_ms: event.at_ms,
                });
            }
            if let Some(key) = event_driver(&event.kind).and_then(|id| s.driver_key(id.as_str())) {
                self.touched.push(key);
            }
        }
        if self.touched.is_empty() && self.moved.is_empty() && ops.is_empty() {
            // The copy is current.
            return;
        }
        if now_ms >= self.next_sweep_ms {
            self.next_sweep_ms = now_ms.saturating_add(SURGE_SWEEP_MS);
            ops.push(Op::Sweep(now_ms));
        }
        self.touched.sort_unstable();
        self.touched.dedup();
        self.moved.sort_unstable();
        self.moved.dedup();
        // A driver an event names gets its whole record; one that only moved, its position.
        let touched = &self.touched;
        ops.extend(
            self.moved
                .drain(..)
                .filter(|k| touched.binary_search(k).is_err())
                .map(|key| Op::Moved {
                    key,
                    position: s.live().position(key),
                    indexed: s.index().position(key).is_some(),
                }),
        );
        ops.extend(self.touched.drain(..).map(|k| driver_op(dispatcher, k)));
        {
            // Waits only for the queries already reading; new ones wait for this.
            let mut copy = self.shared.copy.write();
            for op in ops.iter() {
                copy.apply(op);
            }
        }
        ops.clear();
    }
}

/// The change of one driver as the dispatcher has it now.
fn driver_op(dispatcher: &Dispatcher, key: DriverKey) -> Op {
    let s = dispatcher.state();
    Op::Driver {
        key,
        driver: s.driver(key),
        indexed: s.index().position(key),
    }
}

/// The driver an event changes, if any (every event names at most one).
fn event_driver(kind: &EventKind) -> Option<&ExternalId> {
    match kind {
        EventKind::DriverOnline { driver, .. }
        | EventKind::DriverProfileUpdated { driver, .. }
        | EventKind::DriverOffline { driver }
        | EventKind::DriverLeftRegion { driver, .. }
        | EventKind::TripAssigned { driver, .. }
        | EventKind::DriverArrived { driver, .. }
        | EventKind::TripStarted { driver, .. }
        | EventKind::TripCompleted { driver, .. } => Some(driver),
        EventKind::TripCancelled { driver, .. } => driver.as_ref(),
        EventKind::OfferSent(o) => Some(&o.driver),
        EventKind::DriverJoinedRegion(j) => Some(&j.driver),
        EventKind::OfferAccepted(o)
        | EventKind::OfferDeclined(o)
        | EventKind::OfferExpired(o)
        | EventKind::OfferCancelled(o, _) => Some(&o.driver),
        EventKind::TripRequested { .. }
        | EventKind::SearchRetryScheduled { .. }
        | EventKind::BatchFlushed { .. }
        | EventKind::RegionTakenOver { .. }
        | EventKind::NoDrivers { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::domain::Rating;
    use crate::engine::dispatcher::GoOnline;

    const T0: u64 = 1_700_000_000_000;

    fn online(d: &mut Dispatcher, name: &str) -> DriverKey {
        let go = GoOnline {
            driver: ExternalId::new("driver", name).expect("a valid id"),
            position: LatLng::new(40.75, -73.99).expect("valid"),
            rating: Rating::new(4.5).expect("valid"),
            class: VehicleClass::Economy,
            gateway: None,
        };
        d.go_online(T0, go).expect("goes online");
        d.driver_key(name).expect("known")
    }

    /// Names the view knows come back as their keys, in order; the others (a driver newer
    /// than the view, or none) stay names for the dispatcher to resolve.
    #[test]
    fn resolve_keys_the_drivers_the_view_knows_and_leaves_the_rest_by_name() {
        let config = Config::default();
        let mut d = Dispatcher::new(&config, crate::index::default_index(), 0);
        let a = online(&mut d, "a");
        let b = online(&mut d, "b");
        let (view, _publisher) = ReadView::new(&config, &d, Arc::new(ManualClock::new(T0)));
        // Online after the view was built, never published to it.
        online(&mut d, "late");
        let p = |i: u32| LatLng::new(40.75 + f64::from(i) * 1e-4, -73.99).expect("valid");
        let updates = vec![
            ("b".to_string(), p(1)),
            ("late".to_string(), p(2)),
            ("a".to_string(), p(3)),
            ("ghost".to_string(), p(4)),
            ("b".to_string(), p(5)),
        ];
        let batch = view.resolve(updates, oneshot::channel().0);
        assert_eq!(batch.keyed, vec![(b, p(1)), (a, p(3)), (b, p(5))]);
        assert_eq!(
            batch.named,
            vec![("late".to_string(), p(2)), ("ghost".to_string(), p(4))]
        );
    }
}
