//! The sled engine: one node's stored topics, their offsets and history in
//! sled, when a stored message becomes visible, retention, and recovery
//! from a failed disk.
//!
//! # Locks
//!
//! The registry map (`SledEngine::registry`), then one topic's state
//! (`Topic::state`), then (while delivering) the hub's locks. The work lists
//! (`dirty`, `unreleased`, `retired`, `trim_queue`, `age_schedule`) are
//! leaves: taken last, held for a push or a swap. The store's own locks
//! (sled handles, journal) and `watched_ephemeral` are leaves too.
//!
//! # Visibility
//!
//! A publish to a stored topic assigns its offset and appends it to the
//! store under the topic's lock. In `fsync` mode it is not delivered yet: it
//! waits in the topic's `pending` queue until a flush has made it durable,
//! and the flusher then *releases* it (hands it to the hub, in offset order,
//! under the same lock) before any acknowledgement of that flush goes out.
//! So a live subscriber never sees a message that a crash can take back,
//! and an acknowledged offset is always readable. In `interval` mode the
//! message is released at once, and reservations (see `store`) keep a crash
//! from handing its offset to another message. `StreamState::visible` is the
//! first offset not yet released: reads never look at or past it.

mod flusher;
pub(crate) mod heads;
pub(crate) mod store;
mod trimmer;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use sockeye_protocol::{Compression, OffsetRange, Payload, StreamPosition, TopicName};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{
    Ack, Published, ReadBatch, RetentionRules, StoreHealth, StoredTopicInfo, StreamBounds,
    WriteError,
};
use crate::config::{Config, DamagePolicy, Durability, RetentionRule};
use crate::hub::{Accepted, Hub, RateWindow};
use crate::stats::Stats;
use crate::{TopicMap, TopicSet};
use heads::HeadRecord;
use store::{Damage, RESERVATION, Store, StoreError, StreamState, now_ms};

/// A stored topic.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) name: TopicName,
    /// Shared by every topic the rule matches, so an idle topic costs a
    /// pointer, not a copy of its rule.
    retention: Arc<RetentionRule>,
    state: Mutex<TopicState>,
}

#[derive(Debug)]
pub(crate) struct TopicState {
    pub(crate) stream: StreamState,
    published: u64,
    last_publish_ms: u64,
    rate: RateWindow,
    /// Stored but not yet released (fsync mode), in offset order.
    pending: VecDeque<PendingMessage>,
    /// Offsets handed out and then lost (interval mode), oldest first.
    holes: Vec<OffsetRange>,
    /// Set while the topic is in `SledEngine::dirty`.
    dirty: bool,
    /// Set while the topic is in `SledEngine::trim_queue`.
    trim_queued: bool,
    /// The topic's entry in `SledEngine::age_schedule`, if any.
    age_key: Option<(u64, u64)>,
}

impl TopicState {
    fn new(stream: StreamState, holes: Vec<OffsetRange>) -> Self {
        Self {
            stream,
            published: 0,
            last_publish_ms: 0,
            rate: RateWindow::default(),
            pending: VecDeque::new(),
            holes,
            dirty: false,
            trim_queued: false,
            age_key: None,
        }
    }
}

/// A stored message waiting for the flush that makes it durable.
#[derive(Debug)]
struct PendingMessage {
    write: u64,
    offset: u64,
    frame: Bytes,
    accepted: Accepted,
}

impl Topic {
    pub(crate) fn lock(&self) -> MutexGuard<'_, TopicState> {
        self.state
            .lock()
            .expect("no code panics while holding a topic lock")
    }
}

/// One node's stored topics on sled.
#[derive(Debug)]
pub(crate) struct SledEngine {
    registry: RwLock<TopicMap<Arc<Topic>>>,
    /// Ephemeral topics that have local subscribers (between the hub's
    /// `watch` and `unwatch`), so that a publish to one skips matching the
    /// retention rules, which costs more than the rest of an ephemeral
    /// publish's engine work. At most one entry per topic of the hub.
    watched_ephemeral: RwLock<TopicSet>,
    pub(crate) store: Arc<Store>,
    hub: Arc<Hub>,
    rules: RetentionRules,
    compression: Compression,
    durability: Durability,
    max_topics: usize,
    max_unflushed_bytes: u64,
    /// Stored topics in the registry, for `store.max_topics`.
    stored_topics: AtomicUsize,
    stats: Arc<Stats>,
    tasks: TaskTracker,
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

impl SledEngine {
    /// Opens the store in `config.server.data_dir` (or a temporary one),
    /// loads it, and applies the damage policy.
    pub(crate) fn open(
        config: &Config,
        store: Store,
        hub: Arc<Hub>,
        stats: Arc<Stats>,
        tasks: TaskTracker,
    ) -> Result<Self, StoreError> {
        let rules = RetentionRules::from_config(config);
        let engine = Self {
            registry: RwLock::new(TopicMap::default()),
            watched_ephemeral: RwLock::new(TopicSet::default()),
            store: Arc::new(store),
            hub,
            rules,
            compression: config.compression(),
            durability: config.store.durability,
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
        engine.load(config.store.on_damage)?;
        Ok(engine)
    }

    /// Starts the flusher and the trimmer.
    pub(crate) fn spawn_tasks(
        self: &Arc<Self>,
        config: &Config,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        tasks.spawn(flusher::run_flusher(Arc::clone(self), shutdown.clone()));
        tasks.spawn(trimmer::run_trimmer(
            Arc::clone(self),
            config.store.trim_interval,
            shutdown.clone(),
        ));
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
            let mut state = TopicState::new(stream, holes);
            if stream.oldest_ms > 0 {
                state.age_key = Some(self.age_key_for(stream.oldest_ms, &retention));
            }
            let over_limit = stream.visible - stream.first > retention.max_messages
                || stream.bytes > retention.max_bytes.as_u64();
            state.trim_queued = over_limit;
            let age_key = state.age_key;
            let entry = Arc::new(Topic {
                name: topic.clone(),
                retention,
                state: Mutex::new(state),
            });
            if let Some(key) = age_key {
                self.age_schedule().insert(key, Arc::clone(&entry));
            }
            if over_limit {
                self.trim_queue().push(Arc::clone(&entry));
            }
            registry.insert(topic, entry);
            self.stored_topics.fetch_add(1, Ordering::Relaxed);
        }
        // Damaged epochs are gone from the journal's point of view.
        for damage in &report.damaged {
            self.retire(damage.epoch);
        }
        let heads: Vec<HeadRecord> = registry
            .values()
            .map(|entry| {
                let stream = entry.lock().stream;
                HeadRecord::Head {
                    epoch: stream.epoch,
                    head: stream.next - 1,
                    topic: entry.name.to_string(),
                }
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

    fn registry_read(&self) -> std::sync::RwLockReadGuard<'_, TopicMap<Arc<Topic>>> {
        self.registry
            .read()
            .expect("no code panics while holding the registry lock")
    }

    fn registry_write(&self) -> std::sync::RwLockWriteGuard<'_, TopicMap<Arc<Topic>>> {
        self.registry
            .write()
            .expect("no code panics while holding the registry lock")
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
        self.rules.stored_rule(topic)
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

    fn watched_ephemeral_read(&self) -> std::sync::RwLockReadGuard<'_, TopicSet> {
        self.watched_ephemeral
            .read()
            .expect("no code panics while holding the watched set")
    }

    fn watched_ephemeral_write(&self) -> std::sync::RwLockWriteGuard<'_, TopicSet> {
        self.watched_ephemeral
            .write()
            .expect("no code panics while holding the watched set")
    }

    /// The hub has local subscribers to `topic` from now on: remember it
    /// if it is ephemeral (rules do not change while the broker runs).
    pub(crate) fn watch(&self, topic: &TopicName) {
        // The set's lock is a leaf: nothing else is locked while it is held.
        if self.retention_for(topic).is_none() {
            self.watched_ephemeral_write().insert(topic.clone());
        }
    }

    /// The hub has no local subscriber to `topic` any more.
    pub(crate) fn unwatch(&self, topic: &TopicName) {
        if self.watched_ephemeral_read().contains(topic) {
            self.watched_ephemeral_write().remove(topic);
        }
    }

    /// True if `topic`'s history is (or would be) stored.
    pub(crate) fn is_stored(&self, topic: &TopicName) -> bool {
        self.registry_read().contains_key(topic) || self.retention_for(topic).is_some()
    }

    /// The topic's entry, created if a rule stores it and `create`; `None`
    /// for ephemeral topics.
    fn entry(&self, topic: &TopicName, create: bool) -> Result<Option<Arc<Topic>>, WriteError> {
        if let Some(entry) = self.registry_read().get(topic) {
            return Ok(Some(Arc::clone(entry)));
        }
        if self.watched_ephemeral_read().contains(topic) {
            return Ok(None);
        }
        let Some(retention) = self.retention_for(topic) else {
            return Ok(None);
        };
        if !create {
            return Ok(None);
        }
        let mut registry = self.registry_write();
        if let Some(entry) = registry.get(topic) {
            return Ok(Some(Arc::clone(entry)));
        }
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
        let entry = Arc::new(Topic {
            name: topic.clone(),
            retention,
            state: Mutex::new(TopicState::new(stream, Vec::new())),
        });
        registry.insert(topic.clone(), Arc::clone(&entry));
        Ok(Some(entry))
    }

    /// Publishes `payload` to `topic`: stores it if the topic is stored and
    /// hands it to the hub (at once, or once it is durable: see the module
    /// docs).
    pub(crate) fn publish(
        &self,
        topic: &TopicName,
        payload: &Payload,
        publisher: &str,
    ) -> Result<Published, WriteError> {
        let accepted = Accepted::now();
        let timestamp_ms = accepted.unix_ms;
        let Some(entry) = self.entry(topic, true)? else {
            count_published(&self.stats, payload);
            let frame =
                super::encode_delivery(topic.as_str(), 0, 0, timestamp_ms, publisher, payload)
                    .seal(&self.compression);
            self.hub.deliver(topic, None, &frame, accepted);
            return Ok(Published {
                position: None,
                ack: Ack::Now,
            });
        };
        let mut state = entry.lock();
        let mut stream = state.stream;
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
        let body = super::encode_delivery(
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
        count_published(&self.stats, payload);
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
        let rule = &entry.retention;
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
        let frame = body.seal(&self.compression);
        let position = StreamPosition {
            epoch: stream.epoch,
            offset,
        };
        let ack = match self.durability {
            Durability::Interval => {
                stream.visible = stream.next;
                state.stream = stream;
                self.hub.deliver(topic, Some(position), &frame, accepted);
                Ack::Now
            }
            Durability::Fsync => {
                state.stream = stream;
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
                Ack::Durable(write)
            }
        };
        drop(state);
        Ok(Published {
            position: Some(position),
            ack,
        })
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

    /// Releases the pending messages that writes up to `through` made
    /// durable: hands them to the hub, in offset order.
    fn release(&self, through: u64) {
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
                state.stream.visible = message.offset + 1;
                let position = StreamPosition {
                    epoch: state.stream.epoch,
                    offset: message.offset,
                };
                self.hub.deliver(
                    &entry.name,
                    Some(position),
                    &message.frame,
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

    /// Runs `plan` with the topic's bounds while no delivery to it can
    /// happen (its lock is held); `None` for an ephemeral topic. Creates the
    /// stored stream if a rule stores the topic and `create`.
    pub(crate) fn with_bounds<R>(
        &self,
        topic: &TopicName,
        create: bool,
        plan: impl FnOnce(Option<&StreamBounds<'_>>) -> R,
    ) -> Result<R, WriteError> {
        let Some(entry) = self.entry(topic, create)? else {
            return Ok(plan(None));
        };
        let state = entry.lock();
        let bounds = StreamBounds {
            epoch: state.stream.epoch,
            first: state.stream.first,
            next: state.stream.visible,
            holes: &state.holes,
        };
        Ok(plan(Some(&bounds)))
    }

    /// Reads messages of `topic`'s stream `epoch` with offsets in
    /// `from..until` (on a blocking thread).
    pub(crate) async fn read(
        &self,
        epoch: u64,
        from: u64,
        until: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, StoreError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.read(epoch, from, until, max, max_bytes))
            .await
            .map_err(|err| StoreError::Io {
                path: "(read task)".into(),
                source: std::io::Error::other(err.to_string()),
            })?
    }

    /// A stored topic's figures.
    pub(crate) fn info(&self, topic: &TopicName) -> Option<StoredTopicInfo> {
        let entry = self.registry_read().get(topic).cloned()?;
        Some(topic_info(&entry, now_ms()))
    }

    /// Stored topics in name order, after `after`, whose names start with
    /// `prefix`; at most `limit`.
    pub(crate) fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<StoredTopicInfo> {
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

    /// Number of stored topics.
    pub(crate) fn stored_len(&self) -> usize {
        self.stored_topics.load(Ordering::Relaxed)
    }

    /// Stored messages of `topic` from offset `from`, decoded, with their
    /// epoch: at most `limit`, and past the first at most `max_bytes`.
    /// `None` if the topic is not stored.
    pub(crate) async fn history(
        &self,
        topic: &TopicName,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<(u64, ReadBatch)>, StoreError> {
        let Some(entry) = self.registry_read().get(topic).cloned() else {
            return Ok(None);
        };
        let stream = entry.lock().stream;
        let batch = self
            .read(stream.epoch, from, stream.visible, limit, max_bytes)
            .await?;
        Ok(Some((stream.epoch, batch)))
    }

    /// Deletes a topic's history and starts a new epoch; the hub moves live
    /// subscribers on with a `reset`. Returns the new epoch, or `None` if
    /// the topic is not stored.
    pub(crate) fn reset(&self, topic: &TopicName) -> Result<Option<u64>, StoreError> {
        let Some(entry) = self.registry_read().get(topic).cloned() else {
            return Ok(None);
        };
        let mut state = entry.lock();
        if self.store.is_failing() {
            return Err(StoreError::Failing);
        }
        let old = state.stream;
        let fresh = self.store.create_stream(topic.as_str())?;
        self.restart_stream(&entry, &mut state, fresh);
        drop(state);
        self.retire(old.epoch);
        self.delete_stream_later(old.epoch);
        Ok(Some(fresh.epoch))
    }

    /// Replaces a topic's stream with `fresh` (a reset, or damage found
    /// after a reopen): pending messages of the old epoch are dropped, and
    /// the hub is told. Called with the topic locked.
    fn restart_stream(&self, entry: &Topic, state: &mut TopicState, fresh: StreamState) {
        state.stream = fresh;
        state.pending.clear();
        state.holes.clear();
        self.hub.stream_reset(&entry.name, fresh.epoch);
    }

    /// What the store's health and figures are now.
    pub(crate) fn health(&self) -> StoreHealth {
        let store = &self.store;
        StoreHealth {
            engine: "sled",
            failing: store.is_failing(),
            failure: store.failure(),
            size_on_disk: store.size_on_disk(),
            stored_topics: self.stored_len() as u64,
            flush_failures: Stats::get(&store.flush_failures),
            reopens: Stats::get(&store.reopens),
            damaged_topics: Stats::get(&store.damaged_topics),
            acknowledged_writes: store.acknowledged_through(),
            flush_latency: store.flush_latency.snapshot(),
            flush_batch: store.flush_batch.snapshot(),
        }
    }
}

fn count_published(stats: &Stats, payload: &Payload) {
    Stats::add(&stats.messages_in, 1);
    Stats::add(&stats.bytes_in, payload.len() as u64);
}

fn topic_info(entry: &Topic, now: u64) -> StoredTopicInfo {
    let state = entry.lock();
    let stream = state.stream;
    StoredTopicInfo {
        name: entry.name.to_string(),
        epoch: stream.epoch,
        first_offset: if stream.first < stream.visible {
            stream.first
        } else {
            0
        },
        last_offset: stream.visible - 1,
        stored_messages: stream.visible.saturating_sub(stream.first),
        stored_bytes: stream.bytes,
        published: state.published,
        last_publish_ms: state.last_publish_ms,
        publish_rate: state.rate.per_second(now),
    }
}
