//! Scenario 3: open C connections (handshake and greeting, optionally one
//! subscription each), hold them, and report how much the broker's resident
//! memory grew per connection.
//!
//! The broker's RSS is read before the first connection and again after all
//! are open and have settled; the difference divided by C is the cost of one
//! idle connection (allocator caching and sled's page cache make it an
//! estimate, which is why it is measured at 1k, 10k and 19k). Every held
//! connection keeps reading, so heartbeats are answered.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cli::IdleArgs;
use crate::client::{Client, Event, Role};
use crate::report::{Errors, Report};
use crate::scenario::{Outcome, RunContext, per_second};

/// Topics the subscribing variant spreads its connections over.
const IDLE_TOPICS: u64 = 64;

/// Runs the scenario and reports.
pub(crate) async fn run(context: &RunContext, args: &IdleArgs) -> anyhow::Result<Report> {
    let wanted = u64::from(args.connections);
    // Let the broker settle from start-up before the reference sample.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let measurement = context.start_measuring();
    let rss_before = measurement.broker_rss_kib();
    let generator_before = crate::metrics::sample(std::process::id())
        .ok()
        .map(|sample| sample.rss_kib());
    let start = Instant::now();

    let mut setup = JoinSet::new();
    for index in 0..wanted {
        let dialer = std::sync::Arc::clone(&context.dialer);
        let topic = args
            .subscribe
            .then(|| context.topic("idle", index % IDLE_TOPICS));
        setup.spawn(async move {
            let mut client = dialer.open(Role::Subscriber).await?;
            if let Some(topic) = topic {
                client.subscribe(&topic, None).await?;
            }
            anyhow::Ok(client)
        });
    }
    let (stop, stopped) = watch::channel(false);
    let mut held = JoinSet::new();
    let mut errors = Errors::default();
    while let Some(joined) = setup.join_next().await {
        match joined.context("a connection setup task failed")? {
            Ok(client) => {
                held.spawn(hold(client, stopped.clone()));
            }
            Err(err) => errors.add(format!("connect: {err:#}")),
        }
    }
    let connected = held.len() as u64;
    let connect_seconds = start.elapsed().as_secs_f64();
    tracing::info!(connected, "holding connections");
    tokio::time::sleep(args.settle).await;

    let usage = measurement.finish();
    let generator_after = crate::metrics::sample(std::process::id())
        .ok()
        .map(|sample| sample.rss_kib());
    let _ = stop.send(true);
    while let Some(joined) = held.join_next().await {
        if let Some(error) = joined.context("a held connection task failed")? {
            errors.add(error);
        }
    }

    let mut extra = BTreeMap::new();
    let per_connection = |before: Option<u64>, after: Option<u64>| -> Option<f64> {
        let (before, after) = (before?, after?);
        (connected > 0).then(|| after.saturating_sub(before) as f64 * 1024.0 / connected as f64)
    };
    if let Some(bytes) = per_connection(rss_before, usage.0.map(|usage| usage.rss_after_kib)) {
        extra.insert("broker_rss_bytes_per_connection".into(), bytes);
    }
    if let Some(bytes) = per_connection(generator_before, generator_after) {
        extra.insert("generator_rss_bytes_per_connection".into(), bytes);
    }
    extra.insert("connect_seconds".into(), connect_seconds);
    Ok(Outcome {
        scenario: "idle",
        case: format!(
            "{} connections{}",
            wanted,
            if args.subscribe { ", subscribed" } else { "" }
        ),
        params: json!({
            "connections": wanted,
            "subscribe": args.subscribe,
            "settle_s": args.settle.as_secs_f64(),
        }),
        connections: connected,
        elapsed_s: start.elapsed().as_secs_f64(),
        published: 0,
        expected: wanted,
        delivered: connected,
        loss_allowed: false,
        rate_per_s: per_second(connected, connect_seconds),
        rate_unit: "connections opened/s",
        publish_rate_per_s: None,
        latency_us: None,
        usage,
        extra,
        errors,
    }
    .into_report(context))
}

/// Keeps a connection open and read until told to stop; returns an error
/// message if the target closed it first.
async fn hold(mut client: Client, mut stopped: watch::Receiver<bool>) -> Option<String> {
    loop {
        tokio::select! {
            event = client.read_event() => match event {
                Ok(Event::Failed { reason, .. } | Event::Interrupted(reason)) => return Some(reason),
                Ok(_) => {}
                Err(err) => return Some(format!("held connection: {err:#}")),
            },
            _ = stopped.changed() => return None,
        }
    }
}
