//! The baseline: the least a WebSocket broadcaster can do for the same
//! traffic, so Sockeye's overhead is a measured ratio, not a guess.
//!
//! What it does, exactly:
//!
//! - Accepts WebSocket connections at any path with tokio-tungstenite,
//!   selecting the `sockeye.v1` subprotocol when offered. It checks no token.
//! - Sends every connection the same pre-encoded `welcome` frame.
//! - A connection whose handshake URL has `?publish=<topic>` is a
//!   **publisher** of that topic: every binary frame it sends is forwarded,
//!   byte for byte and without being looked at, to every subscriber of that
//!   topic. One `Bytes` is shared by all subscriber queues: no decoding, no
//!   encoding, no copy per subscriber.
//! - Any other connection's frames are decoded as Sockeye requests:
//!   `subscribe` adds the connection to the topic's subscriber list (exact
//!   topic only, no wildcards, no positions) and is answered with
//!   `subscribed`; `ping` is answered with `pong`; a `publish` is forwarded
//!   to the topic's subscribers as it was received (answered with
//!   `published` when it asks for an ack); everything else is ignored.
//! - Each connection has a bounded queue (`--queue` frames). Its one task
//!   waits for either an incoming frame or queued frames; it writes every
//!   queued frame and then flushes once (batching). A subscriber whose queue
//!   is full is closed with 4002, as Sockeye does; nothing is dropped
//!   silently.
//! - tungstenite buffers are small (`--read-buffer` 4 KiB, `--write-buffer`
//!   16 KiB, like Sockeye's defaults).
//!
//! It has no authentication, no storage, no acks that mean anything, no
//! wildcards, no limits beyond the queue, no heartbeats: it is the ceiling
//! of this machine for the same traffic, not a broker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use sockeye_protocol::{
    ClientMessage, CloseCode, Compression, Limits, PROTOCOL_VERSION, SUBPROTOCOL, ServerMessage,
    Subscribed, Welcome, frame,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::accept_hdr_async_with_config;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;

use crate::cli::BaselineArgs;

/// Frames written per drain of a queue before the flush.
const DRAIN_BATCH: usize = 256;

/// Time a client has to complete the WebSocket handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection id within the process.
type ConnId = u64;

/// The subscribers of one topic.
#[derive(Debug, Default)]
struct TopicSubscribers {
    /// Each subscriber's queue. A std lock: held only to copy out or change
    /// the list, never across an `.await`.
    queues: RwLock<Vec<(ConnId, mpsc::Sender<Bytes>)>>,
}

impl TopicSubscribers {
    /// Queues `frame` for every subscriber; closes (drops the queue of) those
    /// whose queue is full.
    fn broadcast(&self, frame: &Bytes) {
        let mut full = Vec::new();
        {
            let queues = self.queues.read().unwrap_or_else(|err| err.into_inner());
            for (id, queue) in queues.iter() {
                if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(frame.clone()) {
                    full.push(*id);
                }
            }
        }
        if !full.is_empty() {
            tracing::warn!(count = full.len(), "closing slow consumers");
            self.queues
                .write()
                .unwrap_or_else(|err| err.into_inner())
                .retain(|(id, _)| !full.contains(id));
        }
    }

    fn remove(&self, conn: ConnId) {
        self.queues
            .write()
            .unwrap_or_else(|err| err.into_inner())
            .retain(|(id, _)| *id != conn);
    }
}

/// Everything the connections share.
#[derive(Debug)]
struct Hub {
    /// Topic -> subscribers. Entries are never removed (a benchmark process
    /// lives for one comparison run).
    topics: RwLock<HashMap<String, Arc<TopicSubscribers>>>,
    welcome: Bytes,
    next_id: AtomicU64,
    config: WebSocketConfig,
    queue: usize,
}

impl Hub {
    fn topic(&self, name: &str) -> Arc<TopicSubscribers> {
        if let Some(found) = self
            .topics
            .read()
            .unwrap_or_else(|err| err.into_inner())
            .get(name)
        {
            return Arc::clone(found);
        }
        let mut topics = self.topics.write().unwrap_or_else(|err| err.into_inner());
        Arc::clone(topics.entry(name.to_owned()).or_default())
    }
}

/// Serves until SIGINT/SIGTERM or `--max-lifetime`.
pub(crate) async fn serve(args: BaselineArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let max_frame = args.max_frame.0;
    let welcome = ServerMessage::Welcome(Welcome {
        connection_id: 0,
        version: PROTOCOL_VERSION,
        subject: "baseline".into(),
        heartbeat_interval_ms: 3_600_000,
        heartbeat_timeout_ms: 7_200_000,
        token_expires_at: None,
        limits: Limits {
            max_frame_bytes: max_frame as u64,
            max_inflated_bytes: max_frame as u64 * 4,
            compression_threshold_bytes: args.compression_threshold.0 as u64,
            max_topic_bytes: 255,
            max_subscriptions: 1,
            publish_rate_per_sec: 0,
            publish_burst: 0,
        },
    })
    .encode_frame(&Compression::OFF);
    let hub = Arc::new(Hub {
        topics: RwLock::new(HashMap::new()),
        welcome,
        next_id: AtomicU64::new(1),
        config: WebSocketConfig::default()
            .read_buffer_size(args.read_buffer.0)
            .write_buffer_size(args.write_buffer.0)
            .max_write_buffer_size(args.write_buffer.0 + 2 * max_frame + 4096)
            .max_message_size(Some(max_frame))
            .max_frame_size(Some(max_frame)),
        queue: args.queue.max(1),
    });
    tracing::info!(listen = %listener.local_addr().unwrap_or(args.listen), "baseline broadcaster listening");
    let shutdown = shutdown_signal(args.max_lifetime);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(cause = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let hub = Arc::clone(&hub);
        tokio::spawn(async move {
            if let Err(err) = connection(stream, hub).await {
                tracing::debug!(cause = %format!("{err:#}"), "connection ended");
            }
        });
    }
    tracing::info!("baseline broadcaster stopped");
    Ok(())
}

async fn shutdown_signal(max_lifetime: Duration) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(cause = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
        () = tokio::time::sleep(max_lifetime) => tracing::info!("max lifetime reached"),
    }
}

async fn connection(stream: TcpStream, hub: Arc<Hub>) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut publishes_to: Option<String> = None;
    #[allow(
        clippy::result_large_err,
        reason = "the error type is tungstenite's callback signature"
    )]
    let callback = |request: &Request, mut response: Response| {
        publishes_to = request.uri().query().and_then(|query| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix("publish="))
                .map(str::to_owned)
        });
        let offered = request
            .headers()
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|protocol| protocol.trim() == SUBPROTOCOL);
        if offered {
            response.headers_mut().insert(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        Ok(response)
    };
    let mut ws = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        accept_hdr_async_with_config(stream, callback, Some(hub.config)),
    )
    .await
    .context("handshake timed out")?
    .context("handshake failed")?;
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    let publisher_topic = publishes_to.map(|topic| hub.topic(&topic));
    // The only sender goes to the topic on `subscribe`; if the topic drops
    // it (slow consumer), `recv` returns `None`.
    let (queue, mut queued) = mpsc::channel::<Bytes>(hub.queue);
    let mut queue = Some(queue);
    let mut subscribed: Option<Arc<TopicSubscribers>> = None;
    ws.feed(Message::Binary(hub.welcome.clone())).await?;
    ws.flush().await?;

    let result = async {
        loop {
            tokio::select! {
                incoming = ws.next() => {
                    let frame = match incoming {
                        Some(Ok(Message::Binary(frame))) => frame,
                        Some(Ok(Message::Close(_))) | None => return anyhow::Ok(()),
                        Some(Ok(_)) => continue,
                        Some(Err(err)) => return Err(err.into()),
                    };
                    if let Some(topic) = &publisher_topic {
                        topic.broadcast(&frame);
                        continue;
                    }
                    // A reply is written before the next queued delivery, so
                    // `subscribed` precedes the topic's messages.
                    if let Some(reply) = request(&hub, id, &frame, &mut queue, &mut subscribed) {
                        ws.send(Message::Binary(reply)).await?;
                    }
                }
                next = queued.recv(), if queue.is_none() => {
                    let Some(frame) = next else {
                        let close = CloseFrame {
                            code: CloseCode::SlowConsumer.code().into(),
                            reason: "slow consumer".into(),
                        };
                        let _ = ws.send(Message::Close(Some(close))).await;
                        return Ok(());
                    };
                    ws.feed(Message::Binary(frame)).await?;
                    for _ in 1..DRAIN_BATCH {
                        match queued.try_recv() {
                            Ok(frame) => ws.feed(Message::Binary(frame)).await?,
                            Err(_) => break,
                        }
                    }
                    ws.flush().await?;
                }
            }
        }
    }
    .await;
    if let Some(topic) = subscribed {
        topic.remove(id);
    }
    result
}

/// Handles a request from a connection that is not a publisher; returns the
/// reply frame, if any.
fn request(
    hub: &Hub,
    id: ConnId,
    frame_bytes: &Bytes,
    queue: &mut Option<mpsc::Sender<Bytes>>,
    subscribed: &mut Option<Arc<TopicSubscribers>>,
) -> Option<Bytes> {
    let body = frame::open(frame_bytes, 64 << 20).ok()?;
    let reply = match ClientMessage::decode(&body).ok()? {
        ClientMessage::Subscribe {
            id: request, topic, ..
        } => {
            let subscribers = hub.topic(&topic);
            // One subscription per connection: later ones are acknowledged
            // but change nothing.
            if let Some(queue) = queue.take() {
                subscribers
                    .queues
                    .write()
                    .unwrap_or_else(|err| err.into_inner())
                    .push((id, queue));
                *subscribed = Some(subscribers);
            }
            ServerMessage::Subscribed(Subscribed {
                id: request,
                topic,
                stored: false,
                epoch: 0,
                last_offset: 0,
                next_offset: 0,
                complete: true,
                gap: None,
                epoch_changed: false,
            })
        }
        ClientMessage::Publish {
            id: request,
            topic,
            ack,
            ..
        } => {
            hub.topic(&topic).broadcast(frame_bytes);
            if !ack {
                return None;
            }
            ServerMessage::Published {
                id: request,
                epoch: 0,
                offset: 0,
            }
        }
        ClientMessage::Ping { id: request } => ServerMessage::Pong { id: request },
        _ => return None,
    };
    Some(reply.encode_frame(&Compression::OFF))
}
