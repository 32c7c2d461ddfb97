//! The driver service in region mode: each call goes to the region of the driver (by the
//! position it goes online at), of the offer or of the trip it names; a location stream is
//! split over the regions; an offer stream merges every region's offers for the gateway.

use std::pin::Pin;

use futures_util::stream::{self, Stream};
use tonic::{Request, Response, Status, Streaming};

use super::router::RegionRouter;
use crate::grpc::drivers::Summary;
use crate::grpc::status;
use crate::pb::{self, driver_service_server::DriverService};

type Result<T> = std::result::Result<Response<T>, Status>;

impl RegionRouter {
    /// The region of the driver a call names; one no region knows goes to the first region,
    /// whose answer (NOT_FOUND) is the single-region one.
    async fn driver_home(&self, driver_id: &str) -> usize {
        self.home(driver_id).await.unwrap_or(0)
    }

    /// Whether region `i` holds `driver` as offline (so it may go online in another region).
    async fn is_offline_in(&self, i: usize, driver: &str) -> bool {
        let Ok(id) = crate::domain::ExternalId::new("driver_id", driver) else {
            return false;
        };
        matches!(
            self.shard(i).engine.driver(id).await,
            Ok(d) if d.status == crate::engine::DriverStatus::Offline
        )
    }
}

#[tonic::async_trait]
impl DriverService for RegionRouter {
    async fn go_online(
        &self,
        request: Request<pb::GoOnlineRequest>,
    ) -> Result<pb::GoOnlineResponse> {
        let req = request.get_ref();
        let i = self.by_point("location", req.location.as_ref())?;
        let driver = req.driver_id.clone();
        if let Some(home) = self.home(&driver).await
            && home != i
            && !self.is_offline_in(home, &driver).await
        {
            return Err(Status::failed_precondition(format!(
                "driver {driver:?} is known to region {:?}; moving between regions is not \
                 supported yet: go offline there first",
                self.map().regions()[home].name
            )));
        }
        let answer = self.shard(i).drivers.go_online(request).await?;
        self.remember(&driver, i);
        Ok(answer)
    }

    async fn go_offline(
        &self,
        request: Request<pb::GoOfflineRequest>,
    ) -> Result<pb::GoOfflineResponse> {
        let i = self.driver_home(&request.get_ref().driver_id).await;
        self.shard(i).drivers.go_offline(request).await
    }

    async fn update_location(
        &self,
        request: Request<pb::LocationUpdate>,
    ) -> Result<pb::UpdateLocationResponse> {
        let i = self.driver_home(&request.get_ref().driver_id).await;
        self.shard(i).drivers.update_location(request).await
    }

    async fn report_locations(
        &self,
        request: Request<Streaming<pb::LocationBatch>>,
    ) -> Result<pb::LocationSummary> {
        let mut stream = request.into_inner();
        let mut summary = Summary::new(Some(self.metrics()));
        let max = self.config().limits.max_batch_updates;
        let regions = self.shards().len();
        while let Some(batch) = stream.message().await? {
            let valid = summary.validate(batch, max);
            let mut per_region: Vec<Vec<_>> = vec![Vec::new(); regions];
            for (driver, position) in valid {
                let i = self.driver_home(&driver).await;
                per_region[i].push((driver, position));
            }
            for (i, updates) in per_region.into_iter().enumerate() {
                if updates.is_empty() {
                    continue;
                }
                let count = updates.len() as u64;
                let outcome = self
                    .shard(i)
                    .engine
                    .apply_locations(updates)
                    .await
                    .map_err(status)?;
                summary.count(outcome, count);
            }
        }
        Ok(Response::new(summary.into_pb(max)))
    }

    type SubscribeOffersStream =
        Pin<Box<dyn Stream<Item = std::result::Result<pb::DriverNotice, Status>> + Send>>;

    async fn subscribe_offers(
        &self,
        request: Request<pb::SubscribeOffersRequest>,
    ) -> Result<Self::SubscribeOffersStream> {
        // A gateway's drivers may be in any region: one stream per region, merged. Each
        // region's own stream starts with its pending offers, so none is missed.
        let req = request.into_inner();
        let mut streams = Vec::with_capacity(self.shards().len());
        for shard in self.shards() {
            let answer = shard
                .drivers
                .subscribe_offers(Request::new(req.clone()))
                .await?;
            streams.push(answer.into_inner());
        }
        Ok(Response::new(Box::pin(stream::select_all(streams))))
    }

    async fn respond_to_offer(
        &self,
        request: Request<pb::RespondToOfferRequest>,
    ) -> Result<pb::RespondToOfferResponse> {
        let i = self.by_offer(&request.get_ref().offer_id)?;
        self.shard(i).drivers.respond_to_offer(request).await
    }

    async fn mark_arrived(
        &self,
        request: Request<pb::TripActionRequest>,
    ) -> Result<pb::TripActionResponse> {
        let i = self.by_trip(&request.get_ref().trip_id)?;
        self.shard(i).drivers.mark_arrived(request).await
    }

    async fn start_trip(
        &self,
        request: Request<pb::TripActionRequest>,
    ) -> Result<pb::TripActionResponse> {
        let i = self.by_trip(&request.get_ref().trip_id)?;
        self.shard(i).drivers.start_trip(request).await
    }

    async fn complete_trip(
        &self,
        request: Request<pb::TripActionRequest>,
    ) -> Result<pb::TripActionResponse> {
        let i = self.by_trip(&request.get_ref().trip_id)?;
        self.shard(i).drivers.complete_trip(request).await
    }

    async fn cancel_trip_by_driver(
        &self,
        request: Request<pb::TripActionRequest>,
    ) -> Result<pb::TripActionResponse> {
        let i = self.by_trip(&request.get_ref().trip_id)?;
        self.shard(i).drivers.cancel_trip_by_driver(request).await
    }
}
