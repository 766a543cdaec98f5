//! Scenario 6: connection churn. `concurrency` workers each loop: open a TCP
//! connection (from a rotating loopback source address), do the WebSocket
//! handshake (Sockeye: with the JWT, which the broker verifies), wait for the
//! greeting (`welcome`, or NATS `INFO` + `CONNECT` + `PONG`), then close
//! cleanly. Reports completed handshakes per second and connect-to-greeting
//! latency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use tokio::task::JoinSet;

use crate::cli::ChurnArgs;
use crate::client::Role;
use crate::metrics::{Latencies, now_ns};
use crate::report::{Errors, Report};
use crate::scenario::{Outcome, RunContext, per_second};

/// Runs the scenario and reports.
pub(crate) async fn run(context: &RunContext, args: &ChurnArgs) -> anyhow::Result<Report> {
    let latencies = Latencies::new();
    let started = Arc::new(AtomicU64::new(0));
    let measurement = context.start_measuring();
    let start = Instant::now();
    let end = start + args.duration;
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let dialer = Arc::clone(&context.dialer);
        let latencies = Arc::clone(&latencies);
        let started = Arc::clone(&started);
        let max = args.max_handshakes;
        workers.spawn(async move {
            let mut done = 0u64;
            let mut errors = Errors::default();
            while Instant::now() < end && started.fetch_add(1, Ordering::Relaxed) < max {
                let begin = now_ns();
                match dialer.open(Role::Subscriber).await {
                    Ok(client) => {
                        latencies.record(now_ns().saturating_sub(begin));
                        done += 1;
                        client.close().await;
                    }
                    Err(err) => errors.add(format!("{err:#}")),
                }
            }
            (done, errors)
        });
    }
    let mut completed = 0u64;
    let mut errors = Errors::default();
    while let Some(joined) = workers.join_next().await {
        let (done, worker_errors) = joined.context("a churn worker failed")?;
        completed += done;
        errors.merge(worker_errors);
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let usage = measurement.finish();
    let failed = errors.total();
    Ok(Outcome {
        scenario: "churn",
        case: format!("{} concurrent", args.concurrency.max(1)),
        params: json!({
            "concurrency": args.concurrency.max(1),
            "duration_s": args.duration.as_secs_f64(),
            "max_handshakes": args.max_handshakes,
        }),
        connections: u64::from(args.concurrency.max(1)),
        elapsed_s,
        published: completed + failed,
        expected: completed + failed,
        delivered: completed,
        loss_allowed: false,
        rate_per_s: per_second(completed, elapsed_s),
        rate_unit: "handshakes/s",
        publish_rate_per_s: None,
        latency_us: latencies.percentiles(),
        usage,
        extra: BTreeMap::new(),
        errors,
    }
    .into_report(context))
}
