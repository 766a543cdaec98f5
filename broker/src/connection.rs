//! One WebSocket connection after the handshake: reading requests, writing
//! replies and deliveries, heartbeats, token expiry, and the close.
//!
//! Each connection is one task running [`Session::run`]: a `select!` over
//! the close signal, the outbound queue, durable acknowledgements, the
//! socket, the heartbeat timer and the token-expiry timer. Replies are
//! written straight to the socket from the request handler; deliveries
//! arrive through the bounded outbound queue that fan-out and replays fill.
//! Draining the queue writes every waiting frame and then flushes once, so a
//! burst costs one syscall, not one per message.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sockeye_protocol::{
    ClientMessage, CloseCode, DecodeError, ErrorCode, MessageError, PROTOCOL_VERSION, Position,
    RequestId, ServerMessage, StreamPosition, TopicFilter, TopicName, Welcome, frame,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::engine::{Ack, AckState, DurableMark, NetworkAck, WriteError};
use crate::hub::{SubscribeError, SubscribeOutcome, Subscriber};
use crate::linger::CloseLinger;
use crate::peer::{Inbox, Peer};
use crate::stats::Stats;
use crate::{Admission, Broker};

/// Frames written per drain of the outbound queue before one flush.
const DRAIN_BATCH: usize = 256;

/// Frames already received that are handled before one flush.
const READ_BATCH: usize = 64;

/// How long the broker waits for the client's close reply.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);

/// One subscription held by this connection.
#[derive(Debug)]
struct Held {
    /// Ends the subscription (and its replay).
    cancel: CancellationToken,
}

/// A request that cannot be served: the code and message of its `error`
/// reply. The connection stays open.
#[derive(Debug)]
struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A publish whose outcome is not decided yet: waiting for its write's
/// flush (sled), or for the network engine's answer.
#[derive(Debug)]
struct PendingAck {
    /// When the message counts as acknowledged.
    ack: Ack,
    /// The publish request's id, for the reply.
    id: RequestId,
    /// The `published` reply, when it is known in advance (sled); a network
    /// answer carries the position instead.
    reply: Option<Bytes>,
    /// False for `ack: false`: only a failure is answered.
    wants_reply: bool,
}

/// What woke the session loop.
enum Event {
    /// A frame from the outbound queue.
    Queued(Bytes),
    /// The store's durable write sequence advanced.
    Durable,
    /// The network engine answered the oldest pending publish.
    Answered(Result<Option<StreamPosition>, ()>),
    /// Something from the socket (or its end).
    Incoming(Option<Result<Message, axum::Error>>),
    /// Time to ping (and check for silence).
    Heartbeat,
    /// Time to warn of, or act on, token expiry.
    Expiry,
}

/// Why the session loop ended.
enum Ending {
    /// Close with this code and reason.
    Close(CloseCode, String),
    /// Close with this code and reason after a frame the WebSocket layer
    /// could not read (too large, or broken): nothing more is read through
    /// it, and the raw socket is drained instead (`websocket.close_linger`).
    Abort(CloseCode, String),
    /// The client closed, or the socket failed: nothing more to send.
    Gone,
}

/// The owning half of one connection.
pub(crate) struct Session {
    broker: Broker,
    peer: Arc<Peer>,
    socket: WebSocket,
    /// The receiving end of the outbound queue, once the first
    /// subscription has opened it.
    inbox: Option<Inbox>,
    identity: Identity,
    /// The subscriptions, in a vector grown one slot at a time from empty:
    /// most connections hold one or a few (a hash map's smallest table
    /// holds four), and every subscribe scans them all for overlaps anyway.
    held: Vec<(TopicFilter, Held)>,
    /// Publish replies waiting for their write to become durable, in write
    /// order.
    pending_acks: VecDeque<PendingAck>,
    durable: watch::Receiver<DurableMark>,
    rate: Option<DefaultDirectRateLimiter>,
    /// Payload bytes per second.
    byte_rate: Option<DefaultDirectRateLimiter>,
    last_heard: Instant,
    warned_expiry: bool,
    /// Makes the socket drain after the close (absent when the router is
    /// served by someone else's HTTP server).
    linger: Option<CloseLinger>,
    /// The connection's slot, released when the session is dropped (after
    /// [`Session`]'s own `Drop` has removed its subscriptions).
    _admission: Admission,
}

/// Unix milliseconds of `time`, saturating (token expiries are already
/// bounded by [`crate::auth::MAX_EXPIRY_SECS`], far below the limit).
fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where a deadline the monotonic clock cannot represent is put instead: the
/// timer then fires early, finds the moment not come yet, and is set again.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Converts a wall-clock deadline to a monotonic one.
fn deadline(at: SystemTime) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    match at.duration_since(SystemTime::now()) {
        Ok(remaining) => now
            .checked_add(remaining)
            .unwrap_or_else(|| now + FAR_FUTURE),
        Err(_) => now,
    }
}

fn rate_limiter(rate: u64, burst: u64) -> Option<DefaultDirectRateLimiter> {
    if rate == 0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let burst =
        NonZeroU32::new(u32::try_from(burst).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period).map(|quota| RateLimiter::direct(quota.allow_burst(burst)))
}

fn decode_error_code(error: &DecodeError) -> ErrorCode {
    match error {
        DecodeError::UnknownType { .. } => ErrorCode::UnknownType,
        DecodeError::MissingField { .. } | DecodeError::WrongType { .. } => ErrorCode::BadRequest,
        _ => ErrorCode::MalformedFrame,
    }
}

impl Session {
    pub(crate) fn new(
        broker: Broker,
        admission: Admission,
        peer: Arc<Peer>,
        socket: WebSocket,
        identity: Identity,
        linger: Option<CloseLinger>,
    ) -> Self {
        let config = broker.config();
        let rate = rate_limiter(config.limits.publish_rate, config.limits.publish_burst);
        let bytes_per_second = config.limits.publish_bytes_rate.as_u64();
        let byte_rate = rate_limiter(
            bytes_per_second,
            bytes_per_second.max(config.limits.max_frame_size.as_u64()),
        );
        let durable = broker.engine().durable();
        Self {
            broker,
            peer,
            socket,
            inbox: None,
            identity,
            held: Vec::new(),
            pending_acks: VecDeque::new(),
            durable,
            rate,
            byte_rate,
            last_heard: Instant::now(),
            warned_expiry: false,
            linger,
            _admission: admission,
        }
    }

    fn encode(&self, message: &ServerMessage) -> Bytes {
        message.encode_frame(&self.broker.hub().compression)
    }

    /// Writes one frame to the socket buffer (no flush) and returns its
    /// length; callers count the bytes, once per batch, in the shared stats.
    async fn feed_uncounted(&mut self, frame: Bytes) -> Result<u64, axum::Error> {
        let len = frame.len();
        self.socket.feed(Message::Binary(frame)).await?;
        self.peer.count_out(len);
        Ok(len as u64)
    }

    /// Writes one frame to the socket buffer (no flush).
    async fn feed(&mut self, frame: Bytes) -> Result<(), axum::Error> {
        let len = self.feed_uncounted(frame).await?;
        Stats::add(&self.broker.stats().bytes_out, len);
        Ok(())
    }

    async fn reply(&mut self, message: &ServerMessage) -> Result<(), axum::Error> {
        let frame = self.encode(message);
        self.feed(frame).await
    }

    async fn error(
        &mut self,
        id: Option<RequestId>,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Result<(), axum::Error> {
        Stats::add(&self.broker.stats().error_replies, 1);
        self.reply(&ServerMessage::Error {
            id,
            code,
            message: message.into(),
        })
        .await
    }

    /// Runs the connection to its end.
    ///
    /// The session is boxed: an `async fn` taking `self` by value keeps two
    /// copies of it in its future (the argument and the moved binding,
    /// rust-lang/rust#62958), and that future is what every idle connection
    /// holds for its whole life.
    pub(crate) async fn run(mut self: Box<Self>) {
        let config = Arc::clone(self.broker.config());
        let write_timeout = config.heartbeat.timeout;
        // The welcome is encoded and dropped before `serve`, so it takes no
        // room in the future across the connection's life.
        let greeted = {
            let frame = self.encode(&ServerMessage::Welcome(Welcome {
                connection_id: self.peer.id.0,
                version: PROTOCOL_VERSION,
                subject: self.identity.subject.clone(),
                heartbeat_interval_ms: config.heartbeat.interval.as_millis() as u64,
                heartbeat_timeout_ms: config.heartbeat.timeout.as_millis() as u64,
                token_expires_at: self.identity.expires_at.map(unix_ms),
                limits: config.wire_limits(),
            }));
            match self.feed(frame).await {
                Ok(()) => matches!(
                    tokio::time::timeout(write_timeout, self.socket.flush()).await,
                    Ok(Ok(()))
                ),
                Err(_) => false,
            }
        };
        let ending = if greeted {
            self.serve(&config).await
        } else {
            Ending::Gone
        };
        Box::pin(self.finish(ending)).await;
    }

    async fn serve(&mut self, config: &crate::Config) -> Ending {
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + config.heartbeat.interval,
            config.heartbeat.interval,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let max_pending = config.limits.max_pending_acks;
        // The close signal and the expiry timer live across iterations, so a
        // busy connection does not re-register them with the runtime on every
        // event.
        let peer = Arc::clone(&self.peer);
        let close = peer.close_requested();
        tokio::pin!(close);
        let mut expiry: Option<(tokio::time::Instant, Pin<Box<tokio::time::Sleep>>)> = None;
        loop {
            match (
                self.next_expiry_event(config.auth.expiry_warning),
                &mut expiry,
            ) {
                (None, slot) => *slot = None,
                (Some(at), Some((current, timer))) => {
                    if *current != at {
                        timer.as_mut().reset(at);
                        *current = at;
                    } else if timer.is_elapsed() {
                        // Fired, but nothing changed (the wall clock has not
                        // quite reached `exp`): look again a little later
                        // instead of firing again at once.
                        let later = tokio::time::Instant::now() + Duration::from_millis(10);
                        timer.as_mut().reset(later);
                    }
                }
                (Some(at), slot @ None) => {
                    *slot = Some((at, Box::pin(tokio::time::sleep_until(at))));
                }
            }
            // Unbiased on purpose: a connection that receives a steady stream
            // of deliveries must still get its socket read (pongs, requests),
            // or it would starve into a heartbeat timeout.
            let event = tokio::select! {
                () = &mut close => {
                    let (code, reason) = self
                        .peer
                        .close_reason()
                        .unwrap_or((CloseCode::InternalError, String::new()));
                    return Ending::Close(code, reason);
                }
                frame = recv_queued(&mut self.inbox) => match frame {
                    Some(frame) => Event::Queued(frame),
                    None => return Ending::Gone,
                },
                answer = front_answer(&mut self.pending_acks) => Event::Answered(answer),
                changed = self.durable.changed(), if !self.pending_acks.is_empty() => {
                    if changed.is_err() {
                        return Ending::Close(CloseCode::GoingAway, "history store closed".into());
                    }
                    Event::Durable
                }
                incoming = self.socket.next(), if self.pending_acks.len() < max_pending => {
                    Event::Incoming(incoming)
                }
                _ = heartbeat.tick() => Event::Heartbeat,
                () = expiry_elapsed(&mut expiry) => Event::Expiry,
            };
            // Every write is bounded by the heartbeat timeout, so a client
            // that stops reading cannot pin this task (or its close) forever.
            let limit = config.heartbeat.timeout;
            let handled = match event {
                // The hot path of a subscriber stays inline.
                Event::Queued(frame) => tokio::time::timeout(limit, self.write_queued(frame)).await,
                // The others are boxed, so their futures take memory only
                // while one runs instead of enlarging every idle connection.
                other => {
                    tokio::time::timeout(limit, Box::pin(self.handle_event(other, config))).await
                }
            };
            match handled {
                Ok(Ok(None)) => {}
                Ok(Ok(Some(ending))) => return ending,
                Ok(Err(err)) => {
                    tracing::debug!(cause = %err, "connection write failed");
                    return Ending::Gone;
                }
                Err(_) => {
                    tracing::debug!("connection write timed out");
                    return Ending::Gone;
                }
            }
        }
    }

    async fn handle_event(
        &mut self,
        event: Event,
        config: &crate::Config,
    ) -> Result<Option<Ending>, axum::Error> {
        match event {
            Event::Queued(frame) => self.write_queued(frame).await,
            Event::Durable => self.write_durable_acks().await,
            Event::Answered(answer) => self.write_answers(answer).await,
            Event::Incoming(incoming) => {
                let max_pending = config.limits.max_pending_acks;
                let mut ending = self.handle_incoming(incoming).await?;
                // Handle whatever else has already arrived before going back
                // to the select and flushing: one wake-up and one flush serve
                // a burst of pipelined requests.
                for _ in 1..READ_BATCH {
                    if ending.is_some() || self.pending_acks.len() >= max_pending {
                        break;
                    }
                    match self.socket.next().now_or_never() {
                        Some(incoming) => ending = self.handle_incoming(incoming).await?,
                        None => break,
                    }
                }
                self.socket.flush().await?;
                Ok(ending)
            }
            Event::Heartbeat => {
                if self.last_heard.elapsed() >= config.heartbeat.timeout {
                    return Ok(Some(Ending::Close(
                        CloseCode::HeartbeatTimeout,
                        "no frame received within the heartbeat timeout".into(),
                    )));
                }
                self.socket.feed(Message::Ping(Bytes::new())).await?;
                self.socket.flush().await?;
                Ok(None)
            }
            Event::Expiry => self.on_expiry_event().await,
        }
    }

    /// Writes `first` and whatever else is queued (up to a batch), then
    /// flushes once.
    async fn write_queued(&mut self, first: Bytes) -> Result<Option<Ending>, axum::Error> {
        // The shared byte counter is touched once per batch, not per frame:
        // it is one cache line contended by every connection.
        let mut bytes = self.feed_uncounted(first).await?;
        let mut frames = 1;
        for _ in 1..DRAIN_BATCH {
            let Some(inbox) = self.inbox.as_mut() else {
                break;
            };
            match inbox.try_recv() {
                Some(frame) => {
                    bytes += self.feed_uncounted(frame).await?;
                    frames += 1;
                }
                None => break,
            }
        }
        Stats::add(&self.broker.stats().bytes_out, bytes);
        self.peer
            .counters
            .delivered
            .fetch_add(frames, Ordering::Relaxed);
        self.socket.flush().await?;
        if let Some(inbox) = self.inbox.as_mut() {
            inbox.written();
        }
        Ok(None)
    }

    async fn write_durable_acks(&mut self) -> Result<Option<Ending>, axum::Error> {
        // Seen: the next change wakes the session again.
        self.durable.borrow_and_update();
        let engine = Arc::clone(self.broker.engine());
        while let Some(pending) = self.pending_acks.front() {
            match engine.ack_state(&pending.ack) {
                AckState::Waiting => break,
                AckState::Acked => {
                    if let Some(reply) = self.pending_acks.pop_front().and_then(|p| p.reply) {
                        self.feed(reply).await?;
                    }
                }
                AckState::Failed => {
                    if let Some(pending) = self.pending_acks.pop_front() {
                        self.error(
                            Some(pending.id),
                            ErrorCode::StorageFailed,
                            "the history store failed to make this message durable; it is not stored",
                        )
                        .await?;
                    }
                }
            }
        }
        self.socket.flush().await.map(|()| None)
    }

    /// Writes the network engine's answer to the oldest pending publish,
    /// then every later one that is already in, in order.
    async fn write_answers(
        &mut self,
        first: Result<Option<StreamPosition>, ()>,
    ) -> Result<Option<Ending>, axum::Error> {
        let mut answer = Some(first);
        while let Some(result) = answer.take() {
            let Some(pending) = self.pending_acks.pop_front() else {
                break;
            };
            match result {
                Ok(position) if pending.wants_reply => {
                    let position = position.unwrap_or(StreamPosition {
                        epoch: 0,
                        offset: 0,
                    });
                    let reply = self.encode(&ServerMessage::Published {
                        id: pending.id,
                        epoch: position.epoch,
                        offset: position.offset,
                    });
                    self.feed(reply).await?;
                }
                Ok(_) => {}
                Err(()) => {
                    self.error(
                        Some(pending.id),
                        ErrorCode::StorageFailed,
                        "the history store did not take this message in time; it may or may not be stored",
                    )
                    .await?;
                }
            }
            if let Some(next) = self.pending_acks.front_mut()
                && let Ack::Network(NetworkAck(receiver)) = &mut next.ack
            {
                answer = match receiver.try_recv() {
                    Ok(Ok(position)) => Some(Ok(position)),
                    Ok(Err(_)) => Some(Err(())),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => None,
                    Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Some(Err(())),
                };
            }
        }
        self.socket.flush().await.map(|()| None)
    }

    fn next_expiry_event(&self, warning: Duration) -> Option<tokio::time::Instant> {
        let expires_at = self.identity.expires_at?;
        if self.warned_expiry {
            Some(deadline(expires_at))
        } else {
            Some(deadline(
                expires_at.checked_sub(warning).unwrap_or(expires_at),
            ))
        }
    }

    async fn on_expiry_event(&mut self) -> Result<Option<Ending>, axum::Error> {
        let Some(expires_at) = self.identity.expires_at else {
            return Ok(None);
        };
        if SystemTime::now() >= expires_at {
            return Ok(Some(Ending::Close(
                CloseCode::TokenExpired,
                "token expired; reconnect with a fresh token".into(),
            )));
        }
        let warning = self.broker.config().auth.expiry_warning;
        let warn_from = expires_at.checked_sub(warning).unwrap_or(UNIX_EPOCH);
        if !self.warned_expiry && SystemTime::now() >= warn_from {
            self.warned_expiry = true;
            self.reply(&ServerMessage::TokenExpiring {
                expires_at: unix_ms(expires_at),
            })
            .await?;
            self.socket.flush().await?;
        }
        Ok(None)
    }

    async fn handle_incoming(
        &mut self,
        incoming: Option<Result<Message, axum::Error>>,
    ) -> Result<Option<Ending>, axum::Error> {
        let message = match incoming {
            None => return Ok(Some(Ending::Gone)),
            Some(Ok(message)) => message,
            Some(Err(err)) => return Ok(Some(socket_error_ending(&err))),
        };
        self.last_heard = Instant::now();
        self.peer.counters.frames_in.fetch_add(1, Ordering::Relaxed);
        match message {
            Message::Binary(data) => {
                self.peer
                    .counters
                    .bytes_in
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                self.handle_frame(data).await
            }
            Message::Text(_) => Ok(Some(Ending::Close(
                CloseCode::UnsupportedData,
                "text frames are not supported: send binary MessagePack frames".into(),
            ))),
            Message::Ping(_) | Message::Pong(_) => Ok(None),
            Message::Close(_) => {
                // tungstenite queued the close reply; flushing sends it.
                let _ = self.socket.flush().await;
                Ok(Some(Ending::Gone))
            }
        }
    }

    async fn handle_frame(&mut self, data: Bytes) -> Result<Option<Ending>, axum::Error> {
        let max_inflated = self.broker.config().limits.max_inflated_size.as_u64() as usize;
        let body = match frame::open(&data, max_inflated) {
            Ok(body) => body,
            Err(DecodeError::InflateLimit { limit }) => {
                return Ok(Some(Ending::Close(
                    CloseCode::MessageTooBig,
                    format!("frame inflates past {limit} bytes"),
                )));
            }
            Err(err) => {
                self.error(None, ErrorCode::MalformedFrame, err.to_string())
                    .await?;
                return Ok(None);
            }
        };
        match ClientMessage::decode(&body) {
            Ok(request) => self.handle_request(request).await,
            Err(MessageError { id, error }) => {
                self.error(id, decode_error_code(&error), error.to_string())
                    .await?;
                Ok(None)
            }
        }
    }

    async fn handle_request(
        &mut self,
        request: ClientMessage,
    ) -> Result<Option<Ending>, axum::Error> {
        let id = request.id();
        let outcome = match request {
            ClientMessage::Subscribe {
                id,
                topic,
                position,
            } => self.subscribe(id, &topic, position).await.map(Some),
            ClientMessage::Unsubscribe { id, topic } => self.unsubscribe(id, &topic).map(Some),
            ClientMessage::Publish {
                id,
                topic,
                payload,
                ack,
            } => self.publish(id, topic, &payload, ack),
            ClientMessage::Ping { id } => {
                #[cfg(feature = "test-hooks")]
                self.broker.panic_if_armed(self.peer.id);
                Ok(Some(self.encode(&ServerMessage::Pong { id })))
            }
            ClientMessage::Refresh { id, token } => self.refresh(id, &token).map(Some),
            _ => Ok(None),
        };
        match outcome {
            Ok(Some(reply)) => self.feed(reply).await?,
            Ok(None) => {}
            Err(Refusal { code, message }) => self.error(Some(id), code, message).await?,
        }
        Ok(None)
    }

    /// Handles `subscribe`; the reply frame on success.
    async fn subscribe(
        &mut self,
        id: RequestId,
        text: &str,
        position: Option<Position>,
    ) -> Result<Bytes, Refusal> {
        let limits = &self.broker.config().limits;
        let max_subscriptions = limits.max_subscriptions;
        let filter = TopicFilter::parse(text, limits.max_topic_length)
            .map_err(|err| Refusal::new(ErrorCode::InvalidTopic, err.to_string()))?;
        let wildcard = !filter.is_exact();
        if wildcard && let Some(shape) = crate::hub::wildcard::shape_error(&filter, limits) {
            return Err(Refusal::new(ErrorCode::InvalidTopic, shape));
        }
        if !self.identity.permissions.may_subscribe(&filter) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("the token does not allow subscribing to `{filter}`"),
            ));
        }
        if self.held.iter().any(|(held, _)| *held == filter) {
            return Err(Refusal::new(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to `{filter}`"),
            ));
        }
        if self.held.len() >= max_subscriptions {
            return Err(Refusal::new(
                ErrorCode::TooManySubscriptions,
                format!("at most {max_subscriptions} subscriptions per connection"),
            ));
        }
        let max_wildcards = limits.max_wildcard_subscriptions;
        if wildcard
            && self
                .held
                .iter()
                .filter(|(held, _)| !held.is_exact())
                .count()
                >= max_wildcards
        {
            return Err(Refusal::new(
                ErrorCode::TooManySubscriptions,
                format!("at most {max_wildcards} wildcard subscriptions per connection"),
            ));
        }
        if let Some((other, _)) = self.held.iter().find(|(held, _)| held.overlaps(&filter)) {
            return Err(Refusal::new(
                ErrorCode::SubscriptionOverlaps,
                format!("`{filter}` overlaps the subscription `{other}`"),
            ));
        }
        if self.inbox.is_none() {
            self.inbox = self.peer.open_queue();
        }
        // A child of the broker's shutdown, cancelled by `drop_subscription`
        // (an unsubscribe, or the session's `Drop` for every one held), or
        // by this guard if the subscription is refused, or the session
        // dropped, before it is held.
        let cancel = self.broker.shutdown_token().child_token();
        let unheld = cancel.clone().drop_guard();
        let hub = self.broker.hub();
        let outcome = match filter.as_exact() {
            Some(topic) => {
                let subscriber = Subscriber {
                    outbox: self
                        .peer
                        .outbox()
                        .expect("subscribe opened the outbound queue first"),
                    peer: Arc::clone(&self.peer),
                    cancel: cancel.clone(),
                };
                let engine = Arc::clone(self.broker.engine());
                engine
                    .subscribe(hub, &topic, subscriber, position)
                    .await
                    .map_err(|err| match err {
                        SubscribeError::PositionUnsupported => Refusal::new(
                            ErrorCode::PositionUnsupported,
                            format!("`{topic}` is not stored, so it has no positions"),
                        ),
                        SubscribeError::Write(err) => write_refusal(&err),
                    })?
            }
            None => {
                if position.is_some() {
                    return Err(Refusal::new(
                        ErrorCode::PositionUnsupported,
                        "positions need an exact topic, not a wildcard filter",
                    ));
                }
                hub.subscribe_wildcard(&filter, Arc::clone(&self.peer))
                    .map_err(|refusal| {
                        Refusal::new(ErrorCode::TooManySubscriptions, refusal.to_string())
                    })?;
                if let Err(err) = self.broker.engine().wildcards_ready().await {
                    hub.unsubscribe_wildcard(&filter, self.peer.id);
                    return Err(write_refusal(&err));
                }
                SubscribeOutcome {
                    stored: false,
                    epoch: 0,
                    last_offset: 0,
                    next_offset: 0,
                    complete: true,
                    gap: None,
                    epoch_changed: false,
                }
            }
        };
        let reply = sockeye_protocol::Subscribed {
            id,
            topic: filter.to_string(),
            stored: outcome.stored,
            epoch: outcome.epoch,
            last_offset: outcome.last_offset,
            next_offset: outcome.next_offset,
            complete: outcome.complete,
            gap: outcome.gap,
            epoch_changed: outcome.epoch_changed,
        };
        {
            let mut shown = self
                .peer
                .subscriptions
                .lock()
                .expect("no code panics while holding subscriptions");
            // Grown from one slot, as `held` is (a first push reserves four).
            if shown.len() == shown.capacity() {
                let more = shown.len().max(1);
                shown.reserve_exact(more);
            }
            shown.push(filter.to_string());
        }
        unheld.disarm();
        if self.held.len() == self.held.capacity() {
            self.held.reserve_exact(self.held.len().max(1));
        }
        self.held.push((filter, Held { cancel }));
        Stats::add(&self.broker.stats().subscriptions, 1);
        Ok(self.encode(&ServerMessage::Subscribed(reply)))
    }

    fn drop_subscription(&self, filter: &TopicFilter, held: &Held) {
        held.cancel.cancel();
        let hub = self.broker.hub();
        match filter.as_exact() {
            Some(topic) => hub.unsubscribe_exact(&topic, self.peer.id),
            None => hub.unsubscribe_wildcard(filter, self.peer.id),
        }
        self.broker
            .stats()
            .subscriptions
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// Handles `unsubscribe`; the reply frame on success.
    fn unsubscribe(&mut self, id: RequestId, text: &str) -> Result<Bytes, Refusal> {
        let max_topic = self.broker.config().limits.max_topic_length;
        let filter = TopicFilter::parse(text, max_topic)
            .map_err(|err| Refusal::new(ErrorCode::InvalidTopic, err.to_string()))?;
        let index = self
            .held
            .iter()
            .position(|(held, _)| *held == filter)
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::NotSubscribed,
                    format!("not subscribed to `{filter}`"),
                )
            })?;
        let (_, held) = self.held.swap_remove(index);
        self.drop_subscription(&filter, &held);
        self.peer
            .subscriptions
            .lock()
            .expect("no code panics while holding subscriptions")
            .retain(|held| held != filter.as_str());
        Ok(self.encode(&ServerMessage::Unsubscribed {
            id,
            topic: filter.to_string(),
        }))
    }

    /// Handles `publish`: the reply frame to send now, or `None` when there
    /// is none (`ack: false`) or it waits for durability in `pending_acks`.
    fn publish(
        &mut self,
        id: RequestId,
        text: String,
        payload: &sockeye_protocol::Payload,
        ack: bool,
    ) -> Result<Option<Bytes>, Refusal> {
        let max_topic = self.broker.config().limits.max_topic_length;
        let topic = TopicName::from_string(text, max_topic)
            .map_err(|err| Refusal::new(ErrorCode::InvalidTopic, err.to_string()))?;
        if !self.identity.permissions.may_publish(&topic) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("the token does not allow publishing to `{topic}`"),
            ));
        }
        if self.rate.as_ref().is_some_and(|rate| rate.check().is_err()) {
            Stats::add(&self.broker.stats().rate_limited, 1);
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                "publish rate limit exceeded",
            ));
        }
        if let Some(byte_rate) = &self.byte_rate {
            let bytes = NonZeroU32::new(u32::try_from(payload.len()).unwrap_or(u32::MAX))
                .unwrap_or(NonZeroU32::MIN);
            if !matches!(byte_rate.check_n(bytes), Ok(Ok(()))) {
                Stats::add(&self.broker.stats().bytes_rate_limited, 1);
                return Err(Refusal::new(
                    ErrorCode::RateLimited,
                    "publish byte-rate limit exceeded",
                ));
            }
        }
        let engine = self.broker.engine();
        let published = engine
            .publish(&topic, payload, &self.identity.subject)
            .map_err(|err| write_refusal(&err))?;
        self.peer.counters.published.fetch_add(1, Ordering::Relaxed);
        if let Ack::Network(_) = published.ack {
            // Answered when the engine is: success only if asked for, a
            // failure always.
            self.pending_acks.push_back(PendingAck {
                ack: published.ack,
                id,
                reply: None,
                wants_reply: ack,
            });
            return Ok(None);
        }
        if !ack {
            return Ok(None);
        }
        // An ephemeral topic is answered (0, 0), as docs/protocol.md says.
        let position = published.position.unwrap_or(StreamPosition {
            epoch: 0,
            offset: 0,
        });
        let reply = self.encode(&ServerMessage::Published {
            id,
            epoch: position.epoch,
            offset: position.offset,
        });
        match engine.ack_state(&published.ack) {
            AckState::Acked => Ok(Some(reply)),
            _ => {
                self.pending_acks.push_back(PendingAck {
                    ack: published.ack,
                    id,
                    reply: Some(reply),
                    wants_reply: true,
                });
                engine.request_flush();
                Ok(None)
            }
        }
    }

    /// Handles `refresh`; the reply frame on success.
    fn refresh(&mut self, id: RequestId, token: &str) -> Result<Bytes, Refusal> {
        let identity = self.broker.authenticator().verify(token).map_err(|err| {
            self.broker.stats().auth_failed(&err);
            Refusal::new(ErrorCode::InvalidToken, err.to_string())
        })?;
        if identity.subject != self.identity.subject {
            return Err(Refusal::new(
                ErrorCode::SubjectMismatch,
                "the new token is for a different `sub`",
            ));
        }
        let expires_at = identity.expires_at.map(unix_ms);
        self.identity = identity;
        self.warned_expiry = false;
        Ok(self.encode(&ServerMessage::Refreshed { id, expires_at }))
    }

    /// Sends the close frame (if any) and waits briefly for the client's
    /// reply; dropping the session then releases what the connection held,
    /// and the socket, asked to linger, drains what the client still sends.
    async fn finish(mut self: Box<Self>, ending: Ending) {
        let (code, reason, readable) = match ending {
            Ending::Close(code, reason) => (code, reason, true),
            Ending::Abort(code, reason) => (code, reason, false),
            Ending::Gone => return,
        };
        tracing::debug!(code = code.code(), reason = %reason, "closing connection");
        if let Some(linger) = &self.linger {
            linger.request(self.broker.config().websocket.close_linger);
        }
        let close = Message::Close(Some(CloseFrame {
            code: code.code(),
            reason: reason.into(),
        }));
        let sent = tokio::time::timeout(CLOSE_REPLY_WAIT, self.socket.send(close)).await;
        if readable && matches!(sent, Ok(Ok(()))) {
            // Read until the client's close reply ends the stream.
            let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
                while let Some(Ok(_)) = self.socket.next().await {}
            })
            .await;
        }
    }
}

/// The release of everything a connection held, whichever way its session
/// ends: a close, a socket error, or a panic (the runtime drops the task's
/// future after catching it). The admission is dropped right after this.
impl Drop for Session {
    fn drop(&mut self) {
        for (filter, held) in std::mem::take(&mut self.held) {
            self.drop_subscription(&filter, &held);
        }
    }
}

/// The error reply for a publish (or subscribe) the topic layer refused.
/// Store failures are logged by the flusher, once; here at `debug` only, so
/// a failing disk cannot flood the log with one line per request.
fn write_refusal(err: &WriteError) -> Refusal {
    match err {
        WriteError::TooManyTopics { .. } => Refusal::new(ErrorCode::TooManyTopics, err.to_string()),
        WriteError::StoreBehind { .. } => Refusal::new(ErrorCode::StorageFailed, err.to_string()),
        WriteError::Store(cause) => {
            tracing::debug!(cause = %cause, "write refused by the store");
            Refusal::new(
                ErrorCode::StorageFailed,
                "history store failed; retry later",
            )
        }
    }
}

fn socket_error_ending(err: &axum::Error) -> Ending {
    use std::error::Error as _;
    let source = err.source();
    let tungstenite = source.and_then(|source| source.downcast_ref::<tungstenite::Error>());
    match tungstenite {
        Some(tungstenite::Error::Capacity(capacity)) => Ending::Abort(
            CloseCode::MessageTooBig,
            format!("frame too large: {capacity}"),
        ),
        Some(tungstenite::Error::Protocol(protocol)) => {
            Ending::Abort(CloseCode::ProtocolError, protocol.to_string())
        }
        Some(tungstenite::Error::Utf8(_)) => {
            Ending::Abort(CloseCode::InvalidPayload, "invalid UTF-8".into())
        }
        _ => Ending::Gone,
    }
}

/// The network engine's answer to the oldest pending publish; never
/// resolves while that one waits for a flush instead (or none waits).
async fn front_answer(pending: &mut VecDeque<PendingAck>) -> Result<Option<StreamPosition>, ()> {
    match pending.front_mut().map(|front| &mut front.ack) {
        Some(Ack::Network(NetworkAck(receiver))) => match receiver.await {
            Ok(Ok(position)) => Ok(position),
            _ => Err(()),
        },
        _ => std::future::pending().await,
    }
}

/// The next frame of the outbound queue; never resolves while there is no
/// queue (no subscription yet).
async fn recv_queued(inbox: &mut Option<Inbox>) -> Option<Bytes> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the expiry timer, if any, fires.
async fn expiry_elapsed(timer: &mut Option<(tokio::time::Instant, Pin<Box<tokio::time::Sleep>>)>) {
    match timer {
        Some((_, sleep)) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}
