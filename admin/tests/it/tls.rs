//! The admin listener over TLS: with `tls.admin = true` it speaks HTTPS only,
//! with the broker's certificate; without it, it stays plain HTTP even when
//! the WebSocket listener uses TLS.

use std::sync::Arc;

use reqwest::StatusCode;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use sockeye_testkit::TestBroker;
use sockeye_testkit::http::API_KEY;

/// Writes a fresh self-signed certificate for `localhost` and returns its DER.
fn write_certificate(dir: &std::path::Path) -> CertificateDer<'static> {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), generated.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), generated.signing_key.serialize_pem()).unwrap();
    generated.cert.der().clone()
}

/// GET `path` over HTTPS trusting only `trusted`; returns the raw response.
async fn https_get(server: &TestBroker, trusted: &CertificateDer<'static>, path: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(server.admin_addr()).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {API_KEY}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tls.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            // A peer that closes without close_notify after a complete
            // `Connection: close` response is fine here.
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(err) => panic!("reading the response failed: {err}"),
        }
    }
    String::from_utf8(response).unwrap()
}

#[tokio::test]
async fn with_tls_admin_the_api_speaks_https_only() {
    let certs = tempfile::tempdir().unwrap();
    let trusted = write_certificate(certs.path());
    let dir = certs.path().to_path_buf();
    let server = TestBroker::start_admin_with(|config| {
        config.tls.cert_file = Some(dir.join("cert.pem"));
        config.tls.key_file = Some(dir.join("key.pem"));
        config.tls.admin = true;
    })
    .await;
    let health = https_get(&server, &trusted, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("{\"status\":\"ok\"}"), "{health}");
    let stats = https_get(&server, &trusted, "/v1/stats").await;
    assert!(stats.starts_with("HTTP/1.1 200"), "{stats}");
    assert!(stats.contains("\"uptime_seconds\""), "{stats}");
    let plain = server.http.get(server.admin_url("/healthz")).send().await;
    assert!(plain.is_err(), "plain HTTP is refused: {plain:?}");
}

#[tokio::test]
async fn without_tls_admin_the_api_stays_plain_http() {
    let certs = tempfile::tempdir().unwrap();
    write_certificate(certs.path());
    let dir = certs.path().to_path_buf();
    let server = TestBroker::start_admin_with(|config| {
        config.tls.cert_file = Some(dir.join("cert.pem"));
        config.tls.key_file = Some(dir.join("key.pem"));
    })
    .await;
    let (status, body) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
