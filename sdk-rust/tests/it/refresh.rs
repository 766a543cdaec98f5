//! Token refresh in-band, and what happens without it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sockeye_broker::Claims;
use sockeye_broker::auth::unix_now;
use sockeye_sdk::{Client, CloseReason, ConnectionState};

use crate::next_message;
use sockeye_testkit::TestBroker;

async fn short_token_broker() -> TestBroker {
    TestBroker::start_with(|config| {
        config.auth.expiry_warning = Duration::from_secs(2);
        config.auth.leeway = Duration::ZERO;
    })
    .await
}

fn short_claims(subject: &str) -> Claims {
    Claims {
        sub: subject.into(),
        exp: Some(unix_now() + 3),
        ..Claims::default()
    }
}

#[tokio::test]
async fn a_token_provider_keeps_the_connection_past_the_first_expiry() {
    let broker = short_token_broker().await;
    let minted = Arc::new(AtomicUsize::new(0));
    let issuer = broker.broker.clone();
    let counter = Arc::clone(&minted);
    let client = Client::builder(broker.url())
        .token_provider(move || {
            let issuer = issuer.clone();
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                issuer.authenticator().mint(short_claims("alice"))
            }
        })
        .connect()
        .await
        .unwrap();
    let first_expiry = unix_now() + 3;
    let ConnectionState::Connected { connection_id, .. } = client.state().borrow().clone() else {
        panic!("connected");
    };
    let mut changes = client.state();
    changes.mark_unchanged();
    let mut sub = client.subscribe::<u64>("refresh.check").await.unwrap();

    // Outlive the first token (and at least one refreshed one) by a margin.
    let wait = Duration::from_secs(first_expiry + 2 - unix_now());
    tokio::time::sleep(wait).await;

    assert!(
        !changes.has_changed().unwrap(),
        "the connection never dropped: {:?}",
        *changes.borrow()
    );
    assert_eq!(
        *client.state().borrow(),
        ConnectionState::Connected {
            connection_id,
            subject: "alice".into()
        }
    );
    assert!(
        minted.load(Ordering::SeqCst) >= 2,
        "the provider was asked again"
    );
    client.publish("refresh.check", &7u64).await.unwrap();
    assert_eq!(next_message(&mut sub).await.value, 7);
}

#[tokio::test]
async fn a_fixed_token_that_expires_closes_the_client() {
    let broker = short_token_broker().await;
    let token = broker.token_with(short_claims("bob"));
    let client = Client::connect(broker.url(), token).await.unwrap();
    let mut state = client.state();
    let closed = state
        .wait_for(|state| matches!(state, ConnectionState::Closed { .. }))
        .await
        .unwrap()
        .clone();
    match closed {
        ConnectionState::Closed {
            reason: CloseReason::HandshakeRejected { status, body },
        } => {
            // Closed with 4000, then the same token was refused on reconnect.
            assert_eq!(status, 401);
            assert!(body.contains("token_expired"), "{body}");
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
}
