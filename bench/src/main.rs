//! `sockeye-bench`: the load generator and benchmark tools.
//!
//! - Scenario subcommands (`fanout`, `topics`, `idle`, `durable`, `resume`,
//!   `churn`, `wildcard`, `cluster`) drive a target over the network (Sockeye, nats-server over
//!   WebSocket, or the baseline), print a table and write a JSON report.
//! - `baseline` runs the minimal tokio-tungstenite broadcaster.
//! - `report` turns a directory of JSON reports into markdown tables, an SVG
//!   chart, and the results section of `docs/benchmarks.md`.
//!
//! `bench/compare.sh` runs everything against all three targets; see
//! `docs/benchmarks.md`.

mod baseline;
mod chart;
mod cli;
mod client;
mod flow;
mod metrics;
mod nats;
mod report;
mod scenario;
mod summary;
mod wire;
mod ws;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::cli::{Cli, Command, RunArgs};
use crate::client::{DialSettings, Dialer};
use crate::report::Report;
use crate::scenario::RunContext;
use crate::scenario::fanout::FanoutPlan;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("sockeye-bench: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Baseline(args) => {
            raise_open_file_limit();
            runtime(None)?.block_on(baseline::serve(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report(args) => {
            summary::write(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fanout(args) => {
            let plan = FanoutPlan {
                scenario: "fanout",
                publishers: 1,
                subscribers: args.subscribers,
                publish: args.publish,
            };
            run_scenario(args.run, |context| {
                Box::pin(async move { scenario::fanout::run(context, plan).await })
            })
        }
        Command::Topics(args) => {
            let plan = FanoutPlan {
                scenario: "topics",
                publishers: args.publishers,
                subscribers: args.subscribers,
                publish: args.publish,
            };
            run_scenario(args.run, |context| {
                Box::pin(async move { scenario::fanout::run(context, plan).await })
            })
        }
        Command::Idle(args) => run_scenario(args.run.clone(), |context| {
            Box::pin(async move {
                context.require_one_url("idle")?;
                scenario::idle::run(context, &args).await
            })
        }),
        Command::Durable(args) => run_scenario(args.run.clone(), |context| {
            Box::pin(async move {
                context.require_one_url("durable")?;
                scenario::durable::run(context, &args).await
            })
        }),
        Command::Resume(args) => run_scenario(args.run.clone(), |context| {
            Box::pin(async move {
                context.require_one_url("resume")?;
                scenario::resume::run(context, &args).await
            })
        }),
        Command::Churn(args) => run_scenario(args.run.clone(), |context| {
            Box::pin(async move {
                context.require_one_url("churn")?;
                scenario::churn::run(context, &args).await
            })
        }),
        Command::Wildcard(args) => run_scenario(args.run.clone(), |context| {
            Box::pin(async move {
                context.require_one_url("wildcard")?;
                scenario::wildcard::run(context, &args).await
            })
        }),
        Command::Cluster(args) => {
            let plan = FanoutPlan {
                scenario: "cluster",
                publishers: 1,
                subscribers: args.subscribers,
                publish: args.publish,
            };
            run_scenario(args.run, |context| {
                Box::pin(async move {
                    context.require_sockeye("cluster")?;
                    scenario::fanout::run(context, plan).await
                })
            })
        }
    }
}

/// A scenario future borrowing the run context.
type ScenarioFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Report>> + 'a>>;

/// Sets up the runtime and the dialer, runs one scenario under the
/// `--deadline`, prints the table and writes the JSON.
fn run_scenario(
    args: RunArgs,
    scenario: impl for<'a> FnOnce(&'a RunContext) -> ScenarioFuture<'a>,
) -> anyhow::Result<ExitCode> {
    raise_open_file_limit();
    let runtime = runtime(args.threads)?;
    let report = runtime.block_on(async {
        let settings = |url: &str| DialSettings {
            url: url.to_owned(),
            token: args.token.clone(),
            source_addresses: args.source_addresses,
            concurrency: args.connect_concurrency,
            timeout: args.connect_timeout,
            read_buffer: args.read_buffer.0,
            write_buffer: args.write_buffer.0,
        };
        let dialer = Dialer::new(args.target, settings(&args.url)).await?;
        let mut subscriber_dialers = Vec::with_capacity(args.subscriber_urls.len());
        for url in &args.subscriber_urls {
            subscriber_dialers.push(Dialer::new(args.target, settings(url)).await?);
        }
        let context = RunContext::new(dialer, subscriber_dialers, &args)?;
        tokio::time::timeout(args.deadline, scenario(&context))
            .await
            .with_context(|| format!("the run exceeded --deadline {:?}", args.deadline))?
    })?;
    // Connections still open in background tasks are closed with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    print_table(&report);
    if let Some(path) = &args.json {
        report.write_json(path)?;
        tracing::info!(path = %path.display(), "report written");
    }
    if report.ok || args.allow_failure {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

#[allow(clippy::print_stdout, reason = "the table is the command's output")]
fn print_table(report: &Report) {
    print!("{}", report.table());
}

fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads.max(1));
    }
    builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Raises the soft open-file limit to the hard limit: every connection is a
/// file descriptor.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(err) => tracing::warn!(cause = %err, "cannot raise the open-file limit"),
    }
}
