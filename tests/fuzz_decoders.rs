//! Every decoder fed arbitrary input must answer (a value or an error a person can read) and
//! never panic: log records, snapshot files (and the state restore behind them), the TOML
//! config, and protobuf requests through the real gRPC handlers.
//!
//! `cargo test --test fuzz_decoders` runs a brief pass (256 cases per decoder). For the long
//! run set `FUZZ_CASES`, e.g. `FUZZ_CASES=10000000 cargo test --release --test fuzz_decoders
//! -- --nocapture` (the gRPC harness takes `FUZZ_CASES / 1000`, at most 100k: every case is a
//! real call). proptest shrinks any failure to a small input and prints it.

use std::time::Duration;

use dispatch::config::Config;
use dispatch::engine::Dispatcher;
use dispatch::engine::snapshot;
use dispatch::events::log::record::{Decoded, decode_record, encode_record};
use dispatch::events::{Event, EventKind};
use dispatch::pb;
use proptest::prelude::*;
use proptest::test_runner::{Config as Runner, TestRunner};

fn cases(divisor: u32, cap: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(256, |n| (n / divisor).clamp(1, cap))
}

fn runner(divisor: u32, cap: u32) -> TestRunner {
    TestRunner::new(Runner {
        cases: cases(divisor, cap),
        failure_persistence: None,
        ..Runner::default()
    })
}

/// A real state's snapshot: a few drivers, an offered trip, two ended trips with request ids
/// (the section decoded only when read).
fn real_snapshot() -> Vec<u8> {
    use dispatch::domain::{ExternalId, LatLng, Rating, VehicleClass};
    let mut d = Dispatcher::new(&Config::default(), dispatch::index::default_index(), 0);
    for i in 0..3 {
        let go = dispatch::engine::GoOnline {
            driver: ExternalId::new("id", &format!("d-{i}")).unwrap(),
            position: LatLng::new(40.75 + f64::from(i) * 0.001, -73.99).unwrap(),
            rating: Rating::new(4.5).unwrap(),
            class: VehicleClass::Economy,
            gateway: None,
        };
        d.go_online(1_700_000_000_000, go).unwrap();
    }
    let req = dispatch::engine::TripRequest {
        rider: ExternalId::new("id", "r").unwrap(),
        request_id: None,
        pickup: LatLng::new(40.75, -73.99).unwrap(),
        dropoff: LatLng::new(40.76, -73.98).unwrap(),
        class: VehicleClass::Any,
    };
    d.request_trip(1_700_000_000_000, req).unwrap();
    for i in 0..2 {
        let rider = ExternalId::new("id", &format!("ended-{i}")).unwrap();
        let req = dispatch::engine::TripRequest {
            rider: rider.clone(),
            request_id: Some(ExternalId::new("id", &format!("q-{i}")).unwrap()),
            pickup: LatLng::new(40.75, -73.99).unwrap(),
            dropoff: LatLng::new(40.76, -73.98).unwrap(),
            class: VehicleClass::Any,
        };
        let (trip, _) = d.request_trip(1_700_000_000_001, req).unwrap();
        d.cancel_trip(1_700_000_000_002, trip.id, &rider).unwrap();
    }
    snapshot::encode(&d.state().image())
}

/// Restores a decoded image into a fresh dispatcher: accepted or refused, never a panic, and
/// an accepted one keeps every invariant; then reads every trip (the digest decodes the ended
/// ones still encoded) and lets their retention pass. The index has 100 km cells: the default
/// 250 m grid builds a 640 KB band table per dispatcher, which was most of a case's time (the
/// cell size does not change what is decoded or checked).
fn restore(image: dispatch::engine::state::StateImage) {
    let index = Box::new(dispatch::index::GridIndex::with_cell_m(100_000.0));
    let mut d = Dispatcher::new(&Config::default(), index, 0);
    if d.restore(image).is_ok() {
        d.check_invariants().unwrap();
        let _ = d.durable_digest();
        d.fire_due(1_700_000_000_000 + 3_600_000);
        d.check_invariants().unwrap();
    }
}

#[test]
fn log_records_of_arbitrary_bytes_decode_or_are_refused() {
    let mut valid = Vec::new();
    let event = Event {
        offset: 7,
        at_ms: 1,
        kind: EventKind::BatchFlushed {
            next_flush_at_ms: 9,
            waiting: 2,
        },
    };
    encode_record(&event, &mut valid);
    assert!(matches!(decode_record(&valid), Decoded::Event(e, _) if e == event));
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        // A valid record with bytes flipped, cut or extended.
        (
            proptest::collection::vec((0..valid.len(), any::<u8>()), 0..6),
            0..valid.len() + 8
        )
            .prop_map(move |(flips, len)| {
                let mut b = valid.clone();
                for (at, x) in flips {
                    b[at] ^= x;
                }
                b.resize(len, 0);
                b
            }),
    ];
    runner(1, u32::MAX)
        .run(&strategy, |bytes| {
            let _ = decode_record(&bytes);
            Ok(())
        })
        .unwrap();
}

#[test]
fn snapshots_of_arbitrary_bytes_decode_or_are_refused() {
    let valid = real_snapshot();
    restore(snapshot::decode(&valid).unwrap());
    let n = valid.len();
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        // Flips anywhere (the checksum must catch them)...
        proptest::collection::vec((0..n, any::<u8>()), 1..4).prop_map({
            let valid = valid.clone();
            move |flips| {
                let mut b = valid.clone();
                for (at, x) in flips {
                    b[at] ^= x | 1;
                }
                b
            }
        }),
    ];
    runner(1, u32::MAX)
        .run(&strategy, |bytes| {
            if let Ok(image) = snapshot::decode(&bytes) {
                restore(image);
            }
            Ok(())
        })
        .unwrap();
}

/// A payload edited past the checksum: the header rewritten to match, so the state decoder
/// and `restore`'s consistency checks see the damage.
#[test]
fn snapshot_payloads_edited_behind_a_valid_checksum_are_refused_or_consistent() {
    let valid = real_snapshot();
    let n = valid.len();
    let strategy = proptest::collection::vec((28..n, any::<u8>()), 1..4);
    runner(1, u32::MAX)
        .run(&strategy, |flips| {
            let mut b = valid.clone();
            for (at, x) in flips {
                b[at] ^= x | 1;
            }
            let mut crc = crc32fast::Hasher::new();
            crc.update(&b[8..16]);
            crc.update(&b[28..]);
            b[24..28].copy_from_slice(&crc.finalize().to_le_bytes());
            if let Ok(image) = snapshot::decode(&b) {
                restore(image);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn toml_configs_of_arbitrary_text_load_or_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dispatch.toml");
    let valid = dispatch::config_load::to_toml(&Config::default());
    let n = valid.len();
    let strategy = prop_oneof![
        ".{0,200}",
        // The default config with bytes replaced by printable characters.
        proptest::collection::vec((0..n, 32u8..127), 1..6).prop_map(move |edits| {
            let mut b = valid.clone().into_bytes();
            for (at, c) in edits {
                b[at] = c;
            }
            String::from_utf8_lossy(&b).into_owned()
        }),
    ];
    runner(1, u32::MAX)
        .run(&strategy, |text| {
            std::fs::write(&path, &text).unwrap();
            if let Err(e) = dispatch::config_load::load(Some(&path), Vec::new(), &[]) {
                prop_assert!(!e.to_string().is_empty());
            }
            Ok(())
        })
        .unwrap();
}

/// Arbitrary bytes decoded as each request type (what tonic hands a handler) and sent to a
/// real server: every answer is a status a client can act on, never INTERNAL or UNKNOWN (a
/// panic in a handler), and the server still answers afterwards.
#[test]
fn arbitrary_requests_through_the_real_grpc_handlers_get_a_proper_status() {
    use prost::Message;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (addr, channel) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(dispatch::server::run(
            listener,
            Config::default(),
            dispatch::server::RunOptions::default(),
            std::future::pending::<()>(),
        ));
        let channel = loop {
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .timeout(Duration::from_secs(10));
            if let Ok(c) = endpoint.connect().await {
                break c;
            }
            tokio::task::yield_now().await;
        };
        (addr, channel)
    });
    let strategy = (0u8..10, proptest::collection::vec(any::<u8>(), 0..160));
    runner(1_000, 100_000)
        .run(&strategy, |(rpc, bytes)| {
            let status = rt.block_on(call(channel.clone(), rpc, &bytes));
            if let Err(s) = status {
                prop_assert!(
                    !matches!(s.code(), tonic::Code::Internal | tonic::Code::Unknown),
                    "rpc {rpc} on {bytes:?}: {s:?}"
                );
            }
            Ok(())
        })
        .unwrap();
    let alive = rt.block_on(async {
        pb::query_service_client::QueryServiceClient::new(channel)
            .get_stats(pb::GetStatsRequest {})
            .await
    });
    assert!(alive.is_ok(), "the server on {addr} still answers");

    async fn call(
        channel: tonic::transport::Channel,
        rpc: u8,
        bytes: &[u8],
    ) -> Result<(), tonic::Status> {
        use pb::driver_service_client::DriverServiceClient as D;
        use pb::query_service_client::QueryServiceClient as Q;
        use pb::rider_service_client::RiderServiceClient as R;
        // Bytes that are not a message of this type never reach a handler: tonic refuses
        // them itself. The rest are what a fuzzing client could make a handler see.
        macro_rules! send {
            ($client:ident, $method:ident, $ty:ty) => {{
                let Ok(msg) = <$ty>::decode(bytes) else {
                    return Ok(());
                };
                $client::new(channel).$method(msg).await.map(|_| ())
            }};
        }
        match rpc {
            0 => send!(D, go_online, pb::GoOnlineRequest),
            1 => send!(D, go_offline, pb::GoOfflineRequest),
            2 => send!(D, update_location, pb::LocationUpdate),
            3 => send!(D, respond_to_offer, pb::RespondToOfferRequest),
            4 => send!(D, start_trip, pb::TripActionRequest),
            5 => send!(R, request_trip, pb::RequestTripRequest),
            6 => send!(R, cancel_trip, pb::CancelTripRequest),
            7 => send!(R, get_trip, pb::GetTripRequest),
            8 => send!(Q, nearby_drivers, pb::NearbyDriversRequest),
            _ => send!(Q, get_surge, pb::GetSurgeRequest),
        }
    }
}
