//! Wildcard subscriptions under hostile load: the caps on what one token can
//! subscribe, a healthy client's round trips during a flood, and one
//! slow-consumer event per connection closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sockeye_broker::Stats;
use sockeye_broker::config::RetentionRule;
use sockeye_protocol::{ClientMessage, ErrorCode, Payload, ServerMessage};

use sockeye_testkit::{Client, TestBroker, WAIT, number, read_number};

/// Segments of the flood's name that may be `*`; every filter has one more,
/// a literal that keeps one connection's filters from overlapping.
const SEGMENTS: usize = 14;

/// Literal segment `index` of the flood's name.
fn literal(index: usize) -> String {
    format!("s{index}")
}

/// The flood's filter for `combination` (bit `i`: `*` in segment `i`),
/// ending in the literal `t<slot>`.
fn flood_filter(combination: u64, slot: u64) -> String {
    let mut segments: Vec<String> = (0..SEGMENTS)
        .map(|index| {
            if combination >> index & 1 == 1 {
                "*".to_owned()
            } else {
                literal(index)
            }
        })
        .collect();
    segments.push(format!("t{slot}"));
    segments.join(".")
}

/// A topic every flood filter matches up to its last segment.
fn near_miss(last: &str) -> String {
    let mut segments: Vec<String> = (0..SEGMENTS).map(literal).collect();
    segments.push(last.to_owned());
    segments.join(".")
}

fn ephemeral_everything(config: &mut sockeye_broker::Config) {
    config.retention = vec![RetentionRule {
        pattern: ">".into(),
        store: false,
        ..RetentionRule::default()
    }];
}

fn error_code(reply: &ServerMessage) -> ErrorCode {
    match reply {
        ServerMessage::Error { code, .. } => *code,
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn ask(client: &mut Client, filter: &str) -> ServerMessage {
    let id = client.next_id();
    client
        .request(ClientMessage::Subscribe {
            id,
            topic: filter.into(),
            position: None,
        })
        .await
}

/// What a flood connection's subscribes got.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    subscribed: u64,
    invalid_topic: u64,
    too_many: u64,
}

/// Sends every subscribe at once, then reads every reply.
async fn subscribe_all(client: &mut Client, filters: &[String]) -> Tally {
    let first = client.next_id();
    for (n, filter) in filters.iter().enumerate() {
        client
            .send(&ClientMessage::Subscribe {
                id: first + n as u64,
                topic: filter.clone(),
                position: None,
            })
            .await;
    }
    let mut tally = Tally::default();
    for _ in filters {
        match client.recv().await {
            ServerMessage::Subscribed(_) => tally.subscribed += 1,
            ServerMessage::Error {
                code: ErrorCode::InvalidTopic,
                ..
            } => tally.invalid_topic += 1,
            ServerMessage::Error {
                code: ErrorCode::TooManySubscriptions,
                ..
            } => tally.too_many += 1,
            other => panic!("unexpected reply to a flood subscribe: {other:?}"),
        }
    }
    // Request ids only grow: skip the ones used here.
    for _ in 1..filters.len() {
        client.next_id();
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_flood_is_capped_and_a_healthy_client_keeps_its_round_trips() {
    // The reported attack: one token, 64 connections x 256 filters covering
    // all 2^14 literal/`*` combinations of a 14-segment name; then the
    // attacker keeps publishing to topics that match none of them. The
    // broker runs with its default limits, every topic live only.
    let broker = TestBroker::start_with(ephemeral_everything).await;
    let limits = &broker.broker.config().limits;
    assert_eq!(
        (
            limits.max_wildcard_subscriptions,
            limits.max_wildcard_subscriptions_per_subject,
            limits.max_filter_wildcards,
        ),
        (64, 256, 4),
        "the defaults this test is written for"
    );
    let connections = 64u64;
    let per_connection = 256u64;
    let mut attackers = Vec::new();
    let mut setups = tokio::task::JoinSet::new();
    for connection in 0..connections {
        let mut client = broker.client("attacker").await;
        let filters: Vec<String> = (0..per_connection)
            .map(|slot| flood_filter(connection * per_connection + slot, slot))
            .collect();
        setups.spawn(async move {
            let tally = subscribe_all(&mut client, &filters).await;
            (client, tally)
        });
    }
    let mut total = Tally::default();
    while let Some(joined) = setups.join_next().await {
        let (client, tally) = joined.unwrap();
        total.subscribed += tally.subscribed;
        total.invalid_topic += tally.invalid_topic;
        total.too_many += tally.too_many;
        attackers.push(client);
    }
    // Filters with more than 4 `*` are refused by shape; of the 1,470
    // wildcard filters with at most 4, the token gets its 256 and no more;
    // combination 0 is an exact topic, not a wildcard.
    let shaped_ok = (0..=4u64)
        .map(|stars| binomial(SEGMENTS as u64, stars))
        .sum::<u64>();
    assert_eq!(shaped_ok, 1471);
    assert_eq!(
        total,
        Tally {
            subscribed: 256 + 1,
            invalid_topic: connections * per_connection - shaped_ok,
            too_many: shaped_ok - 1 - 256,
        }
    );
    assert_eq!(broker.broker.subscription_counts().1, 256);

    // The attacker's connections keep publishing, acked one at a time, to
    // distinct topics that every accepted filter walks and none matches.
    let stop = Arc::new(AtomicBool::new(false));
    let mut flooders = tokio::task::JoinSet::new();
    for (index, mut client) in attackers.into_iter().enumerate() {
        let stop = Arc::clone(&stop);
        flooders.spawn(async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) && sent < 5_000 {
                client
                    .publish(&near_miss(&format!("x{index}-{sent}")), number(sent))
                    .await;
                sent += 1;
            }
            sent
        });
    }

    // A healthy client: every round trip is bounded, generously (a hang
    // detector, not a speed test: before the caps, each publish walked
    // 32,768 trie nodes and a round trip took seconds under this load).
    let mut healthy = broker.client("healthy").await;
    let topic = near_miss("healthy");
    healthy.subscribe(&topic, None).await;
    for n in 0..100 {
        let id = healthy.next_id();
        healthy
            .send(&ClientMessage::Publish {
                id,
                topic: topic.clone(),
                payload: number(n),
                ack: false,
            })
            .await;
        let delivery = tokio::time::timeout(Duration::from_millis(250), healthy.delivery())
            .await
            .unwrap_or_else(|_| panic!("round trip {n} took over 250 ms"));
        assert_eq!(read_number(&delivery.payload), n);
    }
    stop.store(true, Ordering::Relaxed);
    let mut flooded = 0;
    while let Some(sent) = flooders.join_next().await {
        flooded += sent.unwrap();
    }
    assert!(flooded >= 64, "every attacker published during the check");
}

fn binomial(n: u64, k: u64) -> u64 {
    (0..k).fold(1, |acc, i| acc * (n - i) / (i + 1))
}

#[tokio::test]
async fn each_wildcard_cap_is_refused_with_its_documented_code_and_frees_on_unsubscribe() {
    let broker = TestBroker::start_with(|config| {
        config.limits.max_wildcard_subscriptions = 2;
        config.limits.max_wildcard_subscriptions_per_subject = 3;
        config.limits.max_wildcard_subscriptions_total = 4;
        config.limits.max_filter_wildcards = 2;
        config.limits.max_wildcard_filter_segments = 5;
    })
    .await;
    let mut alice = broker.client("alice").await;
    // Shape: too many `*`, too many segments; exact filters are not capped.
    let reply = ask(&mut alice, "*.*.*").await;
    assert_eq!(error_code(&reply), ErrorCode::InvalidTopic);
    let ServerMessage::Error { message, .. } = &reply else {
        unreachable!()
    };
    assert!(message.contains("at most 2"), "{message}");
    assert_eq!(
        error_code(&ask(&mut alice, "a.b.c.d.e.>").await),
        ErrorCode::InvalidTopic
    );
    alice.subscribe("a.b.c.d.e.f.g", None).await;
    // Per connection.
    alice.subscribe("one.*", None).await;
    alice.subscribe("two.*.>", None).await;
    assert_eq!(
        error_code(&ask(&mut alice, "three.*").await),
        ErrorCode::TooManySubscriptions
    );
    // Per subject, across connections of the same `sub`.
    let mut alice_again = broker.client("alice").await;
    alice_again.subscribe("three.*", None).await;
    let reply = ask(&mut alice_again, "four.*").await;
    assert_eq!(error_code(&reply), ErrorCode::TooManySubscriptions);
    // Broker-wide.
    let mut bob = broker.client("bob").await;
    bob.subscribe("five.*", None).await;
    assert_eq!(
        error_code(&ask(&mut bob, "six.*").await),
        ErrorCode::TooManySubscriptions
    );
    assert_eq!(broker.broker.subscription_counts().1, 4);
    // Unsubscribing frees the slot for the subject and the broker; a closed
    // connection frees its own.
    let id = alice.next_id();
    let reply = alice
        .request(ClientMessage::Unsubscribe {
            id,
            topic: "one.*".into(),
        })
        .await;
    assert!(matches!(reply, ServerMessage::Unsubscribed { .. }));
    bob.subscribe("six.*", None).await;
    drop(alice_again);
    let freed = tokio::time::timeout(WAIT, async {
        while broker.broker.subscription_counts().1 > 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(freed.is_ok(), "the closed connection's filter was released");
    alice.subscribe("four.*", None).await;
    // Deliveries still follow the index after all that churn.
    let mut publisher = broker.client("p").await;
    publisher.publish("four.x", number(7)).await;
    assert_eq!(read_number(&alice.delivery().await.payload), 7);
}

#[tokio::test]
async fn a_slow_subscriber_is_one_slow_consumer_event_however_many_messages_find_it_full() {
    let broker = TestBroker::start_with(|config| {
        ephemeral_everything(config);
        config.limits.outbound_queue = 4;
    })
    .await;
    // Never reads: a wildcard and an exact subscription, both live only, so
    // both close it with 4002 when its queue is full.
    let mut slow = broker.client("slow").await;
    slow.subscribe("flood.*", None).await;
    slow.subscribe("plain", None).await;
    let mut publisher = broker.client("p").await;
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut payload = || {
        // Incompressible 4 KiB, so the socket buffers fill quickly.
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        Payload::binary(&data)
    };
    let stats = Arc::clone(broker.broker.stats());
    let mut sent = 0u64;
    let mut publish_batch = async |publisher: &mut Client, count: u64| {
        for _ in 0..count {
            let topic = if sent.is_multiple_of(2) {
                "flood.a"
            } else {
                "plain"
            };
            let id = publisher.next_id();
            publisher
                .send(&ClientMessage::Publish {
                    id,
                    topic: topic.into(),
                    payload: payload(),
                    ack: false,
                })
                .await;
            sent += 1;
        }
        let id = publisher.next_id();
        assert_eq!(
            publisher.request(ClientMessage::Ping { id }).await,
            ServerMessage::Pong { id }
        );
    };
    let detected = tokio::time::timeout(WAIT, async {
        while Stats::get(&stats.slow_consumer_disconnects) == 0 {
            publish_batch(&mut publisher, 200).await;
        }
    })
    .await;
    assert!(detected.is_ok(), "the subscriber was found slow");
    // More messages while it closes: each finds it full, none counts again.
    publish_batch(&mut publisher, 1000).await;
    let gone = tokio::time::timeout(WAIT, async {
        while broker.broker.connection_count() > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the slow connection was closed");
    publish_batch(&mut publisher, 100).await;
    assert_eq!(Stats::get(&stats.slow_consumer_disconnects), 1);
    assert_eq!(broker.broker.subscription_counts().1, 0);
}
