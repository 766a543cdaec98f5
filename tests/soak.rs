//! Soak: waves of connections churn against a real `sockeye serve` process
//! (connect, subscribe, publish, then drop without a close handshake, by FIN
//! or by RST; some drop mid-handshake), while one long-lived client checks
//! that the broker keeps answering. After each wave the broker's open file
//! descriptors (counted in `/proc/<pid>/fd`) must return to their baseline,
//! and after all waves its resident memory must return near its baseline.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sockeye_protocol::{ClientMessage, Payload, ServerMessage};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use support::{Serve, Socket, WAIT, connect, handshake, mint, recv, request, send};

const SECRET: &str = "soak-test-secret-0123456789abcdef-0123456789abcdef";
/// One warm-up wave (so the allocator and the broker's tables have grown to
/// their working size before the baseline is taken), then the measured ones.
const MEASURED_WAVES: usize = 10;
const CONNECTIONS_PER_WAVE: usize = 1_000;
/// Handshakes in flight at once; every connection of a wave stays open until
/// the wave's peak regardless.
const CONCURRENT_HANDSHAKES: usize = 64;
/// Topics the churning connections spread over.
const TOPICS: usize = 64;
/// Descriptors the broker may hold above its baseline after a settle: none
/// per connection may stay, but a store file or timer may open meanwhile.
const FD_MARGIN: usize = 5;
/// Resident memory the broker may hold above its post-warm-up baseline after
/// the measured waves. Measured here (debug build, glibc malloc, 2 busy
/// cores): ~47.6 MiB after the warm-up wave; after each further wave of
/// 1,000 it moved between +0.8 and +2.0 MiB of that with no trend (a run of
/// 30 waves ended at +1.0 MiB): freed memory stays in malloc's arenas and
/// the next wave reuses it. Of the 10,000 measured connections, 9,000 reach
/// the broker's upgrade handler; a leak of 1 KiB in it would add ~8.8 MiB
/// (tried: a broker patched to leak 1 KiB per upgrade ended at +9.9 MiB and
/// failed here). The margin is 2.5 times the noise seen.
const RSS_MARGIN_KIB: u64 = 5 * 1024;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

async fn start_broker(dir: &std::path::Path) -> Serve {
    let config = dir.join("soak.toml");
    // Per-IP and handshake-rate limits off: every client is 127.0.0.1 and
    // a wave opens connections as fast as it can. Churn topics are
    // ephemeral so the store does not grow. A short heartbeat timeout (the
    // default is 60 s) so a connection whose drop went unnoticed would be
    // reaped within the settle wait; still long enough that connections held
    // silent until a wave's peak are not reaped before it on a slow machine
    // (a wave takes about 1.5 s here).
    std::fs::write(
        &config,
        format!(
            "[server]\nmax_connections = 5000\nmax_connections_per_ip = 0\n\
             handshake_rate = 0\nhandshake_timeout = \"2s\"\n\
             [admin]\nenabled = false\n\
             [auth]\nsecret = \"{SECRET}\"\n\
             [heartbeat]\ninterval = \"2s\"\ntimeout = \"10s\"\n\
             [shutdown]\ndrain_timeout = \"1s\"\n\
             [[retention]]\npattern = \"soak.>\"\nstore = false\n"
        ),
    )
    .unwrap();
    Serve::start(dir, &["--config", config.to_str().unwrap()]).await
}

/// Opens a WebSocket on `stream` and reads the welcome. Small buffers keep a
/// thousand client sockets cheap in the test process.
async fn churn_handshake(stream: TcpStream, addr: SocketAddr, token: &str) -> Socket {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut socket, _) = handshake(stream, request(addr, token), Some(config))
        .await
        .expect("the broker accepts the handshake");
    match recv(&mut socket).await {
        ServerMessage::Welcome(_) => socket,
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// Reads until the reply to request `id`, skipping deliveries.
async fn reply_to(socket: &mut Socket, id: u64) -> ServerMessage {
    loop {
        match recv(socket).await {
            ServerMessage::Message(_) => {}
            reply => {
                assert_eq!(reply_id(&reply), Some(id), "reply to {id}: {reply:?}");
                return reply;
            }
        }
    }
}

fn reply_id(reply: &ServerMessage) -> Option<u64> {
    match reply {
        ServerMessage::Subscribed(subscribed) => Some(subscribed.id),
        ServerMessage::Published { id, .. } | ServerMessage::Pong { id } => Some(*id),
        ServerMessage::Error { id, .. } => *id,
        _ => None,
    }
}

/// The long-lived client: in a loop, a ping/pong and a pub/sub round trip
/// to itself. Counts completed rounds; panics (failing the test) if the
/// broker stops answering within the wait.
async fn monitor(addr: SocketAddr, token: String, rounds: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let mut socket = connect(addr, &token).await;
    send(
        &mut socket,
        ClientMessage::Subscribe {
            id: 1,
            topic: "soak.monitor".into(),
            position: None,
        },
    )
    .await;
    assert!(matches!(
        reply_to(&mut socket, 1).await,
        ServerMessage::Subscribed(_)
    ));
    let mut id = 1;
    while !stop.load(Ordering::Acquire) {
        id += 1;
        send(&mut socket, ClientMessage::Ping { id }).await;
        assert_eq!(recv(&mut socket).await, ServerMessage::Pong { id });
        let payload = format!("round {id}");
        send(
            &mut socket,
            ClientMessage::Publish {
                id: id + 1,
                topic: "soak.monitor".into(),
                payload: Payload::binary(payload.as_bytes()),
                ack: true,
            },
        )
        .await;
        // The ack and the delivery, in either order.
        let (mut acked, mut delivered) = (false, false);
        while !(acked && delivered) {
            match recv(&mut socket).await {
                ServerMessage::Published { id: got, .. } if got == id + 1 => acked = true,
                ServerMessage::Message(delivery) => {
                    assert_eq!(delivery.payload.as_binary(), Some(payload.as_bytes()));
                    delivered = true;
                }
                other => panic!("monitor: unexpected {other:?}"),
            }
        }
        id += 1;
        rounds.fetch_add(1, Ordering::AcqRel);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the monitor has completed a round that started after now.
async fn broker_answers(rounds: &AtomicU64, when: &str) {
    let start = rounds.load(Ordering::Acquire);
    let deadline = Instant::now() + WAIT;
    while rounds.load(Ordering::Acquire) < start + 2 {
        assert!(
            Instant::now() < deadline,
            "the broker stopped answering {when}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One churning connection; returns it if it is held until the wave's
/// peak. Odd ones set SO_LINGER 0, so dropping them
/// sends RST instead of FIN. By `n % 10`: 0-6 subscribe, publish (even ones
/// with an ack) and stay open until the peak; 7 publishes and drops at once;
/// 8 drops right after the welcome; 9 sends half an HTTP request and drops.
async fn churn(addr: SocketAddr, token: Arc<str>, n: usize) -> Option<Socket> {
    let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("TCP connect within the wait")
        .unwrap();
    stream.set_nodelay(true).unwrap();
    if !n.is_multiple_of(2) {
        stream.set_zero_linger().unwrap();
    }
    if n % 10 == 9 {
        let mut stream = stream;
        stream
            .write_all(b"GET /ws HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\n")
            .await
            .unwrap();
        return None;
    }
    let mut socket = churn_handshake(stream, addr, &token).await;
    if n % 10 == 8 {
        return None;
    }
    send(
        &mut socket,
        ClientMessage::Subscribe {
            id: 1,
            topic: format!("soak.churn.{}", n % TOPICS),
            position: None,
        },
    )
    .await;
    assert!(matches!(
        reply_to(&mut socket, 1).await,
        ServerMessage::Subscribed(_)
    ));
    let ack = n.is_multiple_of(2);
    send(
        &mut socket,
        ClientMessage::Publish {
            id: 2,
            topic: format!("soak.churn.{}", (n + 1) % TOPICS),
            payload: Payload::binary(&[n as u8; 64]),
            ack,
        },
    )
    .await;
    if n % 10 == 7 {
        return None;
    }
    if ack {
        assert!(matches!(
            reply_to(&mut socket, 2).await,
            ServerMessage::Published { .. }
        ));
    }
    Some(socket)
}

/// Runs one wave; returns the broker's descriptor count at its peak.
async fn wave(addr: SocketAddr, token: &Arc<str>, pid: u32, rounds: &AtomicU64) -> usize {
    let gate = Arc::new(Semaphore::new(CONCURRENT_HANDSHAKES));
    let tasks: Vec<_> = (0..CONNECTIONS_PER_WAVE)
        .map(|n| {
            let gate = Arc::clone(&gate);
            let token = Arc::clone(token);
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.unwrap();
                churn(addr, token, n).await
            })
        })
        .collect();
    let mut held = Vec::with_capacity(CONNECTIONS_PER_WAVE);
    for task in tasks {
        if let Some(socket) = task.await.unwrap() {
            held.push(socket);
        }
    }
    // The peak: every held connection is open on the broker.
    let peak = open_fds(pid);
    broker_answers(rounds, "with a wave's connections open").await;
    // Drop them all without a close handshake.
    drop(held);
    broker_answers(rounds, "while a wave's connections drop").await;
    peak
}

/// Waits (bounded) until the broker's descriptors are back within the
/// margin of `baseline`; returns the count reached.
async fn settle_fds(pid: u32, baseline: usize) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let fds = open_fds(pid);
        if fds <= baseline + FD_MARGIN || Instant::now() >= deadline {
            return fds;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churning_connections_leave_no_descriptors_or_memory_behind() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let (addr, pid) = (broker.addr, broker.pid());
    let config = dir.path().join("soak.toml");
    let token: Arc<str> = mint(
        dir.path(),
        &[
            "--sub",
            "soak",
            "--ttl",
            "1h",
            "--config",
            config.to_str().unwrap(),
        ],
    )
    .await
    .into();
    let rounds = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = tokio::spawn(monitor(
        addr,
        token.to_string(),
        Arc::clone(&rounds),
        Arc::clone(&stop),
    ));
    broker_answers(&rounds, "at start").await;
    let initial_fds = open_fds(pid);

    // Warm-up wave, then the baseline.
    let warm_peak = wave(addr, &token, pid, &rounds).await;
    let fds = settle_fds(pid, initial_fds).await;
    assert!(
        fds <= initial_fds + FD_MARGIN,
        "warm-up: {fds} descriptors open, {initial_fds} before it"
    );
    let base_fds = fds;
    let base_rss = rss_kib(pid);
    eprintln!(
        "soak: baseline {base_fds} fds (warm-up peak {warm_peak}), {base_rss} KiB RSS, after {:?}",
        started.elapsed()
    );

    for n in 1..=MEASURED_WAVES {
        let peak = wave(addr, &token, pid, &rounds).await;
        // Most of the 70% of connections held to the peak were open on the
        // broker then, so the count below measures real connections.
        assert!(
            peak >= base_fds + CONNECTIONS_PER_WAVE * 6 / 10,
            "wave {n}: only {peak} descriptors at the peak (baseline {base_fds})"
        );
        let fds = settle_fds(pid, base_fds).await;
        eprintln!(
            "soak: wave {n}: peak {peak} fds, settled to {fds} fds, {} KiB RSS, after {:?}",
            rss_kib(pid),
            started.elapsed()
        );
        assert!(
            fds <= base_fds + FD_MARGIN,
            "wave {n}: {fds} descriptors still open, baseline {base_fds}: connections leak"
        );
    }

    // Memory: give the allocator the same bounded settle to hand pages back.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut rss = rss_kib(pid);
    while rss > base_rss + RSS_MARGIN_KIB && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss = rss_kib(pid);
    }
    eprintln!(
        "soak: end {rss} KiB RSS ({:+} KiB vs baseline), {} monitor rounds, after {:?}",
        rss as i64 - base_rss as i64,
        rounds.load(Ordering::Acquire),
        started.elapsed()
    );
    assert!(
        rss <= base_rss + RSS_MARGIN_KIB,
        "RSS grew from {base_rss} KiB to {rss} KiB over {} connections",
        MEASURED_WAVES * CONNECTIONS_PER_WAVE
    );

    stop.store(true, Ordering::Release);
    tokio::time::timeout(WAIT, monitor)
        .await
        .expect("the long-lived client stops within the wait")
        .expect("the long-lived client never saw a failure");
    broker.terminate().await;
}
