//! The Sockeye admin HTTP API: topics, history, publishing over HTTP,
//! connections, statistics, Prometheus metrics, its OpenAPI 3.1 document,
//! an offline Swagger UI and an operator console. It runs on its own listener (`admin.listen`,
//! loopback by default) next to the broker's WebSocket listener.
//!
//! See `docs/admin.md` for the routes, authentication and curl examples.
//!
//! # Layout
//!
//! - [`error`]: the one error type, its JSON body `{code, message}`, and
//!   extractors whose rejections use it.
//! - `auth`: bearer authentication (admin JWT or API key).
//! - `pagination`: `limit`, the `after` cursor and `next`.
//! - `topics`, `connections`, `stats`, `health`: the routes.
//! - `metrics`: Prometheus text at `/metrics`, read from the broker's
//!   counters at scrape time.
//! - `docs`: `/openapi.json` and the Swagger UI at `/docs`.
//! - `console`: the operator console at `/console`, a static page that
//!   uses the API from the browser.
//!
//! Every route is registered together with its OpenAPI description (through
//! `utoipa-axum`), so the document and the router cannot drift apart.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = sockeye_broker::Broker::open(sockeye_broker::Config::default()).await?;
//! let admin = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
//! tokio::spawn(sockeye_admin::serve(broker.clone(), admin, std::future::pending()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! broker.serve(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod auth;
mod connections;
mod console;
mod docs;
pub mod error;
mod health;
mod metrics;
mod nodes;
mod pagination;
mod stats;
mod topics;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use bytes::Bytes;
use sockeye_broker::{Broker, HttpOptions, serve_http};
use tokio::net::TcpListener;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use crate::auth::API_KEY_PUBLISHER;
pub use crate::connections::MAX_CLOSE_REASON_BYTES;
pub use crate::error::{ApiError, ErrorBody};
pub use crate::pagination::{DEFAULT_LIMIT, MAX_CURSOR, MAX_LIMIT};
pub use crate::stats::RATE_WINDOW;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) broker: Broker,
    /// The OpenAPI document, serialized once.
    pub(crate) openapi_json: Bytes,
    pub(crate) swagger: Arc<utoipa_swagger_ui::Config<'static>>,
    pub(crate) rates: Arc<stats::RateWindow>,
    pub(crate) auth_failures: Arc<auth::AuthFailures>,
    pub(crate) metrics: Arc<prometheus_client::registry::Registry>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

/// The routes that need credentials, and the ones that do not.
fn routes() -> (OpenApiRouter<AppState>, OpenApiRouter<AppState>) {
    let protected = OpenApiRouter::new()
        .routes(routes!(topics::list_topics))
        .routes(routes!(topics::get_topic))
        .routes(routes!(topics::get_history, topics::delete_history))
        .routes(routes!(topics::publish))
        .routes(routes!(connections::list_connections))
        .routes(routes!(
            connections::get_connection,
            connections::disconnect
        ))
        .routes(routes!(stats::get_stats))
        .routes(routes!(nodes::list_nodes))
        .routes(routes!(metrics::get_metrics));
    let public = OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(docs::openapi_json))
        .routes(routes!(docs::docs_redirect))
        .routes(routes!(docs::docs_index))
        .routes(routes!(docs::docs_file))
        .routes(routes!(console::console_redirect))
        .routes(routes!(console::console_index))
        .routes(routes!(console::console_asset));
    (protected, public)
}

fn protected_paths(protected: &OpenApiRouter<AppState>) -> Vec<String> {
    protected
        .get_openapi()
        .paths
        .paths
        .keys()
        .cloned()
        .collect()
}

/// The OpenAPI 3.1 document of every route, as served at `/openapi.json`
/// by a broker with the default configuration.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi_for(&sockeye_broker::Config::default())
}

/// The document as served by a broker with `config`: the configured
/// limits a request is held to are written into it.
fn openapi_for(config: &sockeye_broker::Config) -> utoipa::openapi::OpenApi {
    let (protected, public) = routes();
    let protected_paths = protected_paths(&protected);
    let mut document = docs::complete(protected.merge(public).into_openapi(), &protected_paths);
    topics::document_topic_length(&mut document, config.limits.max_topic_length);
    document
}

/// The OpenAPI document as pretty JSON with a final newline: the exact
/// bytes of `/openapi.json` (with the default configuration) and of the
/// committed `docs/openapi.json`.
pub fn openapi_json() -> String {
    to_json(&openapi())
}

fn to_json(document: &utoipa::openapi::OpenApi) -> String {
    let mut json = document
        .to_pretty_json()
        .expect("an OpenAPI document always serializes to JSON");
    json.push('\n');
    json
}

/// The admin router for `broker`, ready to serve.
pub fn router(broker: Broker) -> Router {
    let auth_failures = Arc::new(auth::AuthFailures::default());
    // HTTP publish bodies carry the payload as JSON or base64, both larger
    // than the MessagePack they become; the exact payload limit is checked
    // after conversion.
    let body_limit = (broker.config().limits.max_frame_size.as_u64() as usize)
        .saturating_mul(2)
        .saturating_add(64 * 1024);
    let openapi_json = Bytes::from(to_json(&openapi_for(broker.config())));
    let state = AppState {
        metrics: Arc::new(metrics::registry(
            broker.clone(),
            Arc::clone(&auth_failures),
        )),
        broker,
        openapi_json,
        swagger: docs::swagger_config(),
        rates: Arc::new(stats::RateWindow::default()),
        auth_failures,
    };
    let (protected, public) = routes();
    let protected = protected.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_admin,
    ));
    let (router, _) = protected.merge(public).split_for_parts();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound {
        code: "not_found",
        message: format!("no route for {method} {}", uri.path()),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        message: format!("{} does not accept {method}", uri.path()),
    }
}

/// Serves the admin API on `listener` until `shutdown` resolves, then gives
/// requests in flight a moment to finish. Uses TLS, with the broker's
/// certificate, when `tls.admin` is set; each client gets
/// `server.handshake_timeout` to send its request head, as on the WebSocket
/// listener.
pub async fn serve(broker: Broker, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let config = broker.config();
    let options = HttpOptions {
        tls: if config.tls.admin {
            broker.tls().map(|tls| tls.acceptor())
        } else {
            None
        },
        handshake_timeout: config.server.handshake_timeout,
        // The broker's handshake counters are about WebSocket clients.
        stats: None,
    };
    serve_http(listener, router(broker), options, shutdown).await;
}
