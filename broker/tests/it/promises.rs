//! Behaviour the docs spell out at its edges, held to what they say: a
//! token inside the leeway, a token shorter than the expiry warning, what
//! `publish_burst` allows, and which config key each `welcome.limits` entry
//! comes from (the table in docs/protocol.md).

use std::time::Duration;

use bytesize::ByteSize;
use sockeye_broker::Claims;
use sockeye_broker::auth::unix_now;
use sockeye_protocol::{ClientMessage, CloseCode, ErrorCode, ServerMessage};

use sockeye_testkit::{Carrier, Client, TestBroker, number};

fn token_expiring_in(broker: &TestBroker, seconds: i64) -> String {
    broker.token_with(Claims {
        sub: "edge".into(),
        exp: Some(unix_now().saturating_add_signed(seconds)),
        ..Claims::default()
    })
}

#[tokio::test]
async fn a_token_inside_the_leeway_is_welcomed_then_closed_with_4000_at_once() {
    let broker = TestBroker::start_with(|config| {
        config.auth.leeway = Duration::from_secs(30);
    })
    .await;
    // Expired 10 s ago: within the 30 s leeway, so the handshake passes...
    let mut client = Client::connect(
        &broker.url(),
        Carrier::Header,
        &token_expiring_in(&broker, -10),
    )
    .await
    .expect("the handshake accepts a token inside the leeway");
    // ...but a live connection ends at `exp` itself: the next frame is the
    // close, with no `token_expiring` before it.
    let (code, _) = client.closed().await;
    assert_eq!(code, CloseCode::TokenExpired.code());
    // Past the leeway the handshake refuses it.
    let refused = Client::connect(
        &broker.url(),
        Carrier::Header,
        &token_expiring_in(&broker, -40),
    )
    .await
    .expect_err("refused");
    assert_eq!(refused.body["code"], "token_expired");
}

#[tokio::test]
async fn a_token_shorter_than_the_expiry_warning_is_warned_at_once() {
    let broker = TestBroker::start_with(|config| {
        config.auth.expiry_warning = Duration::from_secs(30);
    })
    .await;
    let mut client = Client::connect(
        &broker.url(),
        Carrier::Header,
        &token_expiring_in(&broker, 10),
    )
    .await
    .unwrap();
    // The first frame after `welcome`, without waiting for anything.
    match client.recv().await {
        ServerMessage::TokenExpiring { expires_at } => {
            assert_eq!(Some(expires_at), client.welcome.token_expires_at);
        }
        other => panic!("expected token_expiring first, got {other:?}"),
    }
}

#[tokio::test]
async fn publish_burst_is_the_whole_allowance_not_an_extra_above_the_rate() {
    let broker = TestBroker::start_with(|config| {
        config.limits.publish_rate = 1;
        config.limits.publish_burst = 5;
    })
    .await;
    let mut client = broker.client("burst").await;
    // Eight publishes at once (pipelined, then the replies): the broker
    // handles them within microseconds, far less than the one second a
    // token takes to come back.
    for id in 1..=8 {
        client
            .send(&ClientMessage::Publish {
                id,
                topic: "burst".into(),
                payload: number(id),
                ack: true,
            })
            .await;
    }
    let mut accepted = Vec::new();
    for _ in 1..=8 {
        match client.recv().await {
            ServerMessage::Published { id, .. } => accepted.push(id),
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(accepted, [1, 2, 3, 4, 5], "publish_burst = 5 in all");
}

/// The rows of the table under `welcome`'s limits in docs/protocol.md:
/// `(welcome.limits name, config key)`.
fn documented_limit_keys() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    let spec = std::fs::read_to_string(path).unwrap();
    let start = spec
        .find("| `limits` entry | Config key |")
        .expect("docs/protocol.md has the limits table");
    spec[start..]
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            (
                cells[1].trim_matches('`').to_owned(),
                cells[2].trim_matches('`').to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn every_welcome_limit_comes_from_the_config_key_the_spec_names() {
    let broker = TestBroker::start_with(|config| {
        config.limits.max_frame_size = ByteSize::b(70_001);
        config.limits.max_inflated_size = ByteSize::b(70_002);
        config.websocket.compression_threshold = ByteSize::b(70_003);
        config.limits.max_topic_length = 204;
        config.limits.max_subscriptions = 70_005;
        config.limits.publish_rate = 70_006;
        config.limits.publish_burst = 70_007;
    })
    .await;
    let client = broker.client("limits").await;
    let limits = &client.welcome.limits;
    let announced = [
        ("max_frame_bytes", limits.max_frame_bytes),
        ("max_inflated_bytes", limits.max_inflated_bytes),
        (
            "compression_threshold_bytes",
            limits.compression_threshold_bytes,
        ),
        ("max_topic_bytes", limits.max_topic_bytes),
        ("max_subscriptions", limits.max_subscriptions),
        ("publish_rate_per_sec", limits.publish_rate_per_sec),
        ("publish_burst", limits.publish_burst),
    ];
    let configured = [
        ("limits.max_frame_size", 70_001),
        ("limits.max_inflated_size", 70_002),
        ("websocket.compression_threshold", 70_003),
        ("limits.max_topic_length", 204),
        ("limits.max_subscriptions", 70_005),
        ("limits.publish_rate", 70_006),
        ("limits.publish_burst", 70_007),
    ];
    let table = documented_limit_keys();
    assert_eq!(table.len(), announced.len(), "one row per entry: {table:?}");
    for (name, value) in announced {
        let (_, key) = table
            .iter()
            .find(|(entry, _)| entry == name)
            .unwrap_or_else(|| panic!("no row for `{name}`: {table:?}"));
        let (_, set) = configured
            .iter()
            .find(|(configured, _)| configured == key)
            .unwrap_or_else(|| panic!("`{name}` is documented as `{key}`, not a limit key"));
        assert_eq!(value, *set, "`{name}` comes from `{key}`");
    }
}
