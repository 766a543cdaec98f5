//! Cluster mode (docs/cluster.md): real `sockeye serve --engine redis`
//! nodes on one real Redis from Debian, driven over the raw wire protocol.
//! Publishers on different nodes make one stream that every subscriber on
//! every node receives whole and in the same order; a client that leaves one
//! node resumes on another with exactly what it missed, then live messages;
//! Redis closing the nodes' PUB/SUB connections costs subscribers nothing
//! (the nodes repair from the streams); and a node refuses to join a
//! cluster with a generated development secret.
//!
//! `redis-server` must be installed (`apt-get install redis-server`); the
//! tests fail, not skip, without it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use std::collections::BTreeSet;

use sockeye_protocol::{Position, ServerMessage};
use tokio::sync::watch;

use support::cluster::{
    Cluster, ClusterOptions, Follow, Follower, Persistence, PublishLoad, Publisher, Redis, Seen,
    assert_acked_in, assert_same_stream, expect_delivery, expect_quiet, listed_topic, member_names,
    node_name, publish, read_history, subscribe, try_connect, wait_for_members, wait_until,
};
use support::{Serve, recv, signal};

/// A live subscriber of `topic` on `node`'s address that must never be
/// disconnected.
fn live_subscriber(cluster: &Cluster, node: usize, topic: &str) -> Follow {
    Follow {
        targets: vec![cluster.addr(node)],
        token: cluster.token.clone(),
        topic: topic.into(),
        start: None,
        reconnect: false,
    }
}

/// A publisher on `node` that must never be disconnected nor refused.
fn steady_publisher(cluster: &Cluster, node: usize, topic: &str, max: u64) -> PublishLoad {
    PublishLoad {
        targets: vec![cluster.addr(node)],
        token: cluster.token.clone(),
        topic: topic.into(),
        label: format!("from {}", node_name(node)),
        max,
        window: 16,
        reconnect: false,
        tolerated: Vec::new(),
    }
}

/// The acks of all `published`, sorted by offset: the stream they make
/// when nothing else was published.
fn by_offset(published: &[support::cluster::Published]) -> Vec<Seen> {
    let mut acked: Vec<Seen> = published.iter().flat_map(|p| p.acked.clone()).collect();
    acked.sort_by_key(|seen| seen.offset);
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_on_three_nodes_make_one_stream_every_subscriber_sees_whole() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let topic = "cluster.order";
    let per_publisher = 300;
    let (until_tx, until) = watch::channel(None);
    // Two live subscribers on each node, subscribed before anything is
    // published: each must get offset 1 onwards.
    let mut followers = Vec::new();
    for node in [0, 0, 1, 1, 2, 2] {
        followers.push(Follower::spawn(
            live_subscriber(&cluster, node, topic),
            &until,
        ));
    }
    for follower in &mut followers {
        follower.subscribed().await;
        assert_eq!(follower.last(), 0, "nothing was published yet");
    }
    let (_stop_tx, stop) = watch::channel(false);
    let publishers: Vec<Publisher> = (0..3)
        .map(|node| {
            Publisher::spawn(
                steady_publisher(&cluster, node, topic, per_publisher),
                &stop,
            )
        })
        .collect();
    let mut published = Vec::new();
    for publisher in publishers {
        published.push(publisher.finish().await);
    }
    for (node, outcome) in published.iter().enumerate() {
        assert_eq!(
            outcome.acked.len() as u64,
            per_publisher,
            "every publish on {} is acked: {outcome:?}",
            node_name(node)
        );
    }
    let stream = by_offset(&published);
    let total = 3 * per_publisher;
    let offsets: Vec<u64> = stream.iter().map(|seen| seen.offset).collect();
    assert_eq!(
        offsets,
        (1..=total).collect::<Vec<_>>(),
        "the acks of all three nodes are offsets 1..={total}, each once"
    );
    let epoch = stream[0].epoch;
    assert!(
        stream.iter().all(|seen| seen.epoch == epoch),
        "one epoch for the topic on every node"
    );
    until_tx.send_replace(Some(total));
    for (index, follower) in followers.into_iter().enumerate() {
        let followed = follower.finish().await;
        assert_same_stream(
            &followed.seen,
            &stream,
            &format!("subscriber {index} on {}", followed.connections[0]),
        );
    }
    // Every node serves the same history, and its admin API lists the
    // topic with the cluster-wide offsets.
    for node in cluster.nodes.iter().flatten() {
        let (reply, history) = read_history(
            node.addr(),
            &cluster.token,
            topic,
            Position::After { epoch, offset: 0 },
        )
        .await;
        assert_eq!(
            (reply.epoch, reply.last_offset),
            (epoch, total),
            "{reply:?}"
        );
        assert_eq!(history, stream, "the history on {}", node.name);
        let listed = listed_topic(node.admin, &cluster.admin_token, topic).await;
        assert_eq!(listed["epoch"], epoch, "{}: {listed}", node.name);
        assert_eq!(listed["last_offset"], total, "{}: {listed}", node.name);
        assert_eq!(listed["first_offset"], 1, "{}: {listed}", node.name);
        assert_eq!(listed["stored_messages"], total, "{}: {listed}", node.name);
    }
    // Each node lists the whole cluster, by the configured names.
    let names: BTreeSet<String> = (0..3).map(node_name).collect();
    for node in cluster.nodes.iter().flatten() {
        let body = wait_for_members(node.admin, &cluster.admin_token, &names).await;
        assert_eq!(member_names(&body), names, "{}: {body}", node.name);
        assert_eq!(body["cluster"], true, "{body}");
        for item in support::cluster::items(&body) {
            let name = item["name"].as_str().unwrap();
            let listed = cluster
                .nodes
                .iter()
                .flatten()
                .find(|n| n.name == name)
                .unwrap();
            assert_eq!(
                item["address"],
                listed.addr().to_string(),
                "{name}'s WebSocket listener: {body}"
            );
            assert_eq!(item["this_node"], name == node.name, "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_node_a_resumes_on_node_c_with_what_node_b_published() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let topic = "cluster.resume";
    let (a, b, c) = (cluster.addr(0), cluster.addr(1), cluster.addr(2));
    let mut on_a = try_connect(a, &cluster.token).await.unwrap();
    let subscribed = subscribe(&mut on_a, 1, topic, None).await.unwrap();
    assert!(subscribed.stored, "{subscribed:?}");
    assert_eq!(subscribed.next_offset, 1, "{subscribed:?}");
    let mut on_b = try_connect(b, &cluster.token).await.unwrap();
    for n in 1..=5u64 {
        let payload = format!("m{n}");
        let (epoch, offset) = publish(&mut on_b, n, topic, payload.as_bytes())
            .await
            .unwrap();
        assert_eq!((epoch, offset), (subscribed.epoch, n));
        expect_delivery(&mut on_a, topic, subscribed.epoch, n, payload.as_bytes()).await;
    }
    on_a.close(None).await.unwrap();
    drop(on_a);
    // Missed while away.
    for n in 6..=10u64 {
        let payload = format!("m{n}");
        let (_, offset) = publish(&mut on_b, n, topic, payload.as_bytes())
            .await
            .unwrap();
        assert_eq!(offset, n);
    }
    // Publishers on B and A keep going while the client resumes on C: the
    // replay must join the live messages with nothing missed or doubled.
    let (_stop_tx, stop) = watch::channel(false);
    let live_from_b = Publisher::spawn(steady_publisher(&cluster, 1, topic, 150), &stop);
    let live_from_a = Publisher::spawn(steady_publisher(&cluster, 0, topic, 150), &stop);
    let mut on_c = try_connect(c, &cluster.token).await.unwrap();
    let resumed = subscribe(
        &mut on_c,
        1,
        topic,
        Some(Position::After {
            epoch: subscribed.epoch,
            offset: 5,
        }),
    )
    .await
    .unwrap();
    assert!(
        resumed.complete && !resumed.epoch_changed && resumed.gap.is_none(),
        "{resumed:?}"
    );
    assert_eq!(
        (resumed.epoch, resumed.next_offset),
        (subscribed.epoch, 6),
        "{resumed:?}"
    );
    assert!(resumed.last_offset >= 10, "{resumed:?}");
    let total = 10 + 300;
    let mut seen = Vec::new();
    for offset in 6..=total {
        match recv(&mut on_c).await {
            ServerMessage::Message(delivery) => {
                assert_eq!(
                    (delivery.epoch, delivery.offset),
                    (subscribed.epoch, offset),
                    "after {} came {}",
                    offset - 1,
                    delivery.offset
                );
                seen.push(Seen {
                    epoch: delivery.epoch,
                    offset,
                    payload: delivery.payload.as_binary().unwrap().to_vec(),
                });
            }
            other => panic!("expected offset {offset}, got {other:?}"),
        }
    }
    expect_quiet(&mut on_c, 2).await;
    // Exactly the missed ones first...
    for (n, message) in (6..=10).zip(&seen) {
        assert_eq!(message.payload, format!("m{n}").into_bytes());
    }
    // ...then every live one, each at the offset its publisher was told.
    let live = [live_from_b.finish().await, live_from_a.finish().await];
    let acked = by_offset(&live);
    assert_eq!(acked.len(), 300, "every live publish is acked");
    assert_acked_in(&acked, &seen, "the resumed subscriber on node c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_keep_a_contiguous_stream_when_redis_closes_the_pubsub_connections() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let topic = "cluster.pubsub";
    let (until_tx, until) = watch::channel(None);
    let mut followers = Vec::new();
    for node in [0, 0, 1, 1, 2, 2] {
        followers.push(Follower::spawn(
            live_subscriber(&cluster, node, topic),
            &until,
        ));
    }
    for follower in &mut followers {
        follower.subscribed().await;
    }
    let kill_pubsub = || async {
        let killed = cluster.redis.kill_pubsub_clients().await;
        assert!(
            killed >= 3,
            "each node holds a PUB/SUB connection while it has subscribers; {killed} closed"
        );
    };
    let no_failures = |outcome: &support::cluster::Published| {
        assert!(
            outcome.refused.is_empty() && outcome.unanswered.is_empty(),
            "publishing does not use the PUB/SUB connection: {:?} refused, {} unanswered",
            outcome.refused,
            outcome.unanswered.len()
        );
    };
    // Under load, from two nodes: messages published while the nodes
    // resubscribe reach no PUB/SUB connection, and the nodes must read them
    // from the stream when a later message shows the gap.
    let (stop_tx, stop) = watch::channel(false);
    let publishers = [
        Publisher::spawn(steady_publisher(&cluster, 0, topic, 5_000), &stop),
        Publisher::spawn(steady_publisher(&cluster, 2, topic, 5_000), &stop),
    ];
    let mut reached = 200;
    for round in 1..=2 {
        for follower in &mut followers {
            wait_until(&mut follower.progress, reached, &format!("round {round}")).await;
        }
        kill_pubsub().await;
        reached = followers.iter().map(Follower::last).max().unwrap() + 300;
    }
    for follower in &mut followers {
        wait_until(&mut follower.progress, reached, "after the load").await;
    }
    stop_tx.send_replace(true);
    let mut published = Vec::new();
    for publisher in publishers {
        let outcome = publisher.finish().await;
        no_failures(&outcome);
        published.push(outcome);
    }
    // A node that stalls (SIGSTOP) while Redis drops its PUB/SUB connection,
    // as Redis does to a node that cannot keep up, and a burst published
    // on another node meanwhile with nothing after it: no later message
    // shows the stalled node the gap, so only its repair when the PUB/SUB
    // connection comes back delivers the burst to its subscribers.
    let (_go_on, go_on) = watch::channel(false);
    for stalled in 0..3 {
        let pid = cluster.node(stalled).serve.pid();
        signal(pid, "STOP").unwrap();
        kill_pubsub().await;
        let mut burst = steady_publisher(&cluster, (stalled + 1) % 3, topic, 20);
        burst.label = format!("burst while {} stalls", node_name(stalled));
        let outcome = Publisher::spawn(burst, &go_on).finish().await;
        signal(pid, "CONT").unwrap();
        no_failures(&outcome);
        let last = outcome.acked.iter().map(|ack| ack.offset).max().unwrap();
        published.push(outcome);
        for follower in &mut followers {
            let what = format!("after the burst while {} stalled", node_name(stalled));
            wait_until(&mut follower.progress, last, &what).await;
        }
    }
    let stream = by_offset(&published);
    let total = stream.len() as u64;
    until_tx.send_replace(Some(total));
    for (index, follower) in followers.into_iter().enumerate() {
        let followed = follower.finish().await;
        assert_eq!(followed.connections.len(), 1, "never disconnected");
        assert_same_stream(
            &followed.seen,
            &stream,
            &format!("subscriber {index} on {}", followed.connections[0]),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_cluster_mode_with_a_generated_development_secret() {
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"), Persistence::Nothing).await;
    let url = redis.url();
    let cluster_args = [
        "--admin-listen",
        "127.0.0.1:0",
        "--engine",
        "redis",
        "--redis-url",
        &url,
    ];
    let refused = Serve::try_start(&dir.path().join("no-secret"), &cluster_args).await;
    let (status, log) = match refused {
        Err(refused) => refused,
        Ok(serve) => panic!("a node without a shared secret serves: {:#?}", serve.log),
    };
    assert!(!status.success(), "{status}");
    assert!(
        log.iter()
            .any(|line| line.to_lowercase().contains("secret")),
        "the refusal says it is about the secret: {log:#?}"
    );
    assert!(
        !dir.path().join("no-secret").join("dev-secret").exists(),
        "no development secret was generated"
    );
    // With a configured secret the same node starts.
    let config = dir.path().join("inline-secret.toml");
    std::fs::write(
        &config,
        "[auth]\nsecret = \"inline-cluster-secret-0123456789abcdef-0123\"\n",
    )
    .unwrap();
    let mut args = cluster_args.to_vec();
    args.extend(["--config", config.to_str().unwrap()]);
    let serve = Serve::start(&dir.path().join("inline"), &args).await;
    serve.terminate().await;
}
