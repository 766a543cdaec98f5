//! `sockeye-bench report`: reads every JSON report in a directory and writes
//! markdown tables (a comparison per scenario and every run in detail), the
//! SVG chart, and the results section of `docs/benchmarks.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};

use crate::cli::ReportArgs;
use crate::report::{Report, human_rate, human_us};

/// Marks the generated part of the docs file.
pub(crate) const BEGIN_MARKER: &str = "<!-- results:begin -->";
/// Ends the generated part of the docs file.
pub(crate) const END_MARKER: &str = "<!-- results:end -->";

/// Targets in the order tables and charts show them.
pub(crate) const TARGETS: [&str; 3] = ["sockeye", "baseline", "nats"];

/// What a comparison table or chart panel shows for one scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Headline {
    /// The run's rate; higher is better.
    Rate,
    /// p99 latency; lower is better.
    P99,
    /// Broker bytes per connection; lower is better.
    BytesPerConnection,
    /// Replay seconds; lower is better.
    ReplaySeconds,
}

impl Headline {
    /// The headline figure of a report.
    pub(crate) fn value(self, report: &Report) -> Option<f64> {
        match self {
            Headline::Rate => Some(report.rate_per_s),
            Headline::P99 => report.latency_us.map(|latency| latency.p99),
            Headline::BytesPerConnection => {
                report.extra.get("broker_rss_bytes_per_connection").copied()
            }
            Headline::ReplaySeconds => report.extra.get("replay_seconds").copied(),
        }
    }

    /// The figure as table text.
    pub(crate) fn format(self, value: f64) -> String {
        match self {
            Headline::Rate => human_rate(value),
            Headline::P99 => human_us(value),
            Headline::BytesPerConnection => format!("{:.1} KiB", value / 1024.0),
            Headline::ReplaySeconds => format!("{value:.3} s"),
        }
    }

    /// What the figure is.
    pub(crate) fn name(self, report: &Report) -> String {
        match self {
            Headline::Rate => report.rate_unit.clone(),
            Headline::P99 => "p99 latency".into(),
            Headline::BytesPerConnection => "broker RSS per connection".into(),
            Headline::ReplaySeconds => "replay time".into(),
        }
    }
}

/// One comparison: a scenario, or the fixed-rate part of one.
#[derive(Debug)]
pub(crate) struct Group<'a> {
    /// Section title.
    pub(crate) title: String,
    /// What is compared.
    pub(crate) headline: Headline,
    /// Cases in run order, each with its reports by target.
    pub(crate) cases: Vec<(String, BTreeMap<String, &'a Report>)>,
}

/// Sorts reports into comparison groups, in the order compare.sh runs them.
pub(crate) fn groups(reports: &[Report]) -> Vec<Group<'_>> {
    let mut sorted: Vec<&Report> = reports.iter().collect();
    sorted.sort_by_key(|report| report.started_at_ms);
    let mut groups: Vec<Group<'_>> = Vec::new();
    for report in sorted {
        let fixed_rate = report
            .params
            .get("rate_deliveries_per_s")
            .is_some_and(serde_json::Value::is_number);
        let (title, headline) = match (report.scenario.as_str(), fixed_rate) {
            ("fanout", false) => ("Fan-out at max rate (scenario 1)", Headline::Rate),
            ("fanout", true) => (
                "Fan-out at a fixed rate: latency (scenario 1)",
                Headline::P99,
            ),
            ("topics", false) => ("Many topics at max rate (scenario 2)", Headline::Rate),
            ("topics", true) => (
                "Many topics at a fixed rate: latency (scenario 2)",
                Headline::P99,
            ),
            ("idle", _) => (
                "Idle connections (scenario 3)",
                Headline::BytesPerConnection,
            ),
            ("durable", _) => ("Durable publish (scenario 4)", Headline::Rate),
            ("resume", _) => ("Resume (scenario 5)", Headline::ReplaySeconds),
            ("churn", _) => ("Connection churn (scenario 6)", Headline::Rate),
            ("wildcard", _) => ("Wildcard flood: round trips (scenario 7)", Headline::P99),
            _ => ("Other", Headline::Rate),
        };
        let group = match groups.iter_mut().position(|group| group.title == title) {
            Some(index) => &mut groups[index],
            None => {
                groups.push(Group {
                    title: title.to_owned(),
                    headline,
                    cases: Vec::new(),
                });
                groups.last_mut().expect("just pushed")
            }
        };
        let name = case_name(report);
        let case = match group.cases.iter().position(|(case, _)| *case == name) {
            Some(index) => &mut group.cases[index].1,
            None => {
                group.cases.push((name, BTreeMap::new()));
                &mut group.cases.last_mut().expect("just pushed").1
            }
        };
        // A later run of the same case and target replaces an earlier one.
        case.insert(report.target.clone(), report);
    }
    groups
}

/// The case a report belongs to: its case, and its label when the case does
/// not already name it, so that e.g. the same fan-out with compression off is
/// a case of its own.
fn case_name(report: &Report) -> String {
    match &report.label {
        Some(label) if !report.case.contains(label.as_str()) => {
            format!("{}, {label}", report.case)
        }
        _ => report.case.clone(),
    }
}

/// Reads every `*.json` report in `dir`.
pub(crate) fn read_reports(dir: &Path) -> anyhow::Result<Vec<Report>> {
    let mut reports = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|ext| ext == "json") {
            reports.push(Report::read_json(&path)?);
        }
    }
    if reports.is_empty() {
        bail!("no JSON reports in {}", dir.display());
    }
    Ok(reports)
}

/// The markdown: per group, a comparison table, then every run in detail.
pub(crate) fn markdown(reports: &[Report], preamble: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(preamble) = preamble {
        out.push_str(preamble.trim_end());
        out.push_str("\n\n");
    }
    let failed: Vec<&Report> = reports.iter().filter(|report| !report.ok).collect();
    if !failed.is_empty() {
        let _ = writeln!(
            out,
            "**{} run(s) were not ok** (lost messages or errors): see `ok` below.\n",
            failed.len()
        );
    }
    for group in groups(reports) {
        let _ = writeln!(out, "### {}\n", group.title);
        let present: Vec<&str> = TARGETS
            .iter()
            .copied()
            .filter(|target| {
                group
                    .cases
                    .iter()
                    .any(|(_, runs)| runs.contains_key(*target))
            })
            .collect();
        let sample = group
            .cases
            .iter()
            .flat_map(|(_, runs)| runs.values())
            .next()
            .copied();
        if let Some(sample) = sample {
            let _ = writeln!(out, "Compared: {}.\n", group.headline.name(sample));
        }
        let mut header = String::from("| case |");
        let mut rule = String::from("| --- |");
        for target in &present {
            let _ = write!(header, " {target} |");
            rule.push_str(" ---: |");
        }
        let ratios = present.contains(&"sockeye") && present.len() > 1;
        if ratios {
            for other in present.iter().filter(|target| **target != "sockeye") {
                let _ = write!(header, " sockeye / {other} |");
                rule.push_str(" ---: |");
            }
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for (case, runs) in &group.cases {
            let mut row = format!("| {case} |");
            for target in &present {
                let cell = runs
                    .get(*target)
                    .map(|report| {
                        let value = group
                            .headline
                            .value(report)
                            .map(|value| group.headline.format(value))
                            .unwrap_or_else(|| "n/a".into());
                        if report.ok {
                            value
                        } else {
                            format!("{value} (not ok)")
                        }
                    })
                    .unwrap_or_else(|| "-".into());
                let _ = write!(row, " {cell} |");
            }
            if ratios {
                let sockeye = runs.get("sockeye").and_then(|r| group.headline.value(r));
                for other in present.iter().filter(|target| **target != "sockeye") {
                    let theirs = runs.get(*other).and_then(|r| group.headline.value(r));
                    let cell = match (sockeye, theirs) {
                        (Some(ours), Some(theirs)) if theirs > 0.0 => {
                            format!("{:.2}", ours / theirs)
                        }
                        _ => "-".into(),
                    };
                    let _ = write!(row, " {cell} |");
                }
            }
            let _ = writeln!(out, "{row}");
        }
        out.push('\n');
    }
    out.push_str(&details(reports));
    out
}

/// Every run, one row each.
fn details(reports: &[Report]) -> String {
    let mut sorted: Vec<&Report> = reports.iter().collect();
    sorted.sort_by_key(|report| report.started_at_ms);
    let mut out = String::from(
        "### Every run\n\n\
         | scenario | case | target | rate | p50 | p99 | p99.9 | delivered/expected | broker CPU | broker RSS after | generator CPU | ok |\n\
         | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for report in sorted {
        let latency = |pick: fn(&crate::metrics::Percentiles) -> f64| {
            report
                .latency_us
                .as_ref()
                .map(|latency| human_us(pick(latency)))
                .unwrap_or_else(|| "-".into())
        };
        let cpu = |usage: &Option<crate::metrics::ProcessUsage>| {
            usage
                .map(|usage| format!("{:.0}%", usage.cpu_percent))
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} {} | {} | {} | {} | {}/{} | {} | {} | {} | {} |",
            report.scenario,
            case_name(report),
            report.target,
            human_rate(report.rate_per_s),
            report.rate_unit,
            latency(|l| l.p50),
            latency(|l| l.p99),
            latency(|l| l.p999),
            report.delivered,
            report.expected,
            cpu(&report.broker),
            report
                .broker
                .map(|usage| format!("{:.1} MiB", usage.rss_after_kib as f64 / 1024.0))
                .unwrap_or_else(|| "-".into()),
            cpu(&report.generator),
            if report.ok { "yes" } else { "**no**" },
        );
    }
    out.push_str(
        "\nCPU is in percent of one core over the measured phase (the machine's cores are \
         shared by the broker and the generator).\n",
    );
    out
}

/// Replaces the text between the markers in `doc` with `section`.
pub(crate) fn splice(doc: &str, section: &str) -> anyhow::Result<String> {
    let begin = doc
        .find(BEGIN_MARKER)
        .with_context(|| format!("no {BEGIN_MARKER} line"))?;
    let end = doc
        .find(END_MARKER)
        .with_context(|| format!("no {END_MARKER} line"))?;
    if end < begin {
        bail!("{END_MARKER} comes before {BEGIN_MARKER}");
    }
    let head = &doc[..begin + BEGIN_MARKER.len()];
    let tail = &doc[end..];
    Ok(format!("{head}\n\n{}\n\n{tail}", section.trim()))
}

/// The `report` command.
pub(crate) fn write(args: &ReportArgs) -> anyhow::Result<()> {
    let reports = read_reports(&args.results)?;
    let markdown = markdown(&reports, args.preamble.as_deref());
    if let Some(path) = &args.markdown {
        std::fs::write(path, &markdown)
            .with_context(|| format!("cannot write {}", path.display()))?;
        tracing::info!(path = %path.display(), "markdown written");
    }
    if let Some(path) = &args.svg {
        crate::chart::draw(&reports, path)?;
        tracing::info!(path = %path.display(), "chart written");
    }
    if let Some(path) = &args.docs {
        let doc = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let updated = splice(&doc, &markdown).with_context(|| path.display().to_string())?;
        std::fs::write(path, updated)
            .with_context(|| format!("cannot write {}", path.display()))?;
        tracing::info!(path = %path.display(), "results section updated");
    }
    if args.markdown.is_none() && args.svg.is_none() && args.docs.is_none() {
        #[allow(clippy::print_stdout, reason = "the markdown is the command's output")]
        {
            print!("{markdown}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_the_marked_section() {
        let doc = format!("# Title\n\nintro\n\n{BEGIN_MARKER}\nold\n{END_MARKER}\n\nafter\n");
        let spliced = splice(&doc, "new table\n").unwrap();
        assert_eq!(
            spliced,
            format!("# Title\n\nintro\n\n{BEGIN_MARKER}\n\nnew table\n\n{END_MARKER}\n\nafter\n")
        );
        // Splicing again gives the same document.
        assert_eq!(splice(&spliced, "new table").unwrap(), spliced);
        assert!(splice("no markers", "x").is_err());
        assert!(splice(&format!("{END_MARKER}{BEGIN_MARKER}"), "x").is_err());
    }
}
