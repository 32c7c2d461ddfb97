//! Cluster mode on TLS: two in-process servers with the same certificate on a 3-node NATS cluster
//! split two regions, and a call to the process that does not own a region is forwarded to
//! its owner over TLS (checked against the cluster's certificate) and answered. Before
//! forwarding spoke TLS, such a call got UNAVAILABLE and the regions were never all served
//! through either process.

mod nats;
mod support;

use std::time::{Duration, Instant};

use dispatch::config::Config;
use dispatch::pb::{
    self, driver_service_client::DriverServiceClient, query_service_client::QueryServiceClient,
};
use support::ll;
use support::regions::{RegionServer, wait_served, west_east};
use tonic::transport::{Certificate, ClientTlsConfig};

/// The owner address of each region, as `channel`'s process sees it.
async fn owners(channel: &tonic::transport::Channel) -> Vec<String> {
    QueryServiceClient::new(channel.clone())
        .get_routes(pb::GetRoutesRequest {})
        .await
        .unwrap()
        .into_inner()
        .routes
        .into_iter()
        .map(|r| r.owner_address)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_for_the_other_process_region_are_forwarded_over_tls() {
    let Some(cluster) = nats::start(3).await else {
        return;
    };
    // One certificate for the cluster, valid for the address the processes advertise.
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut config = Config {
        regions: west_east(),
        ..Config::default()
    };
    config.cluster.nats_url = Some(cluster.urls());
    config.tls.cert_path = Some(cert_path);
    config.tls.key_path = Some(key_path);
    let client_tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cert.cert.pem()))
        .domain_name("localhost");

    let a = RegionServer::start_with(config.clone(), Some(client_tls.clone())).await;
    wait_served(&a.channel, &["west", "east"]).await;
    let b = RegionServer::start_with(config, Some(client_tls)).await;
    // The second process takes its fair share (one region) from the first.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (seen_a, seen_b) = (owners(&a.channel).await, owners(&b.channel).await);
        if seen_a == seen_b && seen_a.iter().all(|o| !o.is_empty()) && seen_a[0] != seen_a[1] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the regions were not split between the processes: {seen_a:?} / {seen_b:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each process answers for both regions: one its own, the other forwarded over TLS.
    wait_served(&a.channel, &["west", "east"]).await;
    wait_served(&b.channel, &["west", "east"]).await;
    for (i, (server, lng)) in [(&a, -74.0), (&b, -73.98), (&a, -73.98), (&b, -74.0)]
        .into_iter()
        .enumerate()
    {
        let id = format!("d-{i}");
        let driver = DriverServiceClient::new(server.channel.clone())
            .go_online(pb::GoOnlineRequest {
                driver_id: id.clone(),
                location: ll(40.75, lng),
                rating: 4.8,
                gateway_id: "gw".into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("{id} through one process: {e}"))
            .into_inner()
            .driver
            .unwrap();
        assert_eq!(driver.driver_id, id);
        // Read back through the other process.
        let other = if std::ptr::eq(server, &a) { &b } else { &a };
        let seen = QueryServiceClient::new(other.channel.clone())
            .get_driver(pb::GetDriverRequest {
                driver_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("{id} through the other process: {e}"))
            .into_inner()
            .driver
            .unwrap();
        assert_eq!(seen.state(), pb::DriverState::Available, "{seen:?}");
    }
    a.stop().await;
    b.stop().await;
}
