//! CI smoke of the load generator: every scenario for a second or two with
//! tiny sizes, against real target processes (the `sockeye` binary of this
//! workspace, the baseline broadcaster, nats-server), through the real
//! command line. It checks that reports are produced and that
//! delivered/expected is exactly 1.0; it never checks speed.
//!
//! Needs the `sockeye` binary next to `sockeye-bench` (run `cargo build -p
//! sockeye` first, or set `BENCH_SOCKEYE_BIN`) and `nats-server` on the `PATH`
//! (`apt-get install -y nats-server`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest any one generator run may take here before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest a target may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process that is killed when the test ends, whatever happens.
struct Process {
    child: Child,
    name: &'static str,
}

impl Process {
    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Waits until the process logs `listen=ADDR` on a line containing
    /// `what` and returns ADDR, so it can bind port 0 instead of a port
    /// picked here that something else could take first. The rest of its
    /// log is copied to the test's stderr.
    fn logged_address(&mut self, what: &'static str) -> SocketAddr {
        let stderr: ChildStderr = self.child.stderr.take().expect("stderr is piped");
        let (lines, received) = mpsc::channel();
        let name = self.name;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if let Err(mpsc::SendError(line)) = lines.send(line) {
                    eprintln!("{name}: {line}");
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut log = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match received.recv_timeout(left) {
                Ok(line) => {
                    let address = line
                        .contains(what)
                        .then(|| {
                            line.split_whitespace()
                                .find_map(|word| word.strip_prefix("listen="))
                                .map(|addr| addr.parse().unwrap())
                        })
                        .flatten();
                    log.push(line);
                    if let Some(address) = address {
                        return address;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().unwrap();
                    panic!("{} exited before listening ({status}): {log:#?}", self.name);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "{} did not listen within {START_TIMEOUT:?}: {log:#?}",
                        self.name
                    );
                }
            }
        }
    }

    /// Waits until the process accepts TCP connections on `port`.
    fn wait_listening(&mut self, port: u16) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("{} exited before listening: {status}", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} did not listen on {port} within {START_TIMEOUT:?}",
            self.name
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bench_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sockeye-bench"))
}

fn sockeye_exe() -> PathBuf {
    let path = std::env::var_os("BENCH_SOCKEYE_BIN")
        .map_or_else(|| bench_exe().with_file_name("sockeye"), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: build the broker first (`cargo build -p sockeye`) or set BENCH_SOCKEYE_BIN",
        path.display()
    );
    path
}

fn bench_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sockeye-bench.toml")
}

/// A loopback port that was free a moment ago; only for nats-server, which
/// does not report a port chosen by the kernel.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running target and how to reach it.
struct Target {
    name: &'static str,
    url: String,
    token: Option<String>,
    process: Process,
    _dir: tempfile::TempDir,
}

fn start_sockeye() -> Target {
    let dir = tempfile::tempdir().unwrap();
    let mut token = Command::new(sockeye_exe());
    token
        .args(["token", "--sub", "bench", "--ttl", "1h", "--config"])
        .arg(bench_config())
        .arg("--data-dir")
        .arg(dir.path());
    let token = run_bounded(&mut token, "sockeye token", START_TIMEOUT);
    assert!(token.status.success(), "sockeye token: {token:?}");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let mut serve = Command::new(sockeye_exe());
    // The broker reads every SOCKEYE_* variable as configuration and rejects
    // unknown keys: the test's environment must not leak into it.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SOCKEYE_") {
            serve.env_remove(name);
        }
    }
    let child = serve
        .arg("serve")
        .arg("--config")
        .arg(bench_config())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn,sockeye=info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut process = Process {
        child,
        name: "sockeye",
    };
    let addr = process.logged_address("serving WebSocket clients");
    Target {
        name: "sockeye",
        url: format!("ws://{addr}/ws"),
        token: Some(token),
        process,
        _dir: dir,
    }
}

fn start_baseline() -> Target {
    let child = Command::new(bench_exe())
        .args([
            "baseline",
            "--max-lifetime",
            "5m",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn,sockeye_bench=info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut process = Process {
        child,
        name: "baseline",
    };
    let addr = process.logged_address("baseline broadcaster listening");
    Target {
        name: "baseline",
        url: format!("ws://{addr}/ws"),
        token: None,
        process,
        _dir: tempfile::tempdir().unwrap(),
    }
}

fn start_nats() -> Target {
    let dir = tempfile::tempdir().unwrap();
    let (client_port, ws_port) = (free_port(), free_port());
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "host: 127.0.0.1\nport: {client_port}\nhttp_port: 0\n\
             websocket {{\n  host: 127.0.0.1\n  port: {ws_port}\n  no_tls: true\n}}\n"
        ),
    )
    .unwrap();
    let child = Command::new("nats-server")
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| {
            panic!(
                "cannot run nats-server ({err}): install it with `apt-get install -y nats-server`"
            )
        });
    let mut process = Process {
        child,
        name: "nats-server",
    };
    process.wait_listening(ws_port);
    Target {
        name: "nats",
        url: format!("ws://127.0.0.1:{ws_port}"),
        token: None,
        process,
        _dir: dir,
    }
}

/// Runs `command` to its end and returns its output; kills it and fails
/// if it runs over `limit`. Its output is read while it runs, so a chatty
/// process never blocks on a full pipe.
fn run_bounded(command: &mut Command, what: &str, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {what}: {err}"));
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr.join().unwrap();
            panic!(
                "{what} ran over {limit:?}: {}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Runs `sockeye-bench` with a time limit and returns its output.
fn run_bench(args: &[String], token: Option<&str>) -> Output {
    let mut command = Command::new(bench_exe());
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("BENCH_TOKEN");
    if let Some(token) = token {
        command.env("BENCH_TOKEN", token);
    }
    run_bounded(
        &mut command,
        &format!("sockeye-bench {args:?}"),
        RUN_TIMEOUT,
    )
}

/// Runs one scenario against `target` and returns its JSON report, after
/// checking that it succeeded and lost nothing.
fn scenario(target: &Target, results: &Path, scenario: &str, args: &[&str]) -> Value {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let json = results.join(format!("{scenario}-{run}-{}.json", target.name));
    let mut full: Vec<String> = vec![
        scenario.into(),
        "--target".into(),
        target.name.into(),
        "--url".into(),
        target.url.clone(),
        "--broker-pid".into(),
        target.process.pid(),
        "--json".into(),
        json.display().to_string(),
        "--connect-concurrency".into(),
        "32".into(),
    ];
    full.extend(args.iter().map(|arg| (*arg).to_owned()));
    let output = run_bench(&full, target.token.as_deref());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{scenario} on {} failed ({}):\n{stdout}\n{stderr}",
        target.name,
        output.status
    );
    assert!(stdout.contains("delivered/expected"), "no table: {stdout}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["scenario"], scenario);
    assert_eq!(report["target"], target.name);
    assert_eq!(report["ok"], true, "{report:#}");
    let expected = report["expected"].as_u64().unwrap();
    assert!(expected > 0, "{scenario} expected nothing: {report:#}");
    assert_eq!(
        report["delivered"].as_u64().unwrap(),
        expected,
        "{report:#}"
    );
    assert_eq!(report["delivery_ratio"].as_f64().unwrap(), 1.0);
    assert!(
        report["errors"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    assert!(
        report["broker"]["rss_after_kib"].as_u64().unwrap() > 0,
        "the target's memory was not sampled: {report:#}"
    );
    report
}

/// The scenarios every target supports.
fn shared_scenarios(target: &Target, results: &Path) {
    let fanout = scenario(
        target,
        results,
        "fanout",
        &["--subscribers", "5", "--size", "100", "--duration", "1s"],
    );
    assert!(fanout["latency_us"]["count"].as_u64().unwrap() > 0);
    // Over 1 KiB: Sockeye frames take the compressed path.
    scenario(
        target,
        results,
        "fanout",
        &[
            "--subscribers",
            "3",
            "--size",
            "2KiB",
            "--rate",
            "600",
            "--duration",
            "1s",
        ],
    );
    scenario(
        target,
        results,
        "topics",
        &[
            "--publishers",
            "3",
            "--subscribers",
            "3",
            "--duration",
            "1s",
        ],
    );
    let idle = scenario(
        target,
        results,
        "idle",
        &["--connections", "50", "--settle", "500ms", "--subscribe"],
    );
    assert!(idle["extra"]["broker_rss_bytes_per_connection"].is_number());
    scenario(
        target,
        results,
        "churn",
        &["--concurrency", "4", "--duration", "1s"],
    );
}

#[test]
fn sockeye_runs_every_scenario_and_the_report_summarises_them() {
    let target = start_sockeye();
    let results = tempfile::tempdir().unwrap();
    shared_scenarios(&target, results.path());
    let durable = scenario(
        &target,
        results.path(),
        "durable",
        &[
            "--publishers",
            "5",
            "--inflight",
            "2",
            "--duration",
            "1s",
            "--label",
            "fsync",
        ],
    );
    assert!(durable["latency_us"]["p99"].as_f64().unwrap() > 0.0);
    let resume = scenario(
        &target,
        results.path(),
        "resume",
        &["--messages", "500", "--inflight", "64"],
    );
    assert_eq!(resume["expected"], 500);
    assert!(resume["extra"]["replay_seconds"].as_f64().unwrap() > 0.0);
    // Scenario 8 on one node: a stored topic, the subscribers spread over
    // two --subscriber-url (here the same node twice; compare.sh points
    // them at two cluster nodes).
    let cluster = scenario(
        &target,
        results.path(),
        "cluster",
        &[
            "--subscribers",
            "4",
            "--max-messages",
            "300",
            "--duration",
            "1s",
            "--subscriber-url",
            &target.url,
            "--subscriber-url",
            &target.url,
            "--also-pid",
            &target.process.pid(),
        ],
    );
    assert_eq!(cluster["params"]["subscriber_endpoints"], 2);
    assert!(
        cluster["case"].as_str().unwrap().contains("stored topic"),
        "{cluster:#}"
    );
    // 4 x 16 filters over 6 segments: the 7 with more than 4 `*` are
    // refused by the broker's default shape limit, the rest accepted.
    let wildcard = scenario(
        &target,
        results.path(),
        "wildcard",
        &[
            "--attackers",
            "4",
            "--filters",
            "16",
            "--segments",
            "6",
            "--topic-segments",
            "7",
            "--prefix",
            "6",
            "--messages",
            "50",
        ],
    );
    assert_eq!(wildcard["expected"], 50);
    assert_eq!(wildcard["extra"]["filters_accepted"], 57.0, "{wildcard:#}");
    assert_eq!(
        wildcard["extra"]["filters_refused_invalid_topic"], 7.0,
        "{wildcard:#}"
    );

    let docs = results.path().join("benchmarks.md");
    std::fs::write(
        &docs,
        "# B\n\n<!-- results:begin -->\nold\n<!-- results:end -->\n\ntail\n",
    )
    .unwrap();
    let summary = results.path().join("summary.md");
    let chart = results.path().join("chart.svg");
    let output = run_bench(
        &[
            "report".into(),
            "--results".into(),
            results.path().display().to_string(),
            "--markdown".into(),
            summary.display().to_string(),
            "--svg".into(),
            chart.display().to_string(),
            "--docs".into(),
            docs.display().to_string(),
        ],
        None,
    );
    assert!(output.status.success(), "report: {output:?}");
    let summary = std::fs::read_to_string(summary).unwrap();
    for heading in [
        "Fan-out at max rate",
        "Fan-out at a fixed rate",
        "Many topics",
        "Idle connections",
        "Durable publish",
        "Resume",
        "Connection churn",
        "Wildcard flood",
        "Every run",
    ] {
        assert!(summary.contains(heading), "no {heading:?} in:\n{summary}");
    }
    assert!(!summary.contains("not ok"), "{summary}");
    let chart = std::fs::read_to_string(chart).unwrap();
    assert!(
        chart.starts_with("<svg") && chart.contains("sockeye"),
        "{chart}"
    );
    let docs = std::fs::read_to_string(docs).unwrap();
    assert!(docs.contains("Connection churn") && !docs.contains("old") && docs.ends_with("tail\n"));
}

#[test]
fn baseline_runs_the_shared_scenarios() {
    let target = start_baseline();
    let results = tempfile::tempdir().unwrap();
    shared_scenarios(&target, results.path());
}

#[test]
fn nats_runs_the_shared_scenarios() {
    let target = start_nats();
    let results = tempfile::tempdir().unwrap();
    shared_scenarios(&target, results.path());
}

#[test]
fn a_bad_token_or_an_unsupported_scenario_fails_with_a_clear_message() {
    let target = start_sockeye();
    let output = run_bench(
        &[
            "fanout".into(),
            "--target".into(),
            "sockeye".into(),
            "--url".into(),
            target.url.clone(),
            "--subscribers".into(),
            "1".into(),
        ],
        Some("not-a-jwt"),
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("HTTP 401") && stderr.contains("token_malformed"),
        "{stderr}"
    );

    let baseline = start_baseline();
    let url = baseline.url.as_str();
    let on_baseline = ["--target", "baseline", "--url", url];
    // Durable publish and the cluster scenario need stored topics.
    for scenario in ["durable", "cluster"] {
        assert_refused(
            &[&[scenario][..], &on_baseline].concat(),
            "only --target sockeye supports it",
        );
    }
    // Only scenarios that have subscribers take --subscriber-url.
    assert_refused(
        &[&["durable"][..], &on_baseline, &["--subscriber-url", url]].concat(),
        "--subscriber-url is for fanout, topics and cluster, not for durable",
    );
}

/// Runs the generator without a token and checks it refuses with exit code
/// 2 and `message` on stderr.
fn assert_refused(args: &[&str], message: &str) {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let output = run_bench(&args, None);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(message),
        "{output:?}"
    );
}
