//! Random sequences of driver and rider calls across the west/east border, over real gRPC
//! (one process, two regions, local logs): drivers go online, report positions on both sides
//! and on the line, riders request near the border, drivers accept, decline, complete and go
//! offline. After every call no driver is online in two regions and no driver holds two
//! offers or trips; at the end each region, restarted from its own log, serves the same state.

mod support;

use std::collections::BTreeMap;

use dispatch::config::Config;
use dispatch::pb::{
    self, driver_service_client::DriverServiceClient, query_service_client::QueryServiceClient,
    rider_service_client::RiderServiceClient,
};
use proptest::prelude::*;
use support::ll;
use support::regions::{RegionServer as Server, stats_of, west_east};

const LAT: f64 = 40.75;
/// Deep west, west near the line, on the line either side, east near the line, deep east.
const LNGS: [f64; 6] = [-74.04, -74.00, -73.9905, -73.9895, -73.98, -73.94];
const DRIVERS: usize = 4;

#[derive(Clone, Debug)]
enum Op {
    Online(usize, usize),
    Report(usize, usize),
    Request(usize),
    Answer(usize, bool),
    Finish(usize),
    Offline(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let d = 0..DRIVERS;
    let at = 0..LNGS.len();
    prop_oneof![
        2 => (d.clone(), at.clone()).prop_map(|(d, a)| Op::Online(d, a)),
        4 => (d.clone(), at.clone()).prop_map(|(d, a)| Op::Report(d, a)),
        2 => at.prop_map(Op::Request),
        2 => (d.clone(), any::<bool>()).prop_map(|(d, yes)| Op::Answer(d, yes)),
        1 => d.clone().prop_map(Op::Finish),
        1 => d.prop_map(Op::Offline),
    ]
}

fn driver(i: usize) -> String {
    format!("d{i}")
}

async fn get_driver(s: &Server, i: usize) -> Option<pb::Driver> {
    QueryServiceClient::new(s.channel.clone())
        .get_driver(pb::GetDriverRequest {
            driver_id: driver(i),
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().driver)
}

/// Executes one op; refusals (a busy driver, a rider with an open trip...) are part of it.
async fn run(s: &Server, op: &Op, riders: &mut usize) {
    let mut drivers = DriverServiceClient::new(s.channel.clone());
    match *op {
        Op::Online(d, at) => {
            let _ = drivers
                .go_online(pb::GoOnlineRequest {
                    driver_id: driver(d),
                    location: ll(LAT, LNGS[at]),
                    rating: 4.5,
                    vehicle_class: 0,
                    gateway_id: "gw".into(),
                })
                .await;
        }
        Op::Report(d, at) => {
            let _ = drivers
                .update_location(pb::LocationUpdate {
                    driver_id: driver(d),
                    location: ll(LAT, LNGS[at]),
                    ..Default::default()
                })
                .await;
        }
        Op::Request(at) => {
            *riders += 1;
            let _ = RiderServiceClient::new(s.channel.clone())
                .request_trip(pb::RequestTripRequest {
                    rider_id: format!("r{riders}"),
                    request_id: format!("q{riders}"),
                    pickup: ll(LAT, LNGS[at]),
                    dropoff: ll(LAT, LNGS[(at + 3) % LNGS.len()]),
                    vehicle_class: 0,
                })
                .await;
        }
        Op::Answer(d, accept) => {
            if let Some(me) = get_driver(s, d).await
                && !me.offer_id.is_empty()
            {
                let _ = drivers
                    .respond_to_offer(pb::RespondToOfferRequest {
                        offer_id: me.offer_id,
                        driver_id: driver(d),
                        accept,
                    })
                    .await;
            }
        }
        Op::Finish(d) => {
            if let Some(me) = get_driver(s, d).await
                && !me.trip_id.is_empty()
            {
                let req = || pb::TripActionRequest {
                    trip_id: me.trip_id.clone(),
                    driver_id: driver(d),
                };
                let _ = drivers.mark_arrived(req()).await;
                let _ = drivers.start_trip(req()).await;
                let _ = drivers.complete_trip(req()).await;
            }
        }
        Op::Offline(d) => {
            let _ = drivers
                .go_offline(pb::GoOfflineRequest {
                    driver_id: driver(d),
                })
                .await;
        }
    }
}

/// The regions' durable counters, by region.
async fn region_states(s: &Server) -> BTreeMap<&'static str, [u64; 9]> {
    let mut out = BTreeMap::new();
    for name in ["west", "east"] {
        let st = stats_of(&s.channel, name).await.unwrap();
        out.insert(
            name,
            [
                st.drivers_offline,
                st.drivers_available,
                st.drivers_offered,
                st.drivers_on_trip,
                st.open_trips,
                st.pending_offers,
                st.next_event_offset,
                st.trips_completed,
                st.trips_requested,
            ],
        );
    }
    out
}

async fn check(s: &Server) -> Result<(), TestCaseError> {
    let regions = region_states(s).await;
    let online: u64 = regions.values().map(|r| r[1] + r[2] + r[3]).sum();
    let offered: u64 = regions.values().map(|r| r[2]).sum();
    let on_trip: u64 = regions.values().map(|r| r[3]).sum();
    let mut seen_online = 0;
    let mut seen_offered = 0;
    let mut seen_on_trip = 0;
    for d in 0..DRIVERS {
        if let Some(me) = get_driver(s, d).await {
            match me.state() {
                pb::DriverState::Offline | pb::DriverState::Unspecified => {}
                pb::DriverState::Available => seen_online += 1,
                pb::DriverState::Offered => {
                    seen_online += 1;
                    seen_offered += 1;
                }
                pb::DriverState::OnTrip => {
                    seen_online += 1;
                    seen_on_trip += 1;
                }
            }
        }
    }
    // A driver counted online by two regions, or holding two offers or trips, would make the
    // regions' sums exceed what the drivers themselves show.
    prop_assert_eq!(online, seen_online, "regions {:?}", regions);
    prop_assert_eq!(offered, seen_offered, "regions {:?}", regions);
    prop_assert_eq!(on_trip, seen_on_trip, "regions {:?}", regions);
    for r in regions.values() {
        prop_assert_eq!(
            r[2],
            r[5],
            "offered drivers != pending offers: {:?}",
            regions
        );
    }
    Ok(())
}

fn config(dir: &std::path::Path) -> Config {
    let mut config = Config {
        regions: west_east(),
        ..Config::default()
    };
    config.log.data_dir = Some(dir.to_path_buf());
    config.cluster.border_margin_m = 500.0;
    config.cluster.border_pull = 2;
    config
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    #[test]
    fn no_driver_is_ever_in_two_regions_and_each_log_replays(
        ops in proptest::collection::vec(op(), 1..30)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let s = Server::start(config(dir.path())).await;
            let mut riders = 0;
            for op in &ops {
                run(&s, op, &mut riders).await;
                check(&s).await?;
            }
            let before = region_states(&s).await;
            let mut drivers_before = Vec::new();
            for d in 0..DRIVERS {
                drivers_before.push(get_driver(&s, d).await.map(|d| (d.state, d.trip_id, d.offer_id)));
            }
            s.stop().await;
            let s = Server::start(config(dir.path())).await;
            prop_assert_eq!(region_states(&s).await, before);
            for (d, was) in drivers_before.into_iter().enumerate() {
                let now = get_driver(&s, d).await.map(|d| (d.state, d.trip_id, d.offer_id));
                prop_assert_eq!(now, was, "driver {}", d);
            }
            check(&s).await?;
            s.stop().await;
            Ok(())
        })?;
    }
}
