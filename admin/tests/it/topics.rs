//! Topic routes: listing and pagination, one topic, history paging, history
//! reset, and publishing over HTTP to WebSocket subscribers.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sockeye_broker::config::RetentionRule;
use sockeye_protocol::{Payload, ServerMessage};

use sockeye_testkit::TestBroker;
use sockeye_testkit::http::{assert_error, send};

fn names(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|topic| topic["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_empty_broker_lists_no_topics() {
    let server = TestBroker::start_admin().await;
    let (status, page) = server.get("/v1/topics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page, json!({"items": [], "next": null}));
}

#[tokio::test]
async fn topics_are_listed_in_name_order_page_by_page() {
    let server = TestBroker::start_admin().await;
    for topic in ["b.two", "a.one", "b.one", "c.one", "b.three"] {
        server.publish_over_http(topic, json!(1)).await;
    }
    let (_, first) = server.get("/v1/topics?limit=2").await;
    assert_eq!(names(&first), ["a.one", "b.one"]);
    assert_eq!(first["next"], "b.one");
    let (_, second) = server.get("/v1/topics?limit=2&after=b.one").await;
    assert_eq!(names(&second), ["b.three", "b.two"]);
    assert_eq!(second["next"], "b.two");
    let (_, last) = server.get("/v1/topics?limit=2&after=b.two").await;
    assert_eq!(names(&last), ["c.one"]);
    assert_eq!(last["next"], Value::Null);
    // A page that ends exactly at the last topic has no next cursor.
    let (_, exact) = server.get("/v1/topics?limit=5").await;
    assert_eq!(names(&exact).len(), 5);
    assert_eq!(exact["next"], Value::Null);
    // A cursor past the end gives an empty last page.
    let (status, past) = server.get("/v1/topics?after=zzz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(past, json!({"items": [], "next": null}));
    // The prefix filter combines with the cursor.
    let (_, prefixed) = server.get("/v1/topics?prefix=b.&limit=1&after=b.one").await;
    assert_eq!(names(&prefixed), ["b.three"]);
    assert_eq!(prefixed["next"], "b.three");
    let (_, max) = server.get("/v1/topics?limit=1000").await;
    assert_eq!(names(&max).len(), 5);
}

#[tokio::test]
async fn bad_list_parameters_get_400() {
    let server = TestBroker::start_admin().await;
    for query in ["limit=0", "limit=1001", "limit=-1", "limit=ten", "limt=10"] {
        let (status, body) = server.get(&format!("/v1/topics?{query}")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_parameter");
    }
}

#[tokio::test]
async fn one_topic_shows_its_stream_and_subscribers() {
    let server = TestBroker::start_admin().await;
    let mut subscriber = server.client_with_user_agent("sub-1", "test-agent").await;
    subscriber.subscribe("orders.eu", None).await;
    let first = server.publish_over_http("orders.eu", json!({"n": 1})).await;
    server.publish_over_http("orders.eu", json!({"n": 2})).await;
    let (status, topic) = server.get("/v1/topics/orders.eu").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(topic["name"], "orders.eu");
    assert_eq!(topic["stored"], true);
    assert_eq!(topic["subscribers"], 1);
    assert_eq!(topic["epoch"], first["epoch"]);
    assert_eq!(topic["first_offset"], 1);
    assert_eq!(topic["last_offset"], 2);
    assert_eq!(topic["stored_messages"], 2);
    assert_eq!(topic["published"], 2);
    assert!(topic["stored_bytes"].as_u64().unwrap() > 0);
    assert!(topic["last_publish_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(topic["publish_rate"].is_u64());
}

#[tokio::test]
async fn unknown_and_invalid_topics_get_404_and_400() {
    let server = TestBroker::start_admin().await;
    for path in ["/v1/topics/no.such", "/v1/topics/no.such/history"] {
        let (status, body) = server.get(path).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "topic_not_found");
    }
    let (status, body) = send(server.request(Method::DELETE, "/v1/topics/no.such/history")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "topic_not_found");
    for path in [
        "/v1/topics/a..b",
        "/v1/topics/orders.*",
        "/v1/topics/a%20b/history",
    ] {
        let (status, body) = server.get(path).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_topic");
    }
    let long = "x".repeat(256);
    let (status, body) = server.get(&format!("/v1/topics/{long}")).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_topic");
}

#[tokio::test]
async fn history_pages_by_offset() {
    let server = TestBroker::start_admin().await;
    for n in 1..=5 {
        server
            .publish_over_http("metrics.cpu", json!({"n": n}))
            .await;
    }
    let offsets = |page: &Value| -> Vec<u64> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["offset"].as_u64().unwrap())
            .collect()
    };
    let (status, first) = server.get("/v1/topics/metrics.cpu/history?limit=2").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(offsets(&first), [1, 2]);
    assert_eq!(first["next"], 2);
    assert_eq!(first["topic"], "metrics.cpu");
    let item = &first["items"][0];
    assert_eq!(item["encoding"], "json");
    assert_eq!(item["payload"], json!({"n": 1}));
    assert_eq!(item["publisher"], sockeye_admin::API_KEY_PUBLISHER);
    assert!(item["timestamp_ms"].as_u64().unwrap() > 1_600_000_000_000);
    let (_, second) = server
        .get("/v1/topics/metrics.cpu/history?limit=2&after=2")
        .await;
    assert_eq!(offsets(&second), [3, 4]);
    assert_eq!(second["next"], 4);
    let (_, last) = server
        .get("/v1/topics/metrics.cpu/history?limit=2&after=4")
        .await;
    assert_eq!(offsets(&last), [5]);
    assert_eq!(last["next"], Value::Null);
    assert_eq!(last["epoch"], first["epoch"]);
    let (_, past) = server.get("/v1/topics/metrics.cpu/history?after=99").await;
    assert_eq!(offsets(&past), Vec::<u64>::new());
    assert_eq!(past["next"], Value::Null);
    let (_, all) = server.get("/v1/topics/metrics.cpu/history").await;
    assert_eq!(offsets(&all), [1, 2, 3, 4, 5]);
    assert_eq!(all["next"], Value::Null);
    for query in ["limit=0", "limit=1001", "after=x", "encoding=xml", "from=1"] {
        let (status, body) = server
            .get(&format!("/v1/topics/metrics.cpu/history?{query}"))
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_parameter");
    }
}

#[tokio::test]
async fn history_pages_stop_at_the_configured_bytes() {
    // Each record is a 1000-byte payload plus well under 250 bytes of
    // frame, topic, publisher and timestamp: two fit in 2500 bytes, three
    // do not.
    let server = TestBroker::start_admin_with(|config| {
        config.admin.max_history_page_bytes = bytesize::ByteSize::b(2500);
    })
    .await;
    let payload = BASE64.encode([7u8; 1000]);
    for _ in 0..5 {
        let (status, body) = send(
            server
                .request(Method::POST, "/v1/topics/big.blobs/messages")
                .json(&json!({"payload": payload, "encoding": "binary"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let mut pages = Vec::new();
    let mut after = 0;
    for _ in 0..10 {
        let (status, page) = server
            .get(&format!("/v1/topics/big.blobs/history?after={after}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let offsets: Vec<u64> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["offset"].as_u64().unwrap())
            .collect();
        pages.push(offsets);
        match page["next"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(pages, [vec![1, 2], vec![3, 4], vec![5]]);
}

#[tokio::test]
async fn a_history_page_holds_one_message_whatever_its_size() {
    let server = TestBroker::start_admin_with(|config| {
        config.admin.max_history_page_bytes = bytesize::ByteSize::b(1);
    })
    .await;
    server.publish_over_http("tiny.page", json!("first")).await;
    server.publish_over_http("tiny.page", json!("second")).await;
    let (_, first) = server.get("/v1/topics/tiny.page/history").await;
    assert_eq!(first["items"].as_array().unwrap().len(), 1, "{first}");
    assert_eq!(first["items"][0]["payload"], "first");
    assert_eq!(first["next"], 1);
    let (_, second) = server.get("/v1/topics/tiny.page/history?after=1").await;
    assert_eq!(second["items"][0]["payload"], "second");
    assert_eq!(second["next"], Value::Null);
}

#[tokio::test]
async fn history_shows_each_payload_kind_and_exact_bytes_on_request() {
    let server = TestBroker::start_admin().await;
    server
        .publish_over_http("mixed", json!([1, "two", null]))
        .await;
    let (status, _) = send(
        server
            .request(Method::POST, "/v1/topics/mixed/messages")
            .json(&json!({"encoding": "binary", "payload": BASE64.encode(b"raw")})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // {1: 2}: a map with an integer key, which JSON cannot hold.
    let (status, _) = send(
        server
            .request(Method::POST, "/v1/topics/mixed/messages")
            .json(&json!({"encoding": "msgpack", "payload": BASE64.encode([0x81, 0x01, 0x02])})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, page) = server.get("/v1/topics/mixed/history").await;
    let shown: Vec<(Value, Value)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["encoding"].clone(), item["payload"].clone()))
        .collect();
    assert_eq!(
        shown,
        [
            (json!("json"), json!([1, "two", null])),
            (json!("binary"), json!(BASE64.encode(b"raw"))),
            (json!("msgpack"), json!(BASE64.encode([0x81, 0x01, 0x02]))),
        ]
    );
    let (_, exact) = server
        .get("/v1/topics/mixed/history?encoding=msgpack&limit=1")
        .await;
    let bytes = BASE64
        .decode(exact["items"][0]["payload"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        bytes,
        rmp_serde::to_vec_named(&json!([1, "two", null])).unwrap()
    );
    assert_eq!(exact["items"][0]["encoding"], "msgpack");
}

#[tokio::test]
async fn deleting_history_starts_a_new_epoch_and_resets_subscribers() {
    let server = TestBroker::start_admin().await;
    let mut subscriber = server.client_with_user_agent("sub-1", "test-agent").await;
    subscriber.subscribe("audit.log", None).await;
    let published = server.publish_over_http("audit.log", json!("before")).await;
    let old_epoch = published["epoch"].as_u64().unwrap();
    assert_eq!(subscriber.delivery().await.epoch, old_epoch);

    let (status, reset) =
        send(server.request(Method::DELETE, "/v1/topics/audit.log/history")).await;
    assert_eq!(status, StatusCode::OK, "{reset}");
    assert_eq!(reset["topic"], "audit.log");
    let new_epoch = reset["epoch"].as_u64().unwrap();
    assert_ne!(new_epoch, old_epoch);
    match subscriber.recv().await {
        ServerMessage::Reset { epoch, .. } => assert_eq!(epoch, new_epoch),
        other => panic!("expected a reset frame, got {other:?}"),
    }

    let (_, history) = server.get("/v1/topics/audit.log/history").await;
    assert_eq!(history["epoch"], new_epoch);
    assert_eq!(history["items"], json!([]));
    let (_, topic) = server.get("/v1/topics/audit.log").await;
    assert_eq!(topic["epoch"], new_epoch);
    assert_eq!(topic["stored_messages"], 0);

    let after = server.publish_over_http("audit.log", json!("after")).await;
    assert_eq!(after["epoch"], new_epoch);
    assert_eq!(after["offset"], 1, "offsets restart in the new epoch");
    let delivery = subscriber.delivery().await;
    assert_eq!((delivery.epoch, delivery.offset), (new_epoch, 1));
}

#[tokio::test]
async fn http_publish_reaches_websocket_subscribers() {
    let server = TestBroker::start_admin().await;
    let mut exact = server.client_with_user_agent("sub-1", "test-agent").await;
    exact.subscribe("chat.lobby", None).await;
    let mut wildcard = server.client_with_user_agent("sub-2", "test-agent").await;
    wildcard.subscribe("chat.>", None).await;

    let payload = json!({"text": "hello", "n": 7, "tags": ["a", "b"], "ok": true});
    let (status, result) = send(
        server
            .anonymous(Method::POST, "/v1/topics/chat.lobby/messages")
            .bearer_auth(server.admin_token("ops-alice"))
            .json(&json!({ "payload": payload })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["topic"], "chat.lobby");
    assert_eq!(result["stored"], true);
    assert_eq!(result["offset"], 1);
    let expected = Payload::from_msgpack(rmp_serde::to_vec_named(&payload).unwrap()).unwrap();
    for client in [&mut exact, &mut wildcard] {
        let delivery = client.delivery().await;
        assert_eq!(delivery.topic, "chat.lobby");
        assert_eq!(delivery.publisher, "ops-alice");
        assert_eq!(delivery.offset, 1);
        assert_eq!(delivery.epoch, result["epoch"].as_u64().unwrap());
        assert_eq!(delivery.payload, expected);
    }

    // Binary payloads arrive as MessagePack bin; API keys publish as admin-api.
    let (status, _) = send(
        server
            .request(Method::POST, "/v1/topics/chat.lobby/messages")
            .json(&json!({"encoding": "binary", "payload": BASE64.encode([0u8, 159, 255])})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let delivery = exact.delivery().await;
    assert_eq!(delivery.payload.as_binary(), Some(&[0u8, 159, 255][..]));
    assert_eq!(delivery.publisher, "admin-api");

    // A JSON null is a payload too.
    let (status, _) = send(
        server
            .request(Method::POST, "/v1/topics/chat.lobby/messages")
            .json(&json!({"payload": null})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(exact.delivery().await.payload.as_msgpack(), [0xc0]);
}

#[tokio::test]
async fn live_only_topics_publish_without_offsets_and_have_no_history() {
    let server = TestBroker::start_admin_with(|config| {
        config.retention.insert(
            0,
            RetentionRule {
                pattern: "live.>".into(),
                store: false,
                ..RetentionRule::default()
            },
        );
    })
    .await;
    let mut subscriber = server.client_with_user_agent("sub-1", "test-agent").await;
    subscriber.subscribe("live.ticks", None).await;
    let result = server.publish_over_http("live.ticks", json!(1)).await;
    assert_eq!(
        result,
        json!({"topic": "live.ticks", "stored": false, "epoch": 0, "offset": 0})
    );
    assert_eq!(subscriber.delivery().await.topic, "live.ticks");
    let (status, topic) = server.get("/v1/topics/live.ticks").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(topic["stored"], false);
    let (status, body) = server.get("/v1/topics/live.ticks/history").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_stored");
    let (status, body) =
        send(server.request(Method::DELETE, "/v1/topics/live.ticks/history")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_stored");
}

#[tokio::test]
async fn bad_publish_requests_get_clear_errors() {
    let server = TestBroker::start_admin_with(|config| {
        config.limits.max_frame_size = bytesize::ByteSize::kib(1);
        config.limits.max_inflated_size = bytesize::ByteSize::kib(4);
    })
    .await;
    let post = |topic: &str| server.request(Method::POST, &format!("/v1/topics/{topic}/messages"));
    let cases = [
        (
            post("a.b").json(&json!({})),
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            post("a.b").json(&json!({"payload": 1, "extra": 2})),
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            post("a.b").json(&json!({"payload": 1, "encoding": "xml"})),
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            post("a.b").json(&json!({"payload": 1, "encoding": "binary"})),
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            post("a.b").json(&json!({"payload": "%%%", "encoding": "binary"})),
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            post("a.b")
                .json(&json!({"payload": BASE64.encode([0x93, 0x01]), "encoding": "msgpack"})),
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            post("a.b")
                .header("content-type", "application/json")
                .body("{\"payload\": "),
            StatusCode::BAD_REQUEST,
            "bad_body",
        ),
        (
            post("a.b").body("{\"payload\": 1}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            post("a.*").json(&json!({"payload": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_topic",
        ),
        (
            post("a.b").json(&json!({"payload": "x".repeat(2000)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            post("a.b").json(&json!({"payload": "x".repeat(200_000)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for (request, want, code) in cases {
        let (status, body) = send(request).await;
        assert_error(status, &body, want, code);
    }
    let (_, topics) = server.get("/v1/topics").await;
    assert_eq!(topics["items"], json!([]), "nothing was published");
}
