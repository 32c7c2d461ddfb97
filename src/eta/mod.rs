//! Pickup ETAs from a road graph: the `road` ETA model ([`RoadEta`]) and [`from_config`],
//! which builds the model the config names (`eta.model`).
//!
//! [`road`] holds the graph itself (OpenStreetMap reading, contraction hierarchies, snapping,
//! many-to-one queries); it knows nothing of the dispatcher and is also what a simulator uses
//! to drive on the same streets.
//!
//! Loaded graphs are kept per (file, snapping options) for the life of the process, so every
//! dispatcher built from one config (a restart of the engine in tests, one per region, a replay
//! next to a live engine) shares one graph, and the server can load it once before the engine
//! starts to stop start-up with a clear message when the file is missing or unreadable.

pub mod road;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::config::Config;
use crate::domain::LatLng;
use crate::matching::eta::hour_of_day;
use crate::matching::{Eta, EtaConfig, EtaModel, EtaModelKind, EtaSource, HaversineEta};
use road::{RoadError, RoadGraph, RoadOptions, Snap};

/// Builds the ETA model named by `config.eta.model`, loading (or reusing) its road map.
///
/// # Errors
/// With `model = "road"`: no `road_map` set, or the map cannot be read (the message names the
/// file and the problem).
pub fn from_config(config: &Config) -> Result<Box<dyn EtaModel>, RoadError> {
    let c = &config.eta;
    match c.model {
        EtaModelKind::Haversine => Ok(Box::new(HaversineEta::new(c.clone()))),
        EtaModelKind::Road => {
            let path = c.road_map.as_deref().ok_or_else(|| RoadError::Read {
                path: PathBuf::from("(none)"),
                why: "`eta.model = \"road\"` needs `eta.road_map` (or --road-map) to name an \
                      .osm.pbf file"
                    .into(),
            })?;
            let graph = shared_graph(path, road_options(c))?;
            Ok(Box::new(RoadEta::new(graph, c.clone())))
        }
    }
}

/// [`from_config`] for a constructor that cannot fail (the dispatcher's): the configured model,
/// or, when its map cannot be loaded, the straight-line model with an error logged. The
/// server calls [`from_config`] before starting the engine, so there this only ever reuses the
/// graph already loaded; the fallback is for embedders that skip that check.
pub fn model_or_fallback(config: &Config) -> Box<dyn EtaModel> {
    from_config(config).unwrap_or_else(|e| {
        tracing::error!("{e}; using the straight-line ETA model");
        Box::new(HaversineEta::new(config.eta.clone()))
    })
}

/// The snapping options the config asks for.
pub fn road_options(c: &EtaConfig) -> RoadOptions {
    RoadOptions {
        max_snap_m: c.road_max_snap_m,
        snap_speed_mps: c.road_snap_speed_mps,
    }
}

/// The graph of `path` with `options`, loaded on first use and shared afterwards.
pub fn shared_graph(path: &Path, options: RoadOptions) -> Result<Arc<RoadGraph>, RoadError> {
    type Cache = Mutex<HashMap<(PathBuf, u64, u64), Arc<RoadGraph>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = (
        path.to_path_buf(),
        options.max_snap_m.to_bits(),
        options.snap_speed_mps.to_bits(),
    );
    let cache = CACHE.get_or_init(Default::default);
    // Held while loading: two dispatchers starting together load the file once.
    let mut map = cache.lock();
    if let Some(g) = map.get(&key) {
        return Ok(g.clone());
    }
    let g = Arc::new(RoadGraph::load_with(path, options)?);
    map.insert(key, g.clone());
    Ok(g)
}

/// Snapped candidates and their routed times, kept between queries.
type Buffers = (Vec<Option<Snap>>, Vec<Option<f64>>);

/// Routed ETAs: road-graph time x the hour's congestion multiplier; a point that cannot be
/// snapped gets the straight-line estimate, flagged as a fallback.
#[derive(Debug)]
pub struct RoadEta {
    graph: Arc<RoadGraph>,
    fallback: HaversineEta,
    congestion_by_hour: [f64; 24],
    utc_offset_hours: i32,
    /// Reused per query (the model is used by one dispatcher thread; the lock is uncontended).
    scratch: Mutex<Buffers>,
}

impl RoadEta {
    /// A model over `graph` with the congestion and fallback settings of `config`.
    pub fn new(graph: Arc<RoadGraph>, config: EtaConfig) -> RoadEta {
        RoadEta {
            graph,
            congestion_by_hour: config.road_congestion_by_hour,
            utc_offset_hours: config.utc_offset_hours,
            fallback: HaversineEta::new(config),
            scratch: Mutex::new((Vec::new(), Vec::new())),
        }
    }

    /// The graph it routes on.
    pub fn graph(&self) -> &Arc<RoadGraph> {
        &self.graph
    }

    fn congestion(&self, now_ms: u64) -> f64 {
        self.congestion_by_hour[hour_of_day(now_ms, self.utc_offset_hours)]
    }

    fn fallback(&self, distance_m: f64, now_ms: u64) -> Eta {
        Eta {
            eta_s: self.fallback.straight_line_s(distance_m, now_ms),
            source: EtaSource::StraightLineFallback,
        }
    }
}

impl EtaModel for RoadEta {
    fn estimate(&self, from: LatLng, to: LatLng, distance_m: f64, now_ms: u64) -> Eta {
        match self.graph.route_time_s(from, to) {
            Some(t) if t.is_finite() => Eta {
                eta_s: t * self.congestion(now_ms),
                source: EtaSource::Road,
            },
            _ => self.fallback(distance_m, now_ms),
        }
    }

    fn many_to_one(&self, from: &[(LatLng, f64)], to: LatLng, now_ms: u64, out: &mut Vec<Eta>) {
        out.clear();
        let Some(target) = self.graph.snap(to) else {
            out.extend(from.iter().map(|&(_, d)| self.fallback(d, now_ms)));
            return;
        };
        let factor = self.congestion(now_ms);
        let mut guard = self.scratch.lock();
        let (snaps, times) = &mut *guard;
        snaps.clear();
        snaps.extend(from.iter().map(|&(p, _)| self.graph.snap(p)));
        self.graph.many_to_one_snapped(snaps, &target, times);
        out.extend(from.iter().zip(times.iter()).map(|(&(_, d), t)| match t {
            Some(t) if t.is_finite() => Eta {
                eta_s: t * factor,
                source: EtaSource::Road,
            },
            _ => self.fallback(d, now_ms),
        }));
    }
}
