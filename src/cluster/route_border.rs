//! Region moves across processes (cluster mode): the RegionService's JoinRegion, and the
//! calling side that sends it.
//!
//! The process owning the region a driver leaves logs DriverLeftRegion, then calls
//! JoinRegion at the owner of the region it joins, through the forwarding path with the
//! gateway's token. The called process does not take the caller's word for the driver: it
//! reads the driver from the old region's owner (a forwarded GetDriver) and joins it only if
//! that region holds it offline, with the rating, class, gateway, acceptance rate and trips
//! of that record. So an outside caller with a driver-gateway token can do nothing through it
//! that GoOnline would not let it do (see the README's failure cases).

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::router::{RegionRouter, Target};
use crate::domain::{ExternalId, LatLng};
use crate::events::RegionJoin;
use crate::grpc::{convert, status};
use crate::pb::{
    self, region_service_client::RegionServiceClient, region_service_server::RegionService,
};

/// Only the caller's token: a call made on behalf of a (maybe forwarded) call, which the
/// forwarding rules must not see as forwarded already.
fn token_only(metadata: &MetadataMap) -> MetadataMap {
    let mut out = MetadataMap::new();
    if let Some(token) = metadata.get("authorization") {
        out.insert("authorization", token.clone());
    }
    out
}

impl RegionRouter {
    /// The metadata of a call this process makes to another member on its own behalf: its
    /// `cluster.peer_token` when set, else the caller's token (enough without authentication).
    pub(crate) fn own_call(&self, metadata: &MetadataMap) -> MetadataMap {
        let peer = &self.config().cluster.peer_token.0;
        match format!("Bearer {peer}").parse() {
            Ok(value) if !peer.is_empty() => {
                let mut out = MetadataMap::new();
                out.insert("authorization", value);
                out
            }
            _ => token_only(metadata),
        }
    }

    /// Moves an available driver from region `from` (served here) to region `to`, served by
    /// another process: leave here, then JoinRegion there. A failed join leaves the driver
    /// offline here (its gateway must call GoOnline again), never in two regions.
    pub(crate) async fn move_remote(
        &self,
        from: usize,
        to: usize,
        driver: &ExternalId,
        position: LatLng,
        metadata: &MetadataMap,
    ) -> Result<(), Status> {
        let md = self.own_call(metadata);
        let Target::Remote(peer) = self.target(to, &md)? else {
            return self
                .move_driver(from, to, driver, Some(position))
                .await
                .map(drop);
        };
        let Some(a) = self.local(from) else {
            return Err(Status::unavailable(
                "the driver's region is not served here",
            ));
        };
        let names = self.map().regions();
        let before = a
            .engine
            .leave_region(driver.clone(), names[to].name.clone())
            .await
            .map_err(status)?;
        let join = pb::JoinRegionRequest {
            driver_id: driver.to_string(),
            from_region: names[from].name.clone(),
            to_region: names[to].name.clone(),
            location: Some(convert::pb_latlng(position)),
            free_since_ms: before.free_since_ms,
        };
        match RegionServiceClient::new(peer.channel.clone())
            .join_region(peer.unary(&md, join))
            .await
        {
            Ok(_) => {
                self.remember(driver.as_str(), to);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%driver, from = %names[from].name, to = %names[to].name,
                    error = %e.message(), "a driver left its region but its join at the next \
                    region's owner failed: it is offline until its gateway calls GoOnline again");
                Err(peer.failed(e))
            }
        }
    }

    /// The driver as region `i` holds it, here or at its owner.
    async fn driver_in(
        &self,
        i: usize,
        driver: &ExternalId,
        metadata: &MetadataMap,
    ) -> Result<pb::Driver, Status> {
        match self.target(i, metadata)? {
            Target::Local(shard) => shard
                .engine
                .driver(driver.clone())
                .await
                .map(|d| convert::pb_driver(&d))
                .map_err(status),
            Target::Remote(peer) => peer.driver(driver.as_str(), metadata).await.ok_or_else(|| {
                Status::failed_precondition(format!(
                    "region {} does not know driver {driver} (or its owner did not answer)",
                    self.map().regions()[i].name
                ))
            }),
        }
    }
}

#[tonic::async_trait]
impl RegionService for RegionRouter {
    async fn join_region(
        &self,
        request: Request<pb::JoinRegionRequest>,
    ) -> Result<Response<pb::JoinRegionResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let (from, to) = self.region_pair(&req.from_region, &req.to_region)?;
        let driver = convert::id("driver_id", &req.driver_id)?;
        let position = convert::latlng("location", req.location)?;
        let Some(shard) = self.local(to) else {
            return Err(Status::unavailable(format!(
                "region {} is not served by this process; retry",
                req.to_region
            )));
        };
        let old = self
            .driver_in(from, &driver, &self.own_call(&metadata))
            .await?;
        if old.state() != pb::DriverState::Offline {
            return Err(Status::failed_precondition(format!(
                "driver {driver} has not left region {}: it is {:?} there",
                req.from_region,
                old.state()
            )));
        }
        let join = RegionJoin {
            driver: driver.clone(),
            from: req.from_region.clone(),
            position,
            rating: convert::rating(old.rating)?,
            class: convert::vehicle_class(old.vehicle_class)?,
            gateway: convert::optional_id("gateway_id", &old.gateway_id)?,
            acceptance_rate: old.acceptance_rate.clamp(0.0, 1.0),
            trips_today: old.trips_today,
            // The old region counts `trips_today` for the day it last became free.
            trips_day: req.free_since_ms / 86_400_000,
            free_since_ms: req.free_since_ms,
        };
        let d = shard.engine.join_region(join).await.map_err(status)?;
        self.remember(driver.as_str(), to);
        Ok(Response::new(pb::JoinRegionResponse {
            driver: Some(convert::pb_driver(&d)),
        }))
    }

    async fn pull_drivers(
        &self,
        request: Request<pb::PullDriversRequest>,
    ) -> Result<Response<pb::PullDriversResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let (from, to) = self.region_pair(&req.from_region, &req.to_region)?;
        let pickup = convert::latlng("pickup", req.pickup)?;
        if self.map().locate("pickup", pickup).ok() != Some(to) {
            return Err(Status::invalid_argument(format!(
                "pickup ({}, {}) is not inside region {:?}: drivers are pulled into the \
                 pickup's own region",
                pickup.lat_deg(),
                pickup.lng_deg(),
                req.to_region
            )));
        }
        let class = convert::vehicle_class(req.vehicle_class)?;
        let (pull, radius_m) = (
            self.config().cluster.border_pull,
            self.config().dispatch.search_radius_m,
        );
        let max = req.max as usize;
        if !(1..=pull).contains(&max) {
            return Err(Status::invalid_argument(format!(
                "max must be within 1..={pull} (cluster.border_pull), got {max}"
            )));
        }
        let bound_m = match req.nearer_than_m {
            0.0 => radius_m,
            m if m.is_finite() && m > 0.0 => m.min(radius_m),
            m => {
                return Err(Status::invalid_argument(format!(
                    "nearer_than_m must be a positive number of metres (0: the search radius), \
                     got {m}"
                )));
            }
        };
        let Some(shard) = self.local(from) else {
            return Err(Status::unavailable(format!(
                "region {} is not served by this process; retry",
                req.from_region
            )));
        };
        let mut moved = Vec::new();
        if self.map().regions()[from].distance_m(pickup) > radius_m {
            return Ok(Response::new(pb::PullDriversResponse {
                moved_driver_ids: moved,
            }));
        }
        let found = shard
            .engine
            .nearby(pickup, radius_m, max, class)
            .await
            .map_err(status)?;
        for d in found.into_iter().filter(|d| d.distance_m < bound_m) {
            // One that took an offer meanwhile stays; a failed join is logged by the move.
            if self
                .move_remote(from, to, &d.id, d.position, &metadata)
                .await
                .is_ok()
            {
                moved.push(d.id.to_string());
            }
        }
        Ok(Response::new(pb::PullDriversResponse {
            moved_driver_ids: moved,
        }))
    }
}

impl RegionRouter {
    /// The regions a RegionService call names as `from_region` and `to_region`: both of this
    /// cluster, and not the same.
    fn region_pair(&self, from: &str, to: &str) -> Result<(usize, usize), Status> {
        let region = |field: &str, name: &str| {
            self.map().by_name(name).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{field} {name:?} is not a region of this cluster; the regions are: {}",
                    self.map().names()
                ))
            })
        };
        let (from, to) = (region("from_region", from)?, region("to_region", to)?);
        if from == to {
            return Err(Status::invalid_argument(
                "from_region and to_region are the same region: nothing to move",
            ));
        }
        Ok((from, to))
    }

    /// Asks the owner of region `from` (another process) to move into region `to` (served
    /// here) up to `max` of its available drivers of `class` nearest to `pickup` and nearer
    /// than `nearer_than_m`; returns how many moved (0 when the call fails: a pull is a hint).
    pub(crate) async fn pull_remote(
        &self,
        (from, to): (usize, usize),
        pickup: LatLng,
        class: crate::domain::VehicleClass,
        (nearer_than_m, max): (f64, usize),
        metadata: &MetadataMap,
    ) -> usize {
        let md = self.own_call(metadata);
        let Ok(Target::Remote(peer)) = self.target(from, &md) else {
            return 0;
        };
        let names = self.map().regions();
        let req = pb::PullDriversRequest {
            from_region: names[from].name.clone(),
            to_region: names[to].name.clone(),
            pickup: Some(convert::pb_latlng(pickup)),
            vehicle_class: convert::pb_class(class).into(),
            nearer_than_m: if nearer_than_m.is_finite() {
                nearer_than_m
            } else {
                0.0
            },
            max: max as u32,
        };
        match RegionServiceClient::new(peer.channel.clone())
            .pull_drivers(peer.unary(&md, req))
            .await
        {
            Ok(r) => r.into_inner().moved_driver_ids.len(),
            Err(e) => {
                tracing::debug!(from = %names[from].name, to = %names[to].name,
                    error = %e.message(), "no drivers drawn across the border from the other owner");
                0
            }
        }
    }
}
