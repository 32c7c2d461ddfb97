//! What-if replay: a journal recorded by a real engine (its runner and journal writer thread,
//! driven through the `Engine` handle with a manual clock) replayed under other configs; a
//! trips CSV with bad rows.

use std::sync::Arc;
use std::time::Duration;

use dispatch::LatLng;
use dispatch::clock::ManualClock;
use dispatch::config::Config;
use dispatch::domain::{ExternalId, Rating, VehicleClass};
use dispatch::engine::{Engine, GoOnline, TripAction, TripRequest};
use loadgen::whatif::{self, demand, sim, source};

const T0: u64 = 1_700_000_000_000;

fn id(s: &str) -> ExternalId {
    ExternalId::new("id", s).unwrap()
}

fn at(north_m: f64) -> LatLng {
    LatLng::new(40.75 + north_m / 111_195.0, -73.99).unwrap()
}

/// Ten trips; d0 (nearest) declines every offer, d1 accepts and drives each trip to the end.
async fn record(dir: &std::path::Path) {
    let mut config = Config::default();
    config.log.data_dir = Some(dir.to_path_buf());
    config.log.fsync = dispatch::events::FsyncPolicy::Never;
    config.record.enabled = true;
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Engine::start(&config, dispatch::index::default_index(), clock.clone()).unwrap();
    for (name, north) in [("d0", 100.0), ("d1", 600.0)] {
        engine
            .go_online(GoOnline {
                driver: id(name),
                position: at(north),
                rating: Rating::new(4.8).unwrap(),
                class: VehicleClass::Economy,
                gateway: None,
            })
            .await
            .unwrap();
    }
    // More entries than the decoder hands over in one batch (512), so replay reads a
    // journal across batches; d0 reports where it already is.
    for _ in 0..600 {
        engine.update_location(id("d0"), at(100.0)).await.unwrap();
    }
    for i in 0..10 {
        let (trip, _) = engine
            .request_trip(TripRequest {
                rider: id(&format!("r{i}")),
                request_id: None,
                pickup: at(0.0),
                dropoff: at(3_000.0),
                class: VehicleClass::Any,
            })
            .await
            .unwrap();
        loop {
            clock.advance(Duration::from_secs(3));
            let (offers, _) = engine.pending_offers(None).await.unwrap();
            let Some(o) = offers.first() else {
                break;
            };
            let accept = o.driver.as_str() == "d1";
            engine
                .respond(o.offer, o.driver.clone(), accept)
                .await
                .unwrap();
        }
        for step in [TripAction::Arrive, TripAction::Start, TripAction::Complete] {
            clock.advance(Duration::from_secs(60));
            engine.trip_action(trip.id, id("d1"), step).await.unwrap();
        }
        // d1 is back where it started for the next trip.
        engine.update_location(id("d1"), at(600.0)).await.unwrap();
    }
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_recorded_journal_replays_under_other_configs() {
    let dir = tempfile::tempdir().unwrap();
    record(dir.path()).await;
    let src = source::from_journal(&dir.path().join("inputs"), false).unwrap();
    assert!(src.problems.is_empty(), "{:?}", src.problems);
    assert_eq!(src.requests, 10);
    assert_eq!(src.facts.tally["d0"].declined, 10);
    assert_eq!(src.facts.tally["d1"].accepted, 10);

    let base = whatif::variant(&src.base, "recorded").unwrap();
    let run = sim::simulate(&src, &base.config, 0);
    assert_eq!(run.total.requests, 10);
    assert_eq!(run.total.match_rate, 1.0);
    // Recorded answers: every trip was declined by d0 first, then went to d1.
    assert_eq!(run.total.offers_per_match, 2.0);
    assert_eq!(run.total.cancellations, 0);
    let again = sim::simulate(&src, &base.config, 0);
    assert_eq!(format!("{:?}", again.total), format!("{:?}", run.total));

    // Candidates only within 300 m: d1 (600 m) is never offered, d0 always declines.
    let toml = dir.path().join("near.toml");
    std::fs::write(&toml, "[dispatch]\nsearch_radius_m = 300.0\n").unwrap();
    let near = whatif::variant(&src.base, &format!("near={}", toml.display())).unwrap();
    let runs = whatif::run_all(&src, &[base, near], 2, 2);
    assert_eq!(runs[1].name, "near");
    assert_eq!(runs[1].runs.len(), 2);
    assert_eq!(runs[1].runs[0].total.match_rate, 0.0);
    assert_eq!(runs[1].runs[0].total.no_drivers, 10);
    let table = whatif::report::table(&runs);
    assert!(table.contains("near - recorded"), "{table}");
    let report = whatif::report::json(&runs, serde_json::Map::new());
    for (i, name) in ["recorded", "near"].iter().enumerate() {
        let v = &report["variants"][i];
        assert_eq!(v["name"], *name);
        for key in [
            "match_rate",
            "mean_pickup_eta_s",
            "mean_time_to_offer_ms",
            "driver_trips_gini",
        ] {
            assert!(v[key].is_number(), "variants[{i}].{key} in {v}");
        }
        assert_eq!(v["hours"].as_array().map(Vec::len), Some(24));
    }
    assert_eq!(report["variants"][1]["match_rate"], 0.0);
    assert_eq!(report["differences"][0]["match_rate"]["mean"], -1.0);
    let charts = whatif::report::svg(&dir.path().join("plots"), &runs).unwrap();
    assert_eq!(charts.len(), whatif::report::METRICS.len());
    let svg = std::fs::read_to_string(&charts[1]).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("near"),
        "a chart with a legend"
    );
}

#[test]
fn a_bad_variant_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("bad.toml");
    std::fs::write(&toml, "[dispatch]\nsearch_radius = 1\n").unwrap();
    let err = whatif::variant(&Config::default(), &format!("bad={}", toml.display())).unwrap_err();
    assert!(
        err.contains("--variant bad") && err.contains("search_radius"),
        "{err}"
    );
}

#[test]
fn csv_rows_with_bad_coordinates_are_counted_and_skipped_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("trips.csv");
    std::fs::write(
        &csv,
        "trip_start_timestamp,pickup_latitude,pickup_longitude,dropoff_latitude,dropoff_longitude,trip_seconds\n\
         1400000000,41.88,-87.63,41.90,-87.62,600\n\
         1400000100,141.88,-87.63,41.90,-87.62,600\n\
         1400000200,,,41.90,-87.62,600\n\
         1400000300,41.89,-87.63,41.91,-87.64,\n",
    )
    .unwrap();
    let fleet = demand::Fleet {
        drivers: 5,
        shift_hours: 24.0,
        seed: 1,
    };
    let src = demand::from_csv(&csv, fleet).unwrap();
    assert_eq!(src.requests, 2);
    assert_eq!(src.problems.len(), 1);
    assert!(
        src.problems[0].starts_with("2 rows skipped"),
        "{:?}",
        src.problems
    );
    assert!(src.problems[0].contains("lines 3, 4"), "{:?}", src.problems);
    assert_eq!(src.facts.legs[0].ride_ms, Some(600_000));
    assert_eq!(src.facts.legs[1].ride_ms, None);
    let run = sim::simulate(&src, &src.base, 0);
    assert_eq!(run.total.requests, 2);
}
