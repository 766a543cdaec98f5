//! Two pages of the browser chat, in headless Chromium driven by
//! Playwright, exchange messages through a real broker.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sockeye_testkit::TestBroker;

#[tokio::test]
async fn two_browser_pages_chat_through_the_broker() {
    // The page is served from its own origin; the broker admits exactly it
    // (by default it allows only its own origin).
    let site_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let broker = TestBroker::start_with(|config| {
        config.server.allowed_origins = vec![format!("http://127.0.0.1:{site_port}")];
    })
    .await;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../browser-chat/test/two-pages.mjs");
    let output = tokio::process::Command::new("node")
        .arg(script)
        .env("SOCKEYE_URL", broker.url())
        .env("SOCKEYE_TOPIC", "chat.lobby")
        .env("SITE_PORT", site_port.to_string())
        .env("TOKEN_ALICE", broker.token("alice"))
        .env("TOKEN_BOB", broker.token("bob"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    // Playwright bounds each of its waits (30 s); this bounds the whole run.
    let output = tokio::time::timeout(Duration::from_secs(180), output)
        .await
        .expect("the browser test finishes in time")
        .expect("node runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "bob saw: alice: hello bob",
            "alice saw: bob: hi alice",
            "bob saw a long message of 3000 characters",
            "alice sees the history after a reload: 3 messages",
        ]
    );
    // The broker stored what the pages published, under their token subjects.
    let info = broker
        .broker
        .topic(&sockeye_protocol::TopicName::parse("chat.lobby", 255).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.last_offset, 3);
}
