//! Replays: streaming a subscriber's missed messages from the store, then
//! handing it over to live delivery with no gap and no duplicate.
//!
//! # Why the seam is sound
//!
//! A stored message is *released* under the topic's lock: its offset `n`
//! is already in the store (and durable, in `fsync` mode), `visible`
//! advances to `n + 1`, and the frame is queued to every *live*
//! subscriber. So at any instant, every offset below `visible` is readable
//! (unless trimmed or lost in a hole), and every offset from `visible` on
//! will be queued to whoever is live when it is released.
//!
//! A replaying subscriber is not live. It reads the store from its cursor
//! without any lock, queueing each message (waiting for room: this is the
//! backpressure), never reading at or past the `visible` it saw before the
//! read. When a read has returned everything below that bound, it takes the
//! topic lock and compares its cursor with `visible`. If they are equal it
//! joins the live set *before releasing the lock*: everything below
//! `visible` it has queued, and everything from `visible` on will be queued
//! live, so nothing is missed or doubled. If they differ, more was released
//! meanwhile; it releases the lock and reads again. Unlike buffering live messages during the history
//! read (Centrifugo's approach), nothing accumulates in memory while the
//! replay runs, however long it takes: a replay holds one batch at a time.
//!
//! Trimming removes offsets below `first` only; a replay that finds its
//! cursor below `first` sends a `gap` frame and jumps. Offsets missing in
//! the middle (holes: lost in a crash in `interval` mode) are reported with
//! a `gap` frame too, whether more messages follow them or not. A reset
//! changes the epoch; the replay sends `reset` and continues in the new
//! epoch.

use std::sync::Arc;

use sockeye_protocol::frame::FrameBuf;
use sockeye_protocol::{OffsetRange, ServerMessage};

use crate::stats::Stats;
use crate::topics::{GoLive, Subscriber, Topic, Topics};

/// The first offset of every epoch.
const FIRST_OFFSET: u64 = 1;

/// How long a replay waits before reading again while the store recovers.
const STORE_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

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
        // Everything below `until` is readable (durable and released);
        // nothing at or past it may be read yet.
        let Some(until) = topics.visible(entry, epoch) else {
            // The stream went away or was reset: let the seam say which.
            match topics.try_go_live(entry, subscriber, epoch, cursor, cursor) {
                GoLive::Reset { epoch: fresh } => {
                    epoch = fresh;
                    cursor = FIRST_OFFSET;
                    let reset = ServerMessage::Reset {
                        topic: entry.name.to_string(),
                        epoch,
                    };
                    if peer.send(control(reset)).await.is_err() {
                        topics.replay_ended(entry);
                        return;
                    }
                    continue;
                }
                GoLive::Live | GoLive::Stop => return,
                GoLive::ReadMore | GoLive::Gap { .. } => continue,
            }
        };
        let batch = match topics.store.read(
            epoch,
            cursor,
            until,
            topics.replay_batch,
            topics.replay_batch_bytes,
        ) {
            Ok(batch) => batch,
            Err(_) if topics.store.is_failing() => {
                // The flusher is reopening the store: wait, do not drop the
                // subscriber.
                tokio::select! {
                    () = subscriber.cancel.cancelled() => {}
                    () = tokio::time::sleep(STORE_RETRY) => {}
                }
                continue;
            }
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
        for message in batch.messages {
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
        if !batch.reached_end {
            continue;
        }
        let next_frame = match topics.try_go_live(entry, subscriber, epoch, cursor, until) {
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
                cursor = FIRST_OFFSET;
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
