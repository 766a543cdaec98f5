//! Runs the subscriber example against a real broker and checks what it
//! prints, for history and for live notes.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use sockeye_sdk::Client;
use sockeye_testkit::TestBroker;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

/// Bound on every wait for the example; a hang detector, not a speed limit.
const WAIT: Duration = Duration::from_secs(30);

/// The example's next line of output, or `None` at its end, within the wait.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> Option<String> {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the subscriber prints its next line within the wait")
        .unwrap()
}

#[derive(Debug, Serialize)]
struct Note {
    seq: u64,
    text: String,
}

#[tokio::test]
async fn the_subscriber_prints_history_then_live_notes() {
    let broker = TestBroker::start().await;
    let writer = Client::connect(broker.url(), broker.token("writer"))
        .await
        .unwrap();
    for seq in 1..=2 {
        let note = Note {
            seq,
            text: format!("old {seq}"),
        };
        writer.publish("notes.sub", &note).await.unwrap();
    }
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_example-subscriber"))
        .args(["--topic", "notes.sub", "--count", "4"])
        .env("SOCKEYE_URL", broker.url())
        .env("SOCKEYE_TOKEN", broker.token("sub-example"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = next_line(&mut lines).await.unwrap();
    assert!(first.starts_with("subscribed notes.sub epoch="), "{first}");
    assert!(first.ends_with(" next_offset=1"), "{first}");
    // Subscribed: anything published now is live.
    for seq in 3..=4 {
        let note = Note {
            seq,
            text: format!("new {seq}"),
        };
        writer.publish("notes.sub", &note).await.unwrap();
    }
    for seq in 1..=4u64 {
        let line = next_line(&mut lines).await.unwrap();
        let age = if seq <= 2 { "old" } else { "new" };
        assert_eq!(
            line,
            format!("received notes.sub offset={seq} from=writer seq={seq} text={age} {seq}")
        );
    }
    assert_eq!(next_line(&mut lines).await, None);
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the subscriber exits within the wait")
        .unwrap();
    assert!(status.success(), "{status}");
}
