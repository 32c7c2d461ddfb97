//! The driver service in region mode: each call goes to the region of the driver (by the
//! position it goes online at), of the offer or of the trip it names, here or at its owner; a
//! location stream is split over the regions; an offer stream merges the offers of every region
//! served here and, unless forwarded, of every other owner, following them as they move
//! (`route_offers`).

use std::pin::Pin;

use futures_util::stream::{self, Stream};
use tonic::{Request, Response, Status, Streaming};

use super::router::{RegionRouter, Target};
use crate::grpc::drivers::Summary;
use crate::grpc::status;
use crate::pb::{
    self, driver_service_client::DriverServiceClient, driver_service_server::DriverService,
};

type Result<T> = std::result::Result<Response<T>, Status>;

impl RegionRouter {
    /// The region of the driver a call names; one no region knows goes to the first region,
    /// whose answer (NOT_FOUND) is the single-region one.
    async fn driver_home(&self, driver_id: &str, metadata: &tonic::metadata::MetadataMap) -> usize {
        self.home(driver_id, metadata).await.unwrap_or(0)
    }

    /// The region a location report of `driver` at `position` goes to: the driver's region if
    /// it is known here (remembered, or held by a region served here; an available driver
    /// that crossed the border by more than the margin is moved first, `border`), else the
    /// region of the position (no lookup at other owners on the hot path; a driver not there
    /// is counted as an unknown driver by that region's owner).
    async fn location_home(
        &self,
        driver: &str,
        position: crate::LatLng,
        metadata: &tonic::metadata::MetadataMap,
    ) -> usize {
        if let Some(i) = self.home_here(driver).await {
            return self.crossing(i, driver, position, metadata).await;
        }
        self.map().locate("location", position).unwrap_or(0)
    }

    /// Whether region `i` holds `driver` as offline (so it may go online in another region).
    async fn is_offline_in(
        &self,
        i: usize,
        driver: &str,
        metadata: &tonic::metadata::MetadataMap,
    ) -> bool {
        let Ok(id) = crate::domain::ExternalId::new("driver_id", driver) else {
            return false;
        };
        match self.target(i, metadata) {
            Ok(Target::Local(shard)) => matches!(
                shard.engine.driver(id).await,
                Ok(d) if d.status == crate::engine::DriverStatus::Offline
            ),
            Ok(Target::Remote(peer)) => matches!(
                peer.driver(driver, metadata).await,
                Some(d) if d.state() == pb::DriverState::Offline
            ),
            Err(_) => false,
        }
    }

    /// Sends `updates` (one region's part of a batch) to region `i`, here or at its owner.
    async fn send_locations(
        &self,
        i: usize,
        metadata: &tonic::metadata::MetadataMap,
        updates: Vec<(String, crate::LatLng)>,
        summary: &mut Summary,
    ) -> std::result::Result<(), Status> {
        let count = updates.len() as u64;
        let forwarded = metadata.get(super::forward::FORWARDED_HEADER).is_some();
        match self.target_onward(i, metadata)? {
            Target::Local(shard) => {
                let outcome = shard
                    .engine
                    .apply_locations(updates)
                    .await
                    .map_err(status)?;
                summary.count(outcome, count);
            }
            Target::Remote(peer) => {
                let batch = pb::LocationBatch {
                    updates: updates
                        .into_iter()
                        .map(|(driver_id, p)| pb::LocationUpdate {
                            driver_id,
                            recorded_at_ms: 0,
                            location: Some(pb::LatLng {
                                lat_deg: p.lat_deg(),
                                lng_deg: p.lng_deg(),
                            }),
                        })
                        .collect(),
                };
                let batch = stream::iter([batch]);
                let request = if forwarded {
                    peer.onward(metadata, batch)
                } else {
                    peer.unary(metadata, batch)
                };
                let answer = DriverServiceClient::new(peer.channel.clone())
                    .report_locations(request)
                    .await
                    .map_err(|s| peer.failed(s))?
                    .into_inner();
                summary.add_forwarded(&answer);
            }
        }
        Ok(())
    }
}

/// A unary call for region `$i`: to its services here, or forwarded to its owner.
macro_rules! route {
    ($router:expr, $i:expr, $request:ident, $method:ident) => {{
        match $router.target($i, $request.metadata())? {
            Target::Local(shard) => shard.drivers.$method($request).await,
            Target::Remote(peer) => {
                let (metadata, _, message) = $request.into_parts();
                DriverServiceClient::new(peer.channel.clone())
                    .$method(peer.unary(&metadata, message))
                    .await
                    .map_err(|s| peer.failed(s))
            }
        }
    }};
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
        let position = crate::grpc::convert::latlng("location", req.location)?;
        if let Some(home) = self.home(&driver, request.metadata()).await
            && home != i
            && !self.is_offline_in(home, &driver, request.metadata()).await
        {
            // An available driver moves (leave there, join here: `border`, or `route_border`
            // when region `i` is owned elsewhere); a busy one stays, and so does one whose
            // current region is served by another process (that owner decides its moves).
            let id = crate::grpc::convert::id("driver_id", &driver)?;
            let moved = match self.local(i) {
                Some(_) => self
                    .move_driver(home, i, &id, Some(position))
                    .await
                    .map(drop),
                None => {
                    self.move_remote(home, i, &id, position, request.metadata())
                        .await
                }
            };
            if let Err(why) = moved {
                return Err(Status::failed_precondition(format!(
                    "driver {driver:?} belongs to region {:?} and cannot move to {:?} now ({}); \
                     finish its offer or trip there, or go offline there first",
                    self.map().regions()[home].name,
                    self.map().regions()[i].name,
                    why.message()
                )));
            }
        }
        let answer = route!(self, i, request, go_online)?;
        self.remember(&driver, i);
        Ok(answer)
    }

    async fn go_offline(
        &self,
        request: Request<pb::GoOfflineRequest>,
    ) -> Result<pb::GoOfflineResponse> {
        let i = self
            .driver_home(&request.get_ref().driver_id, request.metadata())
            .await;
        route!(self, i, request, go_offline)
    }

    async fn update_location(
        &self,
        request: Request<pb::LocationUpdate>,
    ) -> Result<pb::UpdateLocationResponse> {
        let req = request.get_ref();
        let position = crate::grpc::convert::latlng("location", req.location)?;
        let i = self
            .location_home(&req.driver_id, position, request.metadata())
            .await;
        route!(self, i, request, update_location)
    }

    async fn report_locations(
        &self,
        request: Request<Streaming<pb::LocationBatch>>,
    ) -> Result<pb::LocationSummary> {
        let (metadata, _, mut stream) = request.into_parts();
        let mut summary = Summary::new(Some(self.metrics()));
        let max = self.config().limits.max_batch_updates;
        let regions = self.regions_len();
        while let Some(batch) = stream.message().await? {
            let valid = summary.validate(batch, max);
            let mut per_region: Vec<Vec<_>> = vec![Vec::new(); regions];
            for (driver, position) in valid {
                let i = self.location_home(&driver, position, &metadata).await;
                per_region[i].push((driver, position));
            }
            for (i, updates) in per_region.into_iter().enumerate() {
                if !updates.is_empty() {
                    self.send_locations(i, &metadata, updates, &mut summary)
                        .await?;
                }
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
        // One stream for every region, kept whole while regions move (`route_offers`).
        let (metadata, _, req) = request.into_parts();
        crate::grpc::convert::gateway_id(
            &req.gateway_id,
            "a SubscribeOffers stream carries the offers of the drivers that went online with \
             this gateway id; there is no shared feed",
        )?;
        let mut named = std::collections::HashSet::new();
        for &o in &req.resume_from {
            let Some(i) = self.map().of_id(o) else {
                return Err(Status::invalid_argument(format!(
                    "resume_from {o} is an offset of no region (region n's offsets start at n * \
                     {}); give the resume_offset of a notice this stream sent",
                    super::regions::REGION_ID_SPAN
                )));
            };
            if !named.insert(i) {
                return Err(Status::invalid_argument(format!(
                    "resume_from names region {:?} twice; give one offset per region, the \
                     resume_offset of the last notice received from it",
                    self.map().regions()[i].name
                )));
            }
        }
        Ok(Response::new(Box::pin(super::route_offers::merged(
            self.clone(),
            metadata,
            req,
        ))))
    }

    async fn respond_to_offer(
        &self,
        request: Request<pb::RespondToOfferRequest>,
    ) -> Result<pb::RespondToOfferResponse> {
        let i = self.by_offer(&request.get_ref().offer_id)?;
        route!(self, i, request, respond_to_offer)
    }

    async fn mark_arrived(
        &self,
        request: Request<pb::TripActionRequest>,
    ) -> Result<pb::TripActionResponse> {
        let i = self.by_trip(&request.get_ref().trip_id)?;
        route!(self, i, request, mark_arrived)
    }

    async fn start_trip(
        &self,
        request: Request<pb::TripActionRequest>,
    ) -> Result<pb::TripActionResponse> {
        let i = self.by_trip(&request.get_ref().trip_id)?;
        route!(self, i, request, start_trip)
    }

    async fn complete_trip(
        &self,
        request: Request<pb::TripActionRequest>,
    ) -> Result<pb::TripActionResponse> {
        let i = self.by_trip(&request.get_ref().trip_id)?;
        route!(self, i, request, complete_trip)
    }

    async fn cancel_trip_by_driver(
        &self,
        request: Request<pb::TripActionRequest>,
    ) -> Result<pb::TripActionResponse> {
        let i = self.by_trip(&request.get_ref().trip_id)?;
        route!(self, i, request, cancel_trip_by_driver)
    }
}
