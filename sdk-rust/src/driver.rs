//! The connection driver: one background task per client that connects,
//! reconnects with backoff, and runs the protocol over each connection.
//!
//! The driver owns every piece of mutable state (subscriptions, requests in
//! flight), so no lock is shared with the application. Per connection it
//! runs one `select!` loop over the close signal, dropped subscriptions,
//! the outbox, incoming frames, application requests, the token refresh,
//! room appearing in a full subscription queue, and the silence timer; a
//! separate writer task owns the socket's sink, so a slow write never stops
//! the loop from reading (and a read never waits on a write).
//!
//! Nothing in the loop awaits a subscription queue: deliveries use
//! `try_send`. When a queue is full, an exact subscription to a stored topic
//! stops advancing its cursor (later deliveries are skipped) and, once the
//! application has drained half the queue, resubscribes from the cursor;
//! the broker replays what was skipped. The same resubscribe happens when a
//! delivery or gap arrives past the cursor for any other reason, so such a
//! subscription never waits for an offset that will not come. Other
//! subscriptions count what they skip and report it as
//! [`Event::Lagged`](crate::Event::Lagged); their notices (interruption,
//! gap, epoch change) are never skipped: one that finds the queue full is
//! kept on the subscription and sent first once there is room.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, SplitSink};
use futures_util::{SinkExt, StreamExt};
use sockeye_protocol::{
    ClientMessage, CloseCode, Compression, DecodeError, Delivery, ErrorCode, FIRST_OFFSET,
    OffsetRange, PROTOCOL_VERSION, Position, RequestId, SUBPROTOCOL, ServerMessage, StreamPosition,
    Subscribed, TopicFilter, TopicName, Welcome, frame,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::Instrument;

use crate::client::{ClientConfig, Command, ConnectionState, Published, TokenSource};
use crate::error::{CloseReason, Error};
use crate::subscription::{Gap, Item, SubKey};

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;
type WakeFuture = futures_util::future::BoxFuture<'static, SubKey>;

/// Frames the writer sends before one flush.
const WRITE_BATCH: usize = 64;

/// Sent in the handshake; operators see it in the admin API's connection list.
const USER_AGENT: &str = concat!("sockeye-sdk-rust/", env!("CARGO_PKG_VERSION"));

/// How long to wait for the socket to finish closing after a close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Closes that the protocol says to reconnect after "only after backoff"
/// start the backoff schedule at this attempt.
const BACKOFF_FLOOR_AFTER_PENALTY: u32 = 3;

/// One subscription, across connections.
#[derive(Debug)]
struct Sub {
    filter: TopicFilter,
    /// Where its events go; `max_capacity()` is the subscription's capacity.
    queue: mpsc::Sender<Item>,
    /// The caller of `subscribe`, until the first `subscribed` (or error).
    first: Option<oneshot::Sender<Result<Subscribed, Error>>>,
    /// The position asked for by the application (first subscribe only).
    position: Option<Position>,
    /// For exact subscriptions to stored topics: the position of the next
    /// message to hand to the application. Everything before it was
    /// delivered; anything else that arrives is a duplicate or was skipped
    /// while the queue was full, and is dropped.
    expected: Option<StreamPosition>,
    /// A `subscribe` for it is waiting for its reply on this connection.
    in_flight: bool,
    /// The broker holds it on this connection.
    held: bool,
    /// Its queue overflowed: resubscribe from `expected` once there is room.
    needs_resync: bool,
    /// A wake-up for room in the queue is registered.
    waiting: bool,
    /// Non-resumable deliveries skipped because the queue was full, not yet
    /// reported.
    missed: u64,
    /// Notices ([`Item::Interrupted`], [`Item::Gap`], [`Item::EpochChanged`])
    /// that found the queue full, oldest first; sent before anything else.
    /// Coalesced by [`Sub::owe`]: at most one `Interrupted`, and per topic
    /// one `EpochChanged` and one `Gap` per epoch.
    owed: VecDeque<Item>,
}

impl Sub {
    fn resumable(&self) -> bool {
        self.expected.is_some()
    }

    /// Records a notice the application must get; [`Sub::flush_notices`]
    /// sends it in order once the queue has room.
    fn owe(&mut self, notice: Item) {
        match &notice {
            Item::Interrupted => {
                if self
                    .owed
                    .iter()
                    .any(|owed| matches!(owed, Item::Interrupted))
                {
                    return;
                }
            }
            Item::EpochChanged { topic, .. } => {
                // The older epoch's offsets are void, and with them whatever
                // was owed about that topic.
                self.owed.retain(|owed| match owed {
                    Item::Gap { topic: other, .. } | Item::EpochChanged { topic: other, .. } => {
                        other != topic
                    }
                    _ => true,
                });
            }
            Item::Gap { topic, gap } => {
                // Deliveries between two gaps of one topic were discarded
                // (and counted as missed) while the notice waited, so one
                // covering range is what the application could not read.
                for owed in &mut self.owed {
                    if let Item::Gap {
                        topic: other,
                        gap: earlier,
                    } = owed
                        && other == topic
                        && earlier.epoch == gap.epoch
                    {
                        earlier.from = earlier.from.min(gap.from);
                        earlier.to = earlier.to.max(gap.to);
                        return;
                    }
                }
            }
            Item::Message(_) | Item::Lagged { .. } | Item::Failed(_) => {}
        }
        self.owed.push_back(notice);
    }

    /// Sends the notices owed to the application; true if none is left.
    fn flush_notices(&mut self) -> bool {
        while let Some(notice) = self.owed.pop_front() {
            match self.queue.try_send(notice) {
                Ok(()) => {}
                Err(TrySendError::Full(notice) | TrySendError::Closed(notice)) => {
                    self.owed.push_front(notice);
                    return false;
                }
            }
        }
        if self.missed > 0 {
            let missed = self.missed;
            if self.queue.try_send(Item::Lagged { missed }).is_err() {
                return false;
            }
            self.missed = 0;
        }
        true
    }
}

/// What a request in flight is waiting for.
#[derive(Debug)]
enum Pending {
    Subscribe(SubKey),
    Unsubscribe,
    Publish(oneshot::Sender<Result<Published, Error>>),
    Refresh,
}

/// State of one connection.
struct Conn {
    /// Frames waiting for room in the writer's queue, in order.
    outbox: VecDeque<WsMessage>,
    pending: HashMap<RequestId, Pending>,
    compression: Compression,
    max_inflated: usize,
    /// A token being fetched for an in-band refresh.
    refresh: Option<crate::client::TokenFuture>,
    /// Wake-ups for subscriptions waiting for room in their queue.
    wakes: FuturesUnordered<WakeFuture>,
    /// Broker silence after which the connection counts as dead.
    silence: Option<Duration>,
}

/// How one connection ended.
#[derive(Debug)]
enum SessionEnd {
    /// The application closed the client; the close handshake is done.
    ClientClosed,
    /// The broker closed with this code and reason.
    Closed { code: u16, reason: String },
    /// The connection failed or went silent.
    Lost(String),
}

/// The outcome of one connection attempt.
enum Attempt {
    Connected(Box<WsStream>, Welcome),
    Retry {
        cause: String,
        retry_after: Option<Duration>,
    },
    Fatal(CloseReason),
    Closed,
}

/// What woke the session loop.
enum Wake {
    Nothing,
    End(SessionEnd),
    CloseRequested,
    Dropped(SubKey),
    Incoming(Option<Result<WsMessage, tungstenite::Error>>),
    Command(Command),
    Token(Result<String, crate::error::BoxError>),
    Room(SubKey),
}

/// What to do after handling an incoming frame.
enum Flow {
    Continue,
    BrokerClosed { code: u16, reason: String },
    Lost(String),
}

pub(crate) struct Driver {
    url: String,
    token: TokenSource,
    config: Arc<ClientConfig>,
    commands: mpsc::Receiver<Command>,
    dropped: mpsc::UnboundedReceiver<SubKey>,
    close: watch::Receiver<bool>,
    state: watch::Sender<ConnectionState>,
    subs: HashMap<SubKey, Sub>,
    next_id: RequestId,
}

impl Driver {
    pub(crate) fn new(
        url: String,
        token: TokenSource,
        config: Arc<ClientConfig>,
        commands: mpsc::Receiver<Command>,
        dropped: mpsc::UnboundedReceiver<SubKey>,
        close: watch::Receiver<bool>,
        state: watch::Sender<ConnectionState>,
    ) -> Self {
        Self {
            url,
            token,
            config,
            commands,
            dropped,
            close,
            state,
            subs: HashMap::new(),
            next_id: 1,
        }
    }

    /// Connects, serves, and reconnects until the client is closed.
    pub(crate) async fn run(self) {
        let span = tracing::debug_span!("sockeye_client", url = %self.url);
        self.run_inner().instrument(span).await;
    }

    async fn run_inner(mut self) {
        let backoff = self.config.backoff.clone();
        let mut failures: u32 = 0;
        let mut delay: Option<Duration> = None;
        let mut cause = String::new();
        let reason = loop {
            if let Some(delay) = delay {
                self.state.send_replace(ConnectionState::Reconnecting {
                    attempt: failures,
                    delay,
                    cause: cause.clone(),
                });
                tracing::debug!(?delay, attempt = failures, %cause, "reconnecting");
                if !self.wait(delay).await {
                    break CloseReason::ClientClosed;
                }
            }
            match self.attempt().await {
                Attempt::Closed => break CloseReason::ClientClosed,
                Attempt::Fatal(reason) => break reason,
                Attempt::Retry {
                    cause: why,
                    retry_after,
                } => {
                    failures = failures.saturating_add(1);
                    tracing::debug!(cause = %why, failures, "connection attempt failed");
                    cause = why;
                    if backoff.max_attempts.is_some_and(|max| failures >= max) {
                        break CloseReason::GaveUp {
                            attempts: failures,
                            last_error: cause,
                        };
                    }
                    delay = Some(match retry_after {
                        Some(hint) => hint.min(backoff.max),
                        None => backoff.delay(failures, &mut rand::rng()),
                    });
                }
                Attempt::Connected(ws, welcome) => {
                    failures = 0;
                    match self.session(*ws, welcome).await {
                        SessionEnd::ClientClosed => break CloseReason::ClientClosed,
                        SessionEnd::Lost(why) => {
                            tracing::debug!(cause = %why, "connection lost");
                            cause = why;
                            delay = Some(backoff.delay(0, &mut rand::rng()));
                        }
                        SessionEnd::Closed { code, reason } => {
                            tracing::debug!(code, %reason, "broker closed the connection");
                            let known = CloseCode::from_code(code);
                            if known.is_some_and(|known| !known.should_reconnect()) {
                                break CloseReason::Broker { code, reason };
                            }
                            delay = Some(match known {
                                Some(CloseCode::GoingAway) => retry_after_hint(&reason)
                                    .map(|hint| hint.min(backoff.max))
                                    .unwrap_or_else(|| backoff.delay(0, &mut rand::rng())),
                                Some(
                                    CloseCode::Kicked
                                    | CloseCode::RateLimited
                                    | CloseCode::InternalError,
                                ) => backoff.delay(BACKOFF_FLOOR_AFTER_PENALTY, &mut rand::rng()),
                                _ => backoff.delay(0, &mut rand::rng()),
                            });
                            cause =
                                format!("the broker closed the connection with {code} ({reason})");
                        }
                    }
                }
            }
        };
        self.finish(reason);
    }

    /// Waits out a reconnect delay; false if the client was closed meanwhile.
    async fn wait(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                _ = self.close.wait_for(|closed| *closed) => return false,
                Some(key) = self.dropped.recv() => {
                    self.subs.remove(&key);
                }
                () = &mut sleep => return true,
            }
        }
    }

    /// One connection attempt, up to and including `welcome`.
    async fn attempt(&mut self) -> Attempt {
        let open = open_connection(&self.url, &self.token, &self.config);
        tokio::select! {
            biased;
            _ = self.close.wait_for(|closed| *closed) => Attempt::Closed,
            outcome = tokio::time::timeout(self.config.connect_timeout, open) => match outcome {
                Ok(attempt) => attempt,
                Err(_) => Attempt::Retry {
                    cause: format!("no welcome within {:?}", self.config.connect_timeout),
                    retry_after: None,
                },
            },
        }
    }

    fn next_id(&mut self) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn push(conn: &mut Conn, message: &ClientMessage) {
        conn.outbox
            .push_back(WsMessage::Binary(message.encode_frame(&conn.compression)));
    }

    /// Serves one connection until it ends.
    async fn session(&mut self, ws: WsStream, welcome: Welcome) -> SessionEnd {
        if welcome.version != PROTOCOL_VERSION {
            tracing::warn!(
                version = welcome.version,
                "broker speaks another protocol version"
            );
        }
        let (sink, mut stream) = ws.split();
        let (out_tx, out_rx) = mpsc::channel(self.config.write_queue.max(1));
        let mut writer = tokio::spawn(write_frames(sink, out_rx));
        let mut conn = Conn {
            outbox: VecDeque::new(),
            pending: HashMap::new(),
            compression: Compression {
                threshold: usize::try_from(welcome.limits.compression_threshold_bytes)
                    .unwrap_or(usize::MAX),
                level: 1,
            },
            max_inflated: self.config.max_inbound_bytes,
            refresh: None,
            wakes: FuturesUnordered::new(),
            silence: (welcome.heartbeat_timeout_ms > 0)
                .then(|| Duration::from_millis(welcome.heartbeat_timeout_ms)),
        };
        tracing::debug!(connection_id = welcome.connection_id, "connected");
        self.state.send_replace(ConnectionState::Connected {
            connection_id: welcome.connection_id,
            subject: welcome.subject.clone(),
        });
        // Subscribes whose caller gave up while disconnected are not resent.
        self.subs
            .retain(|_, sub| !sub.first.as_ref().is_some_and(oneshot::Sender::is_closed));
        let keys: Vec<SubKey> = self.subs.keys().copied().collect();
        for key in keys {
            self.send_subscribe(&mut conn, key);
        }
        let silence = conn.silence.unwrap_or(Duration::from_secs(3600));
        let mut silent_until = Instant::now() + silence;
        let mut closing: Option<Instant> = None;
        let mut close_sent = false;
        let end = loop {
            let take_requests = closing.is_none()
                && conn.outbox.len() < self.config.outbox.max(1)
                && conn.pending.len() < self.config.max_in_flight;
            let wake = tokio::select! {
                biased;
                _ = self.close.wait_for(|closed| *closed), if closing.is_none() => Wake::CloseRequested,
                Some(key) = self.dropped.recv() => Wake::Dropped(key),
                permit = out_tx.reserve(), if !conn.outbox.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(frame) = conn.outbox.pop_front() {
                            permit.send(frame);
                        }
                        Wake::Nothing
                    }
                    Err(_) => Wake::End(SessionEnd::Lost("the writer stopped".into())),
                },
                incoming = stream.next() => Wake::Incoming(incoming),
                command = self.commands.recv(), if take_requests => match command {
                    Some(command) => Wake::Command(command),
                    // Every handle is gone: nobody can use the client any more.
                    None => Wake::CloseRequested,
                },
                token = poll_option(&mut conn.refresh), if conn.refresh.is_some() => Wake::Token(token),
                Some(key) = conn.wakes.next(), if !conn.wakes.is_empty() => Wake::Room(key),
                () = tokio::time::sleep_until(silent_until) => Wake::End(SessionEnd::Lost(
                    format!("nothing received from the broker for {silence:?}"),
                )),
                // The close timeout passed with replies outstanding.
                () = sleep_until_option(closing), if closing.is_some() && !close_sent => Wake::Nothing,
                result = &mut writer => Wake::End(SessionEnd::Lost(match result {
                    Ok(Err(err)) => format!("write failed: {err}"),
                    _ => "the writer stopped".to_owned(),
                })),
            };
            match wake {
                Wake::Nothing => {}
                Wake::End(end) => break end,
                Wake::CloseRequested => {
                    closing = Some(Instant::now() + self.config.close_timeout);
                }
                Wake::Dropped(key) => self.on_dropped(&mut conn, key),
                Wake::Incoming(incoming) => {
                    silent_until = Instant::now() + silence;
                    match self.on_incoming(&mut conn, incoming) {
                        Flow::Continue => {}
                        Flow::Lost(why) => break SessionEnd::Lost(why),
                        Flow::BrokerClosed { code, reason } => {
                            // Reading on lets tungstenite send its close reply.
                            let _ = tokio::time::timeout(CLOSE_LINGER, async {
                                while stream.next().await.is_some() {}
                            })
                            .await;
                            break SessionEnd::Closed { code, reason };
                        }
                    }
                }
                Wake::Command(command) => self.on_command(&mut conn, command),
                Wake::Token(Ok(token)) => {
                    conn.refresh = None;
                    let id = self.next_id();
                    Self::push(&mut conn, &ClientMessage::Refresh { id, token });
                    conn.pending.insert(id, Pending::Refresh);
                }
                Wake::Token(Err(err)) => {
                    conn.refresh = None;
                    tracing::warn!(
                        cause = %err,
                        "the token provider failed; the broker will close at expiry and the client will reconnect"
                    );
                }
                Wake::Room(key) => self.on_room(&mut conn, key),
            }
            if let Some(deadline) = closing
                && !close_sent
                && (conn.pending.is_empty() || Instant::now() >= deadline)
            {
                conn.outbox.push_back(WsMessage::Close(Some(CloseFrame {
                    code: WsCloseCode::Normal,
                    reason: "client closing".into(),
                })));
                close_sent = true;
            }
            if close_sent && conn.outbox.is_empty() {
                break SessionEnd::ClientClosed;
            }
        };
        drop(out_tx);
        if matches!(end, SessionEnd::ClientClosed) {
            // Wait for the broker's close reply, which ends the stream.
            let _ = tokio::time::timeout(self.config.close_timeout, async {
                while let Some(Ok(message)) = stream.next().await {
                    if message.is_close() {
                        break;
                    }
                }
            })
            .await;
        }
        if tokio::time::timeout(CLOSE_LINGER, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        self.connection_ended(conn);
        end
    }

    /// Fails what was waiting on the connection and prepares every
    /// subscription to be made again on the next one.
    fn connection_ended(&mut self, conn: Conn) {
        for (_, pending) in conn.pending {
            if let Pending::Publish(reply) = pending {
                let _ = reply.send(Err(Error::ConnectionLost));
            }
        }
        for sub in self.subs.values_mut() {
            if sub.held && !sub.resumable() {
                sub.owe(Item::Interrupted);
            }
            sub.in_flight = false;
            sub.held = false;
            sub.needs_resync = false;
            sub.waiting = false;
        }
    }

    /// The client is closed for good: publish the reason, fail every waiting
    /// request, and end every subscription stream.
    fn finish(&mut self, reason: CloseReason) {
        tracing::debug!(%reason, "client closed");
        self.state.send_replace(ConnectionState::Closed {
            reason: reason.clone(),
        });
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Subscribe { reply, .. } => {
                    let _ = reply.send(Err(Error::Closed(reason.clone())));
                }
                Command::Publish {
                    reply: Some(reply), ..
                } => {
                    let _ = reply.send(Err(Error::Closed(reason.clone())));
                }
                Command::Publish { reply: None, .. } => {}
            }
        }
        for (_, sub) in self.subs.drain() {
            if let Some(first) = sub.first {
                let _ = first.send(Err(Error::Closed(reason.clone())));
            }
        }
    }

    fn on_command(&mut self, conn: &mut Conn, command: Command) {
        match command {
            Command::Subscribe {
                key,
                filter,
                position,
                queue,
                reply,
            } => {
                if reply.is_closed() {
                    return; // The caller gave up before it was sent.
                }
                self.subs.insert(
                    key,
                    Sub {
                        filter,
                        queue,
                        first: Some(reply),
                        position,
                        expected: None,
                        in_flight: false,
                        held: false,
                        needs_resync: false,
                        waiting: false,
                        missed: 0,
                        owed: VecDeque::new(),
                    },
                );
                self.send_subscribe(conn, key);
            }
            Command::Publish {
                topic,
                payload,
                reply,
            } => {
                if reply.as_ref().is_some_and(oneshot::Sender::is_closed) {
                    return; // Timed out before it was sent: it must not be sent.
                }
                let id = self.next_id();
                Self::push(
                    conn,
                    &ClientMessage::Publish {
                        id,
                        topic,
                        payload,
                        ack: reply.is_some(),
                    },
                );
                if let Some(reply) = reply {
                    conn.pending.insert(id, Pending::Publish(reply));
                }
            }
        }
    }

    /// Sends a `subscribe` for `key`, resuming after its cursor if it has one.
    fn send_subscribe(&mut self, conn: &mut Conn, key: SubKey) {
        let id = self.next_id();
        let Some(sub) = self.subs.get_mut(&key) else {
            return;
        };
        let position = if sub.first.is_some() {
            sub.position
        } else {
            sub.expected.map(|next| Position::After {
                epoch: next.epoch,
                offset: next.offset.saturating_sub(1),
            })
        };
        sub.in_flight = true;
        let topic = sub.filter.to_string();
        Self::push(
            conn,
            &ClientMessage::Subscribe {
                id,
                topic,
                position,
            },
        );
        conn.pending.insert(id, Pending::Subscribe(key));
    }

    fn send_unsubscribe(&mut self, conn: &mut Conn, topic: String) {
        let id = self.next_id();
        Self::push(conn, &ClientMessage::Unsubscribe { id, topic });
        conn.pending.insert(id, Pending::Unsubscribe);
    }

    fn on_dropped(&mut self, conn: &mut Conn, key: SubKey) {
        if let Some(sub) = self.subs.remove(&key)
            && (sub.held || sub.in_flight)
        {
            self.send_unsubscribe(conn, sub.filter.to_string());
        }
    }

    fn register_wake(conn: &mut Conn, key: SubKey, sub: &mut Sub) {
        if sub.waiting {
            return;
        }
        sub.waiting = true;
        let queue = sub.queue.clone();
        let room = (sub.queue.max_capacity() / 2).max(1);
        conn.wakes.push(Box::pin(async move {
            // Fails only when the subscription is gone, which the handler
            // notices.
            let _ = queue.reserve_many(room).await;
            key
        }));
    }

    /// A full queue of an exact subscription to a stored topic: stop
    /// advancing, and resubscribe from the cursor when there is room.
    fn overflowed(conn: &mut Conn, key: SubKey, sub: &mut Sub) {
        if !sub.needs_resync {
            tracing::debug!(filter = %sub.filter, "subscription queue full; will resume from the store");
        }
        sub.needs_resync = true;
        Self::register_wake(conn, key, sub);
    }

    /// A delivery or gap past the cursor of a resumable subscription: the
    /// offsets in between never arrived. Unless the subscription is already
    /// being made again (then the frame belongs to the one being replaced),
    /// resubscribe from the cursor, so the broker replays the missing
    /// offsets or reports them as a gap; dropping the frame and waiting
    /// would stall the subscription for good.
    fn ahead_of_cursor(conn: &mut Conn, key: SubKey, sub: &mut Sub, epoch: u64, from: u64) {
        if sub.in_flight || sub.needs_resync {
            tracing::trace!(filter = %sub.filter, epoch, from, "skipping a frame past the cursor; a resubscribe is under way");
            return;
        }
        tracing::debug!(
            filter = %sub.filter,
            epoch,
            from,
            expected = ?sub.expected,
            "a frame past the cursor: resubscribing from the cursor"
        );
        sub.needs_resync = true;
        Self::register_wake(conn, key, sub);
    }

    /// Records a notice for a subscription that cannot be resumed and sends
    /// what it owes, or waits for room.
    fn notify(conn: &mut Conn, key: SubKey, sub: &mut Sub, notice: Item) {
        sub.owe(notice);
        if !sub.flush_notices() {
            Self::register_wake(conn, key, sub);
        }
    }

    /// A subscription's queue has room again.
    fn on_room(&mut self, conn: &mut Conn, key: SubKey) {
        let Some(sub) = self.subs.get_mut(&key) else {
            return;
        };
        sub.waiting = false;
        if sub.queue.is_closed() {
            self.on_dropped(conn, key);
            return;
        }
        if !sub.flush_notices() {
            Self::register_wake(conn, key, sub);
            return;
        }
        if sub.resumable() && sub.needs_resync && !sub.in_flight {
            sub.needs_resync = false;
            let topic = sub.filter.to_string();
            self.send_unsubscribe(conn, topic);
            self.send_subscribe(conn, key);
        }
    }

    /// The subscription a delivery for `topic` belongs to: the protocol
    /// keeps a connection's filters disjoint, so there is at most one.
    fn route(&self, topic: &str) -> Option<SubKey> {
        if let Some((key, _)) = self
            .subs
            .iter()
            .find(|(_, sub)| sub.filter.as_str() == topic)
        {
            return Some(*key);
        }
        let name = TopicName::parse(topic, usize::MAX).ok()?;
        self.subs
            .iter()
            .find(|(_, sub)| !sub.filter.is_exact() && sub.filter.matches(&name))
            .map(|(key, _)| *key)
    }

    fn on_incoming(
        &mut self,
        conn: &mut Conn,
        incoming: Option<Result<WsMessage, tungstenite::Error>>,
    ) -> Flow {
        let message = match incoming {
            None => return Flow::Lost("the broker closed the socket".into()),
            Some(Err(err)) => return Flow::Lost(format!("read failed: {err}")),
            Some(Ok(message)) => message,
        };
        let data = match message {
            WsMessage::Binary(data) => data,
            WsMessage::Close(frame) => {
                let (code, reason) = frame
                    .map(|frame| (u16::from(frame.code), frame.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Flow::BrokerClosed { code, reason };
            }
            WsMessage::Text(_) => {
                return Flow::Lost(
                    "the broker sent a text frame, which the protocol never does".into(),
                );
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => return Flow::Continue,
        };
        let decoded =
            frame::open(&data, conn.max_inflated).and_then(|body| ServerMessage::decode(&body));
        match decoded {
            Ok(message) => {
                self.on_message(conn, message);
                Flow::Continue
            }
            Err(DecodeError::UnknownType { kind }) => {
                tracing::debug!(%kind, "ignoring a message kind this client does not know");
                Flow::Continue
            }
            // Dropping the connection and resuming loses nothing; skipping
            // an unreadable frame could.
            Err(err) => Flow::Lost(format!("unreadable frame from the broker: {err}")),
        }
    }

    fn on_message(&mut self, conn: &mut Conn, message: ServerMessage) {
        match message {
            ServerMessage::Message(delivery) => self.on_delivery(conn, delivery),
            ServerMessage::Published { id, epoch, offset } => {
                if let Some(Pending::Publish(reply)) = conn.pending.remove(&id) {
                    let _ = reply.send(Ok(Published { epoch, offset }));
                }
            }
            ServerMessage::Subscribed(reply) => match conn.pending.remove(&reply.id) {
                Some(Pending::Subscribe(key)) => self.on_subscribed(conn, key, reply),
                other => tracing::debug!(?other, id = reply.id, "unexpected subscribed reply"),
            },
            ServerMessage::Error { id, code, message } => {
                let pending = id.and_then(|id| conn.pending.remove(&id));
                match pending {
                    Some(Pending::Publish(reply)) => {
                        let _ = reply.send(Err(Error::Rejected { code, message }));
                    }
                    Some(Pending::Subscribe(key)) => {
                        self.on_subscribe_error(conn, key, code, message);
                    }
                    Some(Pending::Unsubscribe) => {
                        tracing::debug!(%code, %message, "unsubscribe refused");
                    }
                    Some(Pending::Refresh) => {
                        tracing::warn!(%code, %message, "token refresh refused; the broker will close at expiry");
                    }
                    None => tracing::warn!(?id, %code, %message, "the broker reported an error"),
                }
            }
            ServerMessage::Unsubscribed { id, .. } | ServerMessage::Pong { id } => {
                conn.pending.remove(&id);
            }
            ServerMessage::Refreshed { id, expires_at } => {
                conn.pending.remove(&id);
                tracing::debug!(?expires_at, "token refreshed");
            }
            ServerMessage::TokenExpiring { expires_at } => {
                if self.token.can_refresh() {
                    if conn.refresh.is_none() {
                        conn.refresh = Some(self.token.fetch());
                    }
                } else {
                    tracing::info!(
                        expires_at,
                        "the token expires soon and this client has no token provider"
                    );
                }
            }
            ServerMessage::Gap {
                topic,
                epoch,
                range,
            } => self.on_gap(conn, topic, epoch, range),
            ServerMessage::Reset { topic, epoch } => self.on_reset(conn, topic, epoch),
            ServerMessage::Welcome(_) => tracing::debug!("ignoring a second welcome"),
            other => tracing::debug!(kind = other.kind(), "ignoring an unexpected message"),
        }
    }

    fn on_delivery(&mut self, conn: &mut Conn, delivery: Delivery) {
        let Some(key) = self.route(&delivery.topic) else {
            // A delivery queued before an unsubscribe took effect.
            tracing::trace!(topic = %delivery.topic, "delivery for no held subscription");
            return;
        };
        let Some(sub) = self.subs.get_mut(&key) else {
            return;
        };
        if let Some(next) = sub.expected {
            match arrival(next, delivery.epoch, delivery.offset, delivery.offset) {
                Arrival::Behind => {
                    tracing::trace!(
                        topic = %delivery.topic,
                        offset = delivery.offset,
                        next = next.offset,
                        "skipping a delivery already handed over"
                    );
                    return;
                }
                Arrival::Ahead => {
                    Self::ahead_of_cursor(conn, key, sub, delivery.epoch, delivery.offset);
                    return;
                }
                Arrival::Next => {}
            }
            if !sub.flush_notices() {
                Self::overflowed(conn, key, sub);
                return;
            }
            match sub.queue.try_send(Item::Message(delivery)) {
                Ok(()) => sub.expected = Some(next.next()),
                Err(TrySendError::Full(_)) => Self::overflowed(conn, key, sub),
                Err(TrySendError::Closed(_)) => self.on_dropped(conn, key),
            }
            return;
        }
        if !sub.flush_notices() {
            sub.missed += 1;
            Self::register_wake(conn, key, sub);
            return;
        }
        match sub.queue.try_send(Item::Message(delivery)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                sub.missed += 1;
                Self::register_wake(conn, key, sub);
            }
            Err(TrySendError::Closed(_)) => self.on_dropped(conn, key),
        }
    }

    fn on_gap(&mut self, conn: &mut Conn, topic: String, epoch: u64, range: OffsetRange) {
        let Some(key) = self.route(&topic) else {
            return;
        };
        let Some(sub) = self.subs.get_mut(&key) else {
            return;
        };
        let Some(next) = sub.expected else {
            let gap = Gap {
                epoch,
                from: range.from,
                to: range.to,
            };
            Self::notify(conn, key, sub, Item::Gap { topic, gap });
            return;
        };
        match arrival(next, epoch, range.from, range.to) {
            Arrival::Behind => {
                tracing::trace!(%topic, next = next.offset, "skipping a gap before the cursor");
            }
            Arrival::Ahead => Self::ahead_of_cursor(conn, key, sub, epoch, range.from),
            Arrival::Next => {
                if !sub.flush_notices() {
                    Self::overflowed(conn, key, sub);
                    return;
                }
                // Offsets before the cursor were delivered: not part of the gap.
                let gap = Gap {
                    epoch,
                    from: next.offset,
                    to: range.to,
                };
                match sub.queue.try_send(Item::Gap { topic, gap }) {
                    Ok(()) => {
                        sub.expected = Some(StreamPosition {
                            epoch,
                            offset: range.to + 1,
                        });
                    }
                    Err(TrySendError::Full(_)) => Self::overflowed(conn, key, sub),
                    Err(TrySendError::Closed(_)) => self.on_dropped(conn, key),
                }
            }
        }
    }

    fn on_reset(&mut self, conn: &mut Conn, topic: String, epoch: u64) {
        let Some(key) = self.route(&topic) else {
            return;
        };
        let Some(sub) = self.subs.get_mut(&key) else {
            return;
        };
        let item = Item::EpochChanged {
            topic,
            epoch,
            next_offset: FIRST_OFFSET,
        };
        let Some(current) = sub.expected.map(|next| next.epoch) else {
            Self::notify(conn, key, sub, item);
            return;
        };
        if current == epoch {
            return; // Already in that epoch: a stale frame.
        }
        if !sub.flush_notices() {
            Self::overflowed(conn, key, sub);
            return;
        }
        match sub.queue.try_send(item) {
            Ok(()) => {
                sub.expected = Some(StreamPosition {
                    epoch,
                    offset: FIRST_OFFSET,
                });
            }
            Err(TrySendError::Full(_)) => Self::overflowed(conn, key, sub),
            Err(TrySendError::Closed(_)) => self.on_dropped(conn, key),
        }
    }

    fn on_subscribed(&mut self, conn: &mut Conn, key: SubKey, reply: Subscribed) {
        let Some(sub) = self.subs.get_mut(&key) else {
            return;
        };
        sub.in_flight = false;
        sub.held = true;
        if let Some(first) = sub.first.take()
            && first.send(Ok(reply.clone())).is_err()
        {
            // The caller gave up waiting: nobody will read this.
            self.on_dropped(conn, key);
            return;
        }
        let topic = reply.topic.clone();
        if reply.stored && sub.filter.is_exact() {
            let mut notice = None;
            if reply.epoch_changed {
                notice = Some(Item::EpochChanged {
                    topic,
                    epoch: reply.epoch,
                    next_offset: reply.next_offset,
                });
            } else if let Some(gap) = reply.gap {
                notice = Some(Item::Gap {
                    topic,
                    gap: Gap {
                        epoch: reply.epoch,
                        from: gap.from,
                        to: gap.to,
                    },
                });
            }
            if sub.expected.is_none() {
                // A new cursor: there is no earlier one to resubscribe from,
                // so a notice that finds the queue full is owed.
                sub.expected = Some(StreamPosition {
                    epoch: reply.epoch,
                    offset: reply.next_offset,
                });
                if let Some(notice) = notice {
                    sub.owe(notice);
                }
                if !sub.flush_notices() {
                    Self::register_wake(conn, key, sub);
                }
            } else {
                // A resume: if the notice cannot be queued, keep the old
                // cursor; resubscribing from it reports the notice again.
                let delivered = sub.flush_notices()
                    && notice.is_none_or(|notice| sub.queue.try_send(notice).is_ok());
                if delivered {
                    sub.expected = Some(StreamPosition {
                        epoch: reply.epoch,
                        offset: reply.next_offset,
                    });
                } else {
                    sub.needs_resync = true;
                }
            }
            if sub.needs_resync {
                Self::register_wake(conn, key, sub);
            }
        } else {
            sub.expected = None;
            if !sub.flush_notices() {
                Self::register_wake(conn, key, sub);
            }
        }
    }

    fn on_subscribe_error(
        &mut self,
        conn: &mut Conn,
        key: SubKey,
        code: ErrorCode,
        message: String,
    ) {
        let Some(sub) = self.subs.get_mut(&key) else {
            return;
        };
        sub.in_flight = false;
        if let Some(first) = sub.first.take() {
            let error = Error::from_reply(code, message, sub.filter.as_str());
            let _ = first.send(Err(error));
            self.subs.remove(&key);
            return;
        }
        match code {
            ErrorCode::PositionUnsupported => {
                // The topic is no longer stored: continue live, and say so.
                sub.expected = None;
                sub.owe(Item::Interrupted);
                self.send_subscribe(conn, key);
            }
            ErrorCode::AlreadySubscribed => sub.held = true,
            code => {
                tracing::warn!(filter = %sub.filter, %code, %message, "resubscribing failed; ending the subscription");
                let error = Error::from_reply(code, message, sub.filter.as_str());
                if let Some(sub) = self.subs.remove(&key) {
                    // The queue may be full; the error must still arrive.
                    tokio::spawn(async move {
                        let _ = sub.queue.send(Item::Failed(error)).await;
                    });
                }
            }
        }
    }
}

/// Where a frame covering offsets `from..=to` of `epoch` stands against a
/// resumable subscription's cursor `(epoch, next)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arrival {
    /// It covers `next`: hand it to the application.
    Next,
    /// Everything in it was already handed over: a duplicate.
    Behind,
    /// It starts past `next`, or is of another epoch than the cursor's:
    /// offsets in between are missing.
    Ahead,
}

fn arrival(next: StreamPosition, epoch: u64, from: u64, to: u64) -> Arrival {
    if epoch != next.epoch || from > next.offset {
        Arrival::Ahead
    } else if to < next.offset {
        Arrival::Behind
    } else {
        Arrival::Next
    }
}

/// Opens a WebSocket to the broker and reads its `welcome`.
async fn open_connection(url: &str, source: &TokenSource, config: &ClientConfig) -> Attempt {
    let token = match source.fetch().await {
        Ok(token) => token,
        Err(err) => {
            return Attempt::Retry {
                cause: format!("the token provider failed: {err}"),
                retry_after: None,
            };
        }
    };
    let mut request = match url.into_client_request() {
        Ok(request) => request,
        Err(err) => {
            return Attempt::Fatal(CloseReason::InvalidUrl {
                reason: err.to_string(),
            });
        }
    };
    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return Attempt::Retry {
            cause: "the token is not a valid header value".into(),
            retry_after: None,
        };
    };
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    request
        .headers_mut()
        .insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(config.max_inbound_bytes))
        .max_frame_size(Some(config.max_inbound_bytes));
    let mut ws =
        match tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true).await {
            Ok((ws, _response)) => ws,
            Err(err) => return handshake_failure(err, source.can_refresh()),
        };
    loop {
        let message = match ws.next().await {
            None => {
                return Attempt::Retry {
                    cause: "the broker closed the socket before welcome".into(),
                    retry_after: None,
                };
            }
            Some(Err(err)) => {
                return Attempt::Retry {
                    cause: format!("read failed before welcome: {err}"),
                    retry_after: None,
                };
            }
            Some(Ok(message)) => message,
        };
        match message {
            WsMessage::Binary(data) => {
                let decoded = frame::open(&data, config.max_inbound_bytes)
                    .and_then(|body| ServerMessage::decode(&body));
                return match decoded {
                    Ok(ServerMessage::Welcome(welcome)) => {
                        Attempt::Connected(Box::new(ws), welcome)
                    }
                    Ok(other) => Attempt::Retry {
                        cause: format!("expected welcome, got {}", other.kind()),
                        retry_after: None,
                    },
                    Err(err) => Attempt::Retry {
                        cause: format!("unreadable welcome: {err}"),
                        retry_after: None,
                    },
                };
            }
            WsMessage::Close(frame) => {
                let (code, reason) = frame
                    .map(|frame| (u16::from(frame.code), frame.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                if CloseCode::from_code(code).is_some_and(|known| !known.should_reconnect()) {
                    return Attempt::Fatal(CloseReason::Broker { code, reason });
                }
                return Attempt::Retry {
                    retry_after: retry_after_hint(&reason),
                    cause: format!("the broker closed the connection with {code} ({reason})"),
                };
            }
            _ => {}
        }
    }
}

/// Sorts a failed handshake into retry or give up.
fn handshake_failure(err: tungstenite::Error, can_refresh: bool) -> Attempt {
    match err {
        tungstenite::Error::Http(response) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(|body| String::from_utf8_lossy(body).into_owned())
                .unwrap_or_default();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let retryable = status == 429
                || status >= 500
                // A provider may hand out a good token next time.
                || (status == 401 && can_refresh);
            if retryable {
                Attempt::Retry {
                    cause: format!("handshake refused with HTTP {status}: {body}"),
                    retry_after,
                }
            } else {
                Attempt::Fatal(CloseReason::HandshakeRejected { status, body })
            }
        }
        tungstenite::Error::Url(err) => Attempt::Fatal(CloseReason::InvalidUrl {
            reason: err.to_string(),
        }),
        tungstenite::Error::HttpFormat(err) => Attempt::Fatal(CloseReason::InvalidUrl {
            reason: err.to_string(),
        }),
        err => Attempt::Retry {
            cause: format!("connect failed: {err}"),
            retry_after: None,
        },
    }
}

/// The `retry_after_ms=N` hint of a 1001 close reason.
fn retry_after_hint(reason: &str) -> Option<Duration> {
    let rest = &reason[reason.find("retry_after_ms=")? + "retry_after_ms=".len()..];
    let digits: &str = &rest[..rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len())];
    digits.parse().ok().map(Duration::from_millis)
}

/// The writer task: sends frames in batches, flushing once per batch.
async fn write_frames(
    mut sink: SplitSink<WsStream, WsMessage>,
    mut frames: mpsc::Receiver<WsMessage>,
) -> Result<(), tungstenite::Error> {
    while let Some(first) = frames.recv().await {
        sink.feed(first).await?;
        for _ in 1..WRITE_BATCH {
            match frames.try_recv() {
                Ok(next) => sink.feed(next).await?,
                Err(_) => break,
            }
        }
        sink.flush().await?;
    }
    Ok(())
}

async fn poll_option<F: std::future::Future + Unpin>(future: &mut Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_option(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use sockeye_protocol::Payload;

    use super::*;

    const KEY: SubKey = 1;

    fn driver() -> Driver {
        let (_, commands) = mpsc::channel(1);
        let (_, dropped) = mpsc::unbounded_channel();
        let (_, close) = watch::channel(false);
        let (state, _) = watch::channel(ConnectionState::Connecting);
        Driver::new(
            "ws://127.0.0.1:1/ws".into(),
            TokenSource::Fixed("token".into()),
            Arc::new(ClientConfig::default()),
            commands,
            dropped,
            close,
            state,
        )
    }

    fn conn() -> Conn {
        Conn {
            outbox: VecDeque::new(),
            pending: HashMap::new(),
            compression: Compression {
                threshold: usize::MAX,
                level: 1,
            },
            max_inflated: 1 << 20,
            refresh: None,
            wakes: FuturesUnordered::new(),
            silence: None,
        }
    }

    /// Adds a held subscription to `filter` whose cursor is `expected`
    /// (`None`: not resumable), and returns its queue's receiving end.
    fn hold(
        driver: &mut Driver,
        filter: &str,
        expected: Option<StreamPosition>,
        capacity: usize,
    ) -> mpsc::Receiver<Item> {
        let (queue, receiver) = mpsc::channel(capacity);
        let sub = Sub {
            filter: TopicFilter::parse(filter, usize::MAX).unwrap(),
            queue,
            first: None,
            position: None,
            expected,
            in_flight: false,
            held: true,
            needs_resync: false,
            waiting: false,
            missed: 0,
            owed: VecDeque::new(),
        };
        driver.subs.insert(KEY, sub);
        receiver
    }

    fn delivery(topic: &str, epoch: u64, offset: u64) -> ServerMessage {
        ServerMessage::Message(Delivery {
            topic: topic.into(),
            epoch,
            offset,
            timestamp_ms: 1,
            publisher: "p".into(),
            payload: Payload::binary(b"x"),
        })
    }

    fn gap(topic: &str, epoch: u64, from: u64, to: u64) -> ServerMessage {
        ServerMessage::Gap {
            topic: topic.into(),
            epoch,
            range: OffsetRange { from, to },
        }
    }

    /// The frames queued for the broker, decoded, and the outbox emptied.
    fn sent(conn: &mut Conn) -> Vec<ClientMessage> {
        conn.outbox
            .drain(..)
            .map(|frame| match frame {
                WsMessage::Binary(data) => {
                    ClientMessage::decode(&frame::open(&data, 1 << 20).unwrap()).unwrap()
                }
                other => panic!("unexpected frame {other:?}"),
            })
            .collect()
    }

    /// Runs the wake-ups that are ready, as the session loop would.
    async fn run_wakes(driver: &mut Driver, conn: &mut Conn) {
        while let Some(Some(key)) = futures_util::FutureExt::now_or_never(conn.wakes.next()) {
            driver.on_room(conn, key);
        }
    }

    fn offsets(receiver: &mut mpsc::Receiver<Item>) -> Vec<u64> {
        let mut offsets = Vec::new();
        while let Ok(item) = receiver.try_recv() {
            match item {
                Item::Message(delivery) => offsets.push(delivery.offset),
                other => panic!("expected a message, got {other:?}"),
            }
        }
        offsets
    }

    #[test]
    fn frames_are_placed_against_the_cursor() {
        let cursor = StreamPosition {
            epoch: 9,
            offset: 5,
        };
        assert_eq!(arrival(cursor, 9, 5, 5), Arrival::Next);
        assert_eq!(arrival(cursor, 9, 4, 4), Arrival::Behind);
        assert_eq!(arrival(cursor, 9, 6, 6), Arrival::Ahead);
        assert_eq!(arrival(cursor, 8, 5, 5), Arrival::Ahead);
        assert_eq!(arrival(cursor, 10, 5, 5), Arrival::Ahead);
        // Gaps.
        assert_eq!(arrival(cursor, 9, 3, 7), Arrival::Next);
        assert_eq!(arrival(cursor, 9, 5, 9), Arrival::Next);
        assert_eq!(arrival(cursor, 9, 1, 4), Arrival::Behind);
        assert_eq!(arrival(cursor, 9, 6, 9), Arrival::Ahead);
    }

    #[tokio::test]
    async fn a_delivery_past_the_cursor_resubscribes_from_the_cursor() {
        let mut driver = driver();
        let mut conn = conn();
        let mut receiver = hold(
            &mut driver,
            "chat",
            Some(StreamPosition {
                epoch: 9,
                offset: 5,
            }),
            8,
        );
        driver.on_message(&mut conn, delivery("chat", 9, 5));
        // Offset 6 never arrives; 7 and 8 do.
        driver.on_message(&mut conn, delivery("chat", 9, 7));
        driver.on_message(&mut conn, delivery("chat", 9, 8));
        assert_eq!(offsets(&mut receiver), [5]);
        run_wakes(&mut driver, &mut conn).await;
        let frames = sent(&mut conn);
        assert!(
            matches!(
                frames.as_slice(),
                [
                    ClientMessage::Unsubscribe { topic: unsubscribed, .. },
                    ClientMessage::Subscribe {
                        topic,
                        position: Some(Position::After { epoch: 9, offset: 5 }),
                        ..
                    },
                ] if unsubscribed == "chat" && topic == "chat"
            ),
            "{frames:?}"
        );
        // Frames of the subscription being replaced do not start another.
        driver.on_message(&mut conn, delivery("chat", 9, 9));
        run_wakes(&mut driver, &mut conn).await;
        assert!(sent(&mut conn).is_empty());
        // The new subscription replays from the cursor.
        driver.on_subscribed(&mut conn, KEY, subscribed("chat", 9, 6));
        for offset in 6..=9 {
            driver.on_message(&mut conn, delivery("chat", 9, offset));
        }
        assert_eq!(offsets(&mut receiver), [6, 7, 8, 9]);
        assert!(sent(&mut conn).is_empty());
    }

    #[tokio::test]
    async fn a_gap_past_the_cursor_or_of_another_epoch_resubscribes() {
        for frame in [
            gap("chat", 9, 7, 8),
            gap("chat", 10, 1, 3),
            delivery("chat", 10, 1),
        ] {
            let mut driver = driver();
            let mut conn = conn();
            let mut receiver = hold(
                &mut driver,
                "chat",
                Some(StreamPosition {
                    epoch: 9,
                    offset: 5,
                }),
                8,
            );
            driver.on_message(&mut conn, frame.clone());
            assert!(receiver.try_recv().is_err(), "{frame:?} is not handed over");
            run_wakes(&mut driver, &mut conn).await;
            let frames = sent(&mut conn);
            assert!(
                matches!(
                    frames.as_slice(),
                    [
                        ClientMessage::Unsubscribe { .. },
                        ClientMessage::Subscribe {
                            position: Some(Position::After {
                                epoch: 9,
                                offset: 4
                            }),
                            ..
                        },
                    ]
                ),
                "{frame:?}: {frames:?}"
            );
        }
    }

    #[tokio::test]
    async fn duplicates_are_dropped_without_resubscribing() {
        let mut driver = driver();
        let mut conn = conn();
        let mut receiver = hold(
            &mut driver,
            "chat",
            Some(StreamPosition {
                epoch: 9,
                offset: 5,
            }),
            8,
        );
        driver.on_message(&mut conn, delivery("chat", 9, 4));
        driver.on_message(&mut conn, gap("chat", 9, 1, 3));
        driver.on_message(&mut conn, delivery("chat", 9, 5));
        run_wakes(&mut driver, &mut conn).await;
        assert_eq!(offsets(&mut receiver), [5]);
        assert!(sent(&mut conn).is_empty());
    }

    fn subscribed(topic: &str, epoch: u64, next_offset: u64) -> Subscribed {
        Subscribed {
            id: 0,
            topic: topic.into(),
            stored: true,
            epoch,
            last_offset: next_offset.saturating_sub(1),
            next_offset,
            complete: true,
            gap: None,
            epoch_changed: false,
        }
    }

    #[tokio::test]
    async fn notices_that_find_a_full_queue_arrive_once_there_is_room() {
        let mut driver = driver();
        let mut conn = conn();
        let mut receiver = hold(&mut driver, "chat", None, 1);
        driver.on_message(&mut conn, delivery("chat", 0, 0));
        // The queue is full: none of these fits.
        driver.on_message(
            &mut conn,
            ServerMessage::Reset {
                topic: "chat".into(),
                epoch: 10,
            },
        );
        driver.on_message(&mut conn, gap("chat", 10, 1, 2));
        driver.on_message(&mut conn, delivery("chat", 0, 0));
        driver.on_message(&mut conn, gap("chat", 10, 4, 5));
        driver.on_message(&mut conn, delivery("chat", 0, 0));
        let mut items = Vec::new();
        for _ in 0..10 {
            while let Ok(item) = receiver.try_recv() {
                items.push(item);
            }
            run_wakes(&mut driver, &mut conn).await;
        }
        let expected_gap = Gap {
            epoch: 10,
            from: 1,
            to: 5,
        };
        assert!(
            matches!(
                items.as_slice(),
                [
                    Item::Message(_),
                    Item::EpochChanged { epoch: 10, next_offset: 1, .. },
                    Item::Gap { gap, .. },
                    Item::Lagged { missed: 2 },
                ] if *gap == expected_gap
            ),
            "{items:?}"
        );
    }

    #[test]
    fn owed_notices_are_coalesced_per_topic() {
        let (queue, _receiver) = mpsc::channel(1);
        let mut sub = Sub {
            filter: TopicFilter::parse("chat.>", usize::MAX).unwrap(),
            queue,
            first: None,
            position: None,
            expected: None,
            in_flight: false,
            held: true,
            needs_resync: false,
            waiting: false,
            missed: 0,
            owed: VecDeque::new(),
        };
        let reset = |topic: &str, epoch| Item::EpochChanged {
            topic: topic.into(),
            epoch,
            next_offset: 1,
        };
        let gap = |topic: &str, epoch, from, to| Item::Gap {
            topic: topic.into(),
            gap: Gap { epoch, from, to },
        };
        sub.owe(Item::Interrupted);
        sub.owe(gap("chat.a", 3, 1, 2));
        sub.owe(Item::Interrupted);
        sub.owe(gap("chat.b", 3, 1, 1));
        // A reset voids what was owed about the older epoch of that topic.
        sub.owe(reset("chat.a", 4));
        sub.owe(gap("chat.a", 4, 2, 3));
        sub.owe(gap("chat.a", 4, 7, 7));
        sub.owe(reset("chat.b", 5));
        let owed: Vec<String> = sub.owed.iter().map(|item| format!("{item:?}")).collect();
        let expected: Vec<String> = [
            Item::Interrupted,
            reset("chat.a", 4),
            gap("chat.a", 4, 2, 7),
            reset("chat.b", 5),
        ]
        .iter()
        .map(|item| format!("{item:?}"))
        .collect();
        assert_eq!(owed, expected);
    }

    #[test]
    fn retry_hints_are_read_from_the_close_reason() {
        assert_eq!(
            retry_after_hint("retry_after_ms=1234"),
            Some(Duration::from_millis(1234))
        );
        assert_eq!(
            retry_after_hint("shutting down; retry_after_ms=5 please"),
            Some(Duration::from_millis(5))
        );
        assert_eq!(retry_after_hint("retry_after_ms="), None);
        assert_eq!(retry_after_hint("going away"), None);
    }
}
