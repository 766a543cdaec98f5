//! The OpenAPI document against the router: every documented operation
//! answers with a documented status, nothing undocumented is served, the
//! committed `docs/openapi.json` is what is served, and `docs/admin.md` has
//! a curl example of every operation and no other.
//!
//! Regenerate the committed document with
//! `SOCKEYE_UPDATE_OPENAPI=1 cargo test -p sockeye-admin --test it openapi`
//! or `cargo run -p sockeye-admin --example dump-openapi > docs/openapi.json`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use sockeye_testkit::TestBroker;
use sockeye_testkit::http::send;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn repo_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name)
}

/// Every `(method, path template)` of the document.
fn operations(document: &Value) -> Vec<(String, String)> {
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                operations.push((method.to_owned(), path.clone()));
            }
        }
    }
    operations
}

async fn served_document(server: &TestBroker) -> (String, Value) {
    let response = server
        .anonymous(Method::GET, "/openapi.json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.unwrap();
    let document = serde_json::from_str(&text).unwrap();
    (text, document)
}

#[tokio::test]
async fn the_committed_document_is_the_served_one() {
    let server = TestBroker::start_admin().await;
    let (text, _) = served_document(&server).await;
    let path = repo_file("docs/openapi.json");
    if std::env::var_os("SOCKEYE_UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "docs/openapi.json differs from what /openapi.json serves; regenerate it with \
         `cargo run -p sockeye-admin --example dump-openapi > docs/openapi.json`"
    );
    assert_eq!(text, sockeye_admin::openapi_json());
}

#[tokio::test]
async fn the_document_is_openapi_3_1_with_a_bearer_scheme() {
    let server = TestBroker::start_admin().await;
    let (_, document) = served_document(&server).await;
    assert_eq!(document["openapi"], "3.1.0");
    assert_eq!(document["info"]["title"], "Sockeye admin API");
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (method, path) in operations(&document) {
        let operation = &document["paths"][&path][&method];
        let protected = path.starts_with("/v1/") || path == "/metrics";
        assert_eq!(
            operation.get("security").is_some(),
            protected,
            "{method} {path}: security"
        );
        if protected {
            for status in ["401", "403"] {
                assert!(
                    operation["responses"].get(status).is_some(),
                    "{method} {path}: {status}"
                );
            }
        }
        assert!(operation["summary"].is_string(), "{method} {path}: summary");
    }
}

/// A concrete URL path for a template: real topic, connection and file.
fn concrete(template: &str, connection: u64) -> String {
    template
        .replace("{topic}", "docs.topic")
        .replace("{id}", &connection.to_string())
        .replace("{file}", "swagger-ui.css")
        .replace("{asset}", "console.js")
}

fn request_for(server: &TestBroker, method: &str, path: &str) -> reqwest::RequestBuilder {
    let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
    let request = server.anonymous(method.clone(), path);
    if method == Method::POST {
        request.json(&json!({"payload": {"from": "the openapi test"}}))
    } else {
        request
    }
}

#[tokio::test]
async fn every_documented_operation_answers_with_a_documented_status() {
    let server = TestBroker::start_admin().await;
    server.publish_over_http("docs.topic", json!(1)).await;
    let client = server
        .client_with_user_agent("docs-client", "test-agent")
        .await;
    let (_, document) = served_document(&server).await;
    let mut operations = operations(&document);
    // Deletions last, so they do not remove what the others read.
    operations.sort_by_key(|(method, _)| method == "delete");
    assert!(operations.len() >= 14, "{operations:?}");
    for (method, template) in &operations {
        let path = concrete(template, client.welcome.connection_id);
        let documented = &document["paths"][template][method]["responses"];
        let protected = document["paths"][template][method]
            .get("security")
            .is_some();
        if protected {
            let response = request_for(&server, method, &path).send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path}"
            );
            let response = request_for(&server, method, &path)
                .bearer_auth(server.token("not-admin"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{method} {path}");
        }
        let response = request_for(&server, method, &path)
            .bearer_auth(sockeye_testkit::http::API_KEY)
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert!(
            status.is_success() || status.is_redirection(),
            "{method} {path} answered {status}"
        );
        assert!(
            documented.get(status.as_str()).is_some(),
            "{method} {path} answered {status}, which is not documented"
        );
    }
}

#[tokio::test]
async fn nothing_undocumented_is_served() {
    let server = TestBroker::start_admin().await;
    let (_, document) = served_document(&server).await;
    let operations: BTreeSet<(String, String)> = operations(&document).into_iter().collect();
    let templates: BTreeSet<&String> = operations.iter().map(|(_, path)| path).collect();
    // Other methods on documented paths: 405.
    for template in &templates {
        let path = concrete(template, 1);
        for method in METHODS {
            if operations.contains(&(method.to_owned(), (*template).clone())) {
                continue;
            }
            let (status, body) = send(server.request(
                Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                &path,
            ))
            .await;
            assert_eq!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {body}"
            );
            assert_eq!(body["code"], "method_not_allowed");
        }
    }
    // Paths next to documented ones: 404.
    for path in [
        "/",
        "/v1",
        "/v1/",
        "/v2/topics",
        "/v1/topic",
        "/v1/topics/",
        "/v1/topics/docs.topic/",
        "/v1/topics/docs.topic/history/1",
        "/v1/topics/docs.topic/messages/1",
        "/v1/connections/1/close",
        "/v1/stats/",
        "/v1/metrics",
        "/metrics/",
        "/healthz/",
        "/openapi.yaml",
        "/docs/a/b",
        "/ws",
    ] {
        for method in [Method::GET, Method::POST, Method::DELETE] {
            let (status, body) = send(server.request(method.clone(), path)).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
            assert_eq!(body["code"], "not_found");
        }
    }
}

/// `(method, path)` of every curl command in the `sh` blocks of
/// docs/admin.md.
fn curl_examples(markdown: &str) -> Vec<(String, String)> {
    let mut examples = Vec::new();
    let joined = markdown.replace("\\\n", " ");
    let mut in_shell = false;
    for line in joined.lines().map(str::trim) {
        if line.starts_with("```") {
            in_shell = line == "```sh";
            continue;
        }
        if !in_shell || !line.starts_with("curl ") {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let method = match words.iter().position(|word| *word == "-X") {
            Some(at) => words[at + 1].to_lowercase(),
            None if words.iter().any(|word| *word == "--json" || *word == "-d") => "post".into(),
            None => "get".into(),
        };
        let url = words
            .iter()
            .find(|word| word.contains("$ADMIN"))
            .unwrap_or_else(|| panic!("a curl example without $ADMIN: {line}"));
        let path = url
            .trim_matches(|c| c == '"' || c == '\'')
            .trim_start_matches("$ADMIN")
            .split('?')
            .next()
            .unwrap()
            .to_owned();
        examples.push((method, path));
    }
    examples
}

fn matches_template(template: &str, path: &str) -> bool {
    let template: Vec<&str> = template.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    template.len() == path.len()
        && template
            .iter()
            .zip(&path)
            .all(|(t, p)| t == p || (t.starts_with('{') && t.ends_with('}') && !p.is_empty()))
}

#[test]
fn the_guide_has_a_curl_example_of_every_operation_and_no_other() {
    let markdown = std::fs::read_to_string(repo_file("docs/admin.md")).unwrap();
    let examples = curl_examples(&markdown);
    let document: Value = serde_json::from_str(&sockeye_admin::openapi_json()).unwrap();
    let operations = operations(&document);
    for (method, path) in &examples {
        assert!(
            operations
                .iter()
                .any(|(m, template)| m == method && matches_template(template, path)),
            "docs/admin.md shows `{method} {path}`, which the API does not document"
        );
    }
    for (method, template) in &operations {
        if template.starts_with("/docs/") {
            continue; // The UI's own files are fetched by the page.
        }
        assert!(
            examples
                .iter()
                .any(|(m, path)| m == method && matches_template(template, path)),
            "docs/admin.md has no curl example of `{method} {template}`"
        );
    }
}

/// The schema of query parameter `name` of `method path`.
fn parameter<'a>(document: &'a Value, method: &str, path: &str, name: &str) -> &'a Value {
    document["paths"][path][method]["parameters"]
        .as_array()
        .unwrap_or_else(|| panic!("{method} {path} has no parameters"))
        .iter()
        .find(|parameter| parameter["name"] == name)
        .unwrap_or_else(|| panic!("{method} {path} has no parameter `{name}`"))
}

/// Text with every run of whitespace made one space, so that prose wrapped
/// over lines can be searched.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The limits the document and the guide state are written out by hand in
/// attributes and prose; they must be the ones the code enforces.
#[test]
fn documented_limits_are_the_enforced_ones() {
    use sockeye_admin::{DEFAULT_LIMIT, MAX_CLOSE_REASON_BYTES, MAX_LIMIT};

    let document: Value = serde_json::from_str(&sockeye_admin::openapi_json()).unwrap();
    for path in [
        "/v1/topics",
        "/v1/connections",
        "/v1/topics/{topic}/history",
    ] {
        let schema = &parameter(&document, "get", path, "limit")["schema"];
        assert_eq!(schema["minimum"], 1, "{path}: limit minimum");
        assert_eq!(schema["maximum"], MAX_LIMIT, "{path}: limit maximum");
        assert_eq!(schema["default"], DEFAULT_LIMIT, "{path}: limit default");
    }
    let reason = parameter(&document, "delete", "/v1/connections/{id}", "reason");
    assert_eq!(reason["schema"]["maxLength"], MAX_CLOSE_REASON_BYTES);
    let text = one_line(reason["description"].as_str().unwrap());
    assert!(
        text.contains(&format!("at most {MAX_CLOSE_REASON_BYTES} bytes")),
        "{text}"
    );
    let description = one_line(document["info"]["description"].as_str().unwrap());
    let limits = format!("`limit` (1 to {MAX_LIMIT}, default {DEFAULT_LIMIT})");
    assert!(description.contains(&limits), "{description}");

    let page_bytes = sockeye_broker::Config::default()
        .admin
        .max_history_page_bytes
        .as_u64();
    assert_eq!(page_bytes % (1 << 20), 0, "the texts below say whole MiB");
    let page_mib = format!("{} MiB", page_bytes >> 20);
    let history_limit = parameter(&document, "get", "/v1/topics/{topic}/history", "limit");
    let text = one_line(history_limit["description"].as_str().unwrap());
    assert!(
        text.contains(&format!(
            "`admin.max_history_page_bytes` ({page_mib} by default)"
        )),
        "{text}"
    );

    let guide = one_line(&std::fs::read_to_string(repo_file("docs/admin.md")).unwrap());
    for stated in [
        format!(
            "`limit`, from 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}; 0 or more than {MAX_LIMIT} is a 400)"
        ),
        format!("| `admin.max_history_page_bytes` | `\"{page_mib}\"` |"),
        format!("`admin.max_history_page_bytes` (default {page_mib})"),
        format!("(at most {MAX_CLOSE_REASON_BYTES} bytes;"),
    ] {
        assert!(
            guide.contains(&stated),
            "docs/admin.md does not say: {stated}"
        );
    }
}

/// What schemathesis found: `after` cursors the schema bounds (int64) were
/// accepted. The bound is now 2^53 - 1, written in the document and
/// enforced.
#[tokio::test]
async fn cursors_past_the_documented_maximum_get_400() {
    use sockeye_admin::MAX_CURSOR;

    let server = TestBroker::start_admin().await;
    server.publish_over_http("docs.topic", json!(1)).await;
    let (_, document) = served_document(&server).await;
    assert_eq!(MAX_CURSOR, (1 << 53) - 1);
    for template in ["/v1/connections", "/v1/topics/{topic}/history"] {
        let schema = &parameter(&document, "get", template, "after")["schema"];
        assert_eq!(schema["maximum"], MAX_CURSOR, "{template}");
        assert_eq!(schema["minimum"], 0, "{template}");
        let path = concrete(template, 0);
        for after in [MAX_CURSOR + 1, 1 << 63, u64::MAX] {
            let (status, body) = server.get(&format!("{path}?after={after}")).await;
            sockeye_testkit::http::assert_error(
                status,
                &body,
                StatusCode::BAD_REQUEST,
                "bad_parameter",
            );
        }
        let (status, body) = server.get(&format!("{path}?after={MAX_CURSOR}")).await;
        assert_eq!(status, StatusCode::OK, "{template}: {body}");
    }
}

/// What schemathesis found: topic names the schema allowed (any string)
/// were refused. The topic parameter now carries the name rules and the
/// configured length, so the names it allows are exactly the served ones.
#[tokio::test]
async fn every_topic_name_the_schema_allows_is_served_and_no_other() {
    let server = TestBroker::start_admin_with(|config| config.limits.max_topic_length = 40).await;
    let (_, document) = served_document(&server).await;
    for (method, template) in [
        ("get", "/v1/topics/{topic}"),
        ("get", "/v1/topics/{topic}/history"),
        ("delete", "/v1/topics/{topic}/history"),
        ("post", "/v1/topics/{topic}/messages"),
    ] {
        let schema = &parameter(&document, method, template, "topic")["schema"];
        assert_eq!(
            schema["pattern"], r"^[A-Za-z0-9_:-]+(\.[A-Za-z0-9_:-]+)*$",
            "{method} {template}"
        );
        assert_eq!(schema["maxLength"], 40, "{method} {template}");
    }
    // The committed document describes the default configuration.
    let committed: Value = serde_json::from_str(&sockeye_admin::openapi_json()).unwrap();
    let schema = &parameter(&committed, "get", "/v1/topics/{topic}", "topic")["schema"];
    assert_eq!(
        schema["maxLength"],
        sockeye_broker::Config::default().limits.max_topic_length
    );

    let longest = "x".repeat(40);
    for name in [
        "a", "A-z_0:9", "a.b.c", "0", "__main__", ":", "-.-", &longest,
    ] {
        let (status, body) = server.get(&format!("/v1/topics/{name}")).await;
        sockeye_testkit::http::assert_error(
            status,
            &body,
            StatusCode::NOT_FOUND,
            "topic_not_found",
        );
    }
    let too_long = "x".repeat(41);
    for name in [
        "a..b", ".a", "a.", "*", ">", "a.*", "%C3%A9", "%20", &too_long,
    ] {
        let (status, body) = server.get(&format!("/v1/topics/{name}")).await;
        sockeye_testkit::http::assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_topic",
        );
    }
}
