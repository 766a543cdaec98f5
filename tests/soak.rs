//! Soak: waves of connections churn against a real `sockeye serve` process
//! (connect, subscribe, publish, then drop without a close handshake, by FIN
//! or by RST; some drop mid-handshake), while one long-lived client checks
//! that the broker keeps answering, and hostile load runs throughout: slow
//! consumers that never read (exact subscriptions to a stored topic that
//! keeps being published to, and a wildcard one that is closed with 4002
//! and comes back), a wildcard flood (as many filters as the caps allow,
//! and publishes that match none), and a distinct-topic flood that runs into
//! `store.max_topics`. After each wave the broker's open file descriptors
//! (counted in `/proc/<pid>/fd`) must return to their baseline; after all
//! waves its resident memory must return near its baseline, and the CPU it
//! uses per wave must not trend up.
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
/// Under hostile load: waves keep coming for this long before the baseline
/// (the topic flood needs 6 s to reach its cap), then this many are measured.
const HOSTILE_WARM_UP: Duration = Duration::from_secs(12);
const HOSTILE_MEASURED_WAVES: usize = 18;
/// How much higher the last third of the waves may peak than the first
/// half under hostile load: four slow consumers' queues (4 MiB each) come
/// and go as they reconnect.
const HOSTILE_RSS_MARGIN_KIB: u64 = 12 * 1024;
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
/// Stored topics the topic flood may create (`store.max_topics`); it keeps
/// trying new ones past the cap.
const FLOOD_TOPIC_CAP: usize = 3_000;
/// Connections that subscribe to a busy stored topic and never read.
const SLOW_CONSUMERS: usize = 4;
/// Hostile publishes per second, per kind of hostile load.
const HOSTILE_RATE: u64 = 500;

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
             [store]\ncache_capacity = \"16 MiB\"\nmax_topics = {FLOOD_TOPIC_CAP}\n\
             [[retention]]\npattern = \"soak.stored.>\"\nmax_messages = 2000\n\
             [[retention]]\npattern = \"soak.flood.>\"\nmax_messages = 10\n\
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

/// Runs `work` on a fresh connection until `stop`, reading (and counting)
/// whatever the broker sends back on the side so the connection never
/// becomes a slow consumer itself.
async fn hostile_client<F, Fut>(addr: SocketAddr, token: Arc<str>, stop: Arc<AtomicBool>, work: F)
where
    F: FnOnce(
        futures_util::stream::SplitSink<Socket, tokio_tungstenite::tungstenite::Message>,
        Arc<AtomicBool>,
    ) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures_util::StreamExt;
    let socket = connect(addr, &token).await;
    let (sink, mut stream) = socket.split();
    let reader = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    work(sink, stop).await;
    reader.abort();
}

fn frame(message: &ClientMessage) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::Binary(
        message.encode_frame(&sockeye_protocol::Compression::default()),
    )
}

/// Publishes `HOSTILE_RATE` messages per second built by `topic(n)` until
/// `stop`.
async fn publish_steadily(
    mut sink: futures_util::stream::SplitSink<Socket, tokio_tungstenite::tungstenite::Message>,
    stop: Arc<AtomicBool>,
    topic: impl Fn(u64) -> String,
    payload: Vec<u8>,
) {
    use futures_util::SinkExt;
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::Acquire) {
        tick.tick().await;
        for _ in 0..HOSTILE_RATE / 10 {
            n += 1;
            let message = ClientMessage::Publish {
                id: n,
                topic: topic(n),
                payload: Payload::binary(&payload),
                ack: false,
            };
            if sink.send(frame(&message)).await.is_err() {
                return;
            }
        }
    }
}

/// Starts every kind of hostile load; they run until `stop`.
fn start_hostile_load(
    addr: SocketAddr,
    token: &Arc<str>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    // Slow consumers: exact subscriptions to a stored topic, never read
    // (they fall into catch-up, then the broker's write timeout or the
    // heartbeat closes them); each comes back every few seconds.
    for _ in 0..SLOW_CONSUMERS {
        let (token, stop) = (Arc::clone(token), Arc::clone(stop));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let mut socket = connect(addr, &token).await;
                send(
                    &mut socket,
                    ClientMessage::Subscribe {
                        id: 1,
                        topic: "soak.stored.busy".into(),
                        position: None,
                    },
                )
                .await;
                for _ in 0..30 {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    // A slow wildcard consumer: closed with 4002, comes back.
    {
        let (token, stop) = (Arc::clone(token), Arc::clone(stop));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                let mut socket = connect(addr, &token).await;
                send(
                    &mut socket,
                    ClientMessage::Subscribe {
                        id: 1,
                        topic: "soak.stored.>".into(),
                        position: None,
                    },
                )
                .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    // The publisher the slow consumers fall behind.
    tasks.push(tokio::spawn(hostile_client(
        addr,
        Arc::clone(token),
        Arc::clone(stop),
        |sink, stop| publish_steadily(sink, stop, |_| "soak.stored.busy".into(), vec![7; 4096]),
    )));
    // Wildcard flood: as many filters as one connection may hold, each
    // with two `*`, and publishes to topics none of them matches.
    tasks.push(tokio::spawn(hostile_client(
        addr,
        Arc::clone(token),
        Arc::clone(stop),
        |mut sink, stop| async move {
            use futures_util::SinkExt;
            for i in 0..64u64 {
                let message = ClientMessage::Subscribe {
                    id: 1_000_000 + i,
                    topic: format!("soak.wild.*.f{i}.*.x"),
                    position: None,
                };
                if sink.send(frame(&message)).await.is_err() {
                    return;
                }
            }
            publish_steadily(
                sink,
                stop,
                |n| format!("soak.wild.a{n}.f1.b.y"),
                vec![1; 64],
            )
            .await;
        },
    )));
    // Distinct-topic flood: a new stored topic per publish, into the cap.
    tasks.push(tokio::spawn(hostile_client(
        addr,
        Arc::clone(token),
        Arc::clone(stop),
        |sink, stop| publish_steadily(sink, stop, |n| format!("soak.flood.t{n}"), vec![2; 64]),
    )));
    tasks
}

/// CPU time of `pid` (user + system), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churning_connections_leave_no_descriptors_or_memory_behind() {
    soak(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_hostile_load_memory_and_cpu_level_off() {
    soak(true).await;
}

/// Waves of churn with (or without) the hostile load running throughout.
/// Without it, memory must come back within [`RSS_MARGIN_KIB`] of the
/// baseline (a leak detector). With it, slow consumers reconnecting keep
/// several MiB of queues coming and going, so what is checked is that
/// memory and CPU level off: the last third of the waves peaks no higher
/// than the first half (plus [`HOSTILE_RSS_MARGIN_KIB`]) and costs no more
/// CPU than the first third (plus half, for a shared machine).
async fn soak(hostile_load: bool) {
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
    let hostile_stop = Arc::new(AtomicBool::new(false));
    let (hostile, hostile_fds, warm_up, measured) = if hostile_load {
        // The hostile clients' own connections stay open throughout.
        (
            start_hostile_load(addr, &token, &hostile_stop),
            SLOW_CONSUMERS + 4,
            HOSTILE_WARM_UP,
            HOSTILE_MEASURED_WAVES,
        )
    } else {
        (Vec::new(), 0, Duration::ZERO, MEASURED_WAVES)
    };

    // Warm-up (one wave at least; under hostile load until the topic flood
    // reached its cap and the store's cache filled), then the baseline.
    let mut warm_peak = wave(addr, &token, pid, &rounds).await;
    while started.elapsed() < warm_up {
        warm_peak = wave(addr, &token, pid, &rounds).await;
    }
    let fds = settle_fds(pid, initial_fds + hostile_fds).await;
    assert!(
        fds <= initial_fds + hostile_fds + FD_MARGIN,
        "warm-up: {fds} descriptors open, {initial_fds} before it"
    );
    let base_fds = fds;
    let base_rss = rss_kib(pid);
    eprintln!(
        "soak: baseline {base_fds} fds (warm-up peak {warm_peak}), {base_rss} KiB RSS, after {:?}",
        started.elapsed()
    );

    let mut wave_ticks = Vec::new();
    let mut wave_rss = Vec::new();
    for n in 1..=measured {
        let ticks_before = cpu_ticks(pid);
        let peak = wave(addr, &token, pid, &rounds).await;
        // Most of the 70% of connections held to the peak were open on the
        // broker then, so the count below measures real connections.
        assert!(
            peak >= base_fds + CONNECTIONS_PER_WAVE * 6 / 10,
            "wave {n}: only {peak} descriptors at the peak (baseline {base_fds})"
        );
        let fds = settle_fds(pid, base_fds).await;
        wave_ticks.push(cpu_ticks(pid) - ticks_before);
        wave_rss.push(rss_kib(pid));
        eprintln!(
            "soak: wave {n}: peak {peak} fds, settled to {fds} fds, {} KiB RSS, {} CPU ticks, after {:?}",
            wave_rss[n - 1],
            wave_ticks[n - 1],
            started.elapsed()
        );
        assert!(
            fds <= base_fds + FD_MARGIN,
            "wave {n}: {fds} descriptors still open, baseline {base_fds}: connections leak"
        );
    }

    if hostile_load {
        let third = measured / 3;
        let first_peak = *wave_rss[..measured / 2].iter().max().unwrap();
        let last_peak = *wave_rss[measured - third..].iter().max().unwrap();
        assert!(
            last_peak <= first_peak + HOSTILE_RSS_MARGIN_KIB,
            "RSS kept growing under hostile load: {wave_rss:?} KiB"
        );
        let first: u64 = wave_ticks[..third].iter().sum();
        let last: u64 = wave_ticks[measured - third..].iter().sum();
        assert!(
            last <= first + first / 2 + 30,
            "CPU per wave grew under hostile load: {wave_ticks:?} ticks"
        );
    } else {
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
            measured * CONNECTIONS_PER_WAVE
        );
    }

    hostile_stop.store(true, Ordering::Release);
    for task in hostile {
        tokio::time::timeout(WAIT, task)
            .await
            .expect("hostile clients stop within the wait")
            .expect("no hostile client failed");
    }
    stop.store(true, Ordering::Release);
    tokio::time::timeout(WAIT, monitor)
        .await
        .expect("the long-lived client stops within the wait")
        .expect("the long-lived client never saw a failure");
    broker.terminate().await;
}
