//! Sockeye behind the reverse proxies that docs/security.md recommends: the
//! configs in `deploy/` are rendered with free loopback ports and run with
//! the real nginx and HAProxy from Debian in front of two real `sockeye serve`
//! processes. Through each proxy: every handshake token carrier, refusals
//! (401, 403), a pub/sub round trip, a resume after reconnecting, and sticky
//! sessions by the `shard` query parameter; and a broker that trusts the
//! proxy applying `max_connections_per_ip` to each forwarded client. With a
//! header-capturing backend instead of brokers: what the proxy forwards
//! (upgrade headers, Host, X-Forwarded-For with the client's own entry).
//!
//! nginx and HAProxy must be installed (`apt-get install nginx haproxy`);
//! the tests fail, not skip, without them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sockeye_protocol::{ClientMessage, Payload, Position, ServerMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use support::{Serve, Socket, WAIT, handshake, mint, recv, send};

/// The brokers' shared HS256 secret, so a token works on either of them.
const SECRET: &str = "proxies-test-secret-0123456789abcdef-0123456789abcdef";
const NGINX_TEMPLATE: &str = include_str!("../deploy/nginx/sockeye.conf");
const HAPROXY_TEMPLATE: &str = include_str!("../deploy/haproxy/haproxy.cfg");
/// Ports tried for a proxy before giving up on `Address already in use`.
const PROXY_PORT_ATTEMPTS: usize = 5;

/// A loopback port that was free a moment ago. Only for nginx and HAProxy,
/// which cannot report a port chosen by the kernel; `start_proxy` retries
/// with another one if the port was taken meanwhile.
fn unused_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A child process that is stopped by its PID when dropped: SIGTERM first
/// (nginx's master then stops its workers), SIGKILL if it lingers.
struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, command: &mut Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        Self { name, child, log }
    }

    /// The exit status and log, if the process has exited.
    fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().unwrap()?;
        Some(format!(
            "{} exited with {status}:\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        ))
    }

    /// Panics with the process's log if it has exited.
    fn assert_running(&mut self) {
        if let Some(exit) = self.exited() {
            panic!("{exit}");
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = support::sigterm(self.child.id());
        for _ in 0..50 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of a program that must be installed, from PATH or the sbin
/// directories Debian installs daemons into.
fn installed(program: &str, package: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{program} is not installed; install it with `apt-get install {package}`")
        })
}

/// Sends one HTTP/1.1 request and returns the status code and body.
async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("no TCP connection within the wait"))??;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("no response"))??;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or("");
    Ok((status, body.to_owned()))
}

/// Waits until `GET /healthz` at `addr` answers 200; `Err` with its log if
/// `process` exits first.
async fn wait_healthy(addr: SocketAddr, process: &mut Process) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(exit) = process.exited() {
            return Err(exit);
        }
        if let Ok((200, _)) = http_get(addr, "/healthz").await {
            return Ok(());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} at {addr} never answered /healthz with 200",
            process.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two brokers that share a signing secret but nothing else (each has its
/// own data directory, so its own history).
struct Brokers {
    a: SocketAddr,
    b: SocketAddr,
    config: PathBuf,
    dir: tempfile::TempDir,
    _processes: Vec<Serve>,
}

/// Writes a broker config with the shared secret and `extra` TOML lines.
fn broker_config(dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("sockeye.toml");
    std::fs::write(
        &config,
        format!(
            "{extra}\n[admin]\nenabled = false\n[auth]\nsecret = \"{SECRET}\"\n\
             [shutdown]\ndrain_timeout = \"1s\"\nreconnect_spread = \"0s\"\n"
        ),
    )
    .unwrap();
    config
}

async fn start_brokers() -> Brokers {
    let dir = tempfile::tempdir().unwrap();
    let config = broker_config(dir.path(), "");
    let mut processes = Vec::new();
    for name in ["a", "b"] {
        let data = dir.path().join(name);
        processes.push(Serve::start(&data, &["--config", config.to_str().unwrap()]).await);
    }
    Brokers {
        a: processes[0].addr,
        b: processes[1].addr,
        config,
        dir,
        _processes: processes,
    }
}

/// A token from `sockeye token` with the given config (so its secret).
async fn mint_with(config: &Path, data_dir: &Path, sub: &str) -> String {
    let config = config.to_str().unwrap();
    mint(data_dir, &["--sub", sub, "--ttl", "1h", "--config", config]).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proxy {
    Nginx,
    Haproxy,
}

/// Renders the proxy's config from `deploy/` with the given ports and starts
/// it in the foreground, its files in `dir`; on a free port, retried if the
/// one picked was taken before the proxy bound it.
async fn start_proxy(
    kind: Proxy,
    dir: &Path,
    a: SocketAddr,
    b: SocketAddr,
) -> (SocketAddr, Process) {
    let mut last_exit = String::new();
    for _ in 0..PROXY_PORT_ATTEMPTS {
        let listen = unused_port();
        let mut process = spawn_proxy(kind, dir, listen, a, b);
        match wait_healthy(listen, &mut process).await {
            Ok(()) => return (listen, process),
            Err(exit) if exit.contains("Address already in use") => last_exit = exit,
            Err(exit) => panic!("{exit}"),
        }
    }
    panic!("no free port for {kind:?} in {PROXY_PORT_ATTEMPTS} attempts: {last_exit}");
}

fn spawn_proxy(
    kind: Proxy,
    dir: &Path,
    listen: SocketAddr,
    a: SocketAddr,
    b: SocketAddr,
) -> Process {
    let render = |template: &str| {
        template
            .replace("@LISTEN@", &listen.to_string())
            .replace("@BROKER_A@", &a.to_string())
            .replace("@BROKER_B@", &b.to_string())
    };
    match kind {
        Proxy::Nginx => {
            let nginx = installed("nginx", "nginx");
            let site = dir.join("sockeye.conf");
            std::fs::write(&site, render(NGINX_TEMPLATE)).unwrap();
            // The main file a distribution would provide around conf.d/,
            // with every path nginx writes inside `dir`.
            let d = dir.display();
            let main = format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n\
                 client_body_temp_path {d}/client_body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
                 scgi_temp_path {d}/scgi;\n  include {};\n}}\n",
                site.display()
            );
            let file = dir.join("nginx.conf");
            std::fs::write(&file, main).unwrap();
            Process::spawn(
                "nginx",
                Command::new(nginx)
                    .arg("-p")
                    .arg(dir)
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-c")
                    .arg(&file)
                    .args(["-g", "daemon off;"]),
                dir.join("nginx.out"),
            )
        }
        Proxy::Haproxy => {
            let haproxy = installed("haproxy", "haproxy");
            let file = dir.join("haproxy.cfg");
            std::fs::write(&file, render(HAPROXY_TEMPLATE)).unwrap();
            Process::spawn(
                "haproxy",
                Command::new(haproxy).arg("-f").arg(&file).arg("-db"),
                dir.join("haproxy.out"),
            )
        }
    }
}

/// Where the handshake carries the token.
enum Carrier<'a> {
    Header(&'a str),
    Query(&'a str),
    Subprotocol(&'a str),
}

/// Opens a WebSocket to `addr` at `/ws?shard=..`, with `extra_headers`
/// (such as `Origin`), and returns it with the welcome, or the handshake
/// error.
async fn connect(
    addr: SocketAddr,
    shard: &str,
    carrier: Carrier<'_>,
    extra_headers: &[(&'static str, &str)],
) -> Result<
    (
        Socket,
        ServerMessage,
        tungstenite::handshake::client::Response,
    ),
    tungstenite::Error,
> {
    let mut url = format!("ws://{addr}/ws?shard={shard}");
    if let Carrier::Query(token) = carrier {
        url.push_str(&format!("&token={token}"));
    }
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    match carrier {
        Carrier::Header(token) => {
            headers.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
        }
        Carrier::Subprotocol(token) => {
            headers.insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&format!("sockeye.v1, bearer.{token}")).unwrap(),
            );
        }
        Carrier::Query(_) => {}
    }
    for (name, value) in extra_headers {
        headers.append(*name, HeaderValue::from_str(value).unwrap());
    }
    let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("TCP connect within the wait")
        .unwrap();
    let (mut socket, response) = handshake(stream, request, None).await?;
    let welcome = recv(&mut socket).await;
    assert!(
        matches!(welcome, ServerMessage::Welcome(_)),
        "first frame is welcome: {welcome:?}"
    );
    Ok((socket, welcome, response))
}

/// The handshake's refusal: HTTP status and the JSON body's `code`.
fn refusal(result: Result<impl Sized, tungstenite::Error>) -> (u16, String) {
    match result {
        Err(tungstenite::Error::Http(response)) => {
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            (response.status().as_u16(), body)
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, the handshake succeeded"),
    }
}

async fn subscribe(
    socket: &mut Socket,
    id: u64,
    topic: &str,
    position: Option<Position>,
) -> sockeye_protocol::Subscribed {
    send(
        socket,
        ClientMessage::Subscribe {
            id,
            topic: topic.into(),
            position,
        },
    )
    .await;
    match recv(socket).await {
        ServerMessage::Subscribed(reply) if reply.id == id => reply,
        other => panic!("subscribe to {topic} failed: {other:?}"),
    }
}

/// Publishes with an ack and returns the stored offset.
async fn publish(socket: &mut Socket, id: u64, topic: &str, payload: &str) -> u64 {
    send(
        socket,
        ClientMessage::Publish {
            id,
            topic: topic.into(),
            payload: Payload::binary(payload.as_bytes()),
            ack: true,
        },
    )
    .await;
    match recv(socket).await {
        ServerMessage::Published {
            id: got, offset, ..
        } if got == id => offset,
        other => panic!("publish to {topic} failed: {other:?}"),
    }
}

/// Expects the next frame to be the delivery of `payload` at `offset`.
async fn expect_delivery(socket: &mut Socket, topic: &str, offset: u64, payload: &str) {
    match recv(socket).await {
        ServerMessage::Message(delivery) => {
            assert_eq!(delivery.topic, topic);
            assert_eq!(delivery.offset, offset);
            assert_eq!(delivery.payload.as_binary(), Some(payload.as_bytes()));
        }
        other => panic!("expected offset {offset} of {topic}, got {other:?}"),
    }
}

/// How many messages `topic` holds on the broker at `addr`, asked directly.
async fn stored_on(addr: SocketAddr, token: &str, topic: &str) -> u64 {
    let (mut socket, _, _) = connect(addr, "", Carrier::Header(token), &[])
        .await
        .unwrap();
    subscribe(&mut socket, 1, topic, None).await.last_offset
}

/// Every token carrier works through the proxy, and refusals keep their
/// status and JSON body.
async fn tokens_pass_through(proxy: SocketAddr, token: &str, foreign_token: &str) {
    for carrier in [
        Carrier::Header(token),
        Carrier::Query(token),
        Carrier::Subprotocol(token),
    ] {
        let subprotocol = matches!(carrier, Carrier::Subprotocol(_));
        let (_socket, welcome, response) = connect(proxy, "t", carrier, &[]).await.unwrap();
        let ServerMessage::Welcome(welcome) = welcome else {
            unreachable!()
        };
        assert_eq!(welcome.subject, "alice");
        if subprotocol {
            assert_eq!(
                response.headers().get("sec-websocket-protocol").unwrap(),
                "sockeye.v1",
                "the broker's subprotocol choice reaches the client"
            );
        }
    }
    let (status, body) = refusal(connect(proxy, "t", Carrier::Header(foreign_token), &[]).await);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"token_bad_signature\""), "{body}");
    let (status, body) = refusal(connect(proxy, "t", Carrier::Query("not-a-jwt"), &[]).await);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"token_malformed\""), "{body}");
    let (status, body) = refusal(connect(proxy, "t", Carrier::Query(""), &[]).await);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"token_missing\""), "{body}");
}

/// The broker's same-origin check still works behind the proxy, which must
/// pass the browser's Host (port included) through.
async fn origins_are_checked_against_the_public_host(proxy: SocketAddr, token: &str) {
    let same_origin = format!("http://{proxy}");
    connect(
        proxy,
        "t",
        Carrier::Header(token),
        &[("origin", &same_origin)],
    )
    .await
    .expect("a page served from the proxy's own origin may connect");
    let (status, body) = refusal(
        connect(
            proxy,
            "t",
            Carrier::Header(token),
            &[("origin", "http://evil.example")],
        )
        .await,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("\"origin_not_allowed\""), "{body}");
}

/// A pub/sub round trip, then a subscriber that reconnects and resumes gets
/// exactly the messages it missed, and only the broker its shard maps to
/// holds them.
async fn round_trip_and_resume(proxy: SocketAddr, brokers: &Brokers, token: &str) {
    let topic = "proxy.resume";
    let (mut subscriber, _, _) = connect(proxy, "alpha", Carrier::Header(token), &[])
        .await
        .unwrap();
    let (mut publisher, _, _) = connect(proxy, "alpha", Carrier::Query(token), &[])
        .await
        .unwrap();
    let subscribed = subscribe(&mut subscriber, 1, topic, None).await;
    assert!(subscribed.stored);
    for n in 1..=3 {
        assert_eq!(publish(&mut publisher, n, topic, &format!("m{n}")).await, n);
    }
    for n in 1..=3 {
        expect_delivery(&mut subscriber, topic, n, &format!("m{n}")).await;
    }
    // The subscriber goes away; three more are published meanwhile.
    drop(subscriber);
    for n in 4..=6 {
        assert_eq!(publish(&mut publisher, n, topic, &format!("m{n}")).await, n);
    }
    let (mut subscriber, _, _) = connect(proxy, "alpha", Carrier::Header(token), &[])
        .await
        .unwrap();
    let resumed = subscribe(
        &mut subscriber,
        2,
        topic,
        Some(Position::After {
            epoch: subscribed.epoch,
            offset: 3,
        }),
    )
    .await;
    assert!(resumed.complete && !resumed.epoch_changed, "{resumed:?}");
    assert_eq!(resumed.next_offset, 4);
    for n in 4..=6 {
        expect_delivery(&mut subscriber, topic, n, &format!("m{n}")).await;
    }
    // Nothing else was replayed: the next frame is the answer to a ping.
    send(&mut subscriber, ClientMessage::Ping { id: 3 }).await;
    assert_eq!(recv(&mut subscriber).await, ServerMessage::Pong { id: 3 });
    // Everything went to one broker.
    let on_a = stored_on(brokers.a, token, topic).await;
    let on_b = stored_on(brokers.b, token, topic).await;
    assert!(
        (on_a, on_b) == (6, 0) || (on_a, on_b) == (0, 6),
        "shard alpha is sticky: {on_a} messages on broker a, {on_b} on b"
    );
}

/// Many shards: each sticks to one broker across connections, and together
/// they use both brokers.
async fn shards_stick_and_spread(proxy: SocketAddr, brokers: &Brokers, token: &str) {
    // With 24 shards, all landing on one of two brokers by chance has a
    // probability around 1e-6.
    let shards = 24;
    let mut on_a = 0;
    for shard in 0..shards {
        let topic = format!("proxy.shard.{shard}");
        for connection in 1..=2 {
            let (mut socket, _, _) =
                connect(proxy, &format!("s{shard}"), Carrier::Header(token), &[])
                    .await
                    .unwrap();
            assert_eq!(
                publish(&mut socket, 1, &topic, "x").await,
                connection,
                "connection {connection} of shard s{shard} reached the broker with its history"
            );
        }
        match (
            stored_on(brokers.a, token, &topic).await,
            stored_on(brokers.b, token, &topic).await,
        ) {
            (2, 0) => on_a += 1,
            (0, 2) => {}
            other => panic!("shard s{shard} split across brokers: {other:?}"),
        }
    }
    assert!(
        0 < on_a && on_a < shards,
        "{on_a} of {shards} shards on broker a: the hash does not spread them"
    );
}

async fn proxy_serves_sockeye(kind: Proxy) {
    let brokers = start_brokers().await;
    let token = mint_with(&brokers.config, brokers.dir.path(), "alice").await;
    // A token from a broker with another secret.
    let other = tempfile::tempdir().unwrap();
    let other_config = other.path().join("other.toml");
    std::fs::write(
        &other_config,
        "[auth]\nsecret = \"a-different-secret-0123456789abcdef-0123456789\"\n",
    )
    .unwrap();
    let foreign_token = mint_with(&other_config, other.path(), "alice").await;
    let proxy_dir = tempfile::tempdir().unwrap();
    let (proxy, mut process) = start_proxy(kind, proxy_dir.path(), brokers.a, brokers.b).await;
    tokens_pass_through(proxy, &token, &foreign_token).await;
    origins_are_checked_against_the_public_host(proxy, &token).await;
    round_trip_and_resume(proxy, &brokers, &token).await;
    shards_stick_and_spread(proxy, &brokers, &token).await;
    process.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_serves_tokens_pubsub_resume_and_sticky_shards() {
    proxy_serves_sockeye(Proxy::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_serves_tokens_pubsub_resume_and_sticky_shards() {
    proxy_serves_sockeye(Proxy::Haproxy).await;
}

/// A backend that answers every request with `200 ok` and reports the
/// request head it received.
async fn capturing_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (heads, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 << 10 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (addr, received)
}

/// The headers a broker behind the proxy receives for a WebSocket upgrade.
async fn proxy_forwards_upgrade_headers(kind: Proxy) {
    let (backend, mut heads) = capturing_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let (proxy, _process) = start_proxy(kind, dir.path(), backend, backend).await;
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(proxy))
        .await
        .expect("TCP connect within the wait")
        .unwrap();
    // The client claims an address of its own in X-Forwarded-For, as a
    // client behind another proxy (or a spoofing one) does.
    stream
        .write_all(
            format!(
                "GET /ws?shard=x HTTP/1.1\r\nHost: {proxy}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sockeye.v1\r\n\
                 X-Forwarded-For: 203.0.113.9\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Health checks arrive here too; one deadline for the whole wait.
    let head = tokio::time::timeout(WAIT, async {
        loop {
            let head = heads.recv().await.expect("the backend runs");
            if head.starts_with("GET /ws?shard=x ") {
                return head;
            }
        }
    })
    .await
    .expect("the upgrade request reached the backend");
    // Every value of a header, across repeated header lines.
    let values = |name: &str| -> Vec<String> {
        head.lines()
            .filter_map(|line| line.split_once(':'))
            .filter(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_owned())
            .collect()
    };
    let header = |name: &str| {
        values(name)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("{kind:?} did not forward `{name}`:\n{head}"))
    };
    assert!(head.lines().next().unwrap().ends_with("HTTP/1.1"), "{head}");
    assert!(
        header("upgrade").eq_ignore_ascii_case("websocket"),
        "{head}"
    );
    assert!(
        header("connection")
            .to_ascii_lowercase()
            .contains("upgrade"),
        "{head}"
    );
    assert_eq!(header("sec-websocket-key"), "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(header("sec-websocket-protocol"), "sockeye.v1");
    assert_eq!(
        header("host"),
        proxy.to_string(),
        "the public Host, port included"
    );
    // The client's own entry is kept and the address the proxy saw is
    // appended last (nginx in the same line, HAProxy in a line of its own).
    let forwarded: Vec<String> = values("x-forwarded-for")
        .iter()
        .flat_map(|value| value.split(','))
        .map(|entry| entry.trim().to_owned())
        .collect();
    assert_eq!(
        forwarded,
        ["203.0.113.9", "127.0.0.1"],
        "X-Forwarded-For ends with the real client's address:\n{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_forwards_upgrade_host_and_client_address() {
    proxy_forwards_upgrade_headers(Proxy::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_forwards_upgrade_host_and_client_address() {
    proxy_forwards_upgrade_headers(Proxy::Haproxy).await;
}

/// A broker that trusts the proxy counts `max_connections_per_ip` by the
/// client address the proxy forwards, not by the proxy's own: two clients
/// whose connections all come from 127.0.0.1 at the TCP level are both
/// admitted under a limit of one, and a second connection from the same
/// forwarded client is refused.
async fn trusted_proxy_limits_each_forwarded_client(kind: Proxy) {
    let dir = tempfile::tempdir().unwrap();
    let config = broker_config(
        dir.path(),
        "[server]\nmax_connections_per_ip = 1\ntrusted_proxies = [\"127.0.0.1\"]\n",
    );
    let broker = Serve::start(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    )
    .await;
    let token = mint_with(&config, dir.path(), "alice").await;
    let proxy_dir = tempfile::tempdir().unwrap();
    let (proxy, mut process) = start_proxy(kind, proxy_dir.path(), broker.addr, broker.addr).await;
    let from = |client: &'static str| [("x-forwarded-for", client)];
    let (mut first, _, _) = connect(proxy, "t", Carrier::Header(&token), &from("198.51.100.1"))
        .await
        .expect("the first client is admitted");
    let (mut second, _, _) = connect(proxy, "t", Carrier::Header(&token), &from("198.51.100.2"))
        .await
        .expect("a second client behind the same proxy is admitted");
    let (status, body) =
        refusal(connect(proxy, "t", Carrier::Header(&token), &from("198.51.100.1")).await);
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("\"too_many_connections_from_ip\""), "{body}");
    // Both admitted connections work.
    for (id, socket) in [(1, &mut first), (2, &mut second)] {
        send(socket, ClientMessage::Ping { id }).await;
        assert_eq!(recv(socket).await, ServerMessage::Pong { id });
    }
    process.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_clients_are_limited_by_their_forwarded_address() {
    trusted_proxy_limits_each_forwarded_client(Proxy::Nginx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_clients_are_limited_by_their_forwarded_address() {
    trusted_proxy_limits_each_forwarded_client(Proxy::Haproxy).await;
}

/// Parses a duration written like `120s` or `2m` (the forms the configs use).
fn seconds(value: &str) -> u64 {
    let value = value.trim_end_matches(';');
    if let Some(s) = value.strip_suffix('s') {
        s.parse().unwrap()
    } else if let Some(m) = value.strip_suffix('m') {
        m.parse::<u64>().unwrap() * 60
    } else {
        value.parse().unwrap()
    }
}

/// The idle timeouts that apply to an upgraded connection must outlast the
/// broker's default heartbeat timeout, or the proxy would cut connections
/// the broker still considers alive. (Checked on the files, since observing
/// it live would take minutes.)
#[test]
fn proxy_idle_timeouts_outlast_the_broker_heartbeat_timeout() {
    let heartbeat = sockeye_broker::Config::default()
        .heartbeat
        .timeout
        .as_secs();
    let directive = |text: &str, name: &str| {
        text.lines()
            .map(str::trim)
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let mut words = line.split_whitespace();
                let mut key = String::new();
                for word in words.by_ref() {
                    if !key.is_empty() {
                        key.push(' ');
                    }
                    key.push_str(word);
                    if key == name {
                        return words.next().map(seconds);
                    }
                }
                None
            })
            .unwrap_or_else(|| panic!("`{name}` is set"))
    };
    for name in ["proxy_read_timeout", "proxy_send_timeout"] {
        let value = directive(NGINX_TEMPLATE, name);
        assert!(value > heartbeat, "nginx {name} {value}s <= {heartbeat}s");
    }
    let tunnel = directive(HAPROXY_TEMPLATE, "timeout tunnel");
    assert!(
        tunnel > heartbeat,
        "haproxy timeout tunnel {tunnel}s <= {heartbeat}s"
    );
}
