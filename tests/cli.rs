//! The `sockeye` command line, as scripts and the docs use it: `config`
//! prints a file that loads, `token` prints a token the broker accepts,
//! `serve` shuts down gracefully on SIGTERM with 1001 to its clients.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const BIN: &str = env!("CARGO_BIN_EXE_sockeye");
const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn config_prints_a_file_that_serve_accepts() {
    let output = Command::new(BIN).arg("config").output().await.unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("[server]") && text.contains("[[retention]]"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sockeye.toml");
    std::fs::write(&file, text).unwrap();
    // `token` loads the whole configuration too, so it validates the file.
    let output = Command::new(BIN)
        .args(["token", "--sub", "x", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn an_invalid_config_is_refused_with_the_key_that_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[limits]\noutbound_queue = 0\n").unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("limits.outbound_queue"), "{stderr}");
}

#[tokio::test]
async fn serve_with_no_config_accepts_a_minted_token_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &addr.to_string(), "--data-dir"])
        .arg(dir.path())
        .env("SOCKEYE_ADMIN__ENABLED", "false")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = Command::new(BIN)
        .args(["token", "--sub", "cli-user", "--ttl", "10m", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(
        dir.path().join("dev-secret").exists(),
        "the secret was generated"
    );

    let deadline = tokio::time::Instant::now() + WAIT;
    let mut socket = loop {
        let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => break socket,
            Err(err) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never accepted: {err}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(matches!(socket.next().await, Some(Ok(Message::Binary(_)))));

    let pid = child.id().unwrap();
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(u16::from(close.code), 1001);
    assert!(close.reason.starts_with("retry_after_ms="));
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "serve exits cleanly after draining");
}
