//! A gateway's offer stream resumed after a break (`SubscribeOffersRequest.resume_from`): the
//! notices the break swallowed (an expiry, the cascade's next offer) arrive, in order, and
//! none received before arrives again; without a resume point the stream starts from the
//! pending offers, as before. Bad resume points get the API's own words.

mod support;

use std::time::Duration;

use dispatch::pb::{self, driver_notice::Notice};
use support::*;
use tonic::Code;

async fn resumed(s: &TestServer, resume_from: Vec<u64>) -> tonic::Streaming<pb::DriverNotice> {
    s.drivers()
        .subscribe_offers(pb::SubscribeOffersRequest {
            gateway_id: "gw".into(),
            resume_from,
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_resumed_offer_stream_gets_what_the_break_swallowed_and_nothing_twice() {
    let s = start().await;
    online(&s, "d-1", 200.0, 4.8, "gw").await;
    online(&s, "d-2", 900.0, 4.8, "gw").await;
    let mut offers = offer_stream(&s, "gw").await;
    request(&s, "r-1", "").await;
    let got = next(&mut offers).await;
    let resume_at = got.resume_offset;
    let first = offer_of(got);
    assert_eq!(first.driver_id, "d-1");
    assert!(resume_at > 0, "a live notice carries where to resume");
    // The gateway's connection breaks; meanwhile the offer expires and cascades to d-2.
    drop(offers);
    s.advance(Duration::from_secs(15)).await;

    // Without a resume point: the pending offers only (the expiry is not pending).
    let mut plain = offer_stream(&s, "gw").await;
    let pending = next(&mut plain).await;
    let head = pending.resume_offset;
    assert_eq!(offer_of(pending).driver_id, "d-2");
    assert!(head > resume_at, "the last pending offer carries the head");

    // From the resume point: the expiry of the first offer, then the second, each once.
    let mut again = resumed(&s, vec![resume_at]).await;
    let expired = next(&mut again).await;
    let expired_at = expired.resume_offset;
    match expired.notice {
        Some(Notice::OfferExpired(c)) => assert_eq!(c.offer_id, first.offer_id),
        other => panic!("expected the expiry the break swallowed, got {other:?}"),
    }
    let second = next(&mut again).await;
    assert!(second.resume_offset > expired_at, "resume points only grow");
    let second = offer_of(second);
    assert_eq!(second.driver_id, "d-2");
    assert_eq!(second.attempt, 2);
    // Resuming from the last notice received: nothing more until something happens.
    let mut caught_up = resumed(&s, vec![head]).await;
    s.advance(Duration::from_secs(15)).await;
    match next(&mut caught_up).await.notice {
        Some(Notice::OfferExpired(c)) => assert_eq!(c.offer_id, second.offer_id),
        other => panic!("expected the second offer's expiry first, got {other:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn a_resume_point_this_stream_never_sent_is_refused_in_words() {
    let s = start().await;
    online(&s, "d-1", 200.0, 4.8, "gw").await;
    let head = s.engine.bus().next_offset();
    let refusal = |resume_from: Vec<u64>| {
        let mut drivers = s.drivers();
        async move {
            let call = drivers
                .subscribe_offers(pb::SubscribeOffersRequest {
                    gateway_id: "gw".into(),
                    resume_from,
                })
                .await;
            call.map(|_| ()).unwrap_err()
        }
    };
    let beyond = refusal(vec![head + 100]).await;
    assert_eq!(beyond.code(), Code::OutOfRange, "{beyond:?}");
    assert!(beyond.message().contains("beyond the head"), "{beyond:?}");
    let foreign = refusal(vec![2_000_000_000_000]).await;
    assert_eq!(foreign.code(), Code::InvalidArgument, "{foreign:?}");
    assert!(foreign.message().contains("resume_offset"), "{foreign:?}");
    let two = refusal(vec![0, 1]).await;
    assert_eq!(two.code(), Code::InvalidArgument, "{two:?}");
    assert!(two.message().contains("one event stream"), "{two:?}");
    s.stop().await;
}
