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

#[tokio::test]
async fn retention_rules_in_a_file_replace_the_built_in_one_and_serve_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chat-only.toml");
    std::fs::write(
        &file,
        "[[retention]]\npattern = \"chat.>\"\nmax_messages = 100\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let serve = Serve::start(
        dir.path(),
        &["--config", file, "--admin-listen", "127.0.0.1:0"],
    )
    .await;
    let warning = serve
        .log
        .iter()
        .find(|line| line.contains("WARN") && line.contains("no retention rule has pattern"))
        .unwrap_or_else(|| panic!("no warning about unstored topics: {:#?}", serve.log));
    assert!(warning.contains("chat.>"), "{warning}");

    // As it says: `chat.*` topics are stored, every other topic is not.
    let token = mint(dir.path(), &["--sub", "x", "--config", file]).await;
    let mut socket = connect(serve.addr, &token).await;
    for (id, topic, stored) in [(1, "chat.room", true), (2, "orders.eu", false)] {
        send(
            &mut socket,
            ClientMessage::Publish {
                id,
                topic: topic.into(),
                payload: sockeye_protocol::Payload::binary(b"x"),
                ack: true,
            },
        )
        .await;
        match recv(&mut socket).await {
            ServerMessage::Published { epoch, .. } => {
                assert_eq!(epoch != 0, stored, "{topic}: epoch {epoch}");
            }
            other => panic!("{topic}: {other:?}"),
        }
    }
    drop(socket);
    serve.terminate().await;

    // The built-in rule stores everything, and nothing is said.
    let plain = tempfile::tempdir().unwrap();
    let serve = Serve::start(plain.path(), &["--admin-listen", "127.0.0.1:0"]).await;
    assert!(
        !serve
            .log
            .iter()
            .any(|line| line.contains("no retention rule has pattern")),
        "{:#?}",
        serve.log
    );
    serve.terminate().await;
}
