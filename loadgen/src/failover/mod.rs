//! `loadgen --mode failover`: a city cut into regions, served by three `dispatchd` processes
//! on a 3-node NATS JetStream cluster, under trip requests, acceptances and location reports,
//! while owners are killed (SIGKILL) at random moments and restarted, one owner is paused
//! (SIGSTOP) past its lease and resumed, and one NATS node is killed and restarted. Then every
//! region's stream is read back and checked ([`dispatch::cluster::audit`]): nothing
//! acknowledged lost, no double assignment, no write by a stale owner, replays deterministic.
//!
//! The NATS cluster is started here (`dispatch::cluster::testkit`, the one the tests use) on
//! free 127.0.0.1 ports in a temporary directory, unless `--nats-url` names an existing one
//! (then no NATS node is killed). Each kill is measured from the SIGKILL to the moment a
//! client sees each of the victim's regions owned elsewhere (GetRoutes) and answering a call.

mod members;
mod traffic;

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use dispatch::cluster::{audit, testkit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::Config;
use crate::error::{Error, Result};
use members::Member;
use traffic::Traffic;

/// The failover mode's own flags.
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    /// Failover mode: owners killed with SIGKILL (each restarted afterwards).
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Failover mode: regions, side by side (at least 6 for the run).
    #[arg(long, default_value_t = 6)]
    pub regions: usize,
    /// Failover mode and `--cluster-log`: the processes' `cluster.lease_ttl`.
    #[arg(long, value_parser = crate::config::parse_duration, default_value = "2s")]
    pub lease_ttl: Duration,
    /// Failover mode and `--cluster-log`: an existing NATS JetStream cluster (comma-separated
    /// URLs) instead of starting three local nodes; no NATS node is killed then.
    #[arg(long)]
    pub nats_url: Option<String>,
}

/// Where the regions lie: `regions` columns side by side, as `testkit::column_regions_toml`
/// writes them (about 2.5 x 11 km each, over Manhattan).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub(crate) regions: usize,
}

impl Layout {
    fn names(self) -> Vec<String> {
        (0..self.regions).map(|i| format!("r{i}")).collect()
    }

    /// A random point well inside region `i`.
    pub(crate) fn point_in(self, i: usize, rng: &mut ChaCha8Rng) -> dispatch::pb::LatLng {
        dispatch::pb::LatLng {
            lat_deg: rng.random_range(40.71..40.79),
            lng_deg: testkit::column_west(i) + rng.random_range(0.003..0.027),
        }
    }
}

/// p50, p99 and max of a set of durations, seconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Seconds {
    /// How many were measured.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile (nearest rank).
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Seconds {
    fn of(mut v: Vec<f64>) -> Seconds {
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        match v.last() {
            None => Seconds::default(),
            Some(&max) => Seconds {
                n: v.len(),
                p50: rank(0.5),
                p99: rank(0.99),
                max,
            },
        }
    }
}

/// The JSON report of a failover run.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// Always `failover`.
    pub mode: &'static str,
    /// Regions.
    pub regions: usize,
    /// `cluster.lease_ttl`, seconds.
    pub lease_ttl_s: f64,
    /// Owners killed with SIGKILL.
    pub kills: usize,
    /// Owners paused with SIGSTOP past their lease, then resumed.
    pub pauses: usize,
    /// NATS nodes killed and restarted.
    pub nats_node_kills: usize,
    /// Trip requests acknowledged.
    pub acknowledged_trips: usize,
    /// Acceptances acknowledged.
    pub acknowledged_acceptances: u64,
    /// Acknowledged trips or acceptances missing from the streams.
    pub lost_trips: usize,
    /// Trips assigned twice or drivers holding two trips, in the streams.
    pub double_assignments: usize,
    /// Stream messages not written by the region's current owner.
    pub stale_owner_events: usize,
    /// Kill -> each of the victim's regions served elsewhere, seen by a client.
    pub failover_s: Seconds,
    /// Pause -> each of the paused owner's regions served elsewhere.
    pub pause_takeover_s: Seconds,
    /// Call attempts that failed (all retried on another process unless counted below).
    pub requests_failed_during_failover: u64,
    /// Calls refused outright (not retryable, at their first answer): never expected.
    pub calls_refused: u64,
    /// Calls given up after 60 s of retryable failures.
    pub calls_given_up: u64,
    /// Trips acknowledged while one NATS node was down.
    pub trips_acked_with_a_nats_node_down: u64,
    /// Location updates accepted.
    pub location_updates: u64,
    /// Every region's stream replayed twice into fresh states gave the same digest.
    pub replay_state_hashes_equal: bool,
    /// The history check in full (its lists name every finding).
    pub audit: audit::Audit,
    /// A few refusals, if any.
    pub refusal_samples: Vec<String>,
    /// Wall time of the run, seconds.
    pub duration_s: f64,
    /// Load average over the last minute at the end (the machine may have been shared).
    pub host_load_1m: f64,
}

impl FailoverReport {
    /// Whether the targets were met: nothing lost, doubled or stale over >= 20
    /// kills, failover p99 <= 3 s, replays equal.
    pub fn targets_met(&self) -> bool {
        self.kills >= 20
            && self.lost_trips == 0
            && self.double_assignments == 0
            && self.stale_owner_events == 0
            && self.failover_s.p99 <= 3.0
            && self.replay_state_hashes_equal
    }
}

/// Runs a failover run with `bin` as `dispatchd`.
pub async fn run(config: &Config, args: &FailoverArgs, bin: &Path) -> Result<FailoverReport> {
    if args.regions < 3 {
        return Err(Error::Config("--regions must be at least 3".into()));
    }
    let started = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let (mut nats, nats_url) =
        crate::cluster_log::nats_or_start(args.nats_url.as_deref(), "failover mode").await?;
    let layout = Layout {
        regions: args.regions,
    };
    let names = layout.names();
    let dir = std::env::temp_dir().join(format!("loadgen-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| io(&dir, source))?;
    let config_path = dir.join("cluster.toml");
    std::fs::write(
        &config_path,
        testkit::column_regions_toml(&nats_url, args.lease_ttl, layout.regions),
    )
    .map_err(|source| io(&config_path, source))?;
    let server_args: Vec<String> = vec![
        "--http-listen".into(),
        "off".into(),
        "--ephemeral".into(),
        "--config".into(),
        config_path.display().to_string(),
    ];
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(Member::start(bin, &server_args).await?);
    }
    eprintln!(
        "loadgen: 3 dispatchd up; waiting for the {} regions to settle",
        names.len()
    );
    members::settle(&members, &names).await?;

    let prefix = if config.id_prefix.is_empty() {
        format!("f{}-", std::process::id())
    } else {
        config.id_prefix.clone()
    };
    let traffic = Traffic::new(layout, prefix, config.drivers);
    traffic.reachable.set(&members);
    traffic.drivers_online(config.seed).await;
    let mut tasks = Vec::new();
    let every = Duration::from_secs_f64(config.clients as f64 / config.requests_per_sec.max(0.1));
    for k in 0..config.clients {
        tasks.push(tokio::spawn(
            traffic.clone().riders(config.seed + 1 + k as u64, every),
        ));
    }
    tasks.push(tokio::spawn(traffic.clone().locations(
        config.seed + 1000,
        Duration::from_secs_f64(config.report_interval_s),
        config.batch_size,
    )));

    let mut failover = Vec::new();
    for k in 0..args.kills {
        members::settle(&members, &names).await?;
        // A random moment under load.
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..2000))).await;
        let routes = members::routes(&members[0].channel).await;
        let region = rng.random_range(0..names.len());
        let Some(v) = members
            .iter()
            .position(|m| Some(m.addr()) == routes.get(region).map(String::as_str))
        else {
            continue;
        };
        let victim = members.remove(v);
        traffic.reachable.set(&members);
        let gone = victim.addr().to_owned();
        let moved: Vec<usize> = (0..names.len()).filter(|&r| routes[r] == gone).collect();
        let since = Instant::now();
        victim.server.stop();
        let times = members::wait_moved(&members[0].channel, &names, &moved, &gone, since).await?;
        eprintln!(
            "loadgen: kill {}/{}: {gone}'s regions {moved:?} served again after {times:.2?} s",
            k + 1,
            args.kills
        );
        failover.extend(times);
        members.push(Member::start(bin, &server_args).await?);
        traffic.reachable.set(&members);
    }
    let pause = pause_one(&mut members, &names, &traffic, &mut rng).await?;
    let (nats_kills, acked_nats_down) = match nats.as_mut() {
        Some(cluster) => kill_a_nats_node(cluster, &traffic, &mut rng).await?,
        None => (0, 0),
    };
    members::settle(&members, &names).await?;

    traffic.stop.store(true, Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    eprintln!("loadgen: reading the {} region streams back", names.len());
    let histories = audit::read_regions(&nats_url, &names)
        .await
        .map_err(Error::Server)?;
    let acked = std::mem::take(&mut *traffic.acked.lock().unwrap_or_else(|e| e.into_inner()));
    let found = audit::check(&dispatch::config::Config::default(), &histories, &acked);
    drop(members);
    drop(nats);
    let _ = std::fs::remove_dir_all(&dir);
    let c = &traffic.counters;
    Ok(FailoverReport {
        mode: "failover",
        regions: names.len(),
        lease_ttl_s: args.lease_ttl.as_secs_f64(),
        kills: args.kills,
        pauses: 1,
        nats_node_kills: nats_kills,
        acknowledged_trips: found.acknowledged_trips,
        acknowledged_acceptances: c.accepted.load(Relaxed),
        lost_trips: found.lost_trips.len(),
        double_assignments: found.double_assignments.len(),
        stale_owner_events: found.stale_owner_events.len(),
        failover_s: Seconds::of(failover),
        pause_takeover_s: Seconds::of(pause),
        requests_failed_during_failover: c.failed.load(Relaxed),
        calls_refused: c.refused.load(Relaxed),
        calls_given_up: c.given_up.load(Relaxed),
        trips_acked_with_a_nats_node_down: acked_nats_down,
        location_updates: c.locations.load(Relaxed),
        replay_state_hashes_equal: found.replay_state_hashes_equal,
        refusal_samples: c.samples.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        audit: found,
        duration_s: started.elapsed().as_secs_f64(),
        host_load_1m: crate::report::load_average_1m(),
    })
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// SIGSTOPs the owner of a random region until its regions are served elsewhere, then resumes
/// it; the takeover times.
async fn pause_one(
    members: &mut Vec<Member>,
    names: &[String],
    traffic: &Traffic,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<f64>> {
    let routes = members::settle(members, names).await?;
    let region = rng.random_range(0..names.len());
    let Some(p) = members.iter().position(|m| m.addr() == routes[region]) else {
        return Ok(Vec::new());
    };
    let paused = members.remove(p);
    traffic.reachable.set(members);
    let gone = paused.addr().to_owned();
    let moved: Vec<usize> = (0..names.len()).filter(|&r| routes[r] == gone).collect();
    let since = Instant::now();
    members::signal(paused.server.pid(), "-STOP")?;
    let times = members::wait_moved(&members[0].channel, names, &moved, &gone, since).await;
    members::signal(paused.server.pid(), "-CONT")?;
    eprintln!("loadgen: paused {gone}: its regions {moved:?} served elsewhere after {times:.2?} s");
    members.push(paused);
    traffic.reachable.set(members);
    times
}

/// Kills a random NATS node, waits until 20 more trips are acknowledged without it (or 60 s),
/// restarts it; (nodes killed, trips acknowledged meanwhile).
async fn kill_a_nats_node(
    cluster: &mut testkit::NatsCluster,
    traffic: &Traffic,
    rng: &mut ChaCha8Rng,
) -> Result<(usize, u64)> {
    let node = rng.random_range(0..cluster.nodes.len());
    let before = traffic.counters.acked.load(Relaxed);
    cluster.kill(node);
    let deadline = Instant::now() + Duration::from_secs(60);
    while traffic.counters.acked.load(Relaxed) < before + 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acked = traffic.counters.acked.load(Relaxed) - before;
    eprintln!(
        "loadgen: NATS node n{node} down: {acked} trips acknowledged meanwhile; restarting it"
    );
    cluster.restart(node).await.map_err(Error::Server)?;
    Ok((1, acked))
}
