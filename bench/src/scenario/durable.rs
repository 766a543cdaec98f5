//! Scenario 4: K concurrent publishers, each on its own stored topic, each
//! keeping `inflight` publishes with `ack: true` outstanding. Reports acked
//! messages per second and publish-to-ack latency.
//!
//! The broker's durability mode (`store.durability`: `fsync` or `interval`)
//! is broker configuration; the generator only measures. Name the mode with
//! `--label` so reports can tell the runs apart.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use tokio::task::JoinSet;

use crate::cli::DurableArgs;
use crate::client::{Client, Event, Role};
use crate::metrics::{Latencies, now_ns};
use crate::report::{Errors, Report};
use crate::scenario::{Outcome, RunContext, payload_template, per_second};
use crate::wire::Stamp;

#[derive(Debug, Default)]
struct PublisherTally {
    published: u64,
    acked: u64,
    /// When the last ack arrived (generator clock).
    last_ack_ns: u64,
    errors: Errors,
}

/// Runs the scenario and reports.
pub(crate) async fn run(context: &RunContext, args: &DurableArgs) -> anyhow::Result<Report> {
    context.require_sockeye("durable")?;
    let publishers = args.publishers.max(1);
    let mut clients = Vec::with_capacity(publishers as usize);
    let mut setup = JoinSet::new();
    for index in 0..publishers {
        let dialer = Arc::clone(&context.dialer);
        let topic = context.topic("durable", u64::from(index));
        setup.spawn(async move {
            let client = dialer.open(Role::Publisher(&topic)).await?;
            anyhow::Ok((index, topic, client))
        });
    }
    while let Some(joined) = setup.join_next().await {
        clients.push(joined.context("a publisher setup task failed")??);
    }

    let latencies = Latencies::new();
    let measurement = context.start_measuring();
    let start = Instant::now();
    let start_ns = now_ns();
    let mut running = JoinSet::new();
    for (index, topic, client) in clients {
        running.spawn(publish_loop(
            client,
            index,
            topic,
            args.clone(),
            start,
            Arc::clone(&latencies),
        ));
    }
    let mut published = 0;
    let mut acked = 0;
    let mut last_ack_ns = start_ns;
    let mut errors = Errors::default();
    while let Some(joined) = running.join_next().await {
        let tally = joined.context("a publisher task failed")?;
        published += tally.published;
        acked += tally.acked;
        last_ack_ns = last_ack_ns.max(tally.last_ack_ns);
        errors.merge(tally.errors);
    }
    let usage = measurement.finish();
    let elapsed_s = last_ack_ns.saturating_sub(start_ns) as f64 / 1e9;
    Ok(Outcome {
        scenario: "durable",
        case: format!(
            "{} publishers x {} in flight, {} B{}",
            publishers,
            args.inflight.max(1),
            args.size.0,
            context
                .label
                .as_ref()
                .map(|label| format!(", {label}"))
                .unwrap_or_default()
        ),
        params: json!({
            "publishers": publishers,
            "inflight": args.inflight.max(1),
            "payload_bytes": args.size.0,
            "duration_s": args.duration.as_secs_f64(),
            "max_messages": args.max_messages,
        }),
        connections: u64::from(publishers),
        elapsed_s,
        published,
        expected: published,
        delivered: acked,
        loss_allowed: false,
        rate_per_s: per_second(acked, elapsed_s),
        rate_unit: "acked msgs/s",
        publish_rate_per_s: None,
        latency_us: latencies.percentiles(),
        usage,
        extra: BTreeMap::new(),
        errors,
    }
    .into_report(context))
}

async fn publish_loop(
    mut client: Client,
    index: u32,
    topic: String,
    args: DurableArgs,
    start: Instant,
    latencies: Arc<Latencies>,
) -> PublisherTally {
    let mut tally = PublisherTally::default();
    if let Err(err) = publish(
        &mut client,
        index,
        &topic,
        &args,
        start,
        &latencies,
        &mut tally,
    )
    .await
    {
        tally.errors.add(format!("publisher: {err:#}"));
    }
    tally
}

async fn publish(
    client: &mut Client,
    index: u32,
    topic: &str,
    args: &DurableArgs,
    start: Instant,
    latencies: &Latencies,
    tally: &mut PublisherTally,
) -> anyhow::Result<()> {
    let mut data = payload_template(args.size.0);
    let inflight_limit = args.inflight.max(1) as usize;
    let end = start + args.duration;
    let drain_end = end + args.drain_timeout;
    // Request id -> when it was sent. Acks may come out of order.
    let mut inflight: HashMap<u64, u64> = HashMap::with_capacity(inflight_limit);
    let mut seq = 0u64;
    loop {
        let publishing = Instant::now() < end && seq < args.max_messages;
        if publishing && inflight.len() < inflight_limit {
            while inflight.len() < inflight_limit && seq < args.max_messages {
                let sent_ns = now_ns();
                Stamp {
                    stream: index,
                    seq,
                    sent_ns,
                }
                .write(&mut data);
                let (id, message) = client.publish_message(topic, &data, true);
                client.feed(message).await?;
                inflight.insert(id.context("a Sockeye publish has an id")?, sent_ns);
                seq += 1;
            }
            client.flush().await?;
            tally.published = seq;
        }
        if !publishing && inflight.is_empty() {
            return Ok(());
        }
        let wait_until = if publishing { end } else { drain_end };
        let event = match tokio::time::timeout_at(wait_until.into(), client.read_event()).await {
            Ok(event) => event?,
            Err(_) if publishing => continue,
            Err(_) => {
                anyhow::bail!(
                    "{} acks missing {:?} after publishing stopped",
                    inflight.len(),
                    args.drain_timeout
                )
            }
        };
        match event {
            Event::Acked { id, .. } => match inflight.remove(&id) {
                Some(sent_ns) => {
                    let now = now_ns();
                    latencies.record(now.saturating_sub(sent_ns));
                    tally.acked += 1;
                    tally.last_ack_ns = now;
                }
                None => tally.errors.add("an ack for an unknown request id"),
            },
            Event::Failed { id, reason } => {
                if let Some(id) = id {
                    inflight.remove(&id);
                }
                tally.errors.add(format!("publish refused: {reason}"));
            }
            _ => {}
        }
    }
}
