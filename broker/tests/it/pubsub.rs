//! Subscribing, publishing, permissions and fan-out.

use sockeye_broker::Claims;
use sockeye_broker::Stats;
use sockeye_broker::auth::unix_now;
use sockeye_broker::config::RetentionRule;
use sockeye_protocol::frame::FLAG_DEFLATE;
use sockeye_protocol::{ClientMessage, Compression, ErrorCode, Payload, ServerMessage, frame};

use sockeye_testkit::{Carrier, Client, TestBroker, number, read_number};

fn error_code(reply: &ServerMessage) -> ErrorCode {
    match reply {
        ServerMessage::Error { code, .. } => *code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_published_message_reaches_a_subscriber_with_its_metadata() {
    let broker = TestBroker::start().await;
    let mut alice = broker.client("alice").await;
    let mut bob = broker.client("bob").await;
    let subscribed = alice.subscribe("chat.lobby", None).await;
    assert!(subscribed.stored);
    let (epoch, offset) = bob.publish("chat.lobby", Payload::binary(b"hi")).await;
    assert_eq!(offset, 1);
    assert_eq!(epoch, subscribed.epoch);
    let delivery = alice.delivery().await;
    assert_eq!(delivery.topic, "chat.lobby");
    assert_eq!((delivery.epoch, delivery.offset), (epoch, 1));
    assert_eq!(delivery.publisher, "bob");
    assert_eq!(delivery.payload.as_binary(), Some(&b"hi"[..]));
    assert!(delivery.timestamp_ms > 0);
}

#[tokio::test]
async fn forbidden_subscribe_and_publish_get_error_replies_and_the_connection_stays() {
    let broker = TestBroker::start().await;
    let token = broker.token_with(Claims {
        sub: "limited".into(),
        exp: Some(unix_now() + 600),
        subscribe: Some(vec!["chat.>".into()]),
        publish: Some(vec!["chat.lobby".into()]),
        ..Claims::default()
    });
    let mut client = Client::connect(&broker.url(), Carrier::Header, &token)
        .await
        .unwrap();
    let id = client.next_id();
    let reply = client
        .request(ClientMessage::Subscribe {
            id,
            topic: "admin.secrets".into(),
            position: None,
        })
        .await;
    assert_eq!(error_code(&reply), ErrorCode::Forbidden);
    // A filter wider than the permission is refused too.
    let id = client.next_id();
    let reply = client
        .request(ClientMessage::Subscribe {
            id,
            topic: ">".into(),
            position: None,
        })
        .await;
    assert_eq!(error_code(&reply), ErrorCode::Forbidden);
    let id = client.next_id();
    let reply = client
        .request(ClientMessage::Publish {
            id,
            topic: "chat.other".into(),
            payload: Payload::binary(b"x"),
            ack: true,
        })
        .await;
    assert_eq!(error_code(&reply), ErrorCode::Forbidden);
    // Allowed requests still work on the same connection.
    client.subscribe("chat.*", None).await;
    client.publish("chat.lobby", Payload::binary(b"ok")).await;
    assert_eq!(client.delivery().await.topic, "chat.lobby");
}

#[tokio::test]
async fn exact_and_wildcard_subscribers_all_receive_every_message_in_order() {
    let broker = TestBroker::start().await;
    let filters = ["room.a", "room.*", "room.>", ">", "*.a"];
    let mut subscribers = Vec::new();
    for index in 0..40 {
        let mut client = broker.client(&format!("sub{index}")).await;
        client.subscribe(filters[index % filters.len()], None).await;
        subscribers.push(client);
    }
    // A subscriber to another room sees nothing of room.a.
    let mut elsewhere = broker.client("elsewhere").await;
    elsewhere.subscribe("room.b", None).await;
    let mut publisher = broker.client("pub").await;
    for n in 0..50 {
        publisher.publish("room.a", number(n)).await;
    }
    publisher.publish("room.b", number(999)).await;
    for client in &mut subscribers {
        for n in 0..50 {
            let delivery = client.delivery().await;
            assert_eq!(delivery.topic, "room.a");
            assert_eq!(read_number(&delivery.payload), n);
            assert_eq!(delivery.offset, n + 1);
        }
    }
    let only = elsewhere.delivery().await;
    assert_eq!(
        (only.topic.as_str(), read_number(&only.payload)),
        ("room.b", 999)
    );
    // room.a went to all 40; room.b to the 8 each of `room.*`, `room.>`
    // and `>`, plus `elsewhere`.
    assert_eq!(
        sockeye_broker::Stats::get(&broker.broker.stats().deliveries),
        40 * 50 + 3 * 8 + 1
    );
}

#[tokio::test]
async fn large_frames_are_compressed_both_ways_and_small_ones_are_not() {
    let broker = TestBroker::start().await;
    let mut subscriber = broker.client("s").await;
    subscriber.subscribe("big", None).await;
    let mut publisher = broker.client("p").await;
    // The client compresses everything it sends.
    publisher.compression = Compression {
        threshold: 0,
        level: 6,
    };
    let text = "sockeye ".repeat(1000);
    let mut payload = Vec::new();
    rmp::encode::write_str(&mut payload, &text).unwrap();
    publisher
        .publish("big", Payload::from_msgpack(payload.clone()).unwrap())
        .await;
    publisher.publish("big", Payload::binary(b"small")).await;

    let big = subscriber.recv_frame().await;
    assert_eq!(big[0], FLAG_DEFLATE, "a body over 1 KiB arrives compressed");
    assert!(big.len() < 1000);
    let body = frame::open(&big, 1 << 20).unwrap();
    match ServerMessage::decode(&body).unwrap() {
        ServerMessage::Message(delivery) => assert_eq!(delivery.payload.as_msgpack(), payload),
        other => panic!("{other:?}"),
    }
    let small = subscriber.recv_frame().await;
    assert_eq!(small[0], 0, "a small body arrives plain");
}

#[tokio::test]
async fn subscription_rules_are_enforced_with_specific_errors() {
    let broker = TestBroker::start_with(|config| config.limits.max_subscriptions = 3).await;
    let mut client = broker.client("c").await;
    client.subscribe("a.b", None).await;
    let ask = async |client: &mut Client, topic: &str| {
        let id = client.next_id();
        client
            .request(ClientMessage::Subscribe {
                id,
                topic: topic.into(),
                position: None,
            })
            .await
    };
    assert_eq!(
        error_code(&ask(&mut client, "a.b").await),
        ErrorCode::AlreadySubscribed
    );
    assert_eq!(
        error_code(&ask(&mut client, "a.*").await),
        ErrorCode::SubscriptionOverlaps
    );
    assert_eq!(
        error_code(&ask(&mut client, "a..b").await),
        ErrorCode::InvalidTopic
    );
    client.subscribe("b", None).await;
    client.subscribe("c.>", None).await;
    assert_eq!(
        error_code(&ask(&mut client, "d").await),
        ErrorCode::TooManySubscriptions
    );
    let id = client.next_id();
    let reply = client
        .request(ClientMessage::Unsubscribe {
            id,
            topic: "zzz".into(),
        })
        .await;
    assert_eq!(error_code(&reply), ErrorCode::NotSubscribed);
    let id = client.next_id();
    let reply = client
        .request(ClientMessage::Unsubscribe {
            id,
            topic: "a.b".into(),
        })
        .await;
    assert!(matches!(reply, ServerMessage::Unsubscribed { .. }));
    // The freed slot and the no-longer-overlapping filter are usable.
    client.subscribe("a.*", None).await;
}

#[tokio::test]
async fn an_unsubscribed_connection_gets_nothing_more() {
    let broker = TestBroker::start().await;
    let mut subscriber = broker.client("s").await;
    subscriber.subscribe("t", None).await;
    subscriber.subscribe("other", None).await;
    let mut publisher = broker.client("p").await;
    publisher.publish("t", number(1)).await;
    assert_eq!(read_number(&subscriber.delivery().await.payload), 1);
    let id = subscriber.next_id();
    subscriber
        .request(ClientMessage::Unsubscribe {
            id,
            topic: "t".into(),
        })
        .await;
    publisher.publish("t", number(2)).await;
    publisher.publish("other", number(3)).await;
    // The next delivery is the one on "other": nothing on "t" came first.
    let next = subscriber.delivery().await;
    assert_eq!(
        (next.topic.as_str(), read_number(&next.payload)),
        ("other", 3)
    );
}

#[tokio::test]
async fn fire_and_forget_publishes_are_delivered_and_stored_without_a_reply() {
    let broker = TestBroker::start().await;
    let mut subscriber = broker.client("s").await;
    subscriber.subscribe("ff", None).await;
    let mut publisher = broker.client("p").await;
    for n in 0..10 {
        let id = publisher.next_id();
        publisher
            .send(&ClientMessage::Publish {
                id,
                topic: "ff".into(),
                payload: number(n),
                ack: false,
            })
            .await;
    }
    // The ping's pong is the first frame the publisher gets back.
    let id = publisher.next_id();
    publisher.send(&ClientMessage::Ping { id }).await;
    assert_eq!(publisher.recv().await, ServerMessage::Pong { id });
    for n in 0..10 {
        assert_eq!(subscriber.delivery().await.offset, n + 1);
    }
    assert_eq!(
        broker
            .broker
            .topic(&sockeye_protocol::TopicName::parse("ff", 255).unwrap())
            .await
            .unwrap()
            .unwrap()
            .stored_messages,
        10
    );
}

#[tokio::test]
async fn publishes_over_the_rate_limit_get_rate_limited_errors() {
    let broker = TestBroker::start_with(|config| {
        config.limits.publish_rate = 1;
        config.limits.publish_burst = 3;
    })
    .await;
    let mut client = broker.client("fast").await;
    let mut limited = 0;
    for n in 0..6 {
        let id = client.next_id();
        let reply = client
            .request(ClientMessage::Publish {
                id,
                topic: "r".into(),
                payload: number(n),
                ack: true,
            })
            .await;
        if let ServerMessage::Error { code, .. } = reply {
            assert_eq!(code, ErrorCode::RateLimited);
            limited += 1;
        }
    }
    assert!(
        limited >= 2,
        "at most burst + refill got through: {limited} limited"
    );
}

#[tokio::test]
async fn ephemeral_topics_deliver_live_without_offsets_or_positions() {
    let broker = TestBroker::start_with(|config| {
        config.retention.insert(
            0,
            sockeye_broker::config::RetentionRule {
                pattern: "live.>".into(),
                store: false,
                ..Default::default()
            },
        );
    })
    .await;
    let mut subscriber = broker.client("s").await;
    let subscribed = subscriber.subscribe("live.feed", None).await;
    assert!(!subscribed.stored);
    let mut publisher = broker.client("p").await;
    assert_eq!(publisher.publish("live.feed", number(5)).await, (0, 0));
    let delivery = subscriber.delivery().await;
    assert_eq!((delivery.epoch, delivery.offset), (0, 0));
    assert_eq!(read_number(&delivery.payload), 5);
    let id = subscriber.next_id();
    let reply = subscriber
        .request(ClientMessage::Subscribe {
            id,
            topic: "live.other".into(),
            position: Some(sockeye_protocol::Position::Oldest),
        })
        .await;
    assert_eq!(error_code(&reply), ErrorCode::PositionUnsupported);
}

/// The outbound byte budget comes back once each batch is written: a
/// subscriber that keeps up gets many times its budget without ever
/// counting as slow.
#[tokio::test]
async fn a_subscriber_that_keeps_up_gets_many_times_its_byte_budget() {
    let broker = TestBroker::start_with(|config| {
        config.limits.outbound_queue_bytes = bytesize::ByteSize::kib(1);
        config.retention = vec![RetentionRule {
            pattern: ">".into(),
            store: false,
            ..RetentionRule::default()
        }];
    })
    .await;
    let mut subscriber = broker.client("reader").await;
    subscriber.subscribe("budget", None).await;
    let mut publisher = broker.client("writer").await;
    // 300 deliveries of over 200 bytes: about 60 times the 1 KiB budget.
    let payload = [7u8; 200];
    for n in 0..300u64 {
        let mut data = n.to_be_bytes().to_vec();
        data.extend_from_slice(&payload);
        publisher.publish("budget", Payload::binary(&data)).await;
        let delivery = subscriber.delivery().await;
        let bytes = delivery.payload.as_binary().expect("a binary payload");
        assert_eq!(&bytes[..8], &n.to_be_bytes(), "delivery {n} in order");
    }
    let stats = broker.broker.stats();
    assert_eq!(Stats::get(&stats.slow_consumer_disconnects), 0);
    assert_eq!(Stats::get(&stats.slow_consumer_catch_ups), 0);
}
