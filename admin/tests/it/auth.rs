//! Authentication: admin tokens and API keys pass; anything else gets 401
//! or 403 with a JSON body, on every protected route.

use reqwest::{Method, StatusCode};
use sockeye_broker::auth::unix_now;
use sockeye_broker::{Authenticator, Claims};

use sockeye_testkit::TestBroker;
use sockeye_testkit::http::{API_KEY, assert_error, send};

#[tokio::test]
async fn missing_credentials_get_401_with_a_bearer_challenge() {
    let server = TestBroker::start_admin().await;
    let response = server
        .anonymous(Method::GET, "/v1/topics")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_error(
        StatusCode::UNAUTHORIZED,
        &body,
        StatusCode::UNAUTHORIZED,
        "token_missing",
    );
}

#[tokio::test]
async fn other_schemes_and_empty_credentials_are_missing_credentials() {
    let server = TestBroker::start_admin().await;
    for value in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", API_KEY] {
        let (status, body) = send(
            server
                .anonymous(Method::GET, "/v1/stats")
                .header("authorization", value),
        )
        .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "token_missing");
    }
}

#[tokio::test]
async fn a_wrong_api_key_or_garbage_is_a_malformed_token() {
    let server = TestBroker::start_admin().await;
    for credential in ["not-the-key", "test-api-key-012345678", "a.b.c"] {
        let (status, body) = send(
            server
                .anonymous(Method::GET, "/v1/stats")
                .bearer_auth(credential),
        )
        .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "token_malformed");
    }
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_refused() {
    let server = TestBroker::start_admin().await;
    let mut other = server.broker.config().auth.clone();
    other.secret = Some("some-other-secret-that-is-long-enough-too".into());
    let foreign = Authenticator::from_config(&other, std::path::Path::new("."), 255)
        .unwrap()
        .mint(Claims {
            sub: "mallory".into(),
            exp: Some(unix_now() + 3600),
            admin: true,
            ..Claims::default()
        })
        .unwrap();
    let (status, body) = send(
        server
            .anonymous(Method::GET, "/v1/topics")
            .bearer_auth(foreign),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "token_bad_signature",
    );
}

#[tokio::test]
async fn an_expired_admin_token_is_refused() {
    let server = TestBroker::start_admin().await;
    let expired = server
        .broker
        .authenticator()
        .mint(Claims {
            sub: "ops".into(),
            exp: Some(unix_now() - 3600),
            admin: true,
            ..Claims::default()
        })
        .unwrap();
    let (status, body) = send(
        server
            .anonymous(Method::GET, "/v1/topics")
            .bearer_auth(expired),
    )
    .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "token_expired");
}

#[tokio::test]
async fn a_valid_token_without_the_admin_claim_gets_403() {
    let server = TestBroker::start_admin().await;
    let (status, body) = send(
        server
            .anonymous(Method::GET, "/v1/topics")
            .bearer_auth(server.token("alice")),
    )
    .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "not_admin");
}

#[tokio::test]
async fn admin_tokens_and_api_keys_are_accepted() {
    let server = TestBroker::start_admin().await;
    let (status, _) = send(
        server
            .anonymous(Method::GET, "/v1/topics")
            .bearer_auth(server.admin_token("ops")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        server
            .anonymous(Method::GET, "/v1/topics")
            .header("authorization", format!("bearer {API_KEY}")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the scheme is case-insensitive");
}

#[tokio::test]
async fn without_configured_keys_only_admin_tokens_pass() {
    let server = TestBroker::start_admin_with(|config| config.admin.api_keys.clear()).await;
    let (status, body) = send(server.request(Method::GET, "/v1/topics")).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "token_malformed");
    let (status, _) = send(
        server
            .anonymous(Method::GET, "/v1/topics")
            .bearer_auth(server.admin_token("ops")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn refused_admin_requests_are_counted_by_reason() {
    let server = TestBroker::start_admin().await;
    send(server.anonymous(Method::GET, "/v1/stats")).await;
    send(
        server
            .anonymous(Method::GET, "/v1/stats")
            .bearer_auth(server.token("alice")),
    )
    .await;
    let text = server
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("sockeye_admin_auth_failures_total{reason=\"token_missing\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("sockeye_admin_auth_failures_total{reason=\"not_admin\"} 1"),
        "{text}"
    );
    // Reasons that did not happen are listed too, at 0.
    assert!(
        text.contains("sockeye_admin_auth_failures_total{reason=\"token_expired\"} 0"),
        "{text}"
    );
}

#[tokio::test]
async fn admin_tokens_with_far_future_expiries_are_accepted_without_a_panic() {
    let server = TestBroker::start_admin().await;
    // The test server's secret signs any claims we like.
    let key =
        jsonwebtoken::EncodingKey::from_secret(b"a-test-secret-that-is-long-enough-for-hs256");
    for exp in [1u64 << 63, u64::MAX] {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({"sub": "far-admin", "exp": exp, "admin": true}),
            &key,
        )
        .unwrap();
        let (status, body) = send(
            server
                .anonymous(Method::GET, "/v1/stats")
                .bearer_auth(&token),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "exp {exp}: {body}");
    }
}
