//! A damaged data directory is never served as if it were whole: a real
//! `sockeye serve` stores 3,000 acknowledged messages and stops; sled's `db`
//! file is then truncated or overwritten in several ways. On the next start
//! the broker either refuses (naming the damaged topics, or because sled
//! cannot open the file) or serves every acknowledged message under the same
//! epoch; it never serves a shorter stream under the old epoch. With
//! `--reset-damaged-topics` it starts and serves a damaged topic under a new
//! epoch, so a resuming client is told (`epoch_changed`), and counts it in
//! `/v1/stats` and `/metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use futures_util::SinkExt;
use sockeye_protocol::{ClientMessage, Compression, Payload, Position, ServerMessage};
use tokio_tungstenite::tungstenite::Message;

use support::{Serve, connect, mint, recv, send};

const TOPIC: &str = "damage.test";
const MESSAGES: u64 = 3_000;

fn config(data_dir: &Path) -> String {
    let path = data_dir.join("damage-test.toml");
    std::fs::write(
        &path,
        "[store]\ndurability = \"fsync\"\n[limits]\npublish_rate = 0\n\n\
         [[retention]]\npattern = \">\"\nmax_messages = 10000000\nmax_bytes = \"4 GiB\"\n",
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn payload(seq: u64) -> Vec<u8> {
    let mut payload = format!("message {seq} ").into_bytes();
    payload.resize(1_000, b'x');
    payload
}

/// Publishes `MESSAGES` acked messages; returns the epoch.
async fn fill(addr: std::net::SocketAddr, token: &str) -> u64 {
    let mut socket = connect(addr, token).await;
    let mut acked = 0;
    let mut sent = 0;
    let mut epoch = 0;
    while acked < MESSAGES {
        while sent < MESSAGES && sent - acked < 64 {
            sent += 1;
            let message = ClientMessage::Publish {
                id: sent,
                topic: TOPIC.into(),
                payload: Payload::binary(&payload(sent)),
                ack: true,
            };
            socket
                .send(Message::Binary(
                    message.encode_frame(&Compression::default()),
                ))
                .await
                .unwrap();
        }
        match recv(&mut socket).await {
            ServerMessage::Published { epoch: e, .. } => {
                epoch = e;
                acked += 1;
            }
            other => panic!("publish failed: {other:?}"),
        }
    }
    epoch
}

/// Reads the topic from its oldest message: `(epoch, offset -> payload)`.
async fn read_all(addr: std::net::SocketAddr, token: &str) -> (u64, BTreeMap<u64, Vec<u8>>) {
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
    let reply = match recv(&mut socket).await {
        ServerMessage::Subscribed(reply) => reply,
        other => panic!("subscribe failed: {other:?}"),
    };
    let mut messages = BTreeMap::new();
    let mut next = reply.next_offset;
    while next <= reply.last_offset {
        match recv(&mut socket).await {
            ServerMessage::Message(delivery) => {
                messages.insert(
                    delivery.offset,
                    delivery.payload.as_binary().unwrap().to_vec(),
                );
                next = delivery.offset + 1;
            }
            ServerMessage::Gap { range, .. } => next = range.to + 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    (reply.epoch, messages)
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Cut the file to this fraction of its length.
    TruncateTo(f64),
    /// Cut the file to this many bytes.
    TruncateToBytes(u64),
    /// Overwrite 64 bytes at this fraction of its length.
    Overwrite(f64),
}

fn damage(db: &Path, how: Damage) {
    let len = std::fs::metadata(db).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    match how {
        Damage::TruncateTo(fraction) => file.set_len((len as f64 * fraction) as u64).unwrap(),
        Damage::TruncateToBytes(bytes) => file.set_len(bytes.min(len)).unwrap(),
        Damage::Overwrite(fraction) => {
            let mut file = file;
            file.seek(SeekFrom::Start((len as f64 * fraction) as u64))
                .unwrap();
            file.write_all(&[0xa5; 64]).unwrap();
        }
    }
    drop(std::fs::File::open(db).unwrap().sync_all());
}

/// What one damaged start did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Served every acked message under the old epoch.
    Whole,
    /// Refused, reporting lost messages (our check).
    RefusedAsDamaged,
    /// Refused because sled could not open or read the store.
    RefusedByStore,
}

async fn one_variant(how: Damage) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let admin = ["--config", &config, "--admin-listen", "127.0.0.1:0"];
    let broker = Serve::start(dir.path(), &admin).await;
    let token = mint(dir.path(), &["--sub", "damage", "--ttl", "1h"]).await;
    let epoch = fill(broker.addr, &token).await;
    broker.terminate().await;
    damage(&dir.path().join("store").join("db"), how);

    match Serve::try_start(dir.path(), &admin).await {
        Ok(broker) => {
            let (served_epoch, messages) = read_all(broker.addr, &token).await;
            assert_eq!(
                served_epoch, epoch,
                "{how:?}: started without reporting damage"
            );
            for seq in 1..=MESSAGES {
                assert_eq!(
                    messages.get(&seq),
                    Some(&payload(seq)),
                    "{how:?}: served the old epoch without acked offset {seq}"
                );
            }
            broker.terminate().await;
            Outcome::Whole
        }
        Err((status, log)) => {
            assert!(!status.success(), "{how:?}: a refusal exits non-zero");
            let text = log.join("\n");
            if text.contains("lost acknowledged messages") {
                assert!(
                    text.contains(TOPIC) && text.contains("--reset-damaged-topics"),
                    "{how:?}: the refusal names the topic and the way out: {text}"
                );
                assert!(
                    log.iter()
                        .any(|line| line.contains("ERROR") && line.contains(TOPIC)),
                    "{how:?}: the damage is logged at error level: {text}"
                );
                start_with_new_epochs(dir.path(), &admin, &token, epoch).await;
                Outcome::RefusedAsDamaged
            } else {
                eprintln!("{how:?}: refused by the store: {text}");
                Outcome::RefusedByStore
            }
        }
    }
}

/// `--reset-damaged-topics`: serves the damaged topic under a new epoch,
/// tells a resuming client, counts it.
async fn start_with_new_epochs(dir: &Path, admin: &[&str], token: &str, old_epoch: u64) {
    let mut args = admin.to_vec();
    args.push("--reset-damaged-topics");
    let broker = Serve::start(dir, &args).await;
    let mut socket = connect(broker.addr, token).await;
    send(
        &mut socket,
        ClientMessage::Subscribe {
            id: 1,
            topic: TOPIC.into(),
            position: Some(Position::After {
                epoch: old_epoch,
                offset: 10,
            }),
        },
    )
    .await;
    match recv(&mut socket).await {
        ServerMessage::Subscribed(reply) => {
            assert!(reply.epoch_changed, "the resumer is told: {reply:?}");
            assert_ne!(reply.epoch, old_epoch);
            assert!(!reply.complete);
        }
        other => panic!("subscribe failed: {other:?}"),
    }
    let admin_addr = broker.listen_address("admin API").unwrap();
    let admin_token = mint(dir, &["--sub", "ops", "--admin", "--ttl", "1h"]).await;
    let client = reqwest::Client::new();
    let stats: serde_json::Value = client
        .get(format!("http://{admin_addr}/v1/stats"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["store"]["damaged_topics"], 1, "{stats}");
    let metrics = client
        .get(format!("http://{admin_addr}/metrics"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sockeye_store_damaged_topics_total 1"),
        "{metrics}"
    );
    broker.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_is_refused_or_whole_never_shortened() {
    let variants = [
        Damage::TruncateToBytes(4096),
        Damage::TruncateTo(0.5),
        Damage::TruncateTo(0.25),
        Damage::TruncateTo(0.9),
        Damage::Overwrite(0.5),
        Damage::Overwrite(0.1),
        Damage::Overwrite(0.02),
    ];
    let mut outcomes = Vec::new();
    for how in variants {
        let outcome = one_variant(how).await;
        eprintln!("{how:?}: {outcome:?}");
        outcomes.push(outcome);
    }
    assert!(
        outcomes.contains(&Outcome::RefusedAsDamaged),
        "no variant lost data that the check caught: {outcomes:?}"
    );
}
