//! The one typed configuration tree of a Sockeye server, with its defaults
//! and its validation.
//!
//! The binary layers it (defaults < TOML file < `SOCKEYE_*` environment <
//! command line) and calls [`Config::validate`] once at start. Every limit
//! the broker enforces is a field here; `config/default.toml` at the root of
//! the repository documents each one and is checked to equal
//! [`Config::default`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use sockeye_protocol::topic::DEFAULT_MAX_TOPIC_BYTES;
use sockeye_protocol::{Compression, Limits, TopicFilter};

/// The whole server configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The WebSocket listener and data directory.
    pub server: ServerConfig,
    /// The admin HTTP API listener (served by the `sockeye-admin` crate).
    pub admin: AdminConfig,
    /// How handshake tokens are verified.
    pub auth: AuthConfig,
    /// Per-connection limits.
    pub limits: LimitsConfig,
    /// Liveness checks.
    pub heartbeat: HeartbeatConfig,
    /// WebSocket buffers and frame compression.
    pub websocket: WebSocketConfig,
    /// The history store.
    pub store: StoreConfig,
    /// Which topics are stored and how much of each is kept; the first rule
    /// whose pattern matches a topic applies.
    pub retention: Vec<RetentionRule>,
    /// Shutdown and drain.
    pub shutdown: ShutdownConfig,
    /// TLS for the listeners (`wss://`).
    pub tls: TlsConfig,
    /// Where stored topics live: sled on this node, or Redis for a cluster.
    pub engine: EngineConfig,
}

/// Which engine keeps stored topics, and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `sled` (one node, history on this node's disk) or `redis` (a
    /// cluster of nodes sharing topics, offsets and history through Redis).
    pub kind: EngineKind,
    /// Settings of the `redis` engine.
    pub redis: RedisConfig,
}

/// The engine kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// sled on this node (the default).
    Sled,
    /// Redis, shared by every node of a cluster.
    Redis,
}

/// Settings of the `redis` engine (see docs/cluster.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// The Redis server, as `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every key and channel, so several clusters can share one
    /// Redis.
    pub key_prefix: String,
    /// This node's name in the cluster; empty means `<host name>:<port of
    /// the WebSocket listener>`. Unique per node.
    pub node_name: String,
    /// Longest a command (a publish, a read) may take before it fails with
    /// `storage_failed`.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Longest a connection attempt to Redis may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often this node announces itself (its entry expires after three
    /// missed beats).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Most publishes sent to Redis in one pipelined batch.
    pub publish_batch: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            kind: EngineKind::Sled,
            redis: RedisConfig::default(),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "sockeye".into(),
            node_name: String::new(),
            command_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(5),
            publish_batch: 512,
        }
    }
}

/// TLS settings. With `cert_file` and `key_file` set, the WebSocket
/// listener speaks TLS only (`wss://`, `https://`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// How often the files are checked for changes (they are also reloaded
    /// on SIGHUP).
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
    /// Serve the admin listener over TLS too, with the same certificate.
    pub admin: bool,
}

impl TlsConfig {
    /// True when a certificate and key are configured.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            watch_interval: Duration::from_secs(10),
            admin: false,
        }
    }
}

/// Listener settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the WebSocket listener (`/ws`, `/healthz`).
    pub listen: SocketAddr,
    /// Where the history store and the generated development secret live.
    pub data_dir: PathBuf,
    /// Most WebSocket connections served at once; handshakes beyond get
    /// HTTP 503 with `Retry-After`.
    pub max_connections: usize,
    /// Time a client has, from TCP accept, to finish the TLS handshake (if
    /// any) and send its complete upgrade request.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Most WebSocket connections from one IP address (0: unlimited);
    /// beyond it handshakes get HTTP 429. Behind a proxy every client shares
    /// the proxy's address: raise it or set 0 there.
    pub max_connections_per_ip: usize,
    /// Handshakes accepted per second, across all clients (0: unlimited);
    /// beyond the allowance they get HTTP 503 before the token is even
    /// verified.
    pub handshake_rate: u64,
    /// The allowance of handshakes: the most accepted at once, all of them
    /// together (not an extra above the rate); used ones come back at
    /// `handshake_rate` per second.
    pub handshake_burst: u64,
    /// Browser origins allowed to open WebSockets. Empty (the default) allows
    /// only the broker's own origin (the `Origin` host equals the `Host`
    /// header); entries are exact origins (`https://app.example.com`),
    /// subdomain patterns (`https://*.example.com`) or `*` for any. Requests
    /// without an `Origin` header (non-browser clients) are not affected.
    pub allowed_origins: Vec<String>,
    /// Addresses of reverse proxies in front of the broker. For connections
    /// from one of them, the client's address is taken from
    /// `X-Forwarded-For` (the rightmost entry that is not itself a trusted
    /// proxy), for `max_connections_per_ip` and in the admin API.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// Admin API settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Whether to serve the admin API at all.
    pub enabled: bool,
    /// Address of the admin listener; loopback by default.
    pub listen: SocketAddr,
    /// Static API keys accepted as `Authorization: Bearer <key>`, besides
    /// admin tokens signed by the broker's key.
    pub api_keys: Vec<String>,
    /// Most bytes of stored messages (whole stored records: encoded delivery
    /// frame plus timestamp) in one page of `GET /v1/topics/{topic}/history`;
    /// a page always holds at least one message, whatever its size.
    pub max_history_page_bytes: ByteSize,
}

/// Which algorithm verifies handshake tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    /// HMAC with SHA-256 and a shared secret.
    HS256,
    /// HMAC with SHA-384 and a shared secret.
    HS384,
    /// HMAC with SHA-512 and a shared secret.
    HS512,
    /// RSA PKCS#1 v1.5 with SHA-256 and a public key.
    RS256,
    /// ECDSA P-256 with SHA-256 and a public key.
    ES256,
}

impl Algorithm {
    /// True for the shared-secret (HMAC) algorithms.
    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }
}

/// Token verification settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The one algorithm accepted.
    pub algorithm: Algorithm,
    /// Shared secret for HS*. When neither this nor `secret_file` is set, a
    /// development secret is generated in `data_dir/dev-secret` and reused.
    pub secret: Option<String>,
    /// File holding the shared secret for HS*.
    pub secret_file: Option<PathBuf>,
    /// PEM public key for RS256/ES256.
    pub public_key_file: Option<PathBuf>,
    /// PEM private key for RS256/ES256, needed only to mint tokens with
    /// `sockeye token`.
    pub private_key_file: Option<PathBuf>,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Reject tokens without `exp`.
    pub require_exp: bool,
    /// How long before expiry the broker sends `token_expiring`.
    #[serde(with = "humantime_serde")]
    pub expiry_warning: Duration,
    /// Subscribe permissions of tokens that carry no `subscribe` claim.
    pub default_subscribe: Vec<String>,
    /// Publish permissions of tokens that carry no `publish` claim.
    pub default_publish: Vec<String>,
}

/// Per-connection limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest WebSocket message accepted (close 1009 beyond).
    pub max_frame_size: ByteSize,
    /// Largest body a compressed frame may inflate to (close 1009 beyond).
    pub max_inflated_size: ByteSize,
    /// Longest topic name or filter, in bytes.
    pub max_topic_length: usize,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// Frames queued for one connection before it counts as a slow consumer.
    pub outbound_queue: usize,
    /// Bytes of frames queued for one connection before it counts as a slow
    /// consumer (a frame larger than this still passes, alone). With
    /// `outbound_queue` it bounds what a connection that stops reading pins.
    pub outbound_queue_bytes: ByteSize,
    /// Publishes awaiting their durable acknowledgement per connection;
    /// beyond it the broker stops reading from that connection until some
    /// are acknowledged.
    pub max_pending_acks: usize,
    /// Sustained publishes per second per connection (0: unlimited).
    pub publish_rate: u64,
    /// The allowance of publishes per connection: the most accepted at once,
    /// all of them together (not an extra above the rate); used ones come
    /// back at `publish_rate` per second.
    pub publish_burst: u64,
    /// Sustained payload bytes per second one connection may publish
    /// (0: unlimited); bursts up to one second's worth (at least one
    /// maximum-size frame).
    pub publish_bytes_rate: ByteSize,
    /// What happens to a subscriber whose outbound queue is full.
    pub slow_consumer: SlowConsumerPolicy,
    /// Most wildcard subscriptions (filters with `*` or `>`) one connection
    /// may hold, within `max_subscriptions`.
    pub max_wildcard_subscriptions: usize,
    /// Most wildcard subscriptions the connections of one token `sub` may
    /// hold together. Clients sharing one token share this allowance.
    pub max_wildcard_subscriptions_per_subject: usize,
    /// Most wildcard subscriptions in the whole broker.
    pub max_wildcard_subscriptions_total: usize,
    /// Most `*` segments in one filter: with `max_wildcard_filter_segments`
    /// it bounds the trie branches one publish can visit, however many
    /// filters exist.
    pub max_filter_wildcards: usize,
    /// Most segments (`>` included) in one wildcard filter; exact filters
    /// are bounded by `max_topic_length` only.
    pub max_wildcard_filter_segments: usize,
    /// Topics whose wildcard match results are cached (0: no cache); the
    /// cache is emptied whenever a wildcard subscription is added or removed.
    pub wildcard_match_cache: usize,
    /// Most bytes that cache accounts for (topics, results, per-entry
    /// overhead).
    pub wildcard_match_cache_bytes: ByteSize,
}

/// What the broker does when a subscriber's outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowConsumerPolicy {
    /// Exact subscriptions to stored topics catch up from the store by
    /// offset; others are disconnected with 4002.
    CatchUp,
    /// Always disconnect with 4002.
    Disconnect,
}

/// Heartbeat settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// How often the broker pings each connection.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Silence after which a connection is closed with 4004.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// WebSocket buffers and frame compression.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Read buffer per connection, and the most read per syscall. It is
    /// resident for every connection (tungstenite zero-fills it), so small
    /// keeps idle connections cheap; larger frames take more reads.
    pub read_buffer: ByteSize,
    /// Bytes of outgoing frames gathered before a socket write.
    pub write_buffer: ByteSize,
    /// Frame bodies larger than this are deflate-compressed.
    pub compression_threshold: ByteSize,
    /// Deflate level, 0-9.
    pub compression_level: u32,
    /// After the broker sends a close frame, how long it keeps reading and
    /// discarding what the client still sends before closing the TCP
    /// connection (0: close at once). Closing with unread data makes the
    /// kernel send a reset, which can destroy the close frame in flight:
    /// the client of an oversized frame would see 1006 instead of 1009.
    #[serde(with = "humantime_serde")]
    pub close_linger: Duration,
}

/// How acknowledged publishes are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Acknowledge after the store is flushed and its files fsynced;
    /// concurrent publishes share one flush.
    Fsync,
    /// Acknowledge once written to the store; flush every `flush_interval`.
    /// A power loss can lose up to that much acknowledged data.
    Interval,
}

/// History store settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// When a publish acknowledgement is sent.
    pub durability: Durability,
    /// Period of the background flush (both modes).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// sled's page cache size.
    pub cache_capacity: ByteSize,
    /// How often retention limits are enforced.
    #[serde(with = "humantime_serde")]
    pub trim_interval: Duration,
    /// Messages read from the store per step of a replay.
    pub replay_batch: usize,
    /// Most message bytes a replay reads per step (at least one message is
    /// always read): with `replay_batch`, it bounds the memory each
    /// catching-up subscriber holds.
    pub replay_batch_bytes: ByteSize,
    /// Most stored topics; a publish (or subscribe) that would store a new
    /// topic beyond it gets the error `too_many_topics`.
    pub max_topics: usize,
    /// Most message bytes written but not yet flushed (a slow or stalled
    /// disk); beyond it publishes to stored topics get `storage_failed`
    /// until the disk catches up.
    pub max_unflushed_bytes: ByteSize,
    /// What to do when the store is found to have lost acknowledged
    /// messages at start (see docs/operations.md).
    pub on_damage: DamagePolicy,
}

/// What the broker does with stored topics that lost acknowledged messages
/// (a damaged or truncated store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DamagePolicy {
    /// Refuse to start, naming the damaged topics.
    Refuse,
    /// Start, giving each damaged topic a new epoch (its resuming clients
    /// get `reset`) and counting it in `sockeye_store_damaged_topics_total`.
    NewEpoch,
}

/// Retention for topics matching `pattern`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionRule {
    /// Filter selecting the topics this rule applies to.
    pub pattern: String,
    /// False makes matching topics ephemeral: live delivery only.
    pub store: bool,
    /// Most messages kept per topic.
    pub max_messages: u64,
    /// Oldest message kept, by age.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Most payload bytes kept per topic.
    pub max_bytes: ByteSize,
}

/// Shutdown settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long connections get to drain after the close frame.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Window over which the reconnect hints in 1001 close frames are
    /// spread, so clients do not all come back at once.
    #[serde(with = "humantime_serde")]
    pub reconnect_spread: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            data_dir: PathBuf::from("sockeye-data"),
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            max_connections_per_ip: 1_000,
            handshake_rate: 1_000,
            handshake_burst: 2_000,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            api_keys: Vec::new(),
            max_history_page_bytes: ByteSize::mib(4),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::HS256,
            secret: None,
            secret_file: None,
            public_key_file: None,
            private_key_file: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            require_exp: true,
            expiry_warning: Duration::from_secs(30),
            default_subscribe: vec![">".into()],
            default_publish: vec![">".into()],
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_size: ByteSize::mib(1),
            max_inflated_size: ByteSize::mib(4),
            max_topic_length: DEFAULT_MAX_TOPIC_BYTES,
            max_subscriptions: 256,
            outbound_queue: 1024,
            outbound_queue_bytes: ByteSize::mib(4),
            max_pending_acks: 1024,
            publish_rate: 50_000,
            publish_burst: 100_000,
            publish_bytes_rate: ByteSize::mib(64),
            slow_consumer: SlowConsumerPolicy::CatchUp,
            max_wildcard_subscriptions: 64,
            max_wildcard_subscriptions_per_subject: 256,
            max_wildcard_subscriptions_total: 16_384,
            max_filter_wildcards: 4,
            max_wildcard_filter_segments: 16,
            wildcard_match_cache: 4096,
            wildcard_match_cache_bytes: ByteSize::mib(4),
        }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(20),
            timeout: Duration::from_secs(60),
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            read_buffer: ByteSize::kib(2),
            write_buffer: ByteSize::kib(16),
            compression_threshold: ByteSize::kib(1),
            compression_level: 1,
            close_linger: Duration::from_secs(2),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            flush_interval: Duration::from_millis(500),
            cache_capacity: ByteSize::mib(64),
            trim_interval: Duration::from_secs(1),
            replay_batch: 256,
            replay_batch_bytes: ByteSize::mib(1),
            max_topics: 100_000,
            max_unflushed_bytes: ByteSize::mib(64),
            on_damage: DamagePolicy::Refuse,
        }
    }
}

impl Default for RetentionRule {
    fn default() -> Self {
        Self {
            pattern: ">".into(),
            store: true,
            max_messages: 10_000,
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: ByteSize::mib(16),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(10),
            reconnect_spread: Duration::from_secs(5),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            admin: AdminConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            websocket: WebSocketConfig::default(),
            store: StoreConfig::default(),
            retention: vec![RetentionRule::default()],
            shutdown: ShutdownConfig::default(),
            tls: TlsConfig::default(),
            engine: EngineConfig::default(),
        }
    }
}

/// A configuration value that cannot work, with the key that holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration `{key}`: {reason}")]
pub struct ConfigError {
    /// The dotted key, as in the TOML file.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Checks every value that serde cannot check; run once at start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let limits = &self.limits;
        if limits.max_frame_size.as_u64() < 64 {
            return Err(invalid("limits.max_frame_size", "must be at least 64 B"));
        }
        if limits.max_inflated_size < limits.max_frame_size {
            return Err(invalid(
                "limits.max_inflated_size",
                "must be at least limits.max_frame_size",
            ));
        }
        if !(1..=4096).contains(&limits.max_topic_length) {
            return Err(invalid("limits.max_topic_length", "must be 1 to 4096"));
        }
        if limits.outbound_queue == 0 {
            return Err(invalid("limits.outbound_queue", "must be at least 1"));
        }
        if limits.outbound_queue_bytes.as_u64() < 1024
            || limits.outbound_queue_bytes.as_u64() > u64::from(u32::MAX)
        {
            return Err(invalid(
                "limits.outbound_queue_bytes",
                "must be 1 KiB to 4 GiB",
            ));
        }
        if limits.max_wildcard_filter_segments == 0 {
            return Err(invalid(
                "limits.max_wildcard_filter_segments",
                "must be at least 1",
            ));
        }
        if limits.max_pending_acks == 0 {
            return Err(invalid("limits.max_pending_acks", "must be at least 1"));
        }
        if limits.publish_rate > 0 && limits.publish_burst == 0 {
            return Err(invalid(
                "limits.publish_burst",
                "must be at least 1 when publish_rate is set",
            ));
        }
        if self.server.handshake_rate > 0 && self.server.handshake_burst == 0 {
            return Err(invalid(
                "server.handshake_burst",
                "must be at least 1 when handshake_rate is set",
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(invalid(
                "tls.cert_file",
                "set both cert_file and key_file, or neither",
            ));
        }
        if self.tls.admin && !self.tls.enabled() {
            return Err(invalid("tls.admin", "needs tls.cert_file and tls.key_file"));
        }
        if self.tls.watch_interval.is_zero() {
            return Err(invalid("tls.watch_interval", "must be non-zero"));
        }
        for origin in &self.server.allowed_origins {
            if origin != "*" && !origin.contains("://") {
                return Err(invalid(
                    "server.allowed_origins",
                    format!("`{origin}` is not `*` or scheme://host[:port]"),
                ));
            }
        }
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        if self.heartbeat.interval.is_zero() || self.heartbeat.timeout <= self.heartbeat.interval {
            return Err(invalid(
                "heartbeat.timeout",
                "interval must be non-zero and timeout longer than interval",
            ));
        }
        if self.websocket.compression_level > 9 {
            return Err(invalid("websocket.compression_level", "must be 0 to 9"));
        }
        if self.websocket.read_buffer.as_u64() < 256 {
            return Err(invalid("websocket.read_buffer", "must be at least 256 B"));
        }
        if self.store.max_topics == 0 {
            return Err(invalid("store.max_topics", "must be at least 1"));
        }
        if self.store.max_unflushed_bytes.as_u64() < self.limits.max_frame_size.as_u64() {
            return Err(invalid(
                "store.max_unflushed_bytes",
                "must be at least limits.max_frame_size",
            ));
        }
        if self.store.replay_batch == 0 {
            return Err(invalid("store.replay_batch", "must be at least 1"));
        }
        if self.store.flush_interval.is_zero() || self.store.trim_interval.is_zero() {
            return Err(invalid(
                "store.flush_interval",
                "flush_interval and trim_interval must be non-zero",
            ));
        }
        for (index, rule) in self.retention.iter().enumerate() {
            TopicFilter::parse(&rule.pattern, limits.max_topic_length)
                .map_err(|err| invalid(format!("retention[{index}].pattern"), err.to_string()))?;
            if rule.store && rule.max_messages == 0 {
                return Err(invalid(
                    format!("retention[{index}].max_messages"),
                    "must be at least 1 for a stored pattern",
                ));
            }
        }
        for (key, filters) in [
            ("auth.default_subscribe", &self.auth.default_subscribe),
            ("auth.default_publish", &self.auth.default_publish),
        ] {
            for filter in filters {
                TopicFilter::parse(filter, limits.max_topic_length)
                    .map_err(|err| invalid(key, format!("`{filter}`: {err}")))?;
            }
        }
        let auth = &self.auth;
        // The verifier subtracts the leeway from the current unix time; an
        // hour already forgives any clock a host could plausibly keep.
        if auth.leeway > Duration::from_secs(3600) {
            return Err(invalid("auth.leeway", "must be at most 1h"));
        }
        if auth.algorithm.is_hmac() {
            if auth.secret.is_some() && auth.secret_file.is_some() {
                return Err(invalid(
                    "auth.secret",
                    "set secret or secret_file, not both",
                ));
            }
            if auth.secret.as_ref().is_some_and(|secret| secret.len() < 32) {
                return Err(invalid("auth.secret", "must be at least 32 bytes"));
            }
        } else if auth.public_key_file.is_none() {
            return Err(invalid(
                "auth.public_key_file",
                "required for RS256 and ES256",
            ));
        }
        Ok(())
    }

    /// The frame compression settings.
    pub fn compression(&self) -> Compression {
        Compression {
            threshold: usize::try_from(self.websocket.compression_threshold.as_u64())
                .unwrap_or(usize::MAX),
            level: self.websocket.compression_level,
        }
    }

    /// The limits announced in `welcome`.
    pub fn wire_limits(&self) -> Limits {
        Limits {
            max_frame_bytes: self.limits.max_frame_size.as_u64(),
            max_inflated_bytes: self.limits.max_inflated_size.as_u64(),
            compression_threshold_bytes: self.websocket.compression_threshold.as_u64(),
            max_topic_bytes: self.limits.max_topic_length as u64,
            max_subscriptions: self.limits.max_subscriptions as u64,
            publish_rate_per_sec: self.limits.publish_rate,
            publish_burst: self.limits.publish_burst,
        }
    }
}
