//! Test support: a real broker served in-process on a free loopback port,
//! and a minimal WebSocket client that speaks the protocol.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use sockeye_broker::auth::unix_now;
use sockeye_broker::{Broker, Claims, Config};
use sockeye_protocol::{
    ClientMessage, Compression, Payload, Position, ServerMessage, Subscribed, Welcome, frame,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in a test may take before it fails.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A broker serving on 127.0.0.1 with its own data directory.
pub(crate) struct TestBroker {
    pub(crate) broker: Broker,
    pub(crate) addr: SocketAddr,
    data_dir: std::path::PathBuf,
    _dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<std::io::Result<()>>>,
}

/// A configuration for tests: a fresh data dir, fast trimming.
pub(crate) fn test_config(data_dir: &Path) -> Config {
    let mut config = Config::default();
    config.server.data_dir = data_dir.to_path_buf();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.store.trim_interval = Duration::from_millis(50);
    config.shutdown.drain_timeout = Duration::from_secs(5);
    config.shutdown.reconnect_spread = Duration::from_millis(500);
    config
}

impl TestBroker {
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub(crate) async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let mut broker = Self::start_in(&path, None, tweak).await;
        broker._dir = Some(dir);
        broker
    }

    /// Starts a broker on `data_dir` (reusing its store), on `port` if given.
    pub(crate) async fn start_in(
        data_dir: &Path,
        addr: Option<SocketAddr>,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = test_config(data_dir);
        tweak(&mut config);
        let broker = Broker::open(config).await.unwrap();
        let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(broker.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            broker,
            addr,
            data_dir: data_dir.to_path_buf(),
            _dir: None,
            stop: Some(stop),
            served: Some(served),
        }
    }

    /// Shuts the broker down gracefully and waits for it. Keeps the data
    /// directory alive (returned) so a new broker can reopen it.
    pub(crate) async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            tokio::time::timeout(WAIT, served)
                .await
                .expect("broker stops in time")
                .unwrap()
                .unwrap();
        }
        self._dir.take()
    }

    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub(crate) fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub(crate) fn token(&self, sub: &str) -> String {
        self.token_with(Claims {
            sub: sub.into(),
            exp: Some(unix_now() + 3600),
            ..Claims::default()
        })
    }

    pub(crate) fn token_with(&self, claims: Claims) -> String {
        self.broker.authenticator().mint(claims).unwrap()
    }

    /// A connected client authenticated as `sub` with full permissions.
    pub(crate) async fn client(&self, sub: &str) -> Client {
        Client::connect(&self.url(), Carrier::Header, &self.token(sub))
            .await
            .unwrap()
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Where a client puts its token.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Carrier {
    Header,
    Subprotocol,
    Query,
}

/// A refused handshake.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) status: u16,
    pub(crate) body: serde_json::Value,
    pub(crate) retry_after: Option<String>,
}

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol client over a real WebSocket.
pub(crate) struct Client {
    pub(crate) ws: Socket,
    pub(crate) welcome: Welcome,
    pub(crate) selected_protocol: Option<String>,
    next_id: u64,
    /// Frames received while waiting for something else.
    pending: VecDeque<ServerMessage>,
    /// Raw frames of the last `recv_raw` calls, for compression checks.
    pub(crate) compression: Compression,
}

impl Client {
    pub(crate) async fn connect(url: &str, carrier: Carrier, token: &str) -> Result<Self, Refused> {
        let url = match carrier {
            Carrier::Query => format!("{url}?token={token}"),
            _ => url.to_owned(),
        };
        let mut request = url.into_client_request().unwrap();
        let headers = request.headers_mut();
        match carrier {
            Carrier::Header => {
                headers.insert(
                    "authorization",
                    HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
                );
                headers.insert(
                    "sec-websocket-protocol",
                    HeaderValue::from_static("sockeye.v1"),
                );
            }
            Carrier::Subprotocol => {
                headers.insert(
                    "sec-websocket-protocol",
                    HeaderValue::from_str(&format!("sockeye.v1, bearer.{token}")).unwrap(),
                );
            }
            Carrier::Query => {
                headers.insert(
                    "sec-websocket-protocol",
                    HeaderValue::from_static("sockeye.v1"),
                );
            }
        }
        Self::connect_request(request).await
    }

    pub(crate) async fn connect_request(
        request: tungstenite::handshake::client::Request,
    ) -> Result<Self, Refused> {
        match tokio_tungstenite::connect_async(request).await {
            Ok((ws, response)) => {
                let selected_protocol = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|value| value.to_str().unwrap().to_owned());
                let mut client = Self {
                    ws,
                    welcome: Welcome {
                        connection_id: 0,
                        version: 0,
                        subject: String::new(),
                        heartbeat_interval_ms: 0,
                        heartbeat_timeout_ms: 0,
                        token_expires_at: None,
                        limits: sockeye_broker::Config::default().wire_limits(),
                    },
                    selected_protocol,
                    next_id: 1,
                    pending: VecDeque::new(),
                    compression: Compression::default(),
                };
                match client.recv().await {
                    ServerMessage::Welcome(welcome) => client.welcome = welcome,
                    other => panic!("expected welcome, got {other:?}"),
                }
                Ok(client)
            }
            Err(tungstenite::Error::Http(response)) => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|value| value.to_str().unwrap().to_owned());
                let body = response
                    .body()
                    .as_ref()
                    .map(|body| serde_json::from_slice(body).unwrap())
                    .unwrap_or(serde_json::Value::Null);
                Err(Refused {
                    status: response.status().as_u16(),
                    body,
                    retry_after,
                })
            }
            Err(other) => panic!("connect failed: {other}"),
        }
    }

    /// Wraps a socket whose welcome was already read.
    pub(crate) fn from_socket(ws: Socket) -> Self {
        Self {
            ws,
            welcome: Welcome {
                connection_id: 0,
                version: 1,
                subject: String::new(),
                heartbeat_interval_ms: 0,
                heartbeat_timeout_ms: 0,
                token_expires_at: None,
                limits: sockeye_broker::Config::default().wire_limits(),
            },
            selected_protocol: None,
            next_id: 1,
            pending: VecDeque::new(),
            compression: Compression::default(),
        }
    }

    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) async fn send(&mut self, message: &ClientMessage) {
        let frame = message.encode_frame(&self.compression);
        self.send_raw(frame).await;
    }

    pub(crate) async fn send_raw(&mut self, frame: Bytes) {
        self.ws.send(Message::Binary(frame)).await.unwrap();
    }

    /// The next binary frame, raw.
    pub(crate) async fn recv_frame(&mut self) -> Bytes {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame arrives in time")
                .expect("the connection is open")
                .expect("the connection is healthy");
            match message {
                Message::Binary(data) => return data,
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }

    /// The next message, taking ones buffered by `request` first.
    pub(crate) async fn recv(&mut self) -> ServerMessage {
        if let Some(message) = self.pending.pop_front() {
            return message;
        }
        let frame = self.recv_frame().await;
        let body = frame::open(&frame, 64 << 20).unwrap();
        ServerMessage::decode(&body).unwrap()
    }

    /// Sends a request and returns the reply carrying its id; other frames
    /// received meanwhile are kept for `recv`.
    pub(crate) async fn request(&mut self, message: ClientMessage) -> ServerMessage {
        let id = message.id();
        self.send(&message).await;
        loop {
            let frame = self.recv_frame().await;
            let body = frame::open(&frame, 64 << 20).unwrap();
            let reply = ServerMessage::decode(&body).unwrap();
            if reply_id(&reply) == Some(id) {
                return reply;
            }
            self.pending.push_back(reply);
        }
    }

    pub(crate) async fn subscribe(
        &mut self,
        topic: &str,
        position: Option<Position>,
    ) -> Subscribed {
        let id = self.next_id();
        match self
            .request(ClientMessage::Subscribe {
                id,
                topic: topic.into(),
                position,
            })
            .await
        {
            ServerMessage::Subscribed(subscribed) => subscribed,
            other => panic!("subscribe to {topic} failed: {other:?}"),
        }
    }

    /// Publishes with an ack and returns `(epoch, offset)`.
    pub(crate) async fn publish(&mut self, topic: &str, payload: Payload) -> (u64, u64) {
        let id = self.next_id();
        match self
            .request(ClientMessage::Publish {
                id,
                topic: topic.into(),
                payload,
                ack: true,
            })
            .await
        {
            ServerMessage::Published { epoch, offset, .. } => (epoch, offset),
            other => panic!("publish to {topic} failed: {other:?}"),
        }
    }

    /// The next `message` delivery (skipping nothing else: anything else
    /// fails the test).
    pub(crate) async fn delivery(&mut self) -> sockeye_protocol::Delivery {
        match self.recv().await {
            ServerMessage::Message(delivery) => delivery,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Waits for the broker's close frame and returns `(code, reason)`.
    pub(crate) async fn closed(&mut self) -> (u16, String) {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("the close arrives in time");
            match next {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return (u16::from(code), reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => {}
                Some(Err(err)) => panic!("connection failed before a close frame: {err}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }
}

pub(crate) fn reply_id(message: &ServerMessage) -> Option<u64> {
    match message {
        ServerMessage::Subscribed(reply) => Some(reply.id),
        ServerMessage::Unsubscribed { id, .. }
        | ServerMessage::Published { id, .. }
        | ServerMessage::Pong { id }
        | ServerMessage::Refreshed { id, .. } => Some(*id),
        ServerMessage::Error { id, .. } => *id,
        _ => None,
    }
}

/// A payload holding `n` as a MessagePack integer.
pub(crate) fn number(n: u64) -> Payload {
    let mut bytes = Vec::new();
    rmp::encode::write_uint(&mut bytes, n).unwrap();
    Payload::from_msgpack(bytes).unwrap()
}

/// Reads back a payload made by [`number`].
pub(crate) fn read_number(payload: &Payload) -> u64 {
    rmp::decode::read_int(&mut payload.as_msgpack()).unwrap()
}
