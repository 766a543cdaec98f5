//! The Swagger UI in a real headless browser, with every host but loopback
//! unresolvable: the page must render the API's routes from files the
//! binary serves. Needs Debian's `chromium` (CI installs it); without it the
//! test fails rather than skips.

use std::path::PathBuf;
use std::process::Stdio;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::process::Command;

use sockeye_testkit::{TestBroker, WAIT};

fn chromium() -> PathBuf {
    let candidates = [
        std::env::var_os("CHROMIUM").map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/chromium")),
        Some(PathBuf::from("/usr/bin/chromium-browser")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|path| path.exists())
        .expect(
            "the Swagger UI test needs chromium: `apt-get install -y chromium` (or set CHROMIUM)",
        )
}

/// The DOM of `url` after its scripts ran, as headless chromium renders it.
async fn rendered_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            // No network: every name but the loopback address fails to resolve.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    let output = tokio::time::timeout(WAIT * 3, child.wait_with_output())
        .await
        .expect("chromium finishes in time")
        .unwrap();
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn the_swagger_ui_renders_every_route_offline() {
    let server = TestBroker::start_admin().await;
    let response = server.anonymous(Method::GET, "/docs").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let page = server
        .anonymous(Method::GET, "/docs/")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );

    let dom = rendered_dom(&server.admin_url("/docs/")).await;
    assert!(
        dom.contains("Sockeye admin API"),
        "the title is rendered:\n{dom}"
    );
    let document: Value = serde_json::from_str(&sockeye_admin::openapi_json()).unwrap();
    let paths = document["paths"].as_object().unwrap();
    assert!(paths.len() >= 14);
    for path in paths.keys() {
        assert!(
            dom.contains(&format!("data-path=\"{path}\"")),
            "the UI does not list {path}:\n{dom}"
        );
    }
}
