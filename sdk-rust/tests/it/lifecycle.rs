//! Connection state, graceful close, and subscriptions ending.

use futures_util::StreamExt;
use sockeye_sdk::{Client, CloseReason, ConnectionState, Error};

use sockeye_testkit::TestBroker;

#[tokio::test]
async fn close_ends_streams_and_later_requests_fail_with_the_reason() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.url(), broker.token("alice"))
        .await
        .unwrap();
    assert!(matches!(
        &*client.state().borrow(),
        ConnectionState::Connected { subject, .. } if subject == "alice"
    ));
    let mut sub = client.subscribe::<u8>("closing").await.unwrap();
    let other_handle = client.clone();
    client.close().await;
    assert_eq!(
        *other_handle.state().borrow(),
        ConnectionState::Closed {
            reason: CloseReason::ClientClosed
        }
    );
    assert!(sub.next().await.is_none(), "the stream ends");
    assert!(matches!(
        other_handle.publish("closing", &1u8).await,
        Err(Error::Closed(CloseReason::ClientClosed))
    ));
    // The broker saw a normal close and released the connection.
    let mut polls = 0;
    while broker.broker.connection_count() > 0 && polls < 600 {
        polls += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(broker.broker.connection_count(), 0);
}

#[tokio::test]
async fn dropping_a_subscription_unsubscribes_on_the_broker() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.url(), broker.token("alice"))
        .await
        .unwrap();
    let sub = client.subscribe::<u8>("dropped.topic").await.unwrap();
    assert_eq!(broker.broker.subscription_counts().0, 1);
    drop(sub);
    // A request after the drop is answered after the unsubscribe was read.
    client.publish("dropped.other", &1u8).await.unwrap();
    assert_eq!(broker.broker.subscription_counts().0, 0);
}

#[tokio::test]
async fn requests_wait_for_the_connection_while_the_client_connects() {
    let broker = TestBroker::start().await;
    let client = Client::builder(broker.url())
        .token(broker.token("alice"))
        .build()
        .unwrap();
    // No wait for the connection: the request is queued until it is up.
    let stored = client.publish("early", &1u8).await.unwrap();
    assert_eq!(stored.offset, 1);
}

fn connection_id(client: &Client) -> sockeye_broker::ConnId {
    match &*client.state().borrow() {
        ConnectionState::Connected { connection_id, .. } => sockeye_broker::ConnId(*connection_id),
        other => panic!("not connected: {other:?}"),
    }
}

#[tokio::test]
async fn a_kicked_client_comes_back_and_its_subscription_resumes() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.url(), broker.token("alice"))
        .await
        .unwrap();
    let mut sub = client.subscribe::<u64>("kick.me").await.unwrap();
    client.publish("kick.me", &1u64).await.unwrap();
    let first = connection_id(&client);
    let mut state = client.state();
    state.mark_unchanged();
    assert!(
        broker
            .broker
            .disconnect(first, sockeye_protocol::CloseCode::Kicked, "maintenance")
    );
    state
        .wait_for(|state| matches!(state, ConnectionState::Reconnecting { cause, .. } if cause.contains("4001")))
        .await
        .unwrap();
    client.wait_connected().await.unwrap();
    assert_ne!(connection_id(&client), first);
    client.publish("kick.me", &2u64).await.unwrap();
    assert_eq!(crate::next_message(&mut sub).await.value, 1);
    assert_eq!(crate::next_message(&mut sub).await.value, 2);
    // The handshake named the SDK.
    let peer = broker.broker.connection(connection_id(&client)).unwrap();
    assert!(
        peer.user_agent
            .as_deref()
            .unwrap()
            .starts_with("sockeye-sdk-rust/"),
        "{:?}",
        peer.user_agent
    );
}

#[tokio::test]
async fn a_close_code_that_forbids_reconnecting_closes_the_client() {
    let broker = TestBroker::start().await;
    let client = Client::connect(broker.url(), broker.token("alice"))
        .await
        .unwrap();
    let id = connection_id(&client);
    broker
        .broker
        .disconnect(id, sockeye_protocol::CloseCode::PolicyViolation, "go away");
    let mut state = client.state();
    let closed = state
        .wait_for(|state| matches!(state, ConnectionState::Closed { .. }))
        .await
        .unwrap()
        .clone();
    assert_eq!(
        closed,
        ConnectionState::Closed {
            reason: CloseReason::Broker {
                code: 1008,
                reason: "go away".into()
            }
        }
    );
}

#[tokio::test]
async fn builder_mistakes_are_reported_before_connecting() {
    assert!(matches!(
        Client::builder("http://127.0.0.1:1/ws").token("t").build(),
        Err(Error::InvalidUrl { .. })
    ));
    assert!(matches!(
        Client::builder("wss://127.0.0.1:1/ws").token("t").build(),
        Err(Error::InvalidUrl { .. })
    ));
    // A ws:// URL that does not parse, or has no host, fails at build too.
    for unparseable in ["ws://127.0.0.1:1/has space", "ws://", "ws:///ws"] {
        match Client::builder(unparseable).token("t").build() {
            Err(Error::InvalidUrl { url, reason }) => {
                assert_eq!(url, unparseable);
                assert!(!reason.is_empty());
            }
            other => panic!("{unparseable}: expected InvalidUrl, got {other:?}"),
        }
    }
    assert!(matches!(
        Client::builder("ws://127.0.0.1:1/ws").build(),
        Err(Error::NoToken)
    ));
}
