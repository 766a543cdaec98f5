//! What hostile but authenticated clients can make a real `sockeye serve`
//! hold or spend is bounded:
//!
//! - subscribers that never read pin at most their outbound queue's byte
//!   budget plus one replay batch each, not every queued frame;
//! - topics that were published to once and then left idle cost no CPU,
//!   ephemeral topics without subscribers are not kept, and new stored
//!   topics past `store.max_topics` are refused with `too_many_topics`.
//!
//! Memory and CPU are read from `/proc` for the broker process. The bounds
//! are an order of magnitude below what the unbounded broker used.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use std::path::Path;
use std::time::Duration;

use futures_util::SinkExt;
use sockeye_protocol::{ClientMessage, Compression, ErrorCode, Payload, Position, ServerMessage};
use tokio_tungstenite::tungstenite::Message;

use support::{Serve, Socket, connect, mint, recv, send};

/// Resident memory of `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// CPU time `pid` has used (user + system), in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the `(comm)` one; utime and stime are the 12th and 13th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn write_config(dir: &Path, body: &str) -> String {
    let path = dir.join("bounded-cost.toml");
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_owned()
}

async fn publish_raw(socket: &mut Socket, id: u64, topic: &str, payload: &[u8], ack: bool) {
    let message = ClientMessage::Publish {
        id,
        topic: topic.into(),
        payload: Payload::binary(payload),
        ack,
    };
    socket
        .send(Message::Binary(
            message.encode_frame(&Compression::default()),
        ))
        .await
        .unwrap();
}

const BIG: usize = 900 * 1024;
const BIG_MESSAGES: u64 = 60;
const STALLED: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_that_never_read_pin_a_bounded_number_of_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[admin]\nenabled = false\n\
         [limits]\nmax_frame_size = \"2 MiB\"\nmax_inflated_size = \"4 MiB\"\npublish_rate = 0\n\
         [store]\ncache_capacity = \"8 MiB\"\n\
         [websocket]\ncompression_threshold = \"8 MiB\"\n\
         [[retention]]\npattern = \">\"\nmax_messages = 1000\nmax_bytes = \"512 MiB\"\n",
    );
    let broker = Serve::start(dir.path(), &["--config", &config]).await;
    let pid = broker.pid();
    let token = mint(dir.path(), &["--sub", "slow", "--ttl", "1h"]).await;
    let mut publisher = connect(broker.addr, &token).await;
    for id in 1..=BIG_MESSAGES {
        let mut payload = vec![(id % 251) as u8; BIG];
        payload[..8].copy_from_slice(&id.to_be_bytes());
        publish_raw(&mut publisher, id, "big.topic", &payload, true).await;
        assert!(matches!(
            recv(&mut publisher).await,
            ServerMessage::Published { .. }
        ));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss(pid);
    // Ten clients ask for the whole history and then never read.
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let mut socket = connect(broker.addr, &token).await;
        send(
            &mut socket,
            ClientMessage::Subscribe {
                id: 1,
                topic: "big.topic".into(),
                position: Some(Position::Oldest),
            },
        )
        .await;
        stalled.push(socket);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pinned = rss(pid).saturating_sub(before);
    let history = BIG_MESSAGES * BIG as u64;
    eprintln!(
        "{STALLED} stalled subscribers of a {} MiB history pin {} MiB",
        history >> 20,
        pinned >> 20
    );
    // Per connection: a 4 MiB queue, a 1 MiB replay batch, the socket's
    // write buffer (about two frames): ~9 MiB; ten of them with slack.
    assert!(
        pinned < 150 << 20,
        "{STALLED} stalled subscribers pin {} MiB (the history is {} MiB)",
        pinned >> 20,
        history >> 20
    );
    // Nothing was dropped: a stalled client that starts reading gets it all.
    let mut reader = stalled.pop().unwrap();
    assert!(matches!(
        recv(&mut reader).await,
        ServerMessage::Subscribed(_)
    ));
    for expected in 1..=BIG_MESSAGES {
        match recv(&mut reader).await {
            ServerMessage::Message(delivery) => {
                assert_eq!(delivery.offset, expected);
                let data = delivery.payload.as_binary().unwrap();
                assert_eq!(data.len(), BIG);
                assert_eq!(u64::from_be_bytes(data[..8].try_into().unwrap()), expected);
            }
            other => panic!("expected offset {expected}, got {other:?}"),
        }
    }
    drop(stalled);
    broker.terminate().await;
}

const DISTINCT: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_topics_cost_no_cpu_and_new_stored_topics_past_the_cap_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[limits]\npublish_rate = 0\n\
             [store]\ntrim_interval = \"50ms\"\nmax_topics = {DISTINCT}\n\
             [[retention]]\npattern = \"flood.live.>\"\nstore = false\n\
             [[retention]]\npattern = \">\"\nmax_messages = 100\n"
        ),
    );
    let broker = Serve::start(
        dir.path(),
        &["--config", &config, "--admin-listen", "127.0.0.1:0"],
    )
    .await;
    let pid = broker.pid();
    let admin = broker.listen_address("admin API").unwrap();
    let token = mint(dir.path(), &["--sub", "flood", "--ttl", "1h"]).await;
    let admin_token = mint(dir.path(), &["--sub", "ops", "--admin", "--ttl", "1h"]).await;
    let http = reqwest::Client::new();
    let stats = || async {
        http.get(format!("http://{admin}/v1/stats"))
            .bearer_auth(&admin_token)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let rss_before = rss(pid);
    let mut socket = connect(broker.addr, &token).await;
    // Stored topics, each published to once, up to the cap; and as many
    // ephemeral ones nobody subscribes to.
    for n in 1..=DISTINCT {
        publish_raw(&mut socket, n, &format!("flood.stored.{n}"), b"x", false).await;
        publish_raw(&mut socket, n, &format!("flood.live.{n}"), b"x", false).await;
    }
    // One acked publish more: the cap is reached, and a new topic is refused.
    publish_raw(&mut socket, 1, "flood.stored.one-too-many", b"x", true).await;
    match recv(&mut socket).await {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::TooManyTopics),
        other => panic!("expected too_many_topics, got {other:?}"),
    }
    // Existing stored topics still take publishes.
    publish_raw(&mut socket, 2, "flood.stored.7", b"y", true).await;
    match recv(&mut socket).await {
        ServerMessage::Published { offset, .. } => assert_eq!(offset, 2),
        other => panic!("expected published, got {other:?}"),
    }
    let after_flood = stats().await;
    assert_eq!(
        after_flood["store"]["stored_topics"], DISTINCT,
        "{after_flood}"
    );
    assert_eq!(
        after_flood["topics"], DISTINCT,
        "ephemeral topics without subscribers are not kept: {after_flood}"
    );
    // Idle now: the broker must not spend CPU per topic.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks_before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_ticks = cpu_ticks(pid) - ticks_before;
    let rss_grown = rss(pid).saturating_sub(rss_before);
    eprintln!(
        "{DISTINCT} idle stored topics: {idle_ticks} CPU ticks in 5 s, RSS +{} MiB ({} B per topic)",
        rss_grown >> 20,
        rss_grown / DISTINCT
    );
    // 5 s of one core are 500 ticks; a broker walking every topic per
    // trim tick used most of them.
    assert!(
        idle_ticks <= 25,
        "an idle broker with {DISTINCT} topics used {idle_ticks} ticks in 5 s"
    );
    assert!(
        rss_grown / DISTINCT < 4096,
        "{} bytes of memory per idle stored topic",
        rss_grown / DISTINCT
    );
    broker.terminate().await;
}
