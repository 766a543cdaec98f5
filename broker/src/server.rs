//! The WebSocket listener: accepting TCP connections, serving HTTP/1.1 on
//! them with a bounded handshake time, the `/ws` upgrade with its token
//! check, `/healthz`, and graceful shutdown.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rand::Rng;
use sockeye_protocol::{CloseCode, SUBPROTOCOL};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::Broker;
use crate::auth::token_from_request;
use crate::connection::Session;
use crate::stats::Stats;

/// The JSON body of a refused handshake.
#[derive(Debug, serde::Serialize)]
struct Refusal<'a> {
    code: &'a str,
    message: String,
}

fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    (status, axum::Json(Refusal { code, message })).into_response()
}

/// The router of the WebSocket listener: `/ws` and `/healthz`.
pub(crate) fn router(broker: Broker) -> Router {
    Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(healthz))
        .with_state(broker)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn upgrade(
    State(broker): State<Broker>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let started = Instant::now();
    let stats = Arc::clone(broker.stats());
    let Some(token) = token_from_request(&headers, &query) else {
        let error = crate::auth::AuthError::Missing;
        stats.auth_failed(&error);
        return refuse(StatusCode::UNAUTHORIZED, error.code(), error.to_string());
    };
    let identity = match broker.authenticator().verify(token) {
        Ok(identity) => identity,
        Err(error) => {
            stats.auth_failed(&error);
            tracing::debug!(%remote, reason = error.code(), "handshake refused");
            return refuse(StatusCode::UNAUTHORIZED, error.code(), error.to_string());
        }
    };
    if broker.is_draining() {
        return unavailable("the broker is shutting down", 5);
    }
    let config = Arc::clone(broker.config());
    // Admission control: count the connection now; the session releases it.
    let open = stats.connections.fetch_add(1, Ordering::AcqRel);
    if open >= config.server.max_connections as u64 {
        stats.connections.fetch_sub(1, Ordering::AcqRel);
        Stats::add(&stats.connections_refused, 1);
        return unavailable("the broker is at its connection limit", 1);
    }
    Stats::add(&stats.connections_total, 1);
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let (peer, inbox) = broker.register(identity.subject.clone(), remote, user_agent);
    let max_frame = config.limits.max_frame_size.as_u64() as usize;
    let write_buffer = config.websocket.write_buffer.as_u64() as usize;
    let tracker = broker.connection_tracker();
    let session_broker = broker.clone();
    let span = tracing::debug_span!("conn", id = %peer.id, %remote, sub = %identity.subject);
    let response = upgrade
        .protocols([SUBPROTOCOL])
        .read_buffer_size(config.websocket.read_buffer.as_u64() as usize)
        .write_buffer_size(write_buffer)
        .max_write_buffer_size(write_buffer + 2 * max_frame + 4096)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_failed_upgrade({
            let broker = broker.clone();
            let id = peer.id;
            move |error| {
                tracing::debug!(cause = %error, "upgrade failed");
                broker.unregister(id);
            }
        })
        .on_upgrade(move |socket| {
            use tracing::Instrument;
            tracker.track_future(
                async move {
                    tracing::debug!("connected");
                    Session::new(session_broker, peer, socket, inbox, identity)
                        .run()
                        .await;
                    tracing::debug!("disconnected");
                }
                .instrument(span),
            )
        });
    stats.handshake_latency.observe(started.elapsed());
    response
}

fn unavailable(message: &str, retry_after_secs: u64) -> Response {
    let mut response = refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        message.to_owned(),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// Accepts connections on `listener` until `shutdown` resolves, then drains.
pub(crate) async fn serve(
    broker: Broker,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let router = router(broker.clone());
    let handshake_timeout = broker.config().server.handshake_timeout;
    let http_tasks = tokio_util::task::TaskTracker::new();
    let stop_http = tokio_util::sync::CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut accept_errors = 0u32;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => {
                accept_errors = 0;
                accepted
            }
            Err(err) => {
                // Out of file descriptors and similar: back off, keep serving.
                accept_errors = (accept_errors + 1).min(6);
                tracing::warn!(cause = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(10 << accept_errors)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service =
            router
                .clone()
                .map_request(move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(remote));
                    request
                });
        let stop = stop_http.clone();
        http_tasks.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(handshake_timeout)
                .keep_alive(true);
            let connection = builder
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(%remote, cause = %err, "http connection ended");
                    }
                }
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
                }
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: closing connections with 1001");
    stop_http.cancel();
    http_tasks.close();
    broker.drain().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), http_tasks.wait()).await;
    Ok(())
}

/// A reconnect delay for one client, spread uniformly over `spread`.
pub(crate) fn reconnect_hint(spread: Duration) -> String {
    let millis = spread.as_millis() as u64;
    let delay = if millis == 0 {
        0
    } else {
        rand::rng().random_range(0..=millis)
    };
    format!("retry_after_ms={delay}")
}

/// The close code used for draining.
pub(crate) const DRAIN_CODE: CloseCode = CloseCode::GoingAway;
