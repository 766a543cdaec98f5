//! Scenario 7: a wildcard flood (Sockeye only). `attackers` connections,
//! all with the run's one token, subscribe `filters` filters each. Filter
//! number `c` of a connection is literal/`*` combination number `c` of an
//! S-segment name (`w<run>.s1. ... .sS-1`, bit `i` of the combination
//! putting `*` in segment `i`) followed by a last literal segment `t<c>`:
//! that last segment keeps one connection's filters from overlapping (which
//! the broker refuses), and makes every filter miss a topic whose last
//! segment is something else, after the broker has walked its whole prefix.
//! The broker accepts what its caps allow and refuses the rest. Attacker
//! connections read and discard whatever they are sent.
//!
//! Then one healthy connection (with `--healthy-token`, of another `sub`),
//! subscribed to one exact topic, publishes
//! `messages` messages to it one at a time and waits for each delivery: the
//! publish-to-delivery round trip, through the broker's wildcard match of
//! every publish. The topic has `topic_segments` segments, the first
//! `prefix` equal to the flood's literals and the rest `miss`, so by default
//! (15 and 14) every attack filter matches all of it but its last segment.
//! `--distinct` gives every publish its own topic (a numbered last
//! segment), so no match result can be reused from a cache; the healthy
//! client then holds one filter ending in `*` instead. Reports the round
//! trips, the broker's CPU per publish, and how many filters were accepted
//! and refused (with the refusal codes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::json;
use tokio::task::JoinSet;

use crate::cli::WildcardArgs;
use crate::client::{Event, Role};
use crate::metrics::{Latencies, now_ns};
use crate::report::{Errors, Report};
use crate::scenario::{Outcome, RunContext, payload_template, per_second};
use crate::wire::Stamp;

/// The literal of segment `index` of the flood's name.
fn literal(context: &RunContext, index: usize) -> String {
    if index == 0 {
        format!("w{}", context.run_id)
    } else {
        format!("s{index}")
    }
}

/// Filter `combination` of the flood, with last segment `t<slot>`: bit `i`
/// of `combination` puts `*` in segment `i`.
fn flood_filter(context: &RunContext, segments: usize, combination: u64, slot: u64) -> String {
    let mut filter: Vec<String> = (0..segments)
        .map(|index| {
            if combination >> index & 1 == 1 {
                "*".to_owned()
            } else {
                literal(context, index)
            }
        })
        .collect();
    filter.push(format!("t{slot}"));
    filter.join(".")
}

/// The healthy topic of publish `n`.
fn healthy_topic(context: &RunContext, args: &WildcardArgs, n: u64) -> String {
    (0..args.topic_segments)
        .map(|index| {
            if index < args.prefix {
                literal(context, index)
            } else if index + 1 == args.topic_segments && args.distinct {
                format!("miss{n}")
            } else {
                "miss".to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[derive(Debug, Default)]
struct Subscribed {
    accepted: u64,
    refused: BTreeMap<String, u64>,
    errors: Errors,
}

/// Runs the scenario and reports.
pub(crate) async fn run(context: &RunContext, args: &WildcardArgs) -> anyhow::Result<Report> {
    context.require_sockeye("wildcard")?;
    if !(1..=63).contains(&args.segments) {
        bail!("--segments must be 1 to 63");
    }
    if args.prefix > args.topic_segments || args.topic_segments == 0 {
        bail!("--prefix must be at most --topic-segments, which must be at least 1");
    }
    let combinations = 1u64 << args.segments;
    let attackers = u64::from(args.attackers);
    let per_attacker = u64::from(args.filters);
    // Attacker connections, each with its slice of the combinations.
    let mut setup = JoinSet::new();
    for attacker in 0..attackers {
        let dialer = Arc::clone(&context.dialer);
        let filters: Vec<String> = (0..per_attacker)
            .map(|slot| (attacker * per_attacker + slot, slot))
            .filter(|(combination, _)| *combination < combinations)
            .map(|(combination, slot)| flood_filter(context, args.segments, combination, slot))
            .collect();
        setup.spawn(async move {
            let mut client = dialer.open(Role::Subscriber).await?;
            let mut tally = Subscribed::default();
            for filter in filters {
                match client.subscribe(&filter, None).await {
                    Ok(_) => tally.accepted += 1,
                    Err(err) => {
                        let text = format!("{err:#}");
                        // "subscribe to F refused: CODE: message"
                        let code = text
                            .split("refused: ")
                            .nth(1)
                            .and_then(|rest| rest.split(':').next())
                            .map(str::to_owned);
                        match code {
                            Some(code) => *tally.refused.entry(code).or_default() += 1,
                            None => tally.errors.add(text),
                        }
                    }
                }
            }
            anyhow::Ok((client, tally))
        });
    }
    let mut tally = Subscribed::default();
    let drained = Arc::new(AtomicU64::new(0));
    let mut readers = JoinSet::new();
    while let Some(joined) = setup.join_next().await {
        let (mut client, attacker) = joined.context("an attacker setup task failed")??;
        tally.accepted += attacker.accepted;
        for (code, count) in attacker.refused {
            *tally.refused.entry(code).or_default() += count;
        }
        tally.errors.merge(attacker.errors);
        let drained = Arc::clone(&drained);
        // Attackers read everything, so none becomes a slow consumer and
        // the index stays as built for the whole measurement.
        readers.spawn(async move {
            while let Ok(event) = client.read_event().await {
                if matches!(event, Event::Delivery(_)) {
                    drained.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    let mut healthy = match &args.healthy_token {
        Some(token) => {
            let dialer = context.dialer.with_token(token.clone()).await?;
            dialer.open(Role::Subscriber).await?
        }
        None => context.dialer.open(Role::Subscriber).await?,
    };
    // With distinct topics the healthy client holds one wildcard filter
    // matching all of them (its last segment `*`), so no subscription
    // changes during the measurement.
    let filter = if args.distinct {
        let mut segments: Vec<&str> = Vec::new();
        let topic = healthy_topic(context, args, 0);
        segments.extend(topic.split('.'));
        segments.pop();
        segments.push("*");
        segments.join(".")
    } else {
        healthy_topic(context, args, 0)
    };
    healthy
        .subscribe(&filter, None)
        .await
        .with_context(|| format!("the healthy client cannot subscribe to {filter}"))?;
    let latencies = Latencies::new();
    let mut errors = tally.errors;
    let mut template = payload_template(args.size.0);
    let measurement = context.start_measuring();
    let start = Instant::now();
    let mut delivered = 0u64;
    let mut published = 0u64;
    for n in 0..args.messages {
        if start.elapsed() > args.duration {
            break;
        }
        let topic = healthy_topic(context, args, n);
        Stamp {
            stream: 0,
            seq: n,
            sent_ns: now_ns(),
        }
        .write(&mut template);
        let (_, message) = healthy.publish_message(&topic, &template, false);
        healthy.send(message).await?;
        published += 1;
        let wait = tokio::time::timeout(args.round_trip_timeout, async {
            loop {
                match healthy.read_event().await? {
                    Event::Delivery(delivery) if delivery.stamp.seq == n => {
                        return anyhow::Ok(delivery);
                    }
                    Event::Failed { reason, .. } => bail!("publish refused: {reason}"),
                    _ => {}
                }
            }
        })
        .await;
        match wait {
            Ok(Ok(delivery)) => {
                latencies.record(now_ns().saturating_sub(delivery.stamp.sent_ns));
                delivered += 1;
            }
            Ok(Err(err)) => {
                errors.add(format!("{err:#}"));
                break;
            }
            Err(_) => {
                errors.add(format!("no delivery within {:?}", args.round_trip_timeout));
                break;
            }
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let usage = measurement.finish();
    readers.abort_all();
    let mut extra = BTreeMap::new();
    extra.insert("filters_accepted".to_owned(), tally.accepted as f64);
    for (code, count) in &tally.refused {
        extra.insert(format!("filters_refused_{code}"), *count as f64);
    }
    extra.insert(
        "attacker_deliveries".to_owned(),
        drained.load(Ordering::Relaxed) as f64,
    );
    if let Some(broker) = &usage.0
        && published > 0
    {
        extra.insert(
            "broker_cpu_us_per_publish".to_owned(),
            broker.cpu_seconds * 1e6 / published as f64,
        );
    }
    Ok(Outcome {
        scenario: "wildcard",
        case: format!(
            "{attackers}x{per_attacker} filters over {} segments, topic {}/{}{}",
            args.segments,
            args.prefix,
            args.topic_segments,
            if args.distinct { " distinct" } else { "" }
        ),
        params: json!({
            "attackers": attackers,
            "filters_per_attacker": per_attacker,
            "segments": args.segments,
            "prefix": args.prefix,
            "topic_segments": args.topic_segments,
            "distinct": args.distinct,
            "messages": args.messages,
            "size": args.size.0,
        }),
        connections: attackers + 1,
        elapsed_s,
        published,
        expected: published,
        delivered,
        loss_allowed: false,
        rate_per_s: per_second(delivered, elapsed_s),
        rate_unit: "round trips/s",
        publish_rate_per_s: None,
        latency_us: latencies.percentiles(),
        usage,
        extra,
        errors,
    }
    .into_report(context))
}
