//! Connection routes: listing with pagination, one connection, and
//! disconnecting a live WebSocket client with close code 4001.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sockeye_protocol::Payload;

use sockeye_testkit::http::{assert_error, send};
use sockeye_testkit::{TestBroker, eventually};

fn ids(page: &Value) -> Vec<u64> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|connection| connection["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn connections_show_who_is_connected_and_what_they_do() {
    let server = TestBroker::start_admin().await;
    let (_, empty) = server.get("/v1/connections").await;
    assert_eq!(empty, json!({"items": [], "next": null}));

    let mut alice = server
        .client_with_user_agent("alice", "alice-agent/1.0")
        .await;
    alice.subscribe("news.>", None).await;
    alice.subscribe("orders.eu", None).await;
    server.publish_over_http("orders.eu", json!("hi")).await;
    alice.delivery().await;
    alice.publish("elsewhere", Payload::binary(b"x")).await;

    let (status, page) = server.get("/v1/connections").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&page), [alice.welcome.connection_id]);
    let connection = &page["items"][0];
    assert_eq!(connection["sub"], "alice");
    assert_eq!(connection["user_agent"], "alice-agent/1.0");
    assert!(
        connection["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(connection["connected_at_ms"].as_u64().unwrap() > 1_600_000_000_000);
    let mut subscriptions: Vec<String> =
        serde_json::from_value(connection["subscriptions"].clone()).unwrap();
    subscriptions.sort();
    assert_eq!(subscriptions, ["news.>", "orders.eu"]);
    // One delivery reached alice (its publish to `elsewhere` matches none of
    // her subscriptions).
    assert_eq!(connection["messages_out"], 1);
    // Besides it, at least the replies to her two subscribes.
    assert!(connection["frames_out"].as_u64().unwrap() >= 3);
    assert_eq!(connection["messages_in"], 1);
    assert!(connection["frames_in"].as_u64().unwrap() >= 3);
    assert!(connection["bytes_in"].as_u64().unwrap() > 0);
    assert!(connection["bytes_out"].as_u64().unwrap() > 0);
    assert!(connection["queue_depth"].is_u64());

    let (status, one) = server
        .get(&format!("/v1/connections/{}", alice.welcome.connection_id))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["id"], alice.welcome.connection_id);
    assert_eq!(one["sub"], "alice");
}

#[tokio::test]
async fn connections_are_paginated_by_id() {
    let server = TestBroker::start_admin().await;
    let mut clients = Vec::new();
    for n in 0..3 {
        clients.push(
            server
                .client_with_user_agent(&format!("client-{n}"), "test-agent")
                .await,
        );
    }
    let all: Vec<u64> = clients
        .iter()
        .map(|client| client.welcome.connection_id)
        .collect();
    let (_, first) = server.get("/v1/connections?limit=2").await;
    assert_eq!(ids(&first), all[..2]);
    assert_eq!(first["next"], all[1]);
    let (_, last) = server
        .get(&format!("/v1/connections?limit=2&after={}", all[1]))
        .await;
    assert_eq!(ids(&last), all[2..]);
    assert_eq!(last["next"], Value::Null);
    let (status, past) = server.get("/v1/connections?after=999999").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(past, json!({"items": [], "next": null}));
    for query in ["limit=0", "limit=1001", "after=abc", "after=-1", "page=2"] {
        let (status, body) = server.get(&format!("/v1/connections?{query}")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_parameter");
    }
}

#[tokio::test]
async fn unknown_or_malformed_connection_ids_get_404_and_400() {
    let server = TestBroker::start_admin().await;
    let (status, body) = server.get("/v1/connections/424242").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "connection_not_found");
    let (status, body) = send(server.request(Method::DELETE, "/v1/connections/424242")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "connection_not_found");
    for path in [
        "/v1/connections/abc",
        "/v1/connections/-1",
        "/v1/connections/1.5",
    ] {
        let (status, body) = server.get(path).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_parameter");
        let (status, body) = send(server.request(Method::DELETE, path)).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_parameter");
    }
}

#[tokio::test]
async fn disconnecting_closes_the_websocket_with_4001() {
    let server = TestBroker::start_admin().await;
    let mut victim = server.client_with_user_agent("victim", "test-agent").await;
    let mut bystander = server
        .client_with_user_agent("bystander", "test-agent")
        .await;
    bystander.subscribe("still.here", None).await;
    let id = victim.welcome.connection_id;

    let (status, result) = send(
        server
            .request(Method::DELETE, &format!("/v1/connections/{id}"))
            .query(&[("reason", "maintenance window")]),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{result}");
    assert_eq!(
        result,
        json!({"id": id, "close_code": 4001, "reason": "maintenance window"})
    );
    assert_eq!(victim.closed().await, (4001, "maintenance window".into()));

    eventually("the connection to be gone", || async {
        let (status, _) = server.get(&format!("/v1/connections/{id}")).await;
        (status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let (_, page) = server.get("/v1/connections").await;
    assert_eq!(ids(&page), [bystander.welcome.connection_id]);
    // The other client is untouched.
    server.publish_over_http("still.here", json!(1)).await;
    assert_eq!(bystander.delivery().await.topic, "still.here");
}

#[tokio::test]
async fn disconnect_has_a_default_reason_and_bounds_it() {
    let server = TestBroker::start_admin().await;
    let mut client = server.client_with_user_agent("client", "test-agent").await;
    let id = client.welcome.connection_id;
    let long = "r".repeat(sockeye_admin::MAX_CLOSE_REASON_BYTES + 1);
    let (status, body) = send(
        server
            .request(Method::DELETE, &format!("/v1/connections/{id}"))
            .query(&[("reason", long.as_str())]),
    )
    .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_parameter");
    let (status, result) =
        send(server.request(Method::DELETE, &format!("/v1/connections/{id}"))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(result["reason"], "disconnected by an operator");
    assert_eq!(
        client.closed().await,
        (4001, "disconnected by an operator".into())
    );
}

#[tokio::test]
async fn a_session_that_panics_releases_its_connection_slot() {
    // One connection in all, and one per address: a leaked slot would refuse
    // the next client.
    let server = TestBroker::start_admin_with(|config| {
        config.server.max_connections = 1;
        config.server.max_connections_per_ip = 1;
    })
    .await;
    let mut doomed = server.client_with_user_agent("doomed", "test-agent").await;
    doomed.subscribe("doomed.topic", None).await;
    let id = doomed.welcome.connection_id;
    let (_, stats) = server.get("/v1/stats").await;
    assert_eq!(
        (&stats["connections"], &stats["subscriptions"]),
        (&json!(1), &json!(1))
    );

    assert!(
        server
            .broker
            .panic_session_at_next_ping(sockeye_broker::ConnId(id))
    );
    doomed
        .send(&sockeye_protocol::ClientMessage::Ping { id: 99 })
        .await;
    // The session died without a close handshake: the socket just ends.
    assert_eq!(doomed.ended().await, None);

    eventually("the connection to leave the admin API", || async {
        let (status, _) = server.get(&format!("/v1/connections/{id}")).await;
        (status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let (_, page) = server.get("/v1/connections").await;
    assert_eq!(page, json!({"items": [], "next": null}));
    let (_, stats) = server.get("/v1/stats").await;
    assert_eq!(
        (&stats["connections"], &stats["subscriptions"]),
        (&json!(0), &json!(0))
    );
    let metrics = server
        .request(Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|line| line == "sockeye_connections 0"),
        "{metrics}"
    );
    // The same address gets in again, under both caps.
    let mut again = server.client_with_user_agent("again", "test-agent").await;
    again.subscribe("doomed.topic", None).await;
    server
        .publish_over_http("doomed.topic", json!("still served"))
        .await;
    assert_eq!(again.delivery().await.topic, "doomed.topic");
}

#[tokio::test]
async fn the_welcome_carries_the_admin_apis_connection_id_as_an_integer() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let server = TestBroker::start_admin().await;
    let mut request = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", server.token("raw")).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let frame = tokio::time::timeout(sockeye_testkit::WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_data();
    // Read the body as any MessagePack map would be, not with our codec.
    let body = sockeye_protocol::frame::open(&frame, 1 << 20).unwrap();
    let welcome: Value = rmp_serde::from_slice(&body).unwrap();
    assert_eq!(welcome["type"], "welcome");
    let id = welcome["connection_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("connection_id is not an unsigned integer: {welcome}"));
    let (_, page) = server.get("/v1/connections").await;
    assert_eq!(ids(&page), [id]);
    let (status, one) = server.get(&format!("/v1/connections/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["sub"], "raw");
}
