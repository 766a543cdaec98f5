//! `sockeye-bench report`: reads every JSON report in a directory and writes
//! markdown tables (a comparison per scenario and every run in detail), the
//! SVG chart, and the results section of `docs/benchmarks.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, bail};

use crate::cli::ReportArgs;
use crate::report::{GENERATOR_SATURATED_PERCENT, Report, human_rate, human_us};

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

/// A column of the comparison: a target, or one build of it (`--variant`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    /// `sockeye`, `baseline` or `nats`.
    pub(crate) target: String,
    /// The build, when several builds of one target are compared.
    pub(crate) variant: Option<String>,
}

impl Column {
    fn of(report: &Report) -> Self {
        Self {
            target: report.target.clone(),
            variant: report.variant.clone(),
        }
    }

    /// `sockeye`, or `sockeye before` for a variant.
    pub(crate) fn name(&self) -> String {
        match &self.variant {
            Some(variant) => format!("{} {variant}", self.target),
            None => self.target.clone(),
        }
    }

    /// Whether this is the system the benchmarks are about.
    pub(crate) fn is_ours(&self) -> bool {
        self.target == "sockeye"
    }
}

/// One case of a comparison: its runs by column and repetition.
#[derive(Debug)]
pub(crate) struct Case<'a> {
    /// The case, e.g. `1->100 x 100 B, max rate`.
    pub(crate) name: String,
    /// Per column (by [`Column::name`]), the runs by repetition (0 for a run
    /// without `--repetition`); a later run of the same repetition replaces
    /// an earlier one.
    pub(crate) runs: BTreeMap<String, BTreeMap<u32, &'a Report>>,
}

impl Case<'_> {
    /// The headline values of one column's runs, in repetition order.
    pub(crate) fn values(&self, headline: Headline, column: &Column) -> Vec<f64> {
        self.runs
            .get(&column.name())
            .map(|runs| runs.values().filter_map(|r| headline.value(r)).collect())
            .unwrap_or_default()
    }

    /// `ours / theirs` for every repetition that both columns ran.
    pub(crate) fn ratios(&self, headline: Headline, ours: &Column, theirs: &Column) -> Vec<f64> {
        let (Some(ours), Some(theirs)) =
            (self.runs.get(&ours.name()), self.runs.get(&theirs.name()))
        else {
            return Vec::new();
        };
        ours.iter()
            .filter_map(|(repetition, report)| {
                let mine = headline.value(report)?;
                let other = headline.value(theirs.get(repetition)?)?;
                (other > 0.0).then(|| mine / other)
            })
            .collect()
    }

    /// Every run of the case.
    pub(crate) fn reports(&self) -> impl Iterator<Item = &Report> {
        self.runs.values().flat_map(|runs| runs.values().copied())
    }

    /// Repetitions run (the most of any column).
    pub(crate) fn repetitions(&self) -> usize {
        self.runs.values().map(BTreeMap::len).max().unwrap_or(0)
    }
}

/// One comparison: a scenario, or the fixed-rate part of one.
#[derive(Debug)]
pub(crate) struct Group<'a> {
    /// Section title.
    pub(crate) title: String,
    /// What is compared.
    pub(crate) headline: Headline,
    /// Columns in display order: Sockeye's builds first (in run order), then
    /// the baseline, nats-server and anything else.
    pub(crate) columns: Vec<Column>,
    /// Cases in run order.
    pub(crate) cases: Vec<Case<'a>>,
}

impl Group<'_> {
    /// The ratios shown: every Sockeye column against every other target,
    /// then every later Sockeye build against the first.
    pub(crate) fn ratio_pairs(&self) -> Vec<(Column, Column)> {
        let ours: Vec<&Column> = self.columns.iter().filter(|c| c.is_ours()).collect();
        let mut pairs = Vec::new();
        for mine in &ours {
            for theirs in self.columns.iter().filter(|c| !c.is_ours()) {
                pairs.push(((*mine).clone(), theirs.clone()));
            }
        }
        if let Some((first, later)) = ours.split_first() {
            for mine in later {
                pairs.push(((*mine).clone(), (*first).clone()));
            }
        }
        pairs
    }
}

/// The median and the range of a few values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Spread {
    /// The median (the mean of the two middle values for an even count).
    pub(crate) median: f64,
    /// The smallest value.
    pub(crate) min: f64,
    /// The largest value.
    pub(crate) max: f64,
    /// How many values.
    pub(crate) count: usize,
}

impl Spread {
    /// The spread of `values`, `None` when there are none.
    pub(crate) fn of(values: &[f64]) -> Option<Self> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        };
        Some(Self {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            count: sorted.len(),
        })
    }

    /// `0.89 (0.85-0.93)`, or `0.89` for a single value.
    fn ratio_text(&self) -> String {
        if self.count > 1 {
            format!("{:.2} ({:.2}-{:.2})", self.median, self.min, self.max)
        } else {
            format!("{:.2}", self.median)
        }
    }
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
            ("cluster", false) => (
                "Cluster: one stored topic, subscribers on two nodes (scenario 8)",
                Headline::Rate,
            ),
            ("cluster", true) => (
                "Cluster at a fixed rate: latency (scenario 8)",
                Headline::P99,
            ),
            _ => ("Other", Headline::Rate),
        };
        let group = match groups.iter_mut().position(|group| group.title == title) {
            Some(index) => &mut groups[index],
            None => {
                groups.push(Group {
                    title: title.to_owned(),
                    headline,
                    columns: Vec::new(),
                    cases: Vec::new(),
                });
                groups.last_mut().expect("just pushed")
            }
        };
        let column = Column::of(report);
        if !group.columns.contains(&column) {
            group.columns.push(column.clone());
        }
        let name = case_name(report);
        let case = match group.cases.iter().position(|case| case.name == name) {
            Some(index) => &mut group.cases[index],
            None => {
                group.cases.push(Case {
                    name,
                    runs: BTreeMap::new(),
                });
                group.cases.last_mut().expect("just pushed")
            }
        };
        case.runs
            .entry(column.name())
            .or_default()
            .insert(report.repetition.unwrap_or(0), report);
    }
    for group in &mut groups {
        // Stable: Sockeye's builds keep their run order.
        group.columns.sort_by_key(|column| {
            TARGETS
                .iter()
                .position(|target| *target == column.target)
                .unwrap_or(TARGETS.len())
        });
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
    let failed = reports.iter().filter(|report| !report.ok).count();
    if failed > 0 {
        let _ = writeln!(
            out,
            "**{failed} run(s) were not ok** (lost messages or errors): see `ok` below.\n"
        );
    }
    let _ = writeln!(
        out,
        "Each case ran its targets back to back, once per repetition. A target's \
         figure is the median over the repetitions; a ratio is taken within each \
         repetition and shown as the median of those ratios, with the lowest and \
         highest in parentheses. The generator's CPU is the median over every run \
         of the case, and in parentheses how many of those runs it was saturated in \
         (at least {GENERATOR_SATURATED_PERCENT:.0}% of one core: the run may \
         measure the generator).\n"
    );
    for group in groups(reports) {
        let _ = writeln!(out, "### {}\n", group.title);
        if let Some(sample) = group.cases.iter().flat_map(Case::reports).next() {
            let _ = writeln!(out, "Compared: {}.\n", group.headline.name(sample));
        }
        let pairs = group.ratio_pairs();
        let mut header = String::from("| case | reps |");
        let mut rule = String::from("| --- | ---: |");
        for column in &group.columns {
            let _ = write!(header, " {} |", column.name());
            rule.push_str(" ---: |");
        }
        for (mine, theirs) in &pairs {
            let _ = write!(header, " {} / {} |", mine.name(), theirs.name());
            rule.push_str(" ---: |");
        }
        header.push_str(" generator CPU (saturated) |");
        rule.push_str(" ---: |");
        let _ = writeln!(out, "{header}\n{rule}");
        for case in &group.cases {
            let mut row = format!("| {} | {} |", case.name, case.repetitions());
            for column in &group.columns {
                let not_ok = case
                    .runs
                    .get(&column.name())
                    .is_some_and(|runs| runs.values().any(|report| !report.ok));
                let cell = match Spread::of(&case.values(group.headline, column)) {
                    Some(spread) => group.headline.format(spread.median),
                    None if case.runs.contains_key(&column.name()) => "n/a".into(),
                    None => "-".into(),
                };
                let _ = write!(row, " {cell}{} |", if not_ok { " (not ok)" } else { "" });
            }
            for (mine, theirs) in &pairs {
                let cell = Spread::of(&case.ratios(group.headline, mine, theirs))
                    .map(|spread| spread.ratio_text())
                    .unwrap_or_else(|| "-".into());
                let _ = write!(row, " {cell} |");
            }
            let generator: Vec<f64> = case
                .reports()
                .filter_map(|report| report.generator.map(|usage| usage.cpu_percent))
                .collect();
            let saturated = case.reports().filter(|r| r.generator_saturated).count();
            let cell = Spread::of(&generator)
                .map(|spread| {
                    format!(
                        "{:.0}% ({saturated}/{})",
                        spread.median,
                        case.reports().count()
                    )
                })
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(row, " {cell} |");
            out.push_str(&row);
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
         | scenario | case | rep | target | rate | p50 | p99 | p99.9 | delivered/expected | broker CPU | broker RSS after | generator CPU | ok |\n\
         | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
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
            "| {} | {} | {} | {} | {} {} | {} | {} | {} | {}/{} | {} | {} | {}{} | {} |",
            report.scenario,
            case_name(report),
            report
                .repetition
                .map(|repetition| repetition.to_string())
                .unwrap_or_else(|| "-".into()),
            Column::of(report).name(),
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
            if report.generator_saturated {
                " (saturated)"
            } else {
                ""
            },
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

    fn run(target: &str, variant: Option<&str>, repetition: u32, rate: f64, at: u64) -> Report {
        Report {
            scenario: "fanout".into(),
            case: "1->100 x 100 B, max rate".into(),
            target: target.into(),
            label: None,
            variant: variant.map(str::to_owned),
            repetition: Some(repetition),
            params: serde_json::json!({ "rate_deliveries_per_s": "max" }),
            started_at_ms: at,
            connections: 101,
            elapsed_s: 1.0,
            published: 10,
            expected: 1000,
            delivered: 1000,
            delivery_ratio: 1.0,
            loss_allowed: false,
            rate_per_s: rate,
            rate_unit: "deliveries/s".into(),
            publish_rate_per_s: None,
            latency_us: None,
            broker: None,
            generator: Some(crate::metrics::ProcessUsage {
                pid: 1,
                cpu_seconds: 1.0,
                cpu_percent: if rate > 150.0 { 95.0 } else { 50.0 },
                rss_before_kib: 1,
                rss_after_kib: 1,
                peak_rss_kib: 1,
            }),
            generator_saturated: rate > 150.0,
            extra: BTreeMap::new(),
            errors: Vec::new(),
            ok: true,
        }
    }

    #[test]
    fn spreads_have_a_median_and_a_range() {
        assert_eq!(Spread::of(&[]), None);
        let odd = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!(
            (odd.median, odd.min, odd.max, odd.count),
            (2.0, 1.0, 3.0, 3)
        );
        assert_eq!(Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(odd.ratio_text(), "2.00 (1.00-3.00)");
        assert_eq!(Spread::of(&[0.5]).unwrap().ratio_text(), "0.50");
    }

    #[test]
    fn ratios_pair_runs_of_one_repetition_and_take_their_median() {
        // Repetition 2 hit a slow moment for both targets: its ratio is as
        // good as the others', which a ratio of medians would not show.
        let reports = vec![
            run("sockeye", None, 1, 90.0, 1),
            run("baseline", None, 1, 100.0, 2),
            run("sockeye", None, 2, 45.0, 3),
            run("baseline", None, 2, 50.0, 4),
            run("sockeye", None, 3, 200.0, 5),
            run("baseline", None, 3, 160.0, 6),
        ];
        let groups = groups(&reports);
        assert_eq!(groups.len(), 1);
        let group = &groups[0];
        let names: Vec<String> = group.columns.iter().map(Column::name).collect();
        assert_eq!(names, ["sockeye", "baseline"]);
        let case = &group.cases[0];
        assert_eq!(case.repetitions(), 3);
        let pairs = group.ratio_pairs();
        assert_eq!(pairs.len(), 1);
        let ratios = case.ratios(group.headline, &pairs[0].0, &pairs[0].1);
        assert_eq!(ratios, [0.9, 0.9, 1.25]);
        let table = markdown(&reports, None);
        assert!(
            table.contains(
                "| 1->100 x 100 B, max rate | 3 | 90.0 | 100.0 | 0.90 (0.90-1.25) | 50% (2/6) |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| 3 | sockeye | 200.0 deliveries/s |"),
            "{table}"
        );
        assert!(table.contains("95% (saturated)"), "{table}");
    }

    #[test]
    fn builds_of_one_target_are_columns_compared_with_the_first() {
        let reports = vec![
            run("sockeye", Some("before"), 1, 100.0, 1),
            run("sockeye", Some("after"), 1, 99.0, 2),
            run("baseline", None, 1, 110.0, 3),
        ];
        let groups = groups(&reports);
        let group = &groups[0];
        let names: Vec<String> = group.columns.iter().map(Column::name).collect();
        assert_eq!(names, ["sockeye before", "sockeye after", "baseline"]);
        let pairs: Vec<String> = group
            .ratio_pairs()
            .iter()
            .map(|(mine, theirs)| format!("{} / {}", mine.name(), theirs.name()))
            .collect();
        assert_eq!(
            pairs,
            [
                "sockeye before / baseline",
                "sockeye after / baseline",
                "sockeye after / sockeye before"
            ]
        );
        let after_before =
            group.cases[0].ratios(group.headline, &group.columns[1], &group.columns[0]);
        assert_eq!(after_before, [0.99]);
    }

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
