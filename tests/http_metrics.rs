//! `/metrics` after the move to prometheus-client: the same metric families (names and types)
//! and the same series (names and labels) as the hand-written encoder served, compared with a
//! fixture captured from it (`tests/fixtures/metrics_before.txt`), in both formats.

mod http_client;
mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use dispatch::clock::ManualClock;
use dispatch::config::Config;
use support::*;

const FIXTURE: &str = include_str!("fixtures/metrics_before.txt");

/// `(family name, type)` and series keys (`name{label="value",...}`, `le` read as a number).
fn shape(text: &str, openmetrics: bool) -> (BTreeSet<(String, String)>, BTreeSet<String>) {
    let mut families = BTreeSet::new();
    let mut series = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            // OpenMetrics names a counter family without its `_total` suffix.
            let name = if openmetrics && kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            families.insert((name, kind.to_string()));
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let (key, _value) = line.rsplit_once(' ').unwrap();
            series.insert(normalise_le(key));
        }
    }
    (families, series)
}

/// `le="1"` and `le="1.0"` are the same bucket bound.
fn normalise_le(key: &str) -> String {
    let Some(start) = key.find("le=\"") else {
        return key.to_string();
    };
    let rest = &key[start + 4..];
    let end = rest.find('"').unwrap();
    let bound = match &rest[..end] {
        "+Inf" => "+Inf".to_string(),
        n => format!("{}", n.parse::<f64>().unwrap()),
    };
    format!("{}le=\"{bound}\"{}", &key[..start], &rest[end..])
}

fn fixture() -> (BTreeSet<(String, String)>, BTreeSet<String>) {
    let mut families = BTreeSet::new();
    let mut series = BTreeSet::new();
    for line in FIXTURE.lines() {
        if let Some(rest) = line.strip_prefix("family ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert((name.to_string(), kind.to_string()));
        } else if let Some(rest) = line.strip_prefix("series ") {
            series.insert(normalise_le(rest));
        }
    }
    (families, series)
}

#[tokio::test]
async fn metric_names_types_and_labels_are_the_ones_served_before() {
    let clock = Arc::new(ManualClock::new(T0_MS));
    let s = start_custom(Config::default(), clock.clone(), clock, true).await;
    let addr = s.metrics_addr.unwrap();
    let (want_families, want_series) = fixture();
    assert_eq!((want_families.len(), want_series.len()), (18, 78));

    let text = http_client::get(addr, "/metrics", &[]).await;
    assert_eq!(text.status, 200);
    assert!(
        text.header("content-type")
            .starts_with("text/plain; version=0.0.4")
    );
    let (families, series) = shape(&text.body, false);
    assert_eq!(families, want_families, "Prometheus text families");
    assert_eq!(series, want_series, "Prometheus text series");

    let accept = [("accept", "application/openmetrics-text; version=1.0.0")];
    let om = http_client::get(addr, "/metrics", &accept).await;
    assert!(
        om.header("content-type")
            .starts_with("application/openmetrics-text"),
        "{:?}",
        om.headers
    );
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    let (families, series) = shape(&om.body, true);
    assert_eq!(families, want_families, "OpenMetrics families");
    assert_eq!(series, want_series, "OpenMetrics series");
    s.stop().await;
}
