//! One benchmark connection to any target: dialing (spread over several
//! loopback source addresses, with bounded concurrency, retries and a
//! timeout), the greeting, subscribing, publishing, and reading events.
//!
//! The three targets differ only here: Sockeye and the baseline speak the
//! Sockeye frame format (MessagePack frames, `docs/protocol.md`), nats-server
//! the NATS text protocol inside WebSocket binary frames. Scenarios see one
//! [`Client`] type and one [`Event`] type.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use flate2::{Compress, Decompress, FlushCompress, FlushDecompress, Status};
use serde::{Deserialize, Serialize};
use sockeye_protocol::{
    ClientMessage, Compression, Payload, Position, SUBPROTOCOL, ServerMessage, Subscribed, frame,
};
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;

use crate::nats::{self, NatsOp, NatsReader};
use crate::wire::{self, Stamp};
use crate::ws::{WsConfig, WsError, WsStream};

/// Largest body a compressed frame may inflate to on the generator side.
const MAX_INFLATED: usize = 64 << 20;

/// Connection attempts per dial before giving up.
const DIAL_ATTEMPTS: u32 = 3;

/// The system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Target {
    /// The Sockeye broker (docs/protocol.md).
    Sockeye,
    /// nats-server over WebSocket, NATS text protocol.
    Nats,
    /// The minimal broadcaster of this crate (`sockeye-bench baseline`).
    Baseline,
}

impl Target {
    /// The name used in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Target::Sockeye => "sockeye",
            Target::Nats => "nats",
            Target::Baseline => "baseline",
        }
    }

    fn speaks_sockeye_frames(self) -> bool {
        !matches!(self, Target::Nats)
    }
}

/// What a connection is for; the baseline needs to know its publishers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role<'a> {
    /// Receives (or only holds the connection).
    Subscriber,
    /// Publishes to this topic.
    Publisher(&'a str),
}

/// How to reach the target and how to open connections to it.
#[derive(Debug, Clone)]
pub(crate) struct DialSettings {
    /// `ws://host:port/path`.
    pub(crate) url: String,
    /// The Sockeye token (sent as `Authorization: Bearer`).
    pub(crate) token: Option<String>,
    /// Source addresses to spread connections over: 127.0.0.1 ..= 127.0.0.N.
    pub(crate) source_addresses: u8,
    /// Connections in their TCP connect or handshake at once.
    pub(crate) concurrency: usize,
    /// Time allowed for one connect plus handshake plus greeting.
    pub(crate) timeout: Duration,
    /// WebSocket read buffer per connection.
    pub(crate) read_buffer: usize,
    /// WebSocket write buffer of publishers (subscribers write eagerly).
    pub(crate) write_buffer: usize,
}

/// Opens connections to one target.
#[derive(Debug)]
pub(crate) struct Dialer {
    target: Target,
    settings: DialSettings,
    addr: SocketAddr,
    /// `host:port` of the URL, for the `Host` header.
    host: String,
    /// Path and query of the URL.
    path: String,
    sources: Vec<IpAddr>,
    next_source: AtomicUsize,
    gate: Semaphore,
}

impl Dialer {
    /// Resolves the target address and plans the source addresses.
    pub(crate) async fn new(target: Target, settings: DialSettings) -> anyhow::Result<Self> {
        let authority = settings
            .url
            .strip_prefix("ws://")
            .with_context(|| format!("{}: only ws:// URLs are supported", settings.url))?;
        let (host_port, path) = match authority.find('/') {
            Some(slash) => (&authority[..slash], &authority[slash..]),
            None => (authority, "/"),
        };
        let addr = tokio::net::lookup_host(host_port)
            .await
            .with_context(|| format!("cannot resolve {host_port}"))?
            .next()
            .with_context(|| format!("{host_port} resolves to no address"))?;
        // Several source addresses only make sense on loopback, where the
        // whole 127.0.0.0/8 is local; elsewhere the kernel picks the source.
        let sources = match addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => (1..=settings.source_addresses.max(1))
                .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
                .collect(),
            _ => Vec::new(),
        };
        Ok(Self {
            target,
            gate: Semaphore::new(settings.concurrency.max(1)),
            host: host_port.to_owned(),
            path: path.to_owned(),
            settings,
            addr,
            sources,
            next_source: AtomicUsize::new(0),
        })
    }

    /// A dialer to the same target that authenticates with `token`.
    pub(crate) async fn with_token(&self, token: String) -> anyhow::Result<Self> {
        let settings = DialSettings {
            token: Some(token),
            ..self.settings.clone()
        };
        Self::new(self.target, settings).await
    }

    /// The target this dialer connects to.
    pub(crate) fn target(&self) -> Target {
        self.target
    }

    /// Connects, performs the WebSocket handshake and the greeting (waits for
    /// `welcome`, or for NATS `INFO` and the `PONG` after `CONNECT`).
    pub(crate) async fn open(&self, role: Role<'_>) -> anyhow::Result<Client> {
        let _permit = self.gate.acquire().await.context("dialer closed")?;
        let mut last_error = None;
        for attempt in 0..DIAL_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            match tokio::time::timeout(self.settings.timeout, self.try_open(role)).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(err)) => {
                    // A refusal by HTTP status (401, 403, 503) will not change
                    // on a retry.
                    if err.downcast_ref::<Refused>().is_some() {
                        return Err(err);
                    }
                    last_error = Some(err);
                }
                Err(_) => {
                    last_error = Some(anyhow::anyhow!(
                        "no greeting within {:?}",
                        self.settings.timeout
                    ));
                }
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!(
                "cannot connect to {} after {DIAL_ATTEMPTS} attempts",
                self.settings.url
            )))
    }

    async fn try_open(&self, role: Role<'_>) -> anyhow::Result<Client> {
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .context("cannot create a socket")?;
        if !self.sources.is_empty() {
            let index = self.next_source.fetch_add(1, Ordering::Relaxed) % self.sources.len();
            let source = SocketAddr::new(self.sources[index], 0);
            socket
                .bind(source)
                .with_context(|| format!("cannot bind to source address {source}"))?;
        }
        let stream = socket
            .connect(self.addr)
            .await
            .with_context(|| format!("cannot connect to {}", self.addr))?;
        stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;

        let mut path = self.path.clone();
        if let (Target::Baseline, Role::Publisher(topic)) = (self.target, role) {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str("publish=");
            path.push_str(topic);
        }
        let bearer;
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if self.target.speaks_sockeye_frames() {
            headers.push(("Sec-WebSocket-Protocol", SUBPROTOCOL));
        }
        if let (Target::Sockeye, Some(token)) = (self.target, &self.settings.token) {
            if token.bytes().any(|b| b.is_ascii_control()) {
                bail!("the token is not a valid header value");
            }
            bearer = format!("Bearer {token}");
            headers.push(("Authorization", &bearer));
        }
        let write_buffer = match role {
            Role::Publisher(_) => self.settings.write_buffer,
            Role::Subscriber => 0,
        };
        let config = WsConfig {
            read_buffer: self.settings.read_buffer,
            write_buffer,
            max_message: MAX_INFLATED,
        };
        let ws = WsStream::handshake(stream, &self.host, &path, &headers, config)
            .await
            .map_err(describe_handshake_error)?;
        let mut client = Client {
            ws,
            target: self.target,
            nats: NatsReader::default(),
            queued: VecDeque::new(),
            next_id: 1,
            compression: Compression::default(),
            pong_owed: false,
        };
        client.greet().await?;
        Ok(client)
    }
}

/// The target answered the upgrade request with an HTTP error status.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Names the HTTP status and body of a refused handshake.
fn describe_handshake_error(err: WsError) -> anyhow::Error {
    if let WsError::Refused { .. } = &err {
        return Refused(err.to_string()).into();
    }
    anyhow::Error::new(err).context("WebSocket handshake failed")
}

/// A message received on a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivered {
    /// The stamp the publisher put in the payload.
    pub(crate) stamp: Stamp,
    /// The topic's epoch (0 when not stored, and for other targets).
    pub(crate) epoch: u64,
    /// The message's offset (0 when not stored, and for other targets).
    pub(crate) offset: u64,
}

/// Something the target sent that a scenario may care about.
#[derive(Debug, Clone)]
pub(crate) enum Event {
    /// A delivery on a subscription.
    Delivery(Delivered),
    /// `published`: a publish with `ack: true` is stored.
    Acked {
        /// The request id.
        id: u64,
        /// The epoch the message was stored in (0 if ephemeral).
        epoch: u64,
        /// The offset it was stored at (0 if ephemeral).
        offset: u64,
    },
    /// `subscribed`.
    Subscribed(Subscribed),
    /// NATS `PONG` or Sockeye `pong`.
    Pong,
    /// `error` (Sockeye) or `-ERR` (NATS).
    Failed {
        /// The request id, when known.
        id: Option<u64>,
        /// Code and message.
        reason: String,
    },
    /// A `gap` or `reset`: the subscription skipped messages.
    Interrupted(String),
    /// Anything else (`welcome`, `token_expiring`, NATS `+OK`, ...).
    Other,
}

/// The answer to a subscribe.
#[derive(Debug, Clone, Default)]
pub(crate) struct SubscribeInfo {
    /// The topic's epoch (Sockeye stored topics; 0 otherwise).
    pub(crate) epoch: u64,
    /// The newest stored offset when subscribing.
    pub(crate) last_offset: u64,
    /// The first offset this subscription delivers.
    pub(crate) next_offset: u64,
    /// Whether the requested position was honoured in full.
    pub(crate) complete: bool,
}

/// An open, greeted connection.
#[derive(Debug)]
pub(crate) struct Client {
    ws: WsStream,
    target: Target,
    /// The NATS byte stream across frames.
    nats: NatsReader,
    /// Events read while waiting for a reply, handed out before new ones.
    queued: VecDeque<Event>,
    next_id: u64,
    compression: Compression,
    /// A NATS `PING` was received and its `PONG` not yet written.
    pong_owed: bool,
}

impl Client {
    async fn greet(&mut self) -> anyhow::Result<()> {
        if self.target.speaks_sockeye_frames() {
            let frame = self.next_frame().await?.context("closed before welcome")?;
            let body = frame::open(&frame, MAX_INFLATED).context("bad first frame")?;
            match ServerMessage::decode(&body).context("bad first frame")? {
                ServerMessage::Welcome(welcome) => {
                    self.compression.threshold =
                        usize::try_from(welcome.limits.compression_threshold_bytes)
                            .unwrap_or(usize::MAX);
                    Ok(())
                }
                other => bail!("expected welcome, got {}", other.kind()),
            }
        } else {
            loop {
                match self.next_nats_op().await? {
                    NatsOp::Info => break,
                    NatsOp::Err(text) => bail!("nats-server refused: {text}"),
                    _ => {}
                }
            }
            self.send(nats::connect_command()).await?;
            loop {
                match self.next_nats_op().await? {
                    NatsOp::Pong => return Ok(()),
                    NatsOp::Err(text) => bail!("nats-server refused CONNECT: {text}"),
                    _ => {}
                }
            }
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Subscribes and waits until the target confirms it.
    pub(crate) async fn subscribe(
        &mut self,
        topic: &str,
        position: Option<Position>,
    ) -> anyhow::Result<SubscribeInfo> {
        if !self.target.speaks_sockeye_frames() {
            let sid = self.next_id();
            self.send(nats::subscribe_command(topic, sid)).await?;
            loop {
                match self.read_event().await? {
                    Event::Pong => return Ok(SubscribeInfo::default()),
                    Event::Failed { reason, .. } => bail!("SUB {topic} refused: {reason}"),
                    Event::Other => {}
                    other => self.queued.push_back(other),
                }
            }
        }
        let id = self.next_id();
        let request = ClientMessage::Subscribe {
            id,
            topic: topic.to_owned(),
            position,
        };
        self.send(request.encode_frame(&self.compression)).await?;
        loop {
            match self.read_event().await? {
                Event::Subscribed(reply) if reply.id == id => {
                    return Ok(SubscribeInfo {
                        epoch: reply.epoch,
                        last_offset: reply.last_offset,
                        next_offset: reply.next_offset,
                        complete: reply.complete,
                    });
                }
                Event::Failed {
                    id: Some(failed),
                    reason,
                    ..
                } if failed == id => bail!("subscribe to {topic} refused: {reason}"),
                other => self.queued.push_back(other),
            }
        }
    }

    /// Encodes one publish. Returns the request id (Sockeye frames only) and
    /// the binary WebSocket message to write.
    pub(crate) fn publish_message(
        &mut self,
        topic: &str,
        data: &[u8],
        ack: bool,
    ) -> (Option<u64>, Bytes) {
        if !self.target.speaks_sockeye_frames() {
            return (None, nats::publish_command(topic, data));
        }
        let id = self.next_id();
        let request = ClientMessage::Publish {
            id,
            topic: topic.to_owned(),
            payload: Payload::binary(data),
            ack,
        };
        let plain = request.encode_frame(&Compression::OFF);
        (Some(id), compress_frame(plain, &self.compression))
    }

    /// Buffers a binary message for sending (written at the latest by
    /// [`Client::flush`]).
    pub(crate) async fn feed(&mut self, message: Bytes) -> anyhow::Result<()> {
        self.ws.feed(&message).await.context("write failed")
    }

    /// Writes everything buffered.
    pub(crate) async fn flush(&mut self) -> anyhow::Result<()> {
        self.ws.flush().await.context("write failed")
    }

    /// Writes one binary message now.
    pub(crate) async fn send(&mut self, message: Bytes) -> anyhow::Result<()> {
        self.ws.send(&message).await.context("write failed")
    }

    /// The next event. Cancel-safe: nothing read is lost if the future is
    /// dropped (it can be used as a `select!` branch).
    pub(crate) async fn read_event(&mut self) -> anyhow::Result<Event> {
        if let Some(event) = self.queued.pop_front() {
            return Ok(event);
        }
        if self.target.speaks_sockeye_frames() {
            loop {
                let frame = self
                    .ws
                    .next()
                    .await
                    .map_err(read_error)?
                    .context("the target closed the connection")?;
                if let Some(event) = sockeye_event(frame)? {
                    return Ok(event);
                }
            }
        }
        let op = self.next_nats_op().await?;
        nats_event(op, &self.nats)
    }

    /// The next event among the frames already received, without reading
    /// the socket (so without waiting): `None` when none is complete. A
    /// subscriber drains these after each wake-up instead of going back
    /// through `select!` for every delivery.
    pub(crate) fn buffered_event(&mut self) -> Option<anyhow::Result<Event>> {
        if let Some(event) = self.queued.pop_front() {
            return Some(Ok(event));
        }
        if self.target.speaks_sockeye_frames() {
            loop {
                let frame = match self.ws.next_buffered() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return None,
                    Err(err) => return Some(Err(read_error(err))),
                };
                match sockeye_event(frame) {
                    Ok(Some(event)) => return Some(Ok(event)),
                    Ok(None) => {}
                    Err(err) => return Some(Err(err)),
                }
            }
        }
        loop {
            match self.nats.next_op() {
                Ok(Some(op)) => {
                    // A PONG owed is written by the next read_event.
                    if op == NatsOp::Ping {
                        self.pong_owed = true;
                    }
                    return Some(nats_event(op, &self.nats));
                }
                Ok(None) => {}
                Err(err) => return Some(Err(err.into())),
            }
            match self.ws.next_buffered() {
                Ok(Some(frame)) => self.nats.push(frame),
                Ok(None) => return None,
                Err(err) => return Some(Err(read_error(err))),
            }
        }
    }

    /// Sends a close frame and waits (briefly) for the target to close.
    pub(crate) async fn close(self) {
        self.ws.close(Duration::from_secs(2)).await;
    }

    /// The next binary frame's bytes (a copy), or `None` once closed; a
    /// close frame is an error that names its code. Only for the few frames
    /// of a greeting: deliveries are parsed in place by
    /// [`Client::read_event`].
    async fn next_frame(&mut self) -> anyhow::Result<Option<Bytes>> {
        Ok(self
            .ws
            .next()
            .await
            .map_err(read_error)?
            .map(Bytes::copy_from_slice))
    }

    async fn next_nats_op(&mut self) -> anyhow::Result<NatsOp> {
        loop {
            if self.pong_owed {
                self.send(nats::pong_command()).await?;
                self.pong_owed = false;
            }
            if let Some(op) = self.nats.next_op()? {
                if op == NatsOp::Ping {
                    self.pong_owed = true;
                }
                return Ok(op);
            }
            let frame = self
                .ws
                .next()
                .await
                .map_err(read_error)?
                .context("nats-server closed the connection")?;
            self.nats.push(frame);
        }
    }
}

/// A read error as the scenarios report it: a close by the target names
/// its code and reason.
fn read_error(err: WsError) -> anyhow::Error {
    match err {
        WsError::Closed { .. } => anyhow::anyhow!("{err}"),
        other => anyhow::Error::new(other).context("read failed"),
    }
}

/// Turns a NATS operation just read by `reader` into an event.
fn nats_event(op: NatsOp, reader: &NatsReader) -> anyhow::Result<Event> {
    Ok(match op {
        NatsOp::Msg => Event::Delivery(Delivered {
            stamp: Stamp::read(reader.payload()).context("a NATS message without a stamp")?,
            epoch: 0,
            offset: 0,
        }),
        NatsOp::Pong => Event::Pong,
        NatsOp::Err(reason) => Event::Failed { id: None, reason },
        NatsOp::Info | NatsOp::Ok | NatsOp::Ping => Event::Other,
    })
}

/// Turns one Sockeye-format frame into an event; `None` for frames that
/// matter to no scenario.
fn sockeye_event(frame: &[u8]) -> anyhow::Result<Option<Event>> {
    match frame.first() {
        Some(0) => body_event(&frame[1..]),
        Some(&frame::FLAG_DEFLATE) => INFLATER.with(|inflater| {
            let mut inflater = inflater.borrow_mut();
            let body = inflater.inflate(&frame[1..])?;
            body_event(body)
        }),
        Some(flags) => bail!("bad frame: unknown flags {flags:#04x}"),
        None => bail!("bad frame: empty"),
    }
}

/// Compresses a plain frame as the protocol says a sender should: when its
/// body is over the threshold and compression makes it smaller.
///
/// Same result as `encode_frame` with compression, but with one reused
/// compressor per thread: a fresh one allocates and clears a few hundred KiB
/// per frame (about 170 us per 1 KiB frame, against 19 us reused), which
/// would cap a publisher at a few thousand messages per second.
fn compress_frame(plain: Bytes, compression: &Compression) -> Bytes {
    let body = &plain[1..];
    if body.len() <= compression.threshold {
        return plain;
    }
    DEFLATER.with(|deflater| {
        let mut deflater = deflater.borrow_mut();
        let (encoder, level) = &mut *deflater;
        if *level != compression.level {
            *encoder = Compress::new(flate2::Compression::new(compression.level.min(9)), false);
            *level = compression.level;
        }
        encoder.reset();
        let mut out = Vec::with_capacity(body.len() / 2 + 64);
        out.push(frame::FLAG_DEFLATE);
        loop {
            let consumed = usize::try_from(encoder.total_in()).unwrap_or(usize::MAX);
            match encoder.compress_vec(
                body.get(consumed..).unwrap_or_default(),
                &mut out,
                FlushCompress::Finish,
            ) {
                Ok(Status::StreamEnd) => break,
                Ok(_) => out.reserve(out.capacity().max(1024)),
                // Compressing into a Vec cannot fail; if it did, the plain
                // frame is always correct.
                Err(_) => return plain.clone(),
            }
        }
        if out.len() < plain.len() {
            Bytes::from(out)
        } else {
            plain.clone()
        }
    })
}

thread_local! {
    /// Each worker thread's compressor and its level.
    static DEFLATER: RefCell<(Compress, u32)> =
        RefCell::new((Compress::new(flate2::Compression::new(1), false), 1));

    /// Each worker thread's inflater: subscribers inflate thousands of
    /// frames per second, and a fresh decoder per frame (as
    /// `frame::open` makes) allocates and clears tens of KiB each time,
    /// which would make the generator, not the target, the bottleneck.
    static INFLATER: RefCell<Inflater> = RefCell::new(Inflater::new());
}

/// A raw-deflate decoder and its output buffer, reused frame after frame.
struct Inflater {
    decoder: Decompress,
    out: Vec<u8>,
}

impl Inflater {
    fn new() -> Self {
        Self {
            decoder: Decompress::new(false),
            out: Vec::with_capacity(64 * 1024),
        }
    }

    /// Inflates one complete raw deflate stream, at most [`MAX_INFLATED`] bytes.
    fn inflate(&mut self, compressed: &[u8]) -> anyhow::Result<&[u8]> {
        self.decoder.reset(false);
        self.out.clear();
        loop {
            if self.out.len() == self.out.capacity() {
                if self.out.len() >= MAX_INFLATED {
                    bail!("bad frame: inflates past {MAX_INFLATED} bytes");
                }
                self.out.reserve(self.out.len().max(4096));
            }
            let consumed = usize::try_from(self.decoder.total_in()).unwrap_or(usize::MAX);
            let produced_before = self.out.len();
            let status = self
                .decoder
                .decompress_vec(
                    compressed.get(consumed..).unwrap_or_default(),
                    &mut self.out,
                    FlushDecompress::None,
                )
                .context("bad frame: corrupt deflate stream")?;
            if status == Status::StreamEnd {
                return Ok(&self.out);
            }
            let moved =
                self.decoder.total_in() as usize != consumed || self.out.len() != produced_before;
            if !moved && self.out.len() < self.out.capacity() {
                bail!("bad frame: truncated deflate stream");
            }
        }
    }
}

/// Turns a frame body into an event.
fn body_event(body: &[u8]) -> anyhow::Result<Option<Event>> {
    let view = wire::scan(body).context("bad frame body")?;
    let kind = view.kind.clone().map(|range| &body[range]).unwrap_or(b"");
    match kind {
        // The baseline forwards publish frames as they were sent.
        b"message" | b"publish" => {
            let stamp = view
                .payload
                .and_then(|range| wire::bin_contents(&body[range]))
                .and_then(Stamp::read)
                .context("a delivery without a benchmark stamp")?;
            Ok(Some(Event::Delivery(Delivered {
                stamp,
                epoch: view.epoch.unwrap_or(0),
                offset: view.offset.unwrap_or(0),
            })))
        }
        b"published" => Ok(Some(Event::Acked {
            id: view.id.context("published without an id")?,
            epoch: view.epoch.unwrap_or(0),
            offset: view.offset.unwrap_or(0),
        })),
        _ => Ok(
            match ServerMessage::decode(&Bytes::copy_from_slice(body)).context("bad frame")? {
                ServerMessage::Subscribed(reply) => Some(Event::Subscribed(reply)),
                ServerMessage::Pong { .. } => Some(Event::Pong),
                ServerMessage::Error { id, code, message } => Some(Event::Failed {
                    id,
                    reason: format!("{}: {message}", code.as_str()),
                }),
                ServerMessage::Gap { topic, range, .. } => Some(Event::Interrupted(format!(
                    "gap on {topic}: offsets {}..={} skipped",
                    range.from, range.to
                ))),
                ServerMessage::Reset { topic, epoch } => Some(Event::Interrupted(format!(
                    "reset of {topic}: new epoch {epoch}"
                ))),
                _ => None,
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use sockeye_protocol::{Delivery, ErrorCode};

    use super::*;

    fn message_frame(size: usize, seq: u64) -> Bytes {
        let mut data = vec![b'x'; size];
        Stamp {
            stream: 1,
            seq,
            sent_ns: 5,
        }
        .write(&mut data);
        ServerMessage::Message(Delivery {
            topic: "bench.t".into(),
            epoch: 2,
            offset: seq + 1,
            timestamp_ms: 0,
            publisher: "bench".into(),
            payload: Payload::binary(&data),
        })
        .encode_frame(&Compression::default())
    }

    #[test]
    fn compressed_and_plain_deliveries_decode_with_one_reused_inflater() {
        for (size, seq) in [(16 * 1024, 7), (100, 8), (4096, 9), (64 * 1024, 10)] {
            let frame = message_frame(size, seq);
            assert_eq!(frame[0] == frame::FLAG_DEFLATE, size > 1024);
            match sockeye_event(&frame).unwrap() {
                Some(Event::Delivery(delivered)) => {
                    assert_eq!(delivered.stamp.seq, seq);
                    assert_eq!(delivered.offset, seq + 1);
                    assert_eq!(delivered.epoch, 2);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn published_frames_compress_like_the_protocol_and_decode_with_it() {
        let mut data = crate::scenario::payload_template(16 * 1024);
        Stamp {
            stream: 0,
            seq: 1,
            sent_ns: 2,
        }
        .write(&mut data);
        let request = ClientMessage::Publish {
            id: 5,
            topic: "bench.x".into(),
            payload: Payload::binary(&data),
            ack: false,
        };
        for _ in 0..3 {
            let frame = compress_frame(
                request.encode_frame(&Compression::OFF),
                &Compression::default(),
            );
            assert_eq!(frame[0], frame::FLAG_DEFLATE);
            assert!(frame.len() < data.len() / 2);
            let body = frame::open(&frame, 1 << 20).unwrap();
            assert_eq!(ClientMessage::decode(&body).unwrap(), request);
        }
        let small = ClientMessage::Ping { id: 1 }.encode_frame(&Compression::OFF);
        assert_eq!(
            compress_frame(small.clone(), &Compression::default()),
            small
        );
        let off = compress_frame(request.encode_frame(&Compression::OFF), &Compression::OFF);
        assert_eq!(off[0], 0);
    }

    #[test]
    fn broken_frames_are_errors() {
        let frame = message_frame(16 * 1024, 1);
        assert!(sockeye_event(&frame.slice(..frame.len() / 2)).is_err());
        assert!(sockeye_event(&Bytes::from_static(&[0x01, 0xff, 0xff])).is_err());
        assert!(sockeye_event(&Bytes::from_static(&[0x02, 0x80])).is_err());
        assert!(sockeye_event(&Bytes::new()).is_err());
        // A delivery whose payload carries no stamp is not ours.
        let foreign = ServerMessage::Message(Delivery {
            topic: "t".into(),
            epoch: 0,
            offset: 0,
            timestamp_ms: 0,
            publisher: "p".into(),
            payload: Payload::binary(b"hello"),
        })
        .encode_frame(&Compression::OFF);
        assert!(sockeye_event(&foreign).is_err());
        // After a failure the thread's inflater still works.
        assert!(matches!(
            sockeye_event(&message_frame(2048, 3)),
            Ok(Some(Event::Delivery(_)))
        ));
    }

    #[test]
    fn replies_become_events() {
        let error = ServerMessage::Error {
            id: Some(4),
            code: ErrorCode::Forbidden,
            message: "no".into(),
        }
        .encode_frame(&Compression::OFF);
        match sockeye_event(&error).unwrap() {
            Some(Event::Failed { id, reason }) => {
                assert_eq!(id, Some(4));
                assert_eq!(reason, "forbidden: no");
            }
            other => panic!("{other:?}"),
        }
        let ack = ServerMessage::Published {
            id: 9,
            epoch: 3,
            offset: 70,
        }
        .encode_frame(&Compression::OFF);
        assert!(matches!(
            sockeye_event(&ack).unwrap(),
            Some(Event::Acked {
                id: 9,
                epoch: 3,
                offset: 70
            })
        ));
    }
}
