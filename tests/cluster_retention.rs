//! Retention in cluster mode, across nodes: an ephemeral topic (a
//! `store = false` rule) reaches live subscribers on other nodes and has no
//! positions to resume from; a topic trimmed by its `max_messages` rule
//! (trimmed inside the publish script) resumes on another node with an
//! explicit gap, never a silently shortened stream, and the admin API of any
//! node shows the trimmed bounds.
//!
//! `redis-server` must be installed (`apt-get install redis-server`); the
//! tests fail, not skip, without it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use sockeye_protocol::{ClientMessage, ErrorCode, OffsetRange, Payload, Position, ServerMessage};

use support::cluster::{
    Cluster, ClusterOptions, expect_delivery, expect_quiet, listed_topic, publish, subscribe,
    try_connect, try_send,
};
use support::recv;

const RULES: &str = "[[retention]]\npattern = \"live.>\"\nstore = false\n\
                     [[retention]]\npattern = \"short.>\"\nstore = true\nmax_messages = 10\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_topics_cross_nodes_live_and_trimmed_topics_resume_with_a_gap() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 2,
        retention: RULES,
        ..ClusterOptions::default()
    })
    .await;

    // Ephemeral: live on node a, published on node b, no positions.
    let mut live = try_connect(cluster.addr(0), &cluster.token).await.unwrap();
    let reply = subscribe(&mut live, 1, "live.typing", None).await.unwrap();
    assert!(!reply.stored, "{reply:?}");
    let refused = subscribe(
        &mut live,
        2,
        "live.other",
        Some(Position::After {
            epoch: 1,
            offset: 0,
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.0, ErrorCode::PositionUnsupported, "{refused:?}");
    let mut publisher = try_connect(cluster.addr(1), &cluster.token).await.unwrap();
    for n in 1..=20u64 {
        // Fire and forget, as ephemeral publishes usually are; the ping
        // below orders them before what follows.
        let message = ClientMessage::Publish {
            id: n,
            topic: "live.typing".into(),
            payload: Payload::binary(format!("{n}").as_bytes()),
            ack: false,
        };
        assert!(try_send(&mut publisher, message).await);
    }
    for n in 1..=20u64 {
        match recv(&mut live).await {
            ServerMessage::Message(delivery) => {
                assert_eq!(delivery.topic.as_str(), "live.typing");
                assert_eq!(
                    delivery.payload.as_binary(),
                    Some(format!("{n}").as_bytes())
                );
            }
            other => panic!("expected live.typing #{n}, got {other:?}"),
        }
    }
    expect_quiet(&mut live, 3).await;

    // Stored with max_messages = 10: 25 published on node b; a client that
    // had seen offset 5 resumes on node a.
    let mut epoch = 0;
    for n in 1..=25u64 {
        let (e, offset) = publish(
            &mut publisher,
            100 + n,
            "short.feed",
            format!("{n}").as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(offset, n);
        epoch = e;
    }
    let topic = listed_topic(cluster.node(0).admin, &cluster.admin_token, "short.feed").await;
    assert_eq!(topic["last_offset"], 25, "{topic}");
    assert_eq!(topic["first_offset"], 16, "{topic}");
    assert_eq!(topic["stored_messages"], 10, "{topic}");

    let mut resumer = try_connect(cluster.addr(0), &cluster.token).await.unwrap();
    let reply = subscribe(
        &mut resumer,
        1,
        "short.feed",
        Some(Position::After { epoch, offset: 5 }),
    )
    .await
    .unwrap();
    assert!(!reply.complete, "offsets 6..=15 are gone: {reply:?}");
    assert_eq!(
        reply.gap,
        Some(OffsetRange { from: 6, to: 15 }),
        "{reply:?}"
    );
    assert_eq!((reply.epoch, reply.next_offset), (epoch, 16), "{reply:?}");
    for n in 16..=25u64 {
        expect_delivery(
            &mut resumer,
            "short.feed",
            epoch,
            n,
            format!("{n}").as_bytes(),
        )
        .await;
    }
    // Then live, from node b.
    let (_, offset) = publish(&mut publisher, 200, "short.feed", b"26")
        .await
        .unwrap();
    assert_eq!(offset, 26);
    expect_delivery(&mut resumer, "short.feed", epoch, 26, b"26").await;
    expect_quiet(&mut resumer, 2).await;
}
