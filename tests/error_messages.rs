//! Error messages speak the API's words (issue 12, item 4): random command sequences over real
//! gRPC, issued without regard to the state so they reach the refusals (late answers, wrong
//! driver, wrong rider, out-of-turn steps, second trips, unknown ids, offline drivers), and every
//! error status they produce, plus every example of the location summaries, must carry no Rust
//! debug text (`Some(`, `None`, `(Offered)`, `{ .. }`) nor a variant name of the domain enums,
//! with a status code the proto documents. A few exact checks pin the messages the issue names.

mod support;

use std::time::Duration;

use dispatch::config::Config;
use dispatch::pb;
use proptest::prelude::*;
use support::*;
use tonic::Code;

/// Variant names of the domain enums (trip status, offer outcome, driver status, vehicle class,
/// location rejection, trip action, match policy, cancel reasons).
const VARIANTS: &[&str] = &[
    "Searching",
    "Offered",
    "Accepted",
    "Arrived",
    "InProgress",
    "Completed",
    "Cancelled",
    "NoDrivers",
    "Declined",
    "Expired",
    "Offline",
    "Available",
    "OnTrip",
    "Any",
    "Economy",
    "Comfort",
    "Xl",
    "InvalidCoordinates",
    "InvalidDriverId",
    "UnknownDriver",
    "DriverOffline",
    "Shed",
    "Arrive",
    "Start",
    "Complete",
    "Cancel",
    "Greedy",
    "Batch",
    "TripCancelled",
    "Rider",
    "Driver",
];

/// The problems of one message, empty when it reads as the API's own words.
fn debug_text(message: &str) -> Vec<String> {
    let mut found = Vec::new();
    for bad in ["Some(", "None", "{", "}"] {
        if message.contains(bad) {
            found.push(format!("contains {bad:?}"));
        }
    }
    // `(` + a CamelCase word + `)`: a variant printed with {:?}.
    for (i, _) in message.match_indices('(') {
        let rest = &message[i + 1..];
        let word: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let camel = word.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && word.chars().any(|c| c.is_ascii_lowercase());
        if camel && rest[word.len()..].starts_with(')') {
            found.push(format!("contains ({word})"));
        }
    }
    for word in message.split(|c: char| !c.is_ascii_alphanumeric() && c != '_') {
        if VARIANTS.contains(&word) {
            found.push(format!("names the variant {word}"));
        }
    }
    found
}

const DOCUMENTED: &[Code] = &[
    Code::InvalidArgument,
    Code::NotFound,
    Code::FailedPrecondition,
    Code::PermissionDenied,
    Code::ResourceExhausted,
];

#[derive(Default)]
struct Seen {
    trips: Vec<String>,
    offers: Vec<String>,
    /// Every error and example: (what was called, code, message).
    errors: Vec<(String, Option<Code>, String)>,
}

impl Seen {
    fn trip(&mut self, t: &pb::Trip) {
        if !self.trips.contains(&t.trip_id) {
            self.trips.push(t.trip_id.clone());
        }
        if !t.offer_id.is_empty() && !self.offers.contains(&t.offer_id) {
            self.offers.push(t.offer_id.clone());
        }
    }

    fn result<T>(&mut self, call: &str, r: Result<tonic::Response<T>, tonic::Status>) -> Option<T> {
        match r {
            Ok(response) => Some(response.into_inner()),
            Err(status) => {
                self.errors.push((
                    call.to_string(),
                    Some(status.code()),
                    status.message().to_string(),
                ));
                None
            }
        }
    }

    fn pick_trip(&self, i: u8) -> String {
        pick(&self.trips, i).unwrap_or_else(|| "trip-999999".into())
    }

    fn pick_offer(&self, i: u8) -> String {
        pick(&self.offers, i).unwrap_or_else(|| "offer-999999".into())
    }
}

fn pick(v: &[String], i: u8) -> Option<String> {
    (!v.is_empty()).then(|| v[usize::from(i) % v.len()].clone())
}

#[derive(Clone, Copy, Debug)]
enum Cmd {
    Online {
        driver: u8,
        class: i32,
    },
    Offline {
        driver: u8,
    },
    Request {
        rider: u8,
        request: u8,
        far: bool,
        class: i32,
    },
    Respond {
        offer: u8,
        driver: u8,
        accept: bool,
    },
    Action {
        trip: u8,
        driver: u8,
        kind: u8,
    },
    RiderCancel {
        trip: u8,
        rider: u8,
    },
    Locations,
    Wait {
        secs: u8,
    },
    Reads {
        trip: u8,
    },
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        3 => (0u8..4, 0i32..4).prop_map(|(driver, class)| Cmd::Online { driver, class }),
        1 => (0u8..5).prop_map(|driver| Cmd::Offline { driver }),
        4 => (0u8..3, 0u8..3, any::<bool>(), 0i32..4)
            .prop_map(|(rider, request, far, class)| Cmd::Request { rider, request, far, class }),
        4 => (any::<u8>(), 0u8..5, any::<bool>())
            .prop_map(|(offer, driver, accept)| Cmd::Respond { offer, driver, accept }),
        4 => (any::<u8>(), 0u8..5, 0u8..4).prop_map(|(trip, driver, kind)| Cmd::Action { trip, driver, kind }),
        1 => (any::<u8>(), 0u8..3).prop_map(|(trip, rider)| Cmd::RiderCancel { trip, rider }),
        1 => Just(Cmd::Locations),
        2 => (1u8..40).prop_map(|secs| Cmd::Wait { secs }),
        1 => any::<u8>().prop_map(|trip| Cmd::Reads { trip }),
    ]
}

async fn run_cmd(s: &TestServer, seen: &mut Seen, cmd: Cmd) {
    let mut d = s.drivers();
    match cmd {
        Cmd::Online { driver, class } => {
            let r = d
                .go_online(pb::GoOnlineRequest {
                    driver_id: format!("d-{driver}"),
                    location: north_of_pickup(100.0 + 150.0 * f64::from(driver)),
                    rating: 4.5,
                    vehicle_class: class,
                    gateway_id: "gw".into(),
                })
                .await;
            seen.result("GoOnline", r);
        }
        Cmd::Offline { driver } => {
            let r = d
                .go_offline(pb::GoOfflineRequest {
                    driver_id: format!("d-{driver}"),
                })
                .await;
            seen.result("GoOffline", r);
        }
        Cmd::Request {
            rider,
            request,
            far,
            class,
        } => {
            let mut req = trip_request(&format!("r-{rider}"), &format!("q-{request}"));
            if far {
                req.pickup = ll(PICKUP.0 + 0.001, PICKUP.1);
            }
            req.vehicle_class = class;
            let r = s.riders().request_trip(req).await;
            if let Some(t) = seen.result("RequestTrip", r).and_then(|r| r.trip) {
                seen.trip(&t);
            }
        }
        Cmd::Respond {
            offer,
            driver,
            accept,
        } => {
            let r = d
                .respond_to_offer(pb::RespondToOfferRequest {
                    offer_id: seen.pick_offer(offer),
                    driver_id: format!("d-{driver}"),
                    accept,
                })
                .await;
            if let Some(t) = seen.result("RespondToOffer", r).and_then(|r| r.trip) {
                seen.trip(&t);
            }
        }
        Cmd::Action { trip, driver, kind } => {
            let a = pb::TripActionRequest {
                trip_id: seen.pick_trip(trip),
                driver_id: format!("d-{driver}"),
            };
            let (name, r) = match kind {
                0 => ("MarkArrived", d.mark_arrived(a).await),
                1 => ("StartTrip", d.start_trip(a).await),
                2 => ("CompleteTrip", d.complete_trip(a).await),
                _ => ("CancelTripByDriver", d.cancel_trip_by_driver(a).await),
            };
            if let Some(t) = seen.result(name, r).and_then(|r| r.trip) {
                seen.trip(&t);
            }
        }
        Cmd::RiderCancel { trip, rider } => {
            let r = s
                .riders()
                .cancel_trip(pb::CancelTripRequest {
                    trip_id: seen.pick_trip(trip),
                    rider_id: format!("r-{rider}"),
                })
                .await;
            seen.result("CancelTrip", r);
        }
        Cmd::Locations => {
            // d-4 never goes online; offline drivers are refused too.
            let updates = (0..5)
                .map(|i| pb::LocationUpdate {
                    driver_id: format!("d-{i}"),
                    location: north_of_pickup(120.0 * f64::from(i)),
                    recorded_at_ms: 0,
                })
                .collect();
            let batch = pb::LocationBatch { updates };
            let r = d.report_locations(tokio_stream::iter(vec![batch])).await;
            if let Some(summary) = seen.result("ReportLocations", r) {
                for e in summary.examples {
                    seen.errors
                        .push(("ReportLocations example".into(), None, e));
                }
            }
            let r = d
                .update_location(pb::LocationUpdate {
                    driver_id: "d-4".into(),
                    location: north_of_pickup(0.0),
                    recorded_at_ms: 0,
                })
                .await;
            seen.result("UpdateLocation", r);
        }
        Cmd::Wait { secs } => s.advance(Duration::from_secs(u64::from(secs))).await,
        Cmd::Reads { trip } => {
            let r = s
                .riders()
                .get_trip(pb::GetTripRequest {
                    trip_id: seen.pick_trip(trip),
                })
                .await;
            if let Some(t) = seen.result("GetTrip", r).and_then(|r| r.trip) {
                seen.trip(&t);
            }
            let r = s
                .queries()
                .get_driver(pb::GetDriverRequest {
                    driver_id: "d-9".into(),
                })
                .await;
            seen.result("GetDriver", r);
        }
    }
}

async fn sweep(cmds: Vec<Cmd>) -> Vec<(String, Option<Code>, String)> {
    let mut config = Config::default();
    config.dispatch.dispatch_timeout = Duration::from_secs(60);
    let s = start_with(config).await;
    let mut seen = Seen::default();
    for c in cmds {
        run_cmd(&s, &mut seen, c).await;
    }
    s.stop().await;
    seen.errors
}

fn check(errors: &[(String, Option<Code>, String)]) {
    for (call, code, message) in errors {
        let problems = debug_text(message);
        assert!(
            problems.is_empty(),
            "{call}: {message:?}: {}",
            problems.join(", ")
        );
        if let Some(code) = code {
            assert!(
                DOCUMENTED.contains(code),
                "{call}: undocumented code {code:?} for {message:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn every_error_message_speaks_the_api_words(cmds in proptest::collection::vec(cmd(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let errors = rt.block_on(sweep(cmds));
        check(&errors);
    }
}

#[test]
fn the_checker_catches_debug_text() {
    for bad in [
        "rider r1 already has open trip trip-43 (Some(Offered)); cancel it",
        "offer offer-3 has already ended (Expired); an offer",
        "cannot Start trip trip-47: it is Accepted",
        "trip trip-9 has already ended (NoDrivers)",
        "d-1: DriverOffline",
        "x: None",
        "Trip { id: 3 }",
    ] {
        assert!(!debug_text(bad).is_empty(), "{bad}");
    }
    assert!(debug_text("trip trip-9 has already ended: it is TRIP_STATUS_NO_DRIVERS").is_empty());
}

/// A long fixed sequence that reaches every refusal at least once, so the sweep above is not
/// left to chance for any of them.
#[tokio::test]
async fn a_scripted_sweep_reaches_every_refusal() {
    use Cmd::*;
    let cmds = vec![
        Reads { trip: 0 },
        Locations,
        Online {
            driver: 0,
            class: 0,
        },
        Request {
            rider: 0,
            request: 0,
            far: false,
            class: 0,
        },
        Request {
            rider: 0,
            request: 1,
            far: false,
            class: 0,
        },
        Request {
            rider: 0,
            request: 0,
            far: true,
            class: 0,
        },
        Action {
            trip: 0,
            driver: 0,
            kind: 1,
        },
        Action {
            trip: 0,
            driver: 1,
            kind: 0,
        },
        Respond {
            offer: 0,
            driver: 1,
            accept: true,
        },
        Respond {
            offer: 0,
            driver: 0,
            accept: false,
        },
        Respond {
            offer: 0,
            driver: 0,
            accept: true,
        },
        Offline { driver: 4 },
        Locations,
        RiderCancel { trip: 0, rider: 1 },
        RiderCancel { trip: 0, rider: 0 },
        RiderCancel { trip: 0, rider: 0 },
        Action {
            trip: 0,
            driver: 0,
            kind: 2,
        },
        Wait { secs: 61 },
        Reads { trip: 0 },
    ];
    let errors = sweep(cmds).await;
    check(&errors);
    let codes: Vec<_> = errors.iter().filter_map(|e| e.1).collect();
    for code in [
        Code::NotFound,
        Code::FailedPrecondition,
        Code::PermissionDenied,
    ] {
        assert!(codes.contains(&code), "{code:?} not reached: {errors:#?}");
    }
}

#[tokio::test]
async fn the_messages_the_issue_names_read_as_the_api() {
    let mut config = Config::default();
    config.dispatch.dispatch_timeout = Duration::from_secs(60);
    let s = start_with(config).await;
    let mut d = s.drivers();
    online(&s, "d-1", 200.0, 4.8, "gw").await;
    let t = request(&s, "r-1", "q-1").await;
    // A second open trip.
    let e = s
        .riders()
        .request_trip(trip_request("r-1", "q-2"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        format!(
            "rider r-1 already has open trip {} (TRIP_STATUS_OFFERED); cancel it or wait for it \
             to end",
            t.trip_id
        )
    );
    // Out of turn: start before arriving.
    let offer = t.offer_id.clone();
    accept(&s, &offer, "d-1").await;
    let action = pb::TripActionRequest {
        trip_id: t.trip_id.clone(),
        driver_id: "d-1".into(),
    };
    let e = d.start_trip(action.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        format!(
            "cannot start trip {}: it is TRIP_STATUS_ACCEPTED",
            t.trip_id
        )
    );
    // An offer answered twice.
    let e = d
        .respond_to_offer(pb::RespondToOfferRequest {
            offer_id: offer.clone(),
            driver_id: "d-1".into(),
            accept: true,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        format!(
            "offer {offer} has already ended: it was accepted; an offer can be answered once, \
             within its window"
        )
    );
    // A cancel of a trip that ended NO_DRIVERS.
    d.cancel_trip_by_driver(action).await.unwrap();
    d.go_offline(pb::GoOfflineRequest {
        driver_id: "d-1".into(),
    })
    .await
    .unwrap();
    let lonely = request(&s, "r-2", "q-1").await;
    assert_eq!(status(&lonely), pb::TripStatus::NoDrivers, "d-1 is gone");
    let e = s
        .riders()
        .cancel_trip(pb::CancelTripRequest {
            trip_id: lonely.trip_id.clone(),
            rider_id: "r-2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        format!(
            "trip {} has already ended: it is TRIP_STATUS_NO_DRIVERS",
            lonely.trip_id
        )
    );
    // A location summary example for an unknown driver.
    let summary = d
        .report_locations(tokio_stream::iter(vec![pb::LocationBatch {
            updates: vec![pb::LocationUpdate {
                driver_id: "ghost".into(),
                location: north_of_pickup(0.0),
                recorded_at_ms: 0,
            }],
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        summary.examples,
        vec!["ghost: unknown driver; call GoOnline first".to_string()]
    );
    s.stop().await;
}
