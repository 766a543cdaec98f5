//! Scenarios 1 and 2: publishers, each with its own topic and its own
//! subscribers, at a fixed rate or as fast as the slowest subscriber allows.
//!
//! Every payload carries a stamp (publisher index, sequence number, send
//! time). Each subscriber checks that it receives its publisher's sequence
//! exactly once and in order, and records publish-to-deliver latency. A
//! publisher stays within a window of its slowest subscriber
//! ([`crate::flow::Window`]), so no target has a reason to drop anything and
//! delivered/expected must be exactly 1.0.
//!
//! The measured phase starts when every subscriber is subscribed and every
//! publisher connected, and ends with the last delivery. Deliveries/s is
//! deliveries divided by that time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::cli::{PublishArgs, Rate};
use crate::client::{Client, Event, Role};
use crate::flow::Window;
use crate::metrics::{Latencies, LatencyBatch, ReceiveClock, now_ns};
use crate::report::{Errors, Report};
use crate::scenario::{Outcome, RunContext, payload_template, per_second};
use crate::wire::Stamp;

/// Most deliveries a max-rate publisher keeps in flight (window times
/// subscribers).
const MAX_DELIVERIES_IN_FLIGHT: u64 = 200_000;

/// Messages written before one flush.
const PUBLISH_BATCH: u64 = 64;

/// The shape of one fan-out run.
#[derive(Debug, Clone)]
pub(crate) struct FanoutPlan {
    /// `fanout` or `topics`.
    pub(crate) scenario: &'static str,
    /// Publishers, each with its own topic.
    pub(crate) publishers: u32,
    /// Subscribers per topic.
    pub(crate) subscribers: u32,
    /// Publishing flags.
    pub(crate) publish: PublishArgs,
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct SubscriberTally {
    /// Messages received once and in order.
    delivered: u64,
    /// Messages received again.
    duplicates: u64,
    /// Sequence numbers skipped.
    missing: u64,
    /// When the last in-order message arrived (generator clock).
    last_ns: u64,
    errors: Errors,
}

/// What one publisher did.
#[derive(Debug, Default)]
struct PublisherTally {
    published: u64,
    /// Most time the publisher was behind its schedule (fixed rate only).
    max_lag: Duration,
    errors: Errors,
}

/// Runs the plan and reports.
pub(crate) async fn run(context: &RunContext, plan: FanoutPlan) -> anyhow::Result<Report> {
    let publish = plan.publish.clone();
    let per_topic = u64::from(plan.subscribers.max(1));
    let publishers = plan.publishers.max(1);
    let topics: Vec<String> = (0..publishers)
        .map(|p| context.topic(plan.scenario, u64::from(p)))
        .collect();
    let message_rate = match publish.rate {
        Rate::Max => None,
        Rate::Deliveries(rate) => Some(rate / (per_topic as f64 * f64::from(publishers))),
    };
    // At a fixed rate the window is only a safety net: half a second of
    // messages is plenty, and a small window means small blocks, so the
    // last block is finished quickly and at the rate.
    let window = match message_rate {
        Some(rate) => ((rate * 0.5) as u64).clamp(8, publish.window.max(8)),
        // At max rate, about 200k deliveries in flight per topic are enough
        // to keep every target busy; more only adds queueing (and, with
        // thousands of subscribers, whole seconds to finish the last block).
        None => publish
            .window
            .min((MAX_DELIVERIES_IN_FLIGHT / per_topic).max(8)),
    };
    let windows: Vec<Arc<Window>> = (0..publishers)
        .map(|_| Arc::new(Window::new(window, per_topic)))
        .collect();
    let latencies = Latencies::new();
    let (stop, stopped) = watch::channel(false);

    // Every subscriber is connected and subscribed before anything is published.
    let mut setup = JoinSet::new();
    let mut subscriber_index = 0;
    for (stream, topic) in topics.iter().enumerate() {
        for _ in 0..per_topic {
            let dialer = Arc::clone(context.subscriber_dialer(subscriber_index));
            subscriber_index += 1;
            let topic = topic.clone();
            setup.spawn(async move {
                let mut client = dialer.open(Role::Subscriber).await?;
                client.subscribe(&topic, None).await?;
                anyhow::Ok((stream as u32, client))
            });
        }
    }
    let mut subscribers = JoinSet::new();
    while let Some(joined) = setup.join_next().await {
        let (stream, client) = joined.context("a subscriber setup task failed")??;
        let window = Arc::clone(&windows[stream as usize]);
        let latencies = Arc::clone(&latencies);
        let stopped = stopped.clone();
        subscribers.spawn(subscribe_loop(client, stream, window, latencies, stopped));
    }
    let mut clients = Vec::with_capacity(topics.len());
    for topic in &topics {
        clients.push(context.dialer.open(Role::Publisher(topic)).await?);
    }
    tracing::info!(
        subscribers = subscribers.len(),
        publishers = clients.len(),
        "connected; publishing"
    );

    let measurement = context.start_measuring();
    let start = Instant::now();
    let start_ns = now_ns();
    let mut publishing = JoinSet::new();
    for (stream, (client, topic)) in clients.into_iter().zip(topics.iter()).enumerate() {
        publishing.spawn(publish_loop(
            client,
            stream as u32,
            topic.clone(),
            Arc::clone(&windows[stream]),
            publish.clone(),
            message_rate,
            start,
        ));
    }
    let mut published_per_topic = vec![0u64; topics.len()];
    let mut errors = Errors::default();
    let mut max_lag = Duration::ZERO;
    // Publisher connections stay open until the drain ends, so nothing they
    // sent is cut off by a close.
    let mut open_publishers = Vec::new();
    while let Some(joined) = publishing.join_next().await {
        let (stream, client, tally) = joined.context("a publisher task failed")?;
        published_per_topic[stream as usize] = tally.published;
        max_lag = max_lag.max(tally.max_lag);
        errors.merge(tally.errors);
        open_publishers.push(client);
    }
    let publish_seconds = start.elapsed().as_secs_f64();

    // Drain: wait until every published message reached every subscriber.
    let drain_until = Instant::now() + publish.drain_timeout;
    loop {
        let all_delivered = windows
            .iter()
            .zip(&published_per_topic)
            .all(|(window, published)| window.delivered_to_all() >= *published);
        if all_delivered || Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = stop.send(true);
    let mut delivered = 0u64;
    let mut duplicates = 0u64;
    let mut missing = 0u64;
    let mut last_ns = start_ns;
    while let Some(joined) = subscribers.join_next().await {
        let tally = joined.context("a subscriber task failed")?;
        delivered += tally.delivered;
        duplicates += tally.duplicates;
        missing += tally.missing;
        last_ns = last_ns.max(tally.last_ns);
        errors.merge(tally.errors);
    }
    let usage = measurement.finish();
    drop(open_publishers);

    if duplicates > 0 {
        errors.add(format!("{duplicates} duplicate deliveries"));
    }
    if missing > 0 {
        errors.add(format!("{missing} messages skipped in a sequence"));
    }
    let published: u64 = published_per_topic.iter().sum();
    let expected = published * per_topic;
    let elapsed_s = (last_ns.saturating_sub(start_ns)) as f64 / 1e9;
    let mut extra = std::collections::BTreeMap::new();
    if message_rate.is_some() {
        extra.insert("publisher_max_lag_ms".into(), max_lag.as_secs_f64() * 1e3);
    }
    let case = match plan.scenario {
        "fanout" => format!(
            "1->{} x {}, {}",
            per_topic,
            human_size(publish.size.0),
            publish.rate
        ),
        // Stored: every publish takes an offset from the engine (sled, or
        // Redis's script in a cluster). The node count is a parameter, not
        // part of the case, so a single node and a cluster share a row.
        "cluster" => format!(
            "1->{} x {}, stored topic, {}",
            per_topic,
            human_size(publish.size.0),
            publish.rate
        ),
        _ => format!(
            "{}x(1->{}) x {}, {}",
            publishers,
            per_topic,
            human_size(publish.size.0),
            publish.rate
        ),
    };
    let rate = match publish.rate {
        Rate::Max => json!("max"),
        Rate::Deliveries(rate) => json!(rate),
    };
    Ok(Outcome {
        scenario: plan.scenario,
        case,
        params: json!({
            "publishers": publishers,
            "subscribers_per_topic": per_topic,
            "payload_bytes": publish.size.0,
            "rate_deliveries_per_s": rate,
            "duration_s": publish.duration.as_secs_f64(),
            "max_messages": publish.max_messages,
            "window": window,
            "subscriber_endpoints": context.subscriber_endpoints(),
        }),
        connections: u64::from(publishers) * (per_topic + 1),
        elapsed_s,
        published,
        expected,
        delivered,
        loss_allowed: false,
        rate_per_s: per_second(delivered, elapsed_s),
        rate_unit: "deliveries/s",
        publish_rate_per_s: Some(per_second(published, publish_seconds)),
        latency_us: latencies.percentiles(),
        usage,
        extra,
        errors,
    }
    .into_report(context))
}

/// `16384` as `16 KiB`, `100` as `100 B`.
pub(crate) fn human_size(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

async fn subscribe_loop(
    mut client: Client,
    stream: u32,
    window: Arc<Window>,
    latencies: Arc<Latencies>,
    mut stopped: watch::Receiver<bool>,
) -> SubscriberTally {
    let mut tally = SubscriberTally::default();
    let mut next_seq = 0u64;
    let mut latencies = LatencyBatch::new(latencies);
    let mut clock = ReceiveClock::default();
    let mut handle = |event: anyhow::Result<Event>,
                      tally: &mut SubscriberTally,
                      clock: &mut ReceiveClock|
     -> bool {
        match event {
            Ok(Event::Delivery(delivered)) => {
                let now = clock.now();
                let stamp = delivered.stamp;
                if stamp.stream != stream {
                    tally.errors.add("a message from another topic's publisher");
                } else if stamp.seq < next_seq {
                    tally.duplicates += 1;
                } else {
                    tally.missing += stamp.seq - next_seq;
                    next_seq = stamp.seq + 1;
                    tally.delivered += 1;
                    tally.last_ns = now;
                    latencies.record(now.saturating_sub(stamp.sent_ns));
                    window.delivered(stamp.seq);
                }
                true
            }
            Ok(Event::Failed { reason, .. } | Event::Interrupted(reason)) => {
                tally.errors.add(reason);
                true
            }
            Ok(_) => true,
            Err(err) => {
                tally.errors.add(format!("subscriber: {err:#}"));
                false
            }
        }
    };
    loop {
        tokio::select! {
            // Biased: while frames keep coming, the stop signal is not
            // polled (which would register with a channel every
            // subscriber shares) for every wake-up.
            biased;
            event = client.read_event() => {
                clock.woken();
                if !handle(event, &mut tally, &mut clock) {
                    break;
                }
                // Take whatever else is already received without going
                // back through select!.
                let mut open = true;
                while let Some(event) = client.buffered_event() {
                    if !handle(event, &mut tally, &mut clock) {
                        open = false;
                        break;
                    }
                }
                if !open {
                    break;
                }
            }
            _ = stopped.changed() => break,
        }
    }
    tally
}

async fn publish_loop(
    mut client: Client,
    stream: u32,
    topic: String,
    window: Arc<Window>,
    publish: PublishArgs,
    message_rate: Option<f64>,
    start: Instant,
) -> (u32, Client, PublisherTally) {
    let mut tally = PublisherTally::default();
    if let Err(err) = publish_messages(
        &mut client,
        stream,
        &topic,
        &window,
        &publish,
        message_rate,
        start,
        &mut tally,
    )
    .await
    {
        tally.errors.add(format!("publisher: {err:#}"));
    }
    (stream, client, tally)
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site, all parts of one plan"
)]
async fn publish_messages(
    client: &mut Client,
    stream: u32,
    topic: &str,
    window: &Window,
    publish: &PublishArgs,
    message_rate: Option<f64>,
    start: Instant,
    tally: &mut PublisherTally,
) -> anyhow::Result<()> {
    let mut data = payload_template(publish.size.0);
    let block = window.block();
    // Whole blocks only, so completion is visible in the window.
    let max_messages = publish.max_messages.max(1).div_ceil(block) * block;
    let end = start + publish.duration;
    let mut seq = 0u64;
    let mut last_progress = (window.delivered_to_all(), Instant::now());
    loop {
        let now = Instant::now();
        // Past the end, only the current block is finished (at the rate).
        let finishing = now >= end;
        if seq >= max_messages || (finishing && seq.is_multiple_of(block)) {
            break;
        }
        let mut limit = window.limit().min(max_messages);
        let mut next_due = None;
        if let Some(rate) = message_rate {
            let due = (now.duration_since(start).as_secs_f64() * rate) as u64 + 1;
            if due <= seq {
                next_due = Some(start + Duration::from_secs_f64(seq as f64 / rate));
            } else {
                let lag = now
                    .saturating_duration_since(start + Duration::from_secs_f64(seq as f64 / rate));
                tally.max_lag = tally.max_lag.max(lag);
            }
            limit = limit.min(due);
        }
        if seq < limit {
            let batch_end = limit.min(seq + PUBLISH_BATCH);
            while seq < batch_end {
                Stamp {
                    stream,
                    seq,
                    sent_ns: now_ns(),
                }
                .write(&mut data);
                let (_, message) = client.publish_message(topic, &data, false);
                client.feed(message).await?;
                seq += 1;
            }
            client.flush().await?;
            tally.published = seq;
            continue;
        }
        // Blocked: by the rate, or by the window.
        let delivered = window.delivered_to_all();
        if delivered != last_progress.0 {
            last_progress = (delivered, now);
        }
        let window_blocked = next_due.is_none();
        if window_blocked && now.duration_since(last_progress.1) >= publish.stall_timeout {
            anyhow::bail!(
                "no delivery progress for {:?} with {} messages in flight (lost messages or a stuck subscriber)",
                publish.stall_timeout,
                seq - delivered
            );
        }
        let wake_at = next_due
            .unwrap_or(last_progress.1 + publish.stall_timeout)
            .min(if finishing {
                now + publish.stall_timeout
            } else {
                end
            });
        tokio::select! {
            () = window.progressed(), if window_blocked => {}
            () = tokio::time::sleep_until(wake_at.into()) => {}
            event = client.read_event() => match event? {
                Event::Failed { reason, .. } => tally.errors.add(format!("publish refused: {reason}")),
                Event::Interrupted(reason) => tally.errors.add(reason),
                _ => {}
            },
        }
    }
    tally.published = seq;
    Ok(())
}
