//! The example cluster of `deploy/cluster/` as shipped (its `redis.conf`,
//! its three node files, its `nginx.conf`, with free loopback ports in place
//! of the fixed ones), under publish load through nginx, loses a node to
//! SIGKILL: the node's clients reconnect through nginx to the other two and
//! resume with no gap and no duplicate, and every acknowledged publish is
//! readable afterwards.
//!
//! `redis-server` and nginx must be installed (`apt-get install
//! redis-server nginx`); the test fails, not skips, without them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use sockeye_protocol::Position;
use tokio::sync::watch;

use support::cluster::{
    Follow, Follower, Nginx, PublishLoad, Publisher, Redis, admin_get, assert_acked_in,
    assert_same_stream, items, node_name, read_history, wait_for_members, wait_until,
};
use support::{Serve, mint_in};

const SUBSCRIBERS: usize = 6;
const PUBLISHERS: usize = 2;

/// A file of `deploy/cluster/`.
fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/cluster")
        .join(name)
}

struct Node {
    serve: Serve,
    admin: SocketAddr,
}

/// Starts node `index` with `deploy/cluster/node-X.toml` in `workdir`
/// (where its relative `run/...` paths point), on free ports, reaching
/// Redis at `url` through the environment.
async fn start_node(workdir: &Path, index: usize, url: &str) -> Node {
    let name = node_name(index);
    let config = deploy_file(&format!("{name}.toml"));
    let serve = Serve::try_start_in(
        Some(workdir),
        &[("SOCKEYE_ENGINE__REDIS__URL", url)],
        &workdir.join("run").join(&name),
        &[
            "--config",
            config.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
    )
    .await
    .unwrap_or_else(|(status, log)| panic!("{name} exited ({status}): {log:#?}"));
    let admin = serve.listen_address("admin API").unwrap();
    Node { serve, admin }
}

/// The `sub` of every connection the node at `admin` lists as its own.
async fn connected_subjects(admin: SocketAddr, token: &str) -> Vec<String> {
    let body = admin_get(admin, token, "/v1/connections?limit=1000").await;
    items(&body)
        .iter()
        .map(|connection| connection["sub"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_behind_nginx_costs_its_clients_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start_with(
        &dir.path().join("redis"),
        Some(&deploy_file("redis.conf")),
        &[],
    )
    .await;
    let workdir = dir.path().join("cluster");
    std::fs::create_dir_all(workdir.join("run")).unwrap();
    std::fs::write(
        workdir.join("run/secret"),
        "nginx-cluster-test-secret-0123456789abcdef-01234567\n",
    )
    .unwrap();
    let url = redis.url();
    let mut nodes = Vec::new();
    for index in 0..3 {
        nodes.push(Some(start_node(&workdir, index, &url).await));
    }
    let config = deploy_file("node-a.toml");
    let config = config.to_str().unwrap();
    let data_dir = workdir.join("run/node-a");
    let mint = |sub: String, admin: bool| {
        let workdir = workdir.clone();
        let data_dir = data_dir.clone();
        async move {
            let mut args = vec!["--sub", &sub, "--ttl", "1h", "--config", config];
            if admin {
                args.push("--admin");
            }
            mint_in(Some(&workdir), &data_dir, &args).await
        }
    };
    let admin_token = mint("ops".into(), true).await;
    let addrs: Vec<SocketAddr> = nodes.iter().flatten().map(|node| node.serve.addr).collect();
    let mut nginx = Nginx::start(&dir.path().join("nginx"), [addrs[0], addrs[1], addrs[2]]).await;

    // Every client through nginx, each with its own `sub` so the nodes'
    // connection lists say who is where.
    let topic = "cluster.failover";
    let (until_tx, until) = watch::channel(None);
    let mut followers = Vec::new();
    for index in 0..SUBSCRIBERS {
        let follow = Follow {
            targets: vec![nginx.addr],
            token: mint(format!("sub-{index}"), false).await,
            topic: topic.into(),
            start: None,
            reconnect: true,
        };
        let mut follower = Follower::spawn(follow, &until);
        follower.subscribed().await;
        followers.push(follower);
    }
    let (stop_tx, stop) = watch::channel(false);
    let mut publishers = Vec::new();
    for index in 0..PUBLISHERS {
        let load = PublishLoad {
            targets: vec![nginx.addr],
            token: mint(format!("pub-{index}"), false).await,
            topic: topic.into(),
            label: format!("pub-{index}"),
            // Bounded; the deploy files retain 10,000 messages a topic.
            max: 3_000,
            window: 8,
            reconnect: true,
            tolerated: Vec::new(),
        };
        publishers.push(Publisher::spawn(load, &stop));
    }
    for follower in &mut followers {
        wait_until(&mut follower.progress, 300, "before the kill").await;
    }

    // Who is on which node: kill the one with the most subscribers.
    let mut placement: BTreeMap<String, usize> = BTreeMap::new();
    for (index, node) in nodes.iter().enumerate() {
        let node = node.as_ref().unwrap();
        for sub in connected_subjects(node.admin, &admin_token).await {
            assert!(
                placement.insert(sub.clone(), index).is_none(),
                "{sub} is connected to two nodes"
            );
        }
    }
    let on = |node: usize| -> Vec<usize> {
        (0..SUBSCRIBERS)
            .filter(|index| placement.get(&format!("sub-{index}")) == Some(&node))
            .collect()
    };
    assert_eq!(placement.len(), SUBSCRIBERS + PUBLISHERS, "{placement:?}");
    let victim = (0..3).max_by_key(|node| on(*node).len()).unwrap();
    let victims_subscribers = on(victim);
    assert!(!victims_subscribers.is_empty(), "{placement:?}");
    eprintln!(
        "killing {} with subscribers {victims_subscribers:?}; placement {placement:?}",
        node_name(victim)
    );
    nodes[victim].take().unwrap().serve.kill().await;

    let resume_past = followers.iter().map(Follower::last).max().unwrap() + 300;
    for follower in &mut followers {
        wait_until(&mut follower.progress, resume_past, "after the kill").await;
    }
    // Every subscriber is now on one of the survivors.
    let mut now_on: Vec<String> = Vec::new();
    for node in nodes.iter().flatten() {
        now_on.extend(connected_subjects(node.admin, &admin_token).await);
    }
    now_on.retain(|sub| sub.starts_with("sub-"));
    now_on.sort();
    let subscribers: Vec<String> = (0..SUBSCRIBERS).map(|i| format!("sub-{i}")).collect();
    assert_eq!(now_on, subscribers, "each subscriber is on one survivor");
    stop_tx.send_replace(true);
    let mut acked = Vec::new();
    for publisher in publishers {
        let published = publisher.finish().await;
        assert!(published.refused.is_empty(), "{:?}", published.refused);
        acked.extend(published.acked);
    }
    let epoch = acked[0].epoch;
    assert!(acked.iter().all(|ack| ack.epoch == epoch), "one epoch");

    // Every acked publish is readable on both survivors, which agree.
    let reader = mint("reader".into(), false).await;
    let mut stream = None;
    for node in nodes.iter().flatten() {
        let (reply, history) = read_history(
            node.serve.addr,
            &reader,
            topic,
            Position::After { epoch, offset: 0 },
        )
        .await;
        assert!(reply.epoch == epoch && reply.complete, "{reply:?}");
        assert_acked_in(&acked, &history, &format!("history on {}", node.serve.addr));
        match &stream {
            None => stream = Some(history),
            Some(first) => assert_eq!(first, &history, "the survivors agree"),
        }
    }
    let stream = stream.unwrap();
    until_tx.send_replace(Some(stream.len() as u64));
    for (index, follower) in followers.into_iter().enumerate() {
        let followed = follower.finish().await;
        assert_same_stream(&followed.seen, &stream, &format!("sub-{index}"));
        if victims_subscribers.contains(&index) {
            assert!(
                followed.connections.len() >= 2,
                "sub-{index} was on the killed node and reconnected"
            );
        }
    }
    // The survivors still list each other as the cluster's nodes.
    let survivors: BTreeSet<String> = (0..3)
        .filter(|index| *index != victim)
        .map(node_name)
        .collect();
    for node in nodes.iter().flatten() {
        wait_for_members(node.admin, &admin_token, &survivors).await;
    }
    nginx.assert_running();
}
