//! Regions: a city cut into named polygons, one dispatcher (state, thread, log) per region,
//! the router that sends every call to the region it concerns, and cluster mode, where the
//! regions are spread over processes.
//!
//! - [`regions`]: the polygons (`geo` point-in-polygon) and the id ranges that make a trip or
//!   offer id name its region.
//! - `router`: the region engines served here behind the four dispatch services; which region
//!   a driver, point, trip or offer belongs to. `route_drivers` and `route_queries` implement
//!   the services by handing each call to that region's ordinary service (`grpc`), or
//!   `forward`ing it to the process that owns the region; `route_offers` keeps a gateway's
//!   merged offer stream whole while regions change owner.
//! - `border`: an available driver crossing into another region moves there (a leave in one
//!   region's log, a join in the other's, with hysteresis), and a pickup near a border first
//!   draws the nearest drivers across it; `route_border`: the same move between regions owned
//!   by different processes (the internal RegionService.JoinRegion).
//! - `stream_log`: cluster mode's log, a JetStream stream per region with fenced appends;
//!   `snapshots`: each region's snapshots in a JetStream object store bucket, so a takeover
//!   restores the newest and replays only the stream after it (and the stream is trimmed);
//!   `stream_backlog`: the stream read back from any offset, where followers catch up (a
//!   subscriber resuming on the new owner reads the old owner's last events there);
//!   `lease`: who may write a region, a renewed key per region in a JetStream KV bucket;
//!   `members`: who is alive and which member should own which region; `owner`: the task
//!   that takes, keeps, hands over and loses regions while the server serves.
//! - [`audit`]: each region's stream read back and checked against what clients were told
//!   (lost trips, double assignments, writes by a stale owner, replay determinism); used by
//!   `loadgen --mode failover` and the failover tests. [`testkit`] (hidden): a local 3-node
//!   NATS cluster for them.
//!
//! Without any `[[regions]]` configured none of this runs: the server serves one engine exactly
//! as before. With regions but no `cluster.nats_url`, one process serves every region from its
//! local logs. With `cluster.nats_url` the server serves at once, and each region is served by
//! the process holding its lease (written to its JetStream stream); every other process
//! forwards the region's calls there.

pub mod audit;
mod border;
pub mod config;
pub(crate) mod forward;
mod lease;
mod members;
pub(crate) mod owner;
pub mod regions;
mod route_border;
mod route_drivers;
mod route_offers;
mod route_queries;
pub(crate) mod router;
mod snapshots;
mod stream_backlog;
mod stream_log;
#[doc(hidden)]
pub mod testkit;

use std::sync::Arc;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::engine::Engine;
use crate::index;
use regions::RegionMap;

/// Starts one engine per region on the system clock, without a cluster: each recovers its own
/// local log from `<data_dir>/regions/<name>` when the log is on.
pub(crate) fn start_local_engines(config: &Config, map: &RegionMap) -> Result<Vec<Engine>, String> {
    let mut engines = Vec::with_capacity(map.regions().len());
    for region in map.regions() {
        let mut own = config.clone();
        own.log.data_dir = config
            .log
            .data_dir
            .as_ref()
            .map(|dir| dir.join("regions").join(&region.name));
        let engine = Engine::start_at(
            &own,
            index::default_index(),
            Arc::new(SystemClock),
            region.first_offset(),
        )
        .map_err(|e| format!("region {}: {e}", region.name))?;
        tracing::info!(
            region = %region.name,
            first_id = region.first_offset(),
            next_offset = engine.bus().next_offset(),
            "region engine started"
        );
        engines.push(engine);
    }
    Ok(engines)
}

/// A JetStream context on the comma-separated NATS servers `urls`.
async fn connect(urls: &str) -> Result<async_nats::jetstream::Context, String> {
    let servers: Vec<&str> = urls.split(',').map(str::trim).collect();
    let client = async_nats::connect(servers)
        .await
        .map_err(|e| format!("cluster.nats_url {urls}: cannot connect: {e}"))?;
    Ok(async_nats::jetstream::new(client))
}
