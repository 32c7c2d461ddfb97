//! Property over real gRPC: for random trip lifecycles (offers declined, accepted or left to
//! expire, retries, the driver's steps, cancels by either side, the dispatch deadline), the
//! last snapshot a WatchTrip stream sends equals what GetTrip answers, for a watcher that
//! started with the request and for one that started half-way. Every snapshot carries the
//! offset of the event it follows.
//!
//! WatchTrip folds events with the same `Trip::apply` the dispatch state uses; the random
//! command sequences of `dispatcher_props.rs` check that fold against the state at every step
//! without gRPC. Here a modest number of cases (each starts a server) checks the wire path.

mod support;

use std::time::Duration;

use dispatch::config::Config;
use dispatch::pb;
use proptest::prelude::*;
use support::*;

#[derive(Clone, Copy, Debug)]
enum Step {
    Accept,
    Decline,
    /// Let the offer window (or a retry interval, or the dispatch deadline) pass.
    Wait {
        secs: u8,
    },
    /// The driver's next step (arrive, start, complete).
    Drive,
    DriverCancel,
    RiderCancel,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Accept),
        3 => Just(Step::Decline),
        2 => (1u8..40).prop_map(|secs| Step::Wait { secs }),
        4 => Just(Step::Drive),
        1 => Just(Step::DriverCancel),
        1 => Just(Step::RiderCancel),
    ]
}

async fn watch(s: &TestServer, trip_id: &str) -> tonic::Streaming<pb::TripUpdate> {
    s.riders()
        .watch_trip(pb::WatchTripRequest {
            trip_id: trip_id.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Every update until the stream ends (it ends after the terminal one).
async fn drain(mut stream: tonic::Streaming<pb::TripUpdate>) -> Vec<pb::TripUpdate> {
    let mut out = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an update or the end within 10 s")
            .expect("stream ok");
        match message {
            Some(update) => out.push(update),
            None => return out,
        }
    }
}

async fn run(drivers: u8, steps: Vec<Step>) {
    let mut config = Config::default();
    config.dispatch.dispatch_timeout = Duration::from_secs(60);
    let s = start_with(config).await;
    for i in 0..drivers {
        online(
            &s,
            &format!("d-{i}"),
            150.0 + 100.0 * f64::from(i),
            4.5,
            "gw",
        )
        .await;
    }
    let trip = request(&s, "r-1", "q-1").await;
    let early = watch(&s, &trip.trip_id).await;
    let mut late = None;
    let half = steps.len() / 2;
    for (i, step) in steps.into_iter().enumerate() {
        if i == half {
            late = Some(watch(&s, &trip.trip_id).await);
        }
        let t = get_trip(&s, &trip.trip_id).await;
        let action = pb::TripActionRequest {
            trip_id: t.trip_id.clone(),
            driver_id: t.driver_id.clone(),
        };
        let mut d = s.drivers();
        use pb::TripStatus as S;
        match (status(&t), step) {
            (S::Completed | S::Cancelled | S::NoDrivers, _) => break,
            (S::Offered, Step::Accept) => {
                accept(&s, &t.offer_id, &t.driver_id).await;
            }
            (S::Offered, Step::Decline) => {
                decline(&s, &t.offer_id, &t.driver_id).await;
            }
            (_, Step::Wait { secs }) => s.advance(Duration::from_secs(u64::from(secs))).await,
            (S::Accepted, Step::Drive) => {
                d.mark_arrived(action).await.unwrap();
            }
            (S::Arrived, Step::Drive) => {
                d.start_trip(action).await.unwrap();
            }
            (S::InProgress, Step::Drive) => {
                d.complete_trip(action).await.unwrap();
            }
            (S::Accepted | S::Arrived | S::InProgress, Step::DriverCancel) => {
                d.cancel_trip_by_driver(action).await.unwrap();
            }
            (_, Step::RiderCancel) => {
                s.riders()
                    .cancel_trip(pb::CancelTripRequest {
                        trip_id: t.trip_id.clone(),
                        rider_id: "r-1".into(),
                    })
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    // End the trip if the steps did not, so both streams end.
    let t = get_trip(&s, &trip.trip_id).await;
    if !matches!(
        status(&t),
        pb::TripStatus::Completed | pb::TripStatus::Cancelled | pb::TripStatus::NoDrivers
    ) {
        s.riders()
            .cancel_trip(pb::CancelTripRequest {
                trip_id: t.trip_id.clone(),
                rider_id: "r-1".into(),
            })
            .await
            .unwrap();
    }
    let got = get_trip(&s, &trip.trip_id).await;
    let watchers = [Some(early), late].into_iter().flatten();
    for stream in watchers {
        let updates = drain(stream).await;
        let last = updates
            .last()
            .and_then(|u| u.trip.clone())
            .expect("an update");
        assert_eq!(last, got, "WatchTrip's last snapshot is GetTrip");
        for u in &updates[1..] {
            let event = u
                .event
                .as_ref()
                .expect("every update after the first has its event");
            assert_eq!(u.trip.as_ref().unwrap().last_event_offset, event.offset);
            assert_eq!(event.trip_id, trip.trip_id);
        }
    }
    s.stop().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn watch_trip_ends_with_what_get_trip_answers(
        drivers in 0u8..4,
        steps in proptest::collection::vec(step(), 0..14),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(drivers, steps));
    }
}
