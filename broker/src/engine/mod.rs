//! The engine seam: where stored topics' offsets and history live. The hub
//! (`crate::hub`) knows local subscribers; an engine knows streams. Today
//! there is one engine, sled ([`sled`]), on one node; a second (a network
//! engine for clusters) is another variant of [`Engine`].
//!
//! # The contract
//!
//! An engine:
//!
//! - assigns each stored topic's offsets densely from
//!   [`FIRST_OFFSET`](sockeye_protocol::FIRST_OFFSET) within an epoch, and
//!   never gives an offset to two messages of one epoch;
//! - hands every published message to the hub ([`Hub::deliver`]) in offset
//!   order per topic, and only once the message is readable through
//!   [`Engine::read`] (for sled in `fsync` mode: once it is durable);
//! - tells the hub when it replaces a stream ([`Hub::stream_reset`]);
//! - runs [`Engine::with_bounds`]'s closure while no delivery to that topic
//!   can happen, so the hub can register a subscriber at an exact point;
//! - reports what an acknowledgement of a publish means ([`Ack`]);
//! - owns retention and durability;
//! - learns which topics have local subscribers through [`Engine::watch`]
//!   and [`Engine::unwatch`] (a network engine routes the topic's
//!   deliveries to this node; sled, where every delivery starts on this
//!   node, only remembers which watched topics are ephemeral, so their
//!   publishes skip matching the retention rules).
//!
//! The hub, in turn, treats a delivery ahead of the next offset it expects
//! as missed messages and replays them through [`Engine::read`] (see the
//! hub's module docs), so an engine whose deliveries can be lost (a network
//! one) only has to keep them in order and readable.
//!
//! # Adding an engine
//!
//! Add a variant to [`Engine`], implement the methods it dispatches
//! (`publish`, `with_bounds`, `read`, `history`, `reset`, `info`, `list`,
//! `health`, `ack_state`, ...), and choose it in [`Engine::open`] from the
//! configuration. Nothing outside this module changes.

#[cfg(test)]
pub(crate) mod memory;
pub(crate) mod redis;
pub(crate) mod sled;

use std::sync::Arc;

use sockeye_protocol::frame::FrameBuf;
use sockeye_protocol::{
    Delivery, DeliveryRef, OffsetRange, Payload, ServerMessage, StreamPosition, TopicName,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, EngineKind, RetentionRule};
use crate::hub::{Hub, SubscribeError, SubscribeOutcome, Subscriber};
use crate::stats::{HistogramSnapshot, Stats};

pub(crate) use self::redis::ControlMessage;
pub use self::redis::NodeInfo;
pub use self::sled::heads::JournalError;
pub(crate) use self::sled::store::{AckState, DurableMark, ReadBatch, Store, now_ms};
pub use self::sled::store::{Damage, DamageKind, StoreError};

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

/// What a subscription needs to know about a stored stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamBounds<'a> {
    /// The stream's epoch.
    pub(crate) epoch: u64,
    /// The oldest retained offset.
    pub(crate) first: u64,
    /// The next offset the hub will receive (everything below is readable).
    pub(crate) next: u64,
    /// Offsets lost after being handed out (interval mode).
    pub(crate) holes: &'a [OffsetRange],
}

/// When a publish counts as acknowledged.
#[derive(Debug)]
pub(crate) enum Ack {
    /// Now: an ephemeral topic, or a store that acknowledges writes at once
    /// (`interval` mode).
    Now,
    /// Once the durable mark passes this write sequence (`fsync` mode).
    Durable(u64),
    /// When a network engine answers: with the message's position
    /// (`None` for an ephemeral topic), or why it failed.
    Network(NetworkAck),
}

/// The answer a network engine will give to one publish.
#[derive(Debug)]
pub(crate) struct NetworkAck(
    pub(crate) tokio::sync::oneshot::Receiver<Result<Option<StreamPosition>, StoreError>>,
);

/// Where a publish went.
#[derive(Debug)]
pub(crate) struct Published {
    /// Its position, for stored topics.
    pub(crate) position: Option<StreamPosition>,
    /// When it counts as acknowledged.
    pub(crate) ack: Ack,
}

/// A stored topic's figures, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredTopicInfo {
    pub(crate) name: String,
    pub(crate) epoch: u64,
    pub(crate) first_offset: u64,
    pub(crate) last_offset: u64,
    pub(crate) stored_messages: u64,
    pub(crate) stored_bytes: u64,
    pub(crate) published: u64,
    pub(crate) last_publish_ms: u64,
    pub(crate) publish_rate: u64,
}

/// The history store's health and figures, for the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreHealth {
    /// `sled` or `redis`.
    pub engine: &'static str,
    /// True while the store fails and refuses writes to stored topics.
    pub failing: bool,
    /// What the current failure is, while failing.
    pub failure: Option<String>,
    /// Bytes the store occupies on disk.
    pub size_on_disk: u64,
    /// Topics whose history is stored.
    pub stored_topics: u64,
    /// Flushes that failed since start.
    pub flush_failures: u64,
    /// Times the store was reopened to recover from a failure (sled), or the
    /// PUB/SUB connection came back (redis).
    pub reopens: u64,
    /// Stored topics that lost acknowledged messages and got a new epoch.
    pub damaged_topics: u64,
    /// Writes acknowledged so far (the durable mark in `fsync` mode).
    pub acknowledged_writes: u64,
    /// Duration of each flush (sled), or of each pipelined batch of publish
    /// scripts (redis).
    pub flush_latency: HistogramSnapshot,
    /// Writes covered by each flush, or publishes per batch.
    pub flush_batch: HistogramSnapshot,
}

/// Where this node's stored topics live.
#[derive(Debug)]
pub(crate) enum Engine {
    /// sled on this node's disk.
    Sled(Arc<sled::SledEngine>),
    /// Redis, shared by the nodes of a cluster.
    Redis(Arc<redis::RedisEngine>),
    /// In memory, for the seam's own tests.
    #[cfg(test)]
    Memory(memory::MemoryEngine),
}

impl Engine {
    /// Opens the configured engine (sled in `config.server.data_dir`, or
    /// Redis), connects it to `hub`, and starts its tasks. Operators'
    /// requests for this node that arrive through the engine (a cluster's
    /// control channel) go to `control`.
    pub(crate) async fn open(
        config: &Config,
        hub: &Arc<Hub>,
        stats: Arc<Stats>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
        control: tokio::sync::mpsc::UnboundedSender<ControlMessage>,
    ) -> Result<Arc<Self>, StoreError> {
        let engine = match config.engine.kind {
            EngineKind::Sled => {
                let store = Store::open(&config.server.data_dir.join("store"), &config.store)?;
                let sled = Arc::new(sled::SledEngine::open(
                    config,
                    store,
                    Arc::clone(hub),
                    stats,
                    tasks.clone(),
                )?);
                sled.spawn_tasks(config, tasks, shutdown);
                Engine::Sled(sled)
            }
            EngineKind::Redis => Engine::Redis(
                redis::RedisEngine::open(config, Arc::clone(hub), tasks, shutdown, control).await?,
            ),
        };
        let engine = Arc::new(engine);
        hub.attach(&engine);
        Ok(engine)
    }

    /// Subscribes `subscriber` to the exact topic `topic` from `position`.
    pub(crate) async fn subscribe(
        &self,
        hub: &Arc<Hub>,
        topic: &TopicName,
        subscriber: Subscriber,
        position: Option<sockeye_protocol::Position>,
    ) -> Result<SubscribeOutcome, SubscribeError> {
        match self {
            Engine::Redis(engine) => engine.subscribe(self, topic, subscriber, position).await,
            _ => hub.subscribe_exact(self, topic, subscriber, position),
        }
    }

    /// True if `topic`'s history is (or would be) stored.
    pub(crate) fn is_stored(&self, topic: &TopicName) -> bool {
        match self {
            Engine::Sled(engine) => engine.is_stored(topic),
            Engine::Redis(engine) => engine.is_stored(topic),
            #[cfg(test)]
            Engine::Memory(engine) => engine.is_stored(topic),
        }
    }

    /// Publishes `payload` to `topic` (stored or not).
    pub(crate) fn publish(
        &self,
        topic: &TopicName,
        payload: &Payload,
        publisher: &str,
    ) -> Result<Published, WriteError> {
        match self {
            Engine::Sled(engine) => engine.publish(topic, payload, publisher),
            Engine::Redis(engine) => engine.publish(topic, payload, publisher),
            #[cfg(test)]
            Engine::Memory(engine) => engine.publish(topic, payload, publisher),
        }
    }

    /// Runs `plan` with the topic's bounds (`None`: ephemeral) while no
    /// delivery to the topic can happen; creates the stored stream first if
    /// a rule stores the topic and `create`.
    pub(crate) fn with_bounds<R>(
        &self,
        topic: &TopicName,
        create: bool,
        plan: impl FnOnce(Option<&StreamBounds<'_>>) -> R,
    ) -> Result<R, WriteError> {
        match self {
            Engine::Sled(engine) => engine.with_bounds(topic, create, plan),
            // Subscriptions go through `Engine::subscribe`, which reads the
            // bounds over the network and repairs afterwards.
            Engine::Redis(_) => Ok(plan(None)),
            #[cfg(test)]
            Engine::Memory(engine) => engine.with_bounds(topic, create, plan),
        }
    }

    /// Reads stored messages of `topic`'s stream `epoch` with offsets in
    /// `from..until`, in offset order: at most `max`, and past the first at
    /// most `max_bytes`. Missing offsets (trimmed, holes) are absent.
    pub(crate) async fn read(
        &self,
        topic: &TopicName,
        epoch: u64,
        from: u64,
        until: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, StoreError> {
        match self {
            Engine::Sled(engine) => {
                let _ = topic;
                engine.read(epoch, from, until, max, max_bytes).await
            }
            Engine::Redis(engine) => engine.read(topic, epoch, from, until, max, max_bytes).await,
            #[cfg(test)]
            Engine::Memory(engine) => engine.read(topic, epoch, from, until, max, max_bytes),
        }
    }

    /// Stored messages of `topic` from `from`, decoded, with their epoch.
    pub(crate) async fn history(
        &self,
        topic: &TopicName,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<(u64, Vec<Delivery>)>, StoreError> {
        let stored = match self {
            Engine::Sled(engine) => engine.history(topic, from, limit, max_bytes).await?,
            Engine::Redis(engine) => engine.history(topic, from, limit, max_bytes).await?,
            #[cfg(test)]
            Engine::Memory(_) => None,
        };
        let Some((epoch, batch)) = stored else {
            return Ok(None);
        };
        Ok(Some((epoch, decode_history(topic, batch)?)))
    }

    /// Deletes a topic's history and starts a new epoch; `None` if the
    /// topic is not stored.
    pub(crate) async fn reset(&self, topic: &TopicName) -> Result<Option<u64>, StoreError> {
        match self {
            Engine::Sled(engine) => {
                let engine = Arc::clone(engine);
                let topic = topic.clone();
                tokio::task::spawn_blocking(move || engine.reset(&topic))
                    .await
                    .map_err(|err| StoreError::Io {
                        path: "(reset task)".into(),
                        source: std::io::Error::other(err.to_string()),
                    })?
            }
            Engine::Redis(engine) => engine.reset(topic).await,
            #[cfg(test)]
            Engine::Memory(engine) => Ok(engine.reset(topic)),
        }
    }

    /// A stored topic's figures (cluster-wide for a network engine).
    pub(crate) async fn info(
        &self,
        topic: &TopicName,
    ) -> Result<Option<StoredTopicInfo>, StoreError> {
        match self {
            Engine::Sled(engine) => Ok(engine.info(topic)),
            Engine::Redis(engine) => engine.info(topic).await,
            #[cfg(test)]
            Engine::Memory(_) => Ok(None),
        }
    }

    /// Stored topics in name order, after `after`, starting with `prefix`.
    pub(crate) async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredTopicInfo>, StoreError> {
        match self {
            Engine::Sled(engine) => Ok(engine.list(prefix, after, limit)),
            Engine::Redis(engine) => engine.list(prefix, after, limit).await,
            #[cfg(test)]
            Engine::Memory(_) => Ok(Vec::new()),
        }
    }

    /// The cluster's live nodes (empty for a single-node engine).
    pub(crate) async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        match self {
            Engine::Redis(engine) => engine.nodes().await,
            _ => Ok(Vec::new()),
        }
    }

    /// This node's name in its cluster (`None` for a single-node engine).
    pub(crate) fn node_name(&self) -> Option<&str> {
        match self {
            Engine::Redis(engine) => Some(engine.node_name()),
            _ => None,
        }
    }

    /// Asks another node of the cluster to act (a network engine only).
    pub(crate) async fn send_control(&self, message: &ControlMessage) -> Result<(), StoreError> {
        match self {
            Engine::Redis(engine) => engine.send_control(message).await,
            _ => Err(StoreError::Unavailable {
                reason: "this broker is not part of a cluster".into(),
            }),
        }
    }

    /// Starts announcing this node (a network engine), once its WebSocket
    /// listener is bound.
    pub(crate) fn announce(
        &self,
        address: std::net::SocketAddr,
        connections: impl Fn() -> u64 + Send + 'static,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        if let Engine::Redis(engine) = self {
            engine.announce(address, connections, tasks, shutdown);
        }
    }

    /// The store's health and figures.
    pub(crate) fn health(&self) -> StoreHealth {
        match self {
            Engine::Sled(engine) => engine.health(),
            Engine::Redis(engine) => engine.health(),
            #[cfg(test)]
            Engine::Memory(_) => StoreHealth {
                engine: "memory",
                failing: false,
                failure: None,
                size_on_disk: 0,
                stored_topics: 0,
                flush_failures: 0,
                reopens: 0,
                damaged_topics: 0,
                acknowledged_writes: 0,
                flush_latency: crate::stats::Histogram::new(crate::stats::LATENCY_BOUNDS)
                    .snapshot(),
                flush_batch: crate::stats::Histogram::new(crate::stats::BATCH_BOUNDS).snapshot(),
            },
        }
    }

    /// True while the store fails (reads may fail; writes are refused).
    pub(crate) fn is_failing(&self) -> bool {
        match self {
            Engine::Sled(engine) => engine.store.is_failing(),
            Engine::Redis(engine) => engine.is_failing(),
            #[cfg(test)]
            Engine::Memory(engine) => engine.is_failing(),
        }
    }

    /// Whether `ack` holds now (a network acknowledgement is `Waiting`
    /// until its answer is taken with [`Engine::wait_ack`] or polled).
    pub(crate) fn ack_state(&self, ack: &Ack) -> AckState {
        match (self, ack) {
            (_, Ack::Now) => AckState::Acked,
            (Engine::Sled(engine), Ack::Durable(write)) => engine.store.ack_state(*write),
            (_, Ack::Network(_)) => AckState::Waiting,
            (_, Ack::Durable(_)) => AckState::Acked,
        }
    }

    /// The durable mark, for sessions that wait on acknowledgements.
    pub(crate) fn durable(&self) -> watch::Receiver<DurableMark> {
        match self {
            Engine::Sled(engine) => engine.store.durable(),
            Engine::Redis(engine) => engine.durable(),
            #[cfg(test)]
            Engine::Memory(engine) => engine.durable(),
        }
    }

    /// Asks for a flush soon (an acknowledgement waits).
    pub(crate) fn request_flush(&self) {
        if let Engine::Sled(engine) = self {
            engine.store.request_flush();
        }
    }

    /// Waits until `ack` is decided: `Ok(Some(position))` (or `Ok(None)`
    /// for an ephemeral topic... or a sled one, whose position the caller
    /// already has) when acknowledged, `Err(AckError::Failed)` if the write
    /// failed (`storage_failed`), `Err(AckError::ShutDown)` if the broker
    /// shut down before it could be told.
    pub(crate) async fn wait_ack(
        &self,
        ack: Ack,
        shutdown: &CancellationToken,
    ) -> Result<Option<StreamPosition>, AckError> {
        if let Ack::Network(NetworkAck(answer)) = ack {
            return tokio::select! {
                answer = answer => match answer {
                    Ok(Ok(position)) => Ok(position),
                    Ok(Err(_)) => Err(AckError::Failed),
                    Err(_) => Err(AckError::ShutDown),
                },
                () = shutdown.cancelled() => Err(AckError::ShutDown),
            };
        }
        let mut durable = self.durable();
        if matches!(ack, Ack::Durable(_)) {
            self.request_flush();
        }
        loop {
            match self.ack_state(&ack) {
                AckState::Acked => return Ok(None),
                AckState::Failed => return Err(AckError::Failed),
                AckState::Waiting => {}
            }
            // After shutdown the flusher is gone and the mark never moves
            // again: give up instead of waiting for ever.
            tokio::select! {
                changed = durable.changed() => changed.map_err(|_| AckError::ShutDown)?,
                () = shutdown.cancelled() => {
                    return match self.ack_state(&ack) {
                        AckState::Acked => Ok(None),
                        AckState::Failed => Err(AckError::Failed),
                        AckState::Waiting => Err(AckError::ShutDown),
                    };
                }
            }
        }
    }

    /// The hub has local subscribers to `topic` from now on.
    pub(crate) fn watch(&self, topic: &TopicName) {
        match self {
            Engine::Sled(engine) => engine.watch(topic),
            Engine::Redis(engine) => engine.watch(topic),
            #[cfg(test)]
            Engine::Memory(_) => {}
        }
    }

    /// The hub has no local subscriber to `topic` any more.
    pub(crate) fn unwatch(&self, topic: &TopicName) {
        match self {
            Engine::Sled(engine) => engine.unwatch(topic),
            Engine::Redis(engine) => engine.unwatch(topic),
            #[cfg(test)]
            Engine::Memory(_) => {}
        }
    }

    /// The hub has local wildcard subscriptions (`true`) or none any more.
    pub(crate) fn watch_wildcards(&self, on: bool) {
        if let Engine::Redis(engine) = self {
            engine.watch_every_topic(on);
        }
    }

    /// Waits until a wildcard subscription just added to the hub receives
    /// what other nodes publish (Redis); at once for local engines.
    pub(crate) async fn wildcards_ready(&self) -> Result<(), WriteError> {
        match self {
            Engine::Redis(engine) => engine.every_topic_confirmed().await,
            _ => Ok(()),
        }
    }
}

/// The configured retention rules, parsed once: the first rule whose pattern
/// matches a topic decides whether and how it is stored. Shared by every
/// engine, so all of them read the same configuration the same way.
#[derive(Debug)]
pub(crate) struct RetentionRules(Vec<(sockeye_protocol::TopicFilter, Arc<RetentionRule>)>);

impl RetentionRules {
    /// Parses `config.retention` (validated when the configuration loads).
    pub(crate) fn from_config(config: &Config) -> Self {
        Self(
            config
                .retention
                .iter()
                .filter_map(|rule| {
                    sockeye_protocol::TopicFilter::parse(&rule.pattern, usize::MAX)
                        .ok()
                        .map(|pattern| (pattern, Arc::new(rule.clone())))
                })
                .collect(),
        )
    }

    /// The rule of `topic` if it is stored; `None` if it is ephemeral.
    pub(crate) fn stored_rule(&self, topic: &TopicName) -> Option<Arc<RetentionRule>> {
        self.0
            .iter()
            .find(|(pattern, _)| pattern.matches(topic))
            .map(|(_, rule)| rule)
            .filter(|rule| rule.store)
            .cloned()
    }
}

/// Decodes the stored frames of a read batch into deliveries, for the
/// admin API's history: every engine stores a message as its encoded
/// `message` frame, so one that does not decode as one is damage.
fn decode_history(topic: &TopicName, batch: ReadBatch) -> Result<Vec<Delivery>, StoreError> {
    batch
        .messages
        .into_iter()
        .map(|message| {
            let body = bytes::Bytes::copy_from_slice(message.body());
            match ServerMessage::decode(&body) {
                Ok(ServerMessage::Message(delivery)) => Ok(delivery),
                _ => Err(StoreError::Corrupt {
                    what: format!("message {} of {topic}", message.offset),
                }),
            }
        })
        .collect()
}

/// Why an acknowledgement was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AckError {
    /// The write failed: answer `storage_failed`.
    #[error("the write failed")]
    Failed,
    /// The broker shut down first.
    #[error("the broker is shutting down")]
    ShutDown,
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
    let delivery = DeliveryRef {
        topic,
        epoch,
        offset,
        timestamp_ms,
        publisher,
        payload,
    };
    let mut frame = FrameBuf::with_capacity(delivery.encoded_len_bound());
    delivery.encode_body(frame.body_mut());
    frame
}
