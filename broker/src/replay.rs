//! Replays: streaming a subscriber's missed messages from the store, then
//! handing it over to live delivery with no gap and no duplicate.
//!
//! # Why the seam is sound
//!
//! A publish to a stored topic does three things under the topic's lock:
//! append offset `n` to the store, advance `next` to `n + 1`, and queue the
//! frame to every *live* subscriber. So at any instant, every offset below
//! `next` is in the store (unless trimmed), and every offset from `next` on
//! will be queued to whoever is live when it is published.
//!
//! A replaying subscriber is not live. It reads the store from its cursor
//! without any lock, queueing each message (waiting for room: this is the
//! backpressure). When a read comes back short, it takes the topic lock and
//! compares its cursor with `next`. If they are equal it joins the live set
//! *before releasing the lock*: everything below `next` it has queued, and
//! everything from `next` on will be queued live, so nothing is missed or
//! doubled. If they differ, more was published meanwhile; it releases the
//! lock and reads again. Unlike buffering live messages during the history
//! read (Centrifugo's approach), nothing accumulates in memory while the
//! replay runs, however long it takes: a replay holds one batch at a time.
//!
//! Trimming removes offsets below `first` only; a replay that finds its
//! cursor below `first` sends a `gap` frame and jumps. A reset changes the
//! epoch; the replay sends `reset` and continues in the new epoch.

use std::sync::Arc;

use sockeye_protocol::frame::FrameBuf;
use sockeye_protocol::{OffsetRange, ServerMessage};

use crate::stats::Stats;
use crate::topics::{GoLive, Subscriber, Topic, Topics};

/// Where a replay starts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplayStart {
    /// The epoch the cursor belongs to.
    pub(crate) epoch: u64,
    /// The first offset to deliver.
    pub(crate) cursor: u64,
    /// Send a `reset` frame before anything else.
    pub(crate) send_reset: bool,
}

/// Spawns a replay (through `Topics::start_replay`, which counts it in the
/// topic's `replaying`); the replay uncounts itself when it goes live or
/// stops.
pub(crate) fn spawn(
    topics: Arc<Topics>,
    entry: Arc<Topic>,
    subscriber: Subscriber,
    start: ReplayStart,
) {
    let tasks = topics.tasks.clone();
    tasks.spawn(async move {
        run(&topics, &entry, &subscriber, start).await;
    });
}

async fn run(topics: &Topics, entry: &Topic, subscriber: &Subscriber, start: ReplayStart) {
    let ReplayStart {
        mut epoch,
        mut cursor,
        send_reset,
    } = start;
    let peer = &subscriber.peer;
    let control = |message: ServerMessage| message.encode_frame(&topics.compression);
    if send_reset
        && peer
            .send(control(ServerMessage::Reset {
                topic: entry.name.to_string(),
                epoch,
            }))
            .await
            .is_err()
    {
        topics.replay_ended(entry);
        return;
    }
    loop {
        if subscriber.cancel.is_cancelled() {
            topics.replay_ended(entry);
            return;
        }
        let batch = match topics.store.read(
            epoch,
            cursor,
            topics.replay_batch,
            topics.replay_batch_bytes,
        ) {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(topic = %entry.name, cause = %err, "replay read failed");
                peer.close(
                    sockeye_protocol::CloseCode::InternalError,
                    "history store read failed",
                );
                topics.replay_ended(entry);
                return;
            }
        };
        let short = batch.len() < topics.replay_batch;
        for message in batch {
            if message.offset > cursor {
                let gap = ServerMessage::Gap {
                    topic: entry.name.to_string(),
                    epoch,
                    range: OffsetRange {
                        from: cursor,
                        to: message.offset - 1,
                    },
                };
                if peer.send(control(gap)).await.is_err() {
                    topics.replay_ended(entry);
                    return;
                }
            }
            let mut frame = FrameBuf::with_capacity(message.body().len());
            frame.body_mut().extend_from_slice(message.body());
            if peer.send(frame.seal(&topics.compression)).await.is_err() {
                topics.replay_ended(entry);
                return;
            }
            Stats::add(&topics.stats.replayed, 1);
            Stats::add(&topics.stats.deliveries, 1);
            cursor = message.offset + 1;
        }
        if !short {
            continue;
        }
        let next_frame = match topics.try_go_live(entry, subscriber, epoch, cursor) {
            GoLive::Live | GoLive::Stop => return,
            GoLive::ReadMore => continue,
            GoLive::Gap { range } => {
                cursor = range.to + 1;
                ServerMessage::Gap {
                    topic: entry.name.to_string(),
                    epoch,
                    range,
                }
            }
            GoLive::Reset { epoch: fresh } => {
                epoch = fresh;
                cursor = 1;
                ServerMessage::Reset {
                    topic: entry.name.to_string(),
                    epoch,
                }
            }
        };
        if peer.send(control(next_frame)).await.is_err() {
            topics.replay_ended(entry);
            return;
        }
    }
}
