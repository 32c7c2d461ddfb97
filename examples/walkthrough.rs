//! One trip, end to end, against a running `dispatchd`: two drivers go online, a rider asks for
//! a trip, the nearest driver's gateway receives the offer (with its score breakdown), the
//! driver accepts, drives, completes; then the event stream is replayed from offset 0.
//!
//! ```text
//! cargo run --release --bin dispatchd &
//! cargo run --release --example walkthrough -- http://127.0.0.1:50051
//! ```

use dispatch::pb::{
    self, driver_notice::Notice, driver_service_client::DriverServiceClient,
    event_service_client::EventServiceClient, query_service_client::QueryServiceClient,
    rider_service_client::RiderServiceClient,
};

fn ll(lat_deg: f64, lng_deg: f64) -> Option<pb::LatLng> {
    Some(pb::LatLng { lat_deg, lng_deg })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let channel = tonic::transport::Channel::from_shared(addr)?
        .connect()
        .await?;
    let mut drivers = DriverServiceClient::new(channel.clone());
    let mut riders = RiderServiceClient::new(channel.clone());
    let mut events = EventServiceClient::new(channel.clone());
    let head = QueryServiceClient::new(channel)
        .get_stats(pb::GetStatsRequest {})
        .await?
        .into_inner()
        .next_event_offset;

    for (id, lat) in [("walk-d1", 40.7530), ("walk-d2", 40.7600)] {
        let d = drivers
            .go_online(pb::GoOnlineRequest {
                driver_id: id.into(),
                location: ll(lat, -73.9900),
                rating: 4.9,
                vehicle_class: 0,
                gateway_id: "walk-gw".into(),
            })
            .await?
            .into_inner()
            .driver
            .unwrap_or_default();
        println!("GoOnline        {id}: {:?}", d.state());
    }
    let mut offers = drivers
        .subscribe_offers(pb::SubscribeOffersRequest {
            gateway_id: "walk-gw".into(),
            resume_from: vec![],
        })
        .await?
        .into_inner();

    let trip = riders
        .request_trip(pb::RequestTripRequest {
            rider_id: "walk-r1".into(),
            request_id: format!("walk-{}", std::process::id()),
            pickup: ll(40.7500, -73.9900),
            dropoff: ll(40.7700, -73.9700),
            vehicle_class: 0,
        })
        .await?
        .into_inner()
        .trip
        .unwrap_or_default();
    println!(
        "RequestTrip     {} -> {:?}, surge x{:.2}",
        trip.trip_id,
        trip.status(),
        trip.surge_multiplier
    );

    let offer = loop {
        match offers.message().await?.and_then(|n| n.notice) {
            Some(Notice::Offer(o)) if o.trip_id == trip.trip_id => break o,
            Some(_) => continue,
            None => return Err("offer stream ended".into()),
        }
    };
    let s = offer.score.unwrap_or_default();
    println!(
        "Offer           {} to {}: pickup {:.0} m, ETA {:.0} s, expires at {} ms\n                score {:.3} = eta {:.3} + rating {:.3} + acceptance {:.3} + fairness {:.3}",
        offer.offer_id,
        offer.driver_id,
        offer.pickup_distance_m,
        offer.pickup_eta_s,
        offer.expires_at_ms,
        s.total,
        s.eta,
        s.rating,
        s.acceptance,
        s.fairness
    );

    let t = drivers
        .respond_to_offer(pb::RespondToOfferRequest {
            offer_id: offer.offer_id.clone(),
            driver_id: offer.driver_id.clone(),
            accept: true,
        })
        .await?
        .into_inner()
        .trip
        .unwrap_or_default();
    println!(
        "RespondToOffer  accept -> {:?} with {}",
        t.status(),
        t.driver_id
    );
    let action = pb::TripActionRequest {
        trip_id: trip.trip_id.clone(),
        driver_id: offer.driver_id.clone(),
    };
    let t = drivers
        .mark_arrived(action.clone())
        .await?
        .into_inner()
        .trip
        .unwrap_or_default();
    println!("MarkArrived     -> {:?}", t.status());
    let t = drivers
        .start_trip(action.clone())
        .await?
        .into_inner()
        .trip
        .unwrap_or_default();
    println!("StartTrip       -> {:?}", t.status());
    let t = drivers
        .complete_trip(action)
        .await?
        .into_inner()
        .trip
        .unwrap_or_default();
    println!("CompleteTrip    -> {:?}", t.status());

    println!("Events from offset {head}:");
    let mut stream = events
        .subscribe(pb::SubscribeRequest {
            from_offset: Some(head),
            kinds: vec![],
        })
        .await?
        .into_inner();
    while let Some(e) = stream.message().await? {
        println!(
            "  #{:<4} {:<28} trip={:<10} driver={:<8} offer={}",
            e.offset,
            format!("{:?}", e.kind()),
            e.trip_id,
            e.driver_id,
            e.offer_id
        );
        if e.kind() == pb::EventKind::TripCompleted && e.trip_id == trip.trip_id {
            break;
        }
    }
    for id in ["walk-d1", "walk-d2"] {
        drivers
            .go_offline(pb::GoOfflineRequest {
                driver_id: id.into(),
            })
            .await?;
    }
    Ok(())
}
