//! The region router: which region's engine a call belongs to.
//!
//! A driver belongs to the region of the position it went online at (remembered here; after a
//! restart it is found by asking the regions), a trip to the region of its pickup, and a trip
//! or offer id names the region that issued it. A point outside every region is refused with
//! INVALID_ARGUMENT naming the point. The router holds one ordinary set of services (`grpc`)
//! per region and hands each call to one of them, so validation, statuses and streaming are the
//! single-region code's own.

use std::sync::Arc;

use parking_lot::Mutex;
use rustc_hash::FxHashMap;
use tonic::Status;

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

#[derive(Debug)]
struct Inner {
    map: RegionMap,
    shards: Vec<Shard>,
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
    /// A router over `engines` (one per region of `map`, in order) and their event routers.
    pub(crate) fn new(
        map: RegionMap,
        engines: &[Engine],
        routers: &[Router],
        config: Arc<Config>,
        metrics: Arc<Metrics>,
    ) -> RegionRouter {
        let shards = engines
            .iter()
            .zip(routers)
            .map(|(engine, router)| Shard {
                engine: engine.clone(),
                drivers: DriverApi::new(engine.clone(), router.clone(), config.clone())
                    .with_metrics(metrics.clone()),
                riders: RiderApi::new(engine.clone(), router.clone()),
                queries: QueryApi::new(engine.clone(), config.clone()),
                events: EventApi::new(engine.clone()),
            })
            .collect();
        RegionRouter {
            inner: Arc::new(Inner {
                map,
                shards,
                homes: Mutex::new(FxHashMap::default()),
                config,
                metrics,
            }),
        }
    }

    pub(crate) fn shards(&self) -> &[Shard] {
        &self.inner.shards
    }

    pub(crate) fn shard(&self, i: usize) -> &Shard {
        &self.inner.shards[i]
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

    /// The region a driver belongs to, if it was seen here or any region knows it (asked in
    /// order; the answer is remembered). `None` for a driver no region knows.
    pub(crate) async fn home(&self, driver: &str) -> Option<usize> {
        if let Some(&i) = self.inner.homes.lock().get(driver) {
            return Some(i);
        }
        let id = ExternalId::new("driver_id", driver).ok()?;
        for (i, shard) in self.inner.shards.iter().enumerate() {
            if shard.engine.driver(id.clone()).await.is_ok() {
                self.remember(driver, i);
                return Some(i);
            }
        }
        None
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
