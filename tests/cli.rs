//! The `sockeye` command line, as scripts and the docs use it: `config`
//! prints a file that `serve` runs with, `token` prints a token the broker
//! accepts, `serve` shuts down gracefully on SIGTERM with 1001 to its
//! clients.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use std::process::Stdio;

use futures_util::StreamExt;
use sockeye_protocol::{ClientMessage, ServerMessage};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

use support::{BIN, Serve, WAIT, connect, mint, recv, send};

#[tokio::test]
async fn config_prints_a_file_that_serve_accepts() {
    let output = tokio::time::timeout(
        WAIT,
        Command::new(BIN).arg("config").kill_on_drop(true).output(),
    )
    .await
    .expect("sockeye config finishes in time")
    .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("[server]") && text.contains("[[retention]]"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sockeye.toml");
    std::fs::write(&file, text).unwrap();
    let file = file.to_str().unwrap();

    // The printed file as is; only the listeners move to free ports, since
    // its defaults are fixed and tests run in parallel.
    let serve = Serve::start(
        dir.path(),
        &["--config", file, "--admin-listen", "127.0.0.1:0"],
    )
    .await;
    assert!(
        serve.listen_address("admin API").is_some(),
        "{:#?}",
        serve.log
    );
    // A token minted with the same file works on it.
    let token = mint(dir.path(), &["--sub", "x", "--config", file]).await;
    let mut socket = connect(serve.addr, &token).await;
    send(&mut socket, ClientMessage::Ping { id: 1 }).await;
    assert_eq!(recv(&mut socket).await, ServerMessage::Pong { id: 1 });
    drop(socket);
    serve.terminate().await;
}

#[tokio::test]
async fn an_invalid_config_is_refused_with_the_key_that_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[limits]\noutbound_queue = 0\n").unwrap();
    let output = tokio::time::timeout(
        WAIT,
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("sockeye refuses the file instead of serving")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("limits.outbound_queue"), "{stderr}");
}

#[tokio::test]
async fn serve_with_no_config_accepts_a_minted_token_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // No config file: every default, the admin listener moved to a free port.
    let serve = Serve::start(dir.path(), &["--admin-listen", "127.0.0.1:0"]).await;
    assert!(
        dir.path().join("dev-secret").exists(),
        "serve generated the development secret"
    );
    let token = mint(dir.path(), &["--sub", "cli-user", "--ttl", "10m"]).await;
    let mut socket = connect(serve.addr, &token).await;

    serve.sigterm();
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
    .expect("a close frame within the wait")
    .expect("the close frame has a code");
    assert_eq!(u16::from(close.code), 1001);
    assert!(close.reason.starts_with("retry_after_ms="), "{close:?}");
    let status = serve.wait().await;
    assert!(
        status.success(),
        "serve exits cleanly after draining: {status}"
    );
}
