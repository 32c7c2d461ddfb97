//! Region ownership in cluster mode: one task per process that contends for each region's
//! lease on its own, starts a region's engine when it takes the lease and stops it when it
//! loses or hands it over, while the gRPC server serves from the first moment.
//!
//! Every `lease_ttl / 6` the task reads the live members and every lease, records each region's
//! owner address in the router (for forwarding and GetRoutes), and then per region:
//! - held here and lost (the lease keeper gave up, or an append was refused): stop serving it
//!   at once and say so;
//! - held here but [`members::assign`] prefers another live member, held for `2 * lease_ttl`
//!   at least: hand it over (stop, then delete the lease) so the fair split is restored;
//! - free, and we are preferred (or it has stayed free for a whole `lease_ttl`, its preferred
//!   member not taking it): take the lease, restore the region's newest snapshot
//!   (`snapshots`), replay its stream after it, append the takeover message (one
//!   `RegionTakenOver` event, replayed into the state with the rest), then serve.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, object_store::ObjectStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lease::{self, Holder, Lease};
use super::members;
use super::regions::RegionMap;
use super::router::RegionRouter;
use super::snapshots::{self, RegionSnapshots};
use super::stream_backlog::StreamBacklog;
use super::stream_log::StreamLog;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::engine::{Engine, LogStart, SnapshotSink};
use crate::events::{Event, EventKind, RemoteBacklog};
use crate::index;

/// Ticks a region may stay free before a member that is not preferred takes it anyway.
const FALLBACK_TICKS: u32 = 6;

/// A region served here.
#[derive(Debug)]
struct Held {
    engine: Engine,
    keeper: JoinHandle<()>,
    since: Instant,
}

/// This process's part in the cluster, before it starts contending (see [`Cluster::spawn`]).
pub(crate) struct Cluster {
    js: jetstream::Context,
    store: kv::Store,
    /// The region snapshots (`snapshots`).
    snaps: ObjectStore,
    me: Holder,
    config: Config,
    map: RegionMap,
}

impl std::fmt::Debug for Cluster {
    // The object store handle has no `Debug`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to NATS and opens the lease bucket; `addr` is our gRPC address as peers reach
    /// it. Fails (with the reason) when NATS or the bucket cannot be reached.
    pub(crate) async fn join(
        config: &Config,
        map: &RegionMap,
        addr: String,
    ) -> Result<Cluster, String> {
        let cluster = &config.cluster;
        let url = cluster.nats_url.as_deref().unwrap_or_default();
        let js = super::connect(url).await?;
        let store = lease::bucket(&js, cluster.lease_ttl, cluster.stream_replicas).await?;
        let snaps = snapshots::bucket(&js, cluster.stream_replicas).await?;
        let name = if cluster.owner.is_empty() {
            format!("{addr}-{}", std::process::id())
        } else {
            cluster.owner.clone()
        };
        let me = Holder {
            owner: members::member_id(&name),
            addr,
        };
        tracing::info!(member = %me.owner, addr = %me.addr, "joined the cluster");
        Ok(Cluster {
            js,
            store,
            snaps,
            me,
            config: config.clone(),
            map: map.clone(),
        })
    }

    /// Starts the presence and ownership tasks, which install the regions we take in `router`.
    pub(crate) fn spawn(self, router: RegionRouter) -> Membership {
        let (stop_tx, stop_rx) = watch::channel(false);
        let me = self.me.clone();
        let store = self.store.clone();
        let ttl = self.config.cluster.lease_ttl;
        let presence = tokio::spawn(keep_present(store.clone(), me.clone(), ttl));
        let task = tokio::spawn(self.run(router, stop_rx));
        Membership {
            stop_tx,
            task,
            presence,
            store,
            me,
        }
    }

    async fn run(self, router: RegionRouter, mut stop: watch::Receiver<bool>) -> Vec<Held> {
        let ttl = self.config.cluster.lease_ttl;
        let names: Vec<String> = self.map.regions().iter().map(|r| r.name.clone()).collect();
        let mut held: Vec<Option<Held>> = (0..names.len()).map(|_| None).collect();
        let mut free_ticks = vec![0u32; names.len()];
        // Our own presence may not be visible yet on the first tick: count ourselves in.
        let _ = members::announce(&self.store, &self.me.owner, &self.me.addr).await;
        loop {
            if *stop.borrow() {
                break;
            }
            self.tick(&router, &names, &mut held, &mut free_ticks).await;
            tokio::select! {
                () = tokio::time::sleep(ttl / 6) => {}
                _ = stop.changed() => {}
            }
        }
        held.into_iter().flatten().collect()
    }

    async fn tick(
        &self,
        router: &RegionRouter,
        names: &[String],
        held: &mut [Option<Held>],
        free_ticks: &mut [u32],
    ) {
        let ttl = self.config.cluster.lease_ttl;
        let mut live = match members::live(&self.store).await {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the members; ownership unchanged");
                return;
            }
        };
        if !live.contains(&self.me.owner) {
            live.push(self.me.owner.clone());
            live.sort();
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let want = members::assign(&refs, &live);
        for (i, name) in names.iter().enumerate() {
            let preferred = want[i].is_some_and(|m| live[m] == self.me.owner);
            let holder = match lease::holder(&self.store, name).await {
                Ok(h) => h.map(|(h, _)| h),
                Err(e) => {
                    tracing::warn!(region = %name, error = %e, "cannot read the lease");
                    continue;
                }
            };
            if let Some(h) = &held[i] {
                let failed = h.engine.log_failure().borrow().clone();
                let lost = h.keeper.is_finished() || failed.is_some();
                if lost {
                    tracing::error!(
                        region = %name,
                        cause = failed.as_deref().unwrap_or("its lease could not be renewed in time"),
                        "region lost: this process no longer serves it"
                    );
                    self.stop(router, i, held[i].take()).await;
                } else if !preferred && h.since.elapsed() >= ttl * 2 {
                    tracing::info!(region = %name, "handing the region over to its preferred member");
                    self.stop(router, i, held[i].take()).await;
                }
                router.set_owner(i, held[i].as_ref().map(|_| self.me.addr.clone()));
                continue;
            }
            router.set_owner(
                i,
                holder
                    .as_ref()
                    .map(|h| h.addr.clone())
                    .filter(|a| !a.is_empty()),
            );
            if holder.is_some() {
                free_ticks[i] = 0;
                continue;
            }
            free_ticks[i] += 1;
            if preferred || free_ticks[i] >= FALLBACK_TICKS {
                held[i] = self.take(router, i).await;
                if held[i].is_some() {
                    free_ticks[i] = 0;
                    router.set_owner(i, Some(self.me.addr.clone()));
                }
            }
        }
    }

    /// Takes region `i`: its lease, its stream's history, the takeover message, then serves.
    async fn take(&self, router: &RegionRouter, i: usize) -> Option<Held> {
        let region = &self.map.regions()[i];
        let lease = Lease::take(&self.store, &region.name, &self.me).await?;
        let started = Instant::now();
        let ttl = self.config.cluster.lease_ttl;
        // Renewed from now on, while the history replays.
        let slot = Arc::new(OnceLock::new());
        let keeper = tokio::spawn(lease.keep(ttl, slot.clone()));
        match self.open(i).await {
            Ok((engine, replayed)) => {
                let _ = slot.set(engine.clone());
                router.install(i, engine.clone());
                tracing::info!(
                    region = %region.name,
                    from_snapshot = ?engine.recovered_from_snapshot(),
                    replayed_events = replayed,
                    took_ms = started.elapsed().as_millis() as u64,
                    next_offset = engine.bus().next_offset(),
                    "region taken over: serving it"
                );
                Some(Held {
                    engine,
                    keeper,
                    since: Instant::now(),
                })
            }
            Err(e) => {
                tracing::warn!(region = %region.name, error = %e, "could not take the region; giving its lease back");
                keeper.abort();
                lease::release(&self.store, &region.name, &self.me.owner).await;
                None
            }
        }
    }

    /// Region `i`'s engine on its stream: its newest snapshot restored and the stream's
    /// history after it replayed, takeover message appended. Returns the events replayed.
    async fn open(&self, i: usize) -> Result<(Engine, usize), String> {
        let region = &self.map.regions()[i];
        let keep = self.config.log.snapshot_keep;
        let newest = if keep > 0 {
            snapshots::newest(&self.snaps, &region.name).await?
        } else {
            None
        };
        let after = newest.as_ref().map_or(0, |(_, seq)| *seq);
        let (mut log, mut history) = StreamLog::open(
            &self.js,
            &region.name,
            self.config.cluster.stream_replicas,
            &self.me.owner,
            after,
        )
        .await?;
        let first = region.first_offset();
        let restored = newest.as_ref().map(|(image, _)| image.next_offset());
        let replayed = history.len();
        // The takeover event takes the region's next offset: after the history read, else
        // the snapshot's end, else the region's first.
        let offset = history
            .last()
            .map(|e| e.offset + 1)
            .or(restored)
            .unwrap_or(first);
        let takeover = Event {
            offset,
            at_ms: SystemClock.now_ms(),
            kind: EventKind::RegionTakenOver {
                owner: self.me.owner.clone(),
                previous: log.last_writer().await,
                replayed: replayed as u64,
                from_snapshot: restored,
            },
        };
        // Fences the previous owner: any append it still tries after this is refused. The
        // event is then replayed with the history, so the state's next offset is past it.
        log.take_over(&takeover).await?;
        history.push(takeover);
        let sink = (keep > 0).then(|| {
            let trim = self.config.cluster.trim_stream;
            Box::new(RegionSnapshots::new(
                &self.js,
                &self.snaps,
                &region.name,
                keep,
                trim,
            )) as Box<dyn SnapshotSink>
        });
        let mut own = self.config.clone();
        own.log.data_dir = None;
        let backlog: Arc<dyn RemoteBacklog> = Arc::new(StreamBacklog::new(&self.js, &region.name));
        let engine = tokio::task::spawn_blocking(move || {
            let start = LogStart {
                image: newest.map(|(image, _)| image),
                history: &history,
                snapshots: sink,
                backlog: Some(backlog),
            };
            Engine::start_on_log(
                &own,
                index::default_index(),
                Arc::new(SystemClock),
                first,
                Box::new(log),
                start,
            )
        })
        .await
        .map_err(|e| format!("replaying the region: {e}"))?
        .map_err(|e| format!("replaying the region: {e}"))?;
        Ok((engine, replayed))
    }

    /// Stops serving region `i` (`held`): out of the router, engine stopped, lease deleted.
    async fn stop(&self, router: &RegionRouter, i: usize, held: Option<Held>) {
        router.remove(i);
        let Some(held) = held else { return };
        held.keeper.abort();
        let engine = held.engine;
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        lease::release(&self.store, &self.map.regions()[i].name, &self.me.owner).await;
    }
}

/// Rewrites our presence key every `ttl / 6` until aborted.
async fn keep_present(store: kv::Store, me: Holder, ttl: Duration) {
    loop {
        if let Err(e) = members::announce(&store, &me.owner, &me.addr).await {
            tracing::warn!(error = %e, "presence not renewed");
        }
        tokio::time::sleep(ttl / 6).await;
    }
}

/// The running ownership of this process; [`Membership::leave`] hands everything over.
#[derive(Debug)]
pub(crate) struct Membership {
    stop_tx: watch::Sender<bool>,
    task: JoinHandle<Vec<Held>>,
    presence: JoinHandle<()>,
    store: kv::Store,
    me: Holder,
}

impl Membership {
    /// Stops contending, stops every region engine served here (everything acknowledged is in
    /// the streams) and deletes their leases and our presence, so the others take over at once.
    pub(crate) async fn leave(self, router: &RegionRouter, map: &RegionMap) {
        let _ = self.stop_tx.send(true);
        let held = self.task.await.unwrap_or_default();
        self.presence.abort();
        members::leave(&self.store, &self.me.owner).await;
        // Out of the router first: calls get "no owner, retry", not a stopped engine.
        for i in 0..map.regions().len() {
            router.remove(i);
        }
        for h in held {
            h.keeper.abort();
            let engine = h.engine;
            let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        }
        for region in map.regions() {
            lease::release(&self.store, &region.name, &self.me.owner).await;
        }
    }
}
