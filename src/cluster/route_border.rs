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
        let md = token_only(metadata);
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
        let region = |field: &str, name: &str| {
            self.map().by_name(name).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{field} {name:?} is not a region of this cluster; the regions are: {}",
                    self.map().names()
                ))
            })
        };
        let from = region("from_region", &req.from_region)?;
        let to = region("to_region", &req.to_region)?;
        if from == to {
            return Err(Status::invalid_argument(
                "from_region and to_region are the same region: nothing to move",
            ));
        }
        let driver = convert::id("driver_id", &req.driver_id)?;
        let position = convert::latlng("location", req.location)?;
        let Some(shard) = self.local(to) else {
            return Err(Status::unavailable(format!(
                "region {} is not served by this process; retry",
                req.to_region
            )));
        };
        let old = self
            .driver_in(from, &driver, &token_only(&metadata))
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
}
