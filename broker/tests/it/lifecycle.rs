//! Connection lifecycle: heartbeats, token expiry and refresh, operator
//! disconnects, graceful shutdown.

use std::time::Duration;

use futures_util::StreamExt;
use sockeye_broker::Claims;
use sockeye_broker::auth::unix_now;
use sockeye_protocol::{ClientMessage, CloseCode, ErrorCode, ServerMessage};
use tokio_tungstenite::tungstenite::Message;

use sockeye_testkit::{Carrier, Client, TestBroker, WAIT};

#[tokio::test]
async fn a_silent_peer_is_closed_with_4004_and_a_live_one_is_not() {
    let broker = TestBroker::start_with(|config| {
        config.heartbeat.interval = Duration::from_millis(200);
        config.heartbeat.timeout = Duration::from_millis(700);
    })
    .await;
    let mut silent = broker.client("silent").await;
    let mut lively = broker.client("lively").await;
    // The lively client keeps reading, so its WebSocket library answers the
    // broker's pings; the silent one reads nothing for two seconds, so it
    // answers nothing.
    let reading = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, lively.ws.next()).await {
            if let Ok(Message::Close(frame)) = message {
                panic!("the lively client was closed: {frame:?}");
            }
        }
        lively
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut lively = reading.await.unwrap();
    let (code, _) = silent.closed().await;
    assert_eq!(code, CloseCode::HeartbeatTimeout.code());
    let id = lively.next_id();
    assert_eq!(
        lively.request(ClientMessage::Ping { id }).await,
        ServerMessage::Pong { id }
    );
}

fn short_token(broker: &TestBroker, sub: &str, seconds: u64) -> String {
    broker.token_with(Claims {
        sub: sub.into(),
        exp: Some(unix_now() + seconds),
        ..Claims::default()
    })
}

#[tokio::test]
async fn an_unrefreshed_token_warns_then_closes_with_4000() {
    let broker = TestBroker::start_with(|config| {
        config.auth.leeway = Duration::ZERO;
        config.auth.expiry_warning = Duration::from_secs(1);
    })
    .await;
    let mut client = Client::connect(
        &broker.url(),
        Carrier::Header,
        &short_token(&broker, "e", 2),
    )
    .await
    .unwrap();
    match client.recv().await {
        ServerMessage::TokenExpiring { expires_at } => {
            assert_eq!(Some(expires_at), client.welcome.token_expires_at);
        }
        other => panic!("expected token_expiring, got {other:?}"),
    }
    let (code, _) = client.closed().await;
    assert_eq!(code, CloseCode::TokenExpired.code());
}

#[tokio::test]
async fn a_refresh_extends_the_session_past_the_first_expiry() {
    let broker = TestBroker::start_with(|config| {
        config.auth.leeway = Duration::ZERO;
        config.auth.expiry_warning = Duration::from_secs(1);
    })
    .await;
    let mut client = Client::connect(
        &broker.url(),
        Carrier::Header,
        &short_token(&broker, "r", 2),
    )
    .await
    .unwrap();
    assert!(matches!(
        client.recv().await,
        ServerMessage::TokenExpiring { .. }
    ));
    // A token for someone else is refused and changes nothing.
    let id = client.next_id();
    let reply = client
        .request(ClientMessage::Refresh {
            id,
            token: short_token(&broker, "mallory", 60),
        })
        .await;
    assert!(matches!(
        reply,
        ServerMessage::Error {
            code: ErrorCode::SubjectMismatch,
            ..
        }
    ));
    let id = client.next_id();
    let reply = client
        .request(ClientMessage::Refresh {
            id,
            token: "garbage".into(),
        })
        .await;
    assert!(matches!(
        reply,
        ServerMessage::Error {
            code: ErrorCode::InvalidToken,
            ..
        }
    ));
    let id = client.next_id();
    let new_exp = unix_now() + 60;
    let reply = client
        .request(ClientMessage::Refresh {
            id,
            token: short_token(&broker, "r", 60),
        })
        .await;
    assert_eq!(
        reply,
        ServerMessage::Refreshed {
            id,
            expires_at: Some(new_exp * 1000)
        }
    );
    // Well past the first expiry the connection still works.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let id = client.next_id();
    assert_eq!(
        client.request(ClientMessage::Ping { id }).await,
        ServerMessage::Pong { id }
    );
}

#[tokio::test]
async fn an_operator_disconnect_closes_with_4001() {
    let broker = TestBroker::start().await;
    let mut client = broker.client("victim").await;
    let id = client.welcome.connection_id;
    assert!(broker.broker.disconnect(
        sockeye_broker::ConnId(id),
        CloseCode::Kicked,
        "kicked by test"
    ));
    let (code, reason) = client.closed().await;
    assert_eq!((code, reason.as_str()), (4001, "kicked by test"));
    // Its slot is released.
    for _ in 0..100 {
        if broker.broker.connection_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(broker.broker.connection_count(), 0);
}

#[tokio::test]
async fn graceful_shutdown_closes_every_client_with_1001_and_a_spread_retry_hint() {
    let broker = TestBroker::start().await;
    let mut clients = Vec::new();
    for index in 0..20 {
        clients.push(broker.client(&format!("c{index}")).await);
    }
    let stopping = tokio::spawn(broker.stop());
    let mut hints = Vec::new();
    for client in &mut clients {
        let (code, reason) = client.closed().await;
        assert_eq!(code, 1001);
        let hint: u64 = reason
            .strip_prefix("retry_after_ms=")
            .unwrap_or_else(|| panic!("no retry hint in {reason:?}"))
            .parse()
            .unwrap();
        assert!(hint <= 500, "the hint stays within the configured spread");
        hints.push(hint);
    }
    hints.sort_unstable();
    hints.dedup();
    assert!(
        hints.len() > 1,
        "hints are spread, not all equal: {hints:?}"
    );
    tokio::time::timeout(WAIT, stopping).await.unwrap().unwrap();
}
