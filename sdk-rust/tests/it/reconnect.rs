//! Reconnecting: a broker restart mid-stream, close codes, and the backoff
//! schedule as the driver applies it.

use std::time::Duration;

use sockeye_protocol::Payload;
use sockeye_sdk::{Backoff, Client, CloseReason, ConnectionState, Error};

use crate::next_message;
use sockeye_testkit::TestBroker;

fn quick_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(20), Duration::from_millis(500))
}

fn encode(n: u64) -> Payload {
    Payload::from_msgpack(rmp_serde::to_vec_named(&n).unwrap()).unwrap()
}

#[tokio::test]
async fn a_broker_restart_mid_stream_yields_a_contiguous_sequence() {
    let broker = TestBroker::start().await;
    let url = broker.url();
    let subscriber = Client::builder(&url)
        .token(broker.token("subscriber"))
        .backoff(quick_backoff())
        .connect()
        .await
        .unwrap();
    let publisher = Client::builder(&url)
        .token(broker.token("publisher"))
        .backoff(quick_backoff())
        .connect()
        .await
        .unwrap();
    let mut stream = subscriber.subscribe::<u64>("orders.eu").await.unwrap();
    let epoch = stream.info().epoch;
    for n in 1..=10 {
        publisher.publish("orders.eu", &n).await.unwrap();
    }
    for n in 1..=5 {
        assert_eq!(next_message(&mut stream).await.offset, n);
    }

    // Stop the broker while five delivered messages are still unread.
    let mut state = subscriber.state();
    let stopped = broker.stop().await;
    state
        .wait_for(|state| matches!(state, ConnectionState::Reconnecting { .. }))
        .await
        .unwrap();

    // Publish while the subscriber is away, before the new broker listens.
    let restarted = stopped.reopen().await;
    for n in 11..=20 {
        restarted
            .publish(
                &sockeye_protocol::TopicName::parse("orders.eu", 255).unwrap(),
                &encode(n),
                "publisher",
            )
            .await
            .unwrap();
    }
    let broker = stopped.serve_again(restarted).await;

    // The publisher reconnects too and publishes live.
    for n in 21..=30 {
        let stored = loop {
            match publisher.publish("orders.eu", &n).await {
                Ok(stored) => break stored,
                // It was sent over the old connection as that one closed; the
                // SDK does not resend, so the test does.
                Err(Error::ConnectionLost) => continue,
                Err(err) => panic!("publish failed: {err}"),
            }
        };
        assert_eq!(stored.epoch, epoch);
    }

    for n in 6..=30 {
        let message = next_message(&mut stream).await;
        assert_eq!(message.epoch, epoch, "the epoch survives a restart");
        assert_eq!(message.offset, n, "offsets are contiguous");
        assert_eq!(message.value, n);
    }
    drop(broker);
}

#[tokio::test]
async fn the_broker_going_away_makes_the_client_reconnect_and_resubscribe() {
    let broker = TestBroker::start().await;
    let client = Client::builder(broker.url())
        .token(broker.token("alice"))
        .backoff(quick_backoff())
        .connect()
        .await
        .unwrap();
    let mut live = client.subscribe::<String>("alerts.>").await.unwrap();
    let stopped = broker.stop().await;
    let reopened = stopped.reopen().await;
    let _broker = stopped.serve_again(reopened).await;
    // A wildcard subscription cannot be resumed: the client says so.
    match crate::next_event(&mut live).await {
        sockeye_sdk::Event::Interrupted => {}
        other => panic!("expected an interruption notice, got {other:?}"),
    }
    client.wait_connected().await.unwrap();
    client.publish("alerts.fire", "again").await.unwrap();
    assert_eq!(next_message(&mut live).await.value, "again");
}

#[tokio::test]
async fn reconnect_delays_follow_the_backoff_schedule_and_attempts_are_bounded() {
    // A port with nothing listening on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(40))
        .with_max_attempts(Some(6));
    let client = Client::builder(format!("ws://{addr}/ws"))
        .token("unused")
        .backoff(backoff.clone())
        .build()
        .unwrap();
    let mut state = client.state();
    let mut delays = Vec::new();
    let reason = loop {
        let current = state.borrow_and_update().clone();
        match current {
            ConnectionState::Reconnecting { attempt, delay, .. }
                if delays.last().map(|(seen, _)| *seen) != Some(attempt) =>
            {
                delays.push((attempt, delay));
            }
            ConnectionState::Closed { reason } => break reason,
            _ => {}
        }
        state.changed().await.unwrap();
    };
    match reason {
        CloseReason::GaveUp { attempts, .. } => assert_eq!(attempts, 6),
        other => panic!("expected to give up, got {other:?}"),
    }
    // A watch channel keeps only the latest state, so some may be skipped.
    assert!(
        (1..=5).contains(&delays.len()),
        "a delay before each retry: {delays:?}"
    );
    for (attempt, delay) in delays {
        assert!(
            delay <= backoff.ceiling(attempt),
            "attempt {attempt}: {delay:?} above {:?}",
            backoff.ceiling(attempt)
        );
    }
    assert!(matches!(
        client.publish("x", &1u8).await,
        Err(Error::Closed(CloseReason::GaveUp { .. }))
    ));
}

#[tokio::test]
async fn a_refused_token_closes_the_client_with_the_broker_answer() {
    let broker = TestBroker::start().await;
    let err = Client::connect(broker.url(), "not-a-jwt")
        .await
        .unwrap_err();
    match err {
        Error::Closed(CloseReason::HandshakeRejected { status, body }) => {
            assert_eq!(status, 401);
            assert!(body.contains("token_malformed"), "{body}");
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
}
