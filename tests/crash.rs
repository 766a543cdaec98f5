//! Crash safety: a real `sockeye serve` child process is killed with SIGKILL
//! while clients publish with acks in `fsync` mode; after each restart on the
//! same data directory, every acknowledged message must be there with its
//! payload, at its offset, in one contiguous stream.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sockeye_protocol::{ClientMessage, Compression, Payload, Position, ServerMessage, frame};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const BIN: &str = env!("CARGO_BIN_EXE_sockeye");
const TOPIC: &str = "crash.test";
const WAIT: Duration = Duration::from_secs(30);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn spawn_broker(data_dir: &Path, addr: SocketAddr) -> Child {
    // Retain everything the test publishes, so any missing offset is loss.
    let config = data_dir.join("crash-test.toml");
    std::fs::write(
        &config,
        "[admin]\nenabled = false\n[store]\ndurability = \"fsync\"\n\n\
         [[retention]]\npattern = \">\"\nmax_messages = 10000000\nmax_bytes = \"4 GiB\"\n",
    )
    .unwrap();
    Command::new(BIN)
        .args(["serve", "--listen", &addr.to_string(), "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn token(data_dir: &Path) -> String {
    let output = Command::new(BIN)
        .args(["token", "--sub", "crash", "--ttl", "1h", "--data-dir"])
        .arg(data_dir)
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

async fn connect(addr: SocketAddr, token: &str) -> Socket {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        match tokio_tungstenite::connect_async(request).await {
            Ok((mut socket, _)) => {
                // The welcome frame.
                recv(&mut socket).await.unwrap();
                return socket;
            }
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("the broker never accepted: {err}"),
        }
    }
}

async fn recv(socket: &mut Socket) -> Option<ServerMessage> {
    loop {
        match tokio::time::timeout(WAIT, socket.next()).await.ok()?? {
            Ok(Message::Binary(data)) => {
                let body = frame::open(&data, 64 << 20).unwrap();
                return Some(ServerMessage::decode(&body).unwrap());
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn payload_for(client: u64, seq: u64) -> Vec<u8> {
    format!("client {client} message {seq}").into_bytes()
}

/// Publishes with acks until the connection dies; returns what was acked,
/// as offset -> payload.
async fn publish_until_killed(
    addr: SocketAddr,
    token: String,
    client: u64,
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
            if socket
                .send(Message::Binary(
                    message.encode_frame(&Compression::default()),
                ))
                .await
                .is_err()
            {
                return acked;
            }
            sent.insert(next, payload_for(client, next));
            next += 1;
        }
        match recv(&mut socket).await {
            Some(ServerMessage::Published { id, offset, .. }) => {
                let payload = sent.remove(&id).unwrap();
                acked.insert(offset, payload);
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => return acked,
        }
    }
}

/// Reads the whole stored stream and checks every acked message is in it.
async fn verify(addr: SocketAddr, token: &str, acked: &BTreeMap<u64, Vec<u8>>) -> u64 {
    let mut socket = connect(addr, token).await;
    let subscribe = ClientMessage::Subscribe {
        id: 1,
        topic: TOPIC.into(),
        position: Some(Position::Oldest),
    };
    socket
        .send(Message::Binary(
            subscribe.encode_frame(&Compression::default()),
        ))
        .await
        .unwrap();
    let last = match recv(&mut socket).await {
        Some(ServerMessage::Subscribed(reply)) => {
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
            Some(ServerMessage::Message(delivery)) => {
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
    let token = token(dir.path()).await;
    let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for cycle in 0..3 {
        let addr = free_port();
        let mut broker = spawn_broker(dir.path(), addr);
        // Everything acked before earlier kills is still there.
        let before = verify(addr, &token, &acked).await;
        let publishers: Vec<_> = (0..4)
            .map(|client| tokio::spawn(publish_until_killed(addr, token.clone(), client)))
            .collect();
        // Let them publish, then kill the broker without warning.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        broker.start_kill().unwrap();
        broker.wait().await.unwrap();
        let mut acked_this_cycle = 0;
        for publisher in publishers {
            let got = publisher.await.unwrap();
            acked_this_cycle += got.len();
            for (offset, payload) in got {
                assert!(
                    acked.insert(offset, payload).is_none(),
                    "offset {offset} was acked twice"
                );
            }
        }
        assert!(acked_this_cycle > 0, "cycle {cycle}: nothing was acked");
        eprintln!("cycle {cycle}: {before} stored before, {acked_this_cycle} acked before SIGKILL");
    }
    let addr = free_port();
    let _broker = spawn_broker(dir.path(), addr);
    let last = verify(addr, &token, &acked).await;
    assert!(last as usize >= acked.len());
}
