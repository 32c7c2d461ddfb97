//! Authentication over real gRPC: the full matrix of every rpc x every role, plus no token and
//! an unknown token; health and reflection stay open. And TLS: a handshake with a certificate
//! generated here, and a plaintext client refused.

mod support;

use std::time::Duration;

use dispatch::config::{Config, Role, TokenConfig};
use dispatch::pb;
use dispatch::pb::driver_service_client::DriverServiceClient;
use dispatch::pb::event_service_client::EventServiceClient;
use dispatch::pb::query_service_client::QueryServiceClient;
use dispatch::pb::rider_service_client::RiderServiceClient;
use support::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request, Status};

const ROLES: [(Role, &str); 4] = [
    (Role::DriverGateway, "token-driver-gateway-0001"),
    (Role::RiderGateway, "token-rider-gateway-00002"),
    (Role::Subscriber, "token-subscriber-00000003"),
    (Role::Admin, "token-admin-0000000000004"),
];

fn auth_config() -> Config {
    let mut config = Config::default();
    config.auth.tokens = ROLES
        .iter()
        .map(|(role, token)| TokenConfig {
            name: format!("{role:?}"),
            token: token.to_string(),
            roles: vec![*role],
        })
        .collect();
    config
}

/// Every rpc, the role it needs.
const RPCS: [(&str, Role); 19] = [
    ("GoOnline", Role::DriverGateway),
    ("GoOffline", Role::DriverGateway),
    ("UpdateLocation", Role::DriverGateway),
    ("ReportLocations", Role::DriverGateway),
    ("SubscribeOffers", Role::DriverGateway),
    ("RespondToOffer", Role::DriverGateway),
    ("MarkArrived", Role::DriverGateway),
    ("StartTrip", Role::DriverGateway),
    ("CompleteTrip", Role::DriverGateway),
    ("CancelTripByDriver", Role::DriverGateway),
    ("RequestTrip", Role::RiderGateway),
    ("WatchTrip", Role::RiderGateway),
    ("CancelTrip", Role::RiderGateway),
    ("GetTrip", Role::RiderGateway),
    ("NearbyDrivers", Role::Admin),
    ("GetSurge", Role::Admin),
    ("GetStats", Role::Admin),
    ("GetDriver", Role::Admin),
    ("Subscribe", Role::Subscriber),
];

/// Calls `rpc` with default (mostly invalid) input and `token`; returns the status code. Auth
/// runs before validation, so a refusal is always UNAUTHENTICATED or PERMISSION_DENIED.
async fn call(channel: &Channel, rpc: &str, token: Option<&str>) -> Status {
    fn req<T>(m: T, token: Option<&str>) -> Request<T> {
        match token {
            Some(t) => with_token(m, t),
            None => Request::new(m),
        }
    }
    let mut d = DriverServiceClient::new(channel.clone());
    let mut r = RiderServiceClient::new(channel.clone());
    let mut q = QueryServiceClient::new(channel.clone());
    let mut e = EventServiceClient::new(channel.clone());
    fn code<T>(result: Result<tonic::Response<T>, Status>) -> Status {
        match result {
            Ok(_) => Status::ok(""),
            Err(s) => s,
        }
    }
    let t = token;
    match rpc {
        "GoOnline" => code(d.go_online(req(pb::GoOnlineRequest::default(), t)).await),
        "GoOffline" => code(d.go_offline(req(pb::GoOfflineRequest::default(), t)).await),
        "UpdateLocation" => code(
            d.update_location(req(pb::LocationUpdate::default(), t))
                .await,
        ),
        "ReportLocations" => {
            let batches = tokio_stream::iter(Vec::<pb::LocationBatch>::new());
            code(d.report_locations(req(batches, t)).await)
        }
        "SubscribeOffers" => code(
            d.subscribe_offers(req(pb::SubscribeOffersRequest::default(), t))
                .await,
        ),
        "RespondToOffer" => code(
            d.respond_to_offer(req(pb::RespondToOfferRequest::default(), t))
                .await,
        ),
        "MarkArrived" => code(
            d.mark_arrived(req(pb::TripActionRequest::default(), t))
                .await,
        ),
        "StartTrip" => code(d.start_trip(req(pb::TripActionRequest::default(), t)).await),
        "CompleteTrip" => code(
            d.complete_trip(req(pb::TripActionRequest::default(), t))
                .await,
        ),
        "CancelTripByDriver" => code(
            d.cancel_trip_by_driver(req(pb::TripActionRequest::default(), t))
                .await,
        ),
        "RequestTrip" => code(
            r.request_trip(req(pb::RequestTripRequest::default(), t))
                .await,
        ),
        "WatchTrip" => code(r.watch_trip(req(pb::WatchTripRequest::default(), t)).await),
        "CancelTrip" => code(
            r.cancel_trip(req(pb::CancelTripRequest::default(), t))
                .await,
        ),
        "GetTrip" => code(r.get_trip(req(pb::GetTripRequest::default(), t)).await),
        "NearbyDrivers" => code(
            q.nearby_drivers(req(pb::NearbyDriversRequest::default(), t))
                .await,
        ),
        "GetSurge" => code(q.get_surge(req(pb::GetSurgeRequest::default(), t)).await),
        "GetStats" => code(q.get_stats(req(pb::GetStatsRequest::default(), t)).await),
        "GetDriver" => code(q.get_driver(req(pb::GetDriverRequest::default(), t)).await),
        "Subscribe" => code(e.subscribe(req(pb::SubscribeRequest::default(), t)).await),
        other => panic!("unknown rpc {other}"),
    }
}

#[tokio::test]
async fn every_rpc_needs_its_role_and_admin_may_call_everything() {
    let s = start_with(auth_config()).await;
    for (rpc, needed) in RPCS {
        for (role, token) in ROLES {
            let status = call(&s.channel, rpc, Some(token)).await;
            if role == needed || role == Role::Admin {
                assert!(
                    !matches!(
                        status.code(),
                        Code::Unauthenticated | Code::PermissionDenied
                    ) || !status.message().contains("token"),
                    "{rpc} with {role:?}: {status:?}"
                );
            } else {
                assert_eq!(
                    status.code(),
                    Code::PermissionDenied,
                    "{rpc} with {role:?}: {status:?}"
                );
                assert!(status.message().contains("role"), "{status:?}");
                assert!(
                    !status.message().contains(token),
                    "the token leaked: {status:?}"
                );
            }
        }
        let none = call(&s.channel, rpc, None).await;
        assert_eq!(none.code(), Code::Unauthenticated, "{rpc} with no token");
        let bad = call(&s.channel, rpc, Some("token-admin-0000000000005")).await;
        assert_eq!(bad.code(), Code::Unauthenticated, "{rpc} with a bad token");
    }
    // Health stays open.
    assert_eq!(health_of(s.channel.clone()).await, 1);
    s.stop().await;
}

#[tokio::test]
async fn authorised_calls_work_end_to_end() {
    let s = start_with(auth_config()).await;
    let driver = ROLES[0].1;
    let rider = ROLES[1].1;
    s.drivers()
        .go_online(with_token(
            pb::GoOnlineRequest {
                driver_id: "d-1".into(),
                location: north_of_pickup(300.0),
                rating: 4.9,
                vehicle_class: 0,
                gateway_id: "gw-1".into(),
            },
            driver,
        ))
        .await
        .unwrap();
    let trip = s
        .riders()
        .request_trip(with_token(trip_request("r-1", "q-1"), rider))
        .await
        .unwrap()
        .into_inner()
        .trip
        .unwrap();
    assert_eq!(status(&trip), pb::TripStatus::Offered);
    s.stop().await;
}

#[tokio::test]
async fn tls_handshake_with_a_generated_certificate() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!("dispatch-ops-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = Config::default();
    config.tls.cert_path = Some(cert_path);
    config.tls.key_path = Some(key_path);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let options = dispatch::server::RunOptions::default();
    let server = tokio::spawn(dispatch::server::run(listener, config, options, async {
        let _ = stop_rx.await;
    }));

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cert.cert.pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(health_of(channel.clone()).await, 1);
    let stats = QueryServiceClient::new(channel)
        .get_stats(pb::GetStatsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.open_trips, 0);

    // A plaintext client does not get through.
    let plain = async {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await?;
        QueryServiceClient::new(ch)
            .get_stats(pb::GetStatsRequest {})
            .await
            .map_err(Into::<Box<dyn std::error::Error + Send + Sync>>::into)
            .map(|_| ())
    };
    let refused = tokio::time::timeout(Duration::from_secs(10), plain)
        .await
        .expect("a plaintext attempt fails within 10 s");
    assert!(refused.is_err());

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
