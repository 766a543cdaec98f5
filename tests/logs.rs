//! No log line of `sockeye serve`, at any level, holds a token or its
//! signature: a real process logging at `trace` (with `RUST_LOG` trying to
//! re-enable every dependency that dumps frames or requests) is driven with
//! tokens in every carrier, refused and accepted, over WebSockets, `refresh`
//! frames and the admin API; then its whole log is searched.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use sockeye_protocol::{ClientMessage, ServerMessage};
use support::{WAIT, connect, handshake, listen_address, mint, recv, send};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Every level of our crates and of each dependency that logs frames,
/// requests or headers: the binary must cap the latter whatever this says.
const RUST_LOG: &str = "trace,tungstenite=trace,tokio_tungstenite=trace,hyper=trace,\
    hyper_util=trace,axum=trace,axum_core=trace,tower=trace,rustls=trace,\
    sockeye_broker=trace,sockeye_admin=trace,sockeye=trace,sled=trace";

/// Reads the log file until a line contains `what`.
async fn wait_for_line(log: &Path, what: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return text.lines().map(str::to_owned).collect();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{what}` in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A handshake that must be refused with 401.
async fn refused(request: Request) {
    let addr = request.uri().authority().unwrap().as_str().to_owned();
    let stream = TcpStream::connect(addr).await.unwrap();
    match handshake(stream, request, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        Err(other) => panic!("expected 401, got {other}"),
        Ok(_) => panic!("expected 401, the handshake was accepted"),
    }
}

fn with_query(addr: std::net::SocketAddr, token: &str) -> Request {
    format!("ws://{addr}/ws?token={token}")
        .into_client_request()
        .unwrap()
}

fn with_subprotocol(addr: std::net::SocketAddr, token: &str) -> Request {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("sockeye.v1, bearer.{token}")).unwrap(),
    );
    request
}

/// The hex text of `bytes`, as frame dumps print payloads.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test]
async fn no_log_line_at_trace_level_holds_a_token_or_its_signature() {
    let data = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("sockeye.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = tokio::process::Command::new(support::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data.path())
        .env("RUST_LOG", RUST_LOG)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The admin listener is logged first.
    let lines = wait_for_line(&log_path, "serving WebSocket clients").await;
    let addr = listen_address(&lines, "serving WebSocket clients").unwrap();
    let admin = listen_address(&lines, "admin API").unwrap();

    let user = mint(data.path(), &["--sub", "alice"]).await;
    let renewed = mint(data.path(), &["--sub", "alice", "--ttl", "2h"]).await;
    let operator = mint(data.path(), &["--sub", "root", "--admin"]).await;
    // Signed with another broker's secret: refused everywhere.
    let forged = mint(elsewhere.path(), &["--sub", "mallory"]).await;
    let forged_admin = mint(elsewhere.path(), &["--sub", "mallory", "--admin"]).await;

    // Accepted in each carrier, with a refresh that works and two that do
    // not.
    let mut socket = connect(addr, &user).await;
    send(
        &mut socket,
        ClientMessage::Refresh {
            id: 1,
            token: renewed.clone(),
        },
    )
    .await;
    assert!(matches!(
        recv(&mut socket).await,
        ServerMessage::Refreshed { id: 1, .. }
    ));
    for (id, token) in [(2, forged.clone()), (3, format!("{user}x"))] {
        send(&mut socket, ClientMessage::Refresh { id, token }).await;
        assert!(matches!(
            recv(&mut socket).await,
            ServerMessage::Error { .. }
        ));
    }
    send(&mut socket, ClientMessage::Ping { id: 4 }).await;
    assert_eq!(recv(&mut socket).await, ServerMessage::Pong { id: 4 });
    for request in [with_query(addr, &user), with_subprotocol(addr, &user)] {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut socket, _) = handshake(stream, request, None).await.unwrap();
        assert!(matches!(recv(&mut socket).await, ServerMessage::Welcome(_)));
    }
    // Refused in each carrier.
    refused(support::request(addr, &forged)).await;
    refused(with_query(addr, &forged)).await;
    refused(with_subprotocol(addr, &forged)).await;
    refused(support::request(addr, &format!("{user}x"))).await;

    // The admin API: accepted, refused (401) and forbidden (403).
    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    for (token, status) in [(&operator, 200), (&forged_admin, 401), (&user, 403)] {
        let response = http
            .get(format!("http://{admin}/v1/stats"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
    }
    drop(socket);

    support::sigterm(child.id().unwrap()).unwrap();
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("sockeye exits in time")
        .unwrap();
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    // The process did log at trace level, dependencies included.
    assert!(log.contains("TRACE"), "a trace-level log: {log}");
    // Records of crates that log through `log` (sled, tungstenite) reach it:
    // tungstenite is silent because it is capped, not because its records
    // are lost.
    assert!(
        log.lines()
            .any(|line| line.contains("TRACE") && line.contains("sled::")),
        "sled's trace records are in the log"
    );
    let mut leaks = Vec::new();
    for token in [&user, &renewed, &operator, &forged, &forged_admin] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(signature.len() >= 40, "{token}");
        let needles = [
            ("token", token.to_string()),
            ("signature", signature.to_owned()),
            ("hex of the token", hex(token.as_bytes())),
            ("hex of the signature", hex(signature.as_bytes())),
        ];
        for line in log.lines() {
            if let Some((what, _)) = needles.iter().find(|(_, needle)| line.contains(needle)) {
                let start: String = line.chars().take(160).collect();
                leaks.push(format!("{what}: {start}"));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "the log holds tokens:\n{}",
        leaks.join("\n")
    );
}
