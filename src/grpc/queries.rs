//! QueryService: read-only views for dashboards, rider apps and operators.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{self, pb_driver, pb_nearby, pb_stats};
use super::status;
use crate::config::Config;
use crate::engine::Engine;
use crate::pb::{self, query_service_server::QueryService};

/// Largest radius a NearbyDrivers query may ask for, metres.
const MAX_RADIUS_M: f64 = 50_000.0;
/// Largest `limit` of a NearbyDrivers query.
const MAX_LIMIT: u32 = 200;
/// `limit` when the caller leaves it 0.
const DEFAULT_LIMIT: u32 = 20;

/// The QueryService implementation.
#[derive(Debug, Clone)]
pub(crate) struct QueryApi {
    engine: Engine,
    config: Arc<Config>,
}

impl QueryApi {
    /// A service talking to `engine`.
    pub(crate) fn new(engine: Engine, config: Arc<Config>) -> Self {
        QueryApi { engine, config }
    }
}

#[tonic::async_trait]
impl QueryService for QueryApi {
    async fn nearby_drivers(
        &self,
        request: Request<pb::NearbyDriversRequest>,
    ) -> Result<Response<pb::NearbyDriversResponse>, Status> {
        let req = request.into_inner();
        let center = convert::latlng("location", req.location)?;
        let radius_m = if req.radius_m == 0.0 {
            self.config.dispatch.search_radius_m
        } else if req.radius_m.is_finite() && req.radius_m > 0.0 && req.radius_m <= MAX_RADIUS_M {
            req.radius_m
        } else {
            return Err(Status::invalid_argument(format!(
                "radius_m must be within 1..={MAX_RADIUS_M} (or 0 for the default), got {}",
                req.radius_m
            )));
        };
        let limit = match req.limit {
            0 => DEFAULT_LIMIT,
            l if l <= MAX_LIMIT => l,
            l => {
                return Err(Status::invalid_argument(format!(
                    "limit must be within 1..={MAX_LIMIT} (or 0 for {DEFAULT_LIMIT}), got {l}"
                )));
            }
        };
        let class = convert::vehicle_class(req.vehicle_class)?;
        let drivers = self
            .engine
            .nearby(center, radius_m, limit as usize, class)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::NearbyDriversResponse {
            drivers: drivers.iter().map(pb_nearby).collect(),
        }))
    }

    async fn get_surge(
        &self,
        request: Request<pb::GetSurgeRequest>,
    ) -> Result<Response<pb::GetSurgeResponse>, Status> {
        let req = request.into_inner();
        let point = convert::latlng("location", req.location)?;
        let class = convert::vehicle_class(req.vehicle_class)?;
        let reading = self.engine.surge(point, class).await.map_err(status)?;
        Ok(Response::new(pb::GetSurgeResponse {
            multiplier: reading.multiplier,
            h3_cell: reading.cell.to_string(),
            demand: reading.demand,
            supply: reading.supply,
        }))
    }

    async fn get_stats(
        &self,
        _request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let stats = self.engine.stats().await.map_err(status)?;
        Ok(Response::new(pb_stats(&stats, self.engine.started_at_ms())))
    }

    async fn get_driver(
        &self,
        request: Request<pb::GetDriverRequest>,
    ) -> Result<Response<pb::GetDriverResponse>, Status> {
        let id = convert::id("driver_id", &request.into_inner().driver_id)?;
        let driver = self.engine.driver(id).await.map_err(status)?;
        Ok(Response::new(pb::GetDriverResponse {
            driver: Some(pb_driver(&driver)),
        }))
    }
    async fn get_routes(
        &self,
        _request: Request<pb::GetRoutesRequest>,
    ) -> Result<Response<pb::GetRoutesResponse>, Status> {
        // No regions: nothing to route, every call is served here.
        Ok(Response::new(pb::GetRoutesResponse::default()))
    }
}
