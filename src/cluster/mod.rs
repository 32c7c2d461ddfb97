//! Regions: a city cut into named polygons, one dispatcher (state, thread, log) per region in
//! one process, and the router that sends every call to the region it concerns.
//!
//! - [`regions`]: the polygons (`geo` point-in-polygon) and the id ranges that make a trip or
//!   offer id name its region.
//! - `router`: the region engines behind the four dispatch services; which region a driver,
//!   point, trip or offer belongs to. `route_drivers` and `route_queries` implement the
//!   services by handing each call to that region's ordinary service (`grpc`).
//!
//! - `stream_log`: cluster mode's log, a JetStream stream per region with fenced appends;
//!   `lease`: who may write a region, a renewed key per region in a JetStream KV bucket.
//!
//! Without any `[[regions]]` configured none of this runs: the server serves one engine exactly
//! as before. With `cluster.nats_url` the regions' logs are JetStream streams,
//! written only under a lease; a standby process waits for the leases and takes over when they
//! are handed over or lapse. Forwarding calls between processes is not built yet.

pub mod config;
mod lease;
pub mod regions;
mod route_drivers;
mod route_queries;
pub(crate) mod router;
mod stream_log;

use std::sync::Arc;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::engine::Engine;
use crate::index;
use regions::RegionMap;

/// Starts one engine per region on the system clock. In cluster mode (`cluster.nats_url`)
/// each replays and then commits to its JetStream stream; otherwise each recovers its own
/// local log from `<data_dir>/regions/<name>` when the log is on.
///
/// In cluster mode each region is served only once its lease is ours (a standby waits here);
/// the returned [`Leases`] renew them and hand them over on [`Leases::release`].
pub(crate) async fn start_engines(
    config: &Config,
    map: &RegionMap,
) -> Result<(Vec<Engine>, Option<Leases>), String> {
    let cluster = &config.cluster;
    let js = match &cluster.nats_url {
        Some(url) => Some(connect(url).await?),
        None => None,
    };
    let mut leases = match &js {
        Some(js) => Some(Leases {
            store: lease::bucket(js, cluster.lease_ttl, cluster.stream_replicas).await?,
            owner: if cluster.owner.is_empty() {
                format!("{}-{}", config.listen, std::process::id())
            } else {
                cluster.owner.clone()
            },
            regions: Vec::new(),
            keepers: Vec::new(),
        }),
        None => None,
    };
    let mut engines = Vec::with_capacity(map.regions().len());
    for region in map.regions() {
        let slot = Arc::new(std::sync::OnceLock::new());
        if let Some(leases) = &mut leases {
            let lease = lease::Lease::acquire(
                &leases.store,
                &region.name,
                &leases.owner,
                cluster.lease_ttl,
            )
            .await;
            leases.regions.push(region.name.clone());
            leases
                .keepers
                .push(tokio::spawn(lease.keep(cluster.lease_ttl, slot.clone())));
        }
        let mut own = config.clone();
        own.log.data_dir = config
            .log
            .data_dir
            .as_ref()
            .map(|dir| dir.join("regions").join(&region.name));
        let clock = Arc::new(SystemClock);
        let engine = match &js {
            None => Engine::start_at(&own, index::default_index(), clock, region.first_offset())
                .map_err(|e| format!("region {}: {e}", region.name))?,
            Some(js) => {
                let (log, history) =
                    stream_log::StreamLog::open(js, &region.name, config.cluster.stream_replicas)
                        .await?;
                Engine::start_on_log(
                    &own,
                    index::default_index(),
                    clock,
                    region.first_offset(),
                    Box::new(log),
                    &history,
                )
                .map_err(|e| format!("region {}: {e}", region.name))?
            }
        };
        tracing::info!(
            region = %region.name,
            first_id = region.first_offset(),
            next_offset = engine.bus().next_offset(),
            log = if js.is_some() { "jetstream" } else { "local" },
            "region engine started"
        );
        let _ = slot.set(engine.clone());
        engines.push(engine);
    }
    Ok((engines, leases))
}

/// The region leases this process holds, renewed by one task each.
#[derive(Debug)]
pub(crate) struct Leases {
    store: async_nats::jetstream::kv::Store,
    owner: String,
    regions: Vec<String>,
    keepers: Vec<tokio::task::JoinHandle<()>>,
}

impl Leases {
    /// Stops renewing and deletes the leases, so standbys take the regions at once. Call once
    /// the engines have stopped (everything acknowledged is in the streams).
    pub(crate) async fn release(self) {
        for keeper in &self.keepers {
            keeper.abort();
        }
        lease::release(&self.store, &self.regions, &self.owner).await;
    }
}

/// A JetStream context on the comma-separated NATS servers `urls`.
async fn connect(urls: &str) -> Result<async_nats::jetstream::Context, String> {
    let servers: Vec<&str> = urls.split(',').map(str::trim).collect();
    let client = async_nats::connect(servers)
        .await
        .map_err(|e| format!("cluster.nats_url {urls}: cannot connect: {e}"))?;
    Ok(async_nats::jetstream::new(client))
}
