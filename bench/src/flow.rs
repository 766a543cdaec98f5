//! End-to-end flow control for fan-out runs: a publisher may run at most a
//! window of messages ahead of its slowest subscriber.
//!
//! Without it, "max rate" would mean "faster than the subscribers read", and
//! every target would end up dropping or disconnecting slow consumers, which
//! measures queue overflow instead of throughput. The window keeps each
//! subscriber's backlog below the target's outbound queue, so no message may
//! be lost and delivered/expected must be exactly 1.0.
//!
//! Subscribers report progress once per block of `block` messages (not per
//! message, which would make every delivery contend on one cache line).
//! Block `b` is complete when all `subscribers` reported it. Each subscriber
//! receives its messages in order, so blocks complete in order: when any
//! subscriber reports block `b`, it has already reported every earlier block.
//! The counters live in a ring of `slots`; a slot is reused only after its
//! block completed, and counts accumulate modulo the subscriber count, so
//! reuse never needs a reset that could race with a late report.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// Progress of one topic's subscribers, shared with its publisher.
#[derive(Debug)]
pub(crate) struct Window {
    /// Messages per block (a publisher always publishes whole blocks).
    block: u64,
    /// Reports expected per block: the topic's subscriber count.
    subscribers: u64,
    /// Report counters; block `b` uses slot `b % slots.len()`.
    slots: Box<[AtomicU64]>,
    /// Blocks fully delivered.
    completed: AtomicU64,
    /// Wakes the publisher when a block completes.
    progressed: Notify,
}

impl Window {
    /// A window of about `messages` messages in flight, reported in blocks
    /// of at most `messages / 8`.
    pub(crate) fn new(messages: u64, subscribers: u64) -> Self {
        let messages = messages.max(8);
        let block = (messages / 8).max(1);
        let slots = (messages / block).max(2);
        Self {
            block,
            subscribers: subscribers.max(1),
            slots: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            completed: AtomicU64::new(0),
            progressed: Notify::new(),
        }
    }

    /// Messages per block: publishers round their totals up to a multiple.
    pub(crate) fn block(&self) -> u64 {
        self.block
    }

    /// Called by a subscriber for every message it receives in order, with
    /// the message's sequence number (from 0).
    pub(crate) fn delivered(&self, seq: u64) {
        if !(seq + 1).is_multiple_of(self.block) {
            return;
        }
        let block = seq / self.block;
        let slot = &self.slots[(block % self.slots.len() as u64) as usize];
        let reports = slot.fetch_add(1, Ordering::AcqRel) + 1;
        if reports.is_multiple_of(self.subscribers) {
            self.completed.fetch_add(1, Ordering::AcqRel);
            self.progressed.notify_one();
        }
    }

    /// Messages fully delivered to every subscriber (a multiple of the block).
    pub(crate) fn delivered_to_all(&self) -> u64 {
        self.completed.load(Ordering::Acquire) * self.block
    }

    /// The first sequence number the publisher may not send yet.
    pub(crate) fn limit(&self) -> u64 {
        (self.completed.load(Ordering::Acquire) + self.slots.len() as u64) * self.block
    }

    /// Waits until some block completes (returns at once if one completed
    /// since the last wait).
    pub(crate) async fn progressed(&self) {
        self.progressed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_completes_only_when_every_subscriber_reported_it() {
        let window = Window::new(64, 3);
        assert_eq!(window.block(), 8);
        assert_eq!(window.limit(), 64);
        for seq in 0..8 {
            window.delivered(seq);
            window.delivered(seq);
        }
        assert_eq!(window.delivered_to_all(), 0);
        for seq in 0..8 {
            window.delivered(seq);
        }
        assert_eq!(window.delivered_to_all(), 8);
        assert_eq!(window.limit(), 72);
    }

    #[test]
    fn slots_are_reused_across_many_laps_without_reset() {
        let window = Window::new(16, 2);
        let total = 16 * 50;
        for seq in 0..total {
            // The two subscribers interleave, one a little behind.
            window.delivered(seq);
            if seq >= 3 {
                window.delivered(seq - 3);
            }
            assert!(seq < window.limit());
        }
        for seq in total - 3..total {
            window.delivered(seq);
        }
        assert_eq!(window.delivered_to_all(), total);
    }
}
