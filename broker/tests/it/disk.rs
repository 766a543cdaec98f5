//! Disk use under steady churn at the retention limit: sled never returns
//! space to the OS, but it reuses freed segments, so the store must level
//! off instead of growing with the total published.

use std::path::Path;
use std::time::Duration;

use sockeye_broker::config::{Durability, RetentionRule};
use sockeye_protocol::{ClientMessage, Payload, ServerMessage};

use sockeye_testkit::{TestBroker, WAIT};

/// Bytes of the store's files on disk (allocated blocks).
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let metadata = entry.metadata().unwrap();
        total += if metadata.is_dir() {
            disk_usage(&entry.path())
        } else {
            metadata.blocks() * 512
        };
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_levels_off_when_publishing_far_more_than_is_retained() {
    let retained = 2_000u64;
    let broker = TestBroker::start_with(|config| {
        config.store.durability = Durability::Interval;
        config.store.flush_interval = Duration::from_millis(50);
        config.limits.publish_rate = 0;
        config.retention = vec![RetentionRule {
            pattern: ">".into(),
            max_messages: retained,
            ..RetentionRule::default()
        }];
    })
    .await;
    let store_dir = broker.data_dir().join("store");
    let mut publisher = broker.client("churn").await;
    let payload = Payload::binary(&[0x5a; 1024]);
    let rounds = 8usize;
    let per_round = 10_000u64;
    let mut sizes = Vec::new();
    for round in 0..rounds {
        for _ in 0..per_round {
            let id = publisher.next_id();
            publisher
                .send(&ClientMessage::Publish {
                    id,
                    topic: "churn".into(),
                    payload: payload.clone(),
                    ack: false,
                })
                .await;
        }
        let id = publisher.next_id();
        assert_eq!(
            publisher.request(ClientMessage::Ping { id }).await,
            ServerMessage::Pong { id }
        );
        // Let the trimmer bring the topic back to its limit and the store flush.
        let deadline = tokio::time::Instant::now() + WAIT;
        while broker
            .broker
            .topic(&sockeye_protocol::TopicName::parse("churn", 255).unwrap())
            .await
            .unwrap()
            .unwrap()
            .stored_messages
            > retained
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "trimming fell behind"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let size = disk_usage(&store_dir);
        eprintln!(
            "after {} messages ({} retained): {:.1} MiB on disk",
            (round as u64 + 1) * per_round,
            retained,
            size as f64 / (1 << 20) as f64
        );
        sizes.push(size);
    }
    // 80,000 messages of ~1.1 KiB went through; 2,000 are kept. The store
    // must not grow with the total: the second half of the run may add at
    // most a quarter to the size reached after the first half.
    let half = sizes[rounds / 2 - 1];
    let last = sizes[rounds - 1];
    assert!(
        last <= half + half / 4,
        "the store keeps growing: {half} bytes after {} messages, {last} after {}",
        rounds as u64 / 2 * per_round,
        rounds as u64 * per_round
    );
}
