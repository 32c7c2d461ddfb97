//! DriverService: what driver gateways call. Location batches are validated here without
//! allocating, so the dispatcher thread only sees well-formed updates; offers reach gateways
//! through one stream per gateway, fed by the event router with that gateway's offers only.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, is_valid_id, pb_driver, pb_offer, pb_trip};
use super::follow::{Source, Step, follow};
use super::status;
use crate::config::Config;
use crate::domain::{ExternalId, LatLng};
use crate::engine::{Engine, GoOnline, LocationOutcome, TripAction};
use crate::events::{EventKind, OfferCancelReason, RouteKey, Router};
use crate::pb::{self, driver_notice::Notice, driver_service_server::DriverService};
use crate::telemetry::Metrics;

/// Examples of rejected updates kept per stream.
const MAX_EXAMPLES: usize = 10;

/// The DriverService implementation.
#[derive(Debug, Clone)]
pub(crate) struct DriverApi {
    engine: Engine,
    router: Router,
    config: Arc<Config>,
    metrics: Option<Arc<Metrics>>,
}

impl DriverApi {
    /// A service talking to `engine`; offer streams are fed by `router` (over its bus).
    pub(crate) fn new(engine: Engine, router: Router, config: Arc<Config>) -> Self {
        DriverApi {
            engine,
            router,
            config,
            metrics: None,
        }
    }

    /// Counts rejected location updates by reason in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn trip_action(
        &self,
        req: pb::TripActionRequest,
        action: TripAction,
    ) -> Result<Response<pb::TripActionResponse>, Status> {
        let trip = convert::trip_id(&req.trip_id)?;
        let driver = convert::id("driver_id", &req.driver_id)?;
        let trip = self
            .engine
            .trip_action(trip, driver, action)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::TripActionResponse {
            trip: Some(pb_trip(&trip)),
        }))
    }
}

/// Running totals of one ReportLocations stream (also kept by the region router, which
/// splits each batch over the regions' engines).
#[derive(Default)]
pub(crate) struct Summary {
    metrics: Option<Arc<Metrics>>,
    batches: u64,
    accepted: u64,
    rejected: BTreeMap<i32, u64>,
    examples: Vec<String>,
}

impl Summary {
    pub(crate) fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Summary {
            metrics,
            ..Summary::default()
        }
    }

    /// Counts a batch and returns its valid updates; the invalid ones (or the whole batch when
    /// it is over `max` updates) are counted as rejected.
    pub(crate) fn validate(
        &mut self,
        batch: pb::LocationBatch,
        max: usize,
    ) -> Vec<(String, LatLng)> {
        use pb::LocationRejection as R;
        self.batches += 1;
        let len = batch.updates.len();
        if len > max {
            self.reject(R::BatchTooLarge, len as u64, || {
                format!(
                    "a LocationBatch of {len} updates was refused whole: the limit is {max} \
                     updates per batch; split it"
                )
            });
            return Vec::new();
        }
        let mut valid = Vec::with_capacity(batch.updates.len());
        for update in batch.updates {
            if !is_valid_id(&update.driver_id) {
                self.reject(R::InvalidDriverId, 1, || {
                    format!("{:?}: invalid driver_id", update.driver_id)
                });
                continue;
            }
            match update.location.map(|l| LatLng::new(l.lat_deg, l.lng_deg)) {
                Some(Ok(position)) => valid.push((update.driver_id, position)),
                Some(Err(e)) => self.reject(R::InvalidCoordinates, 1, || {
                    format!("{}: {e}", update.driver_id)
                }),
                None => self.reject(R::InvalidCoordinates, 1, || {
                    format!("{}: location is required", update.driver_id)
                }),
            }
        }
        valid
    }

    /// Counts what the engine made of `count` valid updates (`None`: the batch was shed).
    pub(crate) fn count(&mut self, outcome: Option<LocationOutcome>, count: u64) {
        use pb::LocationRejection as R;
        match outcome {
            Some(outcome) => {
                self.accepted += outcome.accepted;
                let mut examples = outcome.examples.into_iter();
                self.reject(R::UnknownDriver, outcome.unknown_driver, || {
                    examples.next().unwrap_or_default()
                });
                self.reject(R::DriverOffline, outcome.driver_offline, || {
                    examples.next().unwrap_or_default()
                });
            }
            None => self.reject(R::Shed, count, || {
                format!("a batch of {count} updates was shed: the engine is overloaded")
            }),
        }
    }

    /// Adds what an owning process made of the part of a batch forwarded to it (its own
    /// metrics counted its rejections already).
    pub(crate) fn add_forwarded(&mut self, owner: &pb::LocationSummary) {
        self.accepted += owner.accepted;
        for r in &owner.rejections {
            *self.rejected.entry(r.reason).or_default() += r.count;
        }
        for example in &owner.examples {
            if self.examples.len() < MAX_EXAMPLES {
                self.examples.push(example.clone());
            }
        }
    }

    fn reject(
        &mut self,
        reason: pb::LocationRejection,
        count: u64,
        example: impl FnOnce() -> String,
    ) {
        if count == 0 {
            return;
        }
        if let Some(m) = &self.metrics {
            m.location_rejected(reason.as_str_name(), count);
        }
        *self.rejected.entry(reason as i32).or_default() += count;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(example());
        }
    }

    pub(crate) fn into_pb(self, max_batch_updates: usize) -> pb::LocationSummary {
        pb::LocationSummary {
            max_batch_updates: u64::try_from(max_batch_updates).unwrap_or(u64::MAX),
            batches: self.batches,
            accepted: self.accepted,
            rejected: self.rejected.values().sum(),
            rejections: self
                .rejected
                .into_iter()
                .map(|(reason, count)| pb::RejectionCount { reason, count })
                .collect(),
            examples: self.examples,
        }
    }
}

#[tonic::async_trait]
impl DriverService for DriverApi {
    async fn go_online(
        &self,
        request: Request<pb::GoOnlineRequest>,
    ) -> Result<Response<pb::GoOnlineResponse>, Status> {
        let req = request.into_inner();
        let online = GoOnline {
            driver: convert::id("driver_id", &req.driver_id)?,
            position: convert::latlng("location", req.location)?,
            rating: convert::rating(req.rating)?,
            class: convert::vehicle_class(req.vehicle_class)?,
            gateway: Some(convert::gateway_id(
                &req.gateway_id,
                "name the driver gateway whose SubscribeOffers stream receives this driver's \
                 offers",
            )?),
        };
        let driver = self.engine.go_online(online).await.map_err(status)?;
        Ok(Response::new(pb::GoOnlineResponse {
            driver: Some(pb_driver(&driver)),
        }))
    }

    async fn go_offline(
        &self,
        request: Request<pb::GoOfflineRequest>,
    ) -> Result<Response<pb::GoOfflineResponse>, Status> {
        let driver = convert::id("driver_id", &request.into_inner().driver_id)?;
        let driver = self.engine.go_offline(driver).await.map_err(status)?;
        Ok(Response::new(pb::GoOfflineResponse {
            driver: Some(pb_driver(&driver)),
        }))
    }

    async fn update_location(
        &self,
        request: Request<pb::LocationUpdate>,
    ) -> Result<Response<pb::UpdateLocationResponse>, Status> {
        let req = request.into_inner();
        let driver = convert::id("driver_id", &req.driver_id)?;
        let position = convert::latlng("location", req.location)?;
        self.engine
            .update_location(driver, position)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UpdateLocationResponse {}))
    }

    async fn report_locations(
        &self,
        request: Request<Streaming<pb::LocationBatch>>,
    ) -> Result<Response<pb::LocationSummary>, Status> {
        let mut stream = request.into_inner();
        let mut summary = Summary::new(self.metrics.clone());
        let max = self.config.limits.max_batch_updates;
        while let Some(batch) = stream.message().await? {
            let valid = summary.validate(batch, max);
            if valid.is_empty() {
                continue;
            }
            let count = valid.len() as u64;
            let outcome = self.engine.apply_locations(valid).await.map_err(status)?;
            summary.count(outcome, count);
        }
        Ok(Response::new(summary.into_pb(max)))
    }

    type SubscribeOffersStream = ReceiverStream<Result<pb::DriverNotice, Status>>;

    async fn subscribe_offers(
        &self,
        request: Request<pb::SubscribeOffersRequest>,
    ) -> Result<Response<Self::SubscribeOffersStream>, Status> {
        let req = request.into_inner();
        let gateway = convert::gateway_id(
            &req.gateway_id,
            "a SubscribeOffers stream carries the offers of the drivers that went online with \
             this gateway id; there is no shared feed",
        )?;
        let (initial, from) = match resume_point(&self.engine, &req.resume_from)? {
            // Everything after the last notice received, read back if it left memory.
            Some(from) => (Vec::new(), from),
            None => {
                let (pending, from) = self
                    .engine
                    .pending_offers(Some(gateway.clone()))
                    .await
                    .map_err(status)?;
                let last = pending.len();
                let initial = (pending.iter().enumerate())
                    .map(|(i, o)| {
                        let mut n = notice(Notice::Offer(pb_offer(o)));
                        // Only once all of them arrived does resuming from here lose nothing.
                        if i + 1 == last {
                            n.resume_offset = from;
                        }
                        n
                    })
                    .collect();
                (initial, from)
            }
        };
        let watch = self
            .router
            .watch(RouteKey::Gateway(Some(gateway.clone())), from)
            .await;
        let stream = follow(
            Source::Keyed(watch),
            initial,
            move |event| match offer_notice(&event.kind, Some(&gateway)) {
                Some(mut n) => {
                    n.resume_offset = event.offset + 1;
                    Step::Send(n)
                }
                None => Step::Skip,
            },
        );
        Ok(Response::new(stream))
    }

    async fn respond_to_offer(
        &self,
        request: Request<pb::RespondToOfferRequest>,
    ) -> Result<Response<pb::RespondToOfferResponse>, Status> {
        let req = request.into_inner();
        let offer = convert::offer_id(&req.offer_id)?;
        let driver = convert::id("driver_id", &req.driver_id)?;
        let trip = self
            .engine
            .respond(offer, driver, req.accept)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RespondToOfferResponse {
            trip: Some(pb_trip(&trip)),
        }))
    }

    async fn mark_arrived(
        &self,
        request: Request<pb::TripActionRequest>,
    ) -> Result<Response<pb::TripActionResponse>, Status> {
        self.trip_action(request.into_inner(), TripAction::Arrive)
            .await
    }

    async fn start_trip(
        &self,
        request: Request<pb::TripActionRequest>,
    ) -> Result<Response<pb::TripActionResponse>, Status> {
        self.trip_action(request.into_inner(), TripAction::Start)
            .await
    }

    async fn complete_trip(
        &self,
        request: Request<pb::TripActionRequest>,
    ) -> Result<Response<pb::TripActionResponse>, Status> {
        self.trip_action(request.into_inner(), TripAction::Complete)
            .await
    }

    async fn cancel_trip_by_driver(
        &self,
        request: Request<pb::TripActionRequest>,
    ) -> Result<Response<pb::TripActionResponse>, Status> {
        self.trip_action(request.into_inner(), TripAction::Cancel)
            .await
    }
}

fn notice(n: Notice) -> pb::DriverNotice {
    pb::DriverNotice {
        notice: Some(n),
        resume_offset: 0,
    }
}

/// The offset `resume_from` names for `engine`'s stream, if any. Every offset must be one this
/// engine issued (the region mode's merge hands each region only its own) and at most one;
/// beyond the head is OUT_OF_RANGE.
fn resume_point(engine: &Engine, resume_from: &[u64]) -> Result<Option<u64>, Status> {
    use crate::cluster::regions::REGION_ID_SPAN;
    let head = engine.bus().next_offset();
    let mine = |o: u64| o / REGION_ID_SPAN == head / REGION_ID_SPAN;
    match resume_from {
        [] => Ok(None),
        [o] if !mine(*o) => Err(Status::invalid_argument(format!(
            "resume_from {o} is not an offset of this server's event stream (its next offset is \
             {head}); give the resume_offset of a notice this stream sent"
        ))),
        [o] if *o > head => Err(Status::out_of_range(format!(
            "resume_from {o} is beyond the head of the event stream (next offset: {head}); \
             resubscribe without it to start from the pending offers"
        ))),
        [o] => Ok(Some(*o)),
        _ => Err(Status::invalid_argument(format!(
            "resume_from names {} offsets, but this server has one event stream: give the \
             resume_offset of the last notice received",
            resume_from.len()
        ))),
    }
}

/// The notice a gateway gets for an event, if the event concerns one of its drivers.
fn offer_notice(kind: &EventKind, gateway: Option<&ExternalId>) -> Option<pb::DriverNotice> {
    let closed = |o: &crate::events::OfferRef, reason: pb::OfferCancelReason| pb::OfferClosed {
        offer_id: o.offer.to_string(),
        trip_id: o.trip.to_string(),
        driver_id: o.driver.to_string(),
        reason: reason.into(),
    };
    let n = match kind {
        EventKind::OfferSent(o) if o.gateway.as_ref() == gateway => Notice::Offer(pb_offer(o)),
        EventKind::OfferExpired(o) if o.gateway.as_ref() == gateway => {
            Notice::OfferExpired(closed(o, pb::OfferCancelReason::Unspecified))
        }
        EventKind::OfferCancelled(o, reason) if o.gateway.as_ref() == gateway => {
            let reason = match reason {
                OfferCancelReason::TripCancelled => pb::OfferCancelReason::TripCancelled,
                OfferCancelReason::DriverOffline => pb::OfferCancelReason::DriverOffline,
            };
            Notice::OfferCancelled(closed(o, reason))
        }
        EventKind::TripCancelled {
            trip,
            driver: Some(driver),
            gateway: g,
            ..
        } if g.as_ref() == gateway => Notice::TripCancelled(pb::TripCancelledNotice {
            trip_id: trip.to_string(),
            driver_id: driver.to_string(),
        }),
        _ => return None,
    };
    Some(notice(n))
}
