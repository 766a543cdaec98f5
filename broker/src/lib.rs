//! The Sockeye broker core: handshake authentication, connections, the
//! topic hub, and the engine that keeps stored topics' history (sled).
//!
//! Everything outside this crate goes through [`Broker`]: it serves
//! WebSocket clients and answers the admin API's queries and actions with
//! plain snapshot types ([`TopicInfo`], [`ConnectionInfo`],
//! [`StoreHealth`]).
//!
//! # Layout
//!
//! - [`config`]: the one typed configuration tree and its validation.
//! - [`auth`]: finding and verifying the handshake JWT; permissions.
//! - `server`: the listener, HTTP/1.1 with a handshake timeout, the `/ws`
//!   upgrade with its admission checks (origin, rates, per-IP, capacity),
//!   `/healthz`, graceful shutdown; [`serve_http`] for the admin listener.
//! - [`tls`]: certificates for `wss://`, reloaded in place.
//! - `linger`: draining a socket for a bounded time after a close frame, so
//!   the client reads the close instead of a reset.
//! - `connection`: one task per connection: requests, replies, deliveries,
//!   heartbeats, token expiry, close codes.
//! - `peer`: the shared half of a connection (outbound queue bounded in
//!   frames and bytes, counters, close signal).
//! - `hub`: local subscribers: live sets, the wildcard index, fan-out and
//!   the slow-consumer policy, subscribe planning, replays.
//! - `engine`: where stored topics' offsets and history live, behind the
//!   engine contract; `engine::sled` is the sled engine (store layout,
//!   heads journal, group-commit flusher, trimmer, recovery).
//! - [`stats`]: counters and histograms for the admin API.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = sockeye_broker::Config::default();
//! let broker = sockeye_broker::Broker::open(config).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! broker.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod config;
mod connection;
mod engine;
mod hub;
mod linger;
mod peer;
mod server;
pub mod stats;
pub mod tls;

/// A map keyed by topic name, hashed with foldhash: the hub's and the sled
/// engine's registries are looked up on every publish, and SipHash was a
/// visible share of a delivery's cost (docs/benchmarks.md). Seeded per
/// process. The sled registry holds at most `store.max_topics` stored
/// topics; the hub's registry holds the topics with local subscribers.
type TopicMap<V> =
    std::collections::HashMap<sockeye_protocol::TopicName, V, foldhash::fast::RandomState>;
/// A set of topic names, hashed like [`TopicMap`].
type TopicSet = std::collections::HashSet<sockeye_protocol::TopicName, foldhash::fast::RandomState>;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sockeye_protocol::{CloseCode, Delivery, Payload, StreamPosition, TopicName};

use crate::engine::AckError;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::auth::{Authenticator, Claims, Identity};
pub use crate::config::Config;
pub use crate::engine::{
    Damage, DamageKind, JournalError, NodeInfo, StoreError, StoreHealth, WriteError,
};
pub use crate::peer::{ConnId, ConnectionInfo};
pub use crate::server::{HttpOptions, serve_http};
pub use crate::stats::{HistogramSnapshot, Stats};

use crate::engine::Engine;
use crate::hub::Hub;
use crate::peer::Peer;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The signing keys could not be loaded.
    #[error(transparent)]
    Keys(#[from] auth::KeyError),
    /// The history store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The TLS certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Why a publish made through [`Broker::publish`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The store failed, or is failing and refuses writes.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The topic would be stored, and `store.max_topics` are stored already.
    #[error("the broker stores at most {max} topics (store.max_topics)")]
    TooManyTopics {
        /// The configured cap.
        max: usize,
    },
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
}

/// A running broker: cheap to clone, shared by every connection.
#[derive(Debug, Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Arc<Config>,
    authenticator: Authenticator,
    hub: Arc<Hub>,
    engine: Arc<Engine>,
    stats: Arc<Stats>,
    /// Every connected peer, by id. A std mutex: held only to insert,
    /// remove or copy out entries, never across an `.await`.
    peers: Mutex<HashMap<ConnId, Arc<Peer>>>,
    next_id: AtomicU64,
    /// WebSocket connections per client IP, for `max_connections_per_ip`.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// The global handshake rate limit, if any.
    handshakes: Option<governor::DefaultDirectRateLimiter>,
    /// The listener's TLS identity, when TLS is configured.
    tls: Option<Arc<tls::TlsReloader>>,
    draining: AtomicBool,
    /// Cancelled at the end of shutdown; stops background tasks.
    shutdown: CancellationToken,
    /// Background tasks (flusher, trimmer, replays).
    tasks: TaskTracker,
    /// Connection sessions.
    connections: TaskTracker,
    /// Connections whose session panics at its next `ping` (test hook).
    #[cfg(feature = "test-hooks")]
    panic_armed: Mutex<std::collections::HashSet<ConnId>>,
}

impl Broker {
    /// Validates `config`, opens the store in `config.server.data_dir`, and
    /// starts the background tasks. Must be called inside a tokio runtime.
    pub async fn open(config: Config) -> Result<Self, BrokerError> {
        config.validate()?;
        if config.engine.kind == config::EngineKind::Redis
            && config.auth.algorithm.is_hmac()
            && config.auth.secret.is_none()
            && config.auth.secret_file.is_none()
        {
            return Err(BrokerError::Config(config::ConfigError {
                key: "auth.secret_file".into(),
                reason: "cluster mode (engine.kind = \"redis\") needs one signing key shared by \
                         every node: set auth.secret_file (or auth.public_key_file for RS256/ES256); \
                         a development secret generated per node would make each node refuse the \
                         others' tokens"
                    .into(),
            }));
        }
        let authenticator = Authenticator::from_config(
            &config.auth,
            &config.server.data_dir,
            config.limits.max_topic_length,
        )?;
        if authenticator.generated_secret() {
            tracing::warn!(
                path = %config.server.data_dir.join(auth::DEV_SECRET_FILE).display(),
                "generated a development signing secret; configure auth.secret_file for production"
            );
        }
        let stats = Arc::new(Stats::default());
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let hub = Arc::new(Hub::new(&config, Arc::clone(&stats), tasks.clone()));
        let (control, control_requests) = tokio::sync::mpsc::unbounded_channel();
        let engine = Engine::open(
            &config,
            &hub,
            Arc::clone(&stats),
            &tasks,
            &shutdown,
            control,
        )
        .await?;
        let tls = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => Some(Arc::new(tls::TlsReloader::load(cert, key)?)),
            _ => None,
        };
        if let Some(tls) = &tls {
            tasks.spawn(watch_tls(
                Arc::clone(tls),
                config.tls.watch_interval,
                shutdown.clone(),
            ));
        }
        let handshakes = (config.server.handshake_rate > 0)
            .then(|| {
                let period = Duration::from_secs_f64(1.0 / config.server.handshake_rate as f64);
                let burst = std::num::NonZeroU32::new(
                    u32::try_from(config.server.handshake_burst).unwrap_or(u32::MAX),
                )
                .unwrap_or(std::num::NonZeroU32::MIN);
                governor::Quota::with_period(period)
                    .map(|quota| governor::RateLimiter::direct(quota.allow_burst(burst)))
            })
            .flatten();
        let broker = Self {
            inner: Arc::new(Inner {
                config: Arc::new(config),
                authenticator,
                hub,
                engine,
                stats,
                peers: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                per_ip: Mutex::new(HashMap::new()),
                handshakes,
                tls,
                draining: AtomicBool::new(false),
                shutdown,
                tasks,
                connections: TaskTracker::new(),
                #[cfg(feature = "test-hooks")]
                panic_armed: Mutex::default(),
            }),
        };
        broker
            .inner
            .tasks
            .spawn(run_control(broker.downgrade(), control_requests));
        Ok(broker)
    }

    /// Announces this node to its cluster (a no-op on a single node), once
    /// its WebSocket listener is bound to `address`.
    pub(crate) fn announce(&self, address: std::net::SocketAddr) {
        let broker = self.downgrade();
        self.inner.engine.announce(
            address,
            move || {
                broker
                    .upgrade()
                    .map_or(0, |inner| Broker { inner }.connection_count() as u64)
            },
            &self.inner.tasks,
            &self.inner.shutdown,
        );
    }

    fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// Serves WebSocket clients on `listener` until `shutdown` resolves;
    /// then stops accepting, closes every connection with 1001 and a spread
    /// reconnect hint, waits for them (bounded by the drain timeout), and
    /// flushes the store.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        server::serve(self, listener, shutdown).await
    }

    /// The router for `/ws` and `/healthz`, for embedding in another server
    /// (requests must carry `ConnectInfo<SocketAddr>`).
    pub fn router(&self) -> axum::Router {
        server::router(self.clone())
    }

    /// The configuration in force.
    pub fn config(&self) -> &Arc<Config> {
        &self.inner.config
    }

    /// The token verifier (and minter).
    pub fn authenticator(&self) -> &Authenticator {
        &self.inner.authenticator
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    pub(crate) fn engine(&self) -> &Arc<Engine> {
        &self.inner.engine
    }

    /// Broker-wide counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// The listener's TLS identity, when TLS is configured.
    pub fn tls(&self) -> Option<&Arc<tls::TlsReloader>> {
        self.inner.tls.as_ref()
    }

    /// Reloads the TLS certificate and key from their files (on SIGHUP).
    /// On error the current certificate stays in use.
    pub fn reload_tls(&self) -> Result<(), tls::TlsError> {
        match &self.inner.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }

    /// Takes one token from the handshake rate limit.
    pub(crate) fn admit_handshake(&self) -> bool {
        self.inner
            .handshakes
            .as_ref()
            .is_none_or(|limiter| limiter.check().is_ok())
    }

    /// Takes one unit of the connection budget (`server.max_connections`);
    /// `None` when the broker is full. The guard gives it back when dropped,
    /// with whatever else it claimed meanwhile.
    pub(crate) fn admit(&self) -> Option<Admission> {
        let open = self.inner.stats.connections.fetch_add(1, Ordering::AcqRel);
        let admission = Admission {
            broker: self.clone(),
            ip: None,
            peer: None,
        };
        (open < self.inner.config.server.max_connections as u64).then_some(admission)
    }

    /// The per-IP counts. They stay consistent even if some thread panicked
    /// while holding the lock (each change is one insert or removal), so a
    /// poisoned lock is used as is rather than spreading the panic.
    fn per_ip(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.inner
            .per_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    pub(crate) fn connection_tracker(&self) -> TaskTracker {
        self.inner.connections.clone()
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// The peer map; a poisoned lock is used as is, as for [`Self::per_ip`].
    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<ConnId, Arc<Peer>>> {
        self.inner
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Connected clients in id order, starting after `after`; at most `limit`.
    pub fn connections(&self, after: Option<ConnId>, limit: usize) -> Vec<ConnectionInfo> {
        let mut peers: Vec<Arc<Peer>> = self
            .peers()
            .values()
            .filter(|peer| after.is_none_or(|after| peer.id > after))
            .cloned()
            .collect();
        peers.sort_unstable_by_key(|peer| peer.id);
        peers.truncate(limit);
        peers.iter().map(|peer| peer.info()).collect()
    }

    /// One connected client.
    pub fn connection(&self, id: ConnId) -> Option<ConnectionInfo> {
        self.peer(id).map(|peer| peer.info())
    }

    fn peer(&self, id: ConnId) -> Option<Arc<Peer>> {
        self.peers().get(&id).cloned()
    }

    /// Number of connected clients.
    pub fn connection_count(&self) -> usize {
        self.peers().len()
    }

    /// Closes a connection with `code`; returns whether it existed.
    pub fn disconnect(&self, id: ConnId, code: CloseCode, reason: &str) -> bool {
        match self.peer(id) {
            Some(peer) => {
                peer.close(code, reason);
                true
            }
            None => false,
        }
    }

    /// Publishes on behalf of `publisher` (for the admin API). Waits until
    /// the message is acknowledged under the durability mode, like a
    /// WebSocket publish with `ack: true`. Returns its position for a
    /// stored topic, `None` for an ephemeral one.
    pub async fn publish(
        &self,
        topic: &TopicName,
        payload: &Payload,
        publisher: &str,
    ) -> Result<Option<StreamPosition>, PublishError> {
        let published = self
            .inner
            .engine
            .publish(topic, payload, publisher)
            .map_err(|err| match err {
                WriteError::Store(err) => PublishError::Store(err),
                WriteError::TooManyTopics { max } => PublishError::TooManyTopics { max },
                WriteError::StoreBehind { .. } => PublishError::Store(StoreError::Failing),
            })?;
        let answered = self
            .inner
            .engine
            .wait_ack(published.ack, &self.inner.shutdown)
            .await
            .map_err(|err| match err {
                AckError::Failed => PublishError::Store(StoreError::Failing),
                AckError::ShutDown => PublishError::ShuttingDown,
            })?;
        Ok(published.position.or(answered))
    }

    /// A topic with state (stored, cluster-wide in a cluster; or with
    /// local subscribers).
    pub async fn topic(&self, topic: &TopicName) -> Result<Option<TopicInfo>, StoreError> {
        let local = self.inner.hub.local_info(topic);
        Ok(match self.inner.engine.info(topic).await? {
            Some(stored) => Some(TopicInfo::stored(stored, local.unwrap_or_default())),
            None => local.map(|local| TopicInfo::ephemeral(topic.to_string(), local)),
        })
    }

    /// Topics with state in name order, after `after`, whose names start
    /// with `prefix`; at most `limit`.
    pub async fn list_topics(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TopicInfo>, StoreError> {
        let stored = self.inner.engine.list(prefix, after, limit).await?;
        let ephemeral = self.inner.hub.list_ephemeral(prefix, after, limit);
        let mut topics: Vec<TopicInfo> = stored
            .into_iter()
            .map(|stored| {
                let local = TopicName::parse(&stored.name, usize::MAX)
                    .ok()
                    .and_then(|name| self.inner.hub.local_info(&name))
                    .unwrap_or_default();
                TopicInfo::stored(stored, local)
            })
            .chain(
                ephemeral
                    .into_iter()
                    .map(|(name, local)| TopicInfo::ephemeral(name, local)),
            )
            .collect();
        topics.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        topics.truncate(limit);
        Ok(topics)
    }

    /// Topics with state: stored ones, and ephemeral ones with subscribers.
    pub fn topic_count(&self) -> usize {
        self.inner.engine.health().stored_topics as usize + self.inner.hub.ephemeral_len()
    }

    /// Subscriptions held now, and of them wildcard ones.
    pub fn subscription_counts(&self) -> (u64, u64) {
        (
            Stats::get(&self.inner.stats.subscriptions),
            self.inner.hub.wildcard_subscriptions() as u64,
        )
    }

    /// Stored messages of `topic` from offset `from` in offset order: at
    /// most `limit`, and past the first at most `max_bytes` of stored
    /// records. `None` if the topic is not stored.
    pub async fn history(
        &self,
        topic: &TopicName,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Option<History>, StoreError> {
        let Some((epoch, messages)) = self
            .inner
            .engine
            .history(topic, from, limit, max_bytes)
            .await?
        else {
            return Ok(None);
        };
        let last_offset = self
            .inner
            .engine
            .info(topic)
            .await?
            .filter(|now| now.epoch == epoch)
            .map_or(0, |now| now.last_offset);
        Ok(Some(History {
            epoch,
            messages,
            last_offset,
        }))
    }

    /// Deletes a topic's history and starts a new epoch; live subscribers
    /// get `reset`. The new epoch, or `None` if the topic is not stored.
    pub async fn reset_topic(&self, topic: &TopicName) -> Result<Option<u64>, StoreError> {
        self.inner.engine.reset(topic).await
    }

    /// The history store's health and figures.
    pub fn store_health(&self) -> StoreHealth {
        self.inner.engine.health()
    }

    /// This node's name in its cluster (`None` for a single node).
    pub fn node_name(&self) -> Option<String> {
        self.inner.engine.node_name().map(str::to_owned)
    }

    /// The nodes of this broker's cluster (empty for a single node).
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        self.inner.engine.nodes().await
    }

    /// Asks node `node` of the cluster to close its connection `id` with
    /// `code`; the node acts when the request reaches it.
    pub async fn disconnect_on(
        &self,
        node: &str,
        id: ConnId,
        code: CloseCode,
        reason: &str,
    ) -> Result<(), StoreError> {
        let message = engine::ControlMessage {
            op: "disconnect".into(),
            node: node.to_owned(),
            connection: id.0,
            code: code.code(),
            reason: reason.to_owned(),
        };
        self.inner.engine.send_control(&message).await
    }

    /// Closes every connection with 1001 and a reconnect hint spread over
    /// `shutdown.reconnect_spread`, waits for them up to the drain timeout,
    /// then stops the background tasks (the flusher flushes one last time).
    pub async fn drain(&self) {
        self.inner.draining.store(true, Ordering::Release);
        let spread = self.inner.config.shutdown.reconnect_spread;
        let peers: Vec<Arc<Peer>> = self.peers().values().cloned().collect();
        for peer in &peers {
            peer.close(server::DRAIN_CODE, server::reconnect_hint(spread));
        }
        self.inner.connections.close();
        let drain_timeout = self.inner.config.shutdown.drain_timeout;
        if tokio::time::timeout(drain_timeout, self.inner.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout: some connections did not close in time");
        }
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.inner.tasks.wait()).await;
    }
}

/// A snapshot of one topic, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// The topic.
    pub name: String,
    /// Whether its history is stored.
    pub stored: bool,
    /// Exact subscribers on this node (live and catching up).
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
    /// Messages published since the broker started (for an ephemeral
    /// topic: while it had subscribers).
    pub published: u64,
    /// Last publish, unix ms (0 if none since start).
    pub last_publish_ms: u64,
    /// Publishes in the last complete second.
    pub publish_rate: u64,
}

impl TopicInfo {
    fn stored(stored: engine::StoredTopicInfo, local: hub::LocalTopicInfo) -> Self {
        Self {
            name: stored.name,
            stored: true,
            subscribers: local.subscribers,
            catching_up: local.catching_up,
            epoch: stored.epoch,
            first_offset: stored.first_offset,
            last_offset: stored.last_offset,
            stored_messages: stored.stored_messages,
            stored_bytes: stored.stored_bytes,
            published: stored.published,
            last_publish_ms: stored.last_publish_ms,
            publish_rate: stored.publish_rate,
        }
    }

    fn ephemeral(name: String, local: hub::LocalTopicInfo) -> Self {
        Self {
            name,
            stored: false,
            subscribers: local.subscribers,
            catching_up: local.catching_up,
            epoch: 0,
            first_offset: 0,
            last_offset: 0,
            stored_messages: 0,
            stored_bytes: 0,
            published: local.published,
            last_publish_ms: local.last_publish_ms,
            publish_rate: local.publish_rate,
        }
    }
}

/// A page of a stored topic's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The epoch the messages belong to.
    pub epoch: u64,
    /// The messages, in offset order.
    pub messages: Vec<Delivery>,
    /// The topic's newest readable offset now, if still in `epoch` (0
    /// otherwise): a page whose last message is older has a next page.
    pub last_offset: u64,
}

/// One WebSocket connection's claim on the broker: a unit of the
/// connections gauge (which `server.max_connections` bounds), one of its
/// address's `server.max_connections_per_ip`, and its entry in the peer map.
/// The connection's session owns it, so however the session ends (a panic
/// included) dropping it gives all three back; a failed upgrade drops it too.
#[derive(Debug)]
pub(crate) struct Admission {
    broker: Broker,
    /// The address whose per-IP count this holds, once claimed.
    ip: Option<IpAddr>,
    /// The peer registered under this admission, once registered.
    peer: Option<ConnId>,
}

impl Admission {
    /// Claims one of `ip`'s connection slots; false if it holds the maximum.
    pub(crate) fn claim_ip(&mut self, ip: IpAddr) -> bool {
        debug_assert!(self.ip.is_none(), "one address per admission");
        let max = self.broker.inner.config.server.max_connections_per_ip;
        let mut per_ip = self.broker.per_ip();
        let held = per_ip.entry(ip).or_insert(0);
        if max > 0 && *held >= max {
            if *held == 0 {
                per_ip.remove(&ip);
            }
            return false;
        }
        *held += 1;
        self.ip = Some(ip);
        true
    }

    /// Gives the connection its id and lists it in the peer map.
    pub(crate) fn register(
        &mut self,
        subject: String,
        remote: SocketAddr,
        user_agent: Option<String>,
    ) -> Arc<Peer> {
        debug_assert!(self.peer.is_none(), "one peer per admission");
        let inner = &self.broker.inner;
        let id = ConnId(inner.next_id.fetch_add(1, Ordering::Relaxed));
        let peer = Arc::new(Peer::new(
            id,
            subject,
            remote,
            user_agent,
            inner.config.limits.outbound_queue,
            inner.config.limits.outbound_queue_bytes.as_u64(),
        ));
        self.broker.peers().insert(id, Arc::clone(&peer));
        self.peer = Some(id);
        peer
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(id) = self.peer.take() {
            self.broker.peers().remove(&id);
        }
        if let Some(ip) = self.ip.take() {
            let mut per_ip = self.broker.per_ip();
            if let Some(held) = per_ip.get_mut(&ip) {
                *held -= 1;
                if *held == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
        let stats = &self.broker.inner.stats;
        stats.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Hooks for the workspace's own tests, compiled only with the `test-hooks`
/// feature (which only dev-dependencies enable).
#[cfg(feature = "test-hooks")]
impl Broker {
    /// Makes the session of connection `id` panic when it next handles a
    /// `ping` request, as a bug would; returns whether the connection exists.
    #[doc(hidden)]
    pub fn panic_session_at_next_ping(&self, id: ConnId) -> bool {
        let exists = self.peer(id).is_some();
        if exists {
            self.armed().insert(id);
        }
        exists
    }

    /// Panics if the test hook is armed for `id`.
    pub(crate) fn panic_if_armed(&self, id: ConnId) {
        if self.armed().remove(&id) {
            panic!("test hook: connection {id} panics on purpose");
        }
    }

    fn armed(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<ConnId>> {
        self.inner
            .panic_armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Carries out the cluster's requests for this node (from the engine's
/// control channel) while the broker lives.
async fn run_control(
    broker: std::sync::Weak<Inner>,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<engine::ControlMessage>,
) {
    while let Some(request) = requests.recv().await {
        let Some(inner) = broker.upgrade() else {
            return;
        };
        let broker = Broker { inner };
        if request.op == "disconnect" {
            let code = CloseCode::from_code(request.code).unwrap_or(CloseCode::Kicked);
            let found = broker.disconnect(ConnId(request.connection), code, &request.reason);
            tracing::info!(
                connection = request.connection,
                found,
                "disconnect requested by another node"
            );
        }
    }
}

async fn watch_tls(tls: Arc<tls::TlsReloader>, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match tls.reload_if_changed() {
            Ok(true) => tracing::info!("reloaded the TLS certificate after its files changed"),
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(cause = %err, "TLS files changed but do not load; keeping the current certificate");
            }
        }
    }
}
