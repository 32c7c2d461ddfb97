//! Trip watchers and gateway offer streams are fed by the event router: each must get exactly
//! the events of its key, in order, compared against the whole ordered stream (Subscribe from
//! offset 0) as the truth.

mod support;

use std::collections::HashMap;

use dispatch::pb::{self, EventKind, driver_notice::Notice};
use support::*;

const TRIPS: usize = 30;
/// Driver `i` is served by gateway `GATEWAYS[i % 4]`.
const GATEWAYS: [&str; 4] = ["gw-a", "gw-b", "gw-c", "gw-d"];

async fn head(s: &TestServer) -> u64 {
    s.queries()
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .next_event_offset
}

/// Reads the truth stream until it holds every event before the current head.
async fn catch_up(
    s: &TestServer,
    truth: &mut tonic::Streaming<pb::DispatchEvent>,
    all: &mut Vec<pb::DispatchEvent>,
) {
    let head = head(s).await;
    while (all.len() as u64) < head {
        all.push(next(truth).await);
    }
}

fn action(trip: &str, driver: &str) -> pb::TripActionRequest {
    pb::TripActionRequest {
        trip_id: trip.into(),
        driver_id: driver.into(),
    }
}

/// Every message of a stream until it ends (the trip ended, or the server stopped).
async fn drain<T>(stream: &mut tonic::Streaming<T>) -> Vec<T> {
    let mut out = Vec::new();
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("the stream moves within 10 s");
        match message {
            Ok(Some(m)) => out.push(m),
            Ok(None) | Err(_) => return out,
        }
    }
}

/// The identity of a notice, and of the event it should come from.
fn notice_key(n: &pb::DriverNotice) -> String {
    match n.notice.as_ref().unwrap() {
        Notice::Offer(o) => format!("offer {}", o.offer_id),
        Notice::OfferExpired(c) => format!("expired {}", c.offer_id),
        Notice::OfferCancelled(c) => format!("cancelled {}", c.offer_id),
        Notice::TripCancelled(t) => format!("trip cancelled {}", t.trip_id),
    }
}

fn event_notice_key(e: &pb::DispatchEvent) -> Option<String> {
    match e.kind() {
        EventKind::OfferSent => Some(format!("offer {}", e.offer_id)),
        EventKind::OfferExpired => Some(format!("expired {}", e.offer_id)),
        EventKind::OfferCancelled => Some(format!("cancelled {}", e.offer_id)),
        EventKind::TripCancelled if !e.driver_id.is_empty() => {
            Some(format!("trip cancelled {}", e.trip_id))
        }
        _ => None,
    }
}

#[tokio::test]
async fn every_trip_watcher_and_gateway_stream_gets_exactly_its_own_events_in_order() {
    let s = start().await;
    let mut truth = s
        .events()
        .subscribe(pb::SubscribeRequest {
            from_offset: Some(0),
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut gateway_streams = Vec::new();
    for g in GATEWAYS {
        gateway_streams.push(offer_stream(&s, g).await);
    }
    let mut gateway_of = HashMap::new();
    for i in 0..TRIPS {
        let driver = format!("d{i}");
        online(&s, &driver, 50.0 * (i + 1) as f64, 4.8, GATEWAYS[i % 4]).await;
        gateway_of.insert(driver, GATEWAYS[i % 4]);
    }

    // Every trip gets an offer as it is requested; half the watchers open at once.
    let mut trips = Vec::new();
    let mut watchers: HashMap<usize, tonic::Streaming<pb::TripUpdate>> = HashMap::new();
    for k in 0..TRIPS {
        let trip = request(&s, &format!("r{k}"), &format!("q{k}")).await;
        if k % 2 == 0 {
            watchers.insert(k, watch(&s, &trip.trip_id).await);
        }
        trips.push(trip.trip_id);
    }
    let mut all = Vec::new();
    catch_up(&s, &mut truth, &mut all).await;
    let offer_of: HashMap<String, (String, String)> = all
        .iter()
        .filter(|e| e.kind() == EventKind::OfferSent)
        .map(|e| (e.trip_id.clone(), (e.offer_id.clone(), e.driver_id.clone())))
        .collect();
    assert_eq!(offer_of.len(), TRIPS, "every trip was offered");

    // Three lifecycles; the other half of the watchers open midway.
    for (k, trip) in trips.iter().enumerate() {
        let (offer, driver) = &offer_of[trip];
        if k % 3 != 2 {
            accept(&s, offer, driver).await;
        }
        if k % 2 == 1 {
            watchers.insert(k, watch(&s, trip).await);
        }
    }
    for (k, trip) in trips.iter().enumerate() {
        let (_, driver) = &offer_of[trip];
        let mut d = s.drivers();
        match k % 3 {
            0 => {
                d.mark_arrived(action(trip, driver)).await.unwrap();
                d.start_trip(action(trip, driver)).await.unwrap();
                d.complete_trip(action(trip, driver)).await.unwrap();
            }
            1 => {
                d.cancel_trip_by_driver(action(trip, driver)).await.unwrap();
            }
            _ => {
                s.riders()
                    .cancel_trip(pb::CancelTripRequest {
                        trip_id: trip.clone(),
                        rider_id: format!("r{k}"),
                    })
                    .await
                    .unwrap();
            }
        }
    }
    catch_up(&s, &mut truth, &mut all).await;

    for (k, trip) in trips.iter().enumerate() {
        let updates = drain(watchers.get_mut(&k).unwrap()).await;
        let snapshot = updates[0].trip.as_ref().unwrap();
        assert!(
            updates[0].event.is_none(),
            "a watch starts with the snapshot"
        );
        let got: Vec<u64> = updates[1..]
            .iter()
            .map(|u| u.event.as_ref().unwrap().offset)
            .collect();
        let want: Vec<u64> = all
            .iter()
            .filter(|e| &e.trip_id == trip && e.offset > snapshot.last_event_offset)
            .map(|e| e.offset)
            .collect();
        assert!(!want.is_empty());
        assert_eq!(
            got, want,
            "trip {k}: exactly its events after the snapshot, in order"
        );
        let last = updates.last().unwrap().trip.as_ref().unwrap();
        assert_eq!(
            last,
            &get_trip(&s, trip).await,
            "trip {k} ends as GetTrip says"
        );
    }

    s.stop().await;
    for (g, stream) in GATEWAYS.iter().zip(&mut gateway_streams) {
        let got: Vec<String> = drain(stream).await.iter().map(notice_key).collect();
        let want: Vec<String> = all
            .iter()
            .filter(|e| gateway_of.get(&e.driver_id) == Some(g))
            .filter_map(event_notice_key)
            .collect();
        assert!(!want.is_empty());
        assert_eq!(got, want, "gateway {g:?}: exactly its notices, in order");
    }
}

async fn watch(s: &TestServer, trip: &str) -> tonic::Streaming<pb::TripUpdate> {
    s.riders()
        .watch_trip(pb::WatchTripRequest {
            trip_id: trip.into(),
        })
        .await
        .unwrap()
        .into_inner()
}
