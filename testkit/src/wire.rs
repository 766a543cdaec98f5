//! The raw wire client: a real WebSocket that carries its token in any of the
//! three places the broker accepts, sends `ClientMessage`s, and receives and
//! decodes `ServerMessage`s with bounded waits; plus request/reply and close
//! helpers and payloads that carry a number.

use std::collections::VecDeque;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use sockeye_broker::Config;
use sockeye_protocol::{
    ClientMessage, Compression, Delivery, Payload, Position, ServerMessage, Subscribed, Welcome,
    frame,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::WAIT;

/// The largest frame body a test client accepts.
const MAX_BODY: usize = 64 << 20;

/// Where a client puts its token.
#[derive(Debug, Clone, Copy)]
pub enum Carrier {
    /// `Authorization: Bearer TOKEN`, offering `sockeye.v1`.
    Header,
    /// The subprotocol list `sockeye.v1, bearer.TOKEN`.
    Subprotocol,
    /// The query string `?token=TOKEN`, offering `sockeye.v1`.
    Query,
}

/// A refused handshake: the HTTP status, the JSON body (`Null` if empty) and
/// the `Retry-After` header.
#[derive(Debug)]
pub struct Refused {
    /// The response status.
    pub status: u16,
    /// The response body, parsed as JSON.
    pub body: serde_json::Value,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
}

/// A client WebSocket, plain or TLS.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol client over a real WebSocket.
#[derive(Debug)]
pub struct Client {
    /// The socket, for tests that speak below the protocol.
    pub ws: Socket,
    /// The broker's `welcome`.
    pub welcome: Welcome,
    /// The subprotocol the broker selected.
    pub selected_protocol: Option<String>,
    /// How this client compresses what it sends.
    pub compression: Compression,
    next_id: u64,
    /// Messages received while [`Client::request`] waited for its reply.
    pending: VecDeque<ServerMessage>,
}

/// The handshake request for `url` with `token` in `carrier`.
pub fn handshake_request(url: &str, carrier: Carrier, token: &str) -> Request {
    let url = match carrier {
        Carrier::Query => format!("{url}?token={token}"),
        Carrier::Header | Carrier::Subprotocol => url.to_owned(),
    };
    let mut request = url.into_client_request().expect("a valid WebSocket URL");
    let headers = request.headers_mut();
    let subprotocols = match carrier {
        Carrier::Header => {
            headers.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).expect("a valid header value"),
            );
            HeaderValue::from_static("sockeye.v1")
        }
        Carrier::Subprotocol => HeaderValue::from_str(&format!("sockeye.v1, bearer.{token}"))
            .expect("a valid header value"),
        Carrier::Query => HeaderValue::from_static("sockeye.v1"),
    };
    headers.insert("sec-websocket-protocol", subprotocols);
    request
}

/// A `welcome` to stand in until the real one is read.
fn placeholder_welcome() -> Welcome {
    Welcome {
        connection_id: 0,
        version: 1,
        subject: String::new(),
        heartbeat_interval_ms: 0,
        heartbeat_timeout_ms: 0,
        token_expires_at: None,
        limits: Config::default().wire_limits(),
    }
}

impl Client {
    /// Connects to `url` with `token` in `carrier` and reads the welcome.
    pub async fn connect(url: &str, carrier: Carrier, token: &str) -> Result<Self, Refused> {
        Self::connect_request(handshake_request(url, carrier, token)).await
    }

    /// Connects with a hand-made handshake request and reads the welcome; a
    /// refused handshake is an `Err`, any other failure panics.
    pub async fn connect_request(request: Request) -> Result<Self, Refused> {
        let connected = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("the handshake finishes in time");
        match connected {
            Ok((ws, response)) => {
                let selected_protocol = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|value| value.to_str().unwrap().to_owned());
                let mut client = Self {
                    selected_protocol,
                    ..Self::from_socket(ws)
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
    pub fn from_socket(ws: Socket) -> Self {
        Self {
            ws,
            welcome: placeholder_welcome(),
            selected_protocol: None,
            compression: Compression::default(),
            next_id: 1,
            pending: VecDeque::new(),
        }
    }

    /// A request id not used by this client before.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends one message, encoded with this client's compression.
    pub async fn send(&mut self, message: &ClientMessage) {
        let frame = message.encode_frame(&self.compression);
        self.send_raw(frame).await;
    }

    /// Sends one binary frame as is.
    pub async fn send_raw(&mut self, frame: Bytes) {
        tokio::time::timeout(WAIT, self.ws.send(Message::Binary(frame)))
            .await
            .expect("sent in time")
            .expect("the connection is open");
    }

    /// The next binary frame, raw (pings and pongs are skipped).
    pub async fn recv_frame(&mut self) -> Bytes {
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

    /// The next message, taking ones buffered by [`Client::request`] first.
    pub async fn recv(&mut self) -> ServerMessage {
        if let Some(message) = self.pending.pop_front() {
            return message;
        }
        let frame = self.recv_frame().await;
        decode(&frame)
    }

    /// Sends a request and returns the reply carrying its id; other messages
    /// received meanwhile are kept for [`Client::recv`].
    pub async fn request(&mut self, message: ClientMessage) -> ServerMessage {
        let id = message.id();
        self.send(&message).await;
        loop {
            let frame = self.recv_frame().await;
            let reply = decode(&frame);
            if reply_id(&reply) == Some(id) {
                return reply;
            }
            self.pending.push_back(reply);
        }
    }

    /// Subscribes to `topic` from `position` (live only if `None`) and
    /// returns the reply, which must be `subscribed` to that topic.
    pub async fn subscribe(&mut self, topic: &str, position: Option<Position>) -> Subscribed {
        let id = self.next_id();
        match self
            .request(ClientMessage::Subscribe {
                id,
                topic: topic.into(),
                position,
            })
            .await
        {
            ServerMessage::Subscribed(subscribed) => {
                assert_eq!(subscribed.topic, topic, "subscribed to what was asked");
                subscribed
            }
            other => panic!("subscribe to {topic} failed: {other:?}"),
        }
    }

    /// Publishes with an ack and returns `(epoch, offset)`.
    pub async fn publish(&mut self, topic: &str, payload: Payload) -> (u64, u64) {
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

    /// The next message, which must be a delivery.
    pub async fn delivery(&mut self) -> Delivery {
        match self.recv().await {
            ServerMessage::Message(delivery) => delivery,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Waits for the broker's close frame and returns `(code, reason)`;
    /// other frames before it are skipped, an end without one panics.
    pub async fn closed(&mut self) -> (u16, String) {
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

    /// Waits until the connection ends, reading past anything else; returns
    /// the close frame's `(code, reason)` if one came.
    pub async fn ended(&mut self) -> Option<(u16, String)> {
        let mut close = None;
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("the connection ends in time");
            match next {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    close = Some((u16::from(code), reason.to_string()));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return close,
            }
        }
    }
}

/// Opens and decodes one server frame.
fn decode(frame: &Bytes) -> ServerMessage {
    let body = frame::open(frame, MAX_BODY).expect("a well-formed frame");
    ServerMessage::decode(&body).expect("a well-formed server message")
}

/// The request id a reply answers, if it is a reply.
pub fn reply_id(message: &ServerMessage) -> Option<u64> {
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
pub fn number(n: u64) -> Payload {
    let mut bytes = Vec::new();
    rmp::encode::write_uint(&mut bytes, n).expect("writing to a Vec cannot fail");
    Payload::from_msgpack(bytes).expect("an integer is valid MessagePack")
}

/// Reads back a payload made by [`number`].
pub fn read_number(payload: &Payload) -> u64 {
    rmp::decode::read_int(&mut payload.as_msgpack()).expect("a payload made by `number`")
}
