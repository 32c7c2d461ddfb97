//! Our ETAs against OSRM's on the same map: how far off each model is, and how often each
//! picks OSRM's fastest of 20 candidates.
//!
//! OSRM is the reference router (its car profile, its own contraction hierarchies); it must be
//! running on 127.0.0.1 (see `data/maps/README.md` and the README's "Road ETAs" section for
//! the commands). For each of `--pickups` random pickups on the map's roads, the 20 drivers
//! nearest to it (of a seeded fleet of `--fleet` drivers on the roads) are timed to the pickup
//! by OSRM's `/table` service, by our road model (free-flow: congestion 1.0, the map's speeds)
//! and by the straight-line model at noon. Printed per model: the median absolute relative
//! error against OSRM, the median absolute error in seconds, how often the model's fastest
//! candidate is OSRM's fastest, and the mean extra pickup time (by OSRM) of its pick.
//!
//! Run: `cargo run --release --example osrm_compare -- --map data/maps/monaco.osm.pbf
//! --osrm 127.0.0.1:5055` (defaults: 100 pickups = 2,000 pairs, fleet 2,000, seed 1).
//!
//! The HTTP client is `std::net::TcpStream` (one HTTP/1.0 GET per table): that is all it
//! takes, so no HTTP crate is added; `serde_json` (a dev-dependency) reads the answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dispatch::LatLng;
use dispatch::config::Config;
use dispatch::eta::road::{EdgeId, RoadGraph};
use dispatch::matching::{Eta, EtaModelKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// 2023-11-14 12:00 UTC: the straight-line model's daytime speed.
const NOON_MS: u64 = 1_699_963_200_000;

#[derive(Parser, Debug)]
struct Args {
    /// The .osm.pbf both routers use.
    #[arg(long)]
    map: PathBuf,
    /// host:port of a running osrm-routed for the same map.
    #[arg(long, default_value = "127.0.0.1:5055")]
    osrm: String,
    /// Pickups drawn (each with 20 candidates).
    #[arg(long, default_value_t = 100)]
    pickups: usize,
    /// Drivers on the roads the candidates are taken from.
    #[arg(long, default_value_t = 2_000)]
    fleet: usize,
    /// Candidates per pickup.
    #[arg(long, default_value_t = 20)]
    candidates: usize,
    /// RNG seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// A random point on the roads, uniform over road length.
fn on_road(g: &RoadGraph, cumulative_m: &[f64], rng: &mut ChaCha8Rng) -> LatLng {
    let total = cumulative_m[cumulative_m.len() - 1];
    let at = rng.random_range(0.0..total);
    let e = cumulative_m
        .partition_point(|&c| c <= at)
        .min(g.edge_count() - 1);
    let before = if e == 0 { 0.0 } else { cumulative_m[e - 1] };
    g.point_along(EdgeId(e as u32), at - before)
}

/// OSRM's driving seconds from each of `from` to `to` (`None` where it has no route).
fn osrm_table(addr: &str, from: &[LatLng], to: LatLng) -> Result<Vec<Option<f64>>, String> {
    let coords: Vec<String> = from
        .iter()
        .chain(std::iter::once(&to))
        .map(|p| format!("{:.7},{:.7}", p.lng_deg(), p.lat_deg()))
        .collect();
    let sources: Vec<String> = (0..from.len()).map(|i| i.to_string()).collect();
    let path = format!(
        "/table/v1/driving/{}?sources={}&destinations={}",
        coords.join(";"),
        sources.join(";"),
        from.len()
    );
    let mut s =
        TcpStream::connect(addr).map_err(|e| format!("cannot reach OSRM at {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    let json = body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or("OSRM sent no HTTP body")?;
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("{e}: {json}"))?;
    if v["code"] != "Ok" {
        return Err(format!("OSRM answered {json}"));
    }
    let rows = v["durations"].as_array().ok_or("no durations")?;
    Ok(rows.iter().map(|r| r[0].as_f64()).collect())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn argmin(v: impl Iterator<Item = f64>) -> usize {
    v.enumerate()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(i, _)| i)
}

#[derive(Default)]
struct Tally {
    rel_err: Vec<f64>,
    signed_err: Vec<f64>,
    abs_err_s: Vec<f64>,
    best_hits: usize,
    extra_s: f64,
    fallbacks: usize,
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let mut config = Config::default();
    config.eta.model = EtaModelKind::Road;
    config.eta.road_map = Some(args.map.clone());
    let road = dispatch::eta::from_config(&config).map_err(|e| e.to_string())?;
    let straight = dispatch::eta::from_config(&Config::default()).map_err(|e| e.to_string())?;
    let g = dispatch::eta::shared_graph(&args.map, dispatch::eta::road_options(&config.eta))
        .map_err(|e| e.to_string())?;
    let s = g.stats();
    println!(
        "map {}: {} nodes, {} edges, loaded in {:.2} s, {:.1} MiB",
        args.map.display(),
        g.node_count(),
        g.edge_count(),
        s.total_s,
        s.memory_bytes as f64 / 1048576.0
    );

    let mut cumulative = Vec::with_capacity(g.edge_count());
    let mut acc = 0.0;
    for e in g.edges() {
        acc += e.length_m;
        cumulative.push(acc);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let fleet: Vec<LatLng> = (0..args.fleet)
        .map(|_| on_road(&g, &cumulative, &mut rng))
        .collect();
    let mut tallies = [Tally::default(), Tally::default()];
    let mut pairs = 0usize;
    let mut dispatches = 0usize;
    let mut out: Vec<Eta> = Vec::new();
    for _ in 0..args.pickups {
        let pickup = on_road(&g, &cumulative, &mut rng);
        let mut near: Vec<(LatLng, f64)> =
            fleet.iter().map(|&p| (p, p.distance_m(pickup))).collect();
        near.sort_by(|a, b| a.1.total_cmp(&b.1));
        near.truncate(args.candidates);
        let positions: Vec<LatLng> = near.iter().map(|c| c.0).collect();
        let reference = osrm_table(&args.osrm, &positions, pickup)?;
        if reference.iter().any(|r| r.is_none()) {
            continue; // OSRM found no route for some candidate: not comparable
        }
        let reference: Vec<f64> = reference.into_iter().flatten().collect();
        let osrm_best = argmin(reference.iter().copied());
        dispatches += 1;
        for (model, tally) in [&road, &straight].into_iter().zip(tallies.iter_mut()) {
            model.many_to_one(&near, pickup, NOON_MS, &mut out);
            for (eta, &osrm) in out.iter().zip(&reference) {
                if eta.source == dispatch::matching::EtaSource::StraightLineFallback {
                    tally.fallbacks += 1;
                }
                if osrm >= 1.0 {
                    tally.rel_err.push((eta.eta_s - osrm).abs() / osrm);
                    tally.signed_err.push((eta.eta_s - osrm) / osrm);
                }
                tally.abs_err_s.push((eta.eta_s - osrm).abs());
            }
            let pick = argmin(out.iter().map(|e| e.eta_s));
            if pick == osrm_best || reference[pick] == reference[osrm_best] {
                tally.best_hits += 1;
            }
            tally.extra_s += reference[pick] - reference[osrm_best];
        }
        pairs += near.len();
    }
    println!(
        "{dispatches} dispatches, {pairs} driver/pickup pairs, {} candidates each (seed {})",
        args.candidates, args.seed
    );
    println!(
        "{:<26} {:>13} {:>15} {:>13} {:>13} {:>20} {:>10}",
        "model",
        "median_err_%",
        "median_signed_%",
        "median_err_s",
        "best_of_20_%",
        "mean_extra_pickup_s",
        "fallbacks"
    );
    for (name, t) in ["road (ours)", "haversine (straight line)"]
        .iter()
        .zip(tallies)
    {
        println!(
            "{:<26} {:>13.1} {:>15.1} {:>13.1} {:>13.1} {:>20.1} {:>10}",
            name,
            100.0 * median(t.rel_err),
            100.0 * median(t.signed_err),
            median(t.abs_err_s),
            100.0 * t.best_hits as f64 / dispatches.max(1) as f64,
            t.extra_s / dispatches.max(1) as f64,
            t.fallbacks
        );
    }
    Ok(())
}
