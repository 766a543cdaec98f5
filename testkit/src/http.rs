//! The admin side of the kit (feature `admin`): a [`TestBroker`] with the
//! admin listener on its own port 0 and an API key, and the HTTP helpers the
//! admin tests share (requests with or without credentials, JSON bodies,
//! error-shape checks).

use std::net::SocketAddr;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use sockeye_broker::Config;

use crate::WAIT;
use crate::broker::TestBroker;
use crate::wire::{Carrier, Client, handshake_request};

/// The API key every broker started with the admin listener accepts.
pub const API_KEY: &str = "test-api-key-0123456789";

/// The HS256 secret of brokers started with the admin listener, so tests can
/// sign tokens of their own.
pub const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

impl TestBroker {
    /// Starts a broker with the admin listener, [`SECRET`] and [`API_KEY`].
    pub async fn start_admin() -> Self {
        Self::start_admin_with(|_| {}).await
    }

    /// Like [`TestBroker::start_admin`], after `tweak` has changed the
    /// configuration (it sees [`SECRET`] and [`API_KEY`] already set).
    pub async fn start_admin_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::launch(
            |config| {
                config.auth.secret = Some(SECRET.into());
                config.admin.api_keys = vec![API_KEY.into()];
                tweak(config);
            },
            true,
        )
        .await
    }

    /// The address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
            .expect("this broker was started with the admin listener")
    }

    /// The admin API URL of `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr())
    }

    /// An admin API request without credentials.
    pub fn anonymous(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.admin_url(path))
    }

    /// An admin API request with the API key.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.anonymous(method, path).bearer_auth(API_KEY)
    }

    /// GET with the API key; returns the status and the JSON body.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(self.request(Method::GET, path)).await
    }

    /// Publishes a JSON payload through the admin API with the API key and
    /// expects 200; returns the body.
    pub async fn publish_over_http(&self, topic: &str, payload: Value) -> Value {
        let (status, body) = send(
            self.request(Method::POST, &format!("/v1/topics/{topic}/messages"))
                .json(&serde_json::json!({ "payload": payload })),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// A WebSocket client authenticated as `sub` that sends `user_agent`.
    pub async fn client_with_user_agent(&self, sub: &str, user_agent: &str) -> Client {
        let mut request = handshake_request(&self.url(), Carrier::Header, &self.token(sub));
        request.headers_mut().insert(
            "user-agent",
            user_agent.parse().expect("a valid header value"),
        );
        Client::connect_request(request)
            .await
            .expect("the broker accepts a valid token")
    }
}

/// Sends a request and returns its status and JSON body (`Null` if empty).
pub async fn send(request: RequestBuilder) -> (StatusCode, Value) {
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .expect("the response arrives in time")
        .expect("the request succeeds");
    let status = response.status();
    let text = tokio::time::timeout(WAIT, response.text())
        .await
        .expect("the body arrives in time")
        .expect("the body is readable");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|err| panic!("the body of a {status} is not JSON ({err}): {text}"))
    };
    (status, body)
}

/// Asserts an error response: the status, the code, and a message.
pub fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
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
