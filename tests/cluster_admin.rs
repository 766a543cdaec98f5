//! Cluster mode as an operator and a wildcard subscriber see it: the admin
//! API of any node lists the cluster's stored topics with cluster-wide
//! offsets (paged by name), reads a topic's history, deletes it so that live
//! subscribers on other nodes get `reset`, and disconnects a connection held
//! by another node; `/metrics` carries the Redis engine's figures; and a
//! wildcard subscriber receives what other nodes publish, each message once,
//! from the moment its subscription is confirmed, even when another
//! subscriber on its node watches one of the topics exactly.
//!
//! `redis-server` must be installed (`apt-get install redis-server`); the
//! tests fail, not skip, without it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use futures_util::StreamExt;
use sockeye_protocol::ServerMessage;
use tokio_tungstenite::tungstenite::Message;

use support::WAIT;
use support::cluster::{
    Cluster, ClusterOptions, admin_get, expect_delivery, expect_quiet, items, listed_topic,
    publish, subscribe, try_connect,
};
use support::{mint, recv};

/// `DELETE http://ADMIN{path}` with `token`: the status and the JSON body.
async fn admin_delete(admin: SocketAddr, token: &str, path: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .unwrap()
        .delete(format!("http://{admin}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|err| panic!("DELETE {path} on {admin}: {err}"));
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or_else(|err| panic!("{err}: {body}"));
    (status, json)
}

/// `GET http://ADMIN/metrics`: the Prometheus text.
async fn metrics(admin: SocketAddr, token: &str) -> String {
    let response = reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .unwrap()
        .get(format!("http://{admin}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Names of a page of `GET /v1/topics`.
fn names(body: &serde_json::Value) -> Vec<String> {
    items(body)
        .iter()
        .map(|item| item["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_of_any_node_sees_and_acts_on_the_whole_cluster() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let token = &cluster.admin_token;

    // Published through node b only.
    let mut publisher = try_connect(b.addr(), &cluster.token).await.unwrap();
    let mut id = 0;
    let mut epochs = BTreeMap::new();
    for (topic, count) in [("ops.alpha", 5u64), ("ops.beta", 3), ("other.gamma", 1)] {
        for n in 1..=count {
            id += 1;
            let (epoch, offset) = publish(&mut publisher, id, topic, format!("{n}").as_bytes())
                .await
                .unwrap();
            assert_eq!(offset, n);
            epochs.insert(topic, epoch);
        }
    }

    // Node a lists them with the cluster's offsets, by prefix, one page at
    // a time.
    let page = admin_get(a.admin, token, "/v1/topics?prefix=ops.").await;
    assert_eq!(names(&page), ["ops.alpha", "ops.beta"], "{page}");
    let alpha = listed_topic(a.admin, token, "ops.alpha").await;
    assert_eq!(alpha["last_offset"], 5, "{alpha}");
    assert_eq!(alpha["stored_messages"], 5, "{alpha}");
    assert_eq!(alpha["epoch"], epochs["ops.alpha"], "{alpha}");
    let first = admin_get(a.admin, token, "/v1/topics?prefix=ops.&limit=1").await;
    assert_eq!(names(&first), ["ops.alpha"], "{first}");
    assert_eq!(first["next"], "ops.alpha", "{first}");
    let second = admin_get(
        a.admin,
        token,
        "/v1/topics?prefix=ops.&limit=1&after=ops.alpha",
    )
    .await;
    assert_eq!(names(&second), ["ops.beta"], "{second}");
    assert!(second["next"].is_null(), "the last page: {second}");
    let everything = admin_get(a.admin, token, "/v1/topics").await;
    assert_eq!(
        names(&everything),
        ["ops.alpha", "ops.beta", "other.gamma"],
        "{everything}"
    );

    // Node c reads the history node b wrote.
    let history = admin_get(c.admin, token, "/v1/topics/ops.alpha/history").await;
    assert_eq!(history["epoch"], epochs["ops.alpha"], "{history}");
    let offsets: Vec<u64> = items(&history)
        .iter()
        .map(|item| item["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5], "{history}");

    // Deleting the history on node a resets a live subscriber on node c.
    let mut watcher = try_connect(c.addr(), &cluster.token).await.unwrap();
    subscribe(&mut watcher, 1, "ops.alpha", None).await.unwrap();
    let (status, reset) = admin_delete(a.admin, token, "/v1/topics/ops.alpha/history").await;
    assert_eq!(status, 200, "{reset}");
    let new_epoch = reset["epoch"].as_u64().unwrap();
    assert_ne!(new_epoch, epochs["ops.alpha"], "{reset}");
    match recv(&mut watcher).await {
        ServerMessage::Reset { topic, epoch } => {
            assert_eq!((topic.as_str(), epoch), ("ops.alpha", new_epoch));
        }
        other => panic!("expected reset on node c, got {other:?}"),
    }
    // The next publish, on node b, starts the new epoch at 1, and node c
    // delivers it.
    let (epoch, offset) = publish(&mut publisher, 100, "ops.alpha", b"after")
        .await
        .unwrap();
    assert_eq!((epoch, offset), (new_epoch, 1));
    expect_delivery(&mut watcher, "ops.alpha", new_epoch, 1, b"after").await;
    let alpha = listed_topic(b.admin, token, "ops.alpha").await;
    assert_eq!(
        (&alpha["epoch"], &alpha["last_offset"]),
        (&serde_json::json!(new_epoch), &serde_json::json!(1)),
        "{alpha}"
    );

    // A connection on node b, disconnected through node a.
    let data_dir = cluster.dir.path().join("node-a");
    let config = cluster.configs[0].to_str().unwrap();
    let victim_token = mint(
        &data_dir,
        &["--sub", "victim", "--ttl", "1h", "--config", config],
    )
    .await;
    let mut victim = try_connect(b.addr(), &victim_token).await.unwrap();
    let on_b = admin_get(b.admin, token, "/v1/connections?limit=1000").await;
    let victim_id = items(&on_b)
        .iter()
        .find(|connection| connection["sub"] == "victim")
        .unwrap_or_else(|| panic!("node b lists the victim: {on_b}"))["id"]
        .as_u64()
        .unwrap();
    let on_a = admin_get(a.admin, token, "/v1/connections?limit=1000").await;
    assert!(
        items(&on_a).iter().all(|c| c["sub"] != "victim"),
        "node a lists only its own connections: {on_a}"
    );
    let (status, body) = admin_delete(
        a.admin,
        token,
        &format!("/v1/connections/{victim_id}?node=node-b&reason=moving%20you"),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match victim.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("the victim is closed within the wait")
    .expect("the close has a code");
    assert_eq!(u16::from(close.code), 4001, "{close:?}");
    assert_eq!(close.reason.as_str(), "moving you");

    // The engine's figures are on every node's /metrics.
    let text = metrics(b.admin, token).await;
    for name in [
        "sockeye_redis_publish_batch_seconds",
        "sockeye_redis_publish_batch_size",
        "sockeye_redis_pubsub_reconnects",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_subscriber_gets_every_node_s_messages_once_from_its_reply_on() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 2,
        ..ClusterOptions::default()
    })
    .await;
    // On node a: a wildcard subscriber, and an exact subscriber of one of
    // the topics it matches (so node a gets room.a by two routes).
    let mut wildcard = try_connect(cluster.addr(0), &cluster.token).await.unwrap();
    let mut exact = try_connect(cluster.addr(0), &cluster.token).await.unwrap();
    // Connected first, so the first publish follows the wildcard reply as
    // closely as the test can make it.
    let mut publisher = try_connect(cluster.addr(1), &cluster.token).await.unwrap();
    subscribe(&mut exact, 1, "room.a", None).await.unwrap();
    subscribe(&mut wildcard, 1, "room.*", None).await.unwrap();

    // Published on node b right after the replies.
    let rounds = 100u64;
    let mut epochs = BTreeMap::new();
    for n in 1..=rounds {
        for (index, topic) in ["room.a", "room.b"].into_iter().enumerate() {
            let id = n * 2 + index as u64;
            let (epoch, offset) = publish(&mut publisher, id, topic, format!("{n}").as_bytes())
                .await
                .unwrap();
            assert_eq!(offset, n);
            epochs.insert(topic, epoch);
        }
    }
    // Not matched by the filter: must not arrive.
    publish(&mut publisher, 10_000, "room.a.deeper", b"no")
        .await
        .unwrap();

    // The wildcard subscriber: each topic's offsets 1..=rounds, in order,
    // each once, interleaved however the topics' streams interleave.
    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..rounds * 2 {
        match recv(&mut wildcard).await {
            ServerMessage::Message(delivery) => {
                let expected = next.entry(delivery.topic.to_string()).or_insert(1);
                assert_eq!(
                    delivery.offset, *expected,
                    "{} in order, each once",
                    delivery.topic
                );
                assert_eq!(delivery.epoch, epochs[delivery.topic.as_str()]);
                assert_eq!(
                    delivery.payload.as_binary(),
                    Some(format!("{expected}").as_bytes())
                );
                *expected += 1;
            }
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
    assert_eq!(
        next,
        BTreeMap::from([("room.a".into(), rounds + 1), ("room.b".into(), rounds + 1)])
    );
    expect_quiet(&mut wildcard, 2).await;
    // The exact subscriber: room.a whole, nothing of room.b.
    for n in 1..=rounds {
        expect_delivery(
            &mut exact,
            "room.a",
            epochs["room.a"],
            n,
            format!("{n}").as_bytes(),
        )
        .await;
    }
    expect_quiet(&mut exact, 2).await;
}
