//! The WebSocket listener: accepting TCP connections, serving HTTP/1.1 on
//! them with a bounded handshake time, the `/ws` upgrade with its token
//! check, `/healthz`, and graceful shutdown.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
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

use crate::auth::Identity;
use crate::auth::token_from_request;
use crate::connection::Session;
use crate::linger::{CloseLinger, LingeringIo};
use crate::peer::Peer;
use crate::stats::Stats;
use crate::{Admission, Broker};

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
    linger: Option<axum::Extension<CloseLinger>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let started = Instant::now();
    let stats = Arc::clone(broker.stats());
    let config = Arc::clone(broker.config());
    if let Err(origin) = check_origin(&headers, &config.server.allowed_origins) {
        Stats::add(&stats.origin_refused, 1);
        return refuse(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!("origin `{origin}` may not open WebSockets here"),
        );
    }
    if !broker.admit_handshake() {
        Stats::add(&stats.handshake_rate_refused, 1);
        return unavailable("too many handshakes per second", 1);
    }
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
    // Admission control: the guard counts the connection now and gives
    // everything back when it is dropped: by the session when it ends,
    // however it ends, or here on a refusal or a failed upgrade.
    let Some(mut admission) = broker.admit() else {
        Stats::add(&stats.connections_refused, 1);
        return unavailable("the broker is at its connection limit", 1);
    };
    let remote = SocketAddr::new(
        client_ip(remote, &headers, &config.server.trusted_proxies),
        remote.port(),
    );
    if !admission.claim_ip(remote.ip()) {
        Stats::add(&stats.per_ip_refused, 1);
        let mut response = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections_from_ip",
            format!(
                "{} already holds {} connections",
                remote.ip(),
                config.server.max_connections_per_ip
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(5u64));
        return response;
    }
    Stats::add(&stats.connections_total, 1);
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let peer = admission.register(identity.subject.clone(), remote, user_agent);
    let peer_id = peer.id;
    let subject = identity.subject.clone();
    let linger = linger.map(|axum::Extension(linger)| linger);
    let max_frame = config.limits.max_frame_size.as_u64() as usize;
    let write_buffer = config.websocket.write_buffer.as_u64() as usize;
    // Everything the session needs, in one box: the upgrade callback
    // stays in axum's task future for the connection's whole life, so its
    // captures should be one pointer, not the parts.
    let pending = Box::new(PendingSession {
        tracker: broker.connection_tracker(),
        broker: broker.clone(),
        admission,
        peer,
        identity,
        linger,
        span: tracing::debug_span!("conn", id = %peer_id, %remote, sub = %subject),
    });
    let response = upgrade
        .protocols([SUBPROTOCOL])
        .read_buffer_size(config.websocket.read_buffer.as_u64() as usize)
        .write_buffer_size(write_buffer)
        .max_write_buffer_size(write_buffer + 2 * max_frame + 4096)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        // On failure axum drops the `on_upgrade` callback, and with it the
        // admission.
        .on_failed_upgrade(|error| tracing::debug!(cause = %error, "upgrade failed"))
        .on_upgrade(move |socket| {
            use tracing::Instrument;
            let PendingSession {
                tracker,
                broker,
                admission,
                peer,
                identity,
                linger,
                span,
            } = *pending;
            // Boxed outside the tracked future, which then holds a pointer
            // to the session instead of its parts and the session both.
            let session = Box::new(Session::new(
                broker, admission, peer, socket, identity, linger,
            ));
            tracker.track_future(
                async move {
                    tracing::debug!("connected");
                    session.run().await;
                    tracing::debug!("disconnected");
                }
                .instrument(span),
            )
        });
    stats.handshake_latency.observe(started.elapsed());
    response
}

/// What the upgrade callback hands to the session it starts.
struct PendingSession {
    tracker: tokio_util::task::TaskTracker,
    broker: Broker,
    admission: Admission,
    peer: Arc<Peer>,
    identity: Identity,
    linger: Option<CloseLinger>,
    span: tracing::Span,
}

/// The client's address: the TCP peer, or, when the peer is a trusted
/// proxy, the rightmost `X-Forwarded-For` entry that is not itself trusted
/// (entries further left were written by the client and prove nothing).
fn client_ip(remote: SocketAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&remote.ip()) {
        return remote.ip();
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|entry| entry.trim().parse().ok())
        .collect();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(remote.ip())
}

/// Checks a browser's `Origin` against the allow-list; `Err` carries the
/// refused origin. Requests without `Origin` are not from a browser page and
/// pass.
fn check_origin<'a>(headers: &'a HeaderMap, allowed: &[String]) -> Result<(), &'a str> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().map_err(|_| "(not text)")?;
    let allowed_here = if allowed.is_empty() {
        // Same origin only: the origin's host[:port] is the Host we serve.
        let host = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok());
        let origin_host = origin.split_once("://").map(|(_, rest)| rest);
        host.is_some() && origin_host == host
    } else {
        allowed
            .iter()
            .any(|pattern| origin_matches(pattern, origin))
    };
    if allowed_here { Ok(()) } else { Err(origin) }
}

/// True if `origin` matches `pattern`: `*`, an exact origin, or
/// `scheme://*.domain` for any subdomain of `domain`.
fn origin_matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" || pattern.eq_ignore_ascii_case(origin) {
        return true;
    }
    let (Some((pattern_scheme, pattern_host)), Some((scheme, host))) =
        (pattern.split_once("://"), origin.split_once("://"))
    else {
        return false;
    };
    match pattern_host.strip_prefix("*.") {
        Some(domain) => {
            pattern_scheme.eq_ignore_ascii_case(scheme)
                && host.len() > domain.len() + 1
                && host
                    .to_ascii_lowercase()
                    .ends_with(&format!(".{}", domain.to_ascii_lowercase()))
        }
        None => false,
    }
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
    let options = HttpOptions {
        tls: broker.tls().map(|tls| tls.acceptor()),
        handshake_timeout: broker.config().server.handshake_timeout,
        stats: Some(Arc::clone(broker.stats())),
    };
    if let Ok(address) = listener.local_addr() {
        broker.announce(address);
    }
    serve_http(listener, router(broker.clone()), options, shutdown).await;
    tracing::info!("shutting down: closing connections with 1001");
    broker.drain().await;
    Ok(())
}

/// How [`serve_http`] serves connections.
#[derive(Clone)]
pub struct HttpOptions {
    /// Speak TLS with this acceptor (its certificate can be swapped while
    /// serving, see [`crate::tls::TlsReloader`]).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Time from accept to a complete request head (TLS handshake included).
    pub handshake_timeout: Duration,
    /// Where to count handshake timeouts and TLS failures.
    pub stats: Option<Arc<Stats>>,
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("tls", &self.tls.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Serves `router` on `listener` with HTTP/1.1 (upgrades allowed, each
/// client bounded by `handshake_timeout` to send its request head), over TLS
/// when configured, until `shutdown` resolves. Then it stops accepting, gives
/// each in-flight request 1 s to finish and waits 2 s at most in all. Upgraded connections are
/// not waited for: their owner drains them.
///
/// Requests carry `ConnectInfo<SocketAddr>` with the client's address.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    options: HttpOptions,
    shutdown: impl Future<Output = ()>,
) {
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
        let linger = CloseLinger::default();
        let service = router.clone().map_request({
            let linger = linger.clone();
            move |mut request: Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                request.extensions_mut().insert(linger.clone());
                request
            }
        });
        let stop = stop_http.clone();
        let options = options.clone();
        http_tasks.spawn(async move {
            let count = |pick: fn(&Stats) -> &std::sync::atomic::AtomicU64| {
                if let Some(stats) = &options.stats {
                    Stats::add(pick(stats), 1);
                }
            };
            let started = tokio::time::Instant::now();
            match options.tls.clone() {
                None => {
                    let io = LingeringIo::new(stream, linger);
                    serve_connection(io, service, &options, stop, count).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(options.handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => {
                            let remaining = options
                                .handshake_timeout
                                .saturating_sub(started.elapsed())
                                .max(Duration::from_millis(1));
                            let options = HttpOptions {
                                handshake_timeout: remaining,
                                ..options.clone()
                            };
                            let io = LingeringIo::new(tls, linger);
                            serve_connection(io, service, &options, stop, count).await;
                        }
                        Ok(Err(err)) => {
                            count(|stats| &stats.tls_failures);
                            tracing::debug!(%remote, cause = %err, "TLS handshake failed");
                        }
                        Err(_) => {
                            count(|stats| &stats.handshake_timeouts);
                            tracing::debug!(%remote, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    stop_http.cancel();
    http_tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), http_tasks.wait()).await;
}

async fn serve_connection<I, S>(
    io: I,
    service: S,
    options: &HttpOptions,
    stop: tokio_util::sync::CancellationToken,
    count: impl Fn(fn(&Stats) -> &std::sync::atomic::AtomicU64),
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: tower::Service<
            Request<hyper::body::Incoming>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.handshake_timeout)
        .keep_alive(true);
    let connection = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(err) = result {
                if err.is_timeout() {
                    count(|stats| &stats.handshake_timeouts);
                }
                tracing::debug!(cause = %err, "http connection ended");
            }
        }
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let proxy: SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.0.0.6"),
        );
        let trusted: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "10.0.0.6".parse().unwrap()];
        // The client wrote 6.6.6.6 itself; the proxies vouch for 203.0.113.7.
        assert_eq!(
            client_ip(proxy, &headers, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(proxy, &headers, &[]),
            proxy.ip(),
            "untrusted peer"
        );
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy.ip());
    }

    #[test]
    fn origin_patterns_match_exactly_or_by_subdomain() {
        assert!(origin_matches("*", "https://evil.example"));
        assert!(origin_matches(
            "https://app.example.com",
            "https://app.example.com"
        ));
        assert!(!origin_matches(
            "https://app.example.com",
            "http://app.example.com"
        ));
        assert!(origin_matches(
            "https://*.example.com",
            "https://a.b.example.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "https://example.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "https://evilexample.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "http://a.example.com"
        ));
    }

    #[test]
    fn without_an_allow_list_only_the_same_origin_passes() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("broker:8080"));
        assert!(
            check_origin(&headers, &[]).is_ok(),
            "no Origin: not a browser"
        );
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://broker:8080"),
        );
        assert!(check_origin(&headers, &[]).is_ok());
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil:8080"));
        assert_eq!(check_origin(&headers, &[]), Err("http://evil:8080"));
        assert!(check_origin(&headers, &["http://evil:8080".into()]).is_ok());
    }
}
