//! The operator console in a real headless Chromium (Debian's, driven by
//! playwright-core through `admin/tests/console/drive.mjs`), against a real
//! broker with real WebSocket clients, every non-loopback request blocked.
//! The test plays the operator (through the driver) and the clients (here),
//! and checks what the page shows against what the API and the clients see.
//!
//! Screenshots of every view are saved under `target/tmp/console/` (the
//! path is printed). With `SOCKEYE_CONSOLE_DOCS_SCREENSHOT=FILE` the test
//! first runs 150 s of varied load and writes the overview to FILE:
//! `scripts/console-screenshot.sh` regenerates `docs/console-overview.png`
//! that way.
//!
//! Needs chromium and `npm ci --prefix admin/tests/console`
//! (`scripts/test.sh` installs both); without them the test fails.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sockeye_protocol::Payload;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use sockeye_testkit::http::send;
use sockeye_testkit::{TestBroker, WAIT};

fn driver_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

/// Where the screenshots of a test go.
fn artifacts(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("console")
        .join(test);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The page in a browser, driven one command at a time.
struct Console {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    next_id: u64,
    log: PathBuf,
}

impl Console {
    /// Starts Chromium and opens `url`; screenshots go to `dir`.
    async fn open(url: &str, dir: &Path) -> Self {
        assert!(
            driver_dir().join("node_modules/playwright-core").exists(),
            "the console test needs playwright-core: `npm ci --prefix admin/tests/console`"
        );
        let log = dir.join("browser.log");
        let mut child = Command::new("node")
            .arg(driver_dir().join("drive.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut console = Self {
            child,
            stdin,
            stdout,
            next_id: 0,
            log,
        };
        console
            .run(json!({"do": "open", "url": url, "screenshot_dir": dir}))
            .await;
        console
    }

    /// Runs one command and returns its result; a failed command fails the
    /// test with the driver's error.
    async fn run(&mut self, mut command: Value) -> Value {
        self.next_id += 1;
        command["id"] = json!(self.next_id);
        let line = format!("{command}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        let answer = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("the browser did not answer {command} in time"))
            .unwrap()
            .unwrap_or_else(|| panic!("the browser driver ended; see {}", self.log.display()));
        let answer: Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(answer["id"], json!(self.next_id), "{answer}");
        assert!(
            answer["ok"] == json!(true),
            "{command} failed: {} (browser log: {})",
            answer["error"],
            self.log.display()
        );
        answer["result"].clone()
    }

    async fn click(&mut self, selector: &str) {
        self.run(json!({"do": "click", "selector": selector})).await;
    }

    async fn fill(&mut self, selector: &str, value: &str) {
        self.run(json!({"do": "fill", "selector": selector, "value": value}))
            .await;
    }

    async fn select(&mut self, selector: &str, value: &str) {
        self.run(json!({"do": "select", "selector": selector, "value": value}))
            .await;
    }

    async fn wait(&mut self, selector: &str) {
        self.run(json!({"do": "wait", "selector": selector})).await;
    }

    /// Waits until an element matching `selector` contains `text`.
    async fn wait_text(&mut self, selector: &str, text: &str) {
        self.run(json!({"do": "wait", "selector": selector, "text": text}))
            .await;
    }

    async fn text(&mut self, selector: &str) -> String {
        let text = self.run(json!({"do": "text", "selector": selector})).await;
        text.as_str()
            .unwrap_or_else(|| panic!("nothing matches {selector}"))
            .to_owned()
    }

    async fn visible(&mut self, selector: &str) -> bool {
        self.run(json!({"do": "visible", "selector": selector}))
            .await
            .as_bool()
            .unwrap()
    }

    async fn disabled(&mut self, selector: &str) -> bool {
        self.run(json!({"do": "disabled", "selector": selector}))
            .await
            .as_bool()
            .unwrap()
    }

    /// The rows of a table, each `{column: text}`.
    async fn rows(&mut self, table: &str) -> Vec<Value> {
        let rows = self
            .run(json!({"do": "rows", "selector": format!("{table} tbody tr:not(.empty)")}))
            .await;
        rows.as_array().unwrap().clone()
    }

    /// Polls the rows of `table` until `check` accepts them.
    async fn rows_until(
        &mut self,
        table: &str,
        what: &str,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let rows = self.rows(table).await;
            if check(&rows) {
                return rows;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; the table shows {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn figures(&mut self, selector: &str) -> Value {
        self.run(json!({"do": "figures", "selector": selector}))
            .await
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let path = self.run(json!({"do": "screenshot", "name": name})).await;
        PathBuf::from(path.as_str().unwrap())
    }

    /// The error banner (or the sign-in error box): (status, code, message).
    async fn error(&mut self, box_id: &str) -> (String, String, String) {
        self.wait(box_id).await;
        (
            self.text(&format!("{box_id} [data-status]")).await,
            self.text(&format!("{box_id} [data-code]")).await,
            self.text(&format!("{box_id} [data-message]")).await,
        )
    }

    /// Ends the browser and asserts the page stayed offline, raised no
    /// uncaught error, and broke no rule of its content security policy.
    async fn finish(mut self) -> Value {
        let report = self.run(json!({"do": "report"})).await;
        self.run(json!({"do": "close"})).await;
        drop(self.stdin);
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
        assert_eq!(report["blocked"], json!([]), "requests off loopback");
        assert_eq!(report["page_errors"], json!([]), "uncaught page errors");
        for error in report["console_errors"].as_array().unwrap() {
            assert!(
                !error.as_str().unwrap().contains("Content Security Policy"),
                "the page broke its own policy: {error}"
            );
        }
        report
    }
}

/// What the API answers for `path` with `credential`: (status, code, message).
async fn api_error(server: &TestBroker, path: &str, credential: &str) -> (u16, String, String) {
    let (status, body) = send(server.anonymous(Method::GET, path).bearer_auth(credential)).await;
    assert!(!status.is_success(), "{path}: {status} {body}");
    (
        status.as_u16(),
        body["code"].as_str().unwrap().to_owned(),
        body["message"].as_str().unwrap().to_owned(),
    )
}

async fn sign_in(console: &mut Console, credential: &str) {
    console.fill("#credential", credential).await;
    console.click("#sign-in").await;
}

#[tokio::test]
async fn a_refused_credential_shows_the_api_error() {
    let server = TestBroker::start_admin().await;
    let dir = artifacts("refused");
    let mut console = Console::open(&server.admin_url("/console"), &dir).await;
    // `/console` redirects to the page.
    let location = console.run(json!({"do": "storage"})).await["url"].clone();
    assert_eq!(location, json!(server.admin_url("/console/")));
    console.wait("#signin-form").await;

    for (credential, status) in [
        ("not-a-token-and-not-a-key".to_owned(), 401),
        ("a.b.c".to_owned(), 401),
        (server.token("not-an-admin"), 403),
    ] {
        // A fresh page for each, so no earlier refusal is read.
        console
            .run(json!({"do": "goto", "url": server.admin_url("/console/")}))
            .await;
        console.wait("#signin[data-state=ready]").await;
        sign_in(&mut console, &credential).await;
        console.wait("#signin[data-state=refused]").await;
        let (shown_status, code, message) = console.error("#signin-error").await;
        let (api_status, api_code, api_message) =
            api_error(&server, "/v1/topics?limit=1", &credential).await;
        assert_eq!(api_status, status);
        assert_eq!(shown_status, api_status.to_string());
        assert_eq!(code, api_code);
        assert_eq!(message, api_message);
        assert!(!console.visible("#nav").await, "no view without sign-in");
        let storage = console.run(json!({"do": "storage"})).await;
        assert_eq!(
            storage["session"],
            json!({}),
            "a refused credential is not kept"
        );
    }
    let shot = console.screenshot("signin-refused").await;
    eprintln!("console screenshots: {}", shot.parent().unwrap().display());
    console.finish().await;
}

/// Publishes `{"order": n}` with acks from one WebSocket client until
/// `stop`, at most `max` messages; returns how many it published.
async fn publish_in_background(
    server: &TestBroker,
    topic: &'static str,
    max: u64,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    let mut client = server
        .client_with_user_agent("load-publisher", "console-test-load/1.0")
        .await;
    tokio::spawn(async move {
        let mut sent = 0;
        while sent < max && !stop.load(Ordering::Relaxed) {
            sent += 1;
            client
                .publish(topic, json_payload(&json!({"order": sent})))
                .await;
            tokio::time::sleep(pause).await;
        }
        sent
    })
}

fn json_payload(value: &Value) -> Payload {
    Payload::from_msgpack(rmp_serde::to_vec_named(value).unwrap()).unwrap()
}

fn number(figure: &Value) -> f64 {
    figure["value"]
        .as_str()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

/// Publishes one MessagePack value, given as bytes, over HTTP.
async fn publish_msgpack(server: &TestBroker, topic: &str, bytes: &[u8]) {
    let (status, body) = send(
        server
            .request(Method::POST, &format!("/v1/topics/{topic}/messages"))
            .json(&json!({"encoding": "msgpack", "payload": BASE64.encode(bytes)})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn the_console_watches_and_acts_on_the_broker() {
    let server = TestBroker::start_admin().await;
    let dir = artifacts("walkthrough");
    eprintln!("console screenshots: {}", dir.display());
    for n in 1..=120 {
        server
            .publish_over_http("orders.eu", json!({"order": n}))
            .await;
    }
    server
        .publish_over_http("orders.us", json!({"order": 1}))
        .await;
    for truck in 0..25 {
        server
            .publish_over_http(&format!("fleet.truck-{truck:02}"), json!({"km": truck}))
            .await;
    }
    // Values JSON cannot hold exactly, and bytes.
    let payloads: [(&[u8], &str, &str); 7] = [
        (
            &[0x81, 0xa1, b'b', 0x93, 0x01, 0xc3, 0xc0],
            "map, 7 B",
            r#"{"b":[1,true,null]}"#,
        ),
        (
            &[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            "integer, 9 B",
            "18446744073709551615",
        ),
        (
            &[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0],
            "integer, 9 B",
            "-9223372036854775808",
        ),
        (&[0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0], "float, 9 B", "NaN"),
        (
            &[0xc4, 0x04, 0xde, 0xad, 0xbe, 0xef],
            "bin, 6 B",
            "de ad be ef",
        ),
        (
            &[
                0x82, 0x01, 0xc4, 0x02, 0x01, 0x02, 0xa1, b'k', 0x92, 0xa2, b'h', b'i', 0xca, 0x40,
                0x20, 0, 0,
            ],
            "map, 17 B",
            r#"{1:<bin 01 02>,"k":["hi",2.5]}"#,
        ),
        (
            &[0xd6, 0xff, 0x65, 0x53, 0xf1, 0x00],
            "ext, 6 B",
            "<timestamp 2023-11-14T22:13:20.000Z>",
        ),
    ];
    for (bytes, _, _) in &payloads {
        publish_msgpack(&server, "payloads.mixed", bytes).await;
    }

    let token = server.admin_token("ops");
    let mut console = Console::open(&server.admin_url("/console/"), &dir).await;

    // Sign in; the credential lives in session storage only.
    sign_in(&mut console, &token).await;
    console.wait("body[data-signed-in=true]").await;
    assert_eq!(console.text("#who").await, "signed in with an admin token");
    let storage = console.run(json!({"do": "storage"})).await;
    assert_eq!(
        storage["session"],
        json!({"sockeye.console.credential": token})
    );
    assert_eq!(storage["local"], json!({}));
    assert_eq!(storage["cookies"], json!(""));
    assert!(!storage["url"].as_str().unwrap().contains(&token));

    // Overview: the numbers move while a client publishes to a subscriber.
    console.wait("#overview[data-state=ready]").await;
    if let Some(path) = std::env::var_os("SOCKEYE_CONSOLE_DOCS_SCREENSHOT") {
        docs_load(&server).await;
        let path = PathBuf::from(path);
        let written = console.run(json!({"do": "screenshot", "path": path})).await;
        eprintln!("docs screenshot: {written}");
    }
    // Subscribed after the docs' load: a client that reads nothing for a
    // minute is closed by the heartbeat.
    let mut subscriber = server
        .client_with_user_agent("load-subscriber", "console-test-load/1.0")
        .await;
    subscriber.subscribe("orders.eu", None).await;
    let before = console.figures("#figures").await;
    let published_before = number(&before["messages_in_total"]);
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish_in_background(
        &server,
        "orders.eu",
        2000,
        Duration::from_millis(10),
        Arc::clone(&stop),
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let figures = loop {
        let figures = console.figures("#figures").await;
        let charts = console.run(json!({"do": "charts"})).await;
        // At least 20 of this client's messages counted, so the page did
        // not just show an earlier load.
        let moving = number(&figures["messages_in_total"]) >= published_before + 20.0
            && number(&figures["messages_in_rate"]) > 0.0
            && number(&figures["deliveries_rate"]) > 0.0
            && number(&figures["latency_p99"]) > 0.0
            && charts["messages"]["points"].as_u64().unwrap() >= 3
            && charts["latency"]["legend"]["p99"] != json!("");
        if moving {
            break figures;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the overview did not move: {figures} {charts}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(number(&figures["connections"]) >= 2.0, "{figures}");
    assert!(number(&figures["store_bytes"]) > 0.0, "{figures}");
    assert!(number(&figures["memory_bytes"]) > 0.0, "{figures}");
    for figure in [
        "uptime",
        "topics",
        "store_bytes",
        "memory_bytes",
        "deliveries_total",
    ] {
        assert!(figures[figure]["text"] != json!("—"), "{figures}");
    }
    console.screenshot("overview").await;
    stop.store(true, Ordering::Relaxed);
    let sent = tokio::time::timeout(WAIT, publisher)
        .await
        .unwrap()
        .unwrap();
    assert!(sent >= 20, "{sent}");
    let orders_last = 120 + sent;

    // Topics: search by prefix, page through.
    console.click("nav a[data-view=topics]").await;
    console.wait("#topics[data-state=ready]").await;
    console.select("#topics-limit", "10").await;
    console.fill("#topic-search", "fleet.").await;
    console
        .click("#topic-search-form button[type=submit]")
        .await;
    let names = |rows: &[Value]| -> Vec<String> {
        rows.iter()
            .map(|row| row["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let trucks = |range: std::ops::Range<u32>| -> Vec<String> {
        range.map(|n| format!("fleet.truck-{n:02}")).collect()
    };
    let first_page = trucks(0..10);
    console
        .rows_until("#topics-table", "the first page of trucks", |rows| {
            names(rows) == first_page
        })
        .await;
    assert!(console.disabled("#topics-prev").await);
    console.click("#topics-next").await;
    let second_page = trucks(10..20);
    console
        .rows_until("#topics-table", "the second page", |rows| {
            names(rows) == second_page
        })
        .await;
    assert_eq!(console.text("#topics-page").await, "page 2");
    console.click("#topics-next").await;
    let last_page = trucks(20..25);
    console
        .rows_until("#topics-table", "the last page", |rows| {
            names(rows) == last_page
        })
        .await;
    assert!(console.disabled("#topics-next").await);
    console.click("#topics-prev").await;
    console
        .rows_until("#topics-table", "the second page again", |rows| {
            names(rows) == second_page
        })
        .await;
    console.fill("#topic-search", "orders.").await;
    console
        .click("#topic-search-form button[type=submit]")
        .await;
    let rows = console
        .rows_until("#topics-table", "the orders topics", |rows| {
            names(rows) == ["orders.eu", "orders.us"]
        })
        .await;
    let (_, info) = server.get("/v1/topics/orders.eu").await;
    assert_eq!(info["last_offset"], json!(orders_last));
    let eu = &rows[0];
    assert_eq!(eu["kind"], "stored");
    assert_eq!(eu["subscribers"], "1");
    assert_eq!(eu["first_offset"], "1");
    assert_eq!(eu["last_offset"], orders_last.to_string());
    assert_eq!(eu["epoch"], info["epoch"].to_string());
    console.screenshot("topics").await;

    // A topic's history, paged by offset.
    console.click("#topics-table a:text-is('orders.eu')").await;
    console.wait("#topic[data-state=ready]").await;
    assert_eq!(console.text("#topic-name").await, "orders.eu");
    let offsets = |rows: &[Value]| -> Vec<u64> {
        rows.iter()
            .map(|row| row["offset"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let range = |from: u64, to: u64| -> Vec<u64> { (from..=to).collect() };
    let rows = console
        .rows_until("#history-table", "offsets 1 to 50", |rows| {
            offsets(rows) == range(1, 50)
        })
        .await;
    assert_eq!(rows[0]["payload"], r#"{"order":1}"#);
    assert_eq!(rows[0]["publisher"], "admin-api");
    assert_eq!(rows[0]["type"], "map, 8 B");
    console.click("#history-next").await;
    console
        .rows_until("#history-table", "offsets 51 to 100", |rows| {
            offsets(rows) == range(51, 100)
        })
        .await;
    console.click("#history-prev").await;
    console
        .rows_until("#history-table", "offsets 1 to 50 again", |rows| {
            offsets(rows) == range(1, 50)
        })
        .await;
    console.fill("#history-from", "77").await;
    console.click("#history-form button[type=submit]").await;
    console
        .rows_until("#history-table", "offsets from 77", |rows| {
            offsets(rows) == range(77, 126)
        })
        .await;
    console.click("#history-newest").await;
    let newest = console
        .rows_until("#history-table", "the newest page", |rows| {
            offsets(rows).last() == Some(&orders_last)
        })
        .await;
    assert_eq!(newest.len(), 50);
    assert!(console.disabled("#history-next").await);
    assert_eq!(
        newest.last().unwrap()["publisher"],
        "load-publisher",
        "{newest:?}"
    );

    // Publish from the form; a WebSocket subscriber gets it.
    let mut watcher = server
        .client_with_user_agent("watcher", "console-test-watcher/1.0")
        .await;
    watcher.subscribe("orders.eu", None).await;
    console
        .fill(
            "#publish-payload",
            r#"{"order": 9000, "note": "from the console"}"#,
        )
        .await;
    console.click("#publish").await;
    console.wait("#publish-result[data-state=published]").await;
    let delivery = watcher.delivery().await;
    assert_eq!(delivery.topic, "orders.eu");
    assert_eq!(delivery.publisher, "ops");
    assert_eq!(delivery.offset, orders_last + 1);
    assert_eq!(
        rmp_serde::from_slice::<Value>(delivery.payload.as_msgpack()).unwrap(),
        json!({"order": 9000, "note": "from the console"})
    );
    assert_eq!(
        console.text("#publish-result").await,
        format!(
            "Published at offset {} (epoch {}).",
            delivery.offset, delivery.epoch
        )
    );
    // The newest page shows it.
    let rows = console
        .rows_until("#history-table", "the published message", |rows| {
            offsets(rows).last() == Some(&(orders_last + 1))
        })
        .await;
    assert_eq!(
        rows.last().unwrap()["payload"],
        r#"{"note":"from the console","order":9000}"#
    );
    assert_eq!(rows.last().unwrap()["publisher"], "ops");
    // Bytes written in hex arrive as a binary payload.
    console.select("#publish-encoding", "hex").await;
    console.fill("#publish-payload", "ca fe 00 01").await;
    console.click("#publish").await;
    let delivery = watcher.delivery().await;
    assert_eq!(
        delivery.payload.as_binary(),
        Some(&[0xca, 0xfe, 0x00, 0x01][..])
    );
    let rows = console
        .rows_until("#history-table", "the bytes", |rows| {
            offsets(rows).last() == Some(&(orders_last + 2))
        })
        .await;
    assert_eq!(rows.last().unwrap()["payload"], "ca fe 00 01");
    assert_eq!(rows.last().unwrap()["type"], "bin, 6 B");
    // The page refuses what it cannot send, and says why.
    console.select("#publish-encoding", "json").await;
    console.fill("#publish-payload", "{not json").await;
    console.click("#publish").await;
    console.wait("#publish-result[data-state=invalid]").await;
    assert!(
        console
            .text("#publish-result")
            .await
            .starts_with("Not sent: the payload is not JSON"),
    );
    console.screenshot("topic").await;

    // Payloads MessagePack has and JSON has not, shown exactly.
    console.click("nav a[data-view=topics]").await;
    console.fill("#topic-search", "payloads.").await;
    console
        .click("#topic-search-form button[type=submit]")
        .await;
    console
        .rows_until("#topics-table", "the payloads topic", |rows| {
            names(rows) == ["payloads.mixed"]
        })
        .await;
    console
        .click("#topics-table a:text-is('payloads.mixed')")
        .await;
    let rows = console
        .rows_until("#history-table", "the payloads", |rows| {
            offsets(rows) == range(1, payloads.len() as u64)
        })
        .await;
    for (row, (bytes, kind, text)) in rows.iter().zip(&payloads) {
        assert_eq!(row["payload"], *text, "{bytes:02x?}");
        assert_eq!(row["type"], *kind, "{bytes:02x?}");
    }
    console.screenshot("payloads").await;

    // Delete the history, after typing the topic's name.
    let (_, before) = server.get("/v1/topics/payloads.mixed").await;
    console.click("#delete-history").await;
    console.wait("#confirm-delete").await;
    assert!(console.disabled("#confirm-delete-go").await);
    console.fill("#confirm-delete-name", "payloads.mixe").await;
    assert!(console.disabled("#confirm-delete-go").await);
    console.fill("#confirm-delete-name", "payloads.mixed").await;
    console.screenshot("delete-history").await;
    console.click("#confirm-delete-go").await;
    console.wait_text("#notice", "was deleted").await;
    let (_, after) = server.get("/v1/topics/payloads.mixed").await;
    assert_eq!(after["stored_messages"], 0);
    assert_ne!(after["epoch"], before["epoch"]);
    assert_eq!(
        console.text("#notice").await,
        format!(
            "The history of payloads.mixed was deleted; new epoch {}.",
            after["epoch"]
        )
    );
    console
        .rows_until("#history-table", "an empty history", |rows| rows.is_empty())
        .await;

    // Connections: find one and disconnect it; its client gets 4001.
    let mut doomed = server
        .client_with_user_agent("kick-me", "console-test/1.0")
        .await;
    console.click("nav a[data-view=connections]").await;
    console.wait("#connections[data-state=ready]").await;
    let id = doomed.welcome.connection_id.to_string();
    let rows = console
        .rows_until("#connections-table", "the connection to kick", |rows| {
            rows.iter().any(|row| row["sub"] == "kick-me")
        })
        .await;
    let row = rows.iter().find(|row| row["sub"] == "kick-me").unwrap();
    assert_eq!(row["id"], id);
    assert_eq!(row["user_agent"], "console-test/1.0");
    assert!(row["remote"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(row["subscriptions"], "none");
    let watcher_row = rows.iter().find(|row| row["sub"] == "watcher").unwrap();
    assert_eq!(watcher_row["subscriptions"], "orders.eu");
    assert_eq!(watcher_row["messages"], "0 / 2");
    console.screenshot("connections").await;
    console
        .click(&format!("button[data-disconnect='{id}']"))
        .await;
    console.wait("#confirm-disconnect").await;
    console.fill("#disconnect-reason", "console test").await;
    console.click("#confirm-disconnect-go").await;
    assert_eq!(doomed.closed().await, (4001, "console test".to_owned()));
    console.wait_text("#notice", "is being closed").await;
    assert_eq!(
        console.text("#notice").await,
        format!("Connection {id} is being closed with code 4001 (“console test”).")
    );
    drop(doomed);
    // The broker lists a connection until its close handshake ends: the
    // operator refreshes until it is gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        console.click("#connections-refresh").await;
        console.wait("#connections[data-state=ready]").await;
        let rows = console.rows("#connections-table").await;
        if rows.iter().all(|row| row["sub"] != "kick-me") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the kicked connection is still listed: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An API error in a view is the API's own.
    console
        .run(json!({"do": "goto", "url": server.admin_url("/console/#/topics/no.such.topic")}))
        .await;
    let (status, code, message) = console.error("#error").await;
    let (api_status, api_code, api_message) =
        api_error(&server, "/v1/topics/no.such.topic", &token).await;
    assert_eq!(
        (status, code, message),
        (api_status.to_string(), api_code, api_message)
    );
    assert!(console.visible("[data-missing=topic_not_found]").await);
    assert!(!console.visible("#history-panel").await);
    assert!(console.disabled("#delete-history").await);
    console.screenshot("api-error").await;
    // Publishing gives the topic its first message; the error goes away.
    console.fill("#publish-payload", r#"{"first": true}"#).await;
    console.click("#publish").await;
    console.wait("#publish-result[data-state=published]").await;
    assert_eq!(
        console.text("#publish-result").await,
        format!(
            "Published at offset 1 (epoch {}).",
            server.get("/v1/topics/no.such.topic").await.1["epoch"]
        )
    );
    let rows = console
        .rows_until("#history-table", "the new topic's message", |rows| {
            offsets(rows) == [1]
        })
        .await;
    assert_eq!(rows[0]["payload"], r#"{"first":true}"#);
    assert!(!console.visible("#error").await);

    // A reload keeps the session; signing out ends it.
    console.run(json!({"do": "reload"})).await;
    console.wait("body[data-signed-in=true]").await;
    console.click("#sign-out").await;
    console.wait("#signin-form").await;
    let storage = console.run(json!({"do": "storage"})).await;
    assert_eq!(storage["session"], json!({}));

    let report = console.finish().await;
    for url in report["requests"].as_array().unwrap() {
        let url = url.as_str().unwrap();
        assert!(!url.contains(&token), "the credential is in a URL: {url}");
        assert!(url.starts_with(&server.admin_url("/")), "{url}");
    }
    drop(subscriber);
}

/// Two and a half minutes of load that varies, so the overview in the docs
/// shows rates moving: a few publishers at rates that rise and fall,
/// subscribers on their topics, connections coming and going.
async fn docs_load(server: &TestBroker) {
    const SECONDS: u64 = 150;
    let mut subscribers = Vec::new();
    for (n, topic) in ["shop.orders", "shop.payments", "sensors.temperature"]
        .iter()
        .enumerate()
    {
        for k in 0..=n {
            let mut client = server
                .client_with_user_agent(&format!("dashboard-{n}-{k}"), "console-docs/1.0")
                .await;
            client.subscribe(topic, None).await;
            subscribers.push(tokio::spawn(async move {
                // Keep reading so the subscriber never becomes slow.
                loop {
                    client.recv().await;
                }
            }));
        }
    }
    let published = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let mut publishers = Vec::new();
    for (n, topic) in ["shop.orders", "shop.payments", "sensors.temperature"]
        .into_iter()
        .enumerate()
    {
        let mut client = server
            .client_with_user_agent(&format!("service-{n}"), "console-docs/1.0")
            .await;
        let published = Arc::clone(&published);
        publishers.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while start.elapsed() < Duration::from_secs(SECONDS) && sent < 200_000 {
                // Rates follow slow waves, each topic its own.
                let phase = start.elapsed().as_secs_f64() / 15.0 + n as f64 * 2.0;
                let per_second = 60.0 + 55.0 * phase.sin() + 20.0 * n as f64;
                sent += 1;
                client
                    .publish(topic, json_payload(&json!({"seq": sent, "topic": topic})))
                    .await;
                published.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs_f64(1.0 / per_second.max(5.0))).await;
            }
        }));
    }
    // Short-lived connections come and go.
    let mut visitors = Vec::new();
    while start.elapsed() < Duration::from_secs(SECONDS) {
        let second = start.elapsed().as_secs();
        if second % 10 < 5 {
            if visitors.len() < 8 {
                visitors.push(
                    server
                        .client_with_user_agent("visitor", "console-docs/1.0")
                        .await,
                );
            }
        } else {
            visitors.pop();
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    for subscriber in subscribers {
        subscriber.abort();
    }
    assert!(published.load(Ordering::Relaxed) > 0);
}
