//! Crash safety: a real `sockeye serve` child process is killed with SIGKILL
//! while clients publish with acks in `fsync` mode; after each restart on the
//! same data directory, every acknowledged message must be there with its
//! payload, at its offset, in one contiguous stream.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use futures_util::SinkExt;
use sockeye_protocol::{ClientMessage, Compression, Payload, Position, ServerMessage};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use support::{Serve, WAIT, connect, mint, recv, send, try_recv};

const TOPIC: &str = "crash.test";
/// Acks all publishers together must have received before each SIGKILL, so
/// every cycle kills the broker in the middle of real acked traffic.
const ACKS_BEFORE_KILL: usize = 2_000;

async fn start_broker(data_dir: &Path) -> Serve {
    // Retain everything the test publishes, so any missing offset is loss.
    let config = data_dir.join("crash-test.toml");
    std::fs::write(
        &config,
        "[admin]\nenabled = false\n[store]\ndurability = \"fsync\"\n\n\
         [[retention]]\npattern = \">\"\nmax_messages = 10000000\nmax_bytes = \"4 GiB\"\n",
    )
    .unwrap();
    Serve::start(data_dir, &["--config", config.to_str().unwrap()]).await
}

fn payload_for(client: u64, seq: u64) -> Vec<u8> {
    format!("client {client} message {seq}").into_bytes()
}

/// Publishes with acks until the connection dies; returns what was acked,
/// as offset -> payload, and reports each ack on `acks` as it comes.
async fn publish_until_killed(
    addr: SocketAddr,
    token: String,
    client: u64,
    acks: mpsc::UnboundedSender<()>,
) -> BTreeMap<u64, Vec<u8>> {
    let mut socket = connect(addr, &token).await;
    let mut acked = BTreeMap::new();
    let mut sent = BTreeMap::new();
    // Keep several publishes in flight so acks share flushes.
    let window = 16;
    let mut next = 1u64;
    loop {
        while sent.len() < window {
            let message = ClientMessage::Publish {
                id: next,
                topic: TOPIC.into(),
                payload: Payload::binary(&payload_for(client, next)),
                ack: true,
            };
            let frame = Message::Binary(message.encode_frame(&Compression::default()));
            let sent_in_time = tokio::time::timeout(WAIT, socket.send(frame))
                .await
                .expect("a publish is written or fails within the wait");
            if sent_in_time.is_err() {
                return acked;
            }
            sent.insert(next, payload_for(client, next));
            next += 1;
        }
        match try_recv(&mut socket).await {
            Some(ServerMessage::Published { id, offset, .. }) => {
                let payload = sent.remove(&id).unwrap();
                acked.insert(offset, payload);
                // The receiver is gone once the kill was decided.
                let _ = acks.send(());
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => return acked,
        }
    }
}

/// Reads the whole stored stream and checks every acked message is in it.
async fn verify(addr: SocketAddr, token: &str, acked: &BTreeMap<u64, Vec<u8>>) -> u64 {
    let mut socket = connect(addr, token).await;
    send(
        &mut socket,
        ClientMessage::Subscribe {
            id: 1,
            topic: TOPIC.into(),
            position: Some(Position::Oldest),
        },
    )
    .await;
    let last = match recv(&mut socket).await {
        ServerMessage::Subscribed(reply) => {
            assert_eq!(reply.next_offset, 1, "nothing was trimmed");
            reply.last_offset
        }
        other => panic!("subscribe failed: {other:?}"),
    };
    let highest_acked = acked.keys().next_back().copied().unwrap_or(0);
    assert!(
        last >= highest_acked,
        "acked offset {highest_acked} is missing: the store ends at {last}"
    );
    for expected in 1..=last {
        match recv(&mut socket).await {
            ServerMessage::Message(delivery) => {
                assert_eq!(delivery.offset, expected, "offsets are contiguous");
                if let Some(payload) = acked.get(&expected) {
                    assert_eq!(
                        delivery.payload.as_binary(),
                        Some(payload.as_slice()),
                        "acked offset {expected} kept its payload"
                    );
                }
            }
            other => panic!("expected offset {expected}, got {other:?}"),
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acked_message_survives_repeated_sigkill_in_fsync_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut minted = None;
    for cycle in 0..3 {
        let broker = start_broker(dir.path()).await;
        // Minted once the first broker serves, with the secret it created.
        if minted.is_none() {
            minted = Some(mint(dir.path(), &["--sub", "crash", "--ttl", "1h"]).await);
        }
        let token = minted.as_deref().unwrap();
        // Everything acked before earlier kills is still there.
        let before = verify(broker.addr, token, &acked).await;
        let (acks, mut acked_so_far) = mpsc::unbounded_channel();
        let publishers: Vec<_> = (0..4)
            .map(|client| {
                tokio::spawn(publish_until_killed(
                    broker.addr,
                    token.to_owned(),
                    client,
                    acks.clone(),
                ))
            })
            .collect();
        drop(acks);
        // Let them publish until enough is acked, then kill the broker
        // without warning. The deadline only catches a stalled broker.
        let enough = tokio::time::timeout(WAIT * 2, async {
            for _ in 0..ACKS_BEFORE_KILL {
                acked_so_far
                    .recv()
                    .await
                    .expect("the publishers run until the broker dies");
            }
        })
        .await;
        assert!(
            enough.is_ok(),
            "cycle {cycle}: fewer than {ACKS_BEFORE_KILL} acks within {:?}",
            WAIT * 2
        );
        drop(acked_so_far);
        broker.kill().await;
        let mut acked_this_cycle = 0;
        for publisher in publishers {
            let got = tokio::time::timeout(WAIT, publisher)
                .await
                .expect("a publisher notices the broker died")
                .unwrap();
            acked_this_cycle += got.len();
            for (offset, payload) in got {
                assert!(
                    acked.insert(offset, payload).is_none(),
                    "offset {offset} was acked twice"
                );
            }
        }
        assert!(
            acked_this_cycle >= ACKS_BEFORE_KILL,
            "cycle {cycle}: {acked_this_cycle} acked, {ACKS_BEFORE_KILL} were reported"
        );
        eprintln!("cycle {cycle}: {before} stored before, {acked_this_cycle} acked before SIGKILL");
    }
    let broker = start_broker(dir.path()).await;
    let last = verify(broker.addr, minted.as_deref().unwrap(), &acked).await;
    assert!(last as usize >= acked.len());
    broker.terminate().await;
}
