//! The rider, query and event services in region mode: a trip request goes to the region of
//! its pickup, a trip id to the region that issued it, a query to the region of its point.
//! GetStats sums the regions (or reports one named by the `dispatch-region` metadata); an event
//! subscription follows one region, named by its `from_offset` (offsets carry their region) or
//! by the `dispatch-region` metadata.

use tonic::{Request, Response, Status};

use super::router::{REGION_HEADER, RegionRouter};
use crate::pb::{
    self, event_service_server::EventService, query_service_server::QueryService,
    rider_service_server::RiderService,
};

type Result<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl RiderService for RegionRouter {
    async fn request_trip(
        &self,
        request: Request<pb::RequestTripRequest>,
    ) -> Result<pb::RequestTripResponse> {
        let i = self.by_point("pickup", request.get_ref().pickup.as_ref())?;
        self.shard(i).riders.request_trip(request).await
    }

    type WatchTripStream = <crate::grpc::RiderApi as RiderService>::WatchTripStream;

    async fn watch_trip(
        &self,
        request: Request<pb::WatchTripRequest>,
    ) -> Result<Self::WatchTripStream> {
        let i = self.by_trip(&request.get_ref().trip_id)?;
        self.shard(i).riders.watch_trip(request).await
    }

    async fn cancel_trip(
        &self,
        request: Request<pb::CancelTripRequest>,
    ) -> Result<pb::CancelTripResponse> {
        let i = self.by_trip(&request.get_ref().trip_id)?;
        self.shard(i).riders.cancel_trip(request).await
    }

    async fn get_trip(&self, request: Request<pb::GetTripRequest>) -> Result<pb::GetTripResponse> {
        let i = self.by_trip(&request.get_ref().trip_id)?;
        self.shard(i).riders.get_trip(request).await
    }
}

#[tonic::async_trait]
impl QueryService for RegionRouter {
    async fn nearby_drivers(
        &self,
        request: Request<pb::NearbyDriversRequest>,
    ) -> Result<pb::NearbyDriversResponse> {
        let i = self.by_point("location", request.get_ref().location.as_ref())?;
        self.shard(i).queries.nearby_drivers(request).await
    }

    async fn get_surge(
        &self,
        request: Request<pb::GetSurgeRequest>,
    ) -> Result<pb::GetSurgeResponse> {
        let i = self.by_point("location", request.get_ref().location.as_ref())?;
        self.shard(i).queries.get_surge(request).await
    }

    async fn get_stats(
        &self,
        request: Request<pb::GetStatsRequest>,
    ) -> Result<pb::GetStatsResponse> {
        if let Some(i) = self.by_header(request.metadata())? {
            return self.shard(i).queries.get_stats(request).await;
        }
        // The sum over the regions; offsets are per region, so `next_event_offset` is 0 here.
        let mut total = pb::GetStatsResponse::default();
        for shard in self.shards() {
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
        let i = self.home(&request.get_ref().driver_id).await.unwrap_or(0);
        self.shard(i).queries.get_driver(request).await
    }
}

#[tonic::async_trait]
impl EventService for RegionRouter {
    type SubscribeStream = <crate::grpc::EventApi as EventService>::SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Self::SubscribeStream> {
        let by_offset = request.get_ref().from_offset.map(|o| self.map().of_id(o));
        let i = match (by_offset, self.by_header(request.metadata())?) {
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
        self.shard(i).events.subscribe(request).await
    }
}
