//! The region router: which region's engine a call belongs to, and where that engine runs.
//!
//! A driver belongs to the region of the position it went online at (remembered here; after a
//! restart it is found by asking the regions), a trip to the region of its pickup, and a trip
//! or offer id names the region that issued it. A point outside every region is refused with
//! INVALID_ARGUMENT naming the point. The router holds one ordinary set of services (`grpc`)
//! per region served here and hands each call to one of them, so validation, statuses and
//! streaming are the single-region code's own. In cluster mode a region may be served by
//! another process: the call is forwarded to its owner (`forward`), or refused with
//! UNAVAILABLE when the region has no owner right now.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use rustc_hash::FxHashMap;
use tokio::sync::watch;
use tonic::Status;

use super::forward::{FORWARDED_HEADER, Peer, Peers};
use super::regions::RegionMap;
use crate::config::Config;
use crate::domain::ExternalId;
use crate::engine::Engine;
use crate::events::Router;
use crate::grpc::{DriverApi, EventApi, QueryApi, RiderApi, status};
use crate::telemetry::Metrics;

/// Metadata key naming the region for the calls that carry no point or id (Subscribe without
/// `from_offset`, GetStats for one region).
pub(crate) const REGION_HEADER: &str = "dispatch-region";

/// One region's engine and its services.
#[derive(Debug)]
pub(crate) struct Shard {
    pub(crate) engine: Engine,
    pub(crate) drivers: DriverApi,
    pub(crate) riders: RiderApi,
    pub(crate) queries: QueryApi,
    pub(crate) events: EventApi,
}

/// Where a call for one region goes.
#[derive(Debug)]
pub(crate) enum Target {
    /// This process serves the region.
    Local(Arc<Shard>),
    /// Another process does: forward the call to it.
    Remote(Peer),
}

#[derive(Debug)]
struct Inner {
    map: RegionMap,
    /// The region engines served here, by region index (`None`: served elsewhere or nowhere).
    shards: Vec<RwLock<Option<Arc<Shard>>>>,
    /// Each region's owner's gRPC address as last read from its lease (`None`: no owner).
    owners: RwLock<Vec<Option<String>>>,
    /// Bumped whenever `owners` changes (see GetRoutes).
    version: AtomicU64,
    /// Bumped whenever a region is installed here, removed, or changes owner, and when the
    /// server starts closing: what the merged offer streams follow (`route_offers`).
    changes: watch::Sender<u64>,
    /// Set once the server drains: long-lived streams end.
    closing: AtomicBool,
    peers: Peers,
    /// Which region each driver seen here belongs to (index into `shards`).
    homes: Mutex<FxHashMap<String, usize>>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
}

/// The router behind the four dispatch services in region mode. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct RegionRouter {
    inner: Arc<Inner>,
}

impl RegionRouter {
    /// A router over `map` serving no region yet; see [`RegionRouter::install`].
    pub(crate) fn new(
        map: RegionMap,
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        peer_tls: Option<super::forward::PeerTls>,
    ) -> RegionRouter {
        let n = map.regions().len();
        RegionRouter {
            inner: Arc::new(Inner {
                map,
                shards: (0..n).map(|_| RwLock::new(None)).collect(),
                owners: RwLock::new(vec![None; n]),
                version: AtomicU64::new(1),
                changes: watch::channel(0).0,
                closing: AtomicBool::new(false),
                peers: Peers::new(peer_tls),
                homes: Mutex::new(FxHashMap::default()),
                config,
                metrics,
            }),
        }
    }

    /// Serves region `i` from `engine` here: its services, event router and metrics follower.
    pub(crate) fn install(&self, i: usize, engine: Engine) {
        let backlog = engine.backlog();
        let bus = engine.bus().clone();
        // Both tasks end when the engine's bus closes (at its shutdown).
        let _metrics_follower = crate::telemetry::spawn_follower(
            crate::events::Follower::new(bus.clone(), backlog.clone(), bus.next_offset()),
            self.inner.metrics.clone(),
        );
        let router = Router::spawn(bus, backlog);
        let config = self.inner.config.clone();
        let shard = Shard {
            drivers: DriverApi::new(engine.clone(), router.clone(), config.clone())
                .with_metrics(self.inner.metrics.clone()),
            riders: RiderApi::new(engine.clone(), router),
            queries: QueryApi::new(engine.clone(), config),
            events: EventApi::new(engine.clone()),
            engine,
        };
        *self.inner.shards[i].write() = Some(Arc::new(shard));
        self.changed();
    }

    /// Stops serving region `i` here (its engine is the caller's to stop); returns it.
    pub(crate) fn remove(&self, i: usize) -> Option<Engine> {
        let removed = self.inner.shards[i]
            .write()
            .take()
            .map(|s| s.engine.clone());
        if removed.is_some() {
            self.changed();
        }
        removed
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|n| *n += 1);
    }

    /// Told of every change of the regions served here, of their owners, and of closing.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Whether the server is draining (see [`Self::close_streams`]).
    pub(crate) fn closing(&self) -> bool {
        self.inner.closing.load(Ordering::Acquire)
    }

    /// Records region `i`'s owner address as read from its lease (`None`: no owner).
    pub(crate) fn set_owner(&self, i: usize, addr: Option<String>) {
        let mut owners = self.inner.owners.write();
        if owners[i] != addr {
            owners[i] = addr;
            self.inner.version.fetch_add(1, Ordering::Relaxed);
            drop(owners);
            self.changed();
        }
    }

    /// Every region's owner address and the table's version.
    pub(crate) fn routes(&self) -> (Vec<Option<String>>, u64) {
        let owners = self.inner.owners.read().clone();
        (owners, self.inner.version.load(Ordering::Relaxed))
    }

    /// How many regions the cluster has.
    pub(crate) fn regions_len(&self) -> usize {
        self.inner.shards.len()
    }

    /// The regions served here, with their index.
    pub(crate) fn local_shards(&self) -> Vec<(usize, Arc<Shard>)> {
        self.inner
            .shards
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.read().clone().map(|s| (i, s)))
            .collect()
    }

    /// Region `i`'s shard if it is served here.
    pub(crate) fn local(&self, i: usize) -> Option<Arc<Shard>> {
        self.inner.shards[i].read().clone()
    }

    /// Where a call for region `i` goes: here, to its owner, or nowhere (UNAVAILABLE, a
    /// retryable status naming the owner when one is known). A call that was already forwarded
    /// once is never forwarded again (a stale owner table cannot make a loop).
    pub(crate) fn target(
        &self,
        i: usize,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Target, Status> {
        self.target_hop(i, metadata, false)
    }

    /// [`RegionRouter::target`] for location reports, which a stale memory elsewhere may have
    /// sent to a process whose driver has since moved region (it moved it, so it knows where):
    /// a call forwarded once may go one hop further ([`super::forward::Peer::onward`]), never
    /// two.
    pub(crate) fn target_onward(
        &self,
        i: usize,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Target, Status> {
        let hop = metadata.get(FORWARDED_HEADER).map(|v| v.as_bytes());
        self.target_hop(i, metadata, hop == Some(b"1"))
    }

    fn target_hop(
        &self,
        i: usize,
        metadata: &tonic::metadata::MetadataMap,
        onward: bool,
    ) -> Result<Target, Status> {
        if let Some(shard) = self.local(i) {
            return Ok(Target::Local(shard));
        }
        let name = &self.inner.map.regions()[i].name;
        let owner = self.inner.owners.read()[i].clone();
        match owner {
            Some(addr) if metadata.get(FORWARDED_HEADER).is_some() && !onward => {
                Err(Status::unavailable(format!(
                    "region {name} is served by {addr}, not by this process (a forwarded call \
                     is not forwarded again); retry"
                )))
            }
            Some(addr) => Ok(Target::Remote(self.inner.peers.get(name, &addr)?)),
            None => Err(Status::unavailable(format!(
                "region {name} has no owner right now (a failover is under way); retry"
            ))),
        }
    }

    pub(crate) fn map(&self) -> &RegionMap {
        &self.inner.map
    }

    pub(crate) fn config(&self) -> &Config {
        &self.inner.config
    }

    pub(crate) fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// Ends the event streams of every region served here (the server is draining).
    pub(crate) fn close_streams(&self) {
        self.inner.closing.store(true, Ordering::Release);
        self.changed();
        for (_, shard) in self.local_shards() {
            shard.engine.bus().close();
        }
    }

    /// The region of a point; INVALID_ARGUMENT naming `what` and the point when none covers it.
    pub(crate) fn by_point(
        &self,
        what: &str,
        point: Option<&crate::pb::LatLng>,
    ) -> Result<usize, Status> {
        let point = crate::grpc::convert::latlng(what, point.copied())?;
        self.inner.map.locate(what, point).map_err(status)
    }

    /// The region that issued the trip id `raw`; NOT_FOUND when none did (an empty or
    /// malformed id gets the single-region message).
    pub(crate) fn by_trip(&self, raw: &str) -> Result<usize, Status> {
        let id = crate::grpc::convert::trip_id(raw)?;
        self.by_id("trip", raw, id.0)
    }

    /// The region that issued the offer id `raw`.
    pub(crate) fn by_offer(&self, raw: &str) -> Result<usize, Status> {
        let id = crate::grpc::convert::offer_id(raw)?;
        self.by_id("offer", raw, id.0)
    }

    fn by_id(&self, what: &str, raw: &str, n: u64) -> Result<usize, Status> {
        self.inner.map.of_id(n).ok_or_else(|| {
            Status::not_found(format!(
                "unknown {what} {raw:?}: no region of this cluster ({}) issued it",
                self.inner.map.names()
            ))
        })
    }

    /// Records that `driver` now belongs to region `i`.
    pub(crate) fn remember(&self, driver: &str, i: usize) {
        self.inner.homes.lock().insert(driver.to_owned(), i);
    }

    /// The region a driver belongs to, if it was seen here or any region knows it (the
    /// regions served here first, then, unless `metadata` marks the call forwarded, each other
    /// region's owner by a forwarded GetDriver with the caller's token; the answer is
    /// remembered). `None` for a driver no region knows.
    pub(crate) async fn home(
        &self,
        driver: &str,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Option<usize> {
        if let Some(i) = self.home_here(driver).await {
            return Some(i);
        }
        if metadata.get(FORWARDED_HEADER).is_some() {
            return None;
        }
        for i in 0..self.regions_len() {
            if self.local(i).is_some() {
                continue;
            }
            if let Ok(Target::Remote(peer)) = self.target(i, metadata)
                && peer.driver(driver, metadata).await.is_some()
            {
                self.remember(driver, i);
                return Some(i);
            }
        }
        None
    }

    /// The region a driver belongs to if this process knows: remembered, or held by a region
    /// served here (the answer is remembered). A driver that moved region is known to both,
    /// offline in the one it left: the region holding it online wins.
    pub(crate) async fn home_here(&self, driver: &str) -> Option<usize> {
        if let Some(&i) = self.inner.homes.lock().get(driver) {
            return Some(i);
        }
        let id = ExternalId::new("driver_id", driver).ok()?;
        let mut offline_in = None;
        for (i, shard) in self.local_shards() {
            match shard.engine.driver(id.clone()).await {
                Ok(d) if d.status != crate::engine::DriverStatus::Offline => {
                    self.remember(driver, i);
                    return Some(i);
                }
                Ok(_) => {
                    offline_in.get_or_insert(i);
                }
                Err(_) => {}
            }
        }
        if let Some(i) = offline_in {
            self.remember(driver, i);
        }
        offline_in
    }

    /// The region a call that names none in its metadata goes to: the only one, when the
    /// cluster has exactly one (a one-region cluster serves clients written for a single
    /// process unchanged); otherwise the region named by [`Self::by_header`].
    pub(crate) fn by_header_or_only(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Option<usize>, Status> {
        let named = self.by_header(metadata)?;
        Ok(named.or((self.inner.map.regions().len() == 1).then_some(0)))
    }

    /// The region named by the `dispatch-region` metadata, if set; INVALID_ARGUMENT for an
    /// unknown name.
    pub(crate) fn by_header(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Option<usize>, Status> {
        let Some(value) = metadata.get(REGION_HEADER) else {
            return Ok(None);
        };
        let name = value.to_str().unwrap_or_default();
        self.inner.map.by_name(name).map(Some).ok_or_else(|| {
            Status::invalid_argument(format!(
                "{REGION_HEADER} {name:?} is not a region of this cluster; the regions are: {}",
                self.inner.map.names()
            ))
        })
    }
}

/// `/metrics` sums the regions served here at the moment of each scrape.
impl crate::telemetry::Scope for RegionRouter {
    fn engines(&self) -> Vec<Engine> {
        self.local_shards()
            .into_iter()
            .map(|(_, s)| s.engine.clone())
            .collect()
    }
}
