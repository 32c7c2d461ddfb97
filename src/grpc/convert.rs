//! Wire <-> domain conversions. Inbound functions validate and name the offending field in
//! their error, so a client developer can fix the call from the message alone.

use tonic::Status;

use super::status;
use crate::domain::{ExternalId, LatLng, MAX_ID_LEN, OfferId, Rating, TripId, VehicleClass};
use crate::engine::{Driver, DriverStatus, NearbyDriver, Stats, Trip};
use crate::events::{
    CancelledBy, Event, EventKind, MatchPolicy, OfferCancelReason, OfferDetails, TripStatus,
};
use crate::matching::EtaSource;
use crate::pb;

// ------------------------------------------------------------------------------------------
// Inbound
// ------------------------------------------------------------------------------------------

/// A required coordinate.
pub(crate) fn latlng(field: &str, value: Option<pb::LatLng>) -> Result<LatLng, Status> {
    let value = value.ok_or_else(|| Status::invalid_argument(format!("{field} is required")))?;
    LatLng::new(value.lat_deg, value.lng_deg)
        .map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

/// A required caller-chosen id.
pub(crate) fn id(field: &str, raw: &str) -> Result<ExternalId, Status> {
    ExternalId::new(field, raw).map_err(status)
}

/// A required gateway id. Offers reach a driver only through its gateway's SubscribeOffers
/// stream, so an empty one is refused here with what the caller should send instead; `why`
/// says what the id is for in this call.
pub(crate) fn gateway_id(raw: &str, why: &str) -> Result<ExternalId, Status> {
    if raw.is_empty() {
        return Err(Status::invalid_argument(format!(
            "gateway_id must not be empty: {why}"
        )));
    }
    id("gateway_id", raw)
}

/// An optional caller-chosen id: empty means absent.
pub(crate) fn optional_id(field: &str, raw: &str) -> Result<Option<ExternalId>, Status> {
    if raw.is_empty() {
        Ok(None)
    } else {
        id(field, raw).map(Some)
    }
}

/// Whether `raw` is a well-formed id, without allocating (for the location hot path).
pub(crate) fn is_valid_id(raw: &str) -> bool {
    !raw.is_empty() && raw.len() <= MAX_ID_LEN && raw.bytes().all(|b| b.is_ascii_graphic())
}

/// An engine-issued trip id.
pub(crate) fn trip_id(raw: &str) -> Result<TripId, Status> {
    if raw.is_empty() {
        return Err(Status::invalid_argument("trip_id must not be empty"));
    }
    TripId::parse(raw).ok_or_else(|| Status::not_found(format!("unknown trip {raw:?}")))
}

/// An engine-issued offer id.
pub(crate) fn offer_id(raw: &str) -> Result<OfferId, Status> {
    if raw.is_empty() {
        return Err(Status::invalid_argument("offer_id must not be empty"));
    }
    OfferId::parse(raw).ok_or_else(|| Status::not_found(format!("unknown offer {raw:?}")))
}

pub(crate) fn vehicle_class(raw: i32) -> Result<VehicleClass, Status> {
    match pb::VehicleClass::try_from(raw) {
        Ok(pb::VehicleClass::Unspecified) => Ok(VehicleClass::Any),
        Ok(pb::VehicleClass::Economy) => Ok(VehicleClass::Economy),
        Ok(pb::VehicleClass::Comfort) => Ok(VehicleClass::Comfort),
        Ok(pb::VehicleClass::Xl) => Ok(VehicleClass::Xl),
        Err(_) => Err(Status::invalid_argument(format!(
            "vehicle_class {raw} is not a known VehicleClass"
        ))),
    }
}

/// A rating; 0 (unset) means a new, unrated driver, counted as 5.0.
pub(crate) fn rating(raw: f64) -> Result<Rating, Status> {
    Rating::new(if raw == 0.0 { 5.0 } else { raw }).map_err(status)
}

pub(crate) fn event_kind(raw: i32) -> Result<pb::EventKind, Status> {
    match pb::EventKind::try_from(raw) {
        Ok(pb::EventKind::Unspecified) | Err(_) => Err(Status::invalid_argument(format!(
            "kinds: {raw} is not a known EventKind"
        ))),
        Ok(kind) => Ok(kind),
    }
}

// ------------------------------------------------------------------------------------------
// Outbound
// ------------------------------------------------------------------------------------------

pub(crate) fn pb_latlng(p: LatLng) -> pb::LatLng {
    pb::LatLng {
        lat_deg: p.lat_deg(),
        lng_deg: p.lng_deg(),
    }
}

pub(crate) fn pb_class(c: VehicleClass) -> pb::VehicleClass {
    match c {
        VehicleClass::Any => pb::VehicleClass::Unspecified,
        VehicleClass::Economy => pb::VehicleClass::Economy,
        VehicleClass::Comfort => pb::VehicleClass::Comfort,
        VehicleClass::Xl => pb::VehicleClass::Xl,
    }
}

pub(crate) fn pb_status(s: TripStatus) -> pb::TripStatus {
    match s {
        TripStatus::Searching => pb::TripStatus::Searching,
        TripStatus::Offered => pb::TripStatus::Offered,
        TripStatus::Accepted => pb::TripStatus::Accepted,
        TripStatus::Arrived => pb::TripStatus::Arrived,
        TripStatus::InProgress => pb::TripStatus::InProgress,
        TripStatus::Completed => pb::TripStatus::Completed,
        TripStatus::Cancelled => pb::TripStatus::Cancelled,
        TripStatus::NoDrivers => pb::TripStatus::NoDrivers,
    }
}

fn pb_cancelled_by(c: CancelledBy) -> pb::CancelledBy {
    match c {
        CancelledBy::Rider => pb::CancelledBy::Rider,
        CancelledBy::Driver => pb::CancelledBy::Driver,
    }
}

fn pb_policy(p: MatchPolicy) -> pb::MatchPolicy {
    match p {
        MatchPolicy::Greedy => pb::MatchPolicy::Greedy,
        MatchPolicy::Batch => pb::MatchPolicy::Batch,
    }
}

fn pb_cancel_reason(r: OfferCancelReason) -> pb::OfferCancelReason {
    match r {
        OfferCancelReason::TripCancelled => pb::OfferCancelReason::TripCancelled,
        OfferCancelReason::DriverOffline => pb::OfferCancelReason::DriverOffline,
    }
}

fn id_string<T: ToString>(id: Option<T>) -> String {
    id.map(|i| i.to_string()).unwrap_or_default()
}

pub(crate) fn pb_driver(d: &Driver) -> pb::Driver {
    let (state, trip, offer) = match d.status {
        DriverStatus::Offline => (pb::DriverState::Offline, None, None),
        DriverStatus::Available => (pb::DriverState::Available, None, None),
        DriverStatus::Offered(o) => (pb::DriverState::Offered, None, Some(o)),
        DriverStatus::OnTrip(t) => (pb::DriverState::OnTrip, Some(t), None),
    };
    pb::Driver {
        driver_id: d.id.to_string(),
        state: state.into(),
        location: Some(pb_latlng(d.position)),
        rating: d.rating.get(),
        vehicle_class: pb_class(d.class).into(),
        gateway_id: id_string(d.gateway.as_ref()),
        acceptance_rate: d.acceptance_rate,
        trips_today: d.trips_today,
        trip_id: id_string(trip),
        offer_id: id_string(offer),
    }
}

pub(crate) fn pb_trip(t: &Trip) -> pb::Trip {
    pb::Trip {
        trip_id: t.id.to_string(),
        rider_id: t.rider.to_string(),
        request_id: id_string(t.request_id.as_ref()),
        status: pb_status(t.status).into(),
        pickup: Some(pb_latlng(t.pickup)),
        dropoff: Some(pb_latlng(t.dropoff)),
        vehicle_class: pb_class(t.class).into(),
        driver_id: id_string(t.driver.as_ref()),
        offer_id: id_string(t.offer),
        pickup_eta_s: t.pickup_eta_s,
        surge_multiplier: t.surge_multiplier,
        offers_made: t.offers_made,
        requested_at_ms: t.requested_at_ms,
        assigned_at_ms: t.assigned_at_ms,
        ended_at_ms: t.ended_at_ms,
        cancelled_by: t
            .cancelled_by
            .map_or(pb::CancelledBy::Unspecified, pb_cancelled_by)
            .into(),
        policy: pb_policy(t.policy).into(),
        last_event_offset: t.last_event_offset,
    }
}

pub(crate) fn pb_offer(o: &OfferDetails) -> pb::Offer {
    pb::Offer {
        offer_id: o.offer.to_string(),
        trip_id: o.trip.to_string(),
        driver_id: o.driver.to_string(),
        pickup: Some(pb_latlng(o.pickup)),
        dropoff: Some(pb_latlng(o.dropoff)),
        pickup_eta_s: o.pickup_eta_s,
        pickup_distance_m: o.pickup_distance_m,
        expires_at_ms: o.expires_at_ms,
        score: Some(pb::ScoreBreakdown {
            eta: o.score.eta,
            rating: o.score.rating,
            acceptance: o.score.acceptance,
            fairness: o.score.fairness,
            total: o.score.total,
        }),
        attempt: o.attempt,
        surge_multiplier: o.surge_multiplier,
        eta_source: pb_eta_source(o.eta_source).into(),
    }
}

pub(crate) fn pb_eta_source(s: EtaSource) -> pb::EtaSource {
    match s {
        EtaSource::StraightLine => pb::EtaSource::StraightLine,
        EtaSource::Road => pb::EtaSource::Road,
        EtaSource::StraightLineFallback => pb::EtaSource::StraightLineFallback,
    }
}

pub(crate) fn pb_nearby(n: &NearbyDriver) -> pb::NearbyDriver {
    pb::NearbyDriver {
        driver_id: n.id.to_string(),
        location: Some(pb_latlng(n.position)),
        distance_m: n.distance_m,
        eta_s: n.eta_s,
        rating: n.rating.get(),
        vehicle_class: pb_class(n.class).into(),
        eta_source: pb_eta_source(n.eta_source).into(),
    }
}

/// The dispatcher's counters plus when the engine started (the handle knows that, not the
/// dispatcher).
pub(crate) fn pb_stats(s: &Stats, started_at_ms: u64) -> pb::GetStatsResponse {
    pb::GetStatsResponse {
        drivers_offline: s.drivers_offline,
        drivers_available: s.drivers_available,
        drivers_offered: s.drivers_offered,
        drivers_on_trip: s.drivers_on_trip,
        open_trips: s.open_trips,
        pending_offers: s.pending_offers,
        next_event_offset: s.next_event_offset,
        location_updates: s.location_updates,
        trips_completed: s.trips_completed,
        trips_cancelled: s.trips_cancelled,
        trips_no_drivers: s.trips_no_drivers,
        trips_requested: s.trips_requested,
        process_started_at_ms: started_at_ms,
    }
}

/// The wire kind of an event.
pub(crate) fn pb_event_kind(kind: &EventKind) -> pb::EventKind {
    use pb::EventKind as K;
    match kind {
        EventKind::DriverOnline { .. } => K::DriverOnline,
        EventKind::DriverOffline { .. } => K::DriverOffline,
        EventKind::DriverProfileUpdated { .. } => K::DriverProfileUpdated,
        EventKind::SearchRetryScheduled { .. } => K::SearchRetryScheduled,
        EventKind::BatchFlushed { .. } => K::BatchFlushed,
        EventKind::TripRequested { .. } => K::TripRequested,
        EventKind::OfferSent(_) => K::OfferSent,
        EventKind::OfferAccepted(_) => K::OfferAccepted,
        EventKind::OfferDeclined(_) => K::OfferDeclined,
        EventKind::OfferExpired(_) => K::OfferExpired,
        EventKind::OfferCancelled(..) => K::OfferCancelled,
        EventKind::TripAssigned { .. } => K::TripAssigned,
        EventKind::DriverArrived { .. } => K::DriverArrived,
        EventKind::TripStarted { .. } => K::TripStarted,
        EventKind::TripCompleted { .. } => K::TripCompleted,
        EventKind::TripCancelled { .. } => K::TripCancelled,
        EventKind::NoDrivers { .. } => K::NoDrivers,
        EventKind::DriverLeftRegion { .. } => K::DriverLeftRegion,
        EventKind::DriverJoinedRegion(_) => K::DriverJoinedRegion,
        EventKind::RegionTakenOver { .. } => K::RegionTakenOver,
    }
}

pub(crate) fn pb_event(e: &Event) -> pb::DispatchEvent {
    use pb::dispatch_event::Detail;
    let mut out = pb::DispatchEvent {
        offset: e.offset,
        at_ms: e.at_ms,
        kind: pb_event_kind(&e.kind).into(),
        trip_id: id_string(e.kind.trip()),
        ..Default::default()
    };
    match &e.kind {
        EventKind::DriverOnline {
            driver,
            position,
            rating,
            class,
            gateway,
        } => {
            out.driver_id = driver.to_string();
            out.detail = Some(Detail::DriverOnline(pb::DriverOnlineDetail {
                location: Some(pb_latlng(*position)),
                rating: rating.get(),
                vehicle_class: pb_class(*class).into(),
                gateway_id: id_string(gateway.as_ref()),
            }));
        }
        EventKind::DriverOffline { driver } => out.driver_id = driver.to_string(),
        EventKind::DriverLeftRegion { driver, to } => {
            out.driver_id = driver.to_string();
            out.detail = Some(Detail::DriverLeftRegion(pb::DriverLeftRegionDetail {
                to_region: to.clone(),
            }));
        }
        EventKind::RegionTakenOver {
            owner,
            previous,
            replayed,
            from_snapshot,
        } => {
            out.detail = Some(Detail::RegionTakenOver(pb::RegionTakenOverDetail {
                owner: owner.clone(),
                previous_owner: previous.clone().unwrap_or_default(),
                replayed_events: *replayed,
                from_snapshot: *from_snapshot,
            }));
        }
        EventKind::DriverJoinedRegion(j) => {
            out.driver_id = j.driver.to_string();
            out.detail = Some(Detail::DriverJoinedRegion(pb::DriverJoinedRegionDetail {
                from_region: j.from.clone(),
                location: Some(pb_latlng(j.position)),
                rating: j.rating.get(),
                vehicle_class: pb_class(j.class).into(),
                gateway_id: id_string(j.gateway.as_ref()),
                acceptance_rate: j.acceptance_rate,
                trips_today: j.trips_today,
                free_since_ms: j.free_since_ms,
            }));
        }
        EventKind::DriverProfileUpdated {
            driver,
            rating,
            class,
            gateway,
        } => {
            out.driver_id = driver.to_string();
            out.detail = Some(Detail::DriverProfileUpdated(pb::DriverProfileDetail {
                rating: rating.get(),
                vehicle_class: pb_class(*class).into(),
                gateway_id: id_string(gateway.as_ref()),
            }));
        }
        EventKind::SearchRetryScheduled { retry_at_ms, .. } => {
            out.detail = Some(Detail::SearchRetryScheduled(pb::SearchRetryDetail {
                retry_at_ms: *retry_at_ms,
            }));
        }
        EventKind::BatchFlushed {
            next_flush_at_ms,
            waiting,
        } => {
            out.detail = Some(Detail::BatchFlushed(pb::BatchFlushedDetail {
                next_flush_at_ms: *next_flush_at_ms,
                waiting_trips: *waiting,
            }));
        }
        EventKind::TripRequested {
            rider,
            request_id,
            pickup,
            dropoff,
            class,
            surge_multiplier,
            candidates,
            policy,
            ..
        } => {
            out.detail = Some(Detail::TripRequested(pb::TripRequestedDetail {
                rider_id: rider.to_string(),
                request_id: id_string(request_id.as_ref()),
                pickup: Some(pb_latlng(*pickup)),
                dropoff: Some(pb_latlng(*dropoff)),
                vehicle_class: pb_class(*class).into(),
                surge_multiplier: *surge_multiplier,
                candidates: *candidates,
                policy: pb_policy(*policy).into(),
            }));
        }
        EventKind::OfferSent(o) => {
            out.driver_id = o.driver.to_string();
            out.offer_id = o.offer.to_string();
            out.detail = Some(Detail::OfferSent(pb_offer(o)));
        }
        EventKind::OfferAccepted(o) | EventKind::OfferDeclined(o) | EventKind::OfferExpired(o) => {
            out.driver_id = o.driver.to_string();
            out.offer_id = o.offer.to_string();
        }
        EventKind::OfferCancelled(o, reason) => {
            out.driver_id = o.driver.to_string();
            out.offer_id = o.offer.to_string();
            out.detail = Some(Detail::OfferCancelled(pb::OfferCancelledDetail {
                reason: pb_cancel_reason(*reason).into(),
            }));
        }
        EventKind::TripAssigned {
            driver,
            pickup_eta_s,
            policy,
            ..
        } => {
            out.driver_id = driver.to_string();
            out.detail = Some(Detail::TripAssigned(pb::TripAssignedDetail {
                pickup_eta_s: *pickup_eta_s,
                policy: pb_policy(*policy).into(),
            }));
        }
        EventKind::DriverArrived { driver, .. }
        | EventKind::TripStarted { driver, .. }
        | EventKind::TripCompleted { driver, .. } => out.driver_id = driver.to_string(),
        EventKind::TripCancelled {
            driver,
            by,
            previous,
            ..
        } => {
            out.driver_id = id_string(driver.as_ref());
            out.detail = Some(Detail::TripCancelled(pb::TripCancelledDetail {
                cancelled_by: pb_cancelled_by(*by).into(),
                previous_status: pb_status(*previous).into(),
            }));
        }
        EventKind::NoDrivers {
            surge_multiplier,
            offers_made,
            ..
        } => {
            out.detail = Some(Detail::NoDrivers(pb::NoDriversDetail {
                surge_multiplier: *surge_multiplier,
                offers_made: *offers_made,
            }));
        }
    }
    out
}
