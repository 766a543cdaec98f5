//! Cluster mode when Redis fails (docs/cluster.md, "Failures"): Redis
//! SIGKILLed under publish load and restarted on its append-only file
//! (`appendfsync always`) keeps every acknowledged message and every epoch,
//! and subscribers resume without a gap; restarted with no persistence, the
//! topic's history is gone and every subscriber is told (`reset`, or
//! `epoch_changed` on a resume), never handed a silent partial stream; and
//! Redis frozen with SIGSTOP makes publishes fail promptly with
//! `storage_failed`, never with a false ack, and delivery goes on in order
//! after SIGCONT.
//!
//! `redis-server` must be installed (`apt-get install redis-server`); the
//! tests fail, not skip, without it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use std::time::Duration;

use sockeye_protocol::{ClientMessage, ErrorCode, Payload, Position, ServerMessage};
use tokio::sync::watch;
use tokio::time::Instant;

use support::cluster::{
    Cluster, ClusterOptions, Follow, Follower, Persistence, PublishLoad, Publisher, Seen,
    assert_acked_in, assert_same_stream, expect_delivery, publish, read_history, subscribe,
    try_connect, try_send, wait_until,
};
use support::{Socket, WAIT, try_recv};

/// A subscriber of `topic` that starts on node `first` and, whenever its
/// connection is lost, resumes on the next node.
fn resuming_subscriber(cluster: &Cluster, first: usize, topic: &str) -> Follow {
    let mut targets = cluster.addrs();
    targets.rotate_left(first);
    Follow {
        targets,
        token: cluster.token.clone(),
        topic: topic.into(),
        start: None,
        reconnect: true,
    }
}

/// Publishes a fresh payload on `socket` until one is acked (the nodes may
/// take a moment to reach a restarted or thawed Redis); the ack and its
/// payload. Refusals must be `storage_failed`.
async fn publish_until_acked(socket: &mut Socket, first_id: u64, topic: &str) -> Seen {
    let deadline = Instant::now() + WAIT;
    for id in first_id.. {
        let payload = format!("retry {id}").into_bytes();
        match publish(socket, id, topic, &payload).await {
            Ok((epoch, offset)) => {
                return Seen {
                    epoch,
                    offset,
                    payload,
                };
            }
            Err((ErrorCode::StorageFailed, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("publish {id} after Redis came back: {err:?}"),
        }
    }
    unreachable!("ids run out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sigkilled_and_restarted_on_its_aof_keeps_every_acked_message_and_epoch() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let topic = "cluster.redis-crash";
    let (until_tx, until) = watch::channel(None);
    let mut followers = Vec::new();
    for first in [0, 0, 2, 2] {
        followers.push(Follower::spawn(
            resuming_subscriber(&cluster, first, topic),
            &until,
        ));
    }
    for follower in &mut followers {
        follower.subscribed().await;
    }
    let (stop_tx, stop) = watch::channel(false);
    let mut publisher = Publisher::spawn(
        PublishLoad {
            targets: vec![cluster.addr(1)],
            token: cluster.token.clone(),
            topic: topic.into(),
            label: "through the crash".into(),
            max: 20_000,
            window: 8,
            reconnect: true,
            tolerated: vec![ErrorCode::StorageFailed],
        },
        &stop,
    );
    publisher.wait_acked(300, "before the crash").await;
    cluster.redis.kill().await;
    let at_kill = *publisher.acked.borrow();
    // Publishes meanwhile are refused (or hang until command_timeout).
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.redis.restart(Persistence::AofAlways).await;
    publisher
        .wait_acked(at_kill + 300, "after Redis restarted")
        .await;
    stop_tx.send_replace(true);
    let published = publisher.finish().await;
    let epoch = published.acked[0].epoch;
    assert!(
        published.acked.iter().all(|ack| ack.epoch == epoch),
        "the crash did not change the epoch"
    );
    // Every acknowledged message is in the history every node serves, in
    // the same epoch.
    let mut stream = None;
    for addr in cluster.addrs() {
        let (reply, history) = read_history(
            addr,
            &cluster.token,
            topic,
            Position::After { epoch, offset: 0 },
        )
        .await;
        assert!(
            reply.epoch == epoch && !reply.epoch_changed && reply.complete,
            "{reply:?}"
        );
        assert_acked_in(&published.acked, &history, &format!("history on {addr}"));
        match &stream {
            None => stream = Some(history),
            Some(first) => assert_eq!(first, &history, "every node serves the same history"),
        }
    }
    let stream = stream.unwrap();
    eprintln!(
        "{} acked, {} refused, {} unanswered, {} stored",
        published.acked.len(),
        published.refused.len(),
        published.unanswered.len(),
        stream.len()
    );
    until_tx.send_replace(Some(stream.len() as u64));
    for (index, follower) in followers.into_iter().enumerate() {
        let followed = follower.finish().await;
        assert_same_stream(
            &followed.seen,
            &stream,
            &format!(
                "subscriber {index} (connections {:?})",
                followed.connections
            ),
        );
    }
}

/// What a subscriber that stayed connected through the loss of the topic's
/// history gets: a `reset` to the new epoch and its messages from offset 1,
/// or a closed connection, after which it resumes from where it was and is
/// told `epoch_changed`. Returns the new epoch's messages it received up to
/// `last`.
async fn after_the_loss(
    mut socket: Socket,
    addr: std::net::SocketAddr,
    token: &str,
    topic: &str,
    old: (u64, u64),
    last: u64,
) -> Vec<Seen> {
    let (new_epoch, mut socket) = match try_recv(&mut socket).await {
        Some(ServerMessage::Reset {
            topic: reset,
            epoch,
        }) => {
            assert_eq!(reset, topic);
            eprintln!("the connected subscriber got reset to epoch {epoch}");
            (epoch, socket)
        }
        None => {
            eprintln!("the connected subscriber was disconnected; it resumes");
            let mut socket = try_connect(addr, token).await.unwrap();
            let reply = subscribe(
                &mut socket,
                9,
                topic,
                Some(Position::After {
                    epoch: old.0,
                    offset: old.1,
                }),
            )
            .await
            .unwrap();
            assert!(
                reply.epoch_changed && !reply.complete && reply.next_offset == 1,
                "a resume into a lost history is told so: {reply:?}"
            );
            (reply.epoch, socket)
        }
        Some(other) => {
            panic!("after the history was lost, expected `reset` (or a close), got {other:?}")
        }
    };
    assert_ne!(new_epoch, old.0, "the lost history gets a new epoch");
    let mut seen = Vec::new();
    for offset in 1..=last {
        match try_recv(&mut socket).await {
            Some(ServerMessage::Message(delivery)) => {
                assert_eq!((delivery.epoch, delivery.offset), (new_epoch, offset));
                seen.push(Seen {
                    epoch: new_epoch,
                    offset,
                    payload: delivery.payload.as_binary().unwrap().to_vec(),
                });
            }
            other => panic!("expected offset {offset} of the new epoch, got {other:?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_without_persistence_gives_the_topic_a_new_epoch_and_says_so() {
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 2,
        persistence: Persistence::Nothing,
        ..ClusterOptions::default()
    })
    .await;
    let topic = "cluster.lost";
    let (a, b) = (cluster.addr(0), cluster.addr(1));
    let mut live = try_connect(b, &cluster.token).await.unwrap();
    let subscribed = subscribe(&mut live, 1, topic, None).await.unwrap();
    let old_epoch = subscribed.epoch;
    let mut publisher = try_connect(a, &cluster.token).await.unwrap();
    for n in 1..=10u64 {
        let payload = format!("old {n}");
        let (epoch, offset) = publish(&mut publisher, n, topic, payload.as_bytes())
            .await
            .unwrap();
        assert_eq!((epoch, offset), (old_epoch, n));
        expect_delivery(&mut live, topic, old_epoch, n, payload.as_bytes()).await;
    }
    cluster.redis.kill().await;
    cluster.redis.restart(Persistence::Nothing).await;
    // The first publish that is acked again starts the new epoch.
    let first = publish_until_acked(&mut publisher, 100, topic).await;
    assert_ne!(first.epoch, old_epoch, "the lost history gets a new epoch");
    let mut acked = vec![first.clone()];
    for n in 1..=4u64 {
        let payload = format!("new {n}");
        let (epoch, offset) = publish(&mut publisher, 200 + n, topic, payload.as_bytes())
            .await
            .unwrap();
        assert_eq!((epoch, offset), (first.epoch, first.offset + n));
        acked.push(Seen {
            epoch,
            offset,
            payload: payload.into_bytes(),
        });
    }
    let last = first.offset + 4;
    let (reply, history) = read_history(
        a,
        &cluster.token,
        topic,
        Position::After {
            epoch: first.epoch,
            offset: 0,
        },
    )
    .await;
    assert_eq!((reply.epoch, reply.last_offset), (first.epoch, last));
    assert_acked_in(&acked, &history, "the new epoch's history");
    // The subscriber that stayed connected through it.
    let seen = after_the_loss(live, b, &cluster.token, topic, (old_epoch, 10), last).await;
    assert_eq!(seen, history, "the connected subscriber on node b");
    // A client that was away, resuming on the other node.
    let mut away = try_connect(a, &cluster.token).await.unwrap();
    let resumed = subscribe(
        &mut away,
        1,
        topic,
        Some(Position::After {
            epoch: old_epoch,
            offset: 10,
        }),
    )
    .await
    .unwrap();
    assert!(
        resumed.epoch_changed && !resumed.complete,
        "the resume is told its epoch is gone: {resumed:?}"
    );
    assert_eq!(
        (resumed.epoch, resumed.next_offset, resumed.last_offset),
        (first.epoch, 1, last),
        "{resumed:?}"
    );
    for message in &history {
        expect_delivery(
            &mut away,
            topic,
            message.epoch,
            message.offset,
            &message.payload,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_makes_publishes_fail_promptly_and_delivery_resumes_in_order() {
    // The bound on a refusal: the configured command timeout plus slack for
    // a busy machine. A hang detector with the documented timeout in it,
    // not a speed requirement.
    let command_timeout = Duration::from_secs(1);
    let bound = command_timeout + Duration::from_secs(5);
    let cluster = Cluster::start(ClusterOptions {
        nodes: 2,
        command_timeout: "1s",
        ..ClusterOptions::default()
    })
    .await;
    let topic = "cluster.frozen";
    let (until_tx, until) = watch::channel(None);
    let mut follower = Follower::spawn(resuming_subscriber(&cluster, 1, topic), &until);
    follower.subscribed().await;
    let mut publisher = try_connect(cluster.addr(0), &cluster.token).await.unwrap();
    let mut acked = Vec::new();
    for n in 1..=20u64 {
        let payload = format!("before {n}").into_bytes();
        let (epoch, offset) = publish(&mut publisher, n, topic, &payload).await.unwrap();
        assert_eq!(offset, n);
        acked.push(Seen {
            epoch,
            offset,
            payload,
        });
    }
    let epoch = acked[0].epoch;
    wait_until(&mut follower.progress, 20, "before the freeze").await;

    cluster.redis.freeze();
    let frozen_at = Instant::now();
    // Two rounds of three publishes in flight at once while Redis is frozen:
    // every one is refused with storage_failed, each within the bound.
    let mut id = 100;
    for round in 0..2 {
        let sent = Instant::now();
        let mut waiting = Vec::new();
        for _ in 0..3 {
            id += 1;
            let message = ClientMessage::Publish {
                id,
                topic: topic.into(),
                payload: Payload::binary(format!("frozen {id}").as_bytes()),
                ack: true,
            };
            assert!(try_send(&mut publisher, message).await);
            waiting.push(id);
        }
        while !waiting.is_empty() {
            let reply = tokio::time::timeout(bound, try_recv(&mut publisher))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "round {round}: no reply to {waiting:?} within {bound:?} of Redis freezing"
                    )
                });
            match reply {
                Some(ServerMessage::Error {
                    id: Some(got),
                    code: ErrorCode::StorageFailed,
                    ..
                }) if waiting.contains(&got) => waiting.retain(|w| *w != got),
                other => panic!("while Redis is frozen, expected storage_failed, got {other:?}"),
            }
        }
        assert!(
            sent.elapsed() <= bound,
            "round {round}: refused within {bound:?}"
        );
    }
    // Frozen for a few seconds in all.
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(frozen_at.elapsed())).await;
    cluster.redis.thaw();

    acked.push(publish_until_acked(&mut publisher, 1_000, topic).await);
    for n in 1..=20u64 {
        let payload = format!("after {n}").into_bytes();
        let (epoch, offset) = publish(&mut publisher, 2_000 + n, topic, &payload)
            .await
            .unwrap();
        acked.push(Seen {
            epoch,
            offset,
            payload,
        });
    }
    assert!(
        acked.iter().all(|ack| ack.epoch == epoch),
        "the freeze did not change the epoch"
    );
    // Everything acked is stored (a refused publish may be too: Redis may
    // run it once it wakes up; it is then stored once, at its own offset).
    let (reply, history) = read_history(
        cluster.addr(1),
        &cluster.token,
        topic,
        Position::After { epoch, offset: 0 },
    )
    .await;
    assert!(reply.epoch == epoch && reply.complete, "{reply:?}");
    assert_acked_in(&acked, &history, "the history after the freeze");
    until_tx.send_replace(Some(reply.last_offset));
    let followed = follower.finish().await;
    assert_same_stream(&followed.seen, &history, "the subscriber on node b");
}
