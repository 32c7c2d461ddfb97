//! The rider, query and event services in region mode: a trip request goes to the region of
//! its pickup, a trip id to the region that issued it, a query to the region of its point,
//! here or at the region's owner. GetStats sums the regions served here (or reports one named
//! by the `dispatch-region` metadata, wherever it is served); an event subscription follows one
//! region, named by its `from_offset` (offsets carry their region) or by the `dispatch-region`
//! metadata. GetRoutes tells gateways where each region is served.

use std::pin::Pin;

use futures_util::Stream;
use tonic::{Request, Response, Status};

use super::router::{REGION_HEADER, RegionRouter, Target};
use crate::pb::{
    self, event_service_client::EventServiceClient, event_service_server::EventService,
    query_service_client::QueryServiceClient, query_service_server::QueryService,
    rider_service_client::RiderServiceClient, rider_service_server::RiderService,
};

type Result<T> = std::result::Result<Response<T>, Status>;
type Boxed<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

/// A call for region `$i`: to its `$service` here, or forwarded with `$client` to its owner
/// (`$kind`: `unary` or `stream`, which is boxed).
macro_rules! route {
    ($router:expr, $i:expr, $request:ident, $service:ident, $client:ident, $method:ident) => {{
        match $router.target($i, $request.metadata())? {
            Target::Local(shard) => shard.$service.$method($request).await,
            Target::Remote(peer) => {
                let (metadata, _, message) = $request.into_parts();
                $client::new(peer.channel.clone())
                    .$method(peer.unary(&metadata, message))
                    .await
                    .map_err(|s| peer.failed(s))
            }
        }
    }};
    (stream $router:expr, $i:expr, $request:ident, $service:ident, $client:ident, $method:ident) => {{
        match $router.target($i, $request.metadata())? {
            Target::Local(shard) => {
                let answer = shard.$service.$method($request).await?;
                Ok(Response::new(Box::pin(answer.into_inner()) as Boxed<_>))
            }
            Target::Remote(peer) => {
                let (metadata, _, message) = $request.into_parts();
                let answer = $client::new(peer.channel.clone())
                    .$method(peer.stream(&metadata, message))
                    .await
                    .map_err(|s| peer.failed(s))?;
                Ok(Response::new(Box::pin(answer.into_inner()) as Boxed<_>))
            }
        }
    }};
}

#[tonic::async_trait]
impl RiderService for RegionRouter {
    async fn request_trip(
        &self,
        request: Request<pb::RequestTripRequest>,
    ) -> Result<pb::RequestTripResponse> {
        let req = request.get_ref();
        let i = self.by_point("pickup", req.pickup.as_ref())?;
        // A pickup near a border sees the drivers across it: the nearest few move here first
        // (`border`; from another process's regions through RegionService.PullDrivers).
        if let (Ok(pickup), Ok(class)) = (
            crate::grpc::convert::latlng("pickup", req.pickup),
            crate::grpc::convert::vehicle_class(req.vehicle_class),
        ) {
            self.pull_across(i, pickup, class, request.metadata()).await;
        }
        route!(self, i, request, riders, RiderServiceClient, request_trip)
    }

    type WatchTripStream = Boxed<pb::TripUpdate>;

    async fn watch_trip(
        &self,
        request: Request<pb::WatchTripRequest>,
    ) -> Result<Self::WatchTripStream> {
        let i = self.by_trip(&request.get_ref().trip_id)?;
        route!(stream self, i, request, riders, RiderServiceClient, watch_trip)
    }

    async fn cancel_trip(
        &self,
        request: Request<pb::CancelTripRequest>,
    ) -> Result<pb::CancelTripResponse> {
        let i = self.by_trip(&request.get_ref().trip_id)?;
        route!(self, i, request, riders, RiderServiceClient, cancel_trip)
    }

    async fn get_trip(&self, request: Request<pb::GetTripRequest>) -> Result<pb::GetTripResponse> {
        let i = self.by_trip(&request.get_ref().trip_id)?;
        route!(self, i, request, riders, RiderServiceClient, get_trip)
    }
}

#[tonic::async_trait]
impl QueryService for RegionRouter {
    async fn nearby_drivers(
        &self,
        request: Request<pb::NearbyDriversRequest>,
    ) -> Result<pb::NearbyDriversResponse> {
        let i = self.by_point("location", request.get_ref().location.as_ref())?;
        route!(
            self,
            i,
            request,
            queries,
            QueryServiceClient,
            nearby_drivers
        )
    }

    async fn get_surge(
        &self,
        request: Request<pb::GetSurgeRequest>,
    ) -> Result<pb::GetSurgeResponse> {
        let i = self.by_point("location", request.get_ref().location.as_ref())?;
        route!(self, i, request, queries, QueryServiceClient, get_surge)
    }

    async fn get_stats(
        &self,
        request: Request<pb::GetStatsRequest>,
    ) -> Result<pb::GetStatsResponse> {
        if let Some(i) = self.by_header_or_only(request.metadata())? {
            return route!(self, i, request, queries, QueryServiceClient, get_stats);
        }
        // The sum over the regions served here; offsets are per region, so
        // `next_event_offset` is 0 here.
        let mut total = pb::GetStatsResponse::default();
        for (_, shard) in self.local_shards() {
            let s = shard
                .queries
                .get_stats(Request::new(pb::GetStatsRequest {}))
                .await?
                .into_inner();
            total.drivers_offline += s.drivers_offline;
            total.drivers_available += s.drivers_available;
            total.drivers_offered += s.drivers_offered;
            total.drivers_on_trip += s.drivers_on_trip;
            total.open_trips += s.open_trips;
            total.pending_offers += s.pending_offers;
            total.location_updates += s.location_updates;
            total.trips_completed += s.trips_completed;
            total.trips_cancelled += s.trips_cancelled;
            total.trips_no_drivers += s.trips_no_drivers;
            total.trips_requested += s.trips_requested;
            if total.process_started_at_ms == 0
                || s.process_started_at_ms < total.process_started_at_ms
            {
                total.process_started_at_ms = s.process_started_at_ms;
            }
        }
        Ok(Response::new(total))
    }

    async fn get_driver(
        &self,
        request: Request<pb::GetDriverRequest>,
    ) -> Result<pb::GetDriverResponse> {
        let i = match self.by_header(request.metadata())? {
            Some(i) => i,
            None => self
                .home(&request.get_ref().driver_id, request.metadata())
                .await
                .unwrap_or(0),
        };
        route!(self, i, request, queries, QueryServiceClient, get_driver)
    }

    async fn get_routes(
        &self,
        _request: Request<pb::GetRoutesRequest>,
    ) -> Result<pb::GetRoutesResponse> {
        let (owners, version) = self.routes();
        let routes = self
            .map()
            .regions()
            .iter()
            .zip(owners)
            .map(|(region, owner)| pb::RegionRoute {
                region: region.name.clone(),
                owner_address: owner.unwrap_or_default(),
                first_offset: region.first_offset(),
            })
            .collect();
        Ok(Response::new(pb::GetRoutesResponse { routes, version }))
    }
}

#[tonic::async_trait]
impl EventService for RegionRouter {
    type SubscribeStream = Boxed<pb::DispatchEvent>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Self::SubscribeStream> {
        let by_offset = request.get_ref().from_offset.map(|o| self.map().of_id(o));
        let i = match (by_offset, self.by_header_or_only(request.metadata())?) {
            (Some(Some(i)), Some(named)) if i != named => {
                return Err(Status::invalid_argument(format!(
                    "from_offset {} belongs to region {:?}, not to the {REGION_HEADER} {:?}",
                    request.get_ref().from_offset.unwrap_or_default(),
                    self.map().regions()[i].name,
                    self.map().regions()[named].name
                )));
            }
            (Some(Some(i)), _) => i,
            (Some(None), _) => {
                return Err(Status::out_of_range(format!(
                    "from_offset {} is in no region's range; region n's offsets start at n * {}",
                    request.get_ref().from_offset.unwrap_or_default(),
                    super::regions::REGION_ID_SPAN
                )));
            }
            (None, Some(named)) => named,
            (None, None) => {
                return Err(Status::invalid_argument(format!(
                    "this server has regions ({}): name one in the {REGION_HEADER} metadata \
                     or give a from_offset (each region has its own event stream)",
                    self.map().names()
                )));
            }
        };
        route!(stream self, i, request, events, EventServiceClient, subscribe)
    }
}
