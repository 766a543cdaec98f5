//! Token claims at their edges: absent, of the wrong type, or far beyond any
//! sane value, signed with the broker's own secret so only the claims are
//! wrong.

use serde_json::{Value, json};
use sockeye_broker::auth::{MAX_EXPIRY_SECS, unix_now};
use sockeye_protocol::{ClientMessage, ErrorCode, ServerMessage};

use sockeye_testkit::{Carrier, Client, TestBroker};

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

/// The handshake's refusal: status, code and message.
async fn refusal(broker: &TestBroker, token: &str) -> (u16, String, String) {
    match Client::connect(&broker.url(), Carrier::Header, token).await {
        Ok(client) => panic!("accepted: {:?}", client.welcome),
        Err(refused) => (
            refused.status,
            refused.body["code"].as_str().unwrap_or_default().to_owned(),
            refused.body["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ),
    }
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
    let mut config = sockeye_testkit::test_config(dir.path());
    config.auth.leeway = std::time::Duration::from_secs(3601);
    let error = sockeye_broker::Broker::open(config).await.unwrap_err();
    assert!(error.to_string().contains("auth.leeway"), "{error}");
}

#[tokio::test]
async fn a_signed_token_without_sub_gets_token_missing_claim() {
    let broker = start().await;
    let exp = unix_now() + 600;
    for claims in [
        json!({"exp": exp}),
        json!({"sub": null, "exp": exp}),
        json!({"sub": "", "exp": exp}),
    ] {
        let (status, code, message) = refusal(&broker, &sign(&claims)).await;
        assert_eq!(
            (status, code.as_str()),
            (401, "token_missing_claim"),
            "{claims}"
        );
        assert!(message.contains("`sub`"), "{claims}: {message}");
    }
    let (status, code, message) = refusal(&broker, &sign(&json!({"sub": "a"}))).await;
    assert_eq!((status, code.as_str()), (401, "token_missing_claim"));
    assert!(message.contains("`exp`"), "{message}");
}

#[tokio::test]
async fn claims_of_the_wrong_type_get_token_invalid_naming_the_claim() {
    let broker = start().await;
    let exp = unix_now() + 600;
    let cases = [
        ("sub", json!({"sub": 5, "exp": exp})),
        ("sub", json!({"sub": ["a"], "exp": exp})),
        ("exp", json!({"sub": "a", "exp": "x"})),
        ("exp", json!({"sub": "a", "exp": -1})),
        ("exp", json!({"sub": "a", "exp": 1.5e30})),
        ("nbf", json!({"sub": "a", "exp": exp, "nbf": "soon"})),
        ("iat", json!({"sub": "a", "exp": exp, "iat": "then"})),
        ("iss", json!({"sub": "a", "exp": exp, "iss": 7})),
        ("aud", json!({"sub": "a", "exp": exp, "aud": {"x": 1}})),
        (
            "subscribe",
            json!({"sub": "a", "exp": exp, "subscribe": "chat.>"}),
        ),
        (
            "publish",
            json!({"sub": "a", "exp": exp, "publish": [1, 2]}),
        ),
        ("admin", json!({"sub": "a", "exp": exp, "admin": "yes"})),
    ];
    for (claim, claims) in cases {
        let (status, code, message) = refusal(&broker, &sign(&claims)).await;
        assert_eq!((status, code.as_str()), (401, "token_invalid"), "{claims}");
        assert!(
            message.contains(&format!("`{claim}`")),
            "{claims}: the message names `{claim}`: {message}"
        );
    }
    // The same token over `refresh` is refused the same way, and the
    // session stays.
    let mut client = Client::connect(
        &broker.url(),
        Carrier::Header,
        &sign(&json!({"sub": "a", "exp": exp})),
    )
    .await
    .unwrap();
    let id = client.next_id();
    let reply = client
        .request(ClientMessage::Refresh {
            id,
            token: sign(&json!({"sub": 5, "exp": exp})),
        })
        .await;
    match reply {
        ServerMessage::Error {
            code: ErrorCode::InvalidToken,
            message,
            ..
        } => assert!(message.contains("`sub`"), "{message}"),
        other => panic!("expected invalid_token, got {other:?}"),
    }
    let id = client.next_id();
    assert_eq!(
        client.request(ClientMessage::Ping { id }).await,
        ServerMessage::Pong { id }
    );
}

#[tokio::test]
async fn a_configured_issuer_and_audience_must_be_present_and_aud_may_be_an_array() {
    let broker = TestBroker::start_with(|config| {
        config.auth.secret = Some(SECRET.into());
        config.auth.issuer = Some("https://id.example".into());
        config.auth.audience = Some("sockeye".into());
    })
    .await;
    let exp = unix_now() + 600;
    let iss = "https://id.example";
    let token = sign(&json!({"sub": "a", "exp": exp, "iss": iss, "aud": ["other", "sockeye"]}));
    let client = Client::connect(&broker.url(), Carrier::Header, &token)
        .await
        .unwrap_or_else(|refused| panic!("refused: {refused:?}"));
    assert_eq!(client.welcome.subject, "a");
    let cases = [
        (
            "token_bad_audience",
            json!({"sub": "a", "exp": exp, "iss": iss, "aud": ["other"]}),
        ),
        (
            "token_missing_claim",
            json!({"sub": "a", "exp": exp, "iss": iss}),
        ),
        (
            "token_missing_claim",
            json!({"sub": "a", "exp": exp, "aud": "sockeye"}),
        ),
        (
            "token_bad_issuer",
            json!({"sub": "a", "exp": exp, "iss": "x", "aud": "sockeye"}),
        ),
    ];
    for (want, claims) in cases {
        let (status, code, _) = refusal(&broker, &sign(&claims)).await;
        assert_eq!((status, code.as_str()), (401, want), "{claims}");
    }
}

#[tokio::test]
async fn claims_are_judged_only_after_the_signature_verifies() {
    let broker = start().await;
    let other = jsonwebtoken::EncodingKey::from_secret(b"another-secret-that-is-long-enough-too");
    for claims in [json!({"sub": 5}), json!({"exp": "x"}), json!({})] {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &other,
        )
        .unwrap();
        let (status, code, _) = refusal(&broker, &token).await;
        assert_eq!(
            (status, code.as_str()),
            (401, "token_bad_signature"),
            "{claims}"
        );
    }
    // Not three base64url parts, or claims that are not a JSON object.
    let header = "eyJhbGciOiJIUzI1NiJ9";
    for token in [
        format!("{header}.e30"),
        format!("{header}.e30.sig.extra"),
        sign(&json!(["not", "an", "object"])),
    ] {
        let (status, code, _) = refusal(&broker, &token).await;
        assert_eq!((status, code.as_str()), (401, "token_malformed"), "{token}");
    }
}

#[tokio::test]
async fn a_secret_file_shorter_than_32_bytes_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    // 31 bytes and a newline, which is trimmed.
    std::fs::write(&secret, format!("{}\n", "s".repeat(31))).unwrap();
    let mut config = sockeye_testkit::test_config(dir.path());
    config.auth.secret_file = Some(secret.clone());
    let error = sockeye_broker::Broker::open(config.clone())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("secret"), "{error}");
    std::fs::write(&secret, format!("{}\n", "s".repeat(32))).unwrap();
    sockeye_broker::Broker::open(config).await.unwrap();
}
