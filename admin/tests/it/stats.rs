//! Stats, Prometheus metrics and the probes.

use reqwest::{Method, StatusCode};
use serde_json::json;

use sockeye_testkit::TestBroker;
use sockeye_testkit::http::{assert_error, send};

/// Makes some traffic: one subscriber, three HTTP publishes it receives,
/// one WebSocket handshake refused for a malformed token and one for its
/// `Origin`.
async fn traffic(server: &TestBroker) -> sockeye_testkit::Client {
    let mut subscriber = server.client_with_user_agent("sub-1", "test-agent").await;
    subscriber.subscribe("load.test", None).await;
    for n in 0..3 {
        server.publish_over_http("load.test", json!({"n": n})).await;
        subscriber.delivery().await;
    }
    let refused = server
        .http
        .get(format!("http://{}/ws", server.addr))
        .bearer_auth("not-a-jwt")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let foreign = server
        .http
        .get(format!("http://{}/ws", server.addr))
        .bearer_auth(server.token("browser"))
        .header("origin", "https://elsewhere.example")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    subscriber
}

#[tokio::test]
async fn stats_count_what_happened() {
    let server = TestBroker::start_admin().await;
    let _subscriber = traffic(&server).await;
    let (status, stats) = server.get("/v1/stats").await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["connections_total"], 1);
    assert_eq!(stats["connections_refused"], 0);
    assert_eq!(stats["subscriptions"], 1);
    assert_eq!(stats["wildcard_subscriptions"], 0);
    assert_eq!(stats["topics"], 1);
    assert_eq!(stats["messages_in"], 3);
    assert!(stats["bytes_in"].as_u64().unwrap() >= 3);
    assert_eq!(stats["deliveries"], 3);
    assert!(stats["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(stats["replayed"], 0);
    assert_eq!(
        stats["slow_consumers"],
        json!({"catch_ups": 0, "disconnects": 0})
    );
    for refusal in [
        "rate_limited",
        "bytes_rate_limited",
        "per_ip_refused",
        "handshake_rate_refused",
        "handshake_timeouts",
        "tls_failures",
    ] {
        assert_eq!(stats[refusal], 0, "{refusal}");
    }
    assert_eq!(stats["origin_refused"], 1);
    assert_eq!(stats["auth_failures"]["token_malformed"], 1);
    assert_eq!(stats["auth_failures"]["token_expired"], 0);
    assert_eq!(stats["auth_failures"].as_object().unwrap().len(), 10);
    assert!(stats["store_bytes_on_disk"].as_u64().unwrap() > 0);
    assert!(stats["uptime_seconds"].is_u64());
    if cfg!(target_os = "linux") {
        assert!(stats["memory_resident_bytes"].as_u64().unwrap() > 1 << 20);
    }
    let rates = &stats["rates"];
    assert!(rates["window_seconds"].as_f64().unwrap() > 0.0);
    assert!(rates["messages_in_per_second"].as_f64().unwrap() > 0.0);
    assert!(rates["deliveries_per_second"].as_f64().unwrap() > 0.0);
    assert!(rates["connections_per_second"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn metrics_are_prometheus_text_named_by_convention() {
    let server = TestBroker::start_admin().await;
    let _subscriber = traffic(&server).await;
    let response = server
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    for line in [
        "sockeye_connections 1",
        "sockeye_connections_accepted_total 1",
        "sockeye_subscriptions 1",
        "sockeye_topics 1",
        "sockeye_messages_in_total 3",
        "sockeye_deliveries_total 3",
        "sockeye_per_ip_refused_total 0",
        "sockeye_origin_refused_total 1",
        "sockeye_tls_failures_total 0",
        "sockeye_bytes_rate_limited_total 0",
        "sockeye_auth_failures_total{reason=\"token_malformed\"} 1",
        "sockeye_auth_failures_total{reason=\"token_expired\"} 0",
        "sockeye_handshake_duration_seconds_count 1",
        "sockeye_handshake_duration_seconds_bucket{le=\"+Inf\"} 1",
        "sockeye_publish_to_deliver_seconds_count 3",
        "sockeye_publish_to_deliver_seconds_bucket{le=\"+Inf\"} 3",
        "# TYPE sockeye_store_size_bytes gauge",
        "# TYPE sockeye_handshake_duration_seconds histogram",
    ] {
        assert!(
            text.lines().any(|got| got == line),
            "no line `{line}` in:\n{text}"
        );
    }
    // Every family is ours (or the standard process one), counters end in
    // _total, histograms name their base unit (seconds, or the items a batch
    // counts) and have cumulative buckets.
    let mut families = 0;
    for line in text.lines().filter(|line| line.starts_with("# TYPE ")) {
        let mut parts = line["# TYPE ".len()..].split(' ');
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        families += 1;
        assert!(
            name.starts_with("sockeye_") || name == "process_resident_memory_bytes",
            "{name}"
        );
        match kind {
            "counter" => assert!(name.ends_with("_total"), "{name}"),
            "histogram" => {
                assert!(
                    name.ends_with("_seconds") || name.ends_with("_writes"),
                    "{name}"
                );
                let buckets: Vec<u64> = text
                    .lines()
                    .filter(|line| line.starts_with(&format!("{name}_bucket{{")))
                    .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
                    .collect();
                assert!(buckets.len() > 5, "{name}");
                assert!(buckets.windows(2).all(|pair| pair[0] <= pair[1]), "{name}");
            }
            "gauge" => assert!(!name.ends_with("_total"), "{name}"),
            other => panic!("unexpected metric type {other} of {name}"),
        }
    }
    assert!(families >= 20, "{families} families");
}

#[tokio::test]
async fn metrics_need_credentials() {
    let server = TestBroker::start_admin().await;
    let (status, body) = send(server.anonymous(Method::GET, "/metrics")).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "token_missing");
}

#[tokio::test]
async fn probes_answer_without_credentials_and_readiness_follows_shutdown() {
    let server = TestBroker::start_admin().await;
    let (status, body) = send(server.anonymous(Method::GET, "/healthz")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = send(server.anonymous(Method::GET, "/readyz")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ready"})));

    server.broker.drain().await;
    let (status, body) = send(server.anonymous(Method::GET, "/readyz")).await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    let (status, body) = send(
        server
            .request(Method::POST, "/v1/topics/late.topic/messages")
            .json(&json!({"payload": 1})),
    )
    .await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    let (status, _) = send(server.anonymous(Method::GET, "/healthz")).await;
    assert_eq!(status, StatusCode::OK, "alive while draining");
}

/// The "Counted as" column of the limits table in docs/security.md.
fn counters_named_in_the_security_guide() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md");
    let guide = std::fs::read_to_string(path).unwrap();
    let start = guide
        .find("## Every limit, with its default")
        .expect("docs/security.md has the limits table");
    let mut names = Vec::new();
    for line in guide[start..]
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
    {
        let counted = line.trim_end_matches('|').rsplit('|').next().unwrap();
        names.extend(counted.split('`').skip(1).step_by(2).map(str::to_owned));
    }
    names
}

#[tokio::test]
async fn every_counter_the_security_guide_names_is_a_stats_field() {
    let server = TestBroker::start_admin().await;
    let (status, stats) = server.get("/v1/stats").await;
    assert_eq!(status, StatusCode::OK);
    let names = counters_named_in_the_security_guide();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        let field = name
            .split('.')
            .try_fold(&stats, |value, key| value.get(key))
            .unwrap_or_else(|| {
                panic!("docs/security.md names `{name}`, not in /v1/stats: {stats}")
            });
        assert!(field.is_u64(), "`{name}` is a counter: {field}");
    }
}
