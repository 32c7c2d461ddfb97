//! A gateway's offer feed in region mode, kept whole while regions move.
//!
//! A gateway's drivers may be in any region, so its SubscribeOffers stream merges one source
//! per region served here and one per other owner (which merges its own regions; a forwarded
//! call merges only the regions served there). The set of sources is not the one at the call:
//! the stream follows the router. When a region is taken here, or its owner changes, the
//! missing source is opened; a source whose region or owner went away is dropped, and one that
//! ended because its owner stopped (UNAVAILABLE, a broken connection) is opened again once
//! the routes say where its regions went, retried every [`RETRY`] meanwhile. So a gateway keeps
//! one stream across failovers instead of learning about them from a stream that ends, or, worse,
//! from one that quietly stops carrying a region that had no owner when it subscribed.
//!
//! No gap, no duplicate: each notice carries its region's `resume_offset`, and the stream keeps
//! the last one per region ([`Resume`]). A region source opened again resumes there: the new
//! owner sends that region's notices from the offset on (the old owner's last events read back
//! from the region's stream), so an offer, an expiry or a cancel the old owner appended in its
//! last moments and never delivered arrives, and nothing delivered arrives again. A region this
//! stream has no resume point for (nothing received from it yet, or only part of its pending
//! offers) starts with its pending offers; offers already delivered and not seen close are
//! dropped by offer id ([`Delivered`]).
//!
//! The stream ends when the client leaves, when this server shuts down (UNAVAILABLE: resubscribe
//! elsewhere), or with a source's status when it is the caller's to fix (e.g. PERMISSION_DENIED,
//! OUT_OF_RANGE for a stream that fell behind).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Status};

use super::forward::FORWARDED_HEADER;
use super::router::{RegionRouter, Shard, Target};
use crate::pb::{
    self, driver_notice::Notice, driver_service_client::DriverServiceClient,
    driver_service_server::DriverService,
};

/// How soon a source that ended, or could not be opened, is tried again while the routes still
/// name it.
pub(crate) const RETRY: Duration = Duration::from_millis(250);
/// Notices buffered for the client (and from the sources) before they wait for it.
const BUFFER: usize = 256;

type NoticeStream = Pin<Box<dyn Stream<Item = Result<pb::DriverNotice, Status>> + Send>>;

/// One source of the merged stream.
#[derive(Clone, Debug)]
enum Key {
    /// A region served here, by index, and the shard serving it (a region lost and taken
    /// again is a new shard, so a new source).
    Local(usize, Arc<Shard>),
    /// Another owner, by gRPC address.
    Remote(String),
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        match (self, other) {
            (Key::Local(i, a), Key::Local(j, b)) => i == j && Arc::ptr_eq(a, b),
            (Key::Remote(a), Key::Remote(b)) => a == b,
            _ => false,
        }
    }
}

/// What a source's task reports.
enum Pumped {
    Notice(pb::DriverNotice),
    /// The source ended: cleanly (`None`) or with a status.
    Ended(u64, Option<Status>),
}

struct Running {
    key: Key,
    id: u64,
    abort: AbortHandle,
}

/// The merged offer stream of `req`'s gateway (already validated by the caller) as served by
/// `router`; `metadata` goes along to the other owners.
pub(crate) fn merged(
    router: RegionRouter,
    metadata: MetadataMap,
    req: pb::SubscribeOffersRequest,
) -> ReceiverStream<Result<pb::DriverNotice, Status>> {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(supervise(router, metadata, req, tx));
    ReceiverStream::new(rx)
}

/// The sources the routes call for now: every region served here and, unless the call was
/// forwarded, every other owner once.
fn desired(router: &RegionRouter, forwarded: bool) -> Vec<Key> {
    let mut keys: Vec<Key> = router
        .local_shards()
        .into_iter()
        .map(|(i, shard)| Key::Local(i, shard))
        .collect();
    if !forwarded {
        let (owners, _) = router.routes();
        for (i, owner) in owners.into_iter().enumerate() {
            let Some(addr) = owner else { continue };
            let key = Key::Remote(addr);
            if router.local(i).is_none() && !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// Whether a source's status is the caller's to act on (ends the merged stream) rather than
/// a sign that its region or owner moved (the source is opened again).
fn is_final(status: &Status) -> bool {
    !matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::Aborted
            | Code::DeadlineExceeded
    )
}

async fn supervise(
    router: RegionRouter,
    metadata: MetadataMap,
    req: pb::SubscribeOffersRequest,
    tx: mpsc::Sender<Result<pb::DriverNotice, Status>>,
) {
    let forwarded = metadata.get(FORWARDED_HEADER).is_some();
    let mut changes = router.changes();
    let (pump_tx, mut pump_rx) = mpsc::channel::<Pumped>(BUFFER);
    let mut running: Vec<Running> = Vec::new();
    // Sources that ended or failed to open, not tried again before their instant.
    let mut cooling: Vec<(Key, Instant)> = Vec::new();
    let mut delivered = Delivered::new(router.config().dispatch.offer_timeout);
    let mut resume = Resume::new(&router, &req.resume_from);
    let mut next_id = 0u64;
    let end: Option<Status> = loop {
        if router.closing() {
            break Some(Status::unavailable(
                "this server is shutting down; resubscribe to another process of the cluster",
            ));
        }
        let now = Instant::now();
        cooling.retain(|(_, until)| *until > now);
        let want = desired(&router, forwarded);
        running.retain(|r| {
            let keep = want.contains(&r.key);
            if !keep {
                r.abort.abort();
            }
            keep
        });
        for key in want {
            if running.iter().any(|r| r.key == key) || cooling.iter().any(|(k, _)| *k == key) {
                continue;
            }
            next_id += 1;
            let mut req = req.clone();
            req.resume_from = resume.for_source(&key);
            let task = tokio::spawn(pump(
                open(router.clone(), key.clone(), metadata.clone(), req),
                next_id,
                pump_tx.clone(),
            ));
            running.push(Running {
                key,
                id: next_id,
                abort: task.abort_handle(),
            });
        }
        let retry_at = cooling.iter().map(|(_, until)| *until).min();
        tokio::select! {
            () = tx.closed() => break None,
            changed = changes.changed() => {
                if changed.is_err() {
                    break None;
                }
            }
            () = async { tokio::time::sleep_until(retry_at.unwrap_or(now)).await }, if retry_at.is_some() => {}
            Some(pumped) = pump_rx.recv() => match pumped {
                Pumped::Notice(notice) => {
                    resume.saw(&notice);
                    if delivered.fresh(&notice, Instant::now()) && tx.send(Ok(notice)).await.is_err() {
                        break None;
                    }
                }
                Pumped::Ended(id, status) => {
                    let Some(at) = running.iter().position(|r| r.id == id) else { continue };
                    let gone = running.swap_remove(at);
                    match status {
                        Some(status) if is_final(&status) => break Some(status),
                        status => {
                            tracing::debug!(?status, "an offer stream source ended; reopening it");
                            cooling.push((gone.key, Instant::now() + RETRY));
                        }
                    }
                }
            },
        }
    };
    for r in &running {
        r.abort.abort();
    }
    if let Some(status) = end {
        let _ = tx.send(Err(status)).await;
    }
}

/// Opens one source: the region's own stream here, or the other owner's (forwarded) merge.
async fn open(
    router: RegionRouter,
    key: Key,
    metadata: MetadataMap,
    req: pb::SubscribeOffersRequest,
) -> Result<NoticeStream, Status> {
    match key {
        Key::Local(_, shard) => {
            let answer = shard.drivers.subscribe_offers(Request::new(req)).await?;
            Ok(Box::pin(answer.into_inner()))
        }
        Key::Remote(addr) => {
            // Any region of that owner names the peer; the table may have moved since.
            let (owners, _) = router.routes();
            let Some(i) = owners
                .iter()
                .position(|o| o.as_deref() == Some(addr.as_str()))
            else {
                return Err(Status::unavailable(format!("{addr} owns no region now")));
            };
            let Target::Remote(peer) = router.target(i, &metadata)? else {
                return Err(Status::unavailable("the region is served here now"));
            };
            let answer = DriverServiceClient::new(peer.channel.clone())
                .subscribe_offers(peer.stream(&metadata, req))
                .await
                .map_err(|s| peer.failed(s))?;
            Ok(Box::pin(answer.into_inner()))
        }
    }
}

/// Runs one source: opens it and hands its notices over in order, then says how it ended.
async fn pump(
    opening: impl std::future::Future<Output = Result<NoticeStream, Status>>,
    id: u64,
    out: mpsc::Sender<Pumped>,
) {
    let mut stream = match opening.await {
        Ok(stream) => stream,
        Err(status) => {
            let _ = out.send(Pumped::Ended(id, Some(status))).await;
            return;
        }
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(notice) => {
                if out.send(Pumped::Notice(notice)).await.is_err() {
                    return;
                }
            }
            Err(status) => {
                let _ = out.send(Pumped::Ended(id, Some(status))).await;
                return;
            }
        }
    }
    let _ = out.send(Pumped::Ended(id, None)).await;
}

/// Per region (by index), the `resume_offset` of the last notice this stream received from it
/// that had one: where a source of that region opened again starts.
#[derive(Debug)]
struct Resume {
    regions: usize,
    at: HashMap<usize, u64>,
}

impl Resume {
    /// Starting from the client's own `resume_from` (validated by the caller).
    fn new(router: &RegionRouter, resume_from: &[u64]) -> Resume {
        let mut resume = Resume {
            regions: router.map().regions().len(),
            at: HashMap::new(),
        };
        for &o in resume_from {
            resume.note(o);
        }
        resume
    }

    fn saw(&mut self, notice: &pb::DriverNotice) {
        self.note(notice.resume_offset);
    }

    /// Region n's offsets start at n * REGION_ID_SPAN (n from 1); 0 is no point.
    fn note(&mut self, offset: u64) {
        let n = (offset / super::regions::REGION_ID_SPAN) as usize;
        if (1..=self.regions).contains(&n) {
            self.at.insert(n - 1, offset);
        }
    }

    /// The `resume_from` to open `key` with: its region's point for a region here, every
    /// point for another owner (it picks those of the regions it serves).
    fn for_source(&self, key: &Key) -> Vec<u64> {
        match key {
            Key::Local(i, _) => self.at.get(i).copied().into_iter().collect(),
            Key::Remote(_) => {
                let mut all: Vec<u64> = self.at.values().copied().collect();
                all.sort_unstable();
                all
            }
        }
    }
}

/// The offers one stream has delivered and not yet seen close, so a source opened again (which
/// starts with its region's pending offers) does not deliver them twice. An offer that is
/// accepted is never closed on the stream: entries older than twice the offer timeout plus a
/// minute (an offer lives at most its timeout, plus a takeover) are forgotten.
#[derive(Debug)]
pub(crate) struct Delivered {
    open: HashMap<String, Instant>,
    horizon: Duration,
    inserted: u64,
}

impl Delivered {
    pub(crate) fn new(offer_timeout: Duration) -> Delivered {
        Delivered {
            open: HashMap::new(),
            horizon: offer_timeout * 2 + Duration::from_secs(60),
            inserted: 0,
        }
    }

    /// Whether `notice` should go to the client (false: an offer it already has).
    pub(crate) fn fresh(&mut self, notice: &pb::DriverNotice, now: Instant) -> bool {
        match &notice.notice {
            Some(Notice::Offer(offer)) => {
                if self.open.contains_key(&offer.offer_id) {
                    return false;
                }
                self.open.insert(offer.offer_id.clone(), now);
                self.inserted += 1;
                if self.inserted.is_multiple_of(1024) {
                    let horizon = self.horizon;
                    self.open.retain(|_, at| now.duration_since(*at) < horizon);
                }
                true
            }
            Some(Notice::OfferExpired(closed)) | Some(Notice::OfferCancelled(closed)) => {
                self.open.remove(&closed.offer_id);
                true
            }
            _ => true,
        }
    }

    /// How many offers it holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(id: &str) -> pb::DriverNotice {
        pb::DriverNotice {
            resume_offset: 0,
            notice: Some(Notice::Offer(pb::Offer {
                offer_id: id.into(),
                ..Default::default()
            })),
        }
    }

    fn expired(id: &str) -> pb::DriverNotice {
        pb::DriverNotice {
            resume_offset: 0,
            notice: Some(Notice::OfferExpired(pb::OfferClosed {
                offer_id: id.into(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn an_open_offer_is_delivered_once_and_again_after_it_closed() {
        let now = Instant::now();
        let mut d = Delivered::new(Duration::from_secs(15));
        assert!(d.fresh(&offer("offer-1"), now));
        assert!(d.fresh(&offer("offer-2"), now));
        // A new owner's pending offers, first on its stream: offer-1 again is dropped.
        assert!(!d.fresh(&offer("offer-1"), now));
        assert!(d.fresh(&expired("offer-1"), now));
        assert_eq!(d.len(), 1);
        // Closed, then sent again (not a thing an owner does, but never silently lost).
        assert!(d.fresh(&offer("offer-1"), now));
    }

    #[test]
    fn offers_older_than_the_horizon_are_forgotten() {
        let start = Instant::now();
        let mut d = Delivered::new(Duration::from_secs(15));
        assert!(d.fresh(&offer("old"), start));
        let later = start + Duration::from_secs(91);
        for i in 0..1023 {
            assert!(d.fresh(&offer(&format!("new-{i}")), later));
        }
        assert_eq!(d.len(), 1023, "the 1024th insert sweeps the old offer out");
        assert!(d.fresh(&offer("old"), later));
    }
}
