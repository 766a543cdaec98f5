//! What the integration tests share: a real `sockeye serve` child process
//! that listens on port 0 and reports its address in its log, stopping it
//! (SIGTERM or SIGKILL), minting tokens with `sockeye token`, and WebSocket
//! helpers; and, in [`cluster`], what cluster mode's tests add (Redis,
//! nodes that share it, nginx in front of them, clients that follow a
//! topic across reconnects). Every wait here is bounded by [`WAIT`], so a
//! hung broker fails a test instead of stalling it.
#![allow(dead_code, unreachable_pub)] // Each test file uses a different part.

pub mod cluster;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sockeye_protocol::{ClientMessage, Compression, ServerMessage, frame};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

/// The `sockeye` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sockeye");
/// Bound on every single wait (a process, a reply); a hang detector for a
/// busy machine, not a speed requirement.
pub const WAIT: Duration = Duration::from_secs(30);
/// The log line `sockeye serve` prints once its WebSocket listener is bound.
const SERVING: &str = "serving WebSocket clients";

/// A WebSocket to the broker, over plain TCP.
pub type Socket = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A running `sockeye serve`; killed (SIGKILL) if dropped while running.
#[derive(Debug)]
pub struct Serve {
    pub child: Child,
    /// Its log lines up to and including the one saying it serves.
    pub log: Vec<String>,
    /// Its log lines after that, as they come.
    pub later: Arc<Mutex<Vec<String>>>,
    /// The address its WebSocket listener is bound to.
    pub addr: SocketAddr,
}

impl Serve {
    /// Starts `sockeye serve --listen 127.0.0.1:0 --data-dir DIR ARGS..` and
    /// waits until it logs that it is serving; the log after that is copied
    /// to this test's stderr. Pass `--admin-listen 127.0.0.1:0` or a config
    /// with `admin.enabled = false`: the default admin port is fixed and
    /// tests run in parallel.
    pub async fn start(data_dir: &Path, args: &[&str]) -> Self {
        match Self::try_start(data_dir, args).await {
            Ok(serve) => serve,
            Err((status, log)) => {
                panic!("sockeye serve {args:?} exited ({status}) before serving: {log:#?}")
            }
        }
    }

    /// Like [`Serve::start`], but a broker that exits before serving is an
    /// `Err` with its exit status and log, not a panic.
    pub async fn try_start(
        data_dir: &Path,
        args: &[&str],
    ) -> Result<Self, (ExitStatus, Vec<String>)> {
        Self::try_start_in(None, &[], data_dir, args).await
    }

    /// Like [`Serve::try_start`], in the working directory `current_dir`
    /// (where relative paths of its configuration point) when given, and
    /// with the environment variables `env` added to the test's own.
    pub async fn try_start_in(
        current_dir: Option<&Path>,
        env: &[(&str, &str)],
        data_dir: &Path,
        args: &[&str],
    ) -> Result<Self, (ExitStatus, Vec<String>)> {
        let mut command = Command::new(BIN);
        if let Some(dir) = current_dir {
            command.current_dir(dir);
        }
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut log = Vec::new();
        let started = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let done = line.contains(SERVING);
                log.push(line);
                if done {
                    return true;
                }
            }
            false
        })
        .await;
        match started {
            Ok(true) => {}
            Ok(false) => {
                let status = tokio::time::timeout(WAIT, child.wait())
                    .await
                    .expect("sockeye exits in time")
                    .unwrap();
                return Err((status, log));
            }
            Err(_) => panic!("sockeye serve {args:?} did not serve within {WAIT:?}: {log:#?}"),
        }
        // Keep draining the log so the child never blocks on a full pipe.
        let later = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&later);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("sockeye[{pid}]: {line}");
                kept.lock().unwrap().push(line);
            }
        });
        let addr = listen_address(&log, SERVING).expect("the serving line has listen=ADDR");
        Ok(Self {
            child,
            log,
            later,
            addr,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the broker has not been waited for")
    }

    /// The address of the listener whose startup line contains `what`.
    pub fn listen_address(&self, what: &str) -> Option<SocketAddr> {
        listen_address(&self.log, what)
    }

    /// Asks it to shut down gracefully.
    pub fn sigterm(&self) {
        sigterm(self.pid()).expect("SIGTERM is delivered");
    }

    /// Waits (bounded) for it to exit.
    pub async fn wait(mut self) -> ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("sockeye exits in time")
            .unwrap()
    }

    /// SIGTERM, then expects a clean exit in time.
    pub async fn terminate(self) {
        self.sigterm();
        let status = self.wait().await;
        assert!(
            status.success(),
            "sockeye exits cleanly on SIGTERM: {status}"
        );
    }

    /// SIGKILL: no warning, no shutdown, no flush.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.wait().await;
    }
}

/// The `listen=ADDR` field of the first log line containing `what`.
pub fn listen_address(lines: &[String], what: &str) -> Option<SocketAddr> {
    let line = lines.iter().find(|line| line.contains(what))?;
    let field = line
        .split_whitespace()
        .find_map(|word| word.strip_prefix("listen="))?;
    Some(field.parse().unwrap())
}

/// Sends SIGTERM to `pid`.
pub fn sigterm(pid: u32) -> std::io::Result<()> {
    signal(pid, "TERM")
}

/// Sends the signal named `name` (`TERM`, `KILL`, `STOP`, `CONT`) to `pid`.
/// The only place the tests signal a process: `unsafe` is forbidden in this
/// workspace and no signal crate is a dependency, so it runs `kill` (procps).
pub fn signal(pid: u32, name: &str) -> std::io::Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .stdin(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "kill -{name} {pid}: {status}"
        )))
    }
}

/// Runs `sockeye token ARGS.. --data-dir DIR` and returns the token.
pub async fn mint(data_dir: &Path, args: &[&str]) -> String {
    mint_in(None, data_dir, args).await
}

/// Like [`mint`], in the working directory `current_dir` when given (where
/// relative paths of its configuration point).
pub async fn mint_in(current_dir: Option<&Path>, data_dir: &Path, args: &[&str]) -> String {
    let mut command = Command::new(BIN);
    if let Some(dir) = current_dir {
        command.current_dir(dir);
    }
    let output = tokio::time::timeout(
        WAIT,
        command
            .arg("token")
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("sockeye token finishes in time")
    .unwrap();
    assert!(
        output.status.success(),
        "sockeye token {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A handshake request for `ws://ADDR/ws` with the token in the
/// `Authorization` header.
pub fn request(addr: SocketAddr, token: &str) -> Request {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    request
}

/// The WebSocket handshake on `stream`, bounded by [`WAIT`].
pub async fn handshake(
    stream: TcpStream,
    request: Request,
    config: Option<WebSocketConfig>,
) -> Result<(Socket, Response), tungstenite::Error> {
    tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async_with_config(request, stream, config),
    )
    .await
    .expect("the handshake finishes within the wait")
}

/// Connects with `token` and reads the welcome.
pub async fn connect(addr: SocketAddr, token: &str) -> Socket {
    let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("TCP connect within the wait")
        .unwrap();
    let (mut socket, _) = handshake(stream, request(addr, token), None)
        .await
        .expect("the broker accepts the handshake");
    match recv(&mut socket).await {
        ServerMessage::Welcome(_) => socket,
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// Sends one protocol frame.
pub async fn send(socket: &mut Socket, message: ClientMessage) {
    let frame = Message::Binary(message.encode_frame(&Compression::default()));
    tokio::time::timeout(WAIT, socket.send(frame))
        .await
        .expect("sent within the wait")
        .expect("the connection is open");
}

/// The next protocol frame, or `None` once the connection is closed or
/// broken. One deadline covers the whole wait, however many pings arrive.
pub async fn try_recv(socket: &mut Socket) -> Option<ServerMessage> {
    let next_binary = async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Binary(data))) => return Some(data),
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    };
    let data = tokio::time::timeout(WAIT, next_binary)
        .await
        .expect("a frame or a close within the wait")?;
    let body = frame::open(&data, 64 << 20).unwrap();
    Some(ServerMessage::decode(&body).unwrap())
}

/// The next protocol frame; panics if the connection ends first.
pub async fn recv(socket: &mut Socket) -> ServerMessage {
    try_recv(socket).await.expect("the connection is open")
}
