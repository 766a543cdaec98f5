//! Token claims at their edges: absent, of the wrong type, or far beyond any
//! sane value, signed with the broker's own secret so only the claims are
//! wrong.

use serde_json::{Value, json};
use sockeye_broker::auth::{MAX_EXPIRY_SECS, unix_now};
use sockeye_protocol::{ClientMessage, ServerMessage};

use crate::support::{Carrier, Client, TestBroker};

/// The HS256 secret of the brokers in this module, so tests can sign any
/// JSON they like.
const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

async fn start() -> TestBroker {
    TestBroker::start_with(|config| config.auth.secret = Some(SECRET.into())).await
}

/// Signs arbitrary claims with [`SECRET`].
fn sign(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn far_future_expiries_are_accepted_and_saturate_instead_of_wrapping_or_panicking() {
    let broker = start().await;
    let saturated = MAX_EXPIRY_SECS * 1000;
    assert!(saturated < 1 << 53, "JavaScript numbers hold it exactly");
    // 2^63 overflowed the wall clock; u64::MAX / 1000 + 1 wrapped the
    // milliseconds of `token_expires_at` to a small number.
    for exp in [
        1u64 << 63,
        u64::MAX,
        u64::MAX / 1000 + 1,
        MAX_EXPIRY_SECS + 1,
    ] {
        let token = sign(&json!({"sub": "far", "exp": exp}));
        let mut client = Client::connect(&broker.url(), Carrier::Header, &token)
            .await
            .unwrap_or_else(|refused| panic!("exp {exp} refused: {refused:?}"));
        assert_eq!(
            client.welcome.token_expires_at,
            Some(saturated),
            "exp {exp}"
        );

        // A refresh with such a token is answered, and the session lives on.
        let id = client.next_id();
        let reply = client.request(ClientMessage::Refresh { id, token }).await;
        assert_eq!(
            reply,
            ServerMessage::Refreshed {
                id,
                expires_at: Some(saturated)
            },
            "exp {exp}"
        );
        let id = client.next_id();
        assert_eq!(
            client.request(ClientMessage::Ping { id }).await,
            ServerMessage::Pong { id }
        );
    }
    // An expiry within the representable range is reported exactly.
    let exp = unix_now() + 86_400 * 365 * 1000;
    let client = Client::connect(
        &broker.url(),
        Carrier::Header,
        &sign(&json!({"sub": "far", "exp": exp})),
    )
    .await
    .unwrap();
    assert_eq!(client.welcome.token_expires_at, Some(exp * 1000));
}

#[tokio::test]
async fn a_leeway_longer_than_an_hour_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::support::test_config(dir.path());
    config.auth.leeway = std::time::Duration::from_secs(3601);
    let error = sockeye_broker::Broker::open(config).unwrap_err();
    assert!(error.to_string().contains("auth.leeway"), "{error}");
}
