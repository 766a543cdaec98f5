//! The command line: one subcommand per scenario, the baseline server, and
//! the report generator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::Target;

/// Load generator and benchmarks for Sockeye, nats-server over WebSocket and
/// a raw tokio-tungstenite baseline. Every run is bounded in connections,
/// messages and time.
#[derive(Debug, Parser)]
#[command(version, about)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Scenario 1: one publisher, N subscribers on one topic.
    Fanout(FanoutArgs),
    /// Scenario 2: P publishers, each with its own topic and S subscribers.
    Topics(TopicsArgs),
    /// Scenario 3: hold C idle connections and report broker RSS per connection.
    Idle(IdleArgs),
    /// Scenario 4: K concurrent publishers with acks (Sockeye only).
    Durable(DurableArgs),
    /// Scenario 5: a subscriber reconnects M messages behind; time the replay (Sockeye only).
    Resume(ResumeArgs),
    /// Scenario 6: connects + handshakes (+ JWT verification) per second.
    Churn(ChurnArgs),
    /// Scenario 7: a wildcard-filter flood, and a healthy client's round trips (Sockeye only).
    Wildcard(WildcardArgs),
    /// Scenario 8: one publisher, N subscribers on one stored topic (Sockeye
    /// only); with --subscriber-url, the subscribers on other nodes of a
    /// cluster than the publisher's --url.
    Cluster(FanoutArgs),
    /// Run the minimal tokio-tungstenite broadcaster (the baseline target).
    Baseline(BaselineArgs),
    /// Turn a directory of JSON results into a markdown table and an SVG chart.
    Report(ReportArgs),
}

/// A byte size written as `100`, `100 B`, `16 KiB` or `1 MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size(pub(crate) usize);

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parsed: bytesize::ByteSize = text
            .parse()
            .map_err(|err| format!("{text:?} is not a size like 100, 1KiB, 16 KiB: {err}"))?;
        usize::try_from(parsed.as_u64())
            .map(Size)
            .map_err(|_| format!("{text} is too large"))
    }
}

/// A duration written as `500ms`, `5s`, `2m`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("{text:?}: {err}"))
}

/// How fast publishers publish.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Rate {
    /// As fast as the window (the slowest subscriber) allows.
    Max,
    /// This many deliveries per second in total (messages per second times
    /// subscribers per message), spread evenly over the publishers.
    Deliveries(f64),
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        match text.replace('_', "").parse::<f64>() {
            Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(Rate::Deliveries(rate)),
            _ => Err(format!(
                "{text:?}: expected \"max\" or deliveries per second (> 0)"
            )),
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::Max => f.write_str("max rate"),
            Rate::Deliveries(rate) => {
                write!(f, "{} deliveries/s", crate::report::human_rate(*rate))
            }
        }
    }
}

/// Flags every scenario shares: where the target is and how to reach it.
#[derive(Debug, Clone, Args)]
pub(crate) struct RunArgs {
    /// The system under test.
    #[arg(long, value_enum)]
    pub(crate) target: Target,
    /// WebSocket URL of the target.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub(crate) url: String,
    /// JWT for Sockeye (sent as `Authorization: Bearer`).
    #[arg(long, env = "BENCH_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// PID of the target process: its CPU time and RSS are reported.
    #[arg(long, value_name = "PID")]
    pub(crate) broker_pid: Option<u32>,
    /// Another process of the system under test (a cluster's other nodes,
    /// its Redis), repeatable: its CPU time and RSS are added to
    /// --broker-pid's.
    #[arg(long = "also-pid", value_name = "PID", requires = "broker_pid")]
    pub(crate) also_pids: Vec<u32>,
    /// WebSocket URL for subscribers, repeatable (fanout, topics, cluster):
    /// subscribers are spread over these in turn, and only publishers use
    /// --url; e.g. subscribers on two nodes of a cluster, the publisher on
    /// a third.
    #[arg(long = "subscriber-url", value_name = "URL")]
    pub(crate) subscriber_urls: Vec<String>,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json: Option<PathBuf>,
    /// Free text stored in the report (e.g. the broker's durability mode).
    #[arg(long)]
    pub(crate) label: Option<String>,
    /// Which build of the target this is, when several builds of one target
    /// are compared in one run (e.g. `before`, `after`): reports of different
    /// variants are compared side by side, like different targets.
    #[arg(long)]
    pub(crate) variant: Option<String>,
    /// Which repetition of its case this run is (from 1): ratios are taken
    /// between runs of the same case and repetition, then their median.
    #[arg(long, value_name = "N")]
    pub(crate) repetition: Option<u32>,
    /// Spread connections over source addresses 127.0.0.1 ..= 127.0.0.N
    /// (each offers ~28k ephemeral ports); used for loopback targets only.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub(crate) source_addresses: u8,
    /// Connections in their connect/handshake at the same time.
    #[arg(long, default_value_t = 256)]
    pub(crate) connect_concurrency: usize,
    /// Time allowed for one connect + handshake + greeting.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,
    /// WebSocket read buffer per connection.
    #[arg(long, default_value = "8 KiB")]
    pub(crate) read_buffer: Size,
    /// WebSocket write buffer of publishers (writes are flushed per batch).
    #[arg(long, default_value = "64 KiB")]
    pub(crate) write_buffer: Size,
    /// Hard limit on the whole run, setup included; past it the run fails.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub(crate) deadline: Duration,
    /// Worker threads of the generator (default: one per core).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Part of every topic name, so runs against a long-lived broker never
    /// share topics (default: the start time).
    #[arg(long)]
    pub(crate) run_id: Option<String>,
    /// Exit with status 0 even if the run was not ok (lost messages, errors).
    #[arg(long)]
    pub(crate) allow_failure: bool,
}

/// Publishing flags of fan-out style scenarios.
#[derive(Debug, Clone, Args)]
pub(crate) struct PublishArgs {
    /// Payload bytes per message (at least 24: the stamp).
    #[arg(long, default_value = "100")]
    pub(crate) size: Size,
    /// `max`, or total deliveries per second (e.g. 100000).
    #[arg(long, default_value = "max")]
    pub(crate) rate: Rate,
    /// How long publishers publish.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Most messages per publisher.
    #[arg(long, default_value_t = 10_000_000)]
    pub(crate) max_messages: u64,
    /// Messages a publisher may be ahead of its slowest subscriber; keep it
    /// below the target's per-connection queue (Sockeye: limits.outbound_queue).
    /// Also capped at 200,000 deliveries in flight per topic at max rate,
    /// and at half a second of messages at a fixed rate.
    #[arg(long, default_value_t = 512)]
    pub(crate) window: u64,
    /// After publishing stops, how long to wait for the last deliveries.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(crate) drain_timeout: Duration,
    /// Give up when the window has not moved for this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub(crate) stall_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct FanoutArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    #[command(flatten)]
    pub(crate) publish: PublishArgs,
    /// Subscribers on the topic.
    #[arg(long, default_value_t = 100)]
    pub(crate) subscribers: u32,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct TopicsArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    #[command(flatten)]
    pub(crate) publish: PublishArgs,
    /// Publishers, each with its own topic.
    #[arg(long, default_value_t = 10)]
    pub(crate) publishers: u32,
    /// Subscribers per topic.
    #[arg(long, default_value_t = 10)]
    pub(crate) subscribers: u32,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct IdleArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    /// Connections to hold.
    #[arg(long, default_value_t = 1000)]
    pub(crate) connections: u32,
    /// Also subscribe each connection to a topic (one of 64).
    #[arg(long)]
    pub(crate) subscribe: bool,
    /// How long to hold all connections before measuring.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub(crate) settle: Duration,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct DurableArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    /// Concurrent publishers, each with its own stored topic.
    #[arg(long, default_value_t = 100)]
    pub(crate) publishers: u32,
    /// Unacknowledged publishes per publisher.
    #[arg(long, default_value_t = 1)]
    pub(crate) inflight: u32,
    /// Payload bytes per message (at least 24).
    #[arg(long, default_value = "100")]
    pub(crate) size: Size,
    /// How long publishers publish.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Most messages per publisher.
    #[arg(long, default_value_t = 10_000_000)]
    pub(crate) max_messages: u64,
    /// After publishing stops, how long to wait for the last acks.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(crate) drain_timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ResumeArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    /// Messages published while the subscriber is away.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) messages: u64,
    /// Payload bytes per message (at least 24).
    #[arg(long, default_value = "100")]
    pub(crate) size: Size,
    /// Unacknowledged publishes while filling the topic.
    #[arg(long, default_value_t = 256)]
    pub(crate) inflight: u32,
    /// Most time for filling, and again for the replay.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ChurnArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 32)]
    pub(crate) concurrency: u32,
    /// How long to keep connecting.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Most handshakes in total.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) max_handshakes: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct WildcardArgs {
    #[command(flatten)]
    pub(crate) run: RunArgs,
    /// Attacker connections (all with the one token).
    #[arg(long, default_value_t = 64)]
    pub(crate) attackers: u32,
    /// Filters each attacker subscribes (refusals are counted, not fatal).
    #[arg(long, default_value_t = 256)]
    pub(crate) filters: u32,
    /// Segments of the flood's name; its filters are the literal/`*`
    /// combinations of them.
    #[arg(long, default_value_t = 14)]
    pub(crate) segments: usize,
    /// Segments of the healthy client's topic.
    #[arg(long, default_value_t = 15)]
    pub(crate) topic_segments: usize,
    /// Leading segments of the healthy topic equal to the flood's literals
    /// (the rest are `miss`).
    #[arg(long, default_value_t = 14)]
    pub(crate) prefix: usize,
    /// A new topic for every publish (its last segment numbered), so that
    /// no cached match result helps.
    #[arg(long)]
    pub(crate) distinct: bool,
    /// Round trips to measure.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) messages: u64,
    /// Stop measuring after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Give up on a round trip after this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(crate) round_trip_timeout: Duration,
    /// Payload bytes per message (at least 24: the stamp).
    #[arg(long, default_value = "100")]
    pub(crate) size: Size,
    /// The healthy client's token, for another `sub` than the attackers'
    /// (the broker caps wildcard filters per `sub`); default: the run's.
    #[arg(long, env = "BENCH_HEALTHY_TOKEN", hide_env_values = true)]
    pub(crate) healthy_token: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct BaselineArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub(crate) listen: SocketAddr,
    /// Frames queued per connection before it is closed as a slow consumer (4002).
    #[arg(long, default_value_t = 1024)]
    pub(crate) queue: usize,
    /// WebSocket read buffer per connection.
    #[arg(long, default_value = "4 KiB")]
    pub(crate) read_buffer: Size,
    /// Outgoing bytes gathered before a socket write.
    #[arg(long, default_value = "16 KiB")]
    pub(crate) write_buffer: Size,
    /// Largest frame accepted.
    #[arg(long, default_value = "1 MiB")]
    pub(crate) max_frame: Size,
    /// Compression threshold announced in `welcome`: publishers compress
    /// frames whose body is larger (the baseline itself never compresses).
    #[arg(
        long,
        default_value = "1 KiB",
        env = "BENCH_BASELINE_COMPRESSION_THRESHOLD"
    )]
    pub(crate) compression_threshold: Size,
    /// Stop by itself after this long (every run is bounded).
    #[arg(long, default_value = "2h", value_parser = parse_duration)]
    pub(crate) max_lifetime: Duration,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ReportArgs {
    /// Directory of JSON results (every *.json in it is read).
    #[arg(long, default_value = "bench/results")]
    pub(crate) results: PathBuf,
    /// Write the markdown tables here.
    #[arg(long, value_name = "FILE")]
    pub(crate) markdown: Option<PathBuf>,
    /// Write the SVG chart here.
    #[arg(long, value_name = "FILE")]
    pub(crate) svg: Option<PathBuf>,
    /// Replace the part between `<!-- results:begin -->` and
    /// `<!-- results:end -->` of this file with the tables.
    #[arg(long, value_name = "FILE")]
    pub(crate) docs: Option<PathBuf>,
    /// Text about the machine and run, put above the tables.
    #[arg(long)]
    pub(crate) preamble: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_rates_and_durations_parse() {
        assert_eq!("100".parse::<Size>(), Ok(Size(100)));
        assert_eq!("16 KiB".parse::<Size>(), Ok(Size(16 * 1024)));
        assert_eq!("1KiB".parse::<Size>(), Ok(Size(1024)));
        assert!("lots".parse::<Size>().is_err());
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("100_000".parse::<Rate>(), Ok(Rate::Deliveries(100_000.0)));
        assert!("0".parse::<Rate>().is_err());
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
