//! Event fan-out routed by key: one task follows the stream and hands each event only to the
//! watchers of its key, the watchers of that trip or the offer stream of that gateway, instead
//! of every stream scanning every event. With 2,000 trips watched, an event costs two hash
//! lookups here rather than 2,000 filter steps spread over 2,000 tasks. (console-subscriber's
//! aggregator, which keeps its watchers by id, is the model.)
//!
//! Hand-over. A stream starts from the offset its snapshot was read at; the router may be
//! behind that offset or past it when the registration arrives. If behind, the watcher simply
//! skips what comes before its offset. If past, the router first gives it its share of the
//! events in between, read from the ring, then routes on; if the ring no longer holds them the
//! router lets go of the watcher, which then follows the stream itself (below). Either way
//! every event of the key from the start offset on arrives once, in offset order.
//!
//! Slow watchers. Each watcher has a bounded buffer of [`WATCH_BUFFER`] events. The router
//! never waits for one: when a watcher's buffer is full the router drops it (counted in
//! [`RouterStats::overflowed`]). The [`Watch`] notices, drains what it has, and falls back to
//! a [`Follower`] of its own from the offset after its last event, which reads the bus, or the
//! log if it fell out of the ring, and filters by key; once caught up with the head it
//! registers with the router again. So a slow client only slows itself, and loses nothing.
//!
//! The router's own follower catches up from the log like any other. Without a log, if it
//! lags out of the ring it lets go of every watcher: each then finds out for itself, from its
//! own follower, which events are gone (`FollowError::Lagged`), exactly as a plain subscriber
//! would.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rustc_hash::FxHashMap;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::watch;

use super::{Backlog, Event, EventBus, EventKind, FollowError, Follower};
use crate::domain::{ExternalId, TripId};

/// Events buffered per watcher before the router lets go of it (see the module docs).
pub const WATCH_BUFFER: usize = 256;
/// Registrations queued for the router before a new stream waits to register.
const REGISTER_QUEUE: usize = 1024;
/// Every this many registrations, the router forgets watchers whose client left.
const SWEEP_EVERY: u64 = 256;

type BusReceiver = watch::Receiver<Option<u64>>;

/// What a watcher follows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RouteKey {
    /// Every event of one trip.
    Trip(TripId),
    /// The offer notices for the drivers of one gateway (`None`: drivers without a gateway).
    Gateway(Option<ExternalId>),
}

impl RouteKey {
    /// Whether an event is routed to this key.
    pub fn matches(&self, kind: &EventKind) -> bool {
        match self {
            RouteKey::Trip(trip) => kind.trip() == Some(*trip),
            RouteKey::Gateway(gateway) => offer_gateway(kind) == Some(gateway.as_ref()),
        }
    }
}

/// The gateway whose offer stream shows an event: `Some(None)` for a driver without a gateway,
/// `None` for an event no offer stream shows.
fn offer_gateway(kind: &EventKind) -> Option<Option<&ExternalId>> {
    match kind {
        EventKind::OfferSent(o) => Some(o.gateway.as_ref()),
        EventKind::OfferExpired(o) | EventKind::OfferCancelled(o, _) => Some(o.gateway.as_ref()),
        EventKind::TripCancelled {
            driver: Some(_),
            gateway,
            ..
        } => Some(gateway.as_ref()),
        _ => None,
    }
}

/// After this event the trip has no more events, so its watchers can be let go.
fn ends_trip(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::TripCompleted { .. }
            | EventKind::TripCancelled { .. }
            | EventKind::NoDrivers { .. }
    )
}

/// What the router has been doing, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Watchers registered with the router right now.
    pub watchers: usize,
    /// Watchers let go because their buffer was full (they went on by themselves).
    pub overflowed: u64,
    /// Times a watcher fell back to following the stream itself, for any reason.
    pub fell_back: u64,
}

#[derive(Debug, Default)]
struct Counters {
    watchers: AtomicUsize,
    overflowed: AtomicU64,
    fell_back: AtomicU64,
}

#[derive(Debug)]
struct Registration {
    key: RouteKey,
    from: u64,
    tx: mpsc::Sender<Arc<Event>>,
}

/// The handle to the routing task; cheap to clone. The task ends when the bus closes.
#[derive(Clone, Debug)]
pub struct Router {
    tx: mpsc::Sender<Registration>,
    bus: Arc<EventBus>,
    backlog: Backlog,
    counters: Arc<Counters>,
}

impl Router {
    /// Starts the routing task at the bus's head (on the current tokio runtime). `backlog` is
    /// where it, and watchers that fell behind, catch up from.
    pub fn spawn(bus: Arc<EventBus>, backlog: impl Into<Backlog>) -> Router {
        let (tx, rx) = mpsc::channel(REGISTER_QUEUE);
        let counters = Arc::new(Counters::default());
        let backlog = backlog.into();
        let follower = Follower::new(bus.clone(), backlog.clone(), bus.next_offset());
        tokio::spawn(run(follower, rx, counters.clone()));
        Router {
            tx,
            bus,
            backlog,
            counters,
        }
    }

    /// The events of `key` from offset `from` on (the offset a snapshot was read at).
    pub async fn watch(&self, key: RouteKey, from: u64) -> Watch {
        let mode = match self.register(key.clone(), from).await {
            Some(rx) => Mode::Routed(rx, self.bus.watch()),
            None => Mode::Own(self.follower(from)),
        };
        Watch {
            key,
            next: from,
            router: self.clone(),
            mode,
            scratch: Vec::new(),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RouterStats {
        RouterStats {
            watchers: self.counters.watchers.load(Ordering::Relaxed),
            overflowed: self.counters.overflowed.load(Ordering::Relaxed),
            fell_back: self.counters.fell_back.load(Ordering::Relaxed),
        }
    }

    /// `None` once the routing task has stopped (the bus closed).
    async fn register(&self, key: RouteKey, from: u64) -> Option<mpsc::Receiver<Arc<Event>>> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let registration = Registration { key, from, tx };
        self.tx.send(registration).await.ok().map(|()| rx)
    }

    fn follower(&self, from: u64) -> Follower {
        Follower::new(self.bus.clone(), self.backlog.clone(), from)
    }
}

/// One watcher's in-order events of its key. See the module docs.
#[derive(Debug)]
pub struct Watch {
    key: RouteKey,
    /// Every event of the key before this offset was yielded.
    next: u64,
    router: Router,
    mode: Mode,
    scratch: Vec<Arc<Event>>,
}

#[derive(Debug)]
enum Mode {
    /// Fed by the router. The bus receiver is never polled: it only keeps this stream in the
    /// bus's follower count (the `dispatch_subscribers` gauge), at no cost per publish.
    Routed(
        mpsc::Receiver<Arc<Event>>,
        #[allow(
            dead_code,
            reason = "held, never read: it counts this stream as a follower"
        )]
        BusReceiver,
    ),
    /// Following the stream itself, until caught up.
    Own(Follower),
}

impl Watch {
    /// Appends at least one event of the key to `out`, in offset order, waiting if needed.
    pub async fn next_batch(&mut self, out: &mut Vec<Arc<Event>>) -> Result<(), FollowError> {
        loop {
            match &mut self.mode {
                Mode::Routed(rx, _) => {
                    let Some(first) = rx.recv().await else {
                        // The router let go of us (our buffer filled, it lagged, or it stopped):
                        // everything before `next` was yielded, so go on from there ourselves.
                        self.router
                            .counters
                            .fell_back
                            .fetch_add(1, Ordering::Relaxed);
                        self.mode = Mode::Own(self.router.follower(self.next));
                        continue;
                    };
                    let before = out.len();
                    let mut push = |event: Arc<Event>| {
                        if event.offset >= self.next {
                            self.next = event.offset + 1;
                            out.push(event);
                        }
                    };
                    push(first);
                    while let Ok(event) = rx.try_recv() {
                        push(event);
                    }
                    if out.len() > before {
                        return Ok(());
                    }
                }
                Mode::Own(follower) => {
                    self.scratch.clear();
                    if follower.read(&mut self.scratch).await? == 0 {
                        // Caught up with the head: hand the key back to the router from here.
                        let from = follower.position();
                        if let Some(rx) = self.router.register(self.key.clone(), from).await {
                            self.next = from;
                            self.mode = Mode::Routed(rx, follower.bus().watch());
                        } else {
                            follower.wait().await?;
                        }
                        continue;
                    }
                    let before = out.len();
                    let key = &self.key;
                    out.extend(self.scratch.drain(..).filter(|e| key.matches(&e.kind)));
                    self.next = follower.position();
                    if self.next >= follower.bus().next_offset() {
                        // At the head already: rejoin now rather than after one more read.
                        if let Some(rx) = self.router.register(self.key.clone(), self.next).await {
                            self.mode = Mode::Routed(rx, follower.bus().watch());
                        }
                    }
                    if out.len() > before {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
struct Sub {
    /// Events before this offset are not for this watcher (its snapshot already has them).
    from: u64,
    tx: mpsc::Sender<Arc<Event>>,
}

/// The watchers by key, owned by the routing task alone.
#[derive(Debug, Default)]
struct Table {
    trips: FxHashMap<TripId, Vec<Sub>>,
    gateways: FxHashMap<ExternalId, Vec<Sub>>,
    no_gateway: Vec<Sub>,
    watchers: usize,
    registrations: u64,
}

async fn run(
    mut follower: Follower,
    mut registrations: mpsc::Receiver<Registration>,
    counters: Arc<Counters>,
) {
    let mut table = Table::default();
    let mut batch = Vec::new();
    loop {
        while let Ok(registration) = registrations.try_recv() {
            table.register(registration, &follower);
        }
        batch.clear();
        match follower.read(&mut batch).await {
            Ok(0) => {
                tokio::select! {
                    registration = registrations.recv() => match registration {
                        Some(registration) => table.register(registration, &follower),
                        None => return,
                    },
                    waited = follower.wait() => if waited.is_err() {
                        // Closed: dropping the table lets every watcher go; each drains the
                        // ring itself and then ends.
                        return;
                    },
                }
            }
            Ok(_) => {
                for event in &batch {
                    table.route(event, &counters);
                }
            }
            Err(error) => {
                tracing::warn!(%error, watchers = table.watchers,
                    "the event router fell out of the ring with no log to catch up from; \
                     every watcher goes on by itself");
                table = Table::default();
                follower.skip_to(follower.bus().next_offset());
            }
        }
        counters.watchers.store(table.watchers, Ordering::Relaxed);
    }
}

impl Table {
    fn subs(&mut self, key: &RouteKey) -> &mut Vec<Sub> {
        match key {
            RouteKey::Trip(trip) => self.trips.entry(*trip).or_default(),
            RouteKey::Gateway(Some(gateway)) => self.gateways.entry(gateway.clone()).or_default(),
            RouteKey::Gateway(None) => &mut self.no_gateway,
        }
    }

    fn register(&mut self, registration: Registration, follower: &Follower) {
        let Registration { key, mut from, tx } = registration;
        let position = follower.position();
        if from < position {
            // Hand-over: events [from, position) were routed before this watcher arrived.
            let mut missed = Vec::new();
            let wanted = (position - from) as usize;
            if follower.bus().read_from(from, wanted, &mut missed).is_err() {
                return; // Out of the ring: dropping `tx` makes the watcher follow by itself.
            }
            let mut ended = false;
            for event in missed.iter().filter(|e| key.matches(&e.kind)) {
                if tx.try_send(event.clone()).is_err() {
                    return; // Full or gone: it goes on by itself from what it got.
                }
                ended |= matches!(key, RouteKey::Trip(_)) && ends_trip(&event.kind);
            }
            if ended {
                return; // The trip is over: nothing more will be routed to it.
            }
            from = position;
        }
        self.subs(&key).push(Sub { from, tx });
        self.watchers += 1;
        self.registrations += 1;
        if self.registrations.is_multiple_of(SWEEP_EVERY) {
            self.sweep();
        }
    }

    fn route(&mut self, event: &Arc<Event>, counters: &Counters) {
        if let Some(trip) = event.kind.trip()
            && let Some(subs) = self.trips.get_mut(&trip)
        {
            self.watchers -= deliver(subs, event, counters);
            if ends_trip(&event.kind) {
                self.watchers -= subs.len();
                self.trips.remove(&trip);
            } else if subs.is_empty() {
                self.trips.remove(&trip);
            }
        }
        match offer_gateway(&event.kind) {
            Some(Some(gateway)) => {
                if let Some(subs) = self.gateways.get_mut(gateway) {
                    self.watchers -= deliver(subs, event, counters);
                    if subs.is_empty() {
                        self.gateways.remove(gateway);
                    }
                }
            }
            Some(None) => self.watchers -= deliver(&mut self.no_gateway, event, counters),
            None => {}
        }
    }

    /// Forgets the watchers whose client left (they are otherwise found at their key's next
    /// event, which for a quiet gateway may be long).
    fn sweep(&mut self) {
        let before = self.watchers;
        let mut kept = 0;
        let mut keep = |subs: &mut Vec<Sub>| {
            subs.retain(|s| !s.tx.is_closed());
            kept += subs.len();
            !subs.is_empty()
        };
        self.trips.retain(|_, subs| keep(subs));
        self.gateways.retain(|_, subs| keep(subs));
        keep(&mut self.no_gateway);
        debug_assert!(kept <= before);
        self.watchers = kept;
    }
}

/// Hands `event` to each watcher it is for; returns how many watchers were let go.
fn deliver(subs: &mut Vec<Sub>, event: &Arc<Event>, counters: &Counters) -> usize {
    let before = subs.len();
    subs.retain(|s| {
        if event.offset < s.from {
            return true;
        }
        match s.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                counters.overflowed.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    });
    before - subs.len()
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
