//! Topics: the registry, each topic's stored stream and live subscribers,
//! fan-out, and when stored messages become visible.
//!
//! # Locks
//!
//! Three kinds, always taken in this order and never across an `.await`:
//! the registry map (`Topics::registry`), then one topic's state
//! (`Topic::state`), then the wildcard index (`Topics::wildcards`, whose
//! match cache has its own lock, taken right after it). The
//! work lists (`dirty`, `unreleased`, `trim_queue`, `age_schedule`) are
//! leaves: taken last, held for a push or a swap.
//!
//! # Visibility
//!
//! A publish to a stored topic assigns its offset and appends it to the
//! store under the topic's lock. In `fsync` mode it is not delivered yet: it
//! waits in the topic's `pending` queue until a flush has made it durable,
//! and the flusher then *releases* it (delivers it live, in offset order,
//! under the same lock) before any acknowledgement of that flush goes out.
//! So a live subscriber never sees a message that a crash can take back,
//! and an acknowledged offset is always readable. In `interval` mode the
//! message is released at once, and reservations (see `store`) keep a crash
//! from handing its offset to another message. `StreamState::visible` is the
//! first offset not yet released; readers (replays, the admin API, subscribe
//! planning) never look at or past it. That keeps the replay seam sound
//! (see `replay.rs`): "everything below `visible` is readable; everything
//! from `visible` on is delivered to whoever is live when it is released".

mod flusher;
mod trimmer;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

use bytes::Bytes;
use sockeye_protocol::frame::FrameBuf;
use sockeye_protocol::{
    CloseCode, Compression, Delivery, DeliveryRef, OffsetRange, Payload, Position, ServerMessage,
    TopicFilter, TopicName,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, DamagePolicy, Durability, RetentionRule, SlowConsumerPolicy};
use crate::peer::{ConnId, Offer, Outbox, Peer};
use crate::replay::{self, ReplayStart};
use crate::stats::Stats;
use crate::store::heads::HeadRecord;
use crate::store::{Damage, RESERVATION, Store, StoreError, StreamState, now_ms};
use crate::wildcard::{WildcardIndex, WildcardLimits, WildcardRefusal};

pub(crate) use flusher::run_flusher;
pub(crate) use trimmer::run_trimmer;

/// One subscription of one peer to one exact topic.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    /// The peer's outbound queue, held directly so that fan-out touches
    /// only the queue, not the rest of the peer.
    pub(crate) outbox: Outbox,
    pub(crate) peer: Arc<Peer>,
    /// Cancelled when the subscription ends; stops its replay, if any.
    pub(crate) cancel: CancellationToken,
}

/// A topic with state: every stored topic, and ephemeral topics while they
/// have exact subscribers.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) name: TopicName,
    /// Shared by every topic the rule matches, so an idle topic costs a
    /// pointer, not a copy of its rule.
    retention: Option<Arc<RetentionRule>>,
    state: Mutex<TopicState>,
}

#[derive(Debug, Default)]
pub(crate) struct TopicState {
    /// The stored stream; `None` for ephemeral topics.
    pub(crate) stream: Option<StreamState>,
    /// Subscribers receiving live deliveries.
    pub(crate) live: Vec<Subscriber>,
    /// Subscribers currently replaying from the store.
    pub(crate) replaying: usize,
    /// Set when an ephemeral topic is dropped from the registry; a subscribe
    /// that finds it set looks the topic up again.
    removed: bool,
    published: u64,
    last_publish_ms: u64,
    rate: RateWindow,
    /// Stored but not yet released (fsync mode), in offset order.
    pending: VecDeque<PendingMessage>,
    /// Offsets handed out and then lost (interval mode), oldest first.
    holes: Vec<OffsetRange>,
    /// Set while the topic is in `Topics::dirty`.
    dirty: bool,
    /// Set while the topic is in `Topics::trim_queue`.
    trim_queued: bool,
    /// The topic's entry in `Topics::age_schedule`, if any.
    age_key: Option<(u64, u64)>,
}

/// A stored message waiting for the flush that makes it durable.
#[derive(Debug)]
struct PendingMessage {
    write: u64,
    offset: u64,
    frame: Bytes,
    accepted: Instant,
}

/// Publishes per second, over the last complete second.
#[derive(Debug, Default, Clone, Copy)]
struct RateWindow {
    second: u64,
    this_second: u64,
    last_second: u64,
}

impl RateWindow {
    fn record(&mut self, now_ms: u64) {
        let second = now_ms / 1000;
        if second != self.second {
            self.last_second = if second == self.second + 1 {
                self.this_second
            } else {
                0
            };
            self.this_second = 0;
            self.second = second;
        }
        self.this_second += 1;
    }

    fn per_second(&self, now_ms: u64) -> u64 {
        match (now_ms / 1000).saturating_sub(self.second) {
            0 => self.last_second,
            1 => self.this_second,
            _ => 0,
        }
    }
}

impl Topic {
    pub(crate) fn lock(&self) -> MutexGuard<'_, TopicState> {
        self.state
            .lock()
            .expect("no code panics while holding a topic lock")
    }

    pub(crate) fn is_stored(&self) -> bool {
        self.retention.is_some()
    }
}

/// Where a successful publish went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Published {
    pub(crate) epoch: u64,
    pub(crate) offset: u64,
    /// The store's write sequence, for stored topics.
    pub(crate) write: Option<u64>,
}

/// Why a publish (or the subscribe that creates a stored topic) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The store failed, or is failing and refuses writes.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The topic would be stored, and `store.max_topics` are stored already.
    #[error("the broker stores at most {max} topics (store.max_topics); this one is new")]
    TooManyTopics {
        /// The configured cap.
        max: usize,
    },
    /// More than `store.max_unflushed_bytes` wait for the disk.
    #[error("{bytes} bytes wait for the disk (store.max_unflushed_bytes); retry later")]
    StoreBehind {
        /// Bytes waiting.
        bytes: u64,
    },
}

/// What a subscribe request asked for that cannot be given.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubscribeError {
    #[error("a position needs an exact topic whose history is stored")]
    PositionUnsupported,
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl From<StoreError> for SubscribeError {
    fn from(err: StoreError) -> Self {
        Self::Write(WriteError::Store(err))
    }
}

/// A snapshot of one topic, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// The topic.
    pub name: String,
    /// Whether its history is stored.
    pub stored: bool,
    /// Exact subscribers (live and catching up).
    pub subscribers: usize,
    /// Subscribers catching up from the store.
    pub catching_up: usize,
    /// Current epoch (0 when not stored).
    pub epoch: u64,
    /// Oldest retained offset (0 when none).
    pub first_offset: u64,
    /// Newest readable offset (0 when none).
    pub last_offset: u64,
    /// Messages retained.
    pub stored_messages: u64,
    /// Body bytes retained.
    pub stored_bytes: u64,
    /// Messages published since the broker started.
    pub published: u64,
    /// Last publish, unix ms (0 if none since start).
    pub last_publish_ms: u64,
    /// Publishes in the last complete second.
    pub publish_rate: u64,
}

/// The topic registry and fan-out engine.
#[derive(Debug)]
pub struct Topics {
    registry: RwLock<HashMap<TopicName, Arc<Topic>>>,
    wildcards: RwLock<WildcardIndex>,
    pub(crate) store: Arc<Store>,
    rules: Vec<(TopicFilter, Arc<RetentionRule>)>,
    pub(crate) compression: Compression,
    policy: SlowConsumerPolicy,
    durability: Durability,
    pub(crate) replay_batch: usize,
    pub(crate) replay_batch_bytes: usize,
    max_topics: usize,
    max_unflushed_bytes: u64,
    /// Stored topics in the registry, for `store.max_topics`.
    stored_topics: AtomicUsize,
    pub(crate) stats: Arc<Stats>,
    pub(crate) tasks: TaskTracker,
    /// Stored topics written since the last flush: their heads go to the
    /// journal with the next one.
    dirty: Mutex<Vec<Arc<Topic>>>,
    /// Stored topics with pending messages (fsync mode).
    unreleased: Mutex<Vec<Arc<Topic>>>,
    /// Epochs retired (reset) since the last flush, for the journal.
    retired: Mutex<Vec<u64>>,
    /// Stored topics over a count or size limit since their last trim.
    trim_queue: Mutex<Vec<Arc<Topic>>>,
    /// When a topic's oldest message passes its rule's `max_age`, by
    /// `(due unix ms, sequence)`: trimming by age visits only topics that
    /// are due, so idle topics cost nothing.
    age_schedule: Mutex<BTreeMap<(u64, u64), Arc<Topic>>>,
    age_sequence: AtomicU64,
}

impl Topics {
    pub(crate) fn new(
        config: &Config,
        store: Arc<Store>,
        stats: Arc<Stats>,
        tasks: TaskTracker,
    ) -> Result<Self, StoreError> {
        let rules = config
            .retention
            .iter()
            .filter_map(|rule| {
                TopicFilter::parse(&rule.pattern, usize::MAX)
                    .ok()
                    .map(|pattern| (pattern, Arc::new(rule.clone())))
            })
            .collect();
        let topics = Self {
            registry: RwLock::new(HashMap::new()),
            wildcards: RwLock::new(WildcardIndex::new(WildcardLimits::from_config(
                &config.limits,
            ))),
            store,
            rules,
            compression: config.compression(),
            policy: config.limits.slow_consumer,
            durability: config.store.durability,
            replay_batch: config.store.replay_batch,
            replay_batch_bytes: usize::try_from(config.store.replay_batch_bytes.as_u64())
                .unwrap_or(usize::MAX),
            max_topics: config.store.max_topics,
            max_unflushed_bytes: config.store.max_unflushed_bytes.as_u64(),
            stored_topics: AtomicUsize::new(0),
            stats,
            tasks,
            dirty: Mutex::new(Vec::new()),
            unreleased: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
            trim_queue: Mutex::new(Vec::new()),
            age_schedule: Mutex::new(BTreeMap::new()),
            age_sequence: AtomicU64::new(0),
        };
        topics.load(config.store.on_damage)?;
        Ok(topics)
    }

    /// Loads every stored topic, applies the damage policy, reserves
    /// offsets (interval mode), makes what was found durable, and starts a
    /// fresh heads journal from it. A topic whose retention rule no longer
    /// stores it keeps its history until an operator deletes it, but is
    /// served as ephemeral.
    fn load(&self, on_damage: DamagePolicy) -> Result<(), StoreError> {
        let report = self.store.load()?;
        let damaged: HashMap<&str, &Damage> = report
            .damaged
            .iter()
            .map(|damage| (damage.topic.as_str(), damage))
            .collect();
        if !report.damaged.is_empty() {
            for damage in &report.damaged {
                tracing::error!(topic = %damage.topic, epoch = damage.epoch, damage = %damage, "stored topic lost acknowledged messages");
            }
            if on_damage == DamagePolicy::Refuse {
                return Err(StoreError::Damaged(report.damaged.clone()));
            }
        }
        let mut registry = self.registry_write();
        for loaded in &report.topics {
            let Ok(topic) = TopicName::parse(&loaded.name, usize::MAX) else {
                tracing::warn!(topic = %loaded.name, "ignoring a stored topic with an invalid name");
                continue;
            };
            let Some(retention) = self.retention_for(&topic) else {
                continue;
            };
            let mut stream = loaded.stream;
            let mut holes = loaded.holes.clone();
            if damaged.contains_key(loaded.name.as_str()) {
                stream = self.store.create_stream(&loaded.name)?;
                holes.clear();
                self.delete_stream_later(loaded.stream.epoch);
                Stats::add(&self.store.damaged_topics, 1);
                tracing::error!(topic = %loaded.name, old_epoch = loaded.stream.epoch, new_epoch = stream.epoch, "serving a damaged topic under a new epoch (store.on_damage = \"new_epoch\"); resuming clients get `reset`");
            } else if self.durability == Durability::Interval {
                stream.reservation.written_through = stream.next - 1 + RESERVATION;
                self.store.write_record(&loaded.name, &stream)?;
                stream.reservation.safe_through = stream.reservation.written_through;
            }
            let mut state = TopicState {
                stream: Some(stream),
                holes,
                ..TopicState::default()
            };
            if stream.oldest_ms > 0 {
                state.age_key = Some(self.age_key_for(stream.oldest_ms, &retention));
            }
            let entry = Arc::new(Topic {
                name: topic.clone(),
                retention: Some(Arc::clone(&retention)),
                state: Mutex::new(state),
            });
            if let Some(key) = entry.lock().age_key {
                self.age_schedule().insert(key, Arc::clone(&entry));
            }
            if stream.visible - stream.first > retention.max_messages
                || stream.bytes > retention.max_bytes.as_u64()
            {
                entry.lock().trim_queued = true;
                self.trim_queue().push(Arc::clone(&entry));
            }
            registry.insert(topic, entry);
            self.stored_topics.fetch_add(1, Ordering::Relaxed);
        }
        // Topics of damaged epochs that no rule stores any more still lose
        // their old streams' records from the journal's point of view.
        for damage in &report.damaged {
            self.retire(damage.epoch);
        }
        let heads: Vec<HeadRecord> = registry
            .values()
            .filter_map(|entry| {
                let state = entry.lock();
                state.stream.map(|stream| HeadRecord::Head {
                    epoch: stream.epoch,
                    head: stream.next - 1,
                    topic: entry.name.to_string(),
                })
            })
            .collect();
        drop(registry);
        // What was found becomes durable now (a previous process may have
        // died before its last flush reached the disk), and the journal
        // starts over from it.
        self.store.flush(&heads, true)?;
        self.retired().clear();
        self.store.mark_durable(self.store.written());
        Ok(())
    }

    fn registry_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<TopicName, Arc<Topic>>> {
        self.registry
            .read()
            .expect("no code panics while holding the registry lock")
    }

    fn registry_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<TopicName, Arc<Topic>>> {
        self.registry
            .write()
            .expect("no code panics while holding the registry lock")
    }

    fn wildcards_read(&self) -> std::sync::RwLockReadGuard<'_, WildcardIndex> {
        self.wildcards
            .read()
            .expect("no code panics while holding the wildcard lock")
    }

    fn wildcards_write(&self) -> std::sync::RwLockWriteGuard<'_, WildcardIndex> {
        self.wildcards
            .write()
            .expect("no code panics while holding the wildcard lock")
    }

    fn dirty(&self) -> MutexGuard<'_, Vec<Arc<Topic>>> {
        self.dirty
            .lock()
            .expect("no code panics while holding the dirty list")
    }

    fn unreleased(&self) -> MutexGuard<'_, Vec<Arc<Topic>>> {
        self.unreleased
            .lock()
            .expect("no code panics while holding the unreleased list")
    }

    fn retired(&self) -> MutexGuard<'_, Vec<u64>> {
        self.retired
            .lock()
            .expect("no code panics while holding the retired list")
    }

    fn trim_queue(&self) -> MutexGuard<'_, Vec<Arc<Topic>>> {
        self.trim_queue
            .lock()
            .expect("no code panics while holding the trim queue")
    }

    fn age_schedule(&self) -> MutexGuard<'_, BTreeMap<(u64, u64), Arc<Topic>>> {
        self.age_schedule
            .lock()
            .expect("no code panics while holding the age schedule")
    }

    fn retention_for(&self, topic: &TopicName) -> Option<Arc<RetentionRule>> {
        self.rules
            .iter()
            .find(|(pattern, _)| pattern.matches(topic))
            .map(|(_, rule)| rule)
            .filter(|rule| rule.store)
            .cloned()
    }

    /// Records that `epoch` no longer exists, for the journal.
    fn retire(&self, epoch: u64) {
        self.retired().push(epoch);
    }

    fn delete_stream_later(&self, epoch: u64) {
        let store = Arc::clone(&self.store);
        self.tasks.spawn_blocking(move || {
            if let Err(err) = store.delete_stream(epoch) {
                tracing::warn!(cause = %err, "deleting a reset stream failed; retried at next start");
            }
        });
    }

    /// True if `topic`'s history is (or would be) stored.
    pub fn is_stored(&self, topic: &TopicName) -> bool {
        match self.registry_read().get(topic) {
            Some(entry) => entry.is_stored(),
            None => self.retention_for(topic).is_some(),
        }
    }

    /// The topic's entry, created if it is stored (or if `create_ephemeral`).
    fn entry(
        &self,
        topic: &TopicName,
        create_ephemeral: bool,
    ) -> Result<Option<Arc<Topic>>, WriteError> {
        if let Some(entry) = self.registry_read().get(topic) {
            return Ok(Some(Arc::clone(entry)));
        }
        let retention = self.retention_for(topic);
        if retention.is_none() && !create_ephemeral {
            return Ok(None);
        }
        let mut registry = self.registry_write();
        if let Some(entry) = registry.get(topic) {
            return Ok(Some(Arc::clone(entry)));
        }
        let stream = match retention {
            Some(_) => {
                if self.store.is_failing() {
                    return Err(WriteError::Store(StoreError::Failing));
                }
                if self.stored_topics.load(Ordering::Relaxed) >= self.max_topics {
                    return Err(WriteError::TooManyTopics {
                        max: self.max_topics,
                    });
                }
                let stream = self.store.create_stream(topic.as_str())?;
                self.stored_topics.fetch_add(1, Ordering::Relaxed);
                Some(stream)
            }
            None => None,
        };
        let entry = Arc::new(Topic {
            name: topic.clone(),
            retention,
            state: Mutex::new(TopicState {
                stream,
                ..TopicState::default()
            }),
        });
        registry.insert(topic.clone(), Arc::clone(&entry));
        Ok(Some(entry))
    }

    /// Publishes `payload` to `topic`: stores it (if the topic is stored)
    /// and delivers one shared frame to every matching subscriber (at once,
    /// or once it is durable: see the module docs).
    pub(crate) fn publish(
        self: &Arc<Self>,
        topic: &TopicName,
        payload: &Payload,
        publisher: &str,
    ) -> Result<Published, WriteError> {
        let accepted = Instant::now();
        let timestamp_ms = now_ms();
        let Some(entry) = self.entry(topic, false)? else {
            // Ephemeral and no exact subscriber: only wildcards can match.
            self.count_published(payload);
            let frame = encode_delivery(topic.as_str(), 0, 0, timestamp_ms, publisher, payload)
                .seal(&self.compression);
            let delivered = self.deliver_to_wildcards(topic, &frame);
            self.count_deliveries(delivered, accepted);
            return Ok(Published {
                epoch: 0,
                offset: 0,
                write: None,
            });
        };
        let mut state = entry.lock();
        let Some(mut stream) = state.stream else {
            self.count_published(payload);
            state.published += 1;
            state.last_publish_ms = timestamp_ms;
            state.rate.record(timestamp_ms);
            let frame = encode_delivery(topic.as_str(), 0, 0, timestamp_ms, publisher, payload)
                .seal(&self.compression);
            self.fan_out(&entry, &mut state, &frame, 0, 0, accepted);
            return Ok(Published {
                epoch: 0,
                offset: 0,
                write: None,
            });
        };
        if self.store.is_failing() {
            return Err(WriteError::Store(StoreError::Failing));
        }
        let unflushed = self.store.unflushed_bytes();
        if unflushed > self.max_unflushed_bytes {
            return Err(WriteError::StoreBehind { bytes: unflushed });
        }
        let offset = stream.next;
        if self.durability == Durability::Interval {
            self.reserve(&entry.name, &mut stream)?;
        }
        let body = encode_delivery(
            topic.as_str(),
            stream.epoch,
            offset,
            timestamp_ms,
            publisher,
            payload,
        );
        let body_bytes = body.body();
        let write = self
            .store
            .append(stream.epoch, offset, timestamp_ms, body_bytes)?;
        self.count_published(payload);
        stream.next += 1;
        stream.bytes += body_bytes.len() as u64;
        if stream.oldest_ms == 0 {
            stream.oldest_ms = timestamp_ms;
        }
        state.published += 1;
        state.last_publish_ms = timestamp_ms;
        state.rate.record(timestamp_ms);
        if !state.dirty {
            state.dirty = true;
            self.dirty().push(Arc::clone(&entry));
        }
        if let Some(rule) = &entry.retention {
            if state.age_key.is_none() {
                let key = self.age_key_for(stream.oldest_ms, rule);
                state.age_key = Some(key);
                self.age_schedule().insert(key, Arc::clone(&entry));
            }
            if !state.trim_queued
                && (stream.next - stream.first > rule.max_messages
                    || stream.bytes > rule.max_bytes.as_u64())
            {
                state.trim_queued = true;
                self.trim_queue().push(Arc::clone(&entry));
            }
        }
        let frame = body.seal(&self.compression);
        match self.durability {
            Durability::Interval => {
                stream.visible = stream.next;
                state.stream = Some(stream);
                self.fan_out(&entry, &mut state, &frame, stream.epoch, offset, accepted);
            }
            Durability::Fsync => {
                state.stream = Some(stream);
                if state.pending.is_empty() {
                    self.unreleased().push(Arc::clone(&entry));
                }
                state.pending.push_back(PendingMessage {
                    write,
                    offset,
                    frame,
                    accepted,
                });
                // Delivery waits for this flush: ask for it now.
                self.store.request_flush();
            }
        }
        drop(state);
        Ok(Published {
            epoch: stream.epoch,
            offset,
            write: Some(write),
        })
    }

    fn count_published(&self, payload: &Payload) {
        Stats::add(&self.stats.messages_in, 1);
        Stats::add(&self.stats.bytes_in, payload.len() as u64);
    }

    /// Makes sure offset `stream.next` is covered by a durable reservation
    /// (interval mode), writing the next reservation ahead of time. Called
    /// with the topic locked.
    fn reserve(&self, topic: &TopicName, stream: &mut StreamState) -> Result<(), StoreError> {
        let offset = stream.next;
        let reservation = &mut stream.reservation;
        if reservation.written_through > reservation.safe_through
            && self.store.is_durable(reservation.written_seq)
        {
            reservation.safe_through = reservation.written_through;
        }
        if reservation.written_through < offset + RESERVATION / 2 {
            let mut ahead = *stream;
            ahead.reservation.written_through = offset + RESERVATION;
            let seq = self.store.write_record(topic.as_str(), &ahead)?;
            stream.reservation.written_through = ahead.reservation.written_through;
            stream.reservation.written_seq = seq;
            self.store.request_flush();
        }
        if offset > stream.reservation.safe_through {
            // The flusher has not made the next reservation durable in
            // time (more than RESERVATION / 2 publishes to this topic in one
            // flush): flush here rather than risk reusing offsets.
            let target = self.store.written();
            self.store.flush(&[], false)?;
            self.store.mark_durable(target);
            stream.reservation.safe_through = stream.reservation.written_through;
        }
        Ok(())
    }

    /// Delivers `frame` (message `offset`) to every live subscriber of the
    /// topic and every matching wildcard subscriber. Called with the topic
    /// locked.
    fn fan_out(
        self: &Arc<Self>,
        entry: &Arc<Topic>,
        state: &mut TopicState,
        frame: &Bytes,
        epoch: u64,
        offset: u64,
        accepted: Instant,
    ) {
        let mut delivered = 0;
        let mut index = 0;
        while index < state.live.len() {
            match state.live[index].outbox.offer(frame.clone()) {
                Offer::Queued => {
                    delivered += 1;
                    index += 1;
                }
                Offer::Closed => {
                    state.live.swap_remove(index);
                }
                Offer::Full => {
                    let subscriber = state.live.swap_remove(index);
                    self.handle_slow_subscriber(entry, state, subscriber, epoch, offset);
                }
            }
        }
        delivered += self.deliver_to_wildcards(&entry.name, frame);
        self.count_deliveries(delivered, accepted);
    }

    /// Releases the pending messages that writes up to `through` made
    /// durable: delivers them live, in offset order.
    pub(crate) fn release(self: &Arc<Self>, through: u64) {
        let topics = std::mem::take(&mut *self.unreleased());
        let mut still_pending = Vec::new();
        for entry in topics {
            let mut state = entry.lock();
            while state
                .pending
                .front()
                .is_some_and(|next| next.write <= through)
            {
                let Some(message) = state.pending.pop_front() else {
                    break;
                };
                let Some(mut stream) = state.stream else {
                    break;
                };
                stream.visible = message.offset + 1;
                state.stream = Some(stream);
                self.fan_out(
                    &entry,
                    &mut state,
                    &message.frame,
                    stream.epoch,
                    message.offset,
                    message.accepted,
                );
            }
            if !state.pending.is_empty() {
                drop(state);
                still_pending.push(entry);
            }
        }
        if !still_pending.is_empty() {
            self.unreleased().extend(still_pending);
        }
    }

    fn count_deliveries(&self, delivered: u64, accepted: Instant) {
        if delivered > 0 {
            Stats::add(&self.stats.deliveries, delivered);
            self.stats.fanout_latency.observe(accepted.elapsed());
        }
    }

    fn deliver_to_wildcards(&self, topic: &TopicName, frame: &Bytes) -> u64 {
        let wildcards = self.wildcards_read();
        if wildcards.len() == 0 {
            return 0;
        }
        let mut delivered = 0;
        wildcards.for_each_match(topic, |peer| {
            // A connection already closing gets nothing more: it stays in
            // the index until its session ends, and offering to it would
            // only find its queue full again.
            if peer.is_closing() {
                return;
            }
            match peer.offer(frame.clone()) {
                Offer::Queued => delivered += 1,
                Offer::Closed => {}
                Offer::Full => {
                    if peer.close(
                        CloseCode::SlowConsumer,
                        "outbound queue full on a wildcard subscription",
                    ) {
                        Stats::add(&self.stats.slow_consumer_disconnects, 1);
                    }
                }
            }
        });
        delivered
    }

    /// Applies the slow-consumer policy to a live subscriber whose queue was
    /// full when message `offset` was offered. Called with the topic locked.
    fn handle_slow_subscriber(
        self: &Arc<Self>,
        entry: &Arc<Topic>,
        state: &mut TopicState,
        subscriber: Subscriber,
        epoch: u64,
        offset: u64,
    ) {
        if self.policy == SlowConsumerPolicy::CatchUp && state.stream.is_some() {
            Stats::add(&self.stats.slow_consumer_catch_ups, 1);
            tracing::debug!(conn = %subscriber.peer.id, topic = %entry.name, offset, "slow consumer catches up from the store");
            self.start_replay(
                entry,
                state,
                subscriber,
                ReplayStart {
                    epoch,
                    cursor: offset,
                    send_reset: false,
                },
            );
        } else {
            // Counted once per connection, though it may hold several
            // subscriptions that each find its queue full.
            if subscriber
                .peer
                .close(CloseCode::SlowConsumer, "outbound queue full")
            {
                Stats::add(&self.stats.slow_consumer_disconnects, 1);
            }
        }
    }

    /// Moves `subscriber` (not in the live set) to a replay from `start`,
    /// counted in the topic's `replaying` until the replay goes live or
    /// stops. Called with the topic locked.
    fn start_replay(
        self: &Arc<Self>,
        entry: &Arc<Topic>,
        state: &mut TopicState,
        subscriber: Subscriber,
        start: ReplayStart,
    ) {
        state.replaying += 1;
        replay::spawn(Arc::clone(self), Arc::clone(entry), subscriber, start);
    }

    /// Subscribes `peer` to an exact topic, from `position`.
    pub(crate) fn subscribe_exact(
        self: &Arc<Self>,
        topic: &TopicName,
        subscriber: Subscriber,
        position: Option<Position>,
    ) -> Result<sockeye_protocol::Subscribed, SubscribeError> {
        if position.is_some() && !self.is_stored(topic) {
            return Err(SubscribeError::PositionUnsupported);
        }
        loop {
            let entry = self
                .entry(topic, true)?
                .expect("entry() creates the topic when asked to");
            let mut state = entry.lock();
            if state.removed {
                continue;
            }
            let Some(stream) = state.stream else {
                if position.is_some() {
                    return Err(SubscribeError::PositionUnsupported);
                }
                state.live.push(subscriber);
                return Ok(reply(topic, false, 0, 0, 0, true, None, false));
            };
            let plan = plan_start(&stream, &state.holes, position);
            if plan.start >= stream.visible {
                state.live.push(subscriber);
            } else {
                self.start_replay(
                    &entry,
                    &mut state,
                    subscriber,
                    ReplayStart {
                        epoch: stream.epoch,
                        cursor: plan.start,
                        send_reset: false,
                    },
                );
            }
            return Ok(reply(
                topic,
                true,
                stream.epoch,
                stream.visible - 1,
                plan.start,
                plan.complete,
                plan.gap,
                plan.epoch_changed,
            ));
        }
    }

    /// Removes `peer`'s subscription to an exact topic.
    pub(crate) fn unsubscribe_exact(&self, topic: &TopicName, peer: ConnId) {
        let Some(entry) = self.registry_read().get(topic).cloned() else {
            return;
        };
        let now_empty = {
            let mut state = entry.lock();
            state.live.retain(|subscriber| subscriber.peer.id != peer);
            state.stream.is_none() && state.live.is_empty() && state.replaying == 0
        };
        if now_empty {
            let mut registry = self.registry_write();
            let mut state = entry.lock();
            if state.live.is_empty() && state.replaying == 0 && !state.removed {
                state.removed = true;
                registry.remove(topic);
            }
        }
    }

    /// Adds a wildcard subscription, unless a broker-wide or per-subject cap
    /// is reached.
    pub(crate) fn subscribe_wildcard(
        &self,
        filter: &TopicFilter,
        peer: Arc<Peer>,
    ) -> Result<(), WildcardRefusal> {
        let stale = self.wildcards_write().insert(filter, peer)?;
        // The emptied match cache is freed here, after the write lock.
        drop(stale);
        Ok(())
    }

    /// Removes a wildcard subscription.
    pub(crate) fn unsubscribe_wildcard(&self, filter: &TopicFilter, peer: ConnId) {
        let stale = self.wildcards_write().remove(filter, peer);
        drop(stale);
    }

    /// The first offset a replay of `epoch` may not read yet (`None` if the
    /// topic's stream is gone or in another epoch).
    pub(crate) fn visible(&self, entry: &Topic, epoch: u64) -> Option<u64> {
        entry
            .lock()
            .stream
            .filter(|stream| stream.epoch == epoch)
            .map(|stream| stream.visible)
    }

    /// Called by a replay that read everything below `until` (a `visible`
    /// it saw earlier): registers the subscriber for live delivery if
    /// nothing was released since. Returns what the replay should do next.
    pub(crate) fn try_go_live(
        &self,
        entry: &Topic,
        subscriber: &Subscriber,
        epoch: u64,
        cursor: u64,
        until: u64,
    ) -> GoLive {
        let mut state = entry.lock();
        if subscriber.cancel.is_cancelled() || subscriber.peer.is_closing() {
            state.replaying -= 1;
            return GoLive::Stop;
        }
        let Some(stream) = state.stream else {
            state.replaying -= 1;
            return GoLive::Stop;
        };
        if stream.epoch != epoch {
            return GoLive::Reset {
                epoch: stream.epoch,
            };
        }
        if cursor < stream.first {
            return GoLive::Gap {
                range: OffsetRange {
                    from: cursor,
                    to: stream.first - 1,
                },
            };
        }
        if cursor < until {
            // Offsets the read should have found are not stored: a hole
            // (lost in a crash, interval mode) at the end of the stream.
            return GoLive::Gap {
                range: OffsetRange {
                    from: cursor,
                    to: until - 1,
                },
            };
        }
        if cursor >= stream.visible {
            state.replaying -= 1;
            state.live.push(subscriber.clone());
            return GoLive::Live;
        }
        GoLive::ReadMore
    }

    /// Ends a replay that stopped on its own (connection gone, store error).
    pub(crate) fn replay_ended(&self, entry: &Topic) {
        let mut state = entry.lock();
        state.replaying = state.replaying.saturating_sub(1);
    }

    /// A snapshot of one topic.
    pub fn info(&self, topic: &str) -> Option<TopicInfo> {
        let name = TopicName::parse(topic, usize::MAX).ok()?;
        let entry = self.registry_read().get(&name).cloned()?;
        Some(topic_info(&entry, now_ms()))
    }

    /// Topics in name order, starting after `after`, whose names start with
    /// `prefix`; at most `limit`.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<TopicInfo> {
        let mut entries: Vec<Arc<Topic>> = self
            .registry_read()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with(prefix))
            .filter(|(name, _)| after.is_none_or(|after| name.as_str() > after))
            .map(|(_, entry)| Arc::clone(entry))
            .collect();
        entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        entries.truncate(limit);
        let now = now_ms();
        entries.iter().map(|entry| topic_info(entry, now)).collect()
    }

    /// Number of topics with state.
    pub fn len(&self) -> usize {
        self.registry_read().len()
    }

    /// True when no topic has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of stored topics.
    pub fn stored_len(&self) -> usize {
        self.stored_topics.load(Ordering::Relaxed)
    }

    /// Stored messages of `topic` from offset `from` in offset order,
    /// decoded, with the epoch they belong to: at most `limit`, and past the
    /// first at most `max_bytes` of stored records (each message's encoded
    /// delivery frame plus its timestamp). `None` if the topic has no stored
    /// stream. Blocking (store I/O); a record that does not decode is
    /// [`StoreError::Corrupt`].
    pub fn history(
        &self,
        topic: &str,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<(u64, Vec<Delivery>)>, StoreError> {
        let Some(name) = TopicName::parse(topic, usize::MAX).ok() else {
            return Ok(None);
        };
        let Some(entry) = self.registry_read().get(&name).cloned() else {
            return Ok(None);
        };
        let Some(stream) = entry.lock().stream else {
            return Ok(None);
        };
        let mut out = Vec::new();
        let batch = self
            .store
            .read(stream.epoch, from, stream.visible, limit, max_bytes)?;
        for message in batch.messages {
            let body = Bytes::copy_from_slice(message.body());
            match ServerMessage::decode(&body) {
                Ok(ServerMessage::Message(delivery)) => out.push(delivery),
                _ => {
                    return Err(StoreError::Corrupt {
                        what: format!("message {} of {topic}", message.offset),
                    });
                }
            }
        }
        Ok(Some((stream.epoch, out)))
    }

    /// Deletes a topic's history and starts a new epoch. Live subscribers
    /// get a `reset` frame and continue in the new epoch. Returns the new
    /// epoch, or `None` if the topic has no stored stream.
    pub fn reset(self: &Arc<Self>, topic: &str) -> Result<Option<u64>, StoreError> {
        let Some(name) = TopicName::parse(topic, usize::MAX).ok() else {
            return Ok(None);
        };
        let Some(entry) = self.registry_read().get(&name).cloned() else {
            return Ok(None);
        };
        let mut state = entry.lock();
        let Some(old) = state.stream else {
            return Ok(None);
        };
        if self.store.is_failing() {
            return Err(StoreError::Failing);
        }
        let fresh = self.store.create_stream(name.as_str())?;
        self.restart_stream(&entry, &mut state, fresh);
        drop(state);
        self.retire(old.epoch);
        self.delete_stream_later(old.epoch);
        Ok(Some(fresh.epoch))
    }

    /// Replaces a topic's stream with `fresh` (a reset, or damage found
    /// after a reopen): pending messages of the old epoch are dropped and
    /// every live subscriber continues through a replay, which sends the
    /// `reset` frame in order with its other deliveries. Called with the
    /// topic locked.
    fn restart_stream(
        self: &Arc<Self>,
        entry: &Arc<Topic>,
        state: &mut TopicState,
        fresh: StreamState,
    ) {
        state.stream = Some(fresh);
        state.pending.clear();
        state.holes.clear();
        for subscriber in std::mem::take(&mut state.live) {
            self.start_replay(
                entry,
                state,
                subscriber,
                ReplayStart {
                    epoch: fresh.epoch,
                    cursor: fresh.first,
                    send_reset: true,
                },
            );
        }
    }

    /// Wildcard subscriptions held, for stats.
    pub fn wildcard_subscriptions(&self) -> usize {
        self.wildcards_read().len()
    }
}

/// What a replay that reached the end of the store should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GoLive {
    /// Registered for live delivery; the replay is done.
    Live,
    /// More was released since the last read; read again.
    ReadMore,
    /// Offsets from the cursor are gone (trimmed, or lost); report the gap
    /// and skip it.
    Gap { range: OffsetRange },
    /// The stream was reset; report it and continue in `epoch`.
    Reset { epoch: u64 },
    /// The subscription ended.
    Stop,
}

fn topic_info(entry: &Topic, now: u64) -> TopicInfo {
    let state = entry.lock();
    let stream = state.stream;
    TopicInfo {
        name: entry.name.to_string(),
        stored: stream.is_some(),
        subscribers: state.live.len() + state.replaying,
        catching_up: state.replaying,
        epoch: stream.map_or(0, |s| s.epoch),
        first_offset: stream.map_or(0, |s| if s.first < s.visible { s.first } else { 0 }),
        last_offset: stream.map_or(0, |s| s.visible - 1),
        stored_messages: stream.map_or(0, |s| s.visible.saturating_sub(s.first)),
        stored_bytes: stream.map_or(0, |s| s.bytes),
        published: state.published,
        last_publish_ms: state.last_publish_ms,
        publish_rate: state.rate.per_second(now),
    }
}

/// Encodes the body of a `message` frame, straight from borrowed parts.
pub(crate) fn encode_delivery(
    topic: &str,
    epoch: u64,
    offset: u64,
    timestamp_ms: u64,
    publisher: &str,
    payload: &Payload,
) -> FrameBuf {
    let mut frame = FrameBuf::with_capacity(payload.len() + topic.len() + publisher.len() + 64);
    DeliveryRef {
        topic,
        epoch,
        offset,
        timestamp_ms,
        publisher,
        payload,
    }
    .encode_body(frame.body_mut());
    frame
}

struct StartPlan {
    start: u64,
    complete: bool,
    gap: Option<OffsetRange>,
    epoch_changed: bool,
}

/// Where a subscription with `position` starts in `stream` (section 7.2 of
/// docs/protocol.md). A replay over a hole (offsets lost in a crash in
/// interval mode) is never `complete`.
fn plan_start(
    stream: &StreamState,
    holes: &[OffsetRange],
    position: Option<Position>,
) -> StartPlan {
    let mut plan = plan_in_retention(stream, position);
    if plan.complete
        && holes
            .iter()
            .any(|hole| hole.to >= plan.start && hole.from < stream.visible)
    {
        plan.complete = false;
    }
    plan
}

fn plan_in_retention(stream: &StreamState, position: Option<Position>) -> StartPlan {
    let head = stream.visible - 1;
    let plain = |start| StartPlan {
        start,
        complete: true,
        gap: None,
        epoch_changed: false,
    };
    match position {
        None => plain(stream.visible),
        Some(Position::Oldest) => plain(stream.first),
        Some(Position::Last { count }) => {
            let start = stream.visible.saturating_sub(count).max(stream.first);
            StartPlan {
                start,
                complete: stream.visible - stream.first >= count,
                gap: None,
                epoch_changed: false,
            }
        }
        Some(Position::After { epoch, .. }) if epoch != stream.epoch => StartPlan {
            start: stream.first,
            complete: false,
            gap: None,
            epoch_changed: true,
        },
        Some(Position::After { offset, .. }) => {
            let wanted = offset.min(head) + 1;
            if wanted < stream.first {
                StartPlan {
                    start: stream.first,
                    complete: false,
                    gap: Some(OffsetRange {
                        from: wanted,
                        to: stream.first - 1,
                    }),
                    epoch_changed: false,
                }
            } else {
                plain(wanted)
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn reply(
    topic: &TopicName,
    stored: bool,
    epoch: u64,
    last_offset: u64,
    next_offset: u64,
    complete: bool,
    gap: Option<OffsetRange>,
    epoch_changed: bool,
) -> sockeye_protocol::Subscribed {
    sockeye_protocol::Subscribed {
        id: 0,
        topic: topic.to_string(),
        stored,
        epoch,
        last_offset,
        next_offset,
        complete,
        gap,
        epoch_changed,
    }
}

impl Topics {
    /// Total subscriptions counted by the stats.
    pub fn subscriptions(&self) -> u64 {
        self.stats.subscriptions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Reservation;

    fn stream(first: u64, next: u64) -> StreamState {
        StreamState {
            epoch: 7,
            first,
            next,
            visible: next,
            bytes: 0,
            created_ms: 0,
            oldest_ms: 0,
            reservation: Reservation::default(),
        }
    }

    fn plan(first: u64, next: u64, position: Position) -> StartPlan {
        plan_start(&stream(first, next), &[], Some(position))
    }

    #[test]
    fn after_position_inside_retention_is_complete() {
        let plan = plan(
            1,
            11,
            Position::After {
                epoch: 7,
                offset: 4,
            },
        );
        assert_eq!((plan.start, plan.complete, plan.gap), (5, true, None));
    }

    #[test]
    fn after_position_before_retention_reports_the_gap() {
        let plan = plan(
            6,
            11,
            Position::After {
                epoch: 7,
                offset: 2,
            },
        );
        assert_eq!(plan.start, 6);
        assert!(!plan.complete);
        assert_eq!(plan.gap, Some(OffsetRange { from: 3, to: 5 }));
    }

    #[test]
    fn after_position_past_the_head_replays_nothing() {
        let plan = plan(
            1,
            11,
            Position::After {
                epoch: 7,
                offset: 99,
            },
        );
        assert_eq!((plan.start, plan.complete), (11, true));
    }

    #[test]
    fn other_epoch_restarts_from_the_oldest() {
        let plan = plan(
            3,
            11,
            Position::After {
                epoch: 8,
                offset: 5,
            },
        );
        assert_eq!(
            (plan.start, plan.epoch_changed, plan.complete),
            (3, true, false)
        );
    }

    #[test]
    fn last_n_is_clamped_to_what_is_retained() {
        let plan_two = plan(8, 11, Position::Last { count: 2 });
        assert_eq!((plan_two.start, plan_two.complete), (9, true));
        let plan_five = plan(8, 11, Position::Last { count: 5 });
        assert_eq!((plan_five.start, plan_five.complete), (8, false));
    }

    #[test]
    fn a_resume_across_a_hole_is_not_complete() {
        let holes = [OffsetRange { from: 5, to: 7 }];
        let resume = |offset| {
            plan_start(
                &stream(1, 11),
                &holes,
                Some(Position::After { epoch: 7, offset }),
            )
        };
        assert!(!resume(2).complete, "the replay crosses offsets 5..=7");
        assert!(resume(7).complete, "the replay starts after the hole");
    }

    #[test]
    fn only_released_offsets_are_planned() {
        let mut pending = stream(1, 11);
        pending.visible = 8;
        let plan = plan_start(&pending, &[], Some(Position::Oldest));
        assert_eq!(plan.start, 1);
        let live = plan_start(&pending, &[], None);
        assert_eq!(
            live.start, 8,
            "a live subscriber starts at the first unreleased offset"
        );
    }

    #[test]
    fn rate_window_reports_the_last_complete_second() {
        let mut rate = RateWindow::default();
        for ms in [1000, 1100, 1200] {
            rate.record(ms);
        }
        rate.record(2000);
        assert_eq!(rate.per_second(2500), 3);
        assert_eq!(rate.per_second(3500), 1);
        assert_eq!(rate.per_second(9000), 0);
    }
}
