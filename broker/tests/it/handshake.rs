//! The handshake: token carriers, refusals before the upgrade, admission.

use sockeye_broker::Claims;
use sockeye_broker::auth::unix_now;

use sockeye_testkit::{Carrier, Client, TestBroker};

#[tokio::test]
async fn a_token_is_accepted_from_each_of_the_three_carriers() {
    let broker = TestBroker::start().await;
    let token = broker.token("alice");
    for carrier in [Carrier::Header, Carrier::Subprotocol, Carrier::Query] {
        let client = Client::connect(&broker.url(), carrier, &token)
            .await
            .unwrap_or_else(|refused| panic!("{carrier:?} refused: {refused:?}"));
        assert_eq!(client.welcome.subject, "alice", "{carrier:?}");
        assert_eq!(client.welcome.version, 1);
        assert!(client.welcome.connection_id > 0);
        // The broker selects our subprotocol and never echoes the token.
        assert_eq!(client.selected_protocol.as_deref(), Some("sockeye.v1"));
    }
}

#[tokio::test]
async fn the_welcome_announces_the_limits_and_expiry_in_force() {
    let broker = TestBroker::start_with(|config| {
        config.limits.max_subscriptions = 7;
        config.heartbeat.interval = std::time::Duration::from_secs(3);
    })
    .await;
    let exp = unix_now() + 600;
    let token = broker.token_with(Claims {
        sub: "bob".into(),
        exp: Some(exp),
        ..Claims::default()
    });
    let client = Client::connect(&broker.url(), Carrier::Header, &token)
        .await
        .unwrap();
    assert_eq!(client.welcome.limits.max_subscriptions, 7);
    assert_eq!(client.welcome.heartbeat_interval_ms, 3000);
    assert_eq!(client.welcome.token_expires_at, Some(exp * 1000));
}

async fn refused(broker: &TestBroker, token: &str) -> (u16, String) {
    match Client::connect(&broker.url(), Carrier::Header, token).await {
        Ok(_) => panic!("the handshake was accepted"),
        Err(refused) => (
            refused.status,
            refused.body["code"].as_str().unwrap_or_default().to_owned(),
        ),
    }
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_reason_and_no_upgrade() {
    let broker = TestBroker::start().await;
    let other = TestBroker::start().await; // a different generated secret
    let expired = broker.token_with(Claims {
        sub: "a".into(),
        exp: Some(unix_now() - 3600),
        ..Claims::default()
    });
    let immature = broker.token_with(Claims {
        sub: "a".into(),
        exp: Some(unix_now() + 7200),
        nbf: Some(unix_now() + 3600),
        ..Claims::default()
    });
    let no_exp = broker.token_with(Claims {
        sub: "a".into(),
        ..Claims::default()
    });
    assert_eq!(
        refused(&broker, &other.token("a")).await,
        (401, "token_bad_signature".into())
    );
    assert_eq!(
        refused(&broker, &expired).await,
        (401, "token_expired".into())
    );
    assert_eq!(
        refused(&broker, &immature).await,
        (401, "token_not_yet_valid".into())
    );
    assert_eq!(
        refused(&broker, &no_exp).await,
        (401, "token_missing_claim".into())
    );
    assert_eq!(
        refused(&broker, "not-a-jwt").await,
        (401, "token_malformed".into())
    );

    // No token at all.
    let request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        broker.url(),
    )
    .unwrap();
    let refusal = Client::connect_request(request).await.err().unwrap();
    assert_eq!(refusal.status, 401);
    assert_eq!(refusal.body["code"], "token_missing");

    // Every refusal is counted by reason.
    let stats = broker.broker.stats();
    let count = |code: &str| {
        let index = sockeye_broker::auth::AuthError::CODES
            .iter()
            .position(|known| *known == code)
            .unwrap();
        sockeye_broker::Stats::get(&stats.auth_failures[index])
    };
    assert_eq!(count("token_expired"), 1);
    assert_eq!(count("token_missing"), 1);
}

#[tokio::test]
async fn handshakes_over_the_connection_limit_get_503_with_retry_after() {
    let broker = TestBroker::start_with(|config| config.server.max_connections = 2).await;
    let _first = broker.client("a").await;
    let _second = broker.client("b").await;
    let refusal = Client::connect(&broker.url(), Carrier::Header, &broker.token("c"))
        .await
        .err()
        .unwrap();
    assert_eq!(refusal.status, 503);
    assert!(refusal.retry_after.is_some());
    drop(_first);
    // Once a slot frees up, connecting works again.
    let mut admitted = false;
    for _ in 0..100 {
        if Client::connect(&broker.url(), Carrier::Header, &broker.token("c"))
            .await
            .is_ok()
        {
            admitted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(admitted, "a freed slot is reused");
}

#[tokio::test]
async fn healthz_answers_ok() {
    let broker = TestBroker::start().await;
    let mut stream = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");
}

/// Starts a broker verifying `algorithm` with a key pair generated now; the
/// broker also gets the private key so it can mint tokens for the test.
async fn broker_with_key(
    algorithm: sockeye_broker::config::Algorithm,
    key: &rcgen::KeyPair,
    keys: &std::path::Path,
) -> TestBroker {
    let public = keys.join("public.pem");
    let private = keys.join("private.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    std::fs::write(&private, key.serialize_pem()).unwrap();
    TestBroker::start_with(|config| {
        config.auth.algorithm = algorithm;
        config.auth.public_key_file = Some(public);
        config.auth.private_key_file = Some(private);
    })
    .await
}

#[tokio::test]
async fn rs256_and_es256_tokens_verify_with_a_public_key_and_nothing_else_does() {
    use sockeye_broker::config::Algorithm;
    let keys = tempfile::tempdir().unwrap();
    let cases = [
        (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
        (Algorithm::RS256, &rcgen::PKCS_RSA_SHA256),
    ];
    for (algorithm, signature) in cases {
        let key = rcgen::KeyPair::generate_for(signature).unwrap();
        let broker = broker_with_key(algorithm, &key, keys.path()).await;
        let client = Client::connect(&broker.url(), Carrier::Header, &broker.token("pk"))
            .await
            .unwrap_or_else(|refused| panic!("{algorithm:?} refused: {refused:?}"));
        assert_eq!(client.welcome.subject, "pk");
        // An HS256 token, even one signed with the public key's bytes as the
        // secret (the classic algorithm-confusion attack), is refused.
        let public_pem = std::fs::read(keys.path().join("public.pem")).unwrap();
        let confused = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &Claims {
                sub: "mallory".into(),
                exp: Some(unix_now() + 600),
                ..Claims::default()
            },
            &jsonwebtoken::EncodingKey::from_secret(&public_pem),
        )
        .unwrap();
        assert_eq!(
            refused(&broker, &confused).await,
            (401, "token_wrong_algorithm".into()),
            "{algorithm:?}"
        );
    }
}

#[tokio::test]
async fn issuer_and_audience_are_enforced_when_configured() {
    let broker = TestBroker::start_with(|config| {
        config.auth.issuer = Some("https://id.example".into());
        config.auth.audience = Some("sockeye".into());
    })
    .await;
    // Minted tokens get the configured issuer and audience.
    broker.client("ok").await;
    let claims = |iss: &str, aud: &str| Claims {
        sub: "x".into(),
        exp: Some(unix_now() + 600),
        iss: Some(iss.into()),
        aud: Some(aud.into()),
        ..Claims::default()
    };
    assert_eq!(
        refused(
            &broker,
            &broker.token_with(claims("https://evil.example", "sockeye"))
        )
        .await,
        (401, "token_bad_issuer".into())
    );
    assert_eq!(
        refused(
            &broker,
            &broker.token_with(claims("https://id.example", "other"))
        )
        .await,
        (401, "token_bad_audience".into())
    );
}
