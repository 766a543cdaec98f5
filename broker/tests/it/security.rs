//! TLS with hot reload, origin checks, and abuse limits: each refusal gets
//! its documented status and is counted.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rustls::pki_types::{CertificateDer, ServerName};
use sockeye_broker::Stats;
use sockeye_protocol::{ClientMessage, ErrorCode, Payload, ServerMessage};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use sockeye_testkit::{Carrier, Client, TestBroker, WAIT};

/// Writes a fresh self-signed certificate for `localhost` and returns its DER.
fn write_certificate(dir: &std::path::Path) -> CertificateDer<'static> {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), generated.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), generated.signing_key.serialize_pem()).unwrap();
    generated.cert.der().clone()
}

/// Opens a `wss://` connection trusting only `trusted`; returns the
/// certificate the server presented and the welcome's subject.
async fn connect_tls(
    broker: &TestBroker,
    trusted: &CertificateDer<'static>,
) -> Result<(CertificateDer<'static>, String), String> {
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
    let tcp = TcpStream::connect(broker.addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|err| err.to_string())?;
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let mut request = format!("wss://localhost:{}/ws", broker.addr.port())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", broker.token("tls-user"))).unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::client_async(request, tls)
        .await
        .map_err(|err| err.to_string())?;
    let frame = match socket.next().await.unwrap().unwrap() {
        tokio_tungstenite::tungstenite::Message::Binary(frame) => frame,
        other => panic!("expected welcome, got {other:?}"),
    };
    let body = sockeye_protocol::frame::open(&frame, 1 << 20).unwrap();
    match ServerMessage::decode(&body).unwrap() {
        ServerMessage::Welcome(welcome) => Ok((presented, welcome.subject)),
        other => panic!("expected welcome, got {other:?}"),
    }
}

#[tokio::test]
async fn wss_is_served_and_a_replaced_certificate_is_picked_up_on_reload_and_on_change() {
    let certs = tempfile::tempdir().unwrap();
    let first = write_certificate(certs.path());
    let dir = certs.path().to_path_buf();
    let broker = TestBroker::start_with(|config| {
        config.tls.cert_file = Some(dir.join("cert.pem"));
        config.tls.key_file = Some(dir.join("key.pem"));
        config.tls.watch_interval = Duration::from_millis(100);
    })
    .await;
    let (presented, subject) = connect_tls(&broker, &first).await.unwrap();
    assert_eq!((presented, subject.as_str()), (first.clone(), "tls-user"));

    // Plain WebSocket is not served on a TLS listener.
    let plain = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(broker.url()))
        .await
        .unwrap();
    assert!(plain.is_err(), "a plain handshake must fail on a TLS port");

    // A new certificate on disk is served after an explicit reload (SIGHUP).
    let second = write_certificate(certs.path());
    broker.broker.reload_tls().unwrap();
    let (presented, _) = connect_tls(&broker, &second).await.unwrap();
    assert_eq!(presented, second);
    assert!(
        connect_tls(&broker, &first).await.is_err(),
        "the old certificate is gone"
    );

    // And without one, once the watcher sees the files change.
    tokio::time::sleep(Duration::from_millis(1100)).await; // a distinct mtime
    let third = write_certificate(certs.path());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok((presented, _)) = connect_tls(&broker, &third).await {
            assert_eq!(presented, third);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher never reloaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A broken file is refused and the current certificate stays.
    std::fs::write(certs.path().join("cert.pem"), "not a certificate").unwrap();
    assert!(broker.broker.reload_tls().is_err());
    assert!(connect_tls(&broker, &third).await.is_ok());
}

async fn connect_with_origin(broker: &TestBroker, origin: &str) -> Result<Client, u16> {
    let mut request = broker.url().into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", broker.token("web"))).unwrap(),
    );
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_str(origin).unwrap());
    Client::connect_request(request)
        .await
        .map_err(|refused| refused.status)
}

#[tokio::test]
async fn by_default_only_the_brokers_own_origin_may_connect_from_a_browser() {
    let broker = TestBroker::start().await;
    let own = format!("http://{}", broker.addr);
    assert!(connect_with_origin(&broker, &own).await.is_ok());
    assert_eq!(
        connect_with_origin(&broker, "https://evil.example")
            .await
            .err(),
        Some(403)
    );
    // Clients without an Origin header (services) are unaffected.
    broker.client("service").await;
    assert_eq!(Stats::get(&broker.broker.stats().origin_refused), 1);
}

#[tokio::test]
async fn an_allow_list_admits_exact_origins_and_subdomains() {
    let broker = TestBroker::start_with(|config| {
        config.server.allowed_origins = vec![
            "https://app.example.com".into(),
            "https://*.tenant.example".into(),
        ];
    })
    .await;
    assert!(
        connect_with_origin(&broker, "https://app.example.com")
            .await
            .is_ok()
    );
    assert!(
        connect_with_origin(&broker, "https://a.tenant.example")
            .await
            .is_ok()
    );
    assert_eq!(
        connect_with_origin(&broker, "https://app.example.com.evil")
            .await
            .err(),
        Some(403)
    );
    assert_eq!(
        connect_with_origin(&broker, "http://app.example.com")
            .await
            .err(),
        Some(403)
    );
}

async fn connect_from(
    broker: &TestBroker,
    source: &str,
) -> Result<Client, sockeye_testkit::Refused> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(broker.addr).await.unwrap();
    let mut request = broker.url().into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", broker.token("ip"))).unwrap(),
    );
    match tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
        .await
    {
        Ok((ws, _)) => {
            let mut ws = ws;
            // The welcome.
            ws.next().await.unwrap().unwrap();
            Ok(Client::from_socket(ws))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(sockeye_testkit::Refused {
                status: response.status().as_u16(),
                body: serde_json::Value::Null,
                retry_after: response
                    .headers()
                    .get("retry-after")
                    .map(|value| value.to_str().unwrap().to_owned()),
            })
        }
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn connections_per_ip_are_capped_with_429() {
    let broker = TestBroker::start_with(|config| config.server.max_connections_per_ip = 2).await;
    let _a = connect_from(&broker, "127.0.0.1").await.unwrap();
    let _b = connect_from(&broker, "127.0.0.1").await.unwrap();
    let refused = connect_from(&broker, "127.0.0.1").await.err().unwrap();
    assert_eq!(refused.status, 429);
    assert!(refused.retry_after.is_some());
    // Another address is not affected.
    let _c = connect_from(&broker, "127.0.0.2").await.unwrap();
    assert_eq!(Stats::get(&broker.broker.stats().per_ip_refused), 1);
    // Closing one frees a slot for that address.
    drop(_a);
    let deadline = tokio::time::Instant::now() + WAIT;
    while connect_from(&broker, "127.0.0.1").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn handshakes_over_the_rate_get_503_before_any_token_check() {
    let broker = TestBroker::start_with(|config| {
        config.server.handshake_rate = 1;
        config.server.handshake_burst = 2;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        // Even a bad token is refused by the rate limit first.
        let result = Client::connect(&broker.url(), Carrier::Header, "bad").await;
        statuses.push(result.err().unwrap().status);
    }
    assert_eq!(&statuses[..2], &[401, 401]);
    assert!(statuses[2..].contains(&503), "{statuses:?}");
    assert!(Stats::get(&broker.broker.stats().handshake_rate_refused) >= 1);
}

#[tokio::test]
async fn a_client_that_never_sends_its_upgrade_request_is_disconnected() {
    let broker = TestBroker::start_with(|config| {
        config.server.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let mut idle = TcpStream::connect(broker.addr).await.unwrap();
    let mut buffer = [0u8; 256];
    // The broker closes the socket (EOF, perhaps after a 408) within the timeout.
    let read = tokio::time::timeout(WAIT, async {
        loop {
            match idle.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the idle socket was never closed");
    assert!(Stats::get(&broker.broker.stats().handshake_timeouts) >= 1);
}

#[tokio::test]
async fn publishing_more_bytes_per_second_than_allowed_is_rate_limited() {
    let broker = TestBroker::start_with(|config| {
        config.limits.max_frame_size = bytesize::ByteSize::kib(16);
        config.limits.publish_bytes_rate = bytesize::ByteSize::kib(1);
    })
    .await;
    let mut client = broker.client("bytes").await;
    let mut limited = 0;
    for _ in 0..10 {
        let id = client.next_id();
        let reply = client
            .request(ClientMessage::Publish {
                id,
                topic: "b".into(),
                payload: Payload::binary(&[1u8; 4096]),
                ack: true,
            })
            .await;
        if let ServerMessage::Error { code, .. } = reply {
            assert_eq!(code, ErrorCode::RateLimited);
            limited += 1;
        }
    }
    // 16 KiB of burst: four 4 KiB publishes pass, the rest are refused.
    assert!(limited >= 5, "{limited} refused");
    assert_eq!(
        Stats::get(&broker.broker.stats().bytes_rate_limited),
        limited
    );
}

async fn connect_forwarded_for(broker: &TestBroker, client: &str) -> Result<Client, u16> {
    let mut request = broker.url().into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {}", broker.token("behind-proxy"))).unwrap(),
    );
    request
        .headers_mut()
        .insert("x-forwarded-for", HeaderValue::from_str(client).unwrap());
    Client::connect_request(request)
        .await
        .map_err(|refused| refused.status)
}

#[tokio::test]
async fn behind_a_trusted_proxy_per_ip_limits_count_forwarded_clients() {
    let broker = TestBroker::start_with(|config| {
        config.server.max_connections_per_ip = 1;
        config.server.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    let _first = connect_forwarded_for(&broker, "198.51.100.1")
        .await
        .unwrap();
    let _second = connect_forwarded_for(&broker, "198.51.100.2")
        .await
        .unwrap();
    assert_eq!(
        connect_forwarded_for(&broker, "198.51.100.1").await.err(),
        Some(429)
    );
    let mut addresses: Vec<String> = broker
        .broker
        .connections(None, 10)
        .iter()
        .map(|peer| peer.remote.ip().to_string())
        .collect();
    addresses.sort();
    assert_eq!(addresses, ["198.51.100.1", "198.51.100.2"]);
}

#[tokio::test]
async fn forwarded_addresses_from_untrusted_peers_are_ignored() {
    let broker = TestBroker::start_with(|config| config.server.max_connections_per_ip = 1).await;
    let _first = connect_forwarded_for(&broker, "198.51.100.1")
        .await
        .unwrap();
    // A client cannot dodge the limit by claiming another address.
    assert_eq!(
        connect_forwarded_for(&broker, "198.51.100.2").await.err(),
        Some(429)
    );
}
