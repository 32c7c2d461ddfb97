//! Regions: a city cut into named polygons, one dispatcher (state, thread, log) per region in
//! one process, and the router that sends every call to the region it concerns.
//!
//! - [`regions`]: the polygons (`geo` point-in-polygon) and the id ranges that make a trip or
//!   offer id name its region.
//! - `router`: the region engines behind the four dispatch services; which region a driver,
//!   point, trip or offer belongs to. `route_drivers` and `route_queries` implement the
//!   services by handing each call to that region's ordinary service (`grpc`).
//!
//! Without any `[[regions]]` configured none of this runs: the server serves one engine exactly
//! as before. Cluster mode across machines (JetStream logs, leases, forwarding) is not built
//! yet; this is its in-process base.

pub mod regions;
mod route_drivers;
mod route_queries;
pub(crate) mod router;

use std::sync::Arc;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::engine::Engine;
use crate::events::LogError;
use crate::index;
use regions::RegionMap;

/// Starts one engine per region on the system clock, each recovering its own log from
/// `<data_dir>/regions/<name>` when the log is on.
pub(crate) fn start_engines(config: &Config, map: &RegionMap) -> Result<Vec<Engine>, LogError> {
    map.regions()
        .iter()
        .map(|region| {
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
            )?;
            tracing::info!(
                region = %region.name,
                first_id = region.first_offset(),
                next_offset = engine.bus().next_offset(),
                "region engine started"
            );
            Ok(engine)
        })
        .collect()
}
