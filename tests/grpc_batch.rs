//! The batch policy over real gRPC with a manual clock: a request waits for its window, then
//! its offer streams to the driver's gateway, and the trip says the batch policy matched it.

mod support;

use std::time::Duration;

use dispatch::config::Config;
use dispatch::events::MatchPolicy;
use dispatch::pb;
use support::*;

#[tokio::test]
async fn a_batched_request_is_offered_when_its_window_closes() {
    let mut config = Config::default();
    config.dispatch.policy = MatchPolicy::Batch;
    config.dispatch.batch_window = Duration::from_millis(2_000);
    let s = start_with(config).await;
    online(&s, "d-near", 300.0, 4.9, "gw-1").await;
    let mut offers = offer_stream(&s, "gw-1").await;

    let trip = request(&s, "r-1", "req-1").await;
    assert_eq!(status(&trip), pb::TripStatus::Searching);
    assert_eq!(trip.policy(), pb::MatchPolicy::Batch);

    s.advance(Duration::from_millis(2_000)).await;
    let offer = offer_of(next(&mut offers).await);
    assert_eq!(offer.trip_id, trip.trip_id);
    assert_eq!(offer.driver_id, "d-near");
    assert_eq!(offer.expires_at_ms, T0_MS + 2_000 + 15_000);

    let accepted = answer(&s, &offer.offer_id, "d-near", true).await;
    assert_eq!(status(&accepted), pb::TripStatus::Accepted);
    assert_eq!(accepted.policy(), pb::MatchPolicy::Batch);
    s.stop().await;
}
