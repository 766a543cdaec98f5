//! `examples/admin-curl.sh` against a real broker and its admin API: every
//! step succeeds and prints what docs/admin.md says it does.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sockeye_broker::Claims;
use sockeye_broker::auth::unix_now;
use sockeye_testkit::TestBroker;

#[tokio::test]
async fn the_curl_walkthrough_runs_against_a_live_admin_api() {
    let broker = TestBroker::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(sockeye_admin::serve(
        broker.broker.clone(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let token = broker
        .broker
        .authenticator()
        .mint(Claims {
            sub: "ops".into(),
            exp: Some(unix_now() + 600),
            admin: true,
            ..Claims::default()
        })
        .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../admin-curl.sh");
    // Each curl in the script gives up after 30 s; this bounds the whole run.
    let output = tokio::process::Command::new("bash")
        .arg(script)
        .arg("demo.curl")
        .env("ADMIN", format!("http://{admin_addr}"))
        .env("TOKEN", token)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("the script finishes in time")
        .expect("bash runs");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "the script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let step = |name: &str| {
        let start = stdout
            .find(&format!("== {name}"))
            .unwrap_or_else(|| panic!("no step `{name}` in:\n{stdout}"));
        let rest = &stdout[start..];
        let end = rest[3..].find("\n== ").map_or(rest.len(), |end| end + 3);
        rest[..end].to_owned()
    };
    assert!(step("health").contains("ok"));
    let published = step("publish two messages");
    assert!(
        published.contains("\"offset\":1") && published.contains("\"offset\":2"),
        "{published}"
    );
    assert!(step("topic demo.curl").contains("\"last_offset\":2"));
    assert!(step("history of demo.curl\n").contains("\"offset\":2"));
    assert!(step("stats").contains("\"connections\""));
    let after = step("history of demo.curl after the delete");
    assert!(
        !after.contains("\"offset\""),
        "history is empty after the delete: {after}"
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), admin)
        .await
        .expect("the admin API stops in time")
        .unwrap();
}
