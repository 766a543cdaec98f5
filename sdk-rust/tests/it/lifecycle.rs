//! Connection state, graceful close, and subscriptions ending.

use futures_util::StreamExt;
use sockeye_sdk::{Client, CloseReason, ConnectionState, Error};

use crate::support::TestBroker;

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
    assert_eq!(broker.broker.topics().subscriptions(), 1);
    drop(sub);
    // A request after the drop is answered after the unsubscribe was read.
    client.publish("dropped.other", &1u8).await.unwrap();
    assert_eq!(broker.broker.topics().subscriptions(), 0);
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
