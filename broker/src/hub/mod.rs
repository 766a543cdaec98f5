//! The hub: the engine-independent part of a node. It knows which local
//! connections subscribe to what (exact live sets, the wildcard index),
//! delivers what the engine hands it (fan-out, the slow-consumer policy),
//! plans subscriptions with positions, and runs replays (the `replay`
//! child module). It never touches storage except through the engine's
//! read.
//!
//! # The contract with the engine
//!
//! The engine hands each message of a stored topic to [`Hub::deliver`] in
//! offset order, only once the message is readable through
//! [`Engine::read`]. For each topic with local subscribers the hub keeps
//! `next`, the next offset it will deliver live. A delivery at `next` is
//! fanned out and `next` moves on; one below `next` is a duplicate and is
//! dropped; one above `next` means this node missed some, so every live
//! subscriber of the topic moves to a replay from `next` (the same catch-up
//! slow consumers use) and `next` jumps past the delivery. A delivery in
//! another epoch (a reset the hub was not told of) moves them to a replay
//! from the new epoch's start, with a `reset` frame.
//!
//! # Locks
//!
//! The engine calls into the hub holding its own lock of the topic (that
//! is how deliveries stay in order), so the order is: the engine's topic
//! lock, then the hub's registry, then one hub topic, then the wildcard
//! index (whose match cache has its own lock, right after it). The hub
//! never calls the engine while holding any of its own locks.

mod replay;
pub(crate) mod wildcard;

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, Weak};
use std::time::Instant;

use bytes::Bytes;
use sockeye_protocol::{
    CloseCode, Compression, FIRST_OFFSET, OffsetRange, Position, StreamPosition, TopicFilter,
    TopicName,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::TopicMap;
use crate::config::{Config, SlowConsumerPolicy};
use crate::engine::{Engine, StreamBounds, WriteError};
use crate::peer::{ConnId, Offer, Outbox, Peer};
use crate::stats::Stats;
use replay::ReplayStart;
use wildcard::{WildcardIndex, WildcardLimits, WildcardRefusal};

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

/// A topic with local exact subscribers (live or replaying).
#[derive(Debug)]
pub(crate) struct HubTopic {
    pub(crate) name: TopicName,
    state: Mutex<HubTopicState>,
}

#[derive(Debug, Default)]
struct HubTopicState {
    /// For a stored topic, its epoch and the next offset to deliver live;
    /// `None` for ephemeral topics.
    stream: Option<StreamPosition>,
    /// Subscribers receiving live deliveries.
    live: Vec<Subscriber>,
    /// Subscribers replaying; counted by their replays' guards.
    replaying: usize,
    /// Set when the topic left the registry; a subscribe that finds it set
    /// looks the topic up again.
    removed: bool,
    /// Ephemeral topics only: publishes seen while the topic had
    /// subscribers (stored topics are counted by the engine).
    published: u64,
    last_publish_ms: u64,
    rate: RateWindow,
}

/// Publishes per second, over the last complete second.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RateWindow {
    second: u64,
    this_second: u64,
    last_second: u64,
}

impl RateWindow {
    pub(crate) fn record(&mut self, now_ms: u64) {
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

    pub(crate) fn per_second(&self, now_ms: u64) -> u64 {
        match (now_ms / 1000).saturating_sub(self.second) {
            0 => self.last_second,
            1 => self.this_second,
            _ => 0,
        }
    }
}

impl HubTopic {
    fn lock(&self) -> MutexGuard<'_, HubTopicState> {
        self.state
            .lock()
            .expect("no code panics while holding a hub topic lock")
    }
}

/// What a subscription to an exact topic got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubscribeOutcome {
    /// Whether the topic's history is stored.
    pub(crate) stored: bool,
    /// The topic's epoch (0 if not stored).
    pub(crate) epoch: u64,
    /// The newest readable offset (0 if none or not stored).
    pub(crate) last_offset: u64,
    /// The first offset this subscription will receive.
    pub(crate) next_offset: u64,
    /// The position was honoured in full.
    pub(crate) complete: bool,
    /// Offsets that were asked for and are gone.
    pub(crate) gap: Option<OffsetRange>,
    /// The position named another epoch.
    pub(crate) epoch_changed: bool,
}

/// What a subscribe request asked for that cannot be given.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubscribeError {
    #[error("a position needs an exact topic whose history is stored")]
    PositionUnsupported,
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// A topic's local figures, for the admin API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LocalTopicInfo {
    pub(crate) subscribers: usize,
    pub(crate) catching_up: usize,
    /// Ephemeral topics only (stored ones are counted by the engine).
    pub(crate) published: u64,
    pub(crate) last_publish_ms: u64,
    pub(crate) publish_rate: u64,
}

/// When the broker accepted a publish, read once by the engine: the
/// monotonic instant for the fan-out latency histogram, the wall clock
/// (unix milliseconds) for an ephemeral topic's last publish and rate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accepted {
    /// For measuring the time to fan-out.
    pub(crate) at: Instant,
    /// The same moment as unix milliseconds.
    pub(crate) unix_ms: u64,
}

impl Accepted {
    /// Now.
    pub(crate) fn now() -> Self {
        Self {
            at: Instant::now(),
            unix_ms: crate::engine::now_ms(),
        }
    }
}

/// The hub of one node.
#[derive(Debug)]
pub(crate) struct Hub {
    registry: RwLock<TopicMap<Arc<HubTopic>>>,
    wildcards: RwLock<WildcardIndex>,
    /// Set once the engine exists (it holds the hub); replays read through
    /// it. Weak, so the two do not keep each other alive.
    engine: OnceLock<Weak<Engine>>,
    pub(crate) compression: Compression,
    policy: SlowConsumerPolicy,
    pub(crate) replay_batch: usize,
    pub(crate) replay_batch_bytes: usize,
    pub(crate) stats: Arc<Stats>,
    pub(crate) tasks: TaskTracker,
}

impl Hub {
    pub(crate) fn new(config: &Config, stats: Arc<Stats>, tasks: TaskTracker) -> Self {
        Self {
            registry: RwLock::new(TopicMap::default()),
            wildcards: RwLock::new(WildcardIndex::new(WildcardLimits::from_config(
                &config.limits,
            ))),
            engine: OnceLock::new(),
            compression: config.compression(),
            policy: config.limits.slow_consumer,
            replay_batch: config.store.replay_batch,
            replay_batch_bytes: usize::try_from(config.store.replay_batch_bytes.as_u64())
                .unwrap_or(usize::MAX),
            stats,
            tasks,
        }
    }

    /// Connects the hub to the engine that delivers to it.
    pub(crate) fn attach(&self, engine: &Arc<Engine>) {
        let _ = self.engine.set(Arc::downgrade(engine));
    }

    fn engine(&self) -> Option<Arc<Engine>> {
        self.engine.get().and_then(Weak::upgrade)
    }

    fn registry_read(&self) -> std::sync::RwLockReadGuard<'_, TopicMap<Arc<HubTopic>>> {
        self.registry
            .read()
            .expect("no code panics while holding the hub registry")
    }

    fn registry_write(&self) -> std::sync::RwLockWriteGuard<'_, TopicMap<Arc<HubTopic>>> {
        self.registry
            .write()
            .expect("no code panics while holding the hub registry")
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

    /// A message of `topic` from the engine: at `position` for a stored
    /// topic, `None` for an ephemeral one. See the module docs for the
    /// rules. `accepted` is when the broker accepted the publish.
    pub(crate) fn deliver(
        self: &Arc<Self>,
        topic: &TopicName,
        position: Option<StreamPosition>,
        frame: &Bytes,
        accepted: Accepted,
    ) {
        let entry = self.registry_read().get(topic).cloned();
        let mut delivered = 0;
        if let Some(entry) = entry {
            let mut state = entry.lock();
            match (position, state.stream) {
                (None, _) | (Some(_), None) => {
                    state.published += 1;
                    state.last_publish_ms = accepted.unix_ms;
                    state.rate.record(accepted.unix_ms);
                    delivered += self.fan_out(&entry, &mut state, frame, None);
                }
                (Some(position), Some(expected)) => {
                    if position.epoch != expected.epoch {
                        // The stream was replaced (a reset elsewhere): what
                        // is live continues from the new epoch's start.
                        self.restart_all(&entry, &mut state, position.epoch, true);
                        state.stream = Some(position.next());
                    } else if position.offset < expected.offset {
                        // Delivered already (or replayed): a duplicate.
                        return;
                    } else if position.offset > expected.offset {
                        // Missed some: catch up from the store, in order.
                        self.restart_at(&entry, &mut state, expected);
                        state.stream = Some(position.next());
                        Stats::add(&self.stats.repairs, 1);
                    } else {
                        state.stream = Some(position.next());
                        delivered += self.fan_out(&entry, &mut state, frame, Some(position));
                    }
                }
            }
        }
        delivered += self.deliver_to_wildcards(topic, frame);
        if delivered > 0 {
            Stats::add(&self.stats.deliveries, delivered);
            self.stats.fanout_latency.observe(accepted.at.elapsed());
        }
    }

    /// Offers `frame` to every live subscriber of the topic. Called with the
    /// topic locked.
    fn fan_out(
        self: &Arc<Self>,
        entry: &Arc<HubTopic>,
        state: &mut HubTopicState,
        frame: &Bytes,
        position: Option<StreamPosition>,
    ) -> u64 {
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
                    self.handle_slow_subscriber(entry, state, subscriber, position);
                }
            }
        }
        delivered
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
    /// full when the message at `position` was offered. Called with the
    /// topic locked.
    fn handle_slow_subscriber(
        self: &Arc<Self>,
        entry: &Arc<HubTopic>,
        state: &mut HubTopicState,
        subscriber: Subscriber,
        position: Option<StreamPosition>,
    ) {
        if let (SlowConsumerPolicy::CatchUp, Some(position)) = (self.policy, position) {
            Stats::add(&self.stats.slow_consumer_catch_ups, 1);
            tracing::debug!(conn = %subscriber.peer.id, topic = %entry.name, offset = position.offset, "slow consumer catches up from the store");
            self.start_replay(
                entry,
                state,
                subscriber,
                ReplayStart {
                    epoch: position.epoch,
                    cursor: position.offset,
                    send_reset: false,
                },
            );
        } else if subscriber
            .peer
            .close(CloseCode::SlowConsumer, "outbound queue full")
        {
            // Counted once per connection, though it may hold several
            // subscriptions that each find its queue full.
            Stats::add(&self.stats.slow_consumer_disconnects, 1);
        }
    }

    /// Moves `subscriber` (not in the live set) to a replay from `start`.
    /// Called with the topic locked.
    fn start_replay(
        self: &Arc<Self>,
        entry: &Arc<HubTopic>,
        state: &mut HubTopicState,
        subscriber: Subscriber,
        start: ReplayStart,
    ) {
        let Some(engine) = self.engine() else {
            // The broker is being torn down.
            subscriber
                .peer
                .close(CloseCode::GoingAway, "the broker is shutting down");
            return;
        };
        state.replaying += 1;
        let guard = replay::ReplayGuard::new(Arc::clone(entry));
        replay::spawn(Arc::clone(self), engine, guard, subscriber, start);
    }

    /// Moves every live subscriber to a replay from `from` (missed
    /// deliveries). Called with the topic locked.
    fn restart_at(
        self: &Arc<Self>,
        entry: &Arc<HubTopic>,
        state: &mut HubTopicState,
        from: StreamPosition,
    ) {
        for subscriber in std::mem::take(&mut state.live) {
            self.start_replay(
                entry,
                state,
                subscriber,
                ReplayStart {
                    epoch: from.epoch,
                    cursor: from.offset,
                    send_reset: false,
                },
            );
        }
    }

    /// Moves every live subscriber to a replay of `epoch` from its first
    /// offset, each sending `reset` first if `send_reset`. Called with the
    /// topic locked.
    fn restart_all(
        self: &Arc<Self>,
        entry: &Arc<HubTopic>,
        state: &mut HubTopicState,
        epoch: u64,
        send_reset: bool,
    ) {
        for subscriber in std::mem::take(&mut state.live) {
            self.start_replay(
                entry,
                state,
                subscriber,
                ReplayStart {
                    epoch,
                    cursor: FIRST_OFFSET,
                    send_reset,
                },
            );
        }
    }

    /// The engine replaced `topic`'s stream with a new, empty one in
    /// `epoch` (a reset, or damage found): live subscribers get `reset` and
    /// continue in it. Called by the engine holding its topic lock.
    pub(crate) fn stream_reset(self: &Arc<Self>, topic: &TopicName, epoch: u64) {
        let Some(entry) = self.registry_read().get(topic).cloned() else {
            return;
        };
        let mut state = entry.lock();
        if state.stream.is_some() {
            state.stream = Some(StreamPosition {
                epoch,
                offset: FIRST_OFFSET,
            });
            self.restart_all(&entry, &mut state, epoch, true);
        }
    }

    /// The topic's entry, created with `bounds` if it has none (or a
    /// removed one). Called while the engine keeps deliveries to the topic
    /// out (see [`Engine::with_bounds`]).
    fn entry(&self, topic: &TopicName, bounds: Option<&StreamBounds<'_>>) -> (Arc<HubTopic>, bool) {
        if let Some(entry) = self.registry_read().get(topic)
            && !entry.lock().removed
        {
            return (Arc::clone(entry), false);
        }
        let mut registry = self.registry_write();
        if let Some(entry) = registry.get(topic)
            && !entry.lock().removed
        {
            return (Arc::clone(entry), false);
        }
        let entry = Arc::new(HubTopic {
            name: topic.clone(),
            state: Mutex::new(HubTopicState {
                stream: bounds.map(|bounds| StreamPosition {
                    epoch: bounds.epoch,
                    offset: bounds.next,
                }),
                ..HubTopicState::default()
            }),
        });
        registry.insert(topic.clone(), Arc::clone(&entry));
        (entry, true)
    }

    /// Subscribes to an exact topic, from `position`, with an engine that
    /// can keep deliveries out while the hub plans (sled): live at once, or
    /// through a replay that then joins live delivery.
    pub(crate) fn subscribe_exact(
        self: &Arc<Self>,
        engine: &Engine,
        topic: &TopicName,
        subscriber: Subscriber,
        position: Option<Position>,
    ) -> Result<SubscribeOutcome, SubscribeError> {
        let stored = engine.is_stored(topic);
        if position.is_some() && !stored {
            return Err(SubscribeError::PositionUnsupported);
        }
        engine.with_bounds(topic, stored, |bounds| {
            self.subscribe_at(engine, topic, bounds, subscriber, position)
        })?
    }

    /// Registers `subscriber` for `topic` given the stream's `bounds`
    /// (`None`: ephemeral). Where the engine cannot keep deliveries out
    /// while this runs (a network engine), it calls [`Hub::repair`] with
    /// the head it reads afterwards, so a delivery missed in between is
    /// replayed.
    pub(crate) fn subscribe_at(
        self: &Arc<Self>,
        engine: &Engine,
        topic: &TopicName,
        bounds: Option<&StreamBounds<'_>>,
        subscriber: Subscriber,
        position: Option<Position>,
    ) -> Result<SubscribeOutcome, SubscribeError> {
        let (entry, created) = self.entry(topic, bounds);
        if created {
            // The engine routes the topic's deliveries here from now on.
            engine.watch(topic);
        }
        let mut state = entry.lock();
        let (Some(bounds), Some(mut head)) = (bounds, state.stream) else {
            if position.is_some() {
                return Err(SubscribeError::PositionUnsupported);
            }
            state.live.push(subscriber);
            return Ok(SubscribeOutcome {
                stored: false,
                epoch: 0,
                last_offset: 0,
                next_offset: 0,
                complete: true,
                gap: None,
                epoch_changed: false,
            });
        };
        if head.epoch != bounds.epoch {
            // The stream was replaced and no delivery said so yet.
            self.restart_all(&entry, &mut state, bounds.epoch, true);
            head = StreamPosition {
                epoch: bounds.epoch,
                offset: bounds.next,
            };
            state.stream = Some(head);
        }
        let plan = plan_start(bounds, head.offset, position);
        if plan.start >= head.offset {
            state.live.push(subscriber);
        } else {
            self.start_replay(
                &entry,
                &mut state,
                subscriber,
                ReplayStart {
                    epoch: head.epoch,
                    cursor: plan.start,
                    send_reset: false,
                },
            );
        }
        Ok(SubscribeOutcome {
            stored: true,
            epoch: head.epoch,
            last_offset: head.offset - 1,
            next_offset: plan.start,
            complete: plan.complete,
            gap: plan.gap,
            epoch_changed: plan.epoch_changed,
        })
    }

    /// The engine learned that `topic`'s stream holds everything through
    /// `head` (after a subscription, or after its delivery route was
    /// interrupted): anything the topic's live subscribers have not been
    /// given is replayed to them, in order. Returns whether a repair
    /// started.
    pub(crate) fn repair(self: &Arc<Self>, topic: &TopicName, head: StreamPosition) -> bool {
        let Some(entry) = self.registry_read().get(topic).cloned() else {
            return false;
        };
        let mut state = entry.lock();
        let Some(expected) = state.stream else {
            return false;
        };
        if head.epoch != expected.epoch {
            self.restart_all(&entry, &mut state, head.epoch, true);
        } else if head.offset >= expected.offset {
            self.restart_at(&entry, &mut state, expected);
        } else {
            return false;
        }
        state.stream = Some(head.next());
        Stats::add(&self.stats.repairs, 1);
        true
    }

    /// Topics with local subscribers, for an engine that has to repair
    /// every one of them after its delivery route was interrupted.
    pub(crate) fn stored_topics(&self) -> Vec<TopicName> {
        self.registry_read()
            .values()
            .filter(|entry| entry.lock().stream.is_some())
            .map(|entry| entry.name.clone())
            .collect()
    }

    /// Removes `peer`'s subscription to an exact topic.
    pub(crate) fn unsubscribe_exact(&self, topic: &TopicName, peer: ConnId) {
        let Some(entry) = self.registry_read().get(topic).cloned() else {
            return;
        };
        let now_empty = {
            let mut state = entry.lock();
            state.live.retain(|subscriber| subscriber.peer.id != peer);
            state.live.is_empty() && state.replaying == 0
        };
        if now_empty {
            self.remove_if_idle(&entry);
        }
    }

    /// Drops a topic without local subscribers from the registry.
    pub(crate) fn remove_if_idle(&self, entry: &Arc<HubTopic>) {
        let mut registry = self.registry_write();
        let mut state = entry.lock();
        if state.live.is_empty() && state.replaying == 0 && !state.removed {
            state.removed = true;
            if registry
                .get(&entry.name)
                .is_some_and(|current| Arc::ptr_eq(current, entry))
            {
                registry.remove(&entry.name);
            }
            drop(state);
            drop(registry);
            if let Some(engine) = self.engine() {
                engine.unwatch(&entry.name);
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
        let (stale, first) = {
            let mut wildcards = self.wildcards_write();
            let stale = wildcards.insert(filter, peer)?;
            (stale, wildcards.len() == 1)
        };
        // The emptied match cache is freed here, after the write lock.
        drop(stale);
        if first && let Some(engine) = self.engine() {
            engine.watch_wildcards(true);
        }
        Ok(())
    }

    /// Removes a wildcard subscription.
    pub(crate) fn unsubscribe_wildcard(&self, filter: &TopicFilter, peer: ConnId) {
        let (stale, none_left) = {
            let mut wildcards = self.wildcards_write();
            let stale = wildcards.remove(filter, peer);
            let none_left = stale.is_some() && wildcards.len() == 0;
            (stale, none_left)
        };
        drop(stale);
        if none_left && let Some(engine) = self.engine() {
            engine.watch_wildcards(false);
        }
    }

    /// The epoch and next live offset of a topic whose replay of `epoch`
    /// is reading: `None` if the topic moved to another epoch.
    pub(crate) fn head(&self, entry: &HubTopic, epoch: u64) -> Option<u64> {
        entry
            .lock()
            .stream
            .filter(|head| head.epoch == epoch)
            .map(|head| head.offset)
    }

    /// Local figures of a topic, if it has local subscribers.
    pub(crate) fn local_info(&self, topic: &TopicName) -> Option<LocalTopicInfo> {
        let entry = self.registry_read().get(topic).cloned()?;
        Some(local_info(&entry, crate::engine::now_ms()))
    }

    /// Ephemeral topics with local subscribers whose names start with
    /// `prefix`, after `after`, in name order; at most `limit`.
    pub(crate) fn list_ephemeral(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Vec<(String, LocalTopicInfo)> {
        let mut entries: Vec<Arc<HubTopic>> = self
            .registry_read()
            .iter()
            .filter(|(name, _)| name.as_str().starts_with(prefix))
            .filter(|(name, _)| after.is_none_or(|after| name.as_str() > after))
            .map(|(_, entry)| Arc::clone(entry))
            .filter(|entry| entry.lock().stream.is_none())
            .collect();
        entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        entries.truncate(limit);
        let now = crate::engine::now_ms();
        entries
            .iter()
            .map(|entry| (entry.name.to_string(), local_info(entry, now)))
            .collect()
    }

    /// Topics with local subscribers that are not stored.
    pub(crate) fn ephemeral_len(&self) -> usize {
        self.registry_read()
            .values()
            .filter(|entry| entry.lock().stream.is_none())
            .count()
    }

    /// Wildcard subscriptions held.
    pub(crate) fn wildcard_subscriptions(&self) -> usize {
        self.wildcards_read().len()
    }
}

fn local_info(entry: &HubTopic, now: u64) -> LocalTopicInfo {
    let state = entry.lock();
    LocalTopicInfo {
        subscribers: state.live.len() + state.replaying,
        catching_up: state.replaying,
        published: state.published,
        last_publish_ms: state.last_publish_ms,
        publish_rate: state.rate.per_second(now),
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StartPlan {
    start: u64,
    complete: bool,
    gap: Option<OffsetRange>,
    epoch_changed: bool,
}

/// Where a subscription with `position` starts in a stream whose next live
/// offset is `next` (section 7.2 of docs/protocol.md). A replay over a hole
/// (offsets lost in a crash in interval mode) is never `complete`.
fn plan_start(bounds: &StreamBounds<'_>, next: u64, position: Option<Position>) -> StartPlan {
    let first = bounds.first.min(next);
    let mut plan = plan_in_retention(bounds.epoch, first, next, position);
    if plan.complete
        && bounds
            .holes
            .iter()
            .any(|hole| hole.to >= plan.start && hole.from < next)
    {
        plan.complete = false;
    }
    plan
}

fn plan_in_retention(epoch: u64, first: u64, next: u64, position: Option<Position>) -> StartPlan {
    let head = next - 1;
    let plain = |start| StartPlan {
        start,
        complete: true,
        gap: None,
        epoch_changed: false,
    };
    match position {
        None => plain(next),
        Some(Position::Oldest) => plain(first),
        Some(Position::Last { count }) => {
            let start = next.saturating_sub(count).max(first);
            StartPlan {
                start,
                complete: next - first >= count,
                gap: None,
                epoch_changed: false,
            }
        }
        Some(Position::After { epoch: asked, .. }) if asked != epoch => StartPlan {
            start: first,
            complete: false,
            gap: None,
            epoch_changed: true,
        },
        Some(Position::After { offset, .. }) => {
            let wanted = offset.min(head) + 1;
            if wanted < first {
                StartPlan {
                    start: first,
                    complete: false,
                    gap: Some(OffsetRange {
                        from: wanted,
                        to: first - 1,
                    }),
                    epoch_changed: false,
                }
            } else {
                plain(wanted)
            }
        }
    }
}

#[cfg(test)]
mod tests;
