//! Retention: trimming the stored topics that broke a count, size or age
//! limit, and only those, so idle topics cost no CPU however many exist.
//!
//! Publishes put a topic on the trim queue when it passes its count or size
//! limit. Age is scheduled: each topic with retained messages has one entry
//! in `Topics::age_schedule` at the time its oldest message passes
//! `max_age`. Each pass of [`run_trimmer`] takes the queue and the due part
//! of the schedule, trims those topics from the oldest end (without holding
//! a topic lock during store I/O), and reschedules them.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::store::{TrimLimits, now_ms};
use super::{SledEngine, Topic};
use crate::config::RetentionRule;

/// Messages deleted per store batch.
const DELETIONS_PER_STEP: usize = 100_000;

/// Batches per topic per pass; a topic with more to trim is queued again.
const STEPS_PER_PASS: usize = 10;

/// The earliest an age check is rescheduled after one that found nothing.
const AGE_RECHECK_MS: u64 = 1_000;

/// Runs a trim pass every `every` until `shutdown`.
pub(crate) async fn run_trimmer(
    engine: Arc<SledEngine>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let engine = Arc::clone(&engine);
        if tokio::task::spawn_blocking(move || engine.trim_due())
            .await
            .is_err()
        {
            tracing::error!("a trim pass panicked");
        }
    }
}

impl SledEngine {
    /// The age-schedule key of a topic whose oldest message is `oldest_ms`.
    pub(super) fn age_key_for(&self, oldest_ms: u64, rule: &RetentionRule) -> (u64, u64) {
        let max_age = u64::try_from(rule.max_age.as_millis()).unwrap_or(u64::MAX);
        let due = oldest_ms.saturating_add(max_age);
        let sequence = self
            .age_sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (due, sequence)
    }

    /// One retention pass over the topics that need one. Blocking (store
    /// I/O).
    pub(crate) fn trim_due(&self) {
        let now = now_ms();
        let mut due = std::mem::take(&mut *self.trim_queue());
        {
            let mut schedule = self.age_schedule();
            let later = schedule.split_off(&(now.saturating_add(1), 0));
            due.extend(std::mem::replace(&mut *schedule, later).into_values());
        }
        for entry in due {
            self.trim_topic(&entry, now);
        }
    }

    fn trim_topic(&self, entry: &Arc<Topic>, now: u64) {
        let rule = Arc::clone(&entry.retention);
        {
            let mut state = entry.lock();
            state.trim_queued = false;
            if let Some(key) = state.age_key.take() {
                self.age_schedule().remove(&key);
            }
        }
        let max_age = u64::try_from(rule.max_age.as_millis()).unwrap_or(u64::MAX);
        let limits = TrimLimits {
            max_messages: rule.max_messages,
            max_bytes: rule.max_bytes.as_u64(),
            oldest_ms: now.saturating_sub(max_age),
        };
        let mut more = false;
        for _ in 0..STEPS_PER_PASS {
            let stream = entry.lock().stream;
            if stream.visible == stream.first {
                break;
            }
            let plan = match self.store.plan_trim(&stream, limits, DELETIONS_PER_STEP) {
                Ok(Some(plan)) => plan,
                Ok(None) => break,
                Err(err) => {
                    tracing::warn!(topic = %entry.name, cause = %err, "trimming failed");
                    more = true;
                    break;
                }
            };
            let capped = plan.capped;
            let new_first;
            {
                let mut state = entry.lock();
                let mut current = state.stream;
                if current.epoch != stream.epoch {
                    return;
                }
                new_first = current.first.max(plan.through + 1);
                current.first = new_first;
                current.bytes = current.bytes.saturating_sub(plan.freed);
                current.oldest_ms = if plan.next_oldest_ms > 0 {
                    plan.next_oldest_ms
                } else if current.next > new_first {
                    // Messages remain whose age is unknown here (not yet
                    // released, or past the step's cap): check again later.
                    now
                } else {
                    0
                };
                // The record says the new first offset before anything is
                // deleted, so a crash in between keeps the next offset; it
                // is written under the lock so it never overwrites a newer
                // reservation.
                if let Err(err) = self.store.write_record(entry.name.as_str(), &current) {
                    tracing::warn!(topic = %entry.name, cause = %err, "trimming failed");
                    more = true;
                    break;
                }
                state.holes.retain(|hole| hole.to >= new_first);
                state.stream = current;
            }
            let deleted = self
                .store
                .apply_trim(plan)
                .and_then(|()| self.store.delete_holes_below(stream.epoch, new_first));
            if let Err(err) = deleted {
                tracing::warn!(topic = %entry.name, cause = %err, "trimming failed");
            }
            more = capped;
            if !capped {
                break;
            }
        }
        let mut state = entry.lock();
        let stream = state.stream;
        let over_limit = more
            || stream.next - stream.first > rule.max_messages
            || stream.bytes > rule.max_bytes.as_u64();
        if over_limit && !state.trim_queued {
            state.trim_queued = true;
            self.trim_queue().push(Arc::clone(entry));
        }
        if stream.oldest_ms > 0 && state.age_key.is_none() {
            let (due, sequence) = self.age_key_for(stream.oldest_ms, &rule);
            let key = (due.max(now.saturating_add(AGE_RECHECK_MS)), sequence);
            state.age_key = Some(key);
            self.age_schedule().insert(key, Arc::clone(entry));
        }
    }
}
