//! The `dispatchd` processes of a failover run and what a client sees of them: start one (the
//! ordinary [`ServerProcess`]), the routes a process reports, whether a region answers, and
//! waiting for the cluster to settle. Every wait polls observable state, never a fixed time.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dispatch::pb;
use dispatch::pb::query_service_client::QueryServiceClient;
use tonic::transport::Channel;

use crate::server::ServerProcess;

/// How long the cluster may take to settle after a start, kill or resume.
pub(super) const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// One running `dispatchd` and a channel to it.
#[derive(Debug)]
pub(super) struct Member {
    pub(super) server: ServerProcess,
    pub(super) channel: Channel,
}

impl Member {
    /// Starts `bin` with `args` and connects (lazily) to it.
    pub(super) async fn start(bin: &std::path::Path, args: &[String]) -> crate::Result<Member> {
        let server = ServerProcess::start(bin, args).await?;
        let channel = channel_to(&server.addr);
        Ok(Member { server, channel })
    }

    pub(super) fn addr(&self) -> &str {
        &self.server.addr
    }
}

/// A lazily connected channel to `addr` whose calls give up after 5 s (a paused process
/// answers nothing).
pub(super) fn channel_to(addr: &str) -> Channel {
    // `addr` is always `127.0.0.1:PORT` here, a valid URI authority.
    Channel::from_shared(format!("http://{addr}"))
        .expect("a loopback address is a valid URI")
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// The channels of the processes clients may call now (the live, unpaused ones).
#[derive(Clone, Debug, Default)]
pub(super) struct Reachable(Arc<RwLock<Vec<Channel>>>);

impl Reachable {
    pub(super) fn set(&self, members: &[Member]) {
        let channels = members.iter().map(|m| m.channel.clone()).collect();
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = channels;
    }

    /// One of them, chosen by `pick` (an index, reduced modulo their number).
    pub(super) fn pick(&self, pick: usize) -> Option<Channel> {
        let all = self.0.read().unwrap_or_else(|e| e.into_inner());
        (!all.is_empty()).then(|| all[pick % all.len()].clone())
    }
}

/// Each region's owner address as `channel`'s process sees it ("" for none).
pub(super) async fn routes(channel: &Channel) -> Vec<String> {
    dispatch::cluster::testkit::owner_addresses(channel).await
}

/// Whether region `region` answers a call made through `channel` (served or forwarded).
pub(super) async fn serves(channel: &Channel, region: &str) -> bool {
    let mut request = tonic::Request::new(pb::GetStatsRequest {});
    match region.parse() {
        Ok(value) => request.metadata_mut().insert("dispatch-region", value),
        Err(_) => return false,
    };
    QueryServiceClient::new(channel.clone())
        .get_stats(request)
        .await
        .is_ok()
}

/// Waits until, seen from the first member, every region is owned by a member, each member
/// owns its fair share (`floor` or `ceil` of regions / members), and every region answers a
/// call through every member; returns the routes.
pub(super) async fn settle(members: &[Member], regions: &[String]) -> crate::Result<Vec<String>> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    let addrs: Vec<&str> = members.iter().map(Member::addr).collect();
    loop {
        let routes = routes(&members[0].channel).await;
        let fair = |a: &&str| {
            let owned = routes.iter().filter(|r| r == a).count();
            owned == regions.len() / addrs.len() || owned == regions.len().div_ceil(addrs.len())
        };
        if routes.len() == regions.len()
            && routes.iter().all(|r| addrs.contains(&r.as_str()))
            && addrs.iter().all(fair)
            && all_serve(members, regions).await
        {
            return Ok(routes);
        }
        if Instant::now() > deadline {
            return Err(crate::Error::Server(format!(
                "the regions did not settle on {addrs:?} within {SETTLE_LIMIT:?}: {routes:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn all_serve(members: &[Member], regions: &[String]) -> bool {
    for m in members {
        for r in regions {
            if !serves(&m.channel, r).await {
                return false;
            }
        }
    }
    true
}

/// Waits until every region in `moved` is owned, seen from `observer`, by someone other than
/// `gone` and answers a call through `observer`; the time from `since` at which each did.
pub(super) async fn wait_moved(
    observer: &Channel,
    regions: &[String],
    moved: &[usize],
    gone: &str,
    since: Instant,
) -> crate::Result<Vec<f64>> {
    let mut times = vec![None; moved.len()];
    let deadline = since + SETTLE_LIMIT;
    while times.iter().any(Option::is_none) {
        let routes = routes(observer).await;
        for (k, &r) in moved.iter().enumerate() {
            let owner = routes.get(r).map(String::as_str).unwrap_or("");
            if times[k].is_none()
                && !owner.is_empty()
                && owner != gone
                && serves(observer, &regions[r]).await
            {
                times[k] = Some(since.elapsed().as_secs_f64());
            }
        }
        if Instant::now() > deadline {
            return Err(crate::Error::Server(format!(
                "regions {moved:?} of {gone} were not served elsewhere within {SETTLE_LIMIT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(times.into_iter().flatten().collect())
}

/// Sends `signal` (`-STOP`, `-CONT`) to process `pid` with `kill`.
pub(super) fn signal(pid: u32, signal: &str) -> crate::Result<()> {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .map_err(|e| crate::Error::Server(format!("running kill {signal} {pid}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(crate::Error::Server(format!(
            "kill {signal} {pid}: {status}"
        )))
    }
}
