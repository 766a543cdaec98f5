//! Test support: a real broker served in-process on a free loopback port,
//! the admin API on another, an HTTP client, and a minimal WebSocket client.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use sockeye_broker::auth::unix_now;
use sockeye_broker::{Broker, Claims, Config};
use sockeye_protocol::{ClientMessage, Compression, Delivery, Payload, ServerMessage, frame};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in a test may take before it fails.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// The API key every test server accepts.
pub(crate) const API_KEY: &str = "test-api-key-0123456789";

/// A broker and its admin API, both on 127.0.0.1 with a fresh data dir.
pub(crate) struct TestServer {
    pub(crate) broker: Broker,
    pub(crate) ws_addr: SocketAddr,
    pub(crate) admin_addr: SocketAddr,
    pub(crate) http: reqwest::Client,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub(crate) async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.data_dir = dir.path().to_path_buf();
        config.auth.secret = Some("a-test-secret-that-is-long-enough-for-hs256".into());
        config.admin.api_keys = vec![API_KEY.into()];
        config.shutdown.drain_timeout = Duration::from_secs(5);
        tweak(&mut config);
        let broker = Broker::open(config).await.unwrap();
        let ws = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ws_addr = ws.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let (admin_stop, admin_stopped) = oneshot::channel::<()>();
        tokio::spawn(broker.clone().serve(ws, async move {
            shutdown.await;
            let _ = admin_stop.send(());
        }));
        tokio::spawn(sockeye_admin::serve(broker.clone(), admin, async move {
            let _ = admin_stopped.await;
        }));
        Self {
            broker,
            ws_addr,
            admin_addr,
            http: reqwest::Client::builder()
                .timeout(WAIT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            _dir: dir,
            stop: Some(stop),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// A token for `sub`, with the admin claim or without.
    pub(crate) fn token(&self, sub: &str, admin: bool) -> String {
        self.broker
            .authenticator()
            .mint(Claims {
                sub: sub.into(),
                exp: Some(unix_now() + 3600),
                admin,
                ..Claims::default()
            })
            .unwrap()
    }

    /// A request without credentials.
    pub(crate) fn anonymous(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// A request with the API key.
    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.anonymous(method, path).bearer_auth(API_KEY)
    }

    /// GET with the API key; returns the status and the JSON body.
    pub(crate) async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.request(Method::GET, path)).await
    }

    /// Publishes a JSON payload over HTTP with the API key.
    pub(crate) async fn publish(&self, topic: &str, payload: Value) -> Value {
        let (status, body) = send(
            self.request(Method::POST, &format!("/v1/topics/{topic}/messages"))
                .json(&serde_json::json!({ "payload": payload })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// A WebSocket client authenticated as `sub`.
    pub(crate) async fn ws_client(&self, sub: &str, user_agent: &str) -> WsClient {
        WsClient::connect(self.ws_addr, &self.token(sub, false), user_agent).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Sends a request and returns its status and JSON body (Null if empty).
pub(crate) async fn send(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("the body of a {status} is not JSON ({err}): {text}"))
    };
    (status, body)
}

/// Asserts an error response: the status, the code, and a message.
pub(crate) fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{body}"
    );
    assert_eq!(
        body.as_object().unwrap().len(),
        2,
        "only code and message: {body}"
    );
}

/// Polls `check` until it returns `Some`, for at most [`WAIT`].
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A protocol client over a real WebSocket.
pub(crate) struct WsClient {
    ws: Socket,
    /// The connection id from `welcome`.
    pub(crate) connection_id: u64,
    next_id: u64,
}

impl WsClient {
    async fn connect(addr: SocketAddr, token: &str, user_agent: &str) -> Self {
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("sockeye.v1"),
        );
        headers.insert("user-agent", HeaderValue::from_str(user_agent).unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let mut client = Self {
            ws,
            connection_id: 0,
            next_id: 0,
        };
        match client.recv().await {
            ServerMessage::Welcome(welcome) => {
                client.connection_id = welcome.connection_id;
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        client
    }

    pub(crate) async fn recv(&mut self) -> ServerMessage {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame arrives in time")
                .expect("the connection is open")
                .expect("the connection is healthy");
            match message {
                Message::Binary(data) => {
                    let body = frame::open(&data, 64 << 20).unwrap();
                    return ServerMessage::decode(&body).unwrap();
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }

    /// Subscribes to `topic` (live only) and waits for the reply.
    pub(crate) async fn subscribe(&mut self, topic: &str) {
        self.next_id += 1;
        let request = ClientMessage::Subscribe {
            id: self.next_id,
            topic: topic.into(),
            position: None,
        };
        self.ws
            .send(Message::Binary(
                request.encode_frame(&Compression::default()),
            ))
            .await
            .unwrap();
        match self.recv().await {
            ServerMessage::Subscribed(reply) => assert_eq!(reply.topic, topic),
            other => panic!("subscribe to {topic} failed: {other:?}"),
        }
    }

    /// Publishes with an ack to a topic this client is not subscribed to,
    /// and waits for the ack.
    pub(crate) async fn publish(&mut self, topic: &str, payload: Payload) {
        self.next_id += 1;
        let request = ClientMessage::Publish {
            id: self.next_id,
            topic: topic.into(),
            payload,
            ack: true,
        };
        self.ws
            .send(Message::Binary(
                request.encode_frame(&Compression::default()),
            ))
            .await
            .unwrap();
        match self.recv().await {
            ServerMessage::Published { .. } => {}
            other => panic!("publish to {topic} failed: {other:?}"),
        }
    }

    /// The next message delivery.
    pub(crate) async fn delivery(&mut self) -> Delivery {
        match self.recv().await {
            ServerMessage::Message(delivery) => delivery,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Sends one request without waiting for anything.
    pub(crate) async fn send(&mut self, request: &ClientMessage) {
        self.ws
            .send(Message::Binary(
                request.encode_frame(&Compression::default()),
            ))
            .await
            .unwrap();
    }

    /// Waits until the connection ends, reading past anything else; returns
    /// the close frame if one came.
    pub(crate) async fn ended(&mut self) -> Option<(u16, String)> {
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
