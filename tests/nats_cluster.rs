//! The NATS test harness itself: three `nats-server` processes form one JetStream cluster on
//! 127.0.0.1 that agrees on a meta leader, keeps one after its leader is killed, takes the
//! killed node back when it restarts, and is gone once the handle drops. Every cluster test
//! builds on this.

mod nats;

use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_one_jetstream_cluster_that_survives_its_leader() {
    let Some(mut cluster) = nats::start(3).await else {
        return;
    };
    let leader = cluster
        .meta_leader(0)
        .await
        .expect("a meta leader once ready");
    for i in 1..3 {
        assert_eq!(
            cluster.meta_leader(i).await.as_deref(),
            Some(leader.as_str()),
            "node {i} sees another meta leader"
        );
    }
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.client_port).collect();

    // Kill the leader: the two left elect another one.
    let gone = cluster
        .nodes
        .iter()
        .position(|n| n.name == leader)
        .expect("the leader is one of the nodes");
    cluster.kill(gone);
    let survivor = (gone + 1) % 3;
    let deadline = Instant::now() + Duration::from_secs(60);
    let new_leader = loop {
        match cluster.meta_leader(survivor).await {
            Some(l) if l != leader => break l,
            _ if Instant::now() > deadline => {
                panic!(
                    "no new meta leader after killing {leader}: {}",
                    cluster.node_log(survivor)
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_ne!(new_leader, leader);

    // Restarted on its ports and store, the killed node rejoins: ready means it is healthy
    // and sees the leader the others elected.
    cluster.restart(gone).await.unwrap();
    assert!(
        cluster.meta_leader(gone).await.is_some(),
        "the restarted node sees no meta leader"
    );

    drop(cluster);
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "a NATS node still listens on {port} after the cluster dropped"
        );
    }
}
