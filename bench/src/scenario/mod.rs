//! The scenarios, and what they share: the run context (dialer, topic
//! names, process sampling) and payload contents.
//!
//! - [`fanout`]: scenarios 1 (one topic, N subscribers) and 2 (P topics, S
//!   subscribers each), at a fixed rate or at the highest rate the slowest
//!   subscriber allows.
//! - [`idle`]: scenario 3, held connections and broker memory per connection.
//! - [`durable`]: scenario 4, concurrent publishers waiting for acks.
//! - [`resume`]: scenario 5, replay to a subscriber that comes back behind.
//! - [`churn`]: scenario 6, connection setup rate.
//! - [`wildcard`]: scenario 7, a wildcard-filter flood and a healthy
//!   client's round trips through it.
//! - scenario 8, `cluster`, is [`fanout`] on a stored topic, with the
//!   subscribers spread over other nodes than the publisher's.

pub(crate) mod churn;
pub(crate) mod durable;
pub(crate) mod fanout;
pub(crate) mod idle;
pub(crate) mod resume;
pub(crate) mod wildcard;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::bail;

use crate::cli::RunArgs;
use crate::client::{Dialer, Target};
use crate::metrics::{self, ProcessSample, ProcessUsage};
use crate::report::{Errors, GENERATOR_SATURATED_PERCENT, Report, ratio};
use crate::wire::STAMP_LEN;

/// What every scenario needs to run.
#[derive(Debug)]
pub(crate) struct RunContext {
    /// Opens connections to the target (`--url`).
    pub(crate) dialer: Arc<Dialer>,
    /// Opens subscribers' connections (`--subscriber-url`), in turn; empty:
    /// subscribers use `dialer` too.
    subscriber_dialers: Vec<Arc<Dialer>>,
    /// The target process, for CPU and memory figures.
    pub(crate) broker_pid: Option<u32>,
    /// More processes of the target (`--also-pid`), added to the broker's figures.
    also_pids: Vec<u32>,
    /// Makes topic names unique to this run.
    pub(crate) run_id: String,
    /// `--label`.
    pub(crate) label: Option<String>,
    /// `--variant`.
    pub(crate) variant: Option<String>,
    /// `--repetition`.
    pub(crate) repetition: Option<u32>,
    /// When the run started, unix milliseconds.
    pub(crate) started_at_ms: u64,
}

impl RunContext {
    /// A context for the run `args` describe; the run id defaults to the
    /// start time.
    pub(crate) fn new(
        dialer: Dialer,
        subscriber_dialers: Vec<Dialer>,
        args: &RunArgs,
    ) -> anyhow::Result<Self> {
        let started_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0);
        let run_id = args
            .run_id
            .clone()
            .unwrap_or_else(|| started_at_ms.to_string());
        check_file_name_part("--run-id", &run_id)?;
        if let Some(variant) = &args.variant {
            check_file_name_part("--variant", variant)?;
        }
        Ok(Self {
            dialer: Arc::new(dialer),
            subscriber_dialers: subscriber_dialers.into_iter().map(Arc::new).collect(),
            broker_pid: args.broker_pid,
            also_pids: args.also_pids.clone(),
            run_id,
            label: args.label.clone(),
            variant: args.variant.clone(),
            repetition: args.repetition,
            started_at_ms,
        })
    }

    /// The target under test.
    pub(crate) fn target(&self) -> Target {
        self.dialer.target()
    }

    /// `bench.<scenario>.<run id>.<index>`: valid as a Sockeye topic and a
    /// NATS subject.
    pub(crate) fn topic(&self, scenario: &str, index: u64) -> String {
        format!("bench.{scenario}.{}.{index}", self.run_id)
    }

    /// The dialer of the `index`th subscriber: the `--subscriber-url`s in
    /// turn, or `--url` without them.
    pub(crate) fn subscriber_dialer(&self, index: usize) -> &Arc<Dialer> {
        if self.subscriber_dialers.is_empty() {
            &self.dialer
        } else {
            &self.subscriber_dialers[index % self.subscriber_dialers.len()]
        }
    }

    /// How many different URLs subscribers connect to.
    pub(crate) fn subscriber_endpoints(&self) -> usize {
        self.subscriber_dialers.len().max(1)
    }

    /// Fails if `--subscriber-url` was given to a scenario that does not use it.
    pub(crate) fn require_one_url(&self, scenario: &str) -> anyhow::Result<()> {
        if !self.subscriber_dialers.is_empty() {
            bail!("--subscriber-url is for fanout, topics and cluster, not for {scenario}");
        }
        Ok(())
    }

    /// Fails unless the target supports the scenario.
    pub(crate) fn require_sockeye(&self, scenario: &str) -> anyhow::Result<()> {
        if self.target() != Target::Sockeye {
            bail!(
                "scenario {scenario} needs stored topics and acks: only --target sockeye supports it"
            );
        }
        Ok(())
    }

    /// Samples the broker and the generator at the start of the measured phase.
    pub(crate) fn start_measuring(&self) -> Measurement {
        Measurement {
            broker: metrics::try_sample(self.broker_pid),
            also: self
                .also_pids
                .iter()
                .map(|pid| metrics::try_sample(Some(*pid)))
                .collect(),
            generator: metrics::try_sample(Some(std::process::id())),
        }
    }
}

/// Process samples taken at the start of a measured phase.
#[derive(Debug, Clone)]
pub(crate) struct Measurement {
    broker: Option<(u32, ProcessSample)>,
    /// The target's other processes (`--also-pid`); `None` if one could
    /// not be sampled, which leaves the target's total unknown.
    also: Option<Vec<(u32, ProcessSample)>>,
    generator: Option<(u32, ProcessSample)>,
}

impl Measurement {
    /// The broker's RSS at the start, KiB.
    pub(crate) fn broker_rss_kib(&self) -> Option<u64> {
        self.broker.map(|(_, sample)| sample.rss_kib())
    }

    /// Usage of the broker (with its other processes added) and of the
    /// generator from the start until now. The broker's is `None` (shown as
    /// unknown, not under-counted) if any of its processes could not be
    /// sampled at the start or now.
    pub(crate) fn finish(&self) -> (Option<ProcessUsage>, Option<ProcessUsage>) {
        let until_now = |start: Option<(u32, ProcessSample)>| {
            let (pid, first) = start?;
            let (_, now) = metrics::try_sample(Some(pid))?;
            Some(first.usage_until(pid, &now))
        };
        let broker = until_now(self.broker).and_then(|mut usage| {
            let Some(also) = &self.also else {
                tracing::warn!("an --also-pid could not be sampled at the start: the target's CPU and memory are unknown");
                return None;
            };
            for start in also {
                let Some(other) = until_now(Some(*start)) else {
                    tracing::warn!(pid = start.0, "an --also-pid could not be sampled at the end: the target's CPU and memory are unknown");
                    return None;
                };
                usage.add(&other);
            }
            Some(usage)
        });
        (broker, until_now(self.generator))
    }
}

/// The counts every scenario ends with.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) scenario: &'static str,
    pub(crate) case: String,
    pub(crate) params: serde_json::Value,
    pub(crate) connections: u64,
    pub(crate) elapsed_s: f64,
    pub(crate) published: u64,
    pub(crate) expected: u64,
    pub(crate) delivered: u64,
    pub(crate) loss_allowed: bool,
    pub(crate) rate_per_s: f64,
    pub(crate) rate_unit: &'static str,
    pub(crate) publish_rate_per_s: Option<f64>,
    pub(crate) latency_us: Option<metrics::Percentiles>,
    pub(crate) usage: (Option<ProcessUsage>, Option<ProcessUsage>),
    pub(crate) extra: BTreeMap<String, f64>,
    pub(crate) errors: Errors,
}

impl Outcome {
    /// The report of this outcome.
    pub(crate) fn into_report(self, context: &RunContext) -> Report {
        let delivery_ratio = ratio(self.delivered, self.expected);
        let ok = self.errors.is_empty() && (self.loss_allowed || self.delivered == self.expected);
        Report {
            scenario: self.scenario.to_owned(),
            case: self.case,
            target: context.target().name().to_owned(),
            label: context.label.clone(),
            variant: context.variant.clone(),
            repetition: context.repetition,
            params: self.params,
            started_at_ms: context.started_at_ms,
            connections: self.connections,
            elapsed_s: self.elapsed_s,
            published: self.published,
            expected: self.expected,
            delivered: self.delivered,
            delivery_ratio,
            loss_allowed: self.loss_allowed,
            rate_per_s: self.rate_per_s,
            rate_unit: self.rate_unit.to_owned(),
            publish_rate_per_s: self.publish_rate_per_s,
            latency_us: self.latency_us,
            broker: self.usage.0,
            generator: self.usage.1,
            generator_saturated: self
                .usage
                .1
                .is_some_and(|usage| usage.cpu_percent >= GENERATOR_SATURATED_PERCENT),
            extra: self.extra,
            errors: self.errors.into_list(),
            ok,
        }
    }
}

/// `count / seconds`, 0 for an empty interval.
pub(crate) fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// A payload of `size` bytes (at least the stamp): room for the stamp, then
/// text-like filler, so the 16 KiB case compresses like real JSON or prose
/// would (about 3x), not like zeros.
pub(crate) fn payload_template(size: usize) -> Vec<u8> {
    const WORDS: [&str; 16] = [
        "order",
        "price",
        "quantity",
        "symbol",
        "user",
        "\"id\":",
        "true",
        "false",
        "status",
        "pending",
        "filled",
        "eu-west",
        "2026-01-01",
        "{",
        "}",
        "null",
    ];
    let size = size.max(STAMP_LEN);
    let mut data = Vec::with_capacity(size + 16);
    data.resize(STAMP_LEN, 0);
    let mut state: u32 = 0x2545_f491;
    while data.len() < size {
        // xorshift32: deterministic, so every run sends the same bytes.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        data.extend_from_slice(WORDS[(state % 16) as usize].as_bytes());
        data.push(if state & 0x100 == 0 { b' ' } else { b',' });
        if state & 0xff < 40 {
            data.extend_from_slice(&(state % 100_000).to_string().into_bytes());
        }
    }
    data.truncate(size);
    data
}

/// `--run-id` and `--variant` become parts of report file names: letters,
/// digits, '_' and '-' only.
fn check_file_name_part(flag: &str, value: &str) -> anyhow::Result<()> {
    let valid = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        bail!("{flag} {value:?}: use only letters, digits, '_' and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_asked_size_and_compress_moderately() {
        assert_eq!(payload_template(10).len(), STAMP_LEN);
        assert_eq!(payload_template(100).len(), 100);
        let big = payload_template(16 * 1024);
        assert_eq!(big.len(), 16 * 1024);
        assert_eq!(big, payload_template(16 * 1024));
        let frame = sockeye_protocol::ClientMessage::Publish {
            id: 1,
            topic: "t".into(),
            payload: sockeye_protocol::Payload::binary(&big),
            ack: false,
        }
        .encode_frame(&sockeye_protocol::Compression::default());
        let factor = big.len() as f64 / frame.len() as f64;
        assert!((1.5..8.0).contains(&factor), "compresses {factor:.1}x");
    }
}
