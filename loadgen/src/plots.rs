//! Charts of a run as SVG files (`--plots DIR`): latency CDFs, pickup ETAs, trips per driver.
//!
//! SVG only, so plotters needs no font or image libraries; a browser shows the files.

use crate::error::{Error, Result};
use crate::report::Report;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Points of a latency CDF in milliseconds, up to the 99.9th percentile (the tail beyond it
/// would squash the rest of the curve; the report has the max).
pub fn cdf_points_ms(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let total = h.len() as f64;
    let cut = h.value_at_quantile(0.999);
    let mut cum = 0u64;
    let mut pts = vec![(0.0, 0.0)];
    for v in h.iter_recorded() {
        cum += v.count_at_value();
        let x = h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0;
        pts.push((x, cum as f64 / total));
        if v.value_iterated_to() >= cut {
            break;
        }
    }
    pts
}

/// Counts of `values` in bins of `width`, from 0.
pub fn bin_counts(values: impl Iterator<Item = f64>, width: f64) -> Vec<u32> {
    let mut bins: Vec<u32> = Vec::new();
    for v in values {
        if !v.is_finite() || v < 0.0 {
            continue;
        }
        let b = (v / width) as usize;
        // Cap the bin count so a wild outlier cannot allocate a huge vector.
        let b = b.min(10_000);
        if bins.len() <= b {
            bins.resize(b + 1, 0);
        }
        bins[b] += 1;
    }
    bins
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Plot {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn draw_cdfs(path: &Path, panels: &[(&str, Option<&Histogram<u64>>)]) -> Result<()> {
    let root = SVGBackend::new(path, (520 * panels.len() as u32, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let areas = root.split_evenly((1, panels.len()));
    for ((title, h), area) in panels.iter().zip(areas.iter()) {
        let pts = h.map(cdf_points_ms).unwrap_or_default();
        let x_max = pts.last().map(|p| p.0).unwrap_or(1.0).max(0.001) * 1.05;
        let mut chart = ChartBuilder::on(area)
            .caption(*title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..x_max, 0f64..1.0)
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc("latency, ms (to p99.9)")
            .y_desc("fraction of requests")
            .draw()
            .map_err(|e| plot_err(path, e))?;
        chart
            .draw_series(LineSeries::new(pts, BLUE.stroke_width(2)))
            .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))
}

fn draw_bins(path: &Path, title: &str, x_desc: &str, bins: &[u32], width: f64) -> Result<()> {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let n = bins.len().max(1) as u32;
    let y_max = bins.iter().copied().max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0u32..n).into_segmented(), 0u32..(y_max + y_max / 10 + 1))
        .map_err(|e| plot_err(path, e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("count")
        .x_label_formatter(&|v| match v {
            SegmentValue::Exact(b) | SegmentValue::CenterOf(b) => {
                format!("{}", f64::from(*b) * width)
            }
            SegmentValue::Last => String::new(),
        })
        .draw()
        .map_err(|e| plot_err(path, e))?;
    chart
        .draw_series(
            plotters::series::Histogram::vertical(&chart)
                .style(BLUE.filled())
                .margin(1)
                .data(bins.iter().enumerate().map(|(b, &c)| (b as u32, c))),
        )
        .map_err(|e| plot_err(path, e))?;
    root.present().map_err(|e| plot_err(path, e))
}

/// Writes the charts that fit the report's mode into `dir` (created if missing) and returns
/// the files written.
pub fn write(report: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.display().to_string(),
        source,
    })?;
    let s = &report.samples;
    let mut files = Vec::new();
    if report.mode == "city" {
        let p = dir.join("latency_cdf.svg");
        draw_cdfs(
            &p,
            &[
                ("request -> offer", s.request_to_offer_us.as_ref()),
                ("request -> accept", s.request_to_accept_us.as_ref()),
            ],
        )?;
        files.push(p);
        let p = dir.join("pickup_eta.svg");
        let bins = bin_counts(s.pickup_etas_s.iter().copied(), 30.0);
        draw_bins(
            &p,
            "pickup ETA of accepted offers",
            "ETA, s (30 s bins)",
            &bins,
            30.0,
        )?;
        files.push(p);
        let p = dir.join("trips_per_driver.svg");
        let bins = bin_counts(s.trips_per_driver.iter().map(|&t| f64::from(t)), 1.0);
        draw_bins(&p, "trips per driver", "trips assigned", &bins, 1.0)?;
        files.push(p);
    }
    if s.nearby_us.is_some() {
        let p = dir.join("nearby_cdf.svg");
        draw_cdfs(&p, &[("NearbyDrivers", s.nearby_us.as_ref())])?;
        files.push(p);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{latency_histogram, record_us};

    #[test]
    fn cdf_rises_to_about_one_and_bins_count_everything() {
        let mut h = latency_histogram();
        for us in 1..=1000 {
            record_us(&mut h, us * 10);
        }
        let pts = cdf_points_ms(&h);
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert!(pts.last().unwrap().1 >= 0.998);
        let bins = bin_counts([0.0, 29.9, 30.0, 95.0, f64::NAN].into_iter(), 30.0);
        assert_eq!(bins, vec![2, 1, 0, 1]);
    }

    #[test]
    fn writes_svg_files_for_a_city_report() {
        let mut h = latency_histogram();
        for us in [900, 1200, 3000, 15_000] {
            record_us(&mut h, us);
        }
        let mut r = Report {
            mode: "city".into(),
            ..Report::default()
        };
        r.samples.request_to_offer_us = Some(h.clone());
        r.samples.request_to_accept_us = Some(h);
        r.samples.pickup_etas_s = vec![30.0, 100.0, 250.0];
        r.samples.trips_per_driver = vec![0, 1, 1, 2, 5];
        let dir = std::env::temp_dir().join(format!("loadgen-plots-{}", std::process::id()));
        let files = write(&r, &dir).unwrap();
        assert_eq!(files.len(), 3);
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(
                text.starts_with("<svg") || text.contains("<svg"),
                "{}",
                f.display()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
