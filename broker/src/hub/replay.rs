//! Replays: streaming a subscriber's missed messages through the engine's
//! read, then handing it over to live delivery with no gap and no
//! duplicate.
//!
//! # Why the seam is sound
//!
//! The engine hands each stored message to the hub only once it is
//! readable, in offset order, and the hub advances a topic's `next` as it
//! delivers, under the topic's lock. So at any instant every offset below
//! `next` is readable (unless trimmed or lost in a hole), and every offset
//! from `next` on will be delivered to whoever is live when it arrives.
//!
//! A replaying subscriber is not live. It reads from its cursor without any
//! hub lock, never at or past the `next` it saw before the read, queueing
//! each message (waiting for room: this is the backpressure). When a read
//! has returned everything below that bound, it takes the topic lock and
//! compares its cursor with `next`. If they are equal it joins the live set
//! *before releasing the lock*: everything below `next` it has queued, and
//! everything from `next` on will be delivered live, so nothing is missed
//! or doubled. If they differ, more was delivered meanwhile; it releases
//! the lock and reads again. Unlike buffering live messages during the
//! history read (Centrifugo's approach), nothing accumulates in memory while
//! the replay runs, however long it takes: a replay holds one batch.
//!
//! Offsets missing from a read (trimmed, or lost in a crash in `interval`
//! mode) are reported with a `gap` frame, whether more messages follow them
//! or not. A reset changes the epoch; the replay sends `reset` and continues
//! in the new epoch.

use std::sync::Arc;
use std::time::Duration;

use sockeye_protocol::frame::FrameBuf;
use sockeye_protocol::{CloseCode, FIRST_OFFSET, OffsetRange, ServerMessage};

use super::{Hub, HubTopic, Subscriber};
use crate::engine::Engine;
use crate::stats::Stats;

/// How long a replay waits before reading again while the store recovers.
const STORE_RETRY: Duration = Duration::from_millis(200);

/// Where a replay starts.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplayStart {
    /// The epoch the cursor belongs to.
    pub(super) epoch: u64,
    /// The first offset to deliver.
    pub(super) cursor: u64,
    /// Send a `reset` frame before anything else.
    pub(super) send_reset: bool,
}

/// A replay's place in its topic's count of replaying subscribers: counted
/// when made, uncounted when dropped (however the replay ends, a panic
/// included) unless the replay went live, which uncounts it under the lock.
#[derive(Debug)]
pub(super) struct ReplayGuard {
    entry: Arc<HubTopic>,
    went_live: bool,
}

impl ReplayGuard {
    /// Guards a replay the caller has just counted in the topic's state.
    pub(super) fn new(entry: Arc<HubTopic>) -> Self {
        Self {
            entry,
            went_live: false,
        }
    }
}

impl Drop for ReplayGuard {
    fn drop(&mut self) {
        if !self.went_live {
            let mut state = self.entry.lock();
            state.replaying = state.replaying.saturating_sub(1);
        }
    }
}

/// What a replay that read everything below its bound does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GoLive {
    /// Registered for live delivery; the replay is done.
    Live,
    /// More was delivered since the last read; read again.
    ReadMore,
    /// Offsets from the cursor are gone (trimmed, or lost); report the gap
    /// and skip it.
    Gap { range: OffsetRange },
    /// The stream was reset; report it and continue in `epoch`.
    Reset { epoch: u64 },
    /// The subscription ended.
    Stop,
}

/// Spawns a replay; it ends when it goes live, when its subscription ends,
/// or when the connection goes.
pub(super) fn spawn(
    hub: Arc<Hub>,
    engine: Arc<Engine>,
    guard: ReplayGuard,
    subscriber: Subscriber,
    start: ReplayStart,
) {
    let tasks = hub.tasks.clone();
    tasks.spawn(async move {
        let entry = Arc::clone(&guard.entry);
        run(&hub, &engine, guard, &subscriber, start).await;
        hub.remove_if_idle(&entry);
    });
}

impl Hub {
    /// Registers the subscriber for live delivery if its replay of `epoch`
    /// has read everything below `until` (the `next` it saw before its last
    /// read) and nothing was delivered since.
    fn try_go_live(
        &self,
        guard: &mut ReplayGuard,
        subscriber: &Subscriber,
        epoch: u64,
        cursor: u64,
        until: u64,
    ) -> GoLive {
        let mut state = guard.entry.lock();
        if subscriber.cancel.is_cancelled() || subscriber.peer.is_closing() {
            return GoLive::Stop;
        }
        let Some(head) = state.stream else {
            return GoLive::Stop;
        };
        if head.epoch != epoch {
            return GoLive::Reset { epoch: head.epoch };
        }
        if cursor < until {
            // Offsets the read should have found are not stored: trimmed,
            // or a hole, at the end of what was readable.
            return GoLive::Gap {
                range: OffsetRange {
                    from: cursor,
                    to: until - 1,
                },
            };
        }
        if cursor >= head.offset {
            state.replaying = state.replaying.saturating_sub(1);
            guard.went_live = true;
            state.live.push(subscriber.clone());
            return GoLive::Live;
        }
        GoLive::ReadMore
    }
}

async fn run(
    hub: &Hub,
    engine: &Engine,
    mut guard: ReplayGuard,
    subscriber: &Subscriber,
    start: ReplayStart,
) {
    let ReplayStart {
        mut epoch,
        mut cursor,
        send_reset,
    } = start;
    let topic = guard.entry.name.clone();
    let peer = &subscriber.peer;
    let control = |message: ServerMessage| message.encode_frame(&hub.compression);
    if send_reset
        && peer
            .send(control(ServerMessage::Reset {
                topic: topic.to_string(),
                epoch,
            }))
            .await
            .is_err()
    {
        return;
    }
    loop {
        if subscriber.cancel.is_cancelled() {
            return;
        }
        let Some(until) = hub.head(&guard.entry, epoch) else {
            // The stream was reset (or went away): the seam says which.
            match hub.try_go_live(&mut guard, subscriber, epoch, cursor, cursor) {
                GoLive::Reset { epoch: fresh } => {
                    epoch = fresh;
                    cursor = FIRST_OFFSET;
                    let reset = ServerMessage::Reset {
                        topic: topic.to_string(),
                        epoch,
                    };
                    if peer.send(control(reset)).await.is_err() {
                        return;
                    }
                    continue;
                }
                GoLive::Live | GoLive::Stop => return,
                GoLive::ReadMore | GoLive::Gap { .. } => continue,
            }
        };
        let batch = match engine
            .read(
                &topic,
                epoch,
                cursor,
                until,
                hub.replay_batch,
                hub.replay_batch_bytes,
            )
            .await
        {
            Ok(batch) => batch,
            Err(_) if engine.is_failing() => {
                // The engine is recovering: wait, do not drop the subscriber.
                tokio::select! {
                    () = subscriber.cancel.cancelled() => {}
                    () = tokio::time::sleep(STORE_RETRY) => {}
                }
                continue;
            }
            Err(err) => {
                tracing::warn!(topic = %topic, cause = %err, "replay read failed");
                peer.close(CloseCode::InternalError, "history store read failed");
                return;
            }
        };
        for message in batch.messages {
            if message.offset > cursor {
                let gap = ServerMessage::Gap {
                    topic: topic.to_string(),
                    epoch,
                    range: OffsetRange {
                        from: cursor,
                        to: message.offset - 1,
                    },
                };
                if peer.send(control(gap)).await.is_err() {
                    return;
                }
            }
            let mut frame = FrameBuf::with_capacity(message.body().len());
            frame.body_mut().extend_from_slice(message.body());
            if peer.send(frame.seal(&hub.compression)).await.is_err() {
                return;
            }
            Stats::add(&hub.stats.replayed, 1);
            Stats::add(&hub.stats.deliveries, 1);
            cursor = message.offset + 1;
        }
        if !batch.reached_end {
            continue;
        }
        let next_frame = match hub.try_go_live(&mut guard, subscriber, epoch, cursor, until) {
            GoLive::Live | GoLive::Stop => return,
            GoLive::ReadMore => continue,
            GoLive::Gap { range } => {
                cursor = range.to + 1;
                ServerMessage::Gap {
                    topic: topic.to_string(),
                    epoch,
                    range,
                }
            }
            GoLive::Reset { epoch: fresh } => {
                epoch = fresh;
                cursor = FIRST_OFFSET;
                ServerMessage::Reset {
                    topic: topic.to_string(),
                    epoch,
                }
            }
        };
        if peer.send(control(next_frame)).await.is_err() {
            return;
        }
    }
}
