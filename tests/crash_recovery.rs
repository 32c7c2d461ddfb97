//! The real `dispatchd` binary under concurrent load, killed with SIGKILL at random points and
//! restarted on the same data dir, several times. Checks:
//! - every trip whose request or last step was acknowledged is there, in that state (or in the
//!   state of the one call that was in flight when the process died);
//! - event offsets continue without gap or repeat across restarts;
//! - a subscriber resuming from its last offset after each restart sees every event exactly
//!   once, and every event it saw before a crash is still in the log afterwards.
//!
//! Snapshots are taken every 50 events, so restarts go through snapshot + tail recovery. Some
//! rounds add a fault (`chaos`): the process paused with SIGSTOP/SIGCONT before the kill, a
//! torn write appended to the last segment, or the newest snapshot cut at a random byte. The
//! default is 4 kills; `CHAOS_KILLS=50 cargo test --test crash_recovery -- --nocapture` is
//! the long run.

mod chaos;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dispatch::pb::{
    self, driver_service_client::DriverServiceClient, event_service_client::EventServiceClient,
    query_service_client::QueryServiceClient, rider_service_client::RiderServiceClient,
};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::ll;
use support::process::Dispatchd;
use tokio::process::Child;
use tonic::transport::Channel;

const DRIVERS: usize = 60;
const WORKERS: usize = 4;

/// What a trip was acknowledged as, and what the call in flight would make it.
#[derive(Clone, Debug)]
struct Acked {
    status: pb::TripStatus,
    driver: String,
    in_flight: Option<pb::TripStatus>,
}

type Ledger = Arc<Mutex<BTreeMap<String, Acked>>>;

/// Counts acknowledgements and wakes the test when the kill point is reached.
struct Acks {
    count: std::sync::atomic::AtomicUsize,
    kill_after: usize,
    reached: tokio::sync::Notify,
}

impl Acks {
    fn add(&self) {
        if self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == self.kill_after {
            self.reached.notify_one();
        }
    }
}

async fn spawn_server(data_dir: &std::path::Path) -> (Child, Channel) {
    let args = [
        // Long runs outlast any short window: offers and searches must not time out by the
        // wall clock between a round's acknowledgement and its check...
        "--offer-timeout-s".as_ref(),
        "36000".as_ref(),
        "--dispatch-timeout-s".as_ref(),
        "36000".as_ref(),
        "--set".as_ref(),
        "log.snapshot_every_events=50".as_ref(),
        // ...and acknowledged trips must stay readable.
        "--set".as_ref(),
        "dispatch.trip_retention=24h".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
    ];
    let server = Dispatchd::spawn(args, "warn", false).await;
    (server.child, server.channel)
}

/// One worker: request a trip, accept it, drive it to completion, again and again, writing
/// down every acknowledged state and the state the call in flight would reach.
async fn worker(channel: Channel, ledger: Ledger, acks: Arc<Acks>, name: String, seed: u64) {
    use pb::TripStatus as S;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut riders = RiderServiceClient::new(channel.clone());
    let mut drivers = DriverServiceClient::new(channel);
    let ack = || acks.add();
    for seq in 0.. {
        let rider = format!("{name}-r{seq}");
        let req = pb::RequestTripRequest {
            rider_id: rider.clone(),
            request_id: format!("{rider}-q"),
            pickup: ll(
                40.75 + rng.random_range(-0.01..0.01),
                -73.99 + rng.random_range(-0.01..0.01),
            ),
            dropoff: ll(40.77, -73.97),
            vehicle_class: 0,
        };
        let Ok(reply) = riders.request_trip(req).await else {
            return;
        };
        let trip = reply.into_inner().trip.unwrap();
        ledger.lock().insert(
            trip.trip_id.clone(),
            Acked {
                status: trip.status(),
                driver: trip.driver_id.clone(),
                in_flight: None,
            },
        );
        ack();
        if trip.status() != S::Offered {
            continue;
        }
        let accept = rng.random_bool(0.85);
        let target = if accept { S::Accepted } else { S::Searching };
        ledger.lock().get_mut(&trip.trip_id).unwrap().in_flight = Some(target);
        let answer = pb::RespondToOfferRequest {
            offer_id: trip.offer_id.clone(),
            driver_id: trip.driver_id.clone(),
            accept,
        };
        let Ok(reply) = drivers.respond_to_offer(answer).await else {
            return;
        };
        let t = reply.into_inner().trip.unwrap();
        ledger.lock().insert(
            t.trip_id.clone(),
            Acked {
                status: t.status(),
                driver: t.driver_id.clone(),
                in_flight: None,
            },
        );
        ack();
        if !accept {
            // Leave the cascaded offer pending: a trip that is OFFERED across a crash.
            continue;
        }
        let action = pb::TripActionRequest {
            trip_id: t.trip_id.clone(),
            driver_id: t.driver_id.clone(),
        };
        for (step, next) in [(0, S::Arrived), (1, S::InProgress), (2, S::Completed)] {
            ledger.lock().get_mut(&t.trip_id).unwrap().in_flight = Some(next);
            let reply = match step {
                0 => drivers.mark_arrived(action.clone()).await,
                1 => drivers.start_trip(action.clone()).await,
                _ => drivers.complete_trip(action.clone()).await,
            };
            let Ok(reply) = reply else { return };
            let t = reply.into_inner().trip.unwrap();
            ledger.lock().insert(
                t.trip_id.clone(),
                Acked {
                    status: t.status(),
                    driver: t.driver_id.clone(),
                    in_flight: None,
                },
            );
            ack();
        }
    }
}

/// Collects events from `from` on until the stream breaks (the server died).
async fn subscriber(channel: Channel, from: u64, seen: Arc<Mutex<Vec<pb::DispatchEvent>>>) {
    let Ok(stream) = EventServiceClient::new(channel)
        .subscribe(pb::SubscribeRequest {
            from_offset: Some(from),
            kinds: vec![],
        })
        .await
    else {
        return;
    };
    let mut stream = stream.into_inner();
    while let Ok(Some(event)) = stream.message().await {
        seen.lock().push(event);
    }
}

async fn verify_ledger(channel: &Channel, ledger: &Ledger) {
    let mut riders = RiderServiceClient::new(channel.clone());
    let entries: Vec<(String, Acked)> = ledger
        .lock()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (trip_id, acked) in entries {
        let trip = riders
            .get_trip(pb::GetTripRequest {
                trip_id: trip_id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged trip {trip_id} lost: {e}"))
            .into_inner()
            .trip
            .unwrap();
        let ok = trip.status() == acked.status || Some(trip.status()) == acked.in_flight
            // A decline in flight may have cascaded straight to the next driver.
            || (acked.in_flight == Some(pb::TripStatus::Searching) && trip.status() == pb::TripStatus::Offered)
            // A searching trip moves on by itself: a freed driver or a retry offers it, the
            // dispatch deadline ends it (long runs exhaust the drivers).
            || (acked.status == pb::TripStatus::Searching
                && matches!(trip.status(), pb::TripStatus::Offered | pb::TripStatus::NoDrivers));
        assert!(
            ok,
            "trip {trip_id}: acknowledged {acked:?}, found {:?} with {}",
            trip.status(),
            trip.driver_id
        );
        if trip.status() == acked.status && acked.status != pb::TripStatus::Offered {
            assert_eq!(
                trip.driver_id, acked.driver,
                "trip {trip_id} changed driver"
            );
        }
        // What we found is now the acknowledged truth for the next round.
        ledger.lock().insert(
            trip_id,
            Acked {
                status: trip.status(),
                driver: trip.driver_id,
                in_flight: None,
            },
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
    let ledger: Ledger = Arc::default();
    let seen: Arc<Mutex<Vec<pb::DispatchEvent>>> = Arc::default();
    let rounds = chaos::kills();
    let mut faults: Vec<String> = Vec::new();

    for round in 0..=rounds {
        let (mut child, channel) = spawn_server(dir.path()).await;
        verify_ledger(&channel, &ledger).await;
        let next = seen.lock().last().map_or(0, |e| e.offset + 1);
        if round == rounds {
            // Final round, no load: resume from the last offset seen and read to the head.
            let head = QueryServiceClient::new(channel.clone())
                .get_stats(pb::GetStatsRequest {})
                .await
                .unwrap()
                .into_inner()
                .next_event_offset;
            let mut stream = EventServiceClient::new(channel.clone())
                .subscribe(pb::SubscribeRequest {
                    from_offset: Some(next),
                    kinds: vec![],
                })
                .await
                .unwrap()
                .into_inner();
            for _ in next..head {
                let event = stream.message().await.unwrap().unwrap();
                seen.lock().push(event);
            }
            let all: Vec<pb::DispatchEvent> = seen.lock().clone();
            let offsets: Vec<u64> = all.iter().map(|e| e.offset).collect();
            assert_eq!(
                offsets,
                (0..head).collect::<Vec<_>>(),
                "every event exactly once, no gap"
            );
            // Everything the subscriber saw before the crashes is still in the log, unchanged.
            let mut again = Vec::new();
            let mut stream = EventServiceClient::new(channel.clone())
                .subscribe(pb::SubscribeRequest {
                    from_offset: Some(0),
                    kinds: vec![],
                })
                .await
                .unwrap()
                .into_inner();
            while (again.len() as u64) < head {
                again.push(stream.message().await.unwrap().unwrap());
            }
            assert_eq!(again, all);
            let _ = child.kill().await;
            break;
        }
        let sub = tokio::spawn(subscriber(channel.clone(), next, seen.clone()));
        if round == 0 {
            let mut d = DriverServiceClient::new(channel.clone());
            for i in 0..DRIVERS {
                d.go_online(pb::GoOnlineRequest {
                    driver_id: format!("d-{i}"),
                    location: ll(40.75 + (i as f64) * 0.0003, -73.99),
                    rating: 4.5,
                    vehicle_class: 0,
                    gateway_id: "gw".into(),
                })
                .await
                .unwrap();
            }
        }
        // Load from several workers at once; kill after a random number of acknowledgements,
        // with the other workers' calls in flight.
        let acks = Arc::new(Acks {
            count: Default::default(),
            kill_after: rng.random_range(40..160),
            reached: tokio::sync::Notify::new(),
        });
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                tokio::spawn(worker(
                    channel.clone(),
                    ledger.clone(),
                    acks.clone(),
                    format!("w{w}-{round}"),
                    rng.random(),
                ))
            })
            .collect();
        tokio::time::timeout(Duration::from_secs(60), acks.reached.notified())
            .await
            .expect("the load reaches the kill point");
        if round % 4 == 1 {
            chaos::pause_and_resume(child.id().unwrap(), &channel).await;
            faults.push(format!("round {round}: SIGSTOP/SIGCONT"));
        }
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        match round % 4 {
            2 => {
                let cut = chaos::tear_last_segment(dir.path(), &mut rng);
                faults.push(format!("round {round}: torn write of {cut} bytes"));
            }
            3 => {
                if let Some((snap, cut)) = chaos::tear_newest_snapshot(dir.path(), &mut rng) {
                    faults.push(format!("round {round}: {} cut at {cut}", snap.display()));
                }
            }
            _ => {}
        }
        for w in workers {
            let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), sub).await;
    }
    let trips = ledger.lock().len();
    assert!(
        trips > 100,
        "the load made too few trips to mean much: {trips}"
    );
    let by_status: HashMap<String, usize> =
        ledger.lock().values().fold(HashMap::new(), |mut m, a| {
            *m.entry(format!("{:?}", a.status)).or_default() += 1;
            m
        });
    eprintln!("trips by final status after {rounds} crashes: {by_status:?}");
    eprintln!("faults besides the kills: {faults:#?}");
}

/// A driver holding a pending offer moves to another gateway (its gateway failed over); the
/// process is killed with SIGKILL and restarted. The move was acknowledged, so it is durable:
/// GetDriver names the new gateway, the new gateway's offer stream starts with the pending
/// offer, and the offer's later cancel notice goes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_change_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, channel) = spawn_server(dir.path()).await;
    let mut d = DriverServiceClient::new(channel.clone());
    let go_online = |gateway: &str| pb::GoOnlineRequest {
        driver_id: "d-1".into(),
        location: ll(40.7502, -73.99),
        rating: 4.7,
        vehicle_class: 0,
        gateway_id: gateway.into(),
    };
    d.go_online(go_online("gw-old")).await.unwrap();
    let trip = RiderServiceClient::new(channel.clone())
        .request_trip(pb::RequestTripRequest {
            rider_id: "r-1".into(),
            request_id: String::new(),
            pickup: ll(40.75, -73.99),
            dropoff: ll(40.77, -73.97),
            vehicle_class: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap();
    assert!(!trip.offer_id.is_empty(), "the driver was offered the trip");
    let moved = d
        .go_online(go_online("gw-new"))
        .await
        .unwrap()
        .into_inner()
        .driver
        .unwrap();
    assert_eq!(moved.gateway_id, "gw-new");

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let (mut child, channel) = spawn_server(dir.path()).await;

    let driver = QueryServiceClient::new(channel.clone())
        .get_driver(pb::GetDriverRequest {
            driver_id: "d-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .driver
        .unwrap();
    assert_eq!(driver.gateway_id, "gw-new", "the gateway change is durable");
    assert_eq!(driver.offer_id, trip.offer_id);
    let mut d = DriverServiceClient::new(channel.clone());
    let mut new_gw = d
        .subscribe_offers(pb::SubscribeOffersRequest {
            gateway_id: "gw-new".into(),
            resume_from: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), new_gw.message())
        .await
        .expect("a notice within 10 s")
        .unwrap()
        .unwrap();
    match first.notice {
        Some(pb::driver_notice::Notice::Offer(o)) => assert_eq!(o.offer_id, trip.offer_id),
        other => panic!("the new gateway's stream must start with the pending offer: {other:?}"),
    }
    RiderServiceClient::new(channel.clone())
        .cancel_trip(pb::CancelTripRequest {
            trip_id: trip.trip_id.clone(),
            rider_id: "r-1".into(),
        })
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), new_gw.message())
        .await
        .expect("a notice within 10 s")
        .unwrap()
        .unwrap();
    match next.notice {
        Some(pb::driver_notice::Notice::OfferCancelled(c)) => {
            assert_eq!(c.offer_id, trip.offer_id);
        }
        other => panic!("the cancel notice goes to the new gateway: {other:?}"),
    }
    let _ = child.kill().await;
}
