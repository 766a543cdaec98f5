//! `sockeye serve` runs the admin API on its own listener next to the
//! broker (`--admin-listen` overrides `admin.listen`), stops it with the
//! broker on SIGTERM, and does not bind it when `admin.enabled = false`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use support::{Serve, WAIT, mint};

#[tokio::test]
async fn serve_runs_the_admin_api_on_its_own_listener_and_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &["--admin-listen", "127.0.0.1:0"]).await;
    let admin = serve
        .listen_address("admin API")
        .expect("the admin listener is logged");
    assert_ne!(admin, serve.addr);
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
    let token = mint(dir.path(), &["--sub", "ops", "--admin"]).await;
    let stats = http
        .get(format!("http://{admin}/v1/stats"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 200);
    let user_token = mint(dir.path(), &["--sub", "user"]).await;
    let forbidden = http
        .get(format!("http://{admin}/v1/stats"))
        .bearer_auth(&user_token)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);

    serve.terminate().await;
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin listener is closed after shutdown"
    );
}

#[tokio::test]
async fn serve_without_admin_binds_no_admin_listener() {
    // A loopback address nothing listens on; it is configured as the admin
    // listener, with the admin API disabled.
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(std::net::TcpStream::connect(admin).is_err());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("no-admin.toml");
    std::fs::write(
        &config,
        format!("[admin]\nenabled = false\nlisten = \"{admin}\"\n"),
    )
    .unwrap();
    let serve = Serve::start(dir.path(), &["--config", config.to_str().unwrap()]).await;
    assert_eq!(serve.listen_address("admin API"), None, "{:#?}", serve.log);
    // The broker itself serves, and nothing accepts at the admin address.
    let health = reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .unwrap()
        .get(format!("http://{}/healthz", serve.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let refused = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(admin))
        .await
        .expect("the connect attempt ends");
    assert!(
        refused.is_err(),
        "something accepts at the disabled admin address {admin}"
    );
    serve.terminate().await;
}
