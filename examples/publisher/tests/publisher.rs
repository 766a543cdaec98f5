//! Runs the publisher example against a real broker and checks what it
//! prints and what the broker stored.

#![allow(clippy::unwrap_used)]

use std::process::{Output, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use sockeye_sdk::{Client, Event, Position, SubscribeOptions};
use sockeye_testkit::TestBroker;

/// Bound on every wait for the example; a hang detector, not a speed limit.
const WAIT: Duration = Duration::from_secs(30);

/// Runs the example to its end, killing it if it outlives the wait.
async fn run_publisher(command: &mut tokio::process::Command) -> Output {
    let output = command.stdin(Stdio::null()).kill_on_drop(true).output();
    tokio::time::timeout(WAIT, output)
        .await
        .expect("the publisher finishes within the wait")
        .unwrap()
}

#[derive(Debug, Deserialize, PartialEq)]
struct Note {
    seq: u64,
    text: String,
}

#[tokio::test]
async fn the_publisher_prints_each_stored_offset_and_the_notes_arrive() {
    let broker = TestBroker::start().await;
    let output = run_publisher(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_example-publisher"))
            .args(["--topic", "notes.pub", "--count", "3", "hi there"])
            .env("SOCKEYE_URL", broker.url())
            .env("SOCKEYE_TOKEN", broker.token("pub-example")),
    )
    .await;
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    for (index, line) in lines[..3].iter().enumerate() {
        let seq = index + 1;
        assert!(line.starts_with("published notes.pub epoch="), "{line}");
        assert!(
            line.ends_with(&format!(" offset={seq} seq={seq}")),
            "{line}"
        );
    }
    assert_eq!(lines[3], "done");

    let reader = Client::connect(broker.url(), broker.token("reader"))
        .await
        .unwrap();
    let mut notes = reader
        .subscribe_with::<Note>(
            "notes.pub",
            SubscribeOptions::new().position(Position::Oldest),
        )
        .await
        .unwrap();
    for seq in 1..=3 {
        let next = tokio::time::timeout(WAIT, notes.next())
            .await
            .expect("the stored note arrives within the wait");
        match next.unwrap().unwrap() {
            Event::Message(message) => {
                assert_eq!(message.publisher, "pub-example");
                assert_eq!(
                    message.value,
                    Note {
                        seq,
                        text: "hi there".into()
                    }
                );
            }
            other => panic!("expected note {seq}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_publisher_fails_clearly_with_a_bad_token() {
    let broker = TestBroker::start().await;
    let output = run_publisher(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_example-publisher")).args([
            "--url",
            &broker.url(),
            "--token",
            "nope",
        ]),
    )
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("401"), "{stderr}");
}
