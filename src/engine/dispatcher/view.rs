//! The map view: a conflated, read-only picture of the dispatch state (online drivers with
//! their state and position, open trips, pending offers with their deadlines, surge cells, the
//! counters) that the runner publishes at a fixed rate for the operator's live map.
//!
//! It exists so that map viewers cost the dispatcher nothing per viewer: the dispatcher builds
//! one view every [`VIEW_INTERVAL_MS`] of engine time, hands it to a `watch` channel (a
//! pointer swap, never a wait), and any number of HTTP viewers read the latest one. No viewer
//! ever sends a command. Building it walks the driver table once (O(drivers)); its cost at
//! 100k drivers is measured by `benches/view.rs`. With nobody watching (no receiver beyond the
//! engine's own) nothing is built.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use h3o::CellIndex;
use tokio::sync::watch;

use super::Dispatcher;
use crate::domain::{ExternalId, LatLng, OfferId, TripId};
use crate::engine::records::{DriverStatus, Stats};
use crate::events::TripStatus;
use crate::surge::READING_CLASSES;

/// How often the runner publishes a view, ms of engine time (about four per second).
pub const VIEW_INTERVAL_MS: u64 = 250;

/// A driver's state on the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DotState {
    /// A candidate for trips.
    Available = 0,
    /// Holding a pending offer.
    Offered = 1,
    /// Assigned to a trip.
    OnTrip = 2,
}

/// One online driver.
#[derive(Clone, Debug)]
pub struct DriverDot {
    /// Its dense driver key: stable for the engine's life, and views list drivers in key
    /// order, so two views are compared by one merge (the map stream's deltas).
    pub key: u32,
    /// Last reported position.
    pub position: LatLng,
    /// Its state.
    pub state: DotState,
    /// Its id.
    pub id: ExternalId,
}

/// One open trip.
#[derive(Clone, Debug)]
pub struct TripDot {
    /// The trip.
    pub trip: TripId,
    /// Its state (never terminal here).
    pub status: TripStatus,
    /// Who asked.
    pub rider: ExternalId,
    /// Pickup.
    pub pickup: LatLng,
    /// Drop-off.
    pub dropoff: LatLng,
    /// The offered or assigned driver.
    pub driver: Option<ExternalId>,
    /// When requested, ms since epoch.
    pub requested_at_ms: u64,
}

/// One pending offer: a line from the driver to the pickup.
#[derive(Clone, Debug)]
pub struct OfferLine {
    /// The offer.
    pub offer: OfferId,
    /// Its trip.
    pub trip: TripId,
    /// The driver offered to.
    pub driver: ExternalId,
    /// Where the driver is now.
    pub from: LatLng,
    /// The pickup.
    pub to: LatLng,
    /// The driver must answer before this instant, ms since epoch.
    pub expires_at_ms: u64,
}

/// One H3 cell whose surge multiplier is above 1: the highest over the vehicle classes (the
/// whole-market reading and each class's own, see `surge.rs`), so a cell short of XL drivers
/// shows even while the market as a whole is not.
#[derive(Clone, Debug)]
pub struct SurgeCell {
    /// The cell (resolution of the surge tracker).
    pub cell: CellIndex,
    /// Its multiplier at its centre, the maximum over the classes, > 1.
    pub multiplier: f64,
}

/// Everything the live map shows, as of one instant.
#[derive(Clone, Debug, Default)]
pub struct MapView {
    /// Its number: 1 for the first view published, one more for each after (0 before any),
    /// so a viewer applying deltas can tell that it missed one.
    pub seq: u64,
    /// When it was built, ms since epoch (engine time).
    pub at_ms: u64,
    /// The offset the next event got at that instant.
    pub offset: u64,
    /// The counters GetStats would have answered at that instant.
    pub stats: Stats,
    /// `[min_lng, min_lat, max_lng, max_lat]` of every online driver; `None` with none online.
    pub bounds: Option<[f64; 4]>,
    /// Every online driver.
    pub drivers: Vec<DriverDot>,
    /// Every open trip, by id.
    pub trips: Vec<TripDot>,
    /// Every pending offer, by id.
    pub offers: Vec<OfferLine>,
    /// Cells with surge, most surging first.
    pub surge: Vec<SurgeCell>,
}

/// Receivers of the view channel the engine holds itself (its handle's): more means someone
/// watches.
const OWN_RECEIVERS: usize = 1;

/// The runner's side of the view channel: publishes at most once per interval, and only while
/// someone holds a receiver (a map stream, a snapshot being answered, a test).
#[derive(Debug)]
pub struct ViewPublisher {
    tx: watch::Sender<Arc<MapView>>,
    next_at_ms: u64,
    /// The number of the last view published.
    seq: u64,
    /// Set while publishing is paused for want of viewers: the latest view is then old, and
    /// [`fresh`] waits for the next one.
    stale: Arc<AtomicBool>,
}

/// The latest view, waiting (up to a second) for a new one when publishing was paused for
/// want of viewers; the receiver it holds meanwhile is what resumes publishing.
pub async fn fresh(view: &watch::Receiver<Arc<MapView>>, stale: &AtomicBool) -> Arc<MapView> {
    let mut rx = view.clone();
    rx.borrow_and_update();
    if stale.load(Ordering::Acquire) {
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
    }
    rx.borrow().clone()
}

impl ViewPublisher {
    /// A publisher and the receiver viewers clone. The first view goes out at the first call.
    pub fn new() -> (
        ViewPublisher,
        watch::Receiver<Arc<MapView>>,
        Arc<AtomicBool>,
    ) {
        let (tx, rx) = watch::channel(Arc::new(MapView::default()));
        let stale = Arc::new(AtomicBool::new(true));
        let publisher = ViewPublisher {
            tx,
            next_at_ms: 0,
            seq: 0,
            stale: stale.clone(),
        };
        (publisher, rx, stale)
    }

    /// Builds and publishes a view if the interval has passed at `now_ms` and someone
    /// watches. Nobody watching, nothing is built (walking 100k drivers four times a second
    /// was a tenth of the server's CPU in the city run) and the interval does not advance, so
    /// the first viewer gets a view at the runner's next turn. `send_replace` never blocks,
    /// so the dispatcher thread never waits on a viewer.
    pub fn maybe_publish(&mut self, dispatcher: &Dispatcher, now_ms: u64) {
        if now_ms < self.next_at_ms {
            return;
        }
        if self.tx.receiver_count() <= OWN_RECEIVERS {
            self.stale.store(true, Ordering::Release);
            return;
        }
        self.next_at_ms = now_ms.saturating_add(VIEW_INTERVAL_MS);
        self.seq += 1;
        let mut view = dispatcher.map_view(now_ms);
        view.seq = self.seq;
        self.tx.send_replace(Arc::new(view));
        self.stale.store(false, Ordering::Release);
    }
}

impl Dispatcher {
    /// The map view at `now_ms`. Read-only; O(drivers + trips + offers + surge cells).
    pub fn map_view(&self, now_ms: u64) -> MapView {
        let s = self.state();
        let live = s.live();
        let mut bounds = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
        let mut drivers = Vec::with_capacity(s.driver_count());
        for d in s.records() {
            let state = match d.status {
                DriverStatus::Offline => continue,
                DriverStatus::Available => DotState::Available,
                DriverStatus::Offered(_) => DotState::Offered,
                DriverStatus::OnTrip(_) => DotState::OnTrip,
            };
            let position = live.position(d.key);
            let (lng, lat) = (position.lng_deg(), position.lat_deg());
            bounds = [
                bounds[0].min(lng),
                bounds[1].min(lat),
                bounds[2].max(lng),
                bounds[3].max(lat),
            ];
            drivers.push(DriverDot {
                key: d.key.0,
                position,
                state,
                id: d.id.clone(),
            });
        }
        let mut trips: Vec<TripDot> = s
            .trips()
            .filter(|t| !t.status.is_terminal())
            .map(|t| TripDot {
                trip: t.id,
                status: t.status,
                rider: t.rider.clone(),
                pickup: t.pickup,
                dropoff: t.dropoff,
                driver: t.driver.clone(),
                requested_at_ms: t.requested_at_ms,
            })
            .collect();
        trips.sort_by_key(|t| t.trip);
        let mut offers: Vec<OfferLine> = s
            .offers()
            .map(|p| OfferLine {
                offer: p.details.offer,
                trip: p.details.trip,
                driver: p.details.driver.clone(),
                from: live.position(p.driver),
                to: p.details.pickup,
                expires_at_ms: p.details.expires_at_ms,
            })
            .collect();
        offers.sort_by_key(|o| o.offer);
        let tracker = live.surge();
        let radius_m = tracker.supply_radius_m();
        let mut surge: Vec<SurgeCell> = tracker
            .active_demand(now_ms)
            .into_iter()
            .filter_map(|(cell, demand)| {
                let c = h3o::LatLng::from(cell);
                let centre = LatLng::new(c.lat(), c.lng()).ok()?;
                let multiplier = demand
                    .iter()
                    .zip(READING_CLASSES)
                    // With demand <= 1 the multiplier is 1 whatever the supply: skip the count.
                    .filter(|&(&d, _)| d > 1)
                    .map(|(&d, class)| {
                        tracker.multiplier(d, s.supply_near(centre, radius_m, class))
                    })
                    .fold(1.0, f64::max);
                (multiplier > 1.0).then_some(SurgeCell { cell, multiplier })
            })
            .collect();
        surge.sort_by(|a, b| b.multiplier.total_cmp(&a.multiplier));
        MapView {
            seq: 0,
            at_ms: now_ms,
            offset: s.next_offset(),
            stats: s.stats(),
            bounds: (!drivers.is_empty()).then_some(bounds),
            drivers,
            trips,
            offers,
            surge,
        }
    }
}
