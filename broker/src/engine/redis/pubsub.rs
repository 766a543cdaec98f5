//! The node's one PUB/SUB connection: subscribes the channels of topics
//! with local subscribers (and every topic's channel while local wildcard
//! subscriptions exist), hands each message to the hub, and comes back
//! after losing the connection, then repairs every watched topic from the
//! heads in Redis.
//!
//! # Envelopes
//!
//! `kind u8 | id [u8; 8] | epoch u64 BE | offset u64 BE | body`: kind 1 is a
//! message (epoch and offset 0 for an ephemeral topic), kind 2 a reset (the
//! new epoch; no body). `id` is random per publish: while both a topic's
//! channel and the every-topic pattern are subscribed, Redis delivers a
//! message twice, and the second copy is recognised by it.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sockeye_protocol::TopicName;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{ControlMessage, RedisEngine};
use crate::stats::Stats;

/// Recent envelope ids remembered while two routes may deliver a message.
const RECENT_IDS: usize = 65_536;

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What the engine asks of the PUB/SUB connection.
#[derive(Debug)]
pub(super) enum Command {
    /// Subscribe a topic's channel; `done` once Redis confirmed it.
    Watch {
        topic: TopicName,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    /// Unsubscribe a topic's channel.
    Unwatch { topic: TopicName },
    /// Subscribe (or not) the pattern of every topic's channel.
    EveryTopic(bool),
    /// Answer once the pattern of every topic's channel is subscribed:
    /// commands run in order, so this answers after the `EveryTopic(true)`
    /// sent before it was confirmed by Redis.
    ConfirmEveryTopic {
        done: oneshot::Sender<Result<(), String>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EnvelopeKind {
    Message,
    Reset,
}

/// A parsed PUB/SUB message.
#[derive(Debug)]
pub(super) struct Envelope<'a> {
    pub(super) kind: EnvelopeKind,
    pub(super) id: [u8; 8],
    pub(super) epoch: u64,
    pub(super) offset: u64,
    pub(super) body: &'a [u8],
}

impl<'a> Envelope<'a> {
    pub(super) fn parse(bytes: &'a [u8]) -> Option<Self> {
        let kind = match *bytes.first()? {
            1 => EnvelopeKind::Message,
            2 => EnvelopeKind::Reset,
            _ => return None,
        };
        let id = bytes.get(1..9)?.try_into().ok()?;
        let epoch = u64::from_be_bytes(bytes.get(9..17)?.try_into().ok()?);
        let offset = u64::from_be_bytes(bytes.get(17..25)?.try_into().ok()?);
        Some(Self {
            kind,
            id,
            epoch,
            offset,
            body: &bytes[25..],
        })
    }
}

/// Ids of messages already handed to the hub, bounded.
#[derive(Debug, Default)]
struct RecentIds {
    set: HashSet<[u8; 8]>,
    order: VecDeque<[u8; 8]>,
}

impl RecentIds {
    /// True if `id` was not seen yet (and remembers it).
    fn first_time(&mut self, id: [u8; 8]) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > RECENT_IDS
            && let Some(oldest) = self.order.pop_front()
        {
            self.set.remove(&oldest);
        }
        true
    }
}

pub(super) async fn run(
    engine: Arc<RedisEngine>,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shutdown: CancellationToken,
) {
    let mut wait = RETRY_FIRST;
    let mut connected_before = false;
    let mut recent = RecentIds::default();
    loop {
        let connection = tokio::select! {
            () = shutdown.cancelled() => return,
            connection = tokio::time::timeout(engine.config.connect_timeout, client.get_async_pubsub()) => connection,
        };
        let pubsub = match connection {
            Ok(Ok(pubsub)) => pubsub,
            failed => {
                let reason = match failed {
                    Ok(Err(err)) => err.to_string(),
                    _ => "timed out".to_owned(),
                };
                tracing::debug!(cause = %reason, "the PUB/SUB connection failed; retrying");
                fail_pending(&mut commands, &reason);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(RETRY_MAX);
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        // Everything this node watches, again.
        let watched: Vec<String> = engine
            .watched
            .lock()
            .expect("no code panics holding the watched set")
            .iter()
            .map(|topic| engine.keys.channel(topic.as_str()))
            .collect();
        let mut every_topic = engine
            .every_topic
            .load(std::sync::atomic::Ordering::Acquire);
        let resubscribed = async {
            sink.subscribe(engine.keys.control()).await?;
            for chunk in watched.chunks(512) {
                sink.subscribe(chunk).await?;
            }
            if every_topic {
                sink.psubscribe(engine.keys.every_channel()).await?;
            }
            Ok::<(), redis::RedisError>(())
        };
        if let Err(err) = resubscribed.await {
            tracing::debug!(cause = %err, "resubscribing failed; reconnecting");
            continue;
        }
        wait = RETRY_FIRST;
        if connected_before {
            Stats::add(&engine.metrics.pubsub_reconnects, 1);
            tracing::warn!(
                topics = watched.len(),
                "the PUB/SUB connection to Redis came back; repairing what this node missed"
            );
            engine.repair_all().await;
        }
        connected_before = true;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    let applied = match command {
                        Command::Watch { topic, done } => {
                            let result = sink.subscribe(engine.keys.channel(topic.as_str())).await;
                            let ok = result.is_ok();
                            if let Some(done) = done {
                                let _ = done.send(result.map_err(|err| err.to_string()));
                            }
                            ok
                        }
                        Command::Unwatch { topic } => {
                            let still_watched = engine
                                .watched
                                .lock()
                                .expect("no code panics holding the watched set")
                                .contains(&topic);
                            still_watched
                                || sink.unsubscribe(engine.keys.channel(topic.as_str())).await.is_ok()
                        }
                        Command::EveryTopic(on) if on != every_topic => {
                            every_topic = on;
                            let pattern = engine.keys.every_channel();
                            if on {
                                sink.psubscribe(pattern).await.is_ok()
                            } else {
                                sink.punsubscribe(pattern).await.is_ok()
                            }
                        }
                        Command::EveryTopic(_) => true,
                        Command::ConfirmEveryTopic { done } => {
                            let _ = done.send(if every_topic {
                                Ok(())
                            } else {
                                Err("no wildcard subscription is held".to_owned())
                            });
                            true
                        }
                    };
                    if !applied {
                        break;
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else { break };
                    let channel = message.get_channel_name();
                    if channel == engine.keys.control() {
                        match serde_json::from_slice::<ControlMessage>(message.get_payload_bytes()) {
                            Ok(control) => engine.on_control(control),
                            Err(err) => tracing::warn!(cause = %err, "ignoring a malformed control message"),
                        }
                        continue;
                    }
                    let Some(topic) = engine.keys.topic_of(channel) else { continue };
                    let payload = message.get_payload_bytes();
                    if every_topic {
                        // Both routes may deliver it: hand it over once.
                        let Some(envelope) = Envelope::parse(payload) else { continue };
                        if !recent.first_time(envelope.id) {
                            continue;
                        }
                    }
                    engine.on_envelope(topic, payload);
                }
            }
        }
        tracing::warn!("lost the PUB/SUB connection to Redis; reconnecting");
    }
}

/// Fails the subscriptions waiting for a confirmation while there is no
/// connection (they are retried by the client).
fn fail_pending(commands: &mut mpsc::UnboundedReceiver<Command>, reason: &str) {
    while let Ok(command) = commands.try_recv() {
        if let Command::Watch {
            done: Some(done), ..
        } = command
        {
            let _ = done.send(Err(reason.to_owned()));
        }
    }
}
