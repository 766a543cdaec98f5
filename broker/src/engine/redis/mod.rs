//! The Redis engine: every node of a cluster keeps its stored topics'
//! epochs, offsets and history in one Redis, and hears of every publish
//! through Redis PUB/SUB (see docs/cluster.md).
//!
//! # Keys
//!
//! All hash-tagged by topic (`{topic}`), so a topic's keys share a slot and
//! the scripts run unchanged on Redis Cluster:
//!
//! - `<prefix>:{<topic>}:m`, a hash: `epoch`, `offset` (the last one given
//!   out), `first` (the oldest retained), `bytes` (retained body bytes);
//! - `<prefix>:{<topic>}:s`, a stream whose entry ids are `<offset>-0`,
//!   with fields `t` (accepted at, unix ms) and `b` (the `message` body);
//! - `<prefix>:{<topic>}:c`, the topic's PUB/SUB channel;
//! - `<prefix>:topics` (a set of topic names), `<prefix>:age` (a sorted set:
//!   when a topic's oldest message passes its `max_age`), `<prefix>:node:*`
//!   (one per live node, expiring), `<prefix>:control` (a channel).
//!
//! # Publish
//!
//! One Lua script per stored publish (`scripts/publish.lua`): set the
//! epoch once, take the next offset, write it into the body, `XADD`, trim
//! (bounded work), `PUBLISH` the envelope: all or nothing. Publishes go
//! through one task per node that pipelines them in batches, in the order
//! they were made, so a connection's publishes keep their order. A publish
//! is acknowledged only with the position the script returned; one whose
//! batch failed or timed out gets `storage_failed` (it may or may not have
//! been stored).
//!
//! # Delivery
//!
//! One PUB/SUB connection per node (`pubsub.rs`) subscribes a topic's
//! channel while the hub has local subscribers to it, plus one pattern for
//! every topic while any local wildcard subscription exists. The hub's
//! `next` turns a delivery that skips offsets into a replay (`XRANGE`
//! through `scripts/read.lua`); after the PUB/SUB connection is lost the
//! node reads every watched topic's head and repairs the same way.

mod publisher;
mod pubsub;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script, Value};
use sockeye_protocol::{Compression, FIRST_OFFSET, Payload, StreamPosition, TopicName};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::sled::store::StoredMessage;
use super::{
    Ack, DurableMark, NetworkAck, Published, ReadBatch, RetentionRules, StoreError, StoreHealth,
    StoredTopicInfo, StreamBounds, WriteError, now_ms,
};
use crate::config::{Config, RedisConfig, RetentionRule};
use crate::hub::{Hub, SubscribeError, SubscribeOutcome, Subscriber};
use crate::stats::{BATCH_BOUNDS, Histogram, LATENCY_BOUNDS, Stats};

/// Deletions one publish's trim may make (the periodic pass makes more).
const PUBLISH_TRIM_BUDGET: u64 = 8;
/// Deletions one periodic trim of a topic may make.
const PASS_TRIM_BUDGET: u64 = 1_000;
/// Topics one periodic trim pass visits.
const TRIM_PASS_TOPICS: isize = 100;
/// Largest epoch: epochs stay below 2^53, so JavaScript clients hold them.
const EPOCH_LIMIT: u64 = 1 << 53;
/// Publishes waiting for the publisher task; beyond, publishes are
/// refused (`storage_failed`) until Redis catches up.
const PUBLISH_QUEUE: usize = 65_536;

/// Key and channel names.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    fn meta(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:m", self.prefix)
    }

    fn stream(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:s", self.prefix)
    }

    fn channel(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:c", self.prefix)
    }

    /// The pattern matching every topic's channel.
    fn every_channel(&self) -> String {
        format!("{}:{{*}}:c", self.prefix)
    }

    /// The topic a channel name belongs to.
    fn topic_of<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?
            .strip_suffix("}:c")
    }

    /// The cluster's stored topics: a sorted set with every score 0, so
    /// that `ZRANGE ... BYLEX` pages through it in name order.
    fn topics(&self) -> String {
        format!("{}:topic-names", self.prefix)
    }

    fn age(&self) -> String {
        format!("{}:age", self.prefix)
    }

    fn node(&self, name: &str) -> String {
        format!("{}:node:{name}", self.prefix)
    }

    fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }
}

/// The scripts, loaded once (redis-rs sends EVALSHA and falls back to
/// loading on NOSCRIPT).
#[derive(Debug)]
struct Scripts {
    publish: Script,
    bounds: Script,
    read: Script,
    reset: Script,
    trim: Script,
}

impl Scripts {
    fn new() -> Self {
        let common = include_str!("scripts/common.lua");
        let script = |body: &str| Script::new(&format!("{common}\n{body}"));
        Self {
            publish: script(include_str!("scripts/publish.lua")),
            bounds: script(include_str!("scripts/bounds.lua")),
            read: script(include_str!("scripts/read.lua")),
            reset: script(include_str!("scripts/reset.lua")),
            trim: script(include_str!("scripts/trim.lua")),
        }
    }
}

/// An operator's request to another node, sent on the control channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ControlMessage {
    /// Always `disconnect` for now.
    pub(crate) op: String,
    /// The node that should act.
    pub(crate) node: String,
    /// Its connection id.
    pub(crate) connection: u64,
    /// Close code and reason.
    pub(crate) code: u16,
    pub(crate) reason: String,
}

/// What this node announces about itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// Its WebSocket listener.
    pub address: String,
    /// When it started, unix ms.
    pub started_ms: u64,
    /// When it last announced itself, unix ms.
    pub heartbeat_ms: u64,
    /// Its WebSocket connections at that time.
    pub connections: u64,
}

/// The engine's own figures.
#[derive(Debug)]
pub(crate) struct RedisMetrics {
    /// Duration of each pipelined publish batch.
    pub(crate) script_latency: Histogram,
    /// Publishes per batch.
    pub(crate) batch_size: Histogram,
    /// Commands (batches, reads) that failed or timed out.
    pub(crate) failures: AtomicU64,
    /// Times the PUB/SUB connection was re-established.
    pub(crate) pubsub_reconnects: AtomicU64,
}

/// Stored topics in Redis, shared by the cluster's nodes.
#[derive(Debug)]
pub(crate) struct RedisEngine {
    hub: Arc<Hub>,
    rules: RetentionRules,
    compression: Compression,
    keys: Keys,
    scripts: Scripts,
    commands: ConnectionManager,
    config: RedisConfig,
    /// This node's name (set once the listener is bound, when the
    /// configured one is empty).
    node_name: OnceLock<String>,
    started_ms: u64,
    publisher: mpsc::Sender<publisher::Request>,
    pubsub: mpsc::UnboundedSender<pubsub::Command>,
    /// Topics whose channel this node subscribes (kept for resubscribing).
    watched: Mutex<HashSet<TopicName>>,
    /// Whether the every-topic pattern is wanted (local wildcards exist).
    every_topic: AtomicBool,
    failing: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Stored topics in the cluster, refreshed by the heartbeat.
    stored_topics: AtomicU64,
    pub(crate) metrics: RedisMetrics,
    /// Requests from the control channel for this node.
    control: mpsc::UnboundedSender<ControlMessage>,
    durable: watch::Sender<DurableMark>,
}

fn unavailable(what: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        reason: what.to_string(),
    }
}

fn random_epoch() -> u64 {
    use rand::Rng;
    rand::rng().random_range(1..EPOCH_LIMIT)
}

fn random_id() -> [u8; 8] {
    rand::random()
}

impl RedisEngine {
    /// Connects to Redis (bounded by the connect timeout), loads the
    /// scripts, and starts the publisher, PUB/SUB and housekeeping tasks.
    pub(crate) async fn open(
        config: &Config,
        hub: Arc<Hub>,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
        control: mpsc::UnboundedSender<ControlMessage>,
    ) -> Result<Arc<Self>, StoreError> {
        let redis = config.engine.redis.clone();
        let client = redis::Client::open(redis.url.as_str()).map_err(unavailable)?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(redis.connect_timeout))
            .set_response_timeout(Some(redis.command_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let mut commands = tokio::time::timeout(
            redis.connect_timeout * 2,
            ConnectionManager::new_with_config(client.clone(), manager_config),
        )
        .await
        .map_err(|_| unavailable(format!("no connection to {} in time", redis.url)))?
        .map_err(|err| unavailable(format!("cannot connect to {}: {err}", redis.url)))?;
        let scripts = Scripts::new();
        for script in [
            &scripts.publish,
            &scripts.bounds,
            &scripts.read,
            &scripts.reset,
            &scripts.trim,
        ] {
            script
                .prepare_invoke()
                .load_async(&mut commands)
                .await
                .map_err(|err| unavailable(format!("cannot load a script: {err}")))?;
        }
        let rules = RetentionRules::from_config(config);
        let (publisher_tx, publisher_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (pubsub_tx, pubsub_rx) = mpsc::unbounded_channel();
        let node_name = OnceLock::new();
        if !redis.node_name.is_empty() {
            let _ = node_name.set(redis.node_name.clone());
        }
        let engine = Arc::new(Self {
            hub,
            rules,
            compression: config.compression(),
            keys: Keys {
                prefix: redis.key_prefix.clone(),
            },
            scripts,
            commands: commands.clone(),
            config: redis,
            node_name,
            started_ms: now_ms(),
            publisher: publisher_tx,
            pubsub: pubsub_tx,
            watched: Mutex::new(HashSet::new()),
            every_topic: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            failure: Mutex::new(None),
            stored_topics: AtomicU64::new(0),
            metrics: RedisMetrics {
                script_latency: Histogram::new(LATENCY_BOUNDS),
                batch_size: Histogram::new(BATCH_BOUNDS),
                failures: AtomicU64::new(0),
                pubsub_reconnects: AtomicU64::new(0),
            },
            control,
            durable: watch::Sender::new(DurableMark::default()),
        });
        tasks.spawn(publisher::run(
            Arc::clone(&engine),
            commands,
            publisher_rx,
            shutdown.clone(),
        ));
        tasks.spawn(pubsub::run(
            Arc::clone(&engine),
            client,
            pubsub_rx,
            shutdown.clone(),
        ));
        tasks.spawn(run_trimmer(
            Arc::clone(&engine),
            config.store.trim_interval,
            shutdown.clone(),
        ));
        Ok(engine)
    }

    fn retention_for(&self, topic: &TopicName) -> Option<Arc<RetentionRule>> {
        self.rules.stored_rule(topic)
    }

    pub(crate) fn is_stored(&self, topic: &TopicName) -> bool {
        self.retention_for(topic).is_some()
    }

    /// This node's name in the cluster.
    pub(crate) fn node_name(&self) -> &str {
        self.node_name.get().map_or("", String::as_str)
    }

    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    fn failed(&self, err: &StoreError) {
        Stats::add(&self.metrics.failures, 1);
        *self
            .failure
            .lock()
            .expect("no code panics holding the failure") = Some(err.to_string());
        if !self.failing.swap(true, Ordering::AcqRel) {
            tracing::error!(cause = %err, "Redis fails: publishes to stored topics get storage_failed until it answers again");
        }
    }

    fn worked(&self) {
        if self.failing.swap(false, Ordering::AcqRel) {
            *self
                .failure
                .lock()
                .expect("no code panics holding the failure") = None;
            tracing::info!("Redis answers again");
        }
    }

    /// Queues a publish for the publisher task; the result comes through
    /// the returned acknowledgement.
    pub(crate) fn publish(
        &self,
        topic: &TopicName,
        payload: &Payload,
        publisher: &str,
    ) -> Result<Published, WriteError> {
        let timestamp_ms = now_ms();
        let delivery = sockeye_protocol::DeliveryRef {
            topic: topic.as_str(),
            epoch: 0,
            offset: 0,
            timestamp_ms,
            publisher,
            payload,
        };
        let mut body = Vec::with_capacity(delivery.encoded_len_bound());
        let slots = delivery.encode_body_with_position_slots(&mut body);
        let (done, ack) = oneshot::channel();
        let request = publisher::Request {
            topic: topic.clone(),
            body,
            slots,
            timestamp_ms,
            retention: self.retention_for(topic),
            done,
        };
        self.publisher
            .try_send(request)
            .map_err(|_| WriteError::StoreBehind {
                bytes: PUBLISH_QUEUE as u64,
            })?;
        Stats::add(&self.hub.stats.messages_in, 1);
        Stats::add(&self.hub.stats.bytes_in, payload.len() as u64);
        Ok(Published {
            position: None,
            ack: Ack::Network(NetworkAck(ack)),
        })
    }

    /// Subscribes `subscriber` to an exact topic: the channel first, then
    /// the stream's bounds, then the hub; then the head once more, so a
    /// delivery that arrived in between is replayed.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        engine: &super::Engine,
        topic: &TopicName,
        subscriber: Subscriber,
        position: Option<sockeye_protocol::Position>,
    ) -> Result<SubscribeOutcome, SubscribeError> {
        let stored = self.is_stored(topic);
        if position.is_some() && !stored {
            return Err(SubscribeError::PositionUnsupported);
        }
        self.watch_and_wait(topic).await?;
        if !stored {
            return self
                .hub
                .subscribe_at(engine, topic, None, subscriber, position);
        }
        let (epoch, last, first) = self.bounds(topic).await?;
        let bounds = StreamBounds {
            epoch,
            first,
            next: last + 1,
            holes: &[],
        };
        let outcome = self
            .hub
            .subscribe_at(engine, topic, Some(&bounds), subscriber, position)?;
        let (epoch, last, _) = self.bounds(topic).await?;
        self.hub.repair(
            topic,
            StreamPosition {
                epoch,
                offset: last,
            },
        );
        Ok(outcome)
    }

    /// The stream's epoch, last offset and first retained offset, creating
    /// the epoch if the topic has none.
    async fn bounds(&self, topic: &TopicName) -> Result<(u64, u64, u64), WriteError> {
        let mut commands = self.commands.clone();
        let mut invocation = self.scripts.bounds.prepare_invoke();
        invocation
            .key(self.keys.meta(topic.as_str()))
            .arg(random_epoch());
        let call = invocation.invoke_async::<(u64, u64, u64, u64)>(&mut commands);
        let result = tokio::time::timeout(self.config.command_timeout, call)
            .await
            .map_err(|_| unavailable("Redis did not answer in time"))
            .and_then(|result| result.map_err(unavailable));
        match result {
            Ok((epoch, last, first, created)) => {
                self.worked();
                if created == 1 {
                    self.remember_topic(topic).await;
                }
                Ok((epoch, last, first.max(FIRST_OFFSET)))
            }
            Err(err) => {
                self.failed(&err);
                Err(WriteError::Store(err))
            }
        }
    }

    /// Adds a topic to the cluster's topic set (for the admin API).
    async fn remember_topic(&self, topic: &TopicName) {
        let mut commands = self.commands.clone();
        let added: redis::RedisResult<u64> =
            commands.zadd(self.keys.topics(), topic.as_str(), 0).await;
        if let Err(err) = added {
            tracing::warn!(topic = %topic, cause = %err, "could not list a new topic in Redis");
        }
    }

    /// Subscribes the topic's channel (if not yet) and waits until Redis
    /// confirmed it.
    async fn watch_and_wait(&self, topic: &TopicName) -> Result<(), WriteError> {
        let (done, confirmed) = oneshot::channel();
        self.watched
            .lock()
            .expect("no code panics holding the watched set")
            .insert(topic.clone());
        let _ = self.pubsub.send(pubsub::Command::Watch {
            topic: topic.clone(),
            done: Some(done),
        });
        match tokio::time::timeout(self.config.command_timeout, confirmed).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(err))) => Err(WriteError::Store(unavailable(err))),
            _ => Err(WriteError::Store(unavailable(
                "the PUB/SUB connection did not confirm the subscription in time",
            ))),
        }
    }

    pub(crate) fn watch(&self, topic: &TopicName) {
        let newly = self
            .watched
            .lock()
            .expect("no code panics holding the watched set")
            .insert(topic.clone());
        if newly {
            let _ = self.pubsub.send(pubsub::Command::Watch {
                topic: topic.clone(),
                done: None,
            });
        }
    }

    pub(crate) fn unwatch(&self, topic: &TopicName) {
        self.watched
            .lock()
            .expect("no code panics holding the watched set")
            .remove(topic);
        let _ = self.pubsub.send(pubsub::Command::Unwatch {
            topic: topic.clone(),
        });
    }

    pub(crate) fn watch_every_topic(&self, on: bool) {
        self.every_topic.store(on, Ordering::Release);
        let _ = self.pubsub.send(pubsub::Command::EveryTopic(on));
    }

    /// Waits until Redis confirmed the pattern of every topic's channel, so
    /// that a wildcard subscription's reply means what it means on one
    /// node: every message published after it reaches the subscriber.
    pub(crate) async fn every_topic_confirmed(&self) -> Result<(), WriteError> {
        let (done, confirmed) = oneshot::channel();
        let _ = self
            .pubsub
            .send(pubsub::Command::ConfirmEveryTopic { done });
        match tokio::time::timeout(self.config.command_timeout, confirmed).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(err))) => Err(WriteError::Store(unavailable(err))),
            _ => Err(WriteError::Store(unavailable(
                "the PUB/SUB connection did not confirm the wildcard subscription in time",
            ))),
        }
    }

    /// Reads entries `from..until` of `topic`'s stream `epoch`. If the
    /// stream is in another epoch now, the hub is told (a reset) and the
    /// batch is empty.
    pub(crate) async fn read(
        &self,
        topic: &TopicName,
        epoch: u64,
        from: u64,
        until: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, StoreError> {
        if from >= until || max == 0 {
            return Ok(ReadBatch {
                messages: Vec::new(),
                reached_end: true,
            });
        }
        let mut commands = self.commands.clone();
        let mut invocation = self.scripts.read.prepare_invoke();
        invocation
            .key(self.keys.meta(topic.as_str()))
            .key(self.keys.stream(topic.as_str()))
            .arg(epoch)
            .arg(from)
            .arg(until - 1)
            .arg(max);
        let call =
            invocation.invoke_async::<(u64, Vec<(String, Vec<(String, Vec<u8>)>)>)>(&mut commands);
        let (current, entries) = tokio::time::timeout(self.config.command_timeout, call)
            .await
            .map_err(|_| unavailable("Redis did not answer a read in time"))?
            .map_err(unavailable)
            .inspect_err(|err| self.failed(err))?;
        self.worked();
        if current != epoch {
            if current != 0 {
                self.hub.stream_reset(topic, current);
            }
            return Ok(ReadBatch {
                messages: Vec::new(),
                reached_end: true,
            });
        }
        let asked = entries.len();
        let mut messages = Vec::with_capacity(asked);
        let mut bytes = 0;
        for (id, fields) in entries {
            let offset = id
                .split('-')
                .next()
                .and_then(|offset| offset.parse::<u64>().ok())
                .ok_or_else(|| StoreError::Corrupt {
                    what: format!("a stream entry id `{id}` of {topic}"),
                })?;
            let mut timestamp = 0u64;
            let mut body = None;
            for (name, value) in fields {
                match name.as_str() {
                    "t" => {
                        timestamp = std::str::from_utf8(&value)
                            .ok()
                            .and_then(|text| text.parse().ok())
                            .unwrap_or(0);
                    }
                    "b" => body = Some(value),
                    _ => {}
                }
            }
            let body = body.ok_or_else(|| StoreError::Corrupt {
                what: format!("stream entry {offset} of {topic} has no body"),
            })?;
            if !messages.is_empty() && bytes + body.len() > max_bytes {
                return Ok(ReadBatch {
                    messages,
                    reached_end: false,
                });
            }
            bytes += body.len();
            let mut record = timestamp.to_be_bytes().to_vec();
            record.extend_from_slice(&body);
            messages.push(StoredMessage {
                offset,
                body: record.into(),
            });
        }
        Ok(ReadBatch {
            messages,
            reached_end: asked < max,
        })
    }

    /// Stored messages of `topic` from `from`, decoded, with their epoch.
    pub(crate) async fn history(
        &self,
        topic: &TopicName,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<(u64, ReadBatch)>, StoreError> {
        let Some(info) = self.info(topic).await? else {
            return Ok(None);
        };
        let batch = self
            .read(
                topic,
                info.epoch,
                from.max(FIRST_OFFSET),
                info.last_offset + 1,
                limit,
                max_bytes,
            )
            .await?;
        Ok(Some((info.epoch, batch)))
    }

    /// Deletes a topic's history and starts a new epoch on every node.
    pub(crate) async fn reset(&self, topic: &TopicName) -> Result<Option<u64>, StoreError> {
        let mut commands = self.commands.clone();
        let mut invocation = self.scripts.reset.prepare_invoke();
        invocation
            .key(self.keys.meta(topic.as_str()))
            .key(self.keys.stream(topic.as_str()))
            .arg(random_epoch())
            .arg(self.keys.channel(topic.as_str()))
            .arg(&random_id()[..]);
        let call = invocation.invoke_async::<u64>(&mut commands);
        let epoch = tokio::time::timeout(self.config.command_timeout, call)
            .await
            .map_err(|_| unavailable("Redis did not answer in time"))?
            .map_err(unavailable)
            .inspect_err(|err| self.failed(err))?;
        self.worked();
        Ok((epoch != 0).then_some(epoch))
    }

    /// A stored topic's figures, cluster-wide.
    pub(crate) async fn info(
        &self,
        topic: &TopicName,
    ) -> Result<Option<StoredTopicInfo>, StoreError> {
        let mut infos = self.infos(std::slice::from_ref(&topic.to_string())).await?;
        Ok(infos.pop().flatten())
    }

    async fn infos(&self, topics: &[String]) -> Result<Vec<Option<StoredTopicInfo>>, StoreError> {
        if topics.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for topic in topics {
            pipe.cmd("HMGET")
                .arg(self.keys.meta(topic))
                .arg(&["epoch", "offset", "first", "bytes"][..]);
            pipe.cmd("XLEN").arg(self.keys.stream(topic));
        }
        let mut commands = self.commands.clone();
        let values: Vec<Value> =
            tokio::time::timeout(self.config.command_timeout, pipe.query_async(&mut commands))
                .await
                .map_err(|_| unavailable("Redis did not answer in time"))?
                .map_err(unavailable)?;
        let mut out = Vec::with_capacity(topics.len());
        for (topic, pair) in topics.iter().zip(values.chunks(2)) {
            let fields: Vec<Option<u64>> =
                redis::from_redis_value(pair[0].clone()).unwrap_or_default();
            let count: u64 = redis::from_redis_value(pair[1].clone()).unwrap_or(0);
            let field = |index: usize| fields.get(index).copied().flatten();
            let Some(epoch) = field(0) else {
                out.push(None);
                continue;
            };
            let last = field(1).unwrap_or(0);
            let first = field(2).unwrap_or(FIRST_OFFSET);
            out.push(Some(StoredTopicInfo {
                name: topic.clone(),
                epoch,
                first_offset: if count > 0 { first } else { 0 },
                last_offset: last,
                stored_messages: count,
                stored_bytes: field(3).unwrap_or(0),
                published: 0,
                last_publish_ms: 0,
                publish_rate: 0,
            }));
        }
        Ok(out)
    }

    /// Stored topics of the cluster in name order.
    pub(crate) async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredTopicInfo>, StoreError> {
        // Names are UTF-8, which never contains the byte 0xff: every name
        // with the prefix sorts below `prefix + 0xff`.
        let mut upper = prefix.as_bytes().to_vec();
        upper.push(0xff);
        let lower = match after {
            Some(after) if after >= prefix => format!("({after}").into_bytes(),
            _ => format!("[{prefix}").into_bytes(),
        };
        let mut upper_bound = b"(".to_vec();
        upper_bound.extend_from_slice(&upper);
        let mut commands = self.commands.clone();
        let names: Vec<String> = tokio::time::timeout(
            self.config.command_timeout,
            redis::cmd("ZRANGE")
                .arg(self.keys.topics())
                .arg(lower)
                .arg(upper_bound)
                .arg("BYLEX")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut commands),
        )
        .await
        .map_err(|_| unavailable("Redis did not answer in time"))?
        .map_err(unavailable)?;
        Ok(self.infos(&names).await?.into_iter().flatten().collect())
    }

    /// The cluster's live nodes.
    pub(crate) async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let mut commands = self.commands.clone();
        let pattern = self.keys.node("*");
        let keys: Vec<String> = tokio::time::timeout(self.config.command_timeout, async {
            let mut keys = Vec::new();
            let mut cursor = 0u64;
            loop {
                let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(100)
                    .query_async(&mut commands)
                    .await?;
                keys.extend(batch);
                if next == 0 || keys.len() > 10_000 {
                    return Ok::<_, redis::RedisError>(keys);
                }
                cursor = next;
            }
        })
        .await
        .map_err(|_| unavailable("Redis did not answer in time"))?
        .map_err(unavailable)?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut commands = self.commands.clone();
        let values: Vec<Option<String>> = commands.mget(&keys).await.map_err(unavailable)?;
        let mut nodes: Vec<NodeInfo> = values
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str(&json).ok())
            .collect();
        nodes.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    /// Asks node `node` to close one of its connections.
    pub(crate) async fn send_control(&self, message: &ControlMessage) -> Result<(), StoreError> {
        let json = serde_json::to_string(message).map_err(|err| StoreError::Corrupt {
            what: format!("a control message: {err}"),
        })?;
        let mut commands = self.commands.clone();
        let _: u64 = tokio::time::timeout(
            self.config.command_timeout,
            commands.publish(self.keys.control(), json),
        )
        .await
        .map_err(|_| unavailable("Redis did not answer in time"))?
        .map_err(unavailable)?;
        Ok(())
    }

    /// Starts announcing this node, once its WebSocket listener is bound.
    pub(crate) fn announce(
        self: &Arc<Self>,
        address: SocketAddr,
        connections: impl Fn() -> u64 + Send + 'static,
        tasks: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        let name = self
            .node_name
            .get_or_init(|| format!("{}:{}", host_name(), address.port()))
            .clone();
        let engine = Arc::clone(self);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut ticker = tokio::time::interval(engine.config.heartbeat_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let ttl = engine.config.heartbeat_interval * 3;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let info = NodeInfo {
                    name: name.clone(),
                    address: address.to_string(),
                    started_ms: engine.started_ms,
                    heartbeat_ms: now_ms(),
                    connections: connections(),
                };
                let Ok(json) = serde_json::to_string(&info) else {
                    continue;
                };
                let mut commands = engine.commands.clone();
                let announce = async {
                    let _: () = commands
                        .pset_ex(engine.keys.node(&name), json, ttl.as_millis() as u64)
                        .await?;
                    commands.zcard::<_, u64>(engine.keys.topics()).await
                };
                match tokio::time::timeout(engine.config.command_timeout, announce).await {
                    Ok(Ok(count)) => engine.stored_topics.store(count, Ordering::Relaxed),
                    Ok(Err(err)) => tracing::debug!(cause = %err, "the node heartbeat failed"),
                    Err(_) => tracing::debug!("the node heartbeat timed out"),
                }
            }
            // Leave the cluster's list at once on a clean stop.
            let mut commands = engine.commands.clone();
            let _ = tokio::time::timeout(
                engine.config.command_timeout,
                commands.del::<_, u64>(engine.keys.node(&name)),
            )
            .await;
        });
    }

    pub(crate) fn durable(&self) -> watch::Receiver<DurableMark> {
        self.durable.subscribe()
    }

    pub(crate) fn health(&self) -> StoreHealth {
        StoreHealth {
            engine: "redis",
            failing: self.is_failing(),
            failure: self
                .failure
                .lock()
                .expect("no code panics holding the failure")
                .clone(),
            size_on_disk: 0,
            stored_topics: self.stored_topics.load(Ordering::Relaxed),
            flush_failures: Stats::get(&self.metrics.failures),
            reopens: Stats::get(&self.metrics.pubsub_reconnects),
            damaged_topics: 0,
            acknowledged_writes: self.metrics.script_latency.snapshot().count,
            flush_latency: self.metrics.script_latency.snapshot(),
            flush_batch: self.metrics.batch_size.snapshot(),
        }
    }

    /// Repairs every topic with local subscribers from the heads Redis
    /// holds (after the PUB/SUB connection came back).
    async fn repair_all(&self) {
        for topic in self.hub.stored_topics() {
            match self.bounds(&topic).await {
                Ok((epoch, last, _)) => {
                    if self.hub.repair(
                        &topic,
                        StreamPosition {
                            epoch,
                            offset: last,
                        },
                    ) {
                        tracing::debug!(topic = %topic, "repaired a topic after the PUB/SUB connection came back");
                    }
                }
                Err(err) => {
                    tracing::warn!(topic = %topic, cause = %err, "could not repair a topic; the next delivery will");
                }
            }
        }
    }

    /// The control message `message` arrived for this node.
    fn on_control(&self, message: ControlMessage) {
        if message.node == self.node_name() {
            let _ = self.control.send(message);
        }
    }

    /// One delivery from PUB/SUB.
    fn on_envelope(&self, topic: &str, envelope: &[u8]) {
        let Ok(topic) = TopicName::parse(topic, usize::MAX) else {
            return;
        };
        let Some(parsed) = pubsub::Envelope::parse(envelope) else {
            tracing::warn!(topic = %topic, "ignoring a malformed PUB/SUB message");
            return;
        };
        match parsed.kind {
            pubsub::EnvelopeKind::Reset => self.hub.stream_reset(&topic, parsed.epoch),
            pubsub::EnvelopeKind::Message => {
                let position = (parsed.epoch != 0).then_some(StreamPosition {
                    epoch: parsed.epoch,
                    offset: parsed.offset,
                });
                let mut frame = sockeye_protocol::frame::FrameBuf::with_capacity(parsed.body.len());
                frame.body_mut().extend_from_slice(parsed.body);
                let frame = frame.seal(&self.compression);
                self.hub
                    .deliver(&topic, position, &frame, crate::hub::Accepted::now());
            }
        }
    }
}

/// This machine's host name, for the default node name.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|name| name.trim().to_owned())
        })
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "sockeye".to_owned())
}

/// Trims topics whose oldest message passed its age limit, from the
/// cluster's age schedule (every node runs it; a trim is idempotent).
async fn run_trimmer(engine: Arc<RedisEngine>, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut commands = engine.commands.clone();
        let now = now_ms();
        let due: redis::RedisResult<Vec<String>> = redis::cmd("ZRANGEBYSCORE")
            .arg(engine.keys.age())
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(TRIM_PASS_TOPICS)
            .query_async(&mut commands)
            .await;
        let Ok(due) = due else {
            continue;
        };
        for name in due {
            let Ok(topic) = TopicName::parse(&name, usize::MAX) else {
                let _: redis::RedisResult<u64> = commands.zrem(engine.keys.age(), &name).await;
                continue;
            };
            let Some(rule) = engine.retention_for(&topic) else {
                let _: redis::RedisResult<u64> = commands.zrem(engine.keys.age(), &name).await;
                continue;
            };
            let max_age = u64::try_from(rule.max_age.as_millis()).unwrap_or(u64::MAX);
            let mut invocation = engine.scripts.trim.prepare_invoke();
            invocation
                .key(engine.keys.meta(&name))
                .key(engine.keys.stream(&name))
                .arg(rule.max_messages)
                .arg(rule.max_bytes.as_u64())
                .arg(now.saturating_sub(max_age))
                .arg(PASS_TRIM_BUDGET);
            let oldest: redis::RedisResult<u64> = invocation.invoke_async(&mut commands).await;
            let rescheduled: redis::RedisResult<u64> = match oldest {
                Ok(0) => commands.zrem(engine.keys.age(), &name).await,
                Ok(oldest) => {
                    commands
                        .zadd(
                            engine.keys.age(),
                            &name,
                            oldest.saturating_add(max_age).max(now + 1000),
                        )
                        .await
                }
                Err(err) => {
                    tracing::debug!(topic = %name, cause = %err, "trimming by age failed");
                    continue;
                }
            };
            if let Err(err) = rescheduled {
                tracing::debug!(topic = %name, cause = %err, "rescheduling a trim failed");
            }
        }
    }
}
