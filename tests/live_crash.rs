//! What live subscribers saw survives SIGKILL: a real `sockeye serve` is
//! killed repeatedly while publishers publish (with and without acks) and
//! subscribers record every `(epoch, offset, payload)` they receive live.
//! After each restart on the same data directory:
//!
//! - no `(epoch, offset)` was ever delivered with two different payloads
//!   (an offset is never reused);
//! - in `fsync` mode, a resume from any offset a subscriber saw yields every
//!   message after it, contiguous, including everything anyone saw live;
//! - in `interval` mode, where a crash may lose what was delivered, a resume
//!   yields each message seen live after it or an explicit `gap` covering
//!   it, never silence, and a resume across a gap is not `complete`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sockeye_protocol::{ClientMessage, Payload, Position, ServerMessage};
use tokio::sync::watch;

use support::{Serve, WAIT, connect, mint, recv, send, try_recv};

const TOPIC: &str = "live.crash";
const CYCLES: usize = 4;
/// Messages every subscriber must have seen live before each SIGKILL.
const SEEN_BEFORE_KILL: usize = 1_500;

async fn start_broker(data_dir: &Path, durability: &str) -> Serve {
    let config = data_dir.join("live-crash.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nenabled = false\n[store]\ndurability = \"{durability}\"\n\
             flush_interval = \"200ms\"\n\
             [limits]\npublish_rate = 0\n\n\
             [[retention]]\npattern = \">\"\nmax_messages = 10000000\nmax_bytes = \"4 GiB\"\n"
        ),
    )
    .unwrap();
    Serve::start(data_dir, &["--config", config.to_str().unwrap()]).await
}

/// Everything any subscriber saw live, by `(epoch, offset)`; panics on the
/// first offset delivered with a second payload.
#[derive(Debug, Default)]
struct Observed {
    seen: BTreeMap<(u64, u64), Vec<u8>>,
}

impl Observed {
    fn record(&mut self, epoch: u64, offset: u64, payload: &[u8]) {
        match self.seen.get(&(epoch, offset)) {
            Some(earlier) => assert_eq!(
                earlier.as_slice(),
                payload,
                "offset {offset} of epoch {epoch} was delivered with two payloads: {:?} and {:?}",
                String::from_utf8_lossy(earlier),
                String::from_utf8_lossy(payload)
            ),
            None => {
                self.seen.insert((epoch, offset), payload.to_vec());
            }
        }
    }
}

/// Publishes until the connection dies, alternating acked and unacked
/// publishes with a window in flight; returns what was acked.
async fn publish_until_killed(
    addr: SocketAddr,
    token: String,
    cycle: usize,
    client: u64,
) -> BTreeMap<u64, Vec<u8>> {
    let mut socket = connect(addr, &token).await;
    let mut acked = BTreeMap::new();
    let mut in_flight = BTreeMap::new();
    let mut seq = 0u64;
    loop {
        while in_flight.len() < 8 {
            seq += 1;
            let payload = format!("cycle {cycle} client {client} seq {seq}").into_bytes();
            let ack = seq.is_multiple_of(2);
            let message = ClientMessage::Publish {
                id: seq,
                topic: TOPIC.into(),
                payload: Payload::binary(&payload),
                ack,
            };
            let frame = tungstenite_binary(&message);
            use futures_util::SinkExt;
            match tokio::time::timeout(WAIT, socket.send(frame)).await {
                Ok(Ok(())) => {}
                _ => return acked,
            }
            if ack {
                in_flight.insert(seq, payload);
            }
        }
        match try_recv(&mut socket).await {
            Some(ServerMessage::Published { id, offset, .. }) => {
                acked.insert(offset, in_flight.remove(&id).unwrap());
            }
            Some(ServerMessage::Error { code, .. }) => panic!("publish refused: {code}"),
            Some(other) => panic!("unexpected {other:?}"),
            None => return acked,
        }
    }
}

fn tungstenite_binary(message: &ClientMessage) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::Binary(
        message.encode_frame(&sockeye_protocol::Compression::default()),
    )
}

/// Where a subscriber stands: the last `(epoch, offset)` it processed.
type Cursor = Option<(u64, u64)>;

/// Subscribes from `cursor` (or the oldest message) and records everything
/// until the connection dies; returns the new cursor. In `fsync` mode every
/// delivery must follow the previous one; in `interval` mode a `gap` may
/// skip offsets, and is then recorded in `gaps`.
async fn subscribe_until_killed(
    addr: SocketAddr,
    token: String,
    mut cursor: Cursor,
    observed: Arc<Mutex<Observed>>,
    gaps: Arc<Mutex<Vec<(u64, u64, u64)>>>,
    fsync: bool,
    seen_now: watch::Sender<usize>,
) -> Cursor {
    let mut socket = connect(addr, &token).await;
    let position = match cursor {
        Some((epoch, offset)) => Position::After { epoch, offset },
        None => Position::Oldest,
    };
    send(
        &mut socket,
        ClientMessage::Subscribe {
            id: 1,
            topic: TOPIC.into(),
            position: Some(position),
        },
    )
    .await;
    let reply = match try_recv(&mut socket).await {
        Some(ServerMessage::Subscribed(reply)) => reply,
        Some(other) => panic!("subscribe failed: {other:?}"),
        None => return cursor,
    };
    if let Some((epoch, _)) = cursor {
        assert_eq!(reply.epoch, epoch, "a SIGKILL never changes the epoch");
        assert!(!reply.epoch_changed);
    }
    if fsync {
        assert!(
            reply.complete,
            "fsync mode loses nothing a subscriber saw: {reply:?}"
        );
    }
    let mut expected = reply.next_offset;
    let mut count = 0;
    loop {
        match try_recv(&mut socket).await {
            Some(ServerMessage::Message(delivery)) => {
                assert_eq!(
                    delivery.offset, expected,
                    "deliveries are contiguous (or a gap frame says why not)"
                );
                observed.lock().unwrap().record(
                    delivery.epoch,
                    delivery.offset,
                    delivery.payload.as_binary().unwrap(),
                );
                cursor = Some((delivery.epoch, delivery.offset));
                expected = delivery.offset + 1;
                count += 1;
                seen_now.send_replace(count);
            }
            Some(ServerMessage::Gap { epoch, range, .. }) => {
                assert!(!fsync, "fsync mode never reports a gap: {range:?}");
                assert_eq!(range.from, expected);
                gaps.lock().unwrap().push((epoch, range.from, range.to));
                expected = range.to + 1;
                if let Some((epoch, _)) = cursor {
                    // The cursor moves past the gap: those offsets are gone.
                    cursor = Some((epoch, range.to));
                }
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => return cursor,
        }
    }
}

/// Resumes after `(epoch, after)` on a running broker and reads the stream
/// to its end: each message with its payload by offset, and the gaps.
async fn read_after(
    addr: SocketAddr,
    token: &str,
    epoch: u64,
    after: u64,
) -> (BTreeMap<u64, Vec<u8>>, Vec<(u64, u64)>, bool) {
    let mut socket = connect(addr, token).await;
    send(
        &mut socket,
        ClientMessage::Subscribe {
            id: 1,
            topic: TOPIC.into(),
            position: Some(Position::After {
                epoch,
                offset: after,
            }),
        },
    )
    .await;
    let reply = match recv(&mut socket).await {
        ServerMessage::Subscribed(reply) => reply,
        other => panic!("subscribe failed: {other:?}"),
    };
    assert_eq!(reply.epoch, epoch);
    let mut messages = BTreeMap::new();
    let mut gaps = Vec::new();
    let mut next = reply.next_offset;
    while next <= reply.last_offset {
        match recv(&mut socket).await {
            ServerMessage::Message(delivery) => {
                assert_eq!(delivery.offset, next);
                messages.insert(
                    delivery.offset,
                    delivery.payload.as_binary().unwrap().to_vec(),
                );
                next += 1;
            }
            ServerMessage::Gap { range, .. } => {
                assert_eq!(range.from, next);
                gaps.push((range.from, range.to));
                next = range.to + 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    (messages, gaps, reply.complete)
}

async fn run(durability: &str) {
    let fsync = durability == "fsync";
    let dir = tempfile::tempdir().unwrap();
    let observed = Arc::new(Mutex::new(Observed::default()));
    let gaps = Arc::new(Mutex::new(Vec::new()));
    let mut acked: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut cursors: Vec<Cursor> = vec![None, None];
    let mut token = None;
    for cycle in 0..CYCLES {
        let broker = start_broker(dir.path(), durability).await;
        if token.is_none() {
            token = Some(mint(dir.path(), &["--sub", "crash", "--ttl", "1h"]).await);
        }
        let token = token.clone().unwrap();
        let mut subscribers = Vec::new();
        let mut progress = Vec::new();
        for cursor in &cursors {
            let (seen_now, seen) = watch::channel(0);
            progress.push(seen);
            subscribers.push(tokio::spawn(subscribe_until_killed(
                broker.addr,
                token.clone(),
                *cursor,
                Arc::clone(&observed),
                Arc::clone(&gaps),
                fsync,
                seen_now,
            )));
        }
        let publishers: Vec<_> = (0..2)
            .map(|client| {
                tokio::spawn(publish_until_killed(
                    broker.addr,
                    token.clone(),
                    cycle,
                    client,
                ))
            })
            .collect();
        for seen in &mut progress {
            tokio::time::timeout(WAIT * 2, seen.wait_for(|count| *count >= SEEN_BEFORE_KILL))
                .await
                .expect("subscribers see live traffic before the kill")
                .unwrap();
        }
        broker.kill().await;
        for publisher in publishers {
            for (offset, payload) in tokio::time::timeout(WAIT, publisher)
                .await
                .unwrap()
                .unwrap()
            {
                assert!(
                    acked.insert(offset, payload).is_none(),
                    "offset {offset} acked twice"
                );
            }
        }
        for (slot, subscriber) in cursors.iter_mut().zip(subscribers) {
            *slot = tokio::time::timeout(WAIT, subscriber)
                .await
                .unwrap()
                .unwrap();
        }
        eprintln!(
            "{durability} cycle {cycle}: {} offsets seen live so far, {} acked, cursors {cursors:?}",
            observed.lock().unwrap().seen.len(),
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let broker = start_broker(dir.path(), durability).await;
    let token = token.unwrap();
    let observed = std::mem::take(&mut *observed.lock().unwrap());
    let epochs: BTreeSet<u64> = observed.seen.keys().map(|(epoch, _)| *epoch).collect();
    assert_eq!(epochs.len(), 1, "one epoch throughout: {epochs:?}");
    let epoch = *epochs.first().unwrap();
    // Resume from offsets spread over everything seen, and from the last one.
    let seen_offsets: Vec<u64> = observed.seen.keys().map(|(_, offset)| *offset).collect();
    let step = (seen_offsets.len() / 6).max(1);
    let mut starts: Vec<u64> = seen_offsets.iter().step_by(step).copied().collect();
    starts.push(*seen_offsets.last().unwrap());
    for after in starts {
        let (messages, stream_gaps, complete) = read_after(broker.addr, &token, epoch, after).await;
        if fsync {
            assert!(
                stream_gaps.is_empty(),
                "fsync: no gap after {after}: {stream_gaps:?}"
            );
            assert!(complete);
        } else if !stream_gaps.is_empty() {
            assert!(!complete, "a resume across a gap is not complete");
        }
        for ((_, offset), payload) in observed.seen.range((epoch, after + 1)..) {
            match messages.get(offset) {
                Some(stored) => assert_eq!(stored, payload, "offset {offset} kept its payload"),
                None => assert!(
                    !fsync
                        && stream_gaps
                            .iter()
                            .any(|(from, to)| (from..=to).contains(&offset)),
                    "offset {offset}, seen live, is neither replayed after {after} nor inside a gap"
                ),
            }
        }
        if fsync {
            for (offset, payload) in acked.range(after + 1..) {
                assert_eq!(
                    messages.get(offset),
                    Some(payload),
                    "acked offset {offset} is there"
                );
            }
        }
    }
    if !fsync {
        eprintln!(
            "interval: gaps reported to live subscribers: {:?}",
            gaps.lock().unwrap()
        );
    }
    broker.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_fsync_mode_what_subscribers_saw_live_survives_sigkill() {
    run("fsync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_interval_mode_no_offset_is_reused_and_losses_are_explicit_gaps() {
    run("interval").await;
}
