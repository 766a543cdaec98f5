//! Scenario 5: a subscriber that comes back M messages behind, and how long
//! the broker takes to replay them.
//!
//! 1. A subscriber subscribes to a fresh stored topic, notes its position
//!    (`epoch`, `last_offset`) and disconnects.
//! 2. A publisher stores M messages (pipelined, with acks).
//! 3. The subscriber reconnects and subscribes with
//!    `{"kind": "after", "epoch": E, "offset": N}`. The replay time runs from
//!    sending that subscribe until the M-th message arrives; each message
//!    must arrive exactly once, in offset order, with no gap.
//!
//! The topic's retention rule must keep at least M messages.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use anyhow::{Context, bail};
use serde_json::json;
use sockeye_protocol::Position;

use crate::cli::ResumeArgs;
use crate::client::{Client, Event, Role};
use crate::metrics::now_ns;
use crate::report::{Errors, Report};
use crate::scenario::{Outcome, RunContext, payload_template, per_second};
use crate::wire::Stamp;

/// Runs the scenario and reports.
pub(crate) async fn run(context: &RunContext, args: &ResumeArgs) -> anyhow::Result<Report> {
    context.require_sockeye("resume")?;
    let topic = context.topic("resume", 0);
    let messages = args.messages.max(1);

    let mut subscriber = context.dialer.open(Role::Subscriber).await?;
    let before = subscriber.subscribe(&topic, None).await?;
    subscriber.close().await;

    let mut publisher = context.dialer.open(Role::Publisher(&topic)).await?;
    let fill_start = Instant::now();
    let (first, last) = tokio::time::timeout(args.timeout, fill(&mut publisher, &topic, args))
        .await
        .with_context(|| format!("storing {messages} messages took over {:?}", args.timeout))??;
    let fill_seconds = fill_start.elapsed().as_secs_f64();
    drop(publisher);
    if first.0 != last.0 {
        bail!("the topic's epoch changed while it was being filled");
    }
    let epoch = first.0;
    // Resume from where the subscriber left; on a topic that had no history
    // when it subscribed, that is just before the first stored message.
    let resume_from = if before.epoch == epoch && before.last_offset < first.1 {
        before.last_offset
    } else {
        first.1 - 1
    };
    let expected = last.1 - resume_from;

    let measurement = context.start_measuring();
    let mut subscriber = context.dialer.open(Role::Subscriber).await?;
    let replay_start = Instant::now();
    let info = subscriber
        .subscribe(
            &topic,
            Some(Position::After {
                epoch,
                offset: resume_from,
            }),
        )
        .await?;
    let subscribed_seconds = replay_start.elapsed().as_secs_f64();
    let mut errors = Errors::default();
    if !info.complete || info.next_offset != resume_from + 1 {
        errors.add(format!(
            "asked to resume after offset {resume_from}, the broker starts at {} (complete: {})",
            info.next_offset, info.complete
        ));
    }
    let mut next_offset = resume_from + 1;
    let mut delivered = 0u64;
    let mut latest = None;
    let replay = async {
        while next_offset <= last.1 {
            match subscriber.read_event().await? {
                Event::Delivery(message) => {
                    if message.epoch != epoch || message.offset != next_offset {
                        errors.add(format!(
                            "expected offset {next_offset} of epoch {epoch}, got {} of {}",
                            message.offset, message.epoch
                        ));
                        if message.offset < next_offset {
                            continue;
                        }
                    }
                    delivered += 1;
                    next_offset = message.offset + 1;
                    latest = Some(message.stamp);
                }
                Event::Failed { reason, .. } | Event::Interrupted(reason) => errors.add(reason),
                _ => {}
            }
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(args.timeout, replay).await {
        Ok(result) => result?,
        Err(_) => errors.add(format!("replay incomplete after {:?}", args.timeout)),
    }
    let replay_seconds = replay_start.elapsed().as_secs_f64();
    let usage = measurement.finish();
    subscriber.close().await;
    if let Some(stamp) = latest
        && stamp.seq + 1 != messages
    {
        errors.add(format!(
            "the last replayed message is number {} of {messages}",
            stamp.seq + 1
        ));
    }

    let mut extra = BTreeMap::new();
    extra.insert("replay_seconds".into(), replay_seconds);
    extra.insert("subscribed_reply_seconds".into(), subscribed_seconds);
    extra.insert("fill_seconds".into(), fill_seconds);
    extra.insert(
        "fill_acked_msgs_per_s".into(),
        per_second(messages, fill_seconds),
    );
    Ok(Outcome {
        scenario: "resume",
        case: format!("{messages} behind, {} B", args.size.0),
        params: json!({
            "messages": messages,
            "payload_bytes": args.size.0,
            "inflight": args.inflight,
        }),
        connections: 1,
        elapsed_s: replay_seconds,
        published: messages,
        expected,
        delivered,
        loss_allowed: false,
        rate_per_s: per_second(delivered, replay_seconds),
        rate_unit: "replayed msgs/s",
        publish_rate_per_s: Some(per_second(messages, fill_seconds)),
        latency_us: None,
        usage,
        extra,
        errors,
    }
    .into_report(context))
}

/// Publishes `args.messages` with acks, at most `args.inflight` unacked.
/// Returns the (epoch, offset) of the first and of the last stored message.
async fn fill(
    client: &mut Client,
    topic: &str,
    args: &ResumeArgs,
) -> anyhow::Result<((u64, u64), (u64, u64))> {
    let messages = args.messages.max(1);
    let inflight_limit = args.inflight.max(1) as usize;
    let mut data = payload_template(args.size.0);
    // Request id -> sequence number.
    let mut inflight: HashMap<u64, u64> = HashMap::new();
    let mut positions = [None; 2];
    let mut seq = 0u64;
    let mut acked = 0u64;
    while acked < messages {
        while seq < messages && inflight.len() < inflight_limit {
            Stamp {
                stream: 0,
                seq,
                sent_ns: now_ns(),
            }
            .write(&mut data);
            let (id, message) = client.publish_message(topic, &data, true);
            client.feed(message).await?;
            inflight.insert(id.context("a Sockeye publish has an id")?, seq);
            seq += 1;
        }
        client.flush().await?;
        match client.read_event().await? {
            Event::Acked { id, epoch, offset } => {
                let Some(acked_seq) = inflight.remove(&id) else {
                    bail!("an ack for an unknown request id {id}");
                };
                acked += 1;
                if acked_seq == 0 {
                    positions[0] = Some((epoch, offset));
                }
                if acked_seq == messages - 1 {
                    positions[1] = Some((epoch, offset));
                }
            }
            Event::Failed { reason, .. } => bail!("publish refused: {reason}"),
            _ => {}
        }
    }
    let first = positions[0].context("the first message was never acked")?;
    let last = positions[1].context("the last message was never acked")?;
    if last.1 < first.1 || last.1 - first.1 + 1 != messages {
        bail!(
            "stored at offsets {}..={}: not {messages} consecutive offsets (another publisher on the topic?)",
            first.1,
            last.1
        );
    }
    Ok((first, last))
}
