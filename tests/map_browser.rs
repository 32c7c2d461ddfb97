//! The operator's live map in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`, Debian's `chromium` and `chromium-driver` packages) against the real
//! `dispatchd` binary fed by a small simulated city over gRPC. Pins what an operator relies on:
//! - the page's `#drivers-online` and `#trips-open` equal GetStats;
//! - a trip requested through gRPC appears in the trip list without a reload (the request ->
//!   appearance time is printed: the target is <= 1 s);
//! - a driver that moves moves on the map by the stream's deltas, without a new snapshot;
//! - clicking it shows its event timeline (`#trip-detail [data-kind=TRIP_REQUESTED]`);
//! - no JavaScript error and no failed load in the browser's console;
//! - a screenshot is written to the target dir (and to `docs/map-screenshot.png` with
//!   `UPDATE_SCREENSHOT=1`).
//!
//! Without chromium/chromedriver the test is skipped with a message, except under CI (env `CI`
//! set), where it fails naming the apt packages. The ignored test measures the page with 100k
//! drivers (`cargo test --release --test map_browser -- --ignored --nocapture`).

mod browser;

use std::time::{Duration, Instant};

use browser::{Browser, City, Dispatchd, poll};
use fantoccini::Locator;

/// Drivers in the small city, and trips requested (some accepted) before the page opens.
const DRIVERS: usize = 300;
const TRIPS: usize = 24;
const ACCEPTED: usize = 10;
/// Riders asking from one spot at once, so that it surges.
const RUSH: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_map_shows_the_engine_in_a_real_browser() {
    let Some(tools) = browser::tools() else {
        return;
    };
    let server = Dispatchd::start().await;
    let mut city = City::new(&server, 7).await;
    city.drivers_online(DRIVERS, 0.03).await;
    city.trips(TRIPS, ACCEPTED).await;
    city.rush(RUSH, (0.012, 0.01)).await;
    let browser = Browser::start(&tools, 1400, 850).await;
    let mut outcome = check_page(&browser, &server, &mut city).await;
    if outcome.is_ok() {
        outcome = check_zoomed_out(&browser, &server, &mut city).await;
    }
    let errors = browser.console_errors().await;
    browser.stop().await;
    outcome.unwrap();
    assert!(
        errors.is_empty(),
        "the browser console shows errors: {errors:#?}"
    );
}

async fn check_page(b: &Browser, server: &Dispatchd, city: &mut City) -> Result<(), String> {
    b.client
        .goto(&server.http_url("/"))
        .await
        .map_err(|e| format!("open the map: {e}"))?;

    // The counters converge on GetStats (the city is still: offers do not expire for 600 s).
    let stats = city.stats().await;
    let online = stats.drivers_available + stats.drivers_offered + stats.drivers_on_trip;
    assert_eq!(online, DRIVERS as u64, "every driver of the city is online");
    let want = (online.to_string(), stats.open_trips.to_string());
    poll(
        "#drivers-online and #trips-open equal GetStats",
        20,
        || async {
            let got = (b.text("drivers-online").await, b.text("trips-open").await);
            (got == want)
                .then_some(())
                .ok_or(format!("page shows {got:?}, GetStats {want:?}"))
        },
    )
    .await?;
    // Drivers are drawn: the footer counts the points of the snapshot.
    poll("the map draws the drivers", 20, || async {
        let info = b.text("view-info").await;
        info.contains(&format!("{DRIVERS} drivers drawn"))
            .then_some(())
            .ok_or(info)
    })
    .await?;

    // A driver that moves moves on the map by the stream's deltas, without a snapshot. (A
    // loaded machine may make the page miss a view and fetch one: then the move is retried.)
    let mut moved_by_delta = false;
    for attempt in 0..3 {
        let before = b.js("return window.mapState.loads").await;
        let lng = browser::CENTRE.1 + 0.001 * f64::from(attempt + 1);
        city.move_driver("d0", (browser::CENTRE.0, lng)).await;
        let script = "const p = window.mapState.pts; const i = p && p.at.get('d0'); \
                      return i === undefined ? null : p.x[i]";
        poll(
            "the moved driver's dot is where it was reported",
            10,
            || async {
                let x = b.js(script).await;
                x.as_f64()
                    .filter(|x| (x - lng).abs() < 1e-5)
                    .map(drop)
                    .ok_or(format!("d0 drawn at lng {x}, reported at {lng}"))
            },
        )
        .await?;
        if b.js("return window.mapState.loads").await == before {
            moved_by_delta = true;
            break;
        }
    }
    if !moved_by_delta {
        return Err("three moves in a row came with a snapshot, none by a delta".into());
    }

    // A new trip shows up through the live stream, without a reload.
    let started = Instant::now();
    let trip = city.request_trip("watched").await;
    let row = format!("#trip-list [data-trip=\"{}\"]", trip.trip_id);
    poll(
        "the requested trip appears in the trip list",
        10,
        || async {
            b.client
                .find(Locator::Css(&row))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await?;
    let appeared = started.elapsed();
    println!(
        "map: trip {} on the page {:.0} ms after RequestTrip was sent (target <= 1000 ms)",
        trip.trip_id,
        appeared.as_secs_f64() * 1e3
    );

    // Clicking it shows its events and the winning offer's breakdown. The click is retried:
    // a live update may replace the row between finding and clicking it.
    poll("click the trip's row", 10, || async {
        let el = b
            .client
            .find(Locator::Css(&row))
            .await
            .map_err(|e| e.to_string())?;
        el.click().await.map_err(|e| e.to_string())
    })
    .await?;
    poll("the trip's events show in #trip-detail", 10, || async {
        b.client
            .find(Locator::Css("#trip-detail [data-kind=\"TRIP_REQUESTED\"]"))
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await?;
    let title = b.text("detail-trip").await;
    if title != trip.trip_id {
        return Err(format!(
            "detail shows trip {title:?}, clicked {}",
            trip.trip_id
        ));
    }
    // The open detail follows the trip: once the driver accepts, it shows the assignment and
    // the winning offer's score breakdown ("why this driver").
    city.accept(&trip).await;
    poll("the detail shows the assignment and why", 10, || async {
        let assigned = b
            .client
            .find(Locator::Css("#trip-detail [data-kind=\"TRIP_ASSIGNED\"]"))
            .await
            .is_ok();
        let why = b.text("detail-why").await;
        (assigned && why.contains(&trip.driver_id) && why.contains("total"))
            .then_some(())
            .ok_or(format!("assigned row: {assigned}, why: {why:?}"))
    })
    .await?;
    // Surge from the rush is drawn (the page counts the hexagons it was sent).
    poll("surge cells on the map", 10, || async {
        let info = b.text("view-info").await;
        info.contains("surge").then_some(()).ok_or(info)
    })
    .await?;

    let shot = b
        .client
        .screenshot()
        .await
        .map_err(|e| format!("screenshot: {e}"))?;
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("map-screenshot.png");
    std::fs::write(&tmp, &shot).map_err(|e| format!("write {}: {e}", tmp.display()))?;
    println!("map: screenshot in {}", tmp.display());
    if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        let docs = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/map-screenshot.png");
        std::fs::write(docs, &shot).map_err(|e| format!("write {docs}: {e}"))?;
    }
    Ok(())
}

/// Beyond the point budget (a budget of 50 for the 300 drivers) the page draws cells, for the
/// trips too: `#trips-open` still equals GetStats, the trip list says how many open trips its
/// cells count, a new trip is counted by the stream's cells ticks, and zooming in brings the
/// trips back one by one.
async fn check_zoomed_out(b: &Browser, server: &Dispatchd, city: &mut City) -> Result<(), String> {
    b.client
        .goto(&server.http_url("/?max_points=50"))
        .await
        .map_err(|e| format!("open the map: {e}"))?;
    let counted = "const c = window.mapState.tripCells; \
                   return c ? c.list.reduce((n, x) => n + x[2], 0) : null";
    let want = city.stats().await.open_trips.to_string();
    poll(
        "trips counted per cell, #trips-open from the counters",
        20,
        || async {
            let (info, open) = (b.text("view-info").await, b.text("trips-open").await);
            let n = b.js(counted).await;
            let listed = b.text("trip-count").await;
            (info.contains("cells of")
                && info.contains("trips in")
                && open == want
                && n.as_u64()
                    .is_some_and(|n| n > 0 && listed == format!("({n})")))
            .then_some(())
            .ok_or(format!(
                "{info}; #trips-open {open} (GetStats {want}); counted {n}, list {listed}"
            ))
        },
    )
    .await?;
    let before = b.js(counted).await.as_u64().unwrap_or_default();
    city.request_trip_at("zoomed-out", browser::CENTRE, browser::CENTRE)
        .await;
    let want = city.stats().await.open_trips.to_string();
    poll(
        "the new trip is counted by the stream's cells ticks",
        10,
        || async {
            let (n, open) = (b.js(counted).await, b.text("trips-open").await);
            (n.as_u64() == Some(before + 1) && open == want)
                .then_some(())
                .ok_or(format!(
                    "counted {n} (was {before}), #trips-open {open} (GetStats {want})"
                ))
        },
    )
    .await?;
    for _ in 0..4 {
        b.js("document.getElementById('zoom-in').click()").await;
    }
    poll(
        "zoomed in, the trips are listed one by one again",
        20,
        || async {
            let info = b.text("view-info").await;
            let rows = b
                .client
                .find_all(Locator::Css("#trip-list li[data-trip]"))
                .await
                .map_err(|e| e.to_string())?;
            (info.contains("drivers drawn") && !rows.is_empty())
                .then_some(())
                .ok_or(format!("{info}; {} trip rows", rows.len()))
        },
    )
    .await
}

/// Figures for the README, not assertions: the first drawn frame after load, the frame time
/// and how far the live view lags the engine, with 100k drivers online.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test --release --test map_browser -- --ignored --nocapture"]
async fn live_map_frame_times_with_100k_drivers() {
    let Some(tools) = browser::tools() else {
        return;
    };
    let server = Dispatchd::start().await;
    let mut city = City::new(&server, 11).await;
    let t = Instant::now();
    city.drivers_online(100_000, 0.15).await;
    city.trips(200, 50).await;
    println!(
        "city: 100k drivers online in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let browser = Browser::start(&tools, 1400, 850).await;
    let outcome = measure(&browser, &server, &mut city).await;
    browser.stop().await;
    outcome.unwrap();
}

async fn measure(b: &Browser, server: &Dispatchd, city: &mut City) -> Result<(), String> {
    b.client
        .goto(&server.http_url("/"))
        .await
        .map_err(|e| e.to_string())?;
    let first = poll("a first frame with drivers", 60, || async {
        let v = b
            .js("return window.mapPerf && window.mapPerf.firstFrameMs")
            .await;
        v.as_f64().ok_or(format!("not yet: {v}"))
    })
    .await?;
    println!("map: first frame with drivers {first:.0} ms after navigation start");
    // Each step zooms in further (x2 per click) from the fitted whole city.
    for (label, clicks) in [("whole city", 0), ("x2", 1), ("x4", 1), ("x16", 2)] {
        let before = b.text("view-info").await;
        for _ in 0..clicks {
            b.js("document.getElementById('zoom-in').click()").await;
        }
        // Time frames once the snapshot for the new viewport is drawn.
        poll("the new viewport's snapshot", 20, || async {
            let now = b.text("view-info").await;
            (clicks == 0 || now.split(" · ").nth(1) != before.split(" · ").nth(1))
                .then_some(())
                .ok_or(now)
        })
        .await?;
        let r = b.js("return window.mapPerf.run(120)").await;
        println!("map: {label}: {} ({r})", b.text("view-info").await);
    }
    let mut lags = Vec::new();
    for i in 0..10 {
        let started = Instant::now();
        let trip = city.request_trip(&format!("lag{i}")).await;
        let row = format!("#trip-list [data-trip=\"{}\"]", trip.trip_id);
        poll("the trip row", 20, || async {
            b.client
                .find(Locator::Css(&row))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await?;
        lags.push(started.elapsed().as_secs_f64() * 1e3);
    }
    lags.sort_by(f64::total_cmp);
    println!(
        "map: request -> on the page, median {:.0} ms, max {:.0} ms over {} trips; {}",
        lags[lags.len() / 2],
        lags[lags.len() - 1],
        lags.len(),
        b.text("lag").await
    );
    Ok(())
}

/// With tokens configured, a browser is sent to the login form; a wrong token is refused there,
/// a `viewer` token sets the cookie and the map, its API and its stream then work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_map_asks_for_a_viewer_token_when_tokens_are_configured() {
    let Some(tools) = browser::tools() else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let config = dir.path().join("dispatchd.toml");
    std::fs::write(
        &config,
        "[[auth.tokens]]\nname = \"ops-screen\"\ntoken = \"viewer-token-0123456789\"\n\
         roles = [\"viewer\"]\n",
    )
    .expect("write the config");
    let server = Dispatchd::start_with(&["--config", config.to_str().expect("utf-8 path")]).await;
    let browser = Browser::start(&tools, 1000, 700).await;
    let outcome = log_in(&browser, &server).await;
    let errors = browser.console_errors().await;
    browser.stop().await;
    outcome.unwrap();
    // The refused login answers 401 by design; the browser logs that load as failed.
    let unexpected: Vec<_> = errors.iter().filter(|e| !e.contains("/login")).collect();
    assert!(
        unexpected.is_empty(),
        "the browser console shows errors: {unexpected:#?}"
    );
}

async fn log_in(b: &Browser, server: &Dispatchd) -> Result<(), String> {
    let submit = |token: &'static str| async move {
        let field = b
            .client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css("input[name=token]"))
            .await
            .map_err(|e| format!("the login form: {e}"))?;
        field.send_keys(token).await.map_err(|e| e.to_string())?;
        field
            .send_keys(&fantoccini::key::Key::Enter.to_string())
            .await
            .map_err(|e| e.to_string())
    };
    b.client
        .goto(&server.http_url("/"))
        .await
        .map_err(|e| e.to_string())?;
    let url = b.client.current_url().await.map_err(|e| e.to_string())?;
    if url.path() != "/login" {
        return Err(format!(
            "without a token the map should send to /login, is at {url}"
        ));
    }
    submit("not-a-token-at-all-000").await?;
    poll("a wrong token is refused on the login page", 20, || async {
        let body = b
            .js("return document.body ? document.body.innerText : ''")
            .await;
        let on_form = b
            .client
            .find(Locator::Css("input[name=token]"))
            .await
            .is_ok();
        (on_form && body.as_str().is_some_and(|t| t.contains("Unknown token")))
            .then_some(())
            .ok_or(format!("page: {body}"))
    })
    .await?;
    submit("viewer-token-0123456789").await?;
    poll(
        "after logging in the map shows its counters, live",
        20,
        || async {
            let got = (b.text("drivers-online").await, b.text("conn").await);
            (got.0 == "0" && got.1 == "live")
                .then_some(())
                .ok_or(format!("#drivers-online, #conn: {got:?}"))
        },
    )
    .await
}
