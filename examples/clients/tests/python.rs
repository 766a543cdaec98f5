//! Runs the Python client (written from docs/protocol.md alone) against a
//! real broker: subscribe with resume, publish, compression both ways.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sockeye_sdk::{Client, Event, Position, SubscribeOptions};
use sockeye_testkit::TestBroker;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Note {
    seq: u64,
    text: String,
}

/// Bound on every wait for the client; a hang detector, not a speed limit.
const WAIT: Duration = Duration::from_secs(60);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../python/sockeye_client.py")
}

async fn run_python(broker: &TestBroker, state: &std::path::Path, args: &[&str]) -> Vec<String> {
    // The client bounds its own run by --timeout too; this catches a
    // client that hangs regardless.
    let output = tokio::process::Command::new("python3")
        .arg(script())
        .args(["--topic", "notes.py", "--timeout", "30", "--state"])
        .arg(state)
        .args(args)
        .env("SOCKEYE_URL", broker.url())
        .env("SOCKEYE_TOKEN", broker.token("py"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, output)
        .await
        .expect("the Python client finishes within the wait")
        .expect("python3 runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "the Python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

fn messages(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter(|line| line.starts_with("message "))
        .map(String::as_str)
        .collect()
}

#[tokio::test]
async fn the_python_client_subscribes_publishes_and_resumes() {
    let broker = TestBroker::start().await;
    let rust = Client::connect(broker.url(), broker.token("rust"))
        .await
        .unwrap();
    for seq in 1..=2 {
        let note = Note {
            seq,
            text: format!("from rust {seq}"),
        };
        rust.publish("notes.py", &note).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("position.json");

    // First run: no saved position, so everything retained, then its own.
    let lines = run_python(&broker, &state, &["--publish", "2"]).await;
    let (id, rest) = lines[0]
        .strip_prefix("welcome connection_id=")
        .and_then(|line| line.split_once(' '))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(id.parse::<u64>().is_ok_and(|id| id > 0), "{lines:?}");
    assert_eq!(rest, "subject=py version=1");
    assert!(
        lines[1].starts_with("subscribed notes.py epoch="),
        "{lines:?}"
    );
    assert!(
        lines[1].ends_with(" next_offset=1 complete=true"),
        "{lines:?}"
    );
    assert_eq!(
        messages(&lines),
        [
            "message offset=1 from=rust seq=1 text=from rust 1",
            "message offset=2 from=rust seq=2 text=from rust 2",
            "message offset=3 from=py seq=1 text=hello from python",
            "message offset=4 from=py seq=2 text=hello from python",
        ]
    );
    assert!(
        lines.contains(&"published offset=3".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"published offset=4".to_owned()),
        "{lines:?}"
    );
    assert_eq!(lines[lines.len() - 2..], ["pong", "closed 1000"]);

    // Meanwhile, someone else publishes.
    let note = Note {
        seq: 3,
        text: "while you were away".into(),
    };
    rust.publish("notes.py", &note).await.unwrap();

    // Second run resumes after offset 4; its note is large, so both its
    // publish and the broker's delivery of it are deflate-compressed.
    let lines = run_python(&broker, &state, &["--publish", "1", "--big"]).await;
    assert!(
        lines[1].ends_with(" next_offset=5 complete=true"),
        "{lines:?}"
    );
    assert_eq!(
        messages(&lines),
        [
            "message offset=5 from=rust seq=3 text=while you were away",
            "message offset=6 from=py seq=1 text=hello from pythonhello from pythonhel...",
        ]
    );
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(saved.contains("\"offset\": 6"), "{saved}");

    // The large note arrived intact.
    let options = SubscribeOptions::new().position(Position::Last { count: 1 });
    let mut last = rust
        .subscribe_with::<Note>("notes.py", options)
        .await
        .unwrap();
    let next = tokio::time::timeout(WAIT, last.next())
        .await
        .expect("the large note arrives within the wait");
    match next.unwrap().unwrap() {
        Event::Message(message) => {
            assert_eq!(message.offset, 6);
            assert_eq!(message.value.text, "hello from python".repeat(200));
        }
        other => panic!("expected the large note, got {other:?}"),
    }
}

#[tokio::test]
async fn the_python_client_reports_a_gap_when_history_was_trimmed() {
    let broker = TestBroker::start_with(|config| {
        config.retention[0].max_messages = 2;
        config.store.trim_interval = std::time::Duration::from_millis(50);
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("position.json");
    let lines = run_python(&broker, &state, &["--publish", "1"]).await;
    assert_eq!(messages(&lines).len(), 1);
    let epoch_line = lines[1].clone();

    let rust = Client::connect(broker.url(), broker.token("rust"))
        .await
        .unwrap();
    for seq in 1..=5 {
        let note = Note {
            seq,
            text: "burst".into(),
        };
        rust.publish("notes.py", &note).await.unwrap();
    }
    // Wait until the trimmer has cut history down to its two newest.
    let mut topic = broker
        .broker
        .topic(&sockeye_protocol::TopicName::parse("notes.py", 255).unwrap())
        .await
        .unwrap()
        .unwrap();
    for _ in 0..1500 {
        if topic.first_offset >= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        topic = broker
            .broker
            .topic(&sockeye_protocol::TopicName::parse("notes.py", 255).unwrap())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(topic.first_offset, 5);

    let lines = run_python(&broker, &state, &["--publish", "1"]).await;
    assert!(
        lines[1].ends_with(" next_offset=5 complete=false"),
        "{lines:?} after {epoch_line}"
    );
    assert_eq!(lines[2], "gap 2..4");
    let offsets: Vec<&str> = messages(&lines);
    assert!(offsets[0].starts_with("message offset=5 "), "{offsets:?}");
}
