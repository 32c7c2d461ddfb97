//! The map view: a conflated, read-only picture of the dispatch state (online drivers with
//! their state and position, open trips, pending offers with their deadlines, surge cells, the
//! counters) that the runner publishes at a fixed rate for the operator's live map.
//!
//! It exists so that map viewers cost the dispatcher nothing per viewer: every
//! [`VIEW_INTERVAL_MS`] of engine time the dispatcher copies the view's parts ([`ViewParts`]:
//! shared chunks and persistent maps, O(drivers / 1024)), the `map-view` thread builds the view
//! from them and hands it to a `watch` channel (a pointer swap, never a wait), and any number
//! of HTTP viewers read the latest one. No viewer ever sends a command. Building it walks the
//! driver table once (O(drivers)) off the dispatcher thread; both costs at 100k drivers are
//! measured by `benches/view.rs`. With nobody watching (no receiver beyond the engine's own)
//! nothing is copied or built.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use h3o::CellIndex;
use tokio::sync::watch;

use super::Dispatcher;
use crate::domain::{ExternalId, LatLng, OfferId, TripId};
use crate::engine::latest::Latest;
use crate::engine::records::{DriverStatus, Stats};
use crate::engine::state::ViewSource;
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
/// someone holds a receiver (a map stream, a snapshot being answered, a test). The dispatcher
/// thread only copies the view's parts ([`ViewParts`], O(d / 1024)); the `map-view` thread
/// builds the view from them and publishes it, so the walk of every driver is never a pause of
/// the dispatcher. One set of parts waits at most, and a newer one replaces it: a view thread
/// that falls behind skips views, it never queues them.
#[derive(Debug)]
pub struct ViewPublisher {
    tx: Arc<watch::Sender<Arc<MapView>>>,
    next_at_ms: u64,
    /// Set while publishing is paused for want of viewers: the latest view is then old, and
    /// [`fresh`] waits for the next one.
    stale: Arc<AtomicBool>,
    /// Parts for the view thread: newer ones replace any still waiting.
    parts: Latest<ViewParts>,
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
    /// A publisher (and its view thread, which ends with it) and the receiver viewers clone.
    /// The first view goes out at the first call.
    pub fn new() -> (
        ViewPublisher,
        watch::Receiver<Arc<MapView>>,
        Arc<AtomicBool>,
    ) {
        let (tx, rx) = watch::channel(Arc::new(MapView::default()));
        let tx = Arc::new(tx);
        let stale = Arc::new(AtomicBool::new(true));
        let (parts, from) = Latest::<ViewParts>::new();
        let (out, paused) = (tx.clone(), stale.clone());
        std::thread::Builder::new()
            .name("map-view".into())
            .spawn(move || {
                let mut seq = 0;
                while let Ok(parts) = from.recv() {
                    let mut view = parts.build();
                    seq += 1;
                    view.seq = seq;
                    out.send_replace(Arc::new(view));
                    paused.store(false, Ordering::Release);
                }
            })
            .expect("spawning the map view thread needs only memory");
        let publisher = ViewPublisher {
            tx,
            next_at_ms: 0,
            stale: stale.clone(),
            parts,
        };
        (publisher, rx, stale)
    }

    /// Copies the view's parts for the view thread if the interval has passed at `now_ms`
    /// and someone watches. Nobody watching, nothing is copied (walking 100k drivers four
    /// times a second was a tenth of the server's CPU in the city run) and the interval does
    /// not advance, so the first viewer gets a view at the runner's next turn. Never blocks:
    /// parts still waiting for the view thread are replaced by these.
    pub fn maybe_publish(&mut self, dispatcher: &Dispatcher, now_ms: u64) {
        if now_ms < self.next_at_ms {
            return;
        }
        if self.tx.receiver_count() <= OWN_RECEIVERS {
            self.stale.store(true, Ordering::Release);
            return;
        }
        self.next_at_ms = now_ms.saturating_add(VIEW_INTERVAL_MS);
        self.parts.offer(dispatcher.view_parts(now_ms));
    }
}

/// What a view is built from, copied on the dispatcher thread at a group boundary: the state's
/// [`ViewSource`] (shared chunks and persistent maps), the counters, and the surge cells
/// (computed there: they need the spatial index, and there are few of them).
#[derive(Debug)]
pub struct ViewParts {
    source: ViewSource,
    at_ms: u64,
    offset: u64,
    stats: Stats,
    surge: Vec<SurgeCell>,
}

impl Dispatcher {
    /// The map view at `now_ms`: [`Dispatcher::view_parts`] then [`ViewParts::build`] on this
    /// thread (the runner splits the two over threads).
    pub fn map_view(&self, now_ms: u64) -> MapView {
        self.view_parts(now_ms).build()
    }

    /// The parts of the view at `now_ms`. O(d / 1024 + surge cells): the driver table and
    /// positions are shared in chunks, the trips and offers are persistent maps.
    pub fn view_parts(&self, now_ms: u64) -> ViewParts {
        let s = self.state();
        let tracker = s.live().surge();
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
        ViewParts {
            source: s.view_source(),
            at_ms: now_ms,
            offset: s.next_offset(),
            stats: s.stats(),
            surge,
        }
    }
}

impl ViewParts {
    /// The view. O(drivers + open trips + offers); read-only, on any thread.
    pub fn build(self) -> MapView {
        let s = &self.source;
        let mut bounds = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
        let st = &self.stats;
        let online = st.drivers_available + st.drivers_offered + st.drivers_on_trip;
        let mut drivers = Vec::with_capacity(online as usize);
        for d in s.records() {
            let state = match d.status {
                DriverStatus::Offline => continue,
                DriverStatus::Available => DotState::Available,
                DriverStatus::Offered(_) => DotState::Offered,
                DriverStatus::OnTrip(_) => DotState::OnTrip,
            };
            let position = s.position(d.key);
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
        let mut trips: Vec<TripDot> = Vec::with_capacity(s.open_trip_count());
        trips.extend(
            s.open_trips()
                .filter(|t| !t.status.is_terminal())
                .map(|t| TripDot {
                    trip: t.id,
                    status: t.status,
                    rider: t.rider.clone(),
                    pickup: t.pickup,
                    dropoff: t.dropoff,
                    driver: t.driver.clone(),
                    requested_at_ms: t.requested_at_ms,
                }),
        );
        trips.sort_by_key(|t| t.trip);
        let mut offers: Vec<OfferLine> = s
            .offers()
            .map(|p| OfferLine {
                offer: p.details.offer,
                trip: p.details.trip,
                driver: p.details.driver.clone(),
                from: s.position(p.driver),
                to: p.details.pickup,
                expires_at_ms: p.details.expires_at_ms,
            })
            .collect();
        offers.sort_by_key(|o| o.offer);
        MapView {
            seq: 0,
            at_ms: self.at_ms,
            offset: self.offset,
            stats: self.stats,
            bounds: (!drivers.is_empty()).then_some(bounds),
            drivers,
            trips,
            offers,
            surge: self.surge,
        }
    }
}
