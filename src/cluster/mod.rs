//! Regions: a city cut into named polygons, one dispatcher (state, thread, log) per region in
//! one process, and the router that sends every call to the region it concerns.
//!
//! - [`regions`]: the polygons (`geo` point-in-polygon) and the id ranges that make a trip or
//!   offer id name its region.
//! - `router`: the region engines behind the four dispatch services; which region a driver,
//!   point, trip or offer belongs to. `route_drivers` and `route_queries` implement the
//!   services by handing each call to that region's ordinary service (`grpc`).
//!
//! - `stream_log`: cluster mode's log, a JetStream stream per region with fenced appends.
//!
//! Without any `[[regions]]` configured none of this runs: the server serves one engine exactly
//! as before. With `cluster.nats_url` the regions' logs are JetStream streams;
//! leases, takeover and forwarding between processes are not built yet.

pub mod config;
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
pub(crate) async fn start_engines(config: &Config, map: &RegionMap) -> Result<Vec<Engine>, String> {
    let js = match &config.cluster.nats_url {
        Some(url) => Some(connect(url).await?),
        None => None,
    };
    let mut engines = Vec::with_capacity(map.regions().len());
    for region in map.regions() {
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
