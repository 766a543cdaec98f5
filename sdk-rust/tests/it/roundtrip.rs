//! Typed publish and subscribe, raw payloads, and request errors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sockeye_sdk::{Client, Error, ErrorCode, Event, Payload, Position, SubscribeOptions};

use crate::{next_event, next_message};
use sockeye_testkit::TestBroker;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Side {
    Buy,
    Sell { reason: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    symbol: String,
    quantity: i32,
    price: f64,
    side: Side,
    tags: Vec<String>,
    note: Option<String>,
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
    attributes: BTreeMap<String, u32>,
}

fn order(id: u64) -> Order {
    Order {
        id,
        symbol: "SOCK".into(),
        quantity: -7,
        price: 12.5,
        side: if id.is_multiple_of(2) {
            Side::Buy
        } else {
            Side::Sell {
                reason: "rebalance".into(),
            }
        },
        tags: vec!["a".into(), "ünïcødé".into()],
        note: id.is_multiple_of(3).then(|| "every third".into()),
        signature: vec![0, 1, 2, 255],
        attributes: BTreeMap::from([("x".into(), 1), ("y".into(), u32::MAX)]),
    }
}

#[tokio::test]
async fn typed_values_arrive_as_published_with_their_metadata() {
    let broker = TestBroker::start().await;
    let alice = Client::connect(broker.url(), broker.token("alice"))
        .await
        .unwrap();
    let bob = Client::connect(broker.url(), broker.token("bob"))
        .await
        .unwrap();
    let mut orders = bob.subscribe::<Order>("orders.eu").await.unwrap();
    assert!(orders.info().stored);
    for id in 1..=5 {
        let stored = alice.publish("orders.eu", &order(id)).await.unwrap();
        assert_eq!(stored.offset, id);
    }
    for id in 1..=5 {
        let message = next_message(&mut orders).await;
        assert_eq!(message.value, order(id));
        assert_eq!(message.topic, "orders.eu");
        assert_eq!(message.offset, id);
        assert_eq!(message.epoch, orders.info().epoch);
        assert_eq!(message.publisher, "alice");
        assert!(message.timestamp_ms > 1_600_000_000_000);
    }
}

#[tokio::test]
async fn payloads_are_maps_with_field_names_and_raw_bytes_round_trip() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.url(), broker.token("alice"))
        .await
        .unwrap();
    let mut raw = client
        .subscribe_raw("raw.things", SubscribeOptions::new())
        .await
        .unwrap();
    client.publish("raw.things", &order(1)).await.unwrap();
    client
        .publish_raw("raw.things", Payload::binary(b"\x00\x01binary"))
        .await
        .unwrap();
    let first = next_message(&mut raw).await.value;
    // A fixmap whose first key is the field name "id": readable from any
    // language, not a positional array only Rust understands.
    assert_eq!(first.as_msgpack()[0] & 0xf0, 0x80);
    assert_eq!(&first.as_msgpack()[1..4], b"\xa2id");
    let second = next_message(&mut raw).await.value;
    assert_eq!(second.as_binary(), Some(&b"\x00\x01binary"[..]));
}

#[tokio::test]
async fn a_payload_of_another_type_is_an_error_and_the_stream_goes_on() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.url(), broker.token("alice"))
        .await
        .unwrap();
    let mut numbers = client.subscribe::<u64>("numbers").await.unwrap();
    client.publish("numbers", "not a number").await.unwrap();
    client.publish("numbers", &42u64).await.unwrap();
    match futures_util::StreamExt::next(&mut numbers).await {
        Some(Err(Error::Decode { topic, offset, .. })) => {
            assert_eq!(topic, "numbers");
            assert_eq!(offset, 1);
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    let message = next_message(&mut numbers).await;
    assert_eq!((message.offset, message.value), (2, 42));
}

#[tokio::test]
async fn positions_replay_history_before_live_messages() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.url(), broker.token("alice"))
        .await
        .unwrap();
    for n in 1..=10u64 {
        client.publish("history", &n).await.unwrap();
    }
    let options = SubscribeOptions::new().position(Position::Last { count: 3 });
    let mut last = client
        .subscribe_with::<u64>("history", options)
        .await
        .unwrap();
    assert_eq!(last.info().next_offset, 8);
    assert!(last.info().complete);
    client.publish("history", &11u64).await.unwrap();
    for expected in 8..=11 {
        let message = next_message(&mut last).await;
        assert_eq!((message.offset, message.value), (expected, expected));
    }
    drop(last);

    let epoch = {
        let probe = client.subscribe::<u64>("history").await.unwrap();
        probe.info().epoch
    };
    let options = SubscribeOptions::new().position(Position::After { epoch, offset: 9 });
    let mut after = client
        .subscribe_with::<u64>("history", options)
        .await
        .unwrap();
    assert_eq!(after.info().next_offset, 10);
    assert_eq!(next_message(&mut after).await.offset, 10);
    assert_eq!(next_message(&mut after).await.offset, 11);
}

#[tokio::test]
async fn resuming_from_a_stale_epoch_yields_an_explicit_event() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.url(), broker.token("alice"))
        .await
        .unwrap();
    client.publish("epochs", &1u64).await.unwrap();
    let options = SubscribeOptions::new().position(Position::After {
        epoch: 999_999,
        offset: 5,
    });
    let mut sub = client
        .subscribe_with::<u64>("epochs", options)
        .await
        .unwrap();
    assert!(sub.info().epoch_changed);
    match next_event(&mut sub).await {
        Event::EpochChanged {
            topic,
            epoch,
            next_offset,
        } => {
            assert_eq!(topic, "epochs");
            assert_eq!(epoch, sub.info().epoch);
            assert_eq!(next_offset, 1);
        }
        other => panic!("expected an epoch change, got {other:?}"),
    }
    assert_eq!(next_message(&mut sub).await.value, 1);
}

#[tokio::test]
async fn overlapping_filters_are_a_typed_error_until_the_other_is_dropped() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.url(), broker.token("alice"))
        .await
        .unwrap();
    let wide = client.subscribe::<String>("chat.>").await.unwrap();
    match client.subscribe::<String>("chat.lobby").await {
        Err(Error::SubscriptionOverlaps { filter, message }) => {
            assert_eq!(filter, "chat.lobby");
            assert!(message.contains("chat.>"), "{message}");
        }
        other => panic!("expected an overlap error, got {other:?}"),
    }
    drop(wide);
    let mut narrow = client.subscribe::<String>("chat.lobby").await.unwrap();
    client.publish("chat.lobby", "hi").await.unwrap();
    assert_eq!(next_message(&mut narrow).await.value, "hi");
}

#[tokio::test]
async fn refused_requests_carry_the_broker_error_code() {
    let broker = TestBroker::start().await;
    let token = broker.token_with(sockeye_broker::Claims {
        sub: "reader".into(),
        exp: Some(sockeye_broker::auth::unix_now() + 3600),
        publish: Some(vec!["public.>".into()]),
        subscribe: Some(vec!["public.>".into()]),
        ..Default::default()
    });
    let client = Client::connect(broker.url(), token).await.unwrap();
    let denied = client.publish("private.x", &1u8).await.unwrap_err();
    assert_eq!(denied.code(), Some(ErrorCode::Forbidden));
    let denied = client.subscribe::<u8>("private.>").await.unwrap_err();
    assert_eq!(denied.code(), Some(ErrorCode::Forbidden));
    let wildcard_position = client
        .subscribe_with::<u8>(
            "public.*",
            SubscribeOptions::new().position(Position::Oldest),
        )
        .await
        .unwrap_err();
    assert_eq!(
        wildcard_position.code(),
        Some(ErrorCode::PositionUnsupported)
    );
    // Invalid names are refused before anything is sent.
    assert!(matches!(
        client.publish("bad topic", &1u8).await,
        Err(Error::InvalidTopic { .. })
    ));
    assert!(matches!(
        client.subscribe::<u8>("ord*").await,
        Err(Error::InvalidTopic { .. })
    ));
    // The connection is still fine.
    assert_eq!(client.publish("public.x", &1u8).await.unwrap().offset, 1);
}

#[tokio::test]
async fn wildcard_subscriptions_deliver_every_matching_topic() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.url(), broker.token("alice"))
        .await
        .unwrap();
    let mut all = client.subscribe::<String>("sensors.*.temp").await.unwrap();
    assert!(!all.info().stored);
    client.publish("sensors.a.temp", "a").await.unwrap();
    client.publish("sensors.a.humidity", "skip").await.unwrap();
    client.publish("sensors.b.temp", "b").await.unwrap();
    let first = next_message(&mut all).await;
    let second = next_message(&mut all).await;
    assert_eq!(
        (first.topic.as_str(), first.value.as_str()),
        ("sensors.a.temp", "a")
    );
    assert_eq!(
        (second.topic.as_str(), second.value.as_str()),
        ("sensors.b.temp", "b")
    );
}

#[tokio::test]
async fn fire_and_forget_publishes_are_delivered() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.url(), broker.token("alice"))
        .await
        .unwrap();
    let mut sub = client.subscribe::<u32>("fast").await.unwrap();
    for n in 0..100u32 {
        client.publish_unacked("fast", &n).await.unwrap();
    }
    for n in 0..100u32 {
        assert_eq!(next_message(&mut sub).await.value, n);
    }
}
