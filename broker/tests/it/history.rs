//! Stored history: resume positions, the replay/live seam, restarts,
//! trimming gaps, resets and slow consumers catching up.

use std::time::Duration;

use sockeye_broker::Stats;
use sockeye_broker::config::RetentionRule;
use sockeye_protocol::{ClientMessage, OffsetRange, Payload, Position, ServerMessage};

use sockeye_testkit::{TestBroker, WAIT, number, read_number};

#[tokio::test]
async fn a_reconnecting_client_gets_exactly_the_messages_it_missed() {
    let broker = TestBroker::start().await;
    let mut publisher = broker.client("p").await;
    let mut subscriber = broker.client("s").await;
    let subscribed = subscriber.subscribe("orders", None).await;
    for n in 1..=5 {
        publisher.publish("orders", number(n)).await;
    }
    let mut last = None;
    for _ in 1..=5 {
        let delivery = subscriber.delivery().await;
        last = Some((delivery.epoch, delivery.offset));
    }
    let (epoch, offset) = last.unwrap();
    assert_eq!((epoch, offset), (subscribed.epoch, 5));
    drop(subscriber);
    for n in 6..=12 {
        publisher.publish("orders", number(n)).await;
    }
    let mut subscriber = broker.client("s").await;
    let resumed = subscriber
        .subscribe("orders", Some(Position::After { epoch, offset }))
        .await;
    assert!(resumed.complete && resumed.gap.is_none() && !resumed.epoch_changed);
    assert_eq!((resumed.next_offset, resumed.last_offset), (6, 12));
    for n in 6..=12 {
        let delivery = subscriber.delivery().await;
        assert_eq!((delivery.offset, read_number(&delivery.payload)), (n, n));
    }
    // Then live, with nothing doubled.
    publisher.publish("orders", number(13)).await;
    assert_eq!(subscriber.delivery().await.offset, 13);
}

#[tokio::test]
async fn resuming_while_a_publisher_keeps_publishing_has_no_gap_and_no_duplicate() {
    let broker = TestBroker::start_with(|config| {
        config.store.durability = sockeye_broker::config::Durability::Interval;
        config.store.replay_batch = 64;
    })
    .await;
    let total = 5000u64;
    let mut publisher = broker.client("p").await;
    for n in 1..=1000 {
        let id = publisher.next_id();
        publisher
            .send(&ClientMessage::Publish {
                id,
                topic: "stream".into(),
                payload: number(n),
                ack: false,
            })
            .await;
    }
    let publishing = tokio::spawn(async move {
        for n in 1001..=total {
            let id = publisher.next_id();
            publisher
                .send(&ClientMessage::Publish {
                    id,
                    topic: "stream".into(),
                    payload: number(n),
                    ack: false,
                })
                .await;
            if n % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        publisher
    });
    // Subscribe from the oldest while the publisher is still going.
    let mut subscriber = broker.client("s").await;
    let subscribed = subscriber.subscribe("stream", Some(Position::Oldest)).await;
    assert_eq!(subscribed.next_offset, 1);
    let mut expected = 1;
    while expected <= total {
        let delivery = subscriber.delivery().await;
        assert_eq!(delivery.offset, expected, "contiguous offsets");
        assert_eq!(read_number(&delivery.payload), expected);
        expected += 1;
    }
    let _publisher = publishing.await.unwrap();
    // Nothing extra arrives after the last one.
    let id = subscriber.next_id();
    subscriber.send(&ClientMessage::Ping { id }).await;
    assert_eq!(subscriber.recv().await, ServerMessage::Pong { id });
}

#[tokio::test]
async fn a_broker_restart_keeps_epochs_offsets_and_payloads() {
    let broker = TestBroker::start().await;
    let mut publisher = broker.client("p").await;
    let mut acked = Vec::new();
    for n in 1..=20 {
        acked.push(publisher.publish("durable.topic", number(n)).await);
    }
    let (epoch, _) = acked[0];
    drop(publisher);
    let broker = broker.stop().await.restart().await;
    let mut subscriber = broker.client("s").await;
    let resumed = subscriber
        .subscribe("durable.topic", Some(Position::After { epoch, offset: 10 }))
        .await;
    assert_eq!(resumed.epoch, epoch, "the epoch survives the restart");
    assert!(resumed.complete);
    for n in 11..=20 {
        let delivery = subscriber.delivery().await;
        assert_eq!((delivery.epoch, delivery.offset), (epoch, n));
        assert_eq!(read_number(&delivery.payload), n);
    }
    // New publishes continue the same sequence.
    let mut publisher = broker.client("p").await;
    assert_eq!(
        publisher.publish("durable.topic", number(21)).await,
        (epoch, 21)
    );
}

fn small_retention(config: &mut sockeye_broker::Config) {
    config.retention = vec![RetentionRule {
        pattern: ">".into(),
        max_messages: 10,
        ..RetentionRule::default()
    }];
}

async fn wait_until_trimmed(broker: &TestBroker, topic: &str, first: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = broker
            .broker
            .topic(&sockeye_protocol::TopicName::parse(topic, 255).unwrap())
            .await
            .unwrap()
            .unwrap();
        if info.first_offset >= first {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never trimmed: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_position_in_trimmed_history_gets_what_is_left_and_the_exact_gap() {
    let broker = TestBroker::start_with(small_retention).await;
    let mut publisher = broker.client("p").await;
    let mut epoch = 0;
    for n in 1..=30 {
        epoch = publisher.publish("trimmed", number(n)).await.0;
    }
    wait_until_trimmed(&broker, "trimmed", 21).await;
    let mut subscriber = broker.client("s").await;
    let resumed = subscriber
        .subscribe("trimmed", Some(Position::After { epoch, offset: 5 }))
        .await;
    assert!(!resumed.complete);
    assert_eq!(resumed.gap, Some(OffsetRange { from: 6, to: 20 }));
    assert_eq!(resumed.next_offset, 21);
    for n in 21..=30 {
        assert_eq!(subscriber.delivery().await.offset, n);
    }
}

#[tokio::test]
async fn last_n_and_oldest_positions_replay_what_they_say() {
    let broker = TestBroker::start_with(small_retention).await;
    let mut publisher = broker.client("p").await;
    for n in 1..=25 {
        publisher.publish("positions", number(n)).await;
    }
    wait_until_trimmed(&broker, "positions", 16).await;
    let mut last3 = broker.client("a").await;
    let reply = last3
        .subscribe("positions", Some(Position::Last { count: 3 }))
        .await;
    assert!(reply.complete);
    assert_eq!(reply.next_offset, 23);
    for n in 23..=25 {
        assert_eq!(last3.delivery().await.offset, n);
    }
    let mut too_many = broker.client("b").await;
    let reply = too_many
        .subscribe("positions", Some(Position::Last { count: 50 }))
        .await;
    assert!(!reply.complete, "only 10 of 50 are retained");
    assert_eq!(reply.next_offset, 16);
    let mut oldest = broker.client("c").await;
    let reply = oldest.subscribe("positions", Some(Position::Oldest)).await;
    assert_eq!(reply.next_offset, 16);
    for n in 16..=25 {
        assert_eq!(oldest.delivery().await.offset, n);
        assert_eq!(too_many.delivery().await.offset, n);
    }
}

#[tokio::test]
async fn a_reset_starts_a_new_epoch_reported_to_live_and_resuming_subscribers() {
    let broker = TestBroker::start().await;
    let mut publisher = broker.client("p").await;
    let (old_epoch, _) = publisher.publish("resettable", number(1)).await;
    let mut live = broker.client("live").await;
    live.subscribe("resettable", None).await;
    let new_epoch = broker
        .broker
        .reset_topic(&sockeye_protocol::TopicName::parse("resettable", 255).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(new_epoch, old_epoch);
    assert_eq!(
        live.recv().await,
        ServerMessage::Reset {
            topic: "resettable".into(),
            epoch: new_epoch
        }
    );
    assert_eq!(
        publisher.publish("resettable", number(2)).await,
        (new_epoch, 1)
    );
    let delivery = live.delivery().await;
    assert_eq!((delivery.epoch, delivery.offset), (new_epoch, 1));
    let mut resuming = broker.client("r").await;
    let reply = resuming
        .subscribe(
            "resettable",
            Some(Position::After {
                epoch: old_epoch,
                offset: 1,
            }),
        )
        .await;
    assert!(reply.epoch_changed && !reply.complete);
    assert_eq!((reply.epoch, reply.next_offset), (new_epoch, 1));
    assert_eq!(resuming.delivery().await.offset, 1);
}

#[tokio::test]
async fn a_slow_consumer_catches_up_from_the_store_and_ends_contiguous() {
    let broker = TestBroker::start_with(|config| {
        config.limits.outbound_queue = 8;
        config.store.durability = sockeye_broker::config::Durability::Interval;
    })
    .await;
    let mut slow = broker.client("slow").await;
    slow.subscribe("firehose", None).await;
    let mut publisher = broker.client("p").await;
    // 2,000 incompressible 4 KiB payloads: far more than the queue and the
    // socket buffers hold while the subscriber is not reading.
    let total = 2000u64;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for n in 1..=total {
        let mut data = n.to_be_bytes().to_vec();
        data.extend((0..4096).map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        }));
        let id = publisher.next_id();
        publisher
            .send(&ClientMessage::Publish {
                id,
                topic: "firehose".into(),
                payload: Payload::binary(&data),
                ack: false,
            })
            .await;
    }
    let id = publisher.next_id();
    assert_eq!(
        publisher.request(ClientMessage::Ping { id }).await,
        ServerMessage::Pong { id }
    );
    let stats = broker.broker.stats();
    assert!(
        Stats::get(&stats.slow_consumer_catch_ups) > 0,
        "the subscriber was switched to catching up"
    );
    for n in 1..=total {
        let delivery = slow.delivery().await;
        assert_eq!(delivery.offset, n);
        let data = delivery.payload.as_binary().unwrap();
        assert_eq!(u64::from_be_bytes(data[..8].try_into().unwrap()), n);
    }
    // Back to live delivery afterwards.
    publisher
        .publish("firehose", Payload::binary(b"live"))
        .await;
    assert_eq!(slow.delivery().await.offset, total + 1);
    assert!(Stats::get(&stats.slow_consumer_disconnects) == 0);
}

#[tokio::test]
async fn acknowledged_publishes_in_fsync_mode_are_flushed_before_the_ack() {
    let broker = TestBroker::start().await;
    let mut publisher = broker.client("p").await;
    for n in 1..=5 {
        publisher.publish("acked", number(n)).await;
        // The ack means the flusher covered this write.
        assert!(broker.broker.store_health().acknowledged_writes >= n);
    }
}

#[tokio::test]
async fn age_and_size_limits_trim_the_oldest_messages() {
    let broker = TestBroker::start_with(|config| {
        config.retention = vec![
            RetentionRule {
                pattern: "aged".into(),
                max_age: Duration::from_secs(2),
                ..RetentionRule::default()
            },
            RetentionRule {
                pattern: "sized".into(),
                max_bytes: bytesize::ByteSize::b(2_000),
                ..RetentionRule::default()
            },
        ];
    })
    .await;
    let mut publisher = broker.client("p").await;
    let mut aged_epoch = 0;
    for n in 1..=5 {
        aged_epoch = publisher.publish("aged", number(n)).await.0;
    }
    // Each stored body is ~80 bytes of envelope plus 200 of payload.
    for _ in 1..=20 {
        publisher.publish("sized", Payload::binary(&[7; 200])).await;
    }
    // Everything in `aged` expires; `sized` keeps what fits in 2,000 bytes.
    // Past the age limit for 1..=5; offset 6 then has two seconds to live,
    // far longer than the rest of the test needs.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    publisher.publish("aged", number(6)).await;
    wait_until_trimmed(&broker, "aged", 6).await;
    let sized = broker
        .broker
        .topic(&sockeye_protocol::TopicName::parse("sized", 255).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(sized.stored_bytes <= 2_000, "{sized:?}");
    assert!(
        sized.stored_messages >= 5,
        "it keeps as much as fits: {sized:?}"
    );
    assert_eq!(sized.last_offset, 20);

    let mut late = broker.client("late").await;
    let reply = late
        .subscribe(
            "aged",
            Some(Position::After {
                epoch: aged_epoch,
                offset: 0,
            }),
        )
        .await;
    assert_eq!(reply.gap, Some(OffsetRange { from: 1, to: 5 }));
    assert_eq!(late.delivery().await.offset, 6);
}
