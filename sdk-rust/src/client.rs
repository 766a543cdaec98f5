//! The application's handle: [`Client`], how it is built and configured,
//! and the requests it sends to the connection driver.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sockeye_protocol::{Payload, Position, Subscribed, TopicFilter, TopicName};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::backoff::Backoff;
use crate::driver::Driver;
use crate::error::{BoxError, CloseReason, Error};
use crate::subscription::{
    Decoder, Item, SubKey, SubscribeOptions, Subscription, decode_value, keep_raw,
};

/// Tunables of a [`Client`]. Every queue the client owns is bounded by one
/// of these, or by the number of subscriptions (the client's own control
/// frames in the outbox, and the notices of dropped subscriptions). A
/// subscription whose queue is full also keeps the notices it could not
/// queue yet: at most one [`Event::Interrupted`](crate::Event::Interrupted)
/// and, per topic it matches, one epoch change and one gap.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The reconnect schedule.
    pub backoff: Backoff,
    /// How long `publish` and `subscribe` wait for their reply, including
    /// time spent waiting for a connection. Default 30 s.
    pub request_timeout: Duration,
    /// How long the TCP connect, WebSocket handshake and `welcome` may take.
    /// Default 10 s.
    pub connect_timeout: Duration,
    /// Default queue capacity of a subscription ([`SubscribeOptions::capacity`]).
    /// Default 256.
    pub subscription_capacity: usize,
    /// Requests (publishes, subscribes) queued for the connection before
    /// callers wait. While the client is reconnecting, requests wait here.
    /// Default 256.
    pub request_queue: usize,
    /// Encoded frames waiting to be handed to the socket writer before the
    /// client stops taking requests from the request queue. Besides
    /// requests it holds the client's own control frames (at most two per
    /// subscription, for resubscribing or unsubscribing, plus a token
    /// refresh and the close), which are never refused. Default 256.
    pub outbox: usize,
    /// Frames handed to the task that writes the socket and not yet
    /// written; while it is full, frames wait in the outbox. Default 64.
    pub write_queue: usize,
    /// Requests sent and not yet answered; beyond it new requests wait. Keep
    /// it below the broker's `limits.max_pending_acks` (default 1024).
    /// Default 256.
    pub max_in_flight: usize,
    /// Largest frame accepted from the broker, before and after inflation.
    /// Default 16 MiB.
    pub max_inbound_bytes: usize,
    /// How long [`Client::close`] waits for outstanding replies and for the
    /// broker's close reply. Default 5 s.
    pub close_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            subscription_capacity: 256,
            request_queue: 256,
            outbox: 256,
            write_queue: 64,
            max_in_flight: 256,
            max_inbound_bytes: 16 << 20,
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Where the client is in its connection life cycle; observe it with
/// [`Client::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The first connection is being made.
    Connecting,
    /// Connected: the broker sent `welcome`.
    Connected {
        /// The broker's id for this connection: the `id` the admin API lists
        /// it under.
        connection_id: u64,
        /// The `sub` of the token.
        subject: String,
    },
    /// The connection was lost; waiting `delay`, then connecting again.
    Reconnecting {
        /// Consecutive failed attempts so far (0 right after a connection
        /// was lost).
        attempt: u32,
        /// How long the client waits before the next attempt.
        delay: Duration,
        /// Why the last connection ended or the last attempt failed.
        cause: String,
    },
    /// Closed for good; requests fail with [`Error::Closed`].
    Closed {
        /// Why.
        reason: CloseReason,
    },
}

/// The result of an acknowledged publish: where the broker stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The topic's epoch (0 for an ephemeral topic).
    pub epoch: u64,
    /// The message's offset in that epoch (0 for an ephemeral topic).
    pub offset: u64,
}

pub(crate) type TokenFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;

/// Where the client gets its token.
#[derive(Clone)]
pub(crate) enum TokenSource {
    /// One token for the life of the client.
    Fixed(String),
    /// Called for every connection and whenever the broker warns that the
    /// token expires soon.
    Provider(Arc<dyn Fn() -> TokenFuture + Send + Sync>),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Fixed(_) => f.write_str("Fixed(<redacted>)"),
            TokenSource::Provider(_) => f.write_str("Provider(..)"),
        }
    }
}

impl TokenSource {
    pub(crate) fn fetch(&self) -> TokenFuture {
        match self {
            TokenSource::Fixed(token) => {
                let token = token.clone();
                Box::pin(async move { Ok(token) })
            }
            TokenSource::Provider(provider) => provider(),
        }
    }

    pub(crate) fn can_refresh(&self) -> bool {
        matches!(self, TokenSource::Provider(_))
    }
}

/// A request from a [`Client`] handle to the connection driver.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        key: SubKey,
        filter: TopicFilter,
        position: Option<Position>,
        /// Its capacity is the subscription's capacity.
        queue: mpsc::Sender<Item>,
        reply: oneshot::Sender<Result<Subscribed, Error>>,
    },
    Publish {
        topic: String,
        payload: Payload,
        /// `None` for fire-and-forget.
        reply: Option<oneshot::Sender<Result<Published, Error>>>,
    },
}

/// Builds a [`Client`]: `Client::builder(url).token(jwt).connect().await`.
#[derive(Debug)]
pub struct ClientBuilder {
    url: String,
    token: Option<TokenSource>,
    config: ClientConfig,
}

impl ClientBuilder {
    /// Authenticates with one fixed token. When it expires the broker
    /// closes the connection (4000) and reconnecting fails with 401, so the
    /// client ends up [`ConnectionState::Closed`]; use
    /// [`ClientBuilder::token_provider`] for long-lived clients.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(TokenSource::Fixed(token.into()));
        self
    }

    /// Authenticates with tokens from `provider`, an async callback called
    /// for every connection and when the broker sends `token_expiring`; the
    /// new token is then sent in-band (`refresh`), so the connection and its
    /// subscriptions continue. It must return tokens for the same `sub`.
    pub fn token_provider<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let provider = Arc::new(move || -> TokenFuture {
            let future = provider();
            Box::pin(async move { future.await.map_err(Into::into) })
        });
        self.token = Some(TokenSource::Provider(provider));
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the reconnect schedule.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Sets [`ClientConfig::request_timeout`].
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// Starts the client without waiting: it connects in the background,
    /// and requests made meanwhile wait for the connection. Must be called
    /// inside a tokio runtime. Fails with [`Error::InvalidUrl`] on a URL
    /// that is not `ws://` (TLS is not supported yet) or does not parse (for
    /// example a missing host), and with [`Error::NoToken`] when no token
    /// was given.
    pub fn build(self) -> Result<Client, Error> {
        let url = self.url;
        if url.starts_with("wss://") {
            return Err(Error::InvalidUrl {
                url,
                reason: "wss:// (TLS) is not supported by this version; use ws:// behind a TLS terminator or on a private network".into(),
            });
        }
        if !url.starts_with("ws://") {
            return Err(Error::InvalidUrl {
                url,
                reason: "the scheme must be ws://".into(),
            });
        }
        // The same parse the driver does before each connection, so a URL
        // it would refuse fails here, before anything runs.
        if let Err(err) = url.as_str().into_client_request() {
            return Err(Error::InvalidUrl {
                reason: err.to_string(),
                url,
            });
        }
        let token = self.token.ok_or(Error::NoToken)?;
        let config = Arc::new(self.config);
        let (commands_tx, commands) = mpsc::channel(config.request_queue.max(1));
        // Each live subscription sends at most one drop notice, so this
        // channel holds at most as many entries as there are subscriptions.
        let (dropped_tx, dropped) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(ConnectionState::Connecting);
        let (close_tx, close) = watch::channel(false);
        let driver = Driver::new(
            url,
            token,
            Arc::clone(&config),
            commands,
            dropped,
            close,
            state_tx,
        );
        tokio::spawn(driver.run());
        Ok(Client {
            shared: Arc::new(Shared {
                commands: commands_tx,
                dropped: dropped_tx,
                state,
                close: close_tx,
                next_key: AtomicU64::new(1),
                config,
            }),
        })
    }

    /// Starts the client and waits for its first connection. Returns an
    /// error if the client closes before connecting (the broker refused the
    /// token, the URL is unusable, or `max_attempts` ran out); while the
    /// broker is merely unreachable it keeps trying per the backoff.
    pub async fn connect(self) -> Result<Client, Error> {
        let client = self.build()?;
        client.wait_connected().await?;
        Ok(client)
    }
}

/// A connection to a Sockeye broker that reconnects by itself. Cheap to
/// clone: clones share one connection. See the crate docs for an example.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

struct Shared {
    commands: mpsc::Sender<Command>,
    dropped: mpsc::UnboundedSender<SubKey>,
    state: watch::Receiver<ConnectionState>,
    close: watch::Sender<bool>,
    next_key: AtomicU64,
    config: Arc<ClientConfig>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("state", &*self.shared.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for a client of the broker at `url` (for example
    /// `ws://127.0.0.1:8080/ws`).
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            token: None,
            config: ClientConfig::default(),
        }
    }

    /// Connects to `url` with a fixed token, with the default configuration.
    pub async fn connect(url: impl Into<String>, token: impl Into<String>) -> Result<Self, Error> {
        Self::builder(url).token(token).connect().await
    }

    /// The connection state, as a watch channel: `borrow()` for now,
    /// `changed()` to wait for the next change.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.clone()
    }

    /// Waits until the client is connected; fails if it closes first.
    pub async fn wait_connected(&self) -> Result<(), Error> {
        let mut state = self.state();
        let outcome = state
            .wait_for(|state| {
                matches!(
                    state,
                    ConnectionState::Connected { .. } | ConnectionState::Closed { .. }
                )
            })
            .await
            .map(|state| state.clone());
        match outcome {
            Ok(ConnectionState::Closed { reason }) => Err(Error::Closed(reason)),
            Ok(_) => Ok(()),
            Err(_) => Err(Error::Closed(CloseReason::ClientClosed)),
        }
    }

    /// Publishes `value` (encoded as MessagePack with field names, so any
    /// language can read it) to `topic`, and waits until the broker has
    /// stored it. Returns where it was stored.
    ///
    /// If the connection drops before the acknowledgement arrives, this
    /// fails with [`Error::ConnectionLost`] and is not retried: the message
    /// may or may not be stored.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<Published, Error> {
        self.publish_raw(topic, encode(value)?).await
    }

    /// Like [`Client::publish`] with an already-encoded payload (for
    /// example [`Payload::binary`] for raw bytes).
    pub async fn publish_raw(&self, topic: &str, payload: Payload) -> Result<Published, Error> {
        check_topic(topic)?;
        let (reply, answer) = oneshot::channel();
        let command = Command::Publish {
            topic: topic.to_owned(),
            payload,
            reply: Some(reply),
        };
        self.request(command, answer).await
    }

    /// Publishes without asking for an acknowledgement (`ack: false`):
    /// returns once the request is queued for the connection. The message
    /// is lost if the connection drops before it is written; failures the
    /// broker reports are logged (`tracing`, level warn).
    pub async fn publish_unacked<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<(), Error> {
        check_topic(topic)?;
        let command = Command::Publish {
            topic: topic.to_owned(),
            payload: encode(value)?,
            reply: None,
        };
        let timeout = self.shared.config.request_timeout;
        match tokio::time::timeout(timeout, self.shared.commands.send(command)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// Subscribes to `filter` (a topic, or a filter with `*` and `>`) for
    /// live messages, decoding each payload as `T`.
    ///
    /// Fails with [`Error::SubscriptionOverlaps`] if the filter overlaps
    /// one this client already holds.
    pub async fn subscribe<T: DeserializeOwned>(
        &self,
        filter: &str,
    ) -> Result<Subscription<T>, Error> {
        self.subscribe_with(filter, SubscribeOptions::new()).await
    }

    /// Subscribes with options, for example a start position.
    pub async fn subscribe_with<T: DeserializeOwned>(
        &self,
        filter: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription<T>, Error> {
        self.subscribe_decoded(filter, options, decode_value::<T>)
            .await
    }

    /// Subscribes without decoding: each message's `value` is the payload
    /// exactly as published.
    pub async fn subscribe_raw(
        &self,
        filter: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription<Payload>, Error> {
        self.subscribe_decoded(filter, options, keep_raw).await
    }

    async fn subscribe_decoded<T>(
        &self,
        filter: &str,
        options: SubscribeOptions,
        decode: Decoder<T>,
    ) -> Result<Subscription<T>, Error> {
        let parsed =
            TopicFilter::parse(filter, usize::MAX).map_err(|source| Error::InvalidTopic {
                topic: filter.to_owned(),
                source,
            })?;
        let capacity = options
            .capacity
            .unwrap_or(self.shared.config.subscription_capacity)
            .max(1);
        let (queue_tx, queue) = mpsc::channel(capacity);
        let key = self.shared.next_key.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let command = Command::Subscribe {
            key,
            filter: parsed,
            position: options.position,
            queue: queue_tx,
            reply,
        };
        let reply = self.request(command, answer).await?;
        Ok(Subscription {
            filter: filter.to_owned(),
            key,
            reply,
            queue,
            decode,
            client: self.clone(),
        })
    }

    /// Closes the client gracefully: stops taking requests, waits (up to
    /// [`ClientConfig::close_timeout`]) for outstanding replies, closes the
    /// WebSocket with 1000, and ends every subscription stream. Other
    /// handles see [`ConnectionState::Closed`].
    pub async fn close(&self) {
        self.shared.close.send_replace(true);
        let mut state = self.state();
        let _ = state
            .wait_for(|state| matches!(state, ConnectionState::Closed { .. }))
            .await;
    }

    pub(crate) fn unsubscribe_on_drop(&self, key: SubKey) {
        // Fails only when the driver has ended, which already dropped the
        // subscription.
        let _ = self.shared.dropped.send(key);
    }

    async fn request<R>(
        &self,
        command: Command,
        answer: oneshot::Receiver<Result<R, Error>>,
    ) -> Result<R, Error> {
        let timeout = self.shared.config.request_timeout;
        let exchange = async {
            self.shared
                .commands
                .send(command)
                .await
                .map_err(|_| self.closed_error())?;
            answer.await.map_err(|_| self.closed_error())?
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(Error::Timeout(timeout)))
    }

    fn closed_error(&self) -> Error {
        match &*self.shared.state.borrow() {
            ConnectionState::Closed { reason } => Error::Closed(reason.clone()),
            _ => Error::ConnectionLost,
        }
    }
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Payload, Error> {
    let bytes = rmp_serde::to_vec_named(value)?;
    // rmp-serde writes exactly one complete value, which is what a payload
    // must be; a failure here would be an rmp-serde bug, reported as such.
    Payload::from_msgpack(bytes).map_err(|err| {
        Error::Encode(rmp_serde::encode::Error::Syntax(format!(
            "rmp-serde produced an invalid value: {err}"
        )))
    })
}

fn check_topic(topic: &str) -> Result<(), Error> {
    TopicName::parse(topic, usize::MAX)
        .map(drop)
        .map_err(|source| Error::InvalidTopic {
            topic: topic.to_owned(),
            source,
        })
}
