//! The router's promises: each watcher gets exactly its key's events, in order, from its start
//! offset; a slow watcher is let go and catches up by itself with no gap or duplicate.

use super::*;
use crate::domain::OfferId;
use crate::events::{EventLog, LogConfig, OfferRef};

fn id(s: &str) -> ExternalId {
    ExternalId::new("id", s).unwrap()
}

/// A deterministic mix, three events per step `i / 3`: an arrival on trip `step % trips`, an
/// offer expiry on that trip for gateway a, b or none in turn, and an unrelated driver event.
/// No trip ever ends, so every stream stays open.
fn kind(i: u64, trips: u64) -> EventKind {
    match i % 3 {
        0 => EventKind::DriverArrived {
            trip: TripId(i / 3 % trips),
            driver: id("d"),
        },
        1 => EventKind::OfferExpired(OfferRef {
            offer: OfferId(i),
            trip: TripId(i / 3 % trips),
            driver: id("d"),
            gateway: match i / 3 % 3 {
                0 => Some(id("gw-a")),
                1 => Some(id("gw-b")),
                _ => None,
            },
        }),
        _ => EventKind::DriverOffline { driver: id("d") },
    }
}

fn events(range: std::ops::Range<u64>, trips: u64) -> Vec<Event> {
    range
        .map(|offset| Event {
            offset,
            at_ms: offset,
            kind: kind(offset, trips),
        })
        .collect()
}

/// Publishes to the log first, then the bus, as the engine's writer does.
struct Stream {
    bus: Arc<EventBus>,
    log: Option<EventLog>,
    next: u64,
    trips: u64,
}

impl Stream {
    fn publish(&mut self, n: u64) {
        let batch = events(self.next..self.next + n, self.trips);
        if let Some(log) = &mut self.log {
            log.append(&batch).unwrap();
            log.commit().unwrap();
        }
        self.next += n;
        self.bus.publish(batch);
    }
}

async fn collect(watch: &mut Watch, n: usize) -> Vec<Arc<Event>> {
    let mut out = Vec::new();
    collect_into(watch, &mut out, n).await;
    out
}

async fn collect_into(watch: &mut Watch, out: &mut Vec<Arc<Event>>, n: usize) {
    while out.len() < n {
        tokio::time::timeout(std::time::Duration::from_secs(10), watch.next_batch(out))
            .await
            .expect("the watcher's events arrive")
            .unwrap();
    }
}

fn expected(all: &[Event], key: &RouteKey, from: u64) -> Vec<u64> {
    all.iter()
        .filter(|e| e.offset >= from && key.matches(&e.kind))
        .map(|e| e.offset)
        .collect()
}

fn offsets(got: &[Arc<Event>]) -> Vec<u64> {
    got.iter().map(|e| e.offset).collect()
}

#[tokio::test]
async fn many_trip_watchers_each_get_exactly_their_trip_in_order() {
    let trips = 40;
    let bus = Arc::new(EventBus::new(1 << 16, 0));
    let router = Router::spawn(bus.clone(), None);
    let mut stream = Stream {
        bus: bus.clone(),
        log: None,
        next: 0,
        trips,
    };
    stream.publish(100);
    // Watchers starting at different offsets: behind the router, at its position, ahead.
    let mut watches = Vec::new();
    for t in 0..trips {
        let from = t * 7;
        watches.push((from, router.watch(RouteKey::Trip(TripId(t)), from).await));
    }
    stream.publish(3000);
    let all = events(0..3100, trips);
    for (t, (from, watch)) in watches.iter_mut().enumerate() {
        let key = RouteKey::Trip(TripId(t as u64));
        let want = expected(&all, &key, *from);
        let got = collect(watch, want.len()).await;
        assert_eq!(offsets(&got), want, "trip {t}");
        assert!(got.iter().all(|e| key.matches(&e.kind)));
    }
    assert_eq!(router.stats().overflowed, 0);
}

#[tokio::test]
async fn a_gateway_stream_gets_exactly_its_offers() {
    let bus = Arc::new(EventBus::new(1 << 16, 0));
    let router = Router::spawn(bus.clone(), None);
    let mut stream = Stream {
        bus: bus.clone(),
        log: None,
        next: 0,
        trips: 5,
    };
    let keys = [
        RouteKey::Gateway(Some(id("gw-a"))),
        RouteKey::Gateway(Some(id("gw-b"))),
        RouteKey::Gateway(None),
    ];
    let mut watches = Vec::new();
    for key in &keys {
        watches.push(router.watch(key.clone(), 0).await);
    }
    stream.publish(600);
    let all = events(0..600, 5);
    for (key, watch) in keys.iter().zip(&mut watches) {
        let want = expected(&all, key, 0);
        assert!(
            want.len() >= 66,
            "each gateway has a third of the 200 offers"
        );
        assert_eq!(offsets(&collect(watch, want.len()).await), want, "{key:?}");
    }
}

#[tokio::test]
async fn a_slow_watcher_is_let_go_and_catches_up_from_the_log_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = EventLog::open(&LogConfig::default(), dir.path(), |_| Ok(())).unwrap();
    let log_dir = log.dir().to_path_buf();
    // A ring far smaller than what the slow watcher falls behind by.
    let bus = Arc::new(EventBus::new(64, 0));
    let router = Router::spawn(bus.clone(), Some(log_dir));
    let mut stream = Stream {
        bus: bus.clone(),
        log: Some(log),
        next: 0,
        trips: 1,
    };
    let key = RouteKey::Trip(TripId(0));
    let mut slow = router.watch(key.clone(), 0).await;
    let mut fast = router.watch(key.clone(), 0).await;
    // Publish in small steps so the router (a ring of 64) keeps up, while `slow` reads nothing:
    // its buffer of WATCH_BUFFER events fills and the router lets it go.
    let mut fast_got = Vec::new();
    for step in 1..=100 {
        stream.publish(30);
        let so_far = expected(&events(0..30 * step, 1), &key, 0).len();
        collect_into(&mut fast, &mut fast_got, so_far).await;
    }
    let all = events(0..3000, 1);
    let want = expected(&all, &key, 0);
    assert_eq!(want.len(), 2000, "two of every three events are the trip's");
    assert_eq!(
        offsets(&fast_got),
        want,
        "the fast watcher is not held back"
    );
    assert_eq!(
        router.stats().overflowed,
        1,
        "only the slow watcher overflowed"
    );
    let got = collect(&mut slow, want.len()).await;
    assert_eq!(
        offsets(&got),
        want,
        "no gap, no duplicate after falling back"
    );
    assert!(router.stats().fell_back >= 1);
    // Having caught up it rejoins the router and gets new events from it.
    stream.publish(30);
    let more = collect(&mut slow, 20).await;
    assert_eq!(offsets(&more), expected(&events(0..3030, 1), &key, 3000));
    assert_eq!(router.stats().watchers, 2, "both are routed again");
}

#[tokio::test]
async fn a_trip_watcher_is_let_go_once_its_trip_ends() {
    let bus = Arc::new(EventBus::new(1024, 0));
    let router = Router::spawn(bus.clone(), None);
    let trip = TripId(9);
    let mut watch = router.watch(RouteKey::Trip(trip), 0).await;
    bus.publish([Event {
        offset: 0,
        at_ms: 0,
        kind: EventKind::TripCompleted {
            trip,
            driver: id("d"),
        },
    }]);
    assert_eq!(offsets(&collect(&mut watch, 1).await), [0]);
    // Published only to move the router past the completion.
    bus.publish(events(1..2, 1));
    while router.stats().watchers != 0 {
        tokio::task::yield_now().await;
    }
}
