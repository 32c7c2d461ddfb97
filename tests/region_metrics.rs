//! `/metrics` with regions: its gauges are the sum over every region served by the process,
//! with local region logs and in cluster mode (where the HTTP side serves `/metrics` only, the
//! live map not being region-aware, and says so on its other paths).

mod http_client;
mod nats;
mod support;

use dispatch::config::Config;
use dispatch::pb::{
    self, driver_service_client::DriverServiceClient, rider_service_client::RiderServiceClient,
};
use support::ll;
use support::regions::{RegionServer as Server, wait_served, west_east};

/// The value of the series `key` (`name{labels}`) in a Prometheus text exposition.
fn gauge(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {key} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn online(s: &Server, id: &str, lng: f64) {
    DriverServiceClient::new(s.channel.clone())
        .go_online(pb::GoOnlineRequest {
            driver_id: id.into(),
            location: ll(40.75, lng),
            rating: 4.8,
            vehicle_class: 0,
            gateway_id: "gw".into(),
        })
        .await
        .unwrap();
}

/// Two drivers in the west region and one in the east, a trip in each, then the scrape.
async fn three_drivers_scraped(s: &Server) -> String {
    online(s, "d-w1", -74.01).await;
    online(s, "d-w2", -74.00).await;
    online(s, "d-e1", -73.98).await;
    for (rider, lng) in [("r-w", -74.011), ("r-e", -73.981)] {
        RiderServiceClient::new(s.channel.clone())
            .request_trip(pb::RequestTripRequest {
                rider_id: rider.into(),
                request_id: format!("req-{rider}"),
                pickup: ll(40.751, lng),
                dropoff: ll(40.76, -73.98),
                vehicle_class: 0,
            })
            .await
            .unwrap();
    }
    let answer = http_client::get(s.http.unwrap(), "/metrics", &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_local_regions_the_gauges_sum_every_region() {
    let config = Config {
        regions: west_east(),
        ..Config::default()
    };
    let s = Server::start_http(config).await;
    let text = three_drivers_scraped(&s).await;
    check(&text);
    s.stop().await;
}

/// Every region's drivers and trips counted: gauges from each engine, counters from each
/// region's event follower (before the fix, the first region's only).
fn check(text: &str) {
    assert_eq!(gauge(text, "dispatch_drivers{state=\"available\"}"), 1.0);
    assert_eq!(gauge(text, "dispatch_drivers{state=\"offered\"}"), 2.0);
    assert_eq!(gauge(text, "dispatch_open_trips"), 2.0);
    assert_eq!(gauge(text, "dispatch_pending_offers"), 2.0);
    assert_eq!(gauge(text, "dispatch_trip_requests_total"), 2.0);
    assert_eq!(gauge(text, "dispatch_offers_sent_total"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_mode_metrics_are_served_and_sum_the_regions_served_here() {
    let Some(cluster) = nats::start(3).await else {
        return;
    };
    let mut config = Config {
        regions: west_east(),
        ..Config::default()
    };
    config.cluster.nats_url = Some(cluster.urls());
    let s = Server::start_http(config).await;
    wait_served(&s.channel, &["west", "east"]).await;
    let text = three_drivers_scraped(&s).await;
    check(&text);
    let map = http_client::get(s.http.unwrap(), "/", &[]).await;
    assert_eq!(map.status, 404);
    assert!(
        map.body.contains("cluster mode serves /metrics only"),
        "{}",
        map.body
    );
    s.stop().await;
}
