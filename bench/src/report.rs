//! The result of one run: what was measured, printed as a table and written
//! as JSON (one file per run) for `sockeye-bench report` and for scripts.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::metrics::{Percentiles, ProcessUsage};

/// Generator CPU, in percent of one core, at or above which a run is flagged
/// as generator-bound: broker and generator share the machine's cores, so on
/// the reference machine (2 cores) one core is the generator's share, and a
/// generator that used all of it may be what limited the run.
pub(crate) const GENERATOR_SATURATED_PERCENT: f64 = 90.0;

/// Errors kept per run (each with its count); more distinct ones are counted
/// but not listed.
const MAX_DISTINCT_ERRORS: usize = 20;

/// One run of one scenario against one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    /// `fanout`, `topics`, `idle`, `durable`, `resume` or `churn`.
    pub(crate) scenario: String,
    /// The case within the scenario, e.g. `1->1000 x 100 B, max rate`; runs
    /// of the same case against different targets are compared.
    pub(crate) case: String,
    /// `sockeye`, `nats` or `baseline`.
    pub(crate) target: String,
    /// Free text from `--label` (e.g. the broker's durability mode).
    pub(crate) label: Option<String>,
    /// The build of the target (`--variant`, e.g. `before`), when several
    /// builds of one target are compared.
    #[serde(default)]
    pub(crate) variant: Option<String>,
    /// Which repetition of its case this run is (`--repetition`, from 1).
    #[serde(default)]
    pub(crate) repetition: Option<u32>,
    /// The scenario's parameters as given.
    pub(crate) params: serde_json::Value,
    /// When the run started, unix milliseconds.
    pub(crate) started_at_ms: u64,
    /// Connections the run opened (at its peak).
    pub(crate) connections: u64,
    /// Seconds of the measured phase.
    pub(crate) elapsed_s: f64,
    /// Messages published (or handshakes attempted, for churn).
    pub(crate) published: u64,
    /// What should have arrived: deliveries, acks, replayed messages,
    /// connections or handshakes, depending on the scenario.
    pub(crate) expected: u64,
    /// What did arrive, counted once each and in order.
    pub(crate) delivered: u64,
    /// `delivered / expected`; must be exactly 1.0 unless `loss_allowed`.
    pub(crate) delivery_ratio: f64,
    /// Whether the scenario tolerates `delivery_ratio < 1.0`.
    pub(crate) loss_allowed: bool,
    /// The headline rate: deliveries/s (fanout, topics), acked messages/s
    /// (durable), replayed messages/s (resume), handshakes/s (churn).
    pub(crate) rate_per_s: f64,
    /// What `rate_per_s` counts.
    pub(crate) rate_unit: String,
    /// Publishes per second during the publishing phase, when meaningful.
    pub(crate) publish_rate_per_s: Option<f64>,
    /// Latency in microseconds: publish-to-deliver (fanout, topics),
    /// publish-to-ack (durable), connect-to-welcome (churn).
    pub(crate) latency_us: Option<Percentiles>,
    /// The broker process over the measured phase (when its pid was given).
    pub(crate) broker: Option<ProcessUsage>,
    /// The generator itself over the measured phase.
    pub(crate) generator: Option<ProcessUsage>,
    /// The generator used at least [`GENERATOR_SATURATED_PERCENT`] of one
    /// core over the measured phase: the run may measure the generator.
    #[serde(default)]
    pub(crate) generator_saturated: bool,
    /// Scenario-specific figures (idle: bytes per connection; resume: replay
    /// seconds; ...).
    pub(crate) extra: BTreeMap<String, f64>,
    /// Distinct errors with how often each happened.
    pub(crate) errors: Vec<ErrorCount>,
    /// True when nothing was lost (or loss is allowed) and no error happened.
    pub(crate) ok: bool,
}

/// An error message and how many times it happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct ErrorCount {
    /// The message.
    pub(crate) message: String,
    /// Occurrences.
    pub(crate) count: u64,
}

/// Collects errors from many tasks without keeping thousands of copies.
#[derive(Debug, Default, Clone)]
pub(crate) struct Errors {
    counts: BTreeMap<String, u64>,
    dropped: u64,
}

impl Errors {
    /// Counts one occurrence of `message`.
    pub(crate) fn add(&mut self, message: impl Into<String>) {
        self.add_n(message.into(), 1);
    }

    fn add_n(&mut self, message: String, count: u64) {
        if let Some(existing) = self.counts.get_mut(&message) {
            *existing += count;
        } else if self.counts.len() < MAX_DISTINCT_ERRORS {
            self.counts.insert(message, count);
        } else {
            self.dropped += count;
        }
    }

    /// Adds everything `other` collected.
    pub(crate) fn merge(&mut self, other: Errors) {
        for (message, count) in other.counts {
            self.add_n(message, count);
        }
        self.dropped += other.dropped;
    }

    /// Occurrences of all errors together.
    pub(crate) fn total(&self) -> u64 {
        self.counts.values().sum::<u64>() + self.dropped
    }

    /// True when nothing was counted.
    pub(crate) fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.dropped == 0
    }

    /// The list for the report.
    pub(crate) fn into_list(self) -> Vec<ErrorCount> {
        let mut list: Vec<ErrorCount> = self
            .counts
            .into_iter()
            .map(|(message, count)| ErrorCount { message, count })
            .collect();
        if self.dropped > 0 {
            list.push(ErrorCount {
                message: "(other errors)".into(),
                count: self.dropped,
            });
        }
        list
    }
}

/// `delivered / expected`, 1.0 when nothing was expected.
pub(crate) fn ratio(delivered: u64, expected: u64) -> f64 {
    if expected == 0 {
        1.0
    } else {
        delivered as f64 / expected as f64
    }
}

impl Report {
    /// Writes the report as pretty JSON, creating the directory if needed.
    pub(crate) fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self).context("cannot encode the report")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads a report written by [`Report::write_json`].
    pub(crate) fn read_json(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a report", path.display()))
    }

    /// A human-readable summary, one `key  value` line each.
    pub(crate) fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            (
                "scenario".into(),
                format!("{} ({})", self.scenario, self.case),
            ),
            ("target".into(), self.target.clone()),
        ];
        if let Some(label) = &self.label {
            rows.push(("label".into(), label.clone()));
        }
        if let Some(variant) = &self.variant {
            rows.push(("variant".into(), variant.clone()));
        }
        if let Some(repetition) = self.repetition {
            rows.push(("repetition".into(), repetition.to_string()));
        }
        rows.push(("connections".into(), self.connections.to_string()));
        rows.push(("elapsed".into(), format!("{:.2} s", self.elapsed_s)));
        rows.push((self.rate_unit.clone(), human_rate(self.rate_per_s)));
        if let Some(rate) = self.publish_rate_per_s {
            rows.push(("publishes/s".into(), human_rate(rate)));
        }
        rows.push((
            "delivered/expected".into(),
            format!(
                "{}/{} = {}{}",
                self.delivered,
                self.expected,
                self.delivery_ratio,
                if self.loss_allowed {
                    " (loss allowed)"
                } else {
                    ""
                }
            ),
        ));
        if let Some(latency) = &self.latency_us {
            rows.push((
                "latency p50/p90/p99/p99.9/max".into(),
                format!(
                    "{} / {} / {} / {} / {} ({} samples)",
                    human_us(latency.p50),
                    human_us(latency.p90),
                    human_us(latency.p99),
                    human_us(latency.p999),
                    human_us(latency.max),
                    latency.count
                ),
            ));
        }
        for (who, usage) in [("broker", &self.broker), ("generator", &self.generator)] {
            if let Some(usage) = usage {
                let saturated = who == "generator" && self.generator_saturated;
                rows.push((
                    format!("{who} cpu"),
                    format!(
                        "{:.0}% of one core ({:.2} s){}",
                        usage.cpu_percent,
                        usage.cpu_seconds,
                        if saturated { ", saturated" } else { "" }
                    ),
                ));
                rows.push((
                    format!("{who} rss"),
                    format!(
                        "{} -> {} (peak {})",
                        human_kib(usage.rss_before_kib),
                        human_kib(usage.rss_after_kib),
                        human_kib(usage.peak_rss_kib)
                    ),
                ));
            }
        }
        for (key, value) in &self.extra {
            rows.push((key.clone(), format!("{value:.3}")));
        }
        for error in &self.errors {
            rows.push((
                "error".into(),
                format!("{} x{}", error.message, error.count),
            ));
        }
        rows.push(("ok".into(), self.ok.to_string()));
        let width = rows.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(key, value)| format!("{key:<width$}  {value}\n"))
            .collect()
    }
}

/// `1234567.0` as `1.23M`.
pub(crate) fn human_rate(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{rate:.1}")
    }
}

/// Microseconds as `850 us`, `12.3 ms` or `1.20 s`.
pub(crate) fn human_us(micros: f64) -> String {
    if micros >= 1e6 {
        format!("{:.2} s", micros / 1e6)
    } else if micros >= 1e3 {
        format!("{:.1} ms", micros / 1e3)
    } else {
        format!("{micros:.0} us")
    }
}

fn human_kib(kib: u64) -> String {
    if kib >= 1024 * 1024 {
        format!("{:.2} GiB", kib as f64 / (1024.0 * 1024.0))
    } else if kib >= 1024 {
        format!("{:.1} MiB", kib as f64 / 1024.0)
    } else {
        format!("{kib} KiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_and_capped() {
        let mut errors = Errors::default();
        for i in 0..100 {
            errors.add(format!("e{}", i % 30));
        }
        let mut other = Errors::default();
        other.add("e0");
        errors.merge(other);
        let list = errors.into_list();
        assert_eq!(list.len(), MAX_DISTINCT_ERRORS + 1);
        let e0 = list.iter().find(|e| e.message == "e0").unwrap();
        assert_eq!(e0.count, 5);
        assert_eq!(list.iter().map(|e| e.count).sum::<u64>(), 101);
    }

    #[test]
    fn rates_and_times_read_naturally() {
        assert_eq!(human_rate(4_300_000.0), "4.30M");
        assert_eq!(human_rate(52_400.0), "52.4k");
        assert_eq!(human_us(850.0), "850 us");
        assert_eq!(human_us(12_300.0), "12.3 ms");
        assert_eq!(ratio(0, 0), 1.0);
        assert_eq!(ratio(3, 4), 0.75);
    }
}
