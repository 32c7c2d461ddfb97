//! The side-by-side report: a table on stdout, a JSON document (`--report`), SVG charts per
//! hour of day (`--plots DIR`). Every figure is the mean over seeds; the difference of each
//! variant from the first is paired by seed and given with a 95 % confidence interval.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::{Map, Value, json};

use super::VariantRuns;
use super::metrics::{Interval, Stats, interval};

/// A metric: its name (the JSON key) and how to read it.
pub type Metric = (&'static str, fn(&Stats) -> f64);

/// Every metric, in table order.
pub const METRICS: &[Metric] = &[
    ("requests", |s| s.requests as f64),
    ("match_rate", |s| s.match_rate),
    ("mean_pickup_eta_s", |s| s.mean_pickup_eta_s),
    ("p90_pickup_eta_s", |s| s.p90_pickup_eta_s),
    ("mean_actual_pickup_s", |s| s.mean_actual_pickup_s),
    ("mean_time_to_offer_ms", |s| s.mean_time_to_offer_ms),
    ("cancellations", |s| s.cancellations as f64),
    ("no_drivers", |s| s.no_drivers as f64),
    ("offers_per_match", |s| s.offers_per_match),
    ("driver_trips_gini", |s| s.driver_trips_gini),
    ("utilisation", |s| s.utilisation),
];

fn over_seeds(v: &VariantRuns, read: fn(&Stats) -> f64, hour: Option<usize>) -> Interval {
    let xs: Vec<f64> = v
        .runs
        .iter()
        .map(|r| read(hour.map_or(&r.total, |h| &r.hours[h])))
        .collect();
    interval(&xs)
}

fn difference(v: &VariantRuns, base: &VariantRuns, read: fn(&Stats) -> f64) -> Interval {
    let xs: Vec<f64> = v
        .runs
        .iter()
        .zip(&base.runs)
        .map(|(a, b)| read(&a.total) - read(&b.total))
        .collect();
    interval(&xs)
}

/// The JSON report. `meta` goes in as is (source, timings, problems).
pub fn json(results: &[VariantRuns], meta: Map<String, Value>) -> Value {
    let mut variants = Vec::new();
    for v in results {
        let mut m = Map::new();
        m.insert("name".into(), json!(v.name));
        m.insert("seeds".into(), json!(v.runs.len()));
        m.insert("cpu_s".into(), json!(v.cpu.as_secs_f64()));
        m.insert("wall_s".into(), json!(v.wall.as_secs_f64()));
        let mut ci = Map::new();
        for (name, read) in METRICS {
            let i = over_seeds(v, *read, None);
            m.insert((*name).into(), json!(i.mean));
            ci.insert((*name).into(), json!(i.ci95));
        }
        m.insert("ci95".into(), Value::Object(ci));
        let hours: Vec<Value> = (0..24)
            .map(|h| {
                let mut row = Map::new();
                row.insert("hour".into(), json!(h));
                for (name, read) in METRICS {
                    row.insert((*name).into(), json!(over_seeds(v, *read, Some(h)).mean));
                }
                Value::Object(row)
            })
            .collect();
        m.insert("hours".into(), Value::Array(hours));
        variants.push(Value::Object(m));
    }
    let differences: Vec<Value> = results
        .iter()
        .skip(1)
        .map(|v| {
            let mut m = Map::new();
            m.insert("variant".into(), json!(v.name));
            m.insert("against".into(), json!(results[0].name));
            for (name, read) in METRICS {
                let d = difference(v, &results[0], *read);
                m.insert((*name).into(), json!({"mean": d.mean, "ci95": d.ci95}));
            }
            Value::Object(m)
        })
        .collect();
    let mut out = meta;
    out.insert("variants".into(), Value::Array(variants));
    out.insert("differences".into(), Value::Array(differences));
    Value::Object(out)
}

fn fmt(x: f64) -> String {
    if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The table: a row per metric, a column per variant, then each difference from the first
/// with its 95 % interval.
pub fn table(results: &[VariantRuns]) -> String {
    let mut out = format!("{:<22}", "metric");
    for v in results {
        out += &format!(" {:>14}", v.name);
    }
    for v in results.iter().skip(1) {
        out += &format!(" {:>22}", format!("{} - {}", v.name, results[0].name));
    }
    out.push('\n');
    for (name, read) in METRICS {
        out += &format!("{name:<22}");
        for v in results {
            out += &format!(" {:>14}", fmt(over_seeds(v, *read, None).mean));
        }
        for v in results.iter().skip(1) {
            let d = difference(v, &results[0], *read);
            out += &format!(" {:>22}", format!("{} ± {}", fmt(d.mean), fmt(d.ci95)));
        }
        out.push('\n');
    }
    out
}

const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];

/// One SVG per metric, a line per variant over the hours of the day. Returns the files.
pub fn svg(dir: &Path, results: &[VariantRuns]) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for (name, read) in METRICS {
        let path = dir.join(format!("{name}_by_hour.svg"));
        let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let series: Vec<Vec<(f64, f64)>> = results
            .iter()
            .map(|v| {
                (0..24)
                    .map(|h| (h as f64, over_seeds(v, *read, Some(h)).mean))
                    .collect()
            })
            .collect();
        let y_max = series
            .iter()
            .flatten()
            .map(|p| p.1)
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.1;
        let root = SVGBackend::new(&path, (760, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{name} by hour of day"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..23f64, 0f64..y_max)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("hour of day (request time)")
            .y_desc(*name)
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (v, pts)) in results.iter().zip(series).enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(v.name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        drop(chart);
        drop(root);
        written.push(path);
    }
    Ok(written)
}
