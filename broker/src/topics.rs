//! Topics: the registry, each topic's stored stream and live subscribers,
//! and fan-out.
//!
//! # Locks
//!
//! Three kinds, always taken in this order and never across an `.await`:
//! the registry map (`Topics::registry`), then one topic's state
//! (`Topic::state`), then the wildcard index (`Topics::wildcards`).
//!
//! A publish to a topic assigns its offset, appends it to the store and
//! queues it to every subscriber while holding that topic's state lock. That
//! makes "stored" and "delivered live" one atomic step per message, which is
//! what the replay seam relies on (see `replay.rs`), and keeps every
//! subscriber's deliveries in offset order even with concurrent publishers.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
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

use crate::config::{Config, RetentionRule, SlowConsumerPolicy};
use crate::peer::{ConnId, Offer, Peer};
use crate::replay::{self, ReplayStart};
use crate::stats::Stats;
use crate::store::{Store, StoreError, StreamState, TrimLimits, now_ms};
use crate::wildcard::WildcardIndex;

/// One subscription of one peer to one exact topic.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    /// The peer's outbound queue, held directly so that fan-out touches
    /// only the queue, not the rest of the peer.
    pub(crate) outbox: tokio::sync::mpsc::Sender<Bytes>,
    pub(crate) peer: Arc<Peer>,
    /// Cancelled when the subscription ends; stops its replay, if any.
    pub(crate) cancel: CancellationToken,
}

/// A topic with state: every stored topic, and ephemeral topics while they
/// have exact subscribers.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(crate) name: TopicName,
    retention: Option<RetentionRule>,
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

/// What a subscribe request asked for that cannot be given.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubscribeError {
    #[error("a position needs an exact topic whose history is stored")]
    PositionUnsupported,
    #[error(transparent)]
    Storage(#[from] StoreError),
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
    /// Newest offset (0 when none).
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
    rules: Vec<(TopicFilter, RetentionRule)>,
    pub(crate) compression: Compression,
    policy: SlowConsumerPolicy,
    pub(crate) replay_batch: usize,
    pub(crate) replay_batch_bytes: usize,
    pub(crate) stats: Arc<Stats>,
    pub(crate) tasks: TaskTracker,
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
                    .map(|pattern| (pattern, rule.clone()))
            })
            .collect();
        let topics = Self {
            registry: RwLock::new(HashMap::new()),
            wildcards: RwLock::new(WildcardIndex::default()),
            store,
            rules,
            compression: config.compression(),
            policy: config.limits.slow_consumer,
            replay_batch: config.store.replay_batch,
            replay_batch_bytes: usize::try_from(config.store.replay_batch_bytes.as_u64())
                .unwrap_or(usize::MAX),
            stats,
            tasks,
        };
        topics.load()?;
        Ok(topics)
    }

    /// Loads every stored topic. A topic whose retention rule no longer
    /// stores it keeps its history until an operator deletes it, but is
    /// served as ephemeral.
    fn load(&self) -> Result<(), StoreError> {
        let mut registry = self.registry_write();
        for (name, stream) in self.store.load_topics()? {
            let Ok(topic) = TopicName::parse(&name, usize::MAX) else {
                tracing::warn!(topic = %name, "ignoring a stored topic with an invalid name");
                continue;
            };
            let Some(retention) = self.retention_for(&topic) else {
                continue;
            };
            let state = TopicState {
                stream: Some(stream),
                ..TopicState::default()
            };
            registry.insert(
                topic.clone(),
                Arc::new(Topic {
                    name: topic,
                    retention: Some(retention),
                    state: Mutex::new(state),
                }),
            );
        }
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

    fn retention_for(&self, topic: &TopicName) -> Option<RetentionRule> {
        self.rules
            .iter()
            .find(|(pattern, _)| pattern.matches(topic))
            .map(|(_, rule)| rule)
            .filter(|rule| rule.store)
            .cloned()
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
    ) -> Result<Option<Arc<Topic>>, StoreError> {
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
            Some(_) => Some(self.store.create_stream(topic.as_str())?),
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
    /// and queues one shared frame to every matching subscriber.
    pub(crate) fn publish(
        self: &Arc<Self>,
        topic: &TopicName,
        payload: &Payload,
        publisher: &str,
    ) -> Result<Published, StoreError> {
        let accepted = Instant::now();
        let timestamp_ms = now_ms();
        Stats::add(&self.stats.messages_in, 1);
        Stats::add(&self.stats.bytes_in, payload.len() as u64);
        let Some(entry) = self.entry(topic, false)? else {
            // Ephemeral and no exact subscriber: only wildcards can match.
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
        let (epoch, offset) = match &state.stream {
            Some(stream) => (stream.epoch, stream.next),
            None => (0, 0),
        };
        let body = encode_delivery(
            topic.as_str(),
            epoch,
            offset,
            timestamp_ms,
            publisher,
            payload,
        );
        let write = match state.stream.as_mut() {
            Some(stream) => {
                let body_bytes = body.body();
                let write = self.store.append(epoch, offset, timestamp_ms, body_bytes)?;
                stream.next += 1;
                stream.bytes += body_bytes.len() as u64;
                Some(write)
            }
            None => None,
        };
        state.published += 1;
        state.last_publish_ms = timestamp_ms;
        state.rate.record(timestamp_ms);
        let frame = body.seal(&self.compression);
        let mut delivered = 0;
        let mut index = 0;
        while index < state.live.len() {
            match offer(&state.live[index].outbox, frame.clone()) {
                Offer::Queued => {
                    delivered += 1;
                    index += 1;
                }
                Offer::Closed => {
                    state.live.swap_remove(index);
                }
                Offer::Full => {
                    let subscriber = state.live.swap_remove(index);
                    self.handle_slow_subscriber(&entry, &mut state, subscriber, epoch, offset);
                }
            }
        }
        delivered += self.deliver_to_wildcards(topic, &frame);
        drop(state);
        self.count_deliveries(delivered, accepted);
        Ok(Published {
            epoch,
            offset,
            write,
        })
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
        wildcards.for_each_match(topic, |peer| match peer.offer(frame.clone()) {
            Offer::Queued => delivered += 1,
            Offer::Closed => {}
            Offer::Full => {
                Stats::add(&self.stats.slow_consumer_disconnects, 1);
                peer.close(
                    CloseCode::SlowConsumer,
                    "outbound queue full on a wildcard subscription",
                );
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
            Stats::add(&self.stats.slow_consumer_disconnects, 1);
            subscriber
                .peer
                .close(CloseCode::SlowConsumer, "outbound queue full");
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
            let plan = plan_start(&stream, position);
            if plan.start >= stream.next {
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
                stream.next - 1,
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

    /// Adds a wildcard subscription.
    pub(crate) fn subscribe_wildcard(&self, filter: &TopicFilter, peer: Arc<Peer>) {
        self.wildcards_write().insert(filter, peer);
    }

    /// Removes a wildcard subscription.
    pub(crate) fn unsubscribe_wildcard(&self, filter: &TopicFilter, peer: ConnId) {
        self.wildcards_write().remove(filter, peer);
    }

    /// Called by a replay when it has caught up: registers the subscriber
    /// for live delivery if nothing was published since it last read.
    /// Returns what the replay should do next.
    pub(crate) fn try_go_live(
        &self,
        entry: &Topic,
        subscriber: &Subscriber,
        epoch: u64,
        cursor: u64,
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
        if cursor >= stream.next {
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
        for message in self.store.read(stream.epoch, from, limit, max_bytes)? {
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
        let fresh = self.store.create_stream(name.as_str())?;
        state.stream = Some(fresh);
        // Every live subscriber continues through a replay, which sends the
        // `reset` frame in order with its other deliveries.
        for subscriber in std::mem::take(&mut state.live) {
            self.start_replay(
                &entry,
                &mut state,
                subscriber,
                ReplayStart {
                    epoch: fresh.epoch,
                    cursor: fresh.first,
                    send_reset: true,
                },
            );
        }
        drop(state);
        let store = Arc::clone(&self.store);
        self.tasks.spawn_blocking(move || {
            if let Err(err) = store.delete_stream(old.epoch) {
                tracing::warn!(cause = %err, "deleting a reset stream failed; retried at next start");
            }
        });
        Ok(Some(fresh.epoch))
    }

    /// One retention pass over every stored topic. Blocking (store I/O);
    /// never holds a topic lock during I/O.
    pub(crate) fn trim_all(&self) {
        let entries: Vec<Arc<Topic>> = self
            .registry_read()
            .values()
            .filter(|entry| entry.is_stored())
            .cloned()
            .collect();
        let now = now_ms();
        for entry in entries {
            let Some(rule) = &entry.retention else {
                continue;
            };
            let Some(stream) = entry.lock().stream else {
                continue;
            };
            if stream.next == stream.first {
                continue;
            }
            let limits = TrimLimits {
                max_messages: rule.max_messages,
                max_bytes: rule.max_bytes.as_u64(),
                oldest_ms: now.saturating_sub(rule.max_age.as_millis() as u64),
            };
            match self
                .store
                .trim(entry.name.as_str(), &stream, limits, 100_000)
            {
                Ok(Some((through, freed))) => {
                    let mut state = entry.lock();
                    if let Some(current) = state.stream.as_mut()
                        && current.epoch == stream.epoch
                    {
                        current.first = current.first.max(through + 1);
                        current.bytes = current.bytes.saturating_sub(freed);
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(topic = %entry.name, cause = %err, "trimming failed");
                }
            }
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
    /// More was published since the last read; read again.
    ReadMore,
    /// Offsets from the cursor were trimmed; report the gap and skip it.
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
        first_offset: stream.map_or(0, |s| if s.first < s.next { s.first } else { 0 }),
        last_offset: stream.map_or(0, |s| s.next - 1),
        stored_messages: stream.map_or(0, |s| s.next - s.first),
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

/// Offers a frame to a subscriber's queue without waiting.
fn offer(outbox: &tokio::sync::mpsc::Sender<Bytes>, frame: Bytes) -> Offer {
    use tokio::sync::mpsc::error::TrySendError;
    match outbox.try_send(frame) {
        Ok(()) => Offer::Queued,
        Err(TrySendError::Full(_)) => Offer::Full,
        Err(TrySendError::Closed(_)) => Offer::Closed,
    }
}

struct StartPlan {
    start: u64,
    complete: bool,
    gap: Option<OffsetRange>,
    epoch_changed: bool,
}

/// Where a subscription with `position` starts in `stream` (section 7.2 of
/// docs/protocol.md).
fn plan_start(stream: &StreamState, position: Option<Position>) -> StartPlan {
    let head = stream.next - 1;
    let plain = |start| StartPlan {
        start,
        complete: true,
        gap: None,
        epoch_changed: false,
    };
    match position {
        None => plain(stream.next),
        Some(Position::Oldest) => plain(stream.first),
        Some(Position::Last { count }) => {
            let start = stream.next.saturating_sub(count).max(stream.first);
            StartPlan {
                start,
                complete: stream.next - stream.first >= count,
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

    fn stream(first: u64, next: u64) -> StreamState {
        StreamState {
            epoch: 7,
            first,
            next,
            bytes: 0,
            created_ms: 0,
        }
    }

    #[test]
    fn after_position_inside_retention_is_complete() {
        let plan = plan_start(
            &stream(1, 11),
            Some(Position::After {
                epoch: 7,
                offset: 4,
            }),
        );
        assert_eq!((plan.start, plan.complete, plan.gap), (5, true, None));
    }

    #[test]
    fn after_position_before_retention_reports_the_gap() {
        let plan = plan_start(
            &stream(6, 11),
            Some(Position::After {
                epoch: 7,
                offset: 2,
            }),
        );
        assert_eq!(plan.start, 6);
        assert!(!plan.complete);
        assert_eq!(plan.gap, Some(OffsetRange { from: 3, to: 5 }));
    }

    #[test]
    fn after_position_past_the_head_replays_nothing() {
        let plan = plan_start(
            &stream(1, 11),
            Some(Position::After {
                epoch: 7,
                offset: 99,
            }),
        );
        assert_eq!((plan.start, plan.complete), (11, true));
    }

    #[test]
    fn other_epoch_restarts_from_the_oldest() {
        let plan = plan_start(
            &stream(3, 11),
            Some(Position::After {
                epoch: 8,
                offset: 5,
            }),
        );
        assert_eq!(
            (plan.start, plan.epoch_changed, plan.complete),
            (3, true, false)
        );
    }

    #[test]
    fn last_n_is_clamped_to_what_is_retained() {
        let plan = plan_start(&stream(8, 11), Some(Position::Last { count: 2 }));
        assert_eq!((plan.start, plan.complete), (9, true));
        let plan = plan_start(&stream(8, 11), Some(Position::Last { count: 5 }));
        assert_eq!((plan.start, plan.complete), (8, false));
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
