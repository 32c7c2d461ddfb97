//! RiderService: what rider gateways call. WatchTrip is a snapshot of the trip read atomically
//! with the event offset, followed by that trip's events (handed over by the event router from
//! that offset on), so no change is missed or repeated between the two.

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::{self, pb_event, pb_trip};
use super::follow::{Source, Step, follow};
use super::status;
use crate::engine::{Engine, TripRequest};
use crate::events::{RouteKey, Router};
use crate::pb::{self, rider_service_server::RiderService};

/// The RiderService implementation.
#[derive(Debug, Clone)]
pub(crate) struct RiderApi {
    engine: Engine,
    router: Router,
}

impl RiderApi {
    /// A service talking to `engine`; trip watchers are fed by `router` (over its bus).
    pub(crate) fn new(engine: Engine, router: Router) -> Self {
        RiderApi { engine, router }
    }
}

#[tonic::async_trait]
impl RiderService for RiderApi {
    async fn request_trip(
        &self,
        request: Request<pb::RequestTripRequest>,
    ) -> Result<Response<pb::RequestTripResponse>, Status> {
        let req = request.into_inner();
        let trip_request = TripRequest {
            rider: convert::id("rider_id", &req.rider_id)?,
            request_id: convert::optional_id("request_id", &req.request_id)?,
            pickup: convert::latlng("pickup", req.pickup)?,
            dropoff: convert::latlng("dropoff", req.dropoff)?,
            class: convert::vehicle_class(req.vehicle_class)?,
        };
        let (trip, deduplicated) = self
            .engine
            .request_trip(trip_request)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RequestTripResponse {
            trip: Some(pb_trip(&trip)),
            deduplicated,
        }))
    }

    type WatchTripStream = ReceiverStream<Result<pb::TripUpdate, Status>>;

    async fn watch_trip(
        &self,
        request: Request<pb::WatchTripRequest>,
    ) -> Result<Response<Self::WatchTripStream>, Status> {
        let id = convert::trip_id(&request.into_inner().trip_id)?;
        let (mut trip, from) = self.engine.trip(id).await.map_err(status)?;
        let first = pb::TripUpdate {
            trip: Some(pb_trip(&trip)),
            event: None,
        };
        if trip.status.is_terminal() {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            // The receiver is alive right here, and the channel has room for one.
            let _ = tx.try_send(Ok(first));
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        // The same fold the dispatch state uses (`Trip::apply`), so each snapshot is what
        // GetTrip answers at that offset; events that are not part of the trip's lifecycle
        // (scheduling) are skipped.
        let watch = self.router.watch(RouteKey::Trip(id), from).await;
        let stream = follow(Source::Keyed(watch), vec![first], move |event| {
            if !trip.apply(event) {
                return Step::Skip;
            }
            let update = pb::TripUpdate {
                trip: Some(pb_trip(&trip)),
                event: Some(pb_event(event)),
            };
            if trip.status.is_terminal() {
                Step::Last(update)
            } else {
                Step::Send(update)
            }
        });
        Ok(Response::new(stream))
    }

    async fn cancel_trip(
        &self,
        request: Request<pb::CancelTripRequest>,
    ) -> Result<Response<pb::CancelTripResponse>, Status> {
        let req = request.into_inner();
        let trip = convert::trip_id(&req.trip_id)?;
        let rider = convert::id("rider_id", &req.rider_id)?;
        let trip = self.engine.cancel_trip(trip, rider).await.map_err(status)?;
        Ok(Response::new(pb::CancelTripResponse {
            trip: Some(pb_trip(&trip)),
        }))
    }

    async fn get_trip(
        &self,
        request: Request<pb::GetTripRequest>,
    ) -> Result<Response<pb::GetTripResponse>, Status> {
        let id = convert::trip_id(&request.into_inner().trip_id)?;
        let (trip, _) = self.engine.trip(id).await.map_err(status)?;
        Ok(Response::new(pb::GetTripResponse {
            trip: Some(pb_trip(&trip)),
        }))
    }
}
