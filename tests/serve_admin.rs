//! `sockeye serve` runs the admin API on its own listener next to the
//! broker (`--admin-listen` overrides `admin.listen`), stops it with the
//! broker on SIGTERM, and does not bind it when `admin.enabled = false`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_sockeye");
const WAIT: Duration = Duration::from_secs(30);

/// Starts `sockeye serve` on free ports and returns it with the log lines
/// up to the one saying the WebSocket listener is up.
async fn start(data_dir: &Path, extra: &[&str]) -> (Child, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("serving WebSocket clients");
            seen.push(line);
            if done {
                return;
            }
        }
        panic!("sockeye exited early: {seen:#?}");
    })
    .await
    .expect("sockeye starts in time");
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, seen)
}

/// The `listen=ADDR` field of the log line containing `what`.
fn listen_address(lines: &[String], what: &str) -> Option<SocketAddr> {
    let line = lines.iter().find(|line| line.contains(what))?;
    let field = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("listen="))?;
    Some(field.parse().unwrap())
}

async fn terminate(mut child: Child) {
    let pid = child.id().unwrap().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("sockeye stops in time on SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit}");
}

#[tokio::test]
async fn serve_runs_the_admin_api_on_its_own_listener_and_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let (child, log) = start(dir.path(), &["--admin-listen", "127.0.0.1:0"]).await;
    let admin = listen_address(&log, "admin API").expect("the admin listener is logged");
    let ws = listen_address(&log, "WebSocket clients").unwrap();
    assert_ne!(admin, ws);
    assert!(admin.ip().is_loopback());

    let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
    let health = http
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let refused = http
        .get(format!("http://{admin}/v1/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // A token minted by `sockeye token --admin` opens the API.
    let output = Command::new(BIN)
        .args(["token", "--sub", "ops", "--admin", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let stats = http
        .get(format!("http://{admin}/v1/stats"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 200);
    let user = Command::new(BIN)
        .args(["token", "--sub", "user", "--data-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    let user_token = String::from_utf8(user.stdout).unwrap().trim().to_owned();
    let forbidden = http
        .get(format!("http://{admin}/v1/stats"))
        .bearer_auth(&user_token)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);

    terminate(child).await;
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin listener is closed after shutdown"
    );
}

#[tokio::test]
async fn serve_without_admin_binds_no_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("no-admin.toml");
    std::fs::write(&config, "[admin]\nenabled = false\n").unwrap();
    let (child, log) = start(dir.path(), &["--config", config.to_str().unwrap()]).await;
    assert_eq!(listen_address(&log, "admin API"), None, "{log:#?}");
    assert!(listen_address(&log, "WebSocket clients").is_some());
    terminate(child).await;
}
