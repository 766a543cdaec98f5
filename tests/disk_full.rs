//! A full disk: a real `sockeye serve` keeps its data on a 48 MiB tmpfs
//! that a filler file then fills. Every acked publish gets exactly one
//! reply, promptly (`published`, or `storage_failed` once the store fails);
//! `/readyz` answers 503 while it fails; the log says so a few times, not
//! once per request; and once the filler is deleted the broker works again
//! by itself, without a restart. In `fsync` mode a publish answered
//! `storage_failed` is not stored, and every `published` one is.
//!
//! Mounting a tmpfs needs root, as CI runs; without it the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sockeye_protocol::{ClientMessage, ErrorCode, Payload, Position, ServerMessage};

use support::{Serve, Socket, WAIT, connect, mint, recv, send};

const TOPIC: &str = "disk.full";
/// The longest any one acked publish may wait for its reply. A hang
/// detector, far above a flush on tmpfs.
const REPLY_WAIT: Duration = Duration::from_secs(5);

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("`mount` runs");
        assert!(
            status.success(),
            "mounting a tmpfs failed ({status}): this test needs root"
        );
        Self {
            path,
            _parent: parent,
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Writes a file until the filesystem is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    // Whatever was buffered: the point is that no byte is left.
    let _ = file.sync_all();
}

#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Published(u64),
    StorageFailed,
}

/// One acked publish and its one reply, within [`REPLY_WAIT`].
async fn publish(socket: &mut Socket, id: u64) -> Reply {
    send(
        socket,
        ClientMessage::Publish {
            id,
            topic: TOPIC.into(),
            payload: Payload::binary(&payload(id)),
            ack: true,
        },
    )
    .await;
    let reply = tokio::time::timeout(REPLY_WAIT, recv(socket))
        .await
        .unwrap_or_else(|_| panic!("publish {id} got no reply within {REPLY_WAIT:?}"));
    match reply {
        ServerMessage::Published {
            id: got, offset, ..
        } => {
            assert_eq!(got, id);
            Reply::Published(offset)
        }
        ServerMessage::Error {
            id: Some(got),
            code: ErrorCode::StorageFailed,
            ..
        } => {
            assert_eq!(got, id);
            Reply::StorageFailed
        }
        other => panic!("publish {id}: unexpected {other:?}"),
    }
}

fn payload(id: u64) -> Vec<u8> {
    let mut payload = format!("publish {id} ").into_bytes();
    payload.resize(4_000, b'.');
    payload
}

async fn readyz(client: &reqwest::Client, admin: SocketAddr) -> u16 {
    client
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Log lines at warn or error level so far.
fn loud_lines(broker: &Serve) -> usize {
    broker
        .later
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains("ERROR") || line.contains(" WARN"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_publishes_promptly_and_the_broker_recovers_by_itself() {
    let tmpfs = Tmpfs::mount("48m");
    let data = tmpfs.path.join("data");
    let broker = Serve::start(&data, &["--admin-listen", "127.0.0.1:0"]).await;
    let admin = broker.listen_address("admin API").unwrap();
    let token = mint(&data, &["--sub", "disk", "--ttl", "1h"]).await;
    let client = reqwest::Client::new();
    let mut socket = connect(broker.addr, &token).await;
    let mut next_id = 0u64;
    let mut published: BTreeMap<u64, u64> = BTreeMap::new();
    let mut failed = Vec::new();
    for _ in 0..50 {
        next_id += 1;
        match publish(&mut socket, next_id).await {
            Reply::Published(offset) => published.insert(offset, next_id),
            Reply::StorageFailed => panic!("the disk is not full yet"),
        };
    }
    assert_eq!(readyz(&client, admin).await, 200);

    for round in 0..2 {
        let filler = tmpfs.path.join("filler");
        fill(&filler);
        let loud_before = loud_lines(&broker);
        // Publish until the store notices; every publish is answered.
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < WAIT,
                "round {round}: publishes kept succeeding on a full disk"
            );
            next_id += 1;
            match publish(&mut socket, next_id).await {
                Reply::Published(offset) => {
                    published.insert(offset, next_id);
                }
                Reply::StorageFailed => {
                    failed.push(next_id);
                    break;
                }
            }
        }
        // While it fails: prompt refusals, /readyz 503, a quiet log.
        let failing_from = Instant::now();
        let mut saw_not_ready = false;
        while failing_from.elapsed() < Duration::from_secs(3) {
            next_id += 1;
            match publish(&mut socket, next_id).await {
                Reply::StorageFailed => failed.push(next_id),
                Reply::Published(offset) => {
                    panic!("round {round}: offset {offset} acked on a full disk")
                }
            }
            if !saw_not_ready {
                saw_not_ready = readyz(&client, admin).await == 503;
            }
        }
        assert!(
            saw_not_ready,
            "round {round}: /readyz said 200 while the store failed"
        );
        let loud = loud_lines(&broker) - loud_before;
        assert!(
            loud <= 5,
            "round {round}: {loud} warn/error lines for one failure episode"
        );

        // Room again: the broker recovers without a restart.
        std::fs::remove_file(&filler).unwrap();
        let recovering = Instant::now();
        loop {
            assert!(
                recovering.elapsed() < WAIT,
                "round {round}: the store did not recover after space came back"
            );
            next_id += 1;
            match publish(&mut socket, next_id).await {
                Reply::Published(offset) => {
                    published.insert(offset, next_id);
                    break;
                }
                Reply::StorageFailed => {
                    failed.push(next_id);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        assert_eq!(
            readyz(&client, admin).await,
            200,
            "round {round}: ready again"
        );
        eprintln!(
            "round {round}: {} published, {} failed so far",
            published.len(),
            failed.len()
        );
    }

    // What was acked is stored, in order; what failed is not.
    let mut reader = connect(broker.addr, &token).await;
    send(
        &mut reader,
        ClientMessage::Subscribe {
            id: 1,
            topic: TOPIC.into(),
            position: Some(Position::Oldest),
        },
    )
    .await;
    let reply = match recv(&mut reader).await {
        ServerMessage::Subscribed(reply) => reply,
        other => panic!("subscribe failed: {other:?}"),
    };
    assert!(reply.complete);
    let mut stored = BTreeMap::new();
    for expected in reply.next_offset..=reply.last_offset {
        match recv(&mut reader).await {
            ServerMessage::Message(delivery) => {
                assert_eq!(delivery.offset, expected, "the stream is contiguous");
                stored.insert(
                    delivery.offset,
                    delivery.payload.as_binary().unwrap().to_vec(),
                );
            }
            other => panic!("expected offset {expected}, got {other:?}"),
        }
    }
    for (offset, id) in &published {
        assert_eq!(
            stored.get(offset),
            Some(&payload(*id)),
            "acked publish {id} is stored"
        );
    }
    let failed_payloads: std::collections::HashSet<Vec<u8>> =
        failed.iter().map(|id| payload(*id)).collect();
    assert!(
        stored.values().all(|body| !failed_payloads.contains(body)),
        "a publish answered storage_failed was stored"
    );
    broker.terminate().await;
}
