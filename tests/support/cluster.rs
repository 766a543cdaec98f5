//! Cluster mode's fixtures: Debian's `redis-server` on a free loopback port
//! with the persistence a case needs, signalled by PID (SIGKILL, SIGTERM,
//! SIGSTOP, SIGCONT) and restarted on the same port and directory; `sockeye
//! serve` nodes that share it and one signing key; Debian's nginx in front of
//! three nodes, from `deploy/cluster/nginx.conf`; and wire-level clients
//! that publish to and follow a topic across reconnects, checking what the
//! protocol promises (one epoch, contiguous offsets, nothing twice) as they
//! go. Every wait is bounded by [`WAIT`].
//!
//! `redis-server`, `redis-cli` (package `redis-server`) and nginx must be
//! installed; the tests fail, not skip, without them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures_util::SinkExt;
use sockeye_protocol::{
    ClientMessage, Compression, ErrorCode, Payload, Position, ServerMessage, Subscribed,
};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{Serve, Socket, WAIT, handshake, mint, request, signal, try_recv};

/// Ports tried for a program that cannot bind port 0 and report it (Redis,
/// nginx) before giving up on `Address already in use`.
const PORT_ATTEMPTS: usize = 5;
/// Between two polls of something that is coming up.
const POLL: Duration = Duration::from_millis(50);
/// How long a follower waits for its next frame before it reports where it
/// is stuck (within [`WAIT`], the bound of every receive).
const STALLED: Duration = Duration::from_secs(WAIT.as_secs() - 5);
/// The nodes' shared HS256 secret (48 bytes), written to one `secret_file`.
const SECRET: &str = "cluster-test-secret-0123456789abcdef-0123456789ab";

/// The path of a program that must be installed, from PATH or the sbin
/// directories Debian installs daemons into.
pub fn installed(program: &str, package: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{program} is not installed; install it with `apt-get install {package}`")
        })
}

/// A loopback port that was free a moment ago, for programs that cannot
/// report a port the kernel chose; their start is retried with another one
/// if it was taken meanwhile.
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// What Redis keeps on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// The append-only file, fsynced before each write is answered; no RDB
    /// snapshots. A SIGKILL loses nothing Redis answered.
    AofAlways,
    /// Nothing: a restarted Redis starts empty.
    Nothing,
}

impl Persistence {
    fn args(self) -> &'static [&'static str] {
        match self {
            Self::AofAlways => &[
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            Self::Nothing => &["--appendonly", "no", "--save", ""],
        }
    }
}

/// A `redis-server` on 127.0.0.1 with its own directory; SIGKILLed if
/// dropped while running (also when stopped: SIGKILL ends a stopped
/// process).
#[derive(Debug)]
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    config: Option<PathBuf>,
}

impl Redis {
    /// Starts Redis in `dir` (created if missing) with `persistence`.
    pub async fn start(dir: &Path, persistence: Persistence) -> Self {
        Self::start_with(dir, None, persistence.args()).await
    }

    /// Starts `redis-server [CONFIG] --port P --bind 127.0.0.1 --dir DIR ..
    /// ARGS`: the file first, then the harness's settings, then `args`, each
    /// overriding what came before.
    pub async fn start_with(dir: &Path, config: Option<&Path>, args: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut redis = Self {
            child: None,
            port: 0,
            dir: dir.to_owned(),
            config: config.map(Path::to_owned),
        };
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            redis.port = unused_port();
            match redis.spawn(args).await {
                Ok(()) => return redis,
                Err(log) if log.contains("Address already in use") => last = log,
                Err(log) => panic!("redis-server did not start: {log}"),
            }
        }
        panic!("no free port for redis-server in {PORT_ATTEMPTS} attempts: {last}");
    }

    /// Starts redis-server on `self.port` and waits until it answers PING
    /// (after loading its append-only file, if any); `Err` with its log if it
    /// exits first.
    async fn spawn(&mut self, args: &[&str]) -> Result<(), String> {
        let log_path = self.dir.join("redis.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let mut command = Command::new(installed("redis-server", "redis-server"));
        if let Some(config) = &self.config {
            command.arg(config);
        }
        let port = self.port.to_string();
        command
            .args(["--port", &port, "--bind", "127.0.0.1", "--dir"])
            .arg(&self.dir)
            .args(["--daemonize", "no", "--logfile", ""])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = command.spawn().expect("redis-server starts");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("redis-server exited with {status}:\n{log}"));
            }
            if self
                .try_cli(&["PING"])
                .await
                .is_some_and(|out| out == "PONG")
            {
                self.child = Some(child);
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within {WAIT:?}",
                self.port
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// `redis://127.0.0.1:PORT`, for `--redis-url`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (the same after a restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (the append-only files, the log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(Child::id)
            .expect("redis-server is running")
    }

    /// SIGKILL: no warning, no last write.
    pub async fn kill(&mut self) {
        signal(self.pid(), "KILL").unwrap();
        self.reap().await;
    }

    /// SIGTERM, and expects a clean exit.
    pub async fn terminate(&mut self) {
        signal(self.pid(), "TERM").unwrap();
        let status = self.reap().await;
        assert!(status.success(), "redis-server exits cleanly: {status}");
    }

    async fn reap(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("redis-server is running");
        tokio::time::timeout(WAIT, child.wait())
            .await
            .expect("redis-server exits in time")
            .unwrap()
    }

    /// SIGSTOP: the process stays, its sockets stay open, nothing answers.
    pub fn freeze(&self) {
        signal(self.pid(), "STOP").unwrap();
    }

    /// SIGCONT after [`Redis::freeze`].
    pub fn thaw(&self) {
        signal(self.pid(), "CONT").unwrap();
    }

    /// Starts a stopped Redis again on the same port and directory (and
    /// configuration file), with `persistence`.
    pub async fn restart(&mut self, persistence: Persistence) {
        self.restart_with(persistence.args()).await;
    }

    /// Like [`Redis::restart`], with `args` after the configuration file.
    pub async fn restart_with(&mut self, args: &[&str]) {
        assert!(self.child.is_none(), "restart a stopped redis-server");
        if let Err(log) = self.spawn(args).await {
            panic!(
                "redis-server did not start again on port {}: {log}",
                self.port
            );
        }
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS` and returns its output
    /// (trimmed); `None` if it fails (Redis not up yet).
    async fn try_cli(&self, args: &[&str]) -> Option<String> {
        let output = tokio::time::timeout(
            WAIT,
            Command::new(installed("redis-cli", "redis-server"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(args)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("redis-cli finishes in time")
        .unwrap();
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS` and returns its output.
    pub async fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .await
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    /// `CLIENT KILL TYPE pubsub`: closes every PUB/SUB connection (each node
    /// holds one while it has subscribers); returns how many it closed.
    pub async fn kill_pubsub_clients(&self) -> u64 {
        let out = self.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
        out.parse()
            .unwrap_or_else(|_| panic!("CLIENT KILL answered {out:?}"))
    }

    /// `CONFIG GET name`: the value Redis runs with.
    pub async fn config_get(&self, name: &str) -> String {
        let out = self.cli(&["CONFIG", "GET", name]).await;
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some(name), "CONFIG GET {name}: {out:?}");
        lines.next().unwrap_or_default().to_owned()
    }
}

/// How a cluster of [`Cluster::start`] is set up.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// How many nodes.
    pub nodes: usize,
    /// What Redis keeps on disk.
    pub persistence: Persistence,
    /// The nodes' `engine.redis.command_timeout`.
    pub command_timeout: &'static str,
    /// Retention rules (TOML `[[retention]]` tables) put before the one
    /// that stores every topic; the first matching rule applies.
    pub retention: &'static str,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            persistence: Persistence::AofAlways,
            command_timeout: "2s",
            retention: "",
        }
    }
}

/// One `sockeye serve --engine redis` of a [`Cluster`].
#[derive(Debug)]
pub struct Node {
    /// Its `engine.redis.node_name`.
    pub name: String,
    /// The process.
    pub serve: Serve,
    /// Its admin listener.
    pub admin: SocketAddr,
}

impl Node {
    /// Its WebSocket listener.
    pub fn addr(&self) -> SocketAddr {
        self.serve.addr
    }
}

/// N nodes on one Redis, sharing a signing key (one `auth.secret_file`) and
/// the same retention rules, each with its own data directory and admin
/// listener.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, by index; `None` once killed.
    pub nodes: Vec<Option<Node>>,
    /// Their Redis.
    pub redis: Redis,
    /// A client token (sub `cluster-test`) every node accepts.
    pub token: String,
    /// An admin token every node's admin API accepts.
    pub admin_token: String,
    /// The nodes' configuration files, by index.
    pub configs: Vec<PathBuf>,
    /// Everything on disk: Redis's directory, the nodes' files.
    pub dir: tempfile::TempDir,
}

/// The name of node `index`: `node-a`, `node-b`, ...
pub fn node_name(index: usize) -> String {
    let letter = char::from(b'a' + u8::try_from(index).expect("few nodes"));
    format!("node-{letter}")
}

impl Cluster {
    /// Starts Redis, then the nodes (`--engine redis --redis-url URL` on the
    /// command line, the rest in each node's file; a node logs that it
    /// serves once it has reached Redis), and mints the tokens.
    pub async fn start(options: ClusterOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let redis = Redis::start(&dir.path().join("redis"), options.persistence).await;
        let secret = dir.path().join("secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        let mut cluster = Self {
            nodes: Vec::new(),
            redis,
            token: String::new(),
            admin_token: String::new(),
            configs: Vec::new(),
            dir,
        };
        for index in 0..options.nodes {
            let config = cluster
                .dir
                .path()
                .join(format!("{}.toml", node_name(index)));
            std::fs::write(
                &config,
                node_config(
                    &node_name(index),
                    &secret,
                    options.command_timeout,
                    options.retention,
                ),
            )
            .unwrap();
            cluster.configs.push(config);
            cluster.nodes.push(None);
            cluster.start_node(index).await;
        }
        let config = cluster.configs[0].to_str().unwrap().to_owned();
        let data_dir = cluster.dir.path().join(node_name(0));
        cluster.token = mint(
            &data_dir,
            &["--sub", "cluster-test", "--ttl", "1h", "--config", &config],
        )
        .await;
        cluster.admin_token = mint(
            &data_dir,
            &[
                "--sub", "ops", "--admin", "--ttl", "1h", "--config", &config,
            ],
        )
        .await;
        cluster
    }

    /// Starts node `index` (again, after [`Cluster::kill`]) on new ports.
    pub async fn start_node(&mut self, index: usize) {
        assert!(self.nodes[index].is_none(), "node {index} is running");
        let name = node_name(index);
        let data_dir = self.dir.path().join(&name);
        let config = self.configs[index].to_str().unwrap().to_owned();
        let url = self.redis.url();
        let serve = Serve::start(
            &data_dir,
            &[
                "--admin-listen",
                "127.0.0.1:0",
                "--config",
                &config,
                "--engine",
                "redis",
                "--redis-url",
                &url,
            ],
        )
        .await;
        let admin = serve
            .listen_address("admin API")
            .expect("the admin listener is logged with listen=ADDR");
        self.nodes[index] = Some(Node { name, serve, admin });
    }

    /// Node `index`, which must be running.
    pub fn node(&self, index: usize) -> &Node {
        self.nodes[index].as_ref().expect("the node is running")
    }

    /// Node `index`'s WebSocket listener.
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.node(index).addr()
    }

    /// Every running node's WebSocket listener.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().flatten().map(Node::addr).collect()
    }

    /// SIGKILLs node `index`.
    pub async fn kill(&mut self, index: usize) {
        let node = self.nodes[index].take().expect("the node is running");
        node.serve.kill().await;
    }
}

/// A node's configuration file: its name, the shared secret file, the
/// command timeout, and what every node of a test cluster shares: no publish
/// rate limit (the tests publish in bursts), quick shutdowns, and one
/// retention rule that keeps everything a test publishes (after the
/// test's own `retention` rules).
fn node_config(name: &str, secret: &Path, command_timeout: &str, retention: &str) -> String {
    format!(
        "[auth]\nsecret_file = {secret:?}\n\
         [limits]\npublish_rate = 0\n\
         [shutdown]\ndrain_timeout = \"1s\"\nreconnect_spread = \"0s\"\n\
         [engine.redis]\nnode_name = \"{name}\"\ncommand_timeout = \"{command_timeout}\"\n\
         {retention}\n\
         [[retention]]\npattern = \">\"\nstore = true\nmax_messages = 1000000\n\
         max_age = \"1day\"\nmax_bytes = \"1 GiB\"\n",
        secret = secret.to_str().unwrap()
    )
}

/// `GET http://ADMIN{path}` with `token`; the JSON body of a 200.
pub async fn admin_get(admin: SocketAddr, token: &str, path: &str) -> serde_json::Value {
    let response = reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .unwrap()
        .get(format!("http://{admin}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|err| panic!("GET {path} on {admin}: {err}"));
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "GET {path} on {admin}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET {path}: {err}: {body}"))
}

/// The entries of a list answer: its `items` (a page) or the array itself.
pub fn items(body: &serde_json::Value) -> &[serde_json::Value] {
    body.get("items")
        .unwrap_or(body)
        .as_array()
        .map_or(&[], Vec::as_slice)
}

/// The node names `GET /v1/nodes` lists.
pub fn member_names(body: &serde_json::Value) -> BTreeSet<String> {
    items(body)
        .iter()
        .filter_map(|node| node.get("name")?.as_str().map(str::to_owned))
        .collect()
}

/// Waits until the node with admin listener `admin` lists every node of
/// `names` in `GET /v1/nodes` (each node heartbeats into Redis when it
/// starts); returns that answer.
pub async fn wait_for_members(
    admin: SocketAddr,
    token: &str,
    names: &BTreeSet<String>,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let body = admin_get(admin, token, "/v1/nodes").await;
        if member_names(&body).is_superset(names) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "the node at {admin} does not list {names:?} within {WAIT:?}: {body}"
        );
        tokio::time::sleep(POLL * 4).await;
    }
}

/// A topic as `GET /v1/topics?prefix=TOPIC` of the node at `admin` lists it.
pub async fn listed_topic(admin: SocketAddr, token: &str, topic: &str) -> serde_json::Value {
    let body = admin_get(admin, token, &format!("/v1/topics?prefix={topic}")).await;
    items(&body)
        .iter()
        .find(|item| item["name"] == topic)
        .cloned()
        .unwrap_or_else(|| panic!("{admin} does not list topic {topic}: {body}"))
}

/// nginx's configuration for the example cluster, as shipped.
pub const NGINX_CONF: &str = include_str!("../../deploy/cluster/nginx.conf");
/// The address `deploy/cluster/nginx.conf` listens on.
pub const NGINX_LISTEN: &str = "127.0.0.1:8080";
/// The nodes `deploy/cluster/nginx.conf` forwards to.
pub const NGINX_NODES: [&str; 3] = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"];

/// `deploy/cluster/nginx.conf` with `listen` and `nodes` in place of the
/// shipped addresses, each of which must be there exactly once (so the file
/// and this harness cannot drift apart silently).
pub fn render_nginx(listen: SocketAddr, nodes: [SocketAddr; 3]) -> String {
    let mut text = NGINX_CONF.to_owned();
    for (shipped, actual) in std::iter::once(NGINX_LISTEN)
        .chain(NGINX_NODES)
        .zip(std::iter::once(listen).chain(nodes))
    {
        assert_eq!(
            text.matches(shipped).count(),
            1,
            "deploy/cluster/nginx.conf names {shipped} once"
        );
        text = text.replace(shipped, &actual.to_string());
    }
    text
}

/// A running nginx (master and workers) in its own prefix directory;
/// stopped by SIGTERM to the master when dropped, SIGKILL if it lingers.
#[derive(Debug)]
pub struct Nginx {
    child: std::process::Child,
    /// The address it serves.
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// Writes the rendered config into `dir` and runs `nginx -t` on it;
    /// the command's output.
    pub fn check(dir: &Path, listen: SocketAddr, nodes: [SocketAddr; 3]) -> std::process::Output {
        let file = Self::write_config(dir, listen, nodes);
        std::process::Command::new(installed("nginx", "nginx"))
            .arg("-t")
            .args(Self::args(dir, &file))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn write_config(dir: &Path, listen: SocketAddr, nodes: [SocketAddr; 3]) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let file = dir.join("nginx.conf");
        std::fs::write(&file, render_nginx(listen, nodes)).unwrap();
        file
    }

    fn args(dir: &Path, file: &Path) -> Vec<std::ffi::OsString> {
        vec![
            "-p".into(),
            dir.into(),
            "-e".into(),
            dir.join("startup-error.log").into(),
            "-c".into(),
            file.into(),
        ]
    }

    /// Starts nginx with `deploy/cluster/nginx.conf` in front of `nodes`, on
    /// a free port, in the foreground, and waits until `/healthz` through it
    /// answers 200.
    pub async fn start(dir: &Path, nodes: [SocketAddr; 3]) -> Self {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let listen: SocketAddr = ([127, 0, 0, 1], unused_port()).into();
            let file = Self::write_config(dir, listen, nodes);
            let out = std::fs::File::create(dir.join("nginx.out")).unwrap();
            let child = std::process::Command::new(installed("nginx", "nginx"))
                .args(Self::args(dir, &file))
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("nginx starts");
            let mut nginx = Self {
                child,
                addr: listen,
                dir: dir.to_owned(),
            };
            match nginx.wait_healthy().await {
                Ok(()) => return nginx,
                Err(log) if log.contains("Address already in use") => last = log,
                Err(log) => panic!("{log}"),
            }
        }
        panic!("no free port for nginx in {PORT_ATTEMPTS} attempts: {last}");
    }

    /// Its logs: startup errors, the error log, the access log.
    pub fn logs(&self) -> String {
        ["nginx.out", "startup-error.log", "error.log", "access.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
                format!("--- {name}\n{text}")
            })
            .collect()
    }

    /// Panics with its logs if it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("nginx exited with {status}:\n{}", self.logs());
        }
    }

    async fn wait_healthy(&mut self) -> Result<(), String> {
        let http = reqwest::Client::builder().timeout(WAIT).build().unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("nginx exited with {status}:\n{}", self.logs()));
            }
            let health = http.get(format!("http://{}/healthz", self.addr)).send();
            if let Ok(response) = health.await
                && response.status() == 200
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "nginx at {} never answered /healthz with 200:\n{}",
                self.addr,
                self.logs()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SIGTERM to the master: it stops its workers, then itself. A
        // SIGKILL would leave the workers running, holding the port.
        let _ = signal(self.child.id(), "TERM");
        for _ in 0..100 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message as a client saw it: delivered, or acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Its epoch.
    pub epoch: u64,
    /// Its offset in the epoch.
    pub offset: u64,
    /// Its payload (the tests publish binary payloads).
    pub payload: Vec<u8>,
}

/// Opens a WebSocket to `addr` with `token` and reads the welcome; `None`
/// if the TCP connection or the handshake fails (a node that is down, a
/// proxy with no node to forward to).
pub async fn try_connect(addr: SocketAddr, token: &str) -> Option<Socket> {
    let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("TCP connect within the wait")
        .ok()?;
    let (mut socket, _) = handshake(stream, request(addr, token), None).await.ok()?;
    match try_recv(&mut socket).await? {
        ServerMessage::Welcome(_) => Some(socket),
        other => panic!("expected welcome from {addr}, got {other:?}"),
    }
}

/// Connects to `targets[*next]`, then the next one, and so on, until one
/// accepts; advances `*next` past it. Panics after [`WAIT`].
pub async fn connect_any(
    targets: &[SocketAddr],
    next: &mut usize,
    token: &str,
) -> (Socket, SocketAddr) {
    let deadline = Instant::now() + WAIT;
    loop {
        let addr = targets[*next % targets.len()];
        *next += 1;
        if let Some(socket) = try_connect(addr, token).await {
            return (socket, addr);
        }
        assert!(
            Instant::now() < deadline,
            "none of {targets:?} accepted a connection within {WAIT:?}"
        );
        tokio::time::sleep(POLL * 2).await;
    }
}

/// Sends one frame; false if the connection is gone.
pub async fn try_send(socket: &mut Socket, message: ClientMessage) -> bool {
    let frame = Message::Binary(message.encode_frame(&Compression::default()));
    matches!(
        tokio::time::timeout(WAIT, socket.send(frame)).await,
        Ok(Ok(()))
    )
}

/// Subscribes and returns the `subscribed` reply, or the error reply's code
/// and message. Panics if the connection ends first or another frame comes.
pub async fn subscribe(
    socket: &mut Socket,
    id: u64,
    topic: &str,
    position: Option<Position>,
) -> Result<Subscribed, (ErrorCode, String)> {
    let message = ClientMessage::Subscribe {
        id,
        topic: topic.into(),
        position,
    };
    assert!(try_send(socket, message).await, "the connection is open");
    match try_recv(socket).await {
        Some(ServerMessage::Subscribed(reply)) if reply.id == id => Ok(reply),
        Some(ServerMessage::Error {
            id: Some(got),
            code,
            message,
        }) if got == id => Err((code, message)),
        other => panic!("subscribe {id} to {topic}: expected its reply, got {other:?}"),
    }
}

/// Publishes `payload` with an ack and waits for the reply: the stored
/// `(epoch, offset)`, or the error reply's code and message.
pub async fn publish(
    socket: &mut Socket,
    id: u64,
    topic: &str,
    payload: &[u8],
) -> Result<(u64, u64), (ErrorCode, String)> {
    let message = ClientMessage::Publish {
        id,
        topic: topic.into(),
        payload: Payload::binary(payload),
        ack: true,
    };
    assert!(try_send(socket, message).await, "the connection is open");
    match try_recv(socket).await {
        Some(ServerMessage::Published {
            id: got,
            epoch,
            offset,
        }) if got == id => Ok((epoch, offset)),
        Some(ServerMessage::Error {
            id: Some(got),
            code,
            message,
        }) if got == id => Err((code, message)),
        other => panic!("publish {id} to {topic}: expected its reply, got {other:?}"),
    }
}

/// The next frame must be the delivery of `payload` at `offset` of `epoch`.
pub async fn expect_delivery(
    socket: &mut Socket,
    topic: &str,
    epoch: u64,
    offset: u64,
    payload: &[u8],
) {
    match try_recv(socket).await {
        Some(ServerMessage::Message(delivery)) => {
            assert_eq!(
                (delivery.topic.as_str(), delivery.epoch, delivery.offset),
                (topic, epoch, offset),
                "the next delivery"
            );
            assert_eq!(
                delivery.payload.as_binary(),
                Some(payload),
                "offset {offset} carries its payload"
            );
        }
        other => panic!("expected offset {offset} of {topic}, got {other:?}"),
    }
}

/// Sends a ping and expects its pong as the very next frame: nothing else
/// was on its way to this connection.
pub async fn expect_quiet(socket: &mut Socket, id: u64) {
    assert!(try_send(socket, ClientMessage::Ping { id }).await);
    match try_recv(socket).await {
        Some(ServerMessage::Pong { id: got }) if got == id => {}
        other => panic!("expected nothing more, then pong {id}; got {other:?}"),
    }
}

/// Subscribes to `topic` at `addr` from `position` and reads what was
/// stored up to the reply's `last_offset`: the reply and the messages, which
/// must be contiguous (no `gap`: the tests' retention keeps everything).
pub async fn read_history(
    addr: SocketAddr,
    token: &str,
    topic: &str,
    position: Position,
) -> (Subscribed, Vec<Seen>) {
    let mut socket = try_connect(addr, token)
        .await
        .unwrap_or_else(|| panic!("{addr} accepts a connection"));
    let reply = subscribe(&mut socket, 1, topic, Some(position))
        .await
        .unwrap_or_else(|err| panic!("subscribe on {addr}: {err:?}"));
    let mut seen = Vec::new();
    let mut next = reply.next_offset;
    while next <= reply.last_offset {
        match try_recv(&mut socket).await {
            Some(ServerMessage::Message(delivery)) => {
                assert_eq!(
                    (delivery.epoch, delivery.offset),
                    (reply.epoch, next),
                    "history on {addr} is contiguous in one epoch"
                );
                seen.push(Seen {
                    epoch: delivery.epoch,
                    offset: delivery.offset,
                    payload: delivery.payload.as_binary().unwrap().to_vec(),
                });
                next += 1;
            }
            other => panic!("reading {topic} on {addr} at {next}: got {other:?}"),
        }
    }
    (reply, seen)
}

/// What [`publish_load`] publishes, and where.
#[derive(Debug, Clone)]
pub struct PublishLoad {
    /// Where to connect, in turn (after a lost connection, the next one).
    pub targets: Vec<SocketAddr>,
    /// Its token.
    pub token: String,
    /// The topic.
    pub topic: String,
    /// Payloads are `"{label} {seq}"`, so each is unique in a test.
    pub label: String,
    /// Most publishes sent.
    pub max: u64,
    /// Publishes in flight at once.
    pub window: usize,
    /// Reconnect (to the next target) when the connection is lost, instead
    /// of failing.
    pub reconnect: bool,
    /// Error codes that are recorded instead of failing the test.
    pub tolerated: Vec<ErrorCode>,
}

/// What [`publish_load`] did.
#[derive(Debug, Default)]
pub struct Published {
    /// Every acknowledged publish: its `(epoch, offset)` and payload.
    pub acked: Vec<Seen>,
    /// Publishes refused with a tolerated error: payload and code.
    pub refused: Vec<(Vec<u8>, ErrorCode)>,
    /// Publishes whose connection was lost before their reply: each may or
    /// may not be stored.
    pub unanswered: Vec<Vec<u8>>,
    /// How many connections it used.
    pub connections: usize,
}

/// Publishes with acks, `window` at a time, until `max` publishes were sent
/// or `stop` is set, then waits for the replies still due. After a refused
/// publish it pauses a little, so an outage does not burn the budget at once.
/// `acked` reports how many acks so far.
pub async fn publish_load(
    load: PublishLoad,
    stop: watch::Receiver<bool>,
    acked: watch::Sender<u64>,
) -> Published {
    let mut published = Published::default();
    let mut seq = 0u64;
    let mut next_target = 0;
    'connections: loop {
        if seq >= load.max || *stop.borrow() {
            break;
        }
        if published.connections > 0 {
            assert!(
                load.reconnect,
                "publisher {} lost its connection",
                load.label
            );
        }
        let (mut socket, _) = connect_any(&load.targets, &mut next_target, &load.token).await;
        published.connections += 1;
        let mut in_flight: HashMap<u64, Vec<u8>> = HashMap::new();
        loop {
            while in_flight.len() < load.window && seq < load.max && !*stop.borrow() {
                seq += 1;
                let payload = format!("{} {seq}", load.label).into_bytes();
                let message = ClientMessage::Publish {
                    id: seq,
                    topic: load.topic.clone(),
                    payload: Payload::binary(&payload),
                    ack: true,
                };
                let sent = try_send(&mut socket, message).await;
                in_flight.insert(seq, payload);
                if !sent {
                    published.unanswered.extend(in_flight.into_values());
                    continue 'connections;
                }
            }
            if in_flight.is_empty() {
                break 'connections;
            }
            match try_recv(&mut socket).await {
                Some(ServerMessage::Published { id, epoch, offset }) => {
                    let payload = in_flight
                        .remove(&id)
                        .expect("an ack for a publish in flight");
                    published.acked.push(Seen {
                        epoch,
                        offset,
                        payload,
                    });
                    acked.send_replace(published.acked.len() as u64);
                }
                Some(ServerMessage::Error {
                    id: Some(id),
                    code,
                    message,
                }) if load.tolerated.contains(&code) => {
                    let payload = in_flight
                        .remove(&id)
                        .unwrap_or_else(|| panic!("{code} ({message}) for no publish in flight"));
                    published.refused.push((payload, code));
                    tokio::time::sleep(POLL * 2).await;
                }
                None => {
                    published.unanswered.extend(in_flight.into_values());
                    continue 'connections;
                }
                Some(other) => panic!("publisher {}: unexpected {other:?}", load.label),
            }
        }
    }
    published
}

/// How [`follow`] subscribes.
#[derive(Debug, Clone)]
pub struct Follow {
    /// Where to connect, in turn, starting at `targets[0]`.
    pub targets: Vec<SocketAddr>,
    /// Its token.
    pub token: String,
    /// The topic.
    pub topic: String,
    /// The first subscription's position (later ones resume after the last
    /// delivery).
    pub start: Option<Position>,
    /// Reconnect and resume when the connection is lost, instead of failing.
    pub reconnect: bool,
}

/// What [`follow`] saw.
#[derive(Debug, Default)]
pub struct Followed {
    /// Every delivery, in order.
    pub seen: Vec<Seen>,
    /// Where each of its connections went.
    pub connections: Vec<SocketAddr>,
}

/// Subscribes to one topic and reads deliveries until it has the offset
/// `until` names (once it names one), checking each on the way: one epoch
/// (the `subscribed` reply's), every offset the one after the previous (the
/// first the reply's `next_offset`), no `gap`, no `reset`. A lost connection
/// (when `reconnect`) is followed by a resume after the last delivery, which
/// must be `complete`, in the same epoch, at the next offset. A subscribe
/// refused with `storage_failed` is retried for up to [`WAIT`]. `progress`
/// is `None` until the first `subscribed`, then the last offset delivered
/// (or the one before the first to come).
pub async fn follow(
    follow: Follow,
    mut until: watch::Receiver<Option<u64>>,
    progress: watch::Sender<Option<u64>>,
) -> Followed {
    let mut followed = Followed::default();
    // The epoch and the last offset delivered, or the one before the first
    // to come; set by the first `subscribed`.
    let mut cursor: Option<(u64, u64)> = None;
    let mut next_target = 0;
    let mut id = 0;
    let done = |cursor: Option<(u64, u64)>, until: &watch::Receiver<Option<u64>>| {
        until
            .borrow()
            .is_some_and(|last| cursor.map_or(0, |(_, offset)| offset) >= last)
    };
    'connections: loop {
        if done(cursor, &until) {
            break;
        }
        let (mut socket, addr) =
            connect_any(&follow.targets, &mut next_target, &follow.token).await;
        followed.connections.push(addr);
        let position = match cursor {
            Some((epoch, offset)) => Some(Position::After { epoch, offset }),
            None => follow.start,
        };
        let deadline = Instant::now() + WAIT;
        let reply = loop {
            id += 1;
            let message = ClientMessage::Subscribe {
                id,
                topic: follow.topic.clone(),
                position,
            };
            if !try_send(&mut socket, message).await {
                continue 'connections;
            }
            match try_recv(&mut socket).await {
                Some(ServerMessage::Subscribed(reply)) if reply.id == id => break reply,
                Some(ServerMessage::Error {
                    code: ErrorCode::StorageFailed,
                    ..
                }) if Instant::now() < deadline => tokio::time::sleep(POLL * 4).await,
                None if follow.reconnect => continue 'connections,
                other => panic!("subscribe to {} on {addr}: got {other:?}", follow.topic),
            }
        };
        assert!(reply.stored, "{} is stored: {reply:?}", follow.topic);
        match cursor {
            Some((epoch, offset)) => {
                assert_eq!(reply.epoch, epoch, "a resume on {addr} keeps the epoch");
                assert!(
                    reply.complete && !reply.epoch_changed && reply.gap.is_none(),
                    "a resume on {addr} after {offset} misses nothing: {reply:?}"
                );
                assert_eq!(reply.next_offset, offset + 1, "{reply:?}");
            }
            None => {
                cursor = Some((reply.epoch, reply.next_offset - 1));
                progress.send_replace(Some(reply.next_offset - 1));
            }
        }
        loop {
            let frame = tokio::select! {
                frame = try_recv(&mut socket) => frame,
                // Before try_recv's own bound, to say where it is stuck.
                () = tokio::time::sleep(STALLED) => panic!(
                    "the subscriber on {addr} got nothing after {cursor:?} for {STALLED:?} \
                     (it waits for offset {:?})",
                    *until.borrow()
                ),
                changed = until.changed() => {
                    changed.expect("the test sets `until` before it drops it");
                    if done(cursor, &until) {
                        break 'connections;
                    }
                    continue;
                }
            };
            let (epoch, last) = cursor.expect("set by the first reply");
            match frame {
                Some(ServerMessage::Message(delivery)) => {
                    assert_eq!(delivery.topic, follow.topic);
                    assert_eq!(
                        delivery.epoch, epoch,
                        "deliveries on {addr} stay in one epoch"
                    );
                    assert_eq!(
                        delivery.offset,
                        last + 1,
                        "deliveries on {addr} are contiguous: after {last} came {}",
                        delivery.offset
                    );
                    followed.seen.push(Seen {
                        epoch,
                        offset: delivery.offset,
                        payload: delivery.payload.as_binary().unwrap().to_vec(),
                    });
                    cursor = Some((epoch, delivery.offset));
                    progress.send_replace(Some(delivery.offset));
                    if done(cursor, &until) {
                        break 'connections;
                    }
                }
                None if follow.reconnect => continue 'connections,
                None => panic!("the subscriber on {addr} was disconnected after offset {last}"),
                Some(other) => panic!("subscriber on {addr} after offset {last}: got {other:?}"),
            }
        }
    }
    followed
}

/// Waits (bounded) until the follower behind `progress` has subscribed and
/// reached `offset`.
pub async fn wait_until(progress: &mut watch::Receiver<Option<u64>>, offset: u64, what: &str) {
    let reached = |last: &Option<u64>| last.is_some_and(|last| last >= offset);
    let outcome = tokio::time::timeout(WAIT, progress.wait_for(reached))
        .await
        .map(|waited| waited.is_ok());
    match outcome {
        Ok(true) => {}
        Ok(false) => panic!(
            "{what}: the follower ended at {:?} (any panic of its is above)",
            *progress.borrow()
        ),
        Err(_) => panic!(
            "{what}: at {:?}, not at offset {offset} within {WAIT:?}",
            *progress.borrow()
        ),
    }
}

/// A [`follow`] running in its own task, with its progress.
#[derive(Debug)]
pub struct Follower {
    /// Its last offset (see [`follow`]).
    pub progress: watch::Receiver<Option<u64>>,
    task: tokio::task::JoinHandle<Followed>,
}

impl Follower {
    /// Spawns [`follow`] with `follow`, until `until` names an offset.
    pub fn spawn(follow_: Follow, until: &watch::Receiver<Option<u64>>) -> Self {
        let (progress_tx, progress) = watch::channel(None);
        let task = tokio::spawn(follow(follow_, until.clone(), progress_tx));
        Self { progress, task }
    }

    /// Waits until it has subscribed.
    pub async fn subscribed(&mut self) {
        wait_until(&mut self.progress, 0, "subscribing").await;
    }

    /// Its last offset so far (0 before any delivery).
    pub fn last(&self) -> u64 {
        self.progress.borrow().unwrap_or(0)
    }

    /// Waits (bounded) for it to finish, and what it saw.
    pub async fn finish(self) -> Followed {
        tokio::time::timeout(WAIT * 2, self.task)
            .await
            .expect("the follower reaches the last offset in time")
            .expect("the follower's checks pass")
    }
}

/// A [`publish_load`] running in its own task.
#[derive(Debug)]
pub struct Publisher {
    /// How many acks it has had.
    pub acked: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<Published>,
}

impl Publisher {
    /// Spawns [`publish_load`] with `load`, stopped by `stop`.
    pub fn spawn(load: PublishLoad, stop: &watch::Receiver<bool>) -> Self {
        let (acked_tx, acked) = watch::channel(0);
        let task = tokio::spawn(publish_load(load, stop.clone(), acked_tx));
        Self { acked, task }
    }

    /// Waits (bounded) until it has had `count` acks.
    pub async fn wait_acked(&mut self, count: u64, what: &str) {
        let outcome = tokio::time::timeout(WAIT, self.acked.wait_for(|acked| *acked >= count))
            .await
            .map(|waited| waited.is_ok());
        match outcome {
            Ok(true) => {}
            Ok(false) => panic!(
                "{what}: the publisher ended after {} acks (any panic of its is above)",
                *self.acked.borrow()
            ),
            Err(_) => panic!(
                "{what}: {} acks, not {count}, within {WAIT:?}",
                *self.acked.borrow()
            ),
        }
    }

    /// Waits (bounded) for it to finish (stopped, or at its `max`).
    pub async fn finish(self) -> Published {
        tokio::time::timeout(WAIT * 2, self.task)
            .await
            .expect("the publisher finishes in time")
            .expect("the publisher's checks pass")
    }
}

/// Checks that `seen` is exactly offsets `1..=last` and that it agrees with
/// `reference` (offset by offset, payload by payload).
pub fn assert_same_stream(seen: &[Seen], reference: &[Seen], what: &str) {
    let offsets: Vec<u64> = seen.iter().map(|message| message.offset).collect();
    let expected: Vec<u64> = (1..=reference.len() as u64).collect();
    assert!(
        offsets == expected,
        "{what}: offsets are 1..={} once each, in order (got {} deliveries, first {:?}, last {:?})",
        reference.len(),
        offsets.len(),
        offsets.first(),
        offsets.last()
    );
    for (got, want) in seen.iter().zip(reference) {
        assert_eq!(
            got, want,
            "{what}: offset {} is the same message",
            want.offset
        );
    }
}

/// Checks that every acknowledged publish is in `stream` (by offset) with
/// its epoch and payload, and that no payload is stored twice.
pub fn assert_acked_in(acked: &[Seen], stream: &[Seen], what: &str) {
    let by_offset: BTreeMap<u64, &Seen> = stream.iter().map(|seen| (seen.offset, seen)).collect();
    for ack in acked {
        assert_eq!(
            by_offset.get(&ack.offset),
            Some(&ack),
            "{what}: the publish acked at offset {} ({:?}) is there",
            ack.offset,
            String::from_utf8_lossy(&ack.payload)
        );
    }
    let mut payloads = BTreeSet::new();
    for seen in stream {
        assert!(
            payloads.insert(&seen.payload),
            "{what}: {:?} is stored twice (again at offset {})",
            String::from_utf8_lossy(&seen.payload),
            seen.offset
        );
    }
}
