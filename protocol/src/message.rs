//! Every message kind in both directions, and its MessagePack codec.
//!
//! A body is a MessagePack map with string keys. The `type` key names the
//! kind; the other keys are listed on each variant. Unknown keys are ignored,
//! so fields can be added without a version bump. Encoding writes `type`
//! first and then the fields in the order documented in `docs/protocol.md`.

use std::convert::Infallible;

use bytes::Bytes;
use rmp::encode::{self, ByteBuf, ValueWriteError};

use crate::codes::ErrorCode;
use crate::error::{DecodeError, MessageError};
use crate::frame::{Compression, FrameBuf};
use crate::limits::Limits;
use crate::msgpack::{Fields, validate_single_value};

/// The protocol version this crate speaks; sent in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The WebSocket subprotocol name for this version. Clients should offer it;
/// the broker selects it when offered.
pub const SUBPROTOCOL: &str = "sockeye.v1";

/// A client-chosen request id, echoed in the one reply to that request.
pub type RequestId = u64;

/// An application payload: exactly one complete MessagePack value, kept as
/// its encoded bytes and carried through the broker untouched.
///
/// ```
/// use sockeye_protocol::Payload;
/// let raw = Payload::binary(b"hello");
/// assert_eq!(raw.as_binary(), Some(&b"hello"[..]));
/// let value = Payload::from_msgpack(vec![0x93, 0x01, 0x02, 0x03]).unwrap(); // [1, 2, 3]
/// assert_eq!(value.as_msgpack(), &[0x93, 0x01, 0x02, 0x03]);
/// assert!(Payload::from_msgpack(vec![0x93, 0x01]).is_err()); // truncated array
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(Bytes);

impl Payload {
    /// Wraps already-encoded MessagePack, checking that it is exactly one
    /// complete value.
    pub fn from_msgpack(bytes: impl Into<Bytes>) -> Result<Self, DecodeError> {
        let bytes = bytes.into();
        validate_single_value(&bytes)?;
        Ok(Self(bytes))
    }

    /// Wraps raw bytes as a MessagePack `bin` value.
    pub fn binary(data: &[u8]) -> Self {
        let mut out = Vec::with_capacity(data.len() + 5);
        write_msgpack(&mut out, |buf| encode::write_bin(buf, data));
        Self(Bytes::from(out))
    }

    /// The encoded MessagePack value.
    pub fn as_msgpack(&self) -> &[u8] {
        &self.0
    }

    /// The encoded MessagePack value, as shared bytes.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// If the payload is a MessagePack `bin` value, its contents.
    pub fn as_binary(&self) -> Option<&[u8]> {
        let mut rd = &self.0[..];
        let len = rmp::decode::read_bin_len(&mut rd).ok()? as usize;
        (rd.len() == len).then_some(rd)
    }

    /// Size of the encoded value in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for a zero-length payload, which no valid payload is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

/// Where a subscription to a stored topic starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// Continue after `offset` of `epoch`: the first message delivered is
    /// `offset + 1`. `offset: 0` means from the start of that epoch.
    After {
        /// The epoch the client saw.
        epoch: u64,
        /// The last offset the client processed.
        offset: u64,
    },
    /// From the oldest message still retained.
    Oldest,
    /// The last `count` retained messages, then live ones.
    Last {
        /// How many messages to replay.
        count: u64,
    },
}

/// A message from a client to the broker. Every request carries an `id`
/// and gets exactly one reply with that id (`publish` with `ack: false`
/// gets a reply only if it fails).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientMessage {
    /// `subscribe`: start receiving messages on `topic` (a filter).
    Subscribe {
        /// Request id.
        id: RequestId,
        /// The filter; may use `*` and `>`.
        topic: String,
        /// Where to start; absent means live messages only.
        position: Option<Position>,
    },
    /// `unsubscribe`: stop a subscription made with the same filter.
    Unsubscribe {
        /// Request id.
        id: RequestId,
        /// The filter as given to `subscribe`.
        topic: String,
    },
    /// `publish`: send `payload` to everyone subscribed to `topic`.
    Publish {
        /// Request id.
        id: RequestId,
        /// The topic (no wildcards).
        topic: String,
        /// Any MessagePack value.
        payload: Payload,
        /// Whether to reply `published` once stored (default true).
        ack: bool,
    },
    /// `ping`: an application-level liveness check; answered with `pong`.
    Ping {
        /// Request id.
        id: RequestId,
    },
    /// `refresh`: replace the connection's token before it expires.
    Refresh {
        /// Request id.
        id: RequestId,
        /// The new JWT, for the same `sub`.
        token: String,
    },
}

/// The first frame on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The broker's id for this connection: the `id` the admin API lists it
    /// under.
    pub connection_id: u64,
    /// [`PROTOCOL_VERSION`] of the broker.
    pub version: u32,
    /// The `sub` claim of the token the connection authenticated with.
    pub subject: String,
    /// How often the broker sends WebSocket pings, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Silence after which the broker closes the connection (4004).
    pub heartbeat_timeout_ms: u64,
    /// When the token expires, unix milliseconds; absent if it never does.
    pub token_expires_at: Option<u64>,
    /// The limits in force on this connection.
    pub limits: Limits,
}

/// The reply to a successful `subscribe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// Request id.
    pub id: RequestId,
    /// The filter, as subscribed.
    pub topic: String,
    /// True if the topic's history is stored, so offsets can be resumed from.
    /// False for wildcard filters and ephemeral topics.
    pub stored: bool,
    /// The topic's current epoch (0 when not stored).
    pub epoch: u64,
    /// The offset of the newest message at the moment of subscribing
    /// (0 when none, or not stored).
    pub last_offset: u64,
    /// The first offset this subscription will deliver: replayed messages
    /// start here and continue without a gap into live ones.
    pub next_offset: u64,
    /// True if the requested position was honoured in full.
    pub complete: bool,
    /// Offsets that were asked for but are no longer retained.
    pub gap: Option<OffsetRange>,
    /// True if the requested epoch is not the topic's current one: the
    /// offsets the client had are void and delivery restarts in `epoch`.
    pub epoch_changed: bool,
}

/// The offset of the first message of every epoch.
pub const FIRST_OFFSET: u64 = 1;

/// Where one message of a stored topic sits: its epoch and its offset in
/// it. A position names one message for ever (section 7.1 of the protocol):
/// no two messages of a topic ever share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamPosition {
    /// The stream's epoch.
    pub epoch: u64,
    /// The message's offset, from [`FIRST_OFFSET`].
    pub offset: u64,
}

impl StreamPosition {
    /// The position of the message right after this one in the same epoch.
    pub fn next(self) -> Self {
        Self {
            epoch: self.epoch,
            offset: self.offset + 1,
        }
    }
}

impl std::fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.offset)
    }
}

/// An inclusive range of offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetRange {
    /// First offset in the range.
    pub from: u64,
    /// Last offset in the range (inclusive).
    pub to: u64,
}

/// A message delivered to a subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The topic it was published to.
    pub topic: String,
    /// The topic's epoch (0 for ephemeral topics).
    pub epoch: u64,
    /// Its offset in the epoch (0 for ephemeral topics).
    pub offset: u64,
    /// When the broker accepted it, unix milliseconds.
    pub timestamp_ms: u64,
    /// The `sub` claim of the publisher.
    pub publisher: String,
    /// The payload, as published.
    pub payload: Payload,
}

/// A [`Delivery`] by reference: what the broker encodes once per publish,
/// without copying the topic, the publisher or the payload first.
///
/// ```
/// use sockeye_protocol::{DeliveryRef, Payload, ServerMessage};
/// let payload = Payload::binary(b"hi");
/// let delivery = DeliveryRef {
///     topic: "chat",
///     epoch: 9,
///     offset: 42,
///     timestamp_ms: 1_700_000_000_000,
///     publisher: "bob",
///     payload: &payload,
/// };
/// let mut body = Vec::new();
/// delivery.encode_body(&mut body);
/// let mut owned = Vec::new();
/// ServerMessage::Message(delivery.to_owned()).encode_body(&mut owned);
/// assert_eq!(body, owned);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryRef<'a> {
    /// The topic it was published to.
    pub topic: &'a str,
    /// The topic's epoch (0 for ephemeral topics).
    pub epoch: u64,
    /// Its offset in the epoch (0 for ephemeral topics).
    pub offset: u64,
    /// When the broker accepted it, unix milliseconds.
    pub timestamp_ms: u64,
    /// The `sub` claim of the publisher.
    pub publisher: &'a str,
    /// The payload, as published.
    pub payload: &'a Payload,
}

impl DeliveryRef<'_> {
    /// The body's bytes besides the topic, publisher and payload, at most:
    /// the map header, the keys, the `type` value, the widest encoding of
    /// each number and the string headers (counted in
    /// `encoded_len_bound_holds_the_widest_body`).
    const FIXED_BYTES_BOUND: usize = 96;

    /// An upper bound of the body's length, to size its buffer once: a
    /// buffer that grows while a delivery is encoded costs a reallocation
    /// and a copy on every publish.
    pub fn encoded_len_bound(&self) -> usize {
        Self::FIXED_BYTES_BOUND + self.topic.len() + self.publisher.len() + self.payload.len()
    }

    /// Appends the MessagePack body of the `message` frame to `out`.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        let mut map = MapWriter::begin(out);
        map.str("type", "message");
        self.write_fields(&mut map);
        map.finish();
    }

    /// Appends the body of the `message` frame with its `epoch` and
    /// `offset` written as fixed-width MessagePack `uint 64` (marker `0xcf`
    /// and 8 big-endian bytes, both zero here), and returns where the 8
    /// bytes of each start in `out`, so that whoever assigns the position
    /// later (a Redis script) can write it in place. Any MessagePack decoder
    /// reads the fixed-width form as the same number.
    pub fn encode_body_with_position_slots(&self, out: &mut Vec<u8>) -> PositionSlots {
        let mut map = MapWriter::begin(out);
        map.str("type", "message").str("topic", self.topic);
        let epoch = map.fixed_uint64("epoch");
        let offset = map.fixed_uint64("offset");
        map.uint("ts", self.timestamp_ms)
            .str("publisher", self.publisher)
            .raw("payload", self.payload.as_msgpack());
        map.finish();
        PositionSlots { epoch, offset }
    }

    fn write_fields(&self, map: &mut MapWriter<'_>) {
        map.str("topic", self.topic)
            .uint("epoch", self.epoch)
            .uint("offset", self.offset)
            .uint("ts", self.timestamp_ms)
            .str("publisher", self.publisher)
            .raw("payload", self.payload.as_msgpack());
    }

    /// An owned copy.
    pub fn to_owned(&self) -> Delivery {
        Delivery {
            topic: self.topic.to_owned(),
            epoch: self.epoch,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            publisher: self.publisher.to_owned(),
            payload: self.payload.clone(),
        }
    }
}

impl Delivery {
    /// This delivery by reference.
    pub fn as_ref(&self) -> DeliveryRef<'_> {
        DeliveryRef {
            topic: &self.topic,
            epoch: self.epoch,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            publisher: &self.publisher,
            payload: &self.payload,
        }
    }
}

/// A message from the broker to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerMessage {
    /// `welcome`: always the first frame.
    Welcome(Welcome),
    /// `subscribed`: reply to `subscribe`.
    Subscribed(Subscribed),
    /// `unsubscribed`: reply to `unsubscribe`.
    Unsubscribed {
        /// Request id.
        id: RequestId,
        /// The filter that was removed.
        topic: String,
    },
    /// `published`: reply to `publish` with `ack: true`, sent once the
    /// message is stored as the durability mode requires.
    Published {
        /// Request id.
        id: RequestId,
        /// Epoch the message was stored in (0 if the topic is ephemeral).
        epoch: u64,
        /// Offset the message was stored at (0 if the topic is ephemeral).
        offset: u64,
    },
    /// `pong`: reply to `ping`.
    Pong {
        /// Request id.
        id: RequestId,
    },
    /// `refreshed`: reply to a successful `refresh`.
    Refreshed {
        /// Request id.
        id: RequestId,
        /// The new expiry, unix milliseconds; absent if the token has none.
        expires_at: Option<u64>,
    },
    /// `error`: the request failed; the connection stays open.
    Error {
        /// The request id, when the request got far enough to have one.
        id: Option<RequestId>,
        /// Stable machine-readable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// `message`: a delivery on one of the connection's subscriptions.
    Message(Delivery),
    /// `token_expiring`: the token expires soon; send `refresh`.
    TokenExpiring {
        /// When it expires, unix milliseconds.
        expires_at: u64,
    },
    /// `gap`: offsets `from..=to` of `topic` in `epoch` will not be delivered
    /// on this subscription (they were trimmed before it could catch up).
    Gap {
        /// The exact topic.
        topic: String,
        /// The epoch the range belongs to.
        epoch: u64,
        /// The missing offsets.
        range: OffsetRange,
    },
    /// `reset`: the topic's stored stream was reset (history deleted); the
    /// subscription continues in the new `epoch`, from its first offset.
    Reset {
        /// The exact topic.
        topic: String,
        /// The new epoch.
        epoch: u64,
    },
}

/// Runs an `rmp::encode` function against `out`. rmp writes into a `Vec`
/// through `std::io::Write`, whose error type is not `Infallible` even though
/// a `Vec` never fails; its `ByteBuf` wrapper has the honest type, so the
/// vector is moved into one for the call (a pointer move, no copy).
pub(crate) fn write_msgpack<T>(
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut ByteBuf) -> Result<T, ValueWriteError<Infallible>>,
) -> T {
    let mut buf = ByteBuf::from_vec(std::mem::take(out));
    let result = write(&mut buf);
    *out = buf.into_vec();
    match result {
        Ok(value) => value,
        Err(
            ValueWriteError::InvalidMarkerWrite(never) | ValueWriteError::InvalidDataWrite(never),
        ) => match never {},
    }
}

/// Where the 8 bytes of a body's `epoch` and `offset` start (see
/// [`DeliveryRef::encode_body_with_position_slots`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositionSlots {
    /// Index of the epoch's first byte.
    pub epoch: usize,
    /// Index of the offset's first byte.
    pub offset: usize,
}

impl PositionSlots {
    /// Writes `position` into a body encoded with these slots.
    pub fn fill(&self, body: &mut [u8], position: StreamPosition) {
        body[self.epoch..self.epoch + 8].copy_from_slice(&position.epoch.to_be_bytes());
        body[self.offset..self.offset + 8].copy_from_slice(&position.offset.to_be_bytes());
    }
}

/// Appends a MessagePack string: the narrowest header (fixstr, str 8, 16 or
/// 32) and the bytes. Written here rather than through `rmp::encode`, whose
/// writer goes through `std::io::Write` and a `Result` per call: for the few
/// short strings of every delivery that was a quarter of the encoding's cost.
/// `write_str_and_uint_match_rmp` checks every width against `rmp`.
#[inline]
pub(crate) fn write_str(out: &mut Vec<u8>, value: &str) {
    let len = value.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if let Ok(len) = u8::try_from(len) {
        out.extend_from_slice(&[0xd9, len]);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0xda);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        let len = u32::try_from(len).expect("a frame body is far below 4 GiB");
        out.push(0xdb);
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(value.as_bytes());
}

/// Appends a non-negative integer in its narrowest MessagePack form, as
/// `rmp::encode::write_uint` does (see [`write_str`] for why by hand).
#[inline]
pub(crate) fn write_uint(out: &mut Vec<u8>, value: u64) {
    if value < 128 {
        out.push(value as u8);
    } else if let Ok(value) = u8::try_from(value) {
        out.extend_from_slice(&[0xcc, value]);
    } else if let Ok(value) = u16::try_from(value) {
        out.push(0xcd);
        out.extend_from_slice(&value.to_be_bytes());
    } else if let Ok(value) = u32::try_from(value) {
        out.push(0xce);
        out.extend_from_slice(&value.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// Writes a map whose entry count is patched in at the end. All our maps
/// have fewer than 16 entries, so the header is always a one-byte fixmap.
pub(crate) struct MapWriter<'a> {
    out: &'a mut Vec<u8>,
    header_at: usize,
    len: u8,
}

impl<'a> MapWriter<'a> {
    #[inline]
    pub(crate) fn begin(out: &'a mut Vec<u8>) -> Self {
        let header_at = out.len();
        out.push(0x80);
        Self {
            out,
            header_at,
            len: 0,
        }
    }

    /// Keys are our field names, all shorter than 32 bytes: a MessagePack
    /// fixstr, whose one-byte header is written here directly. Inlined, so a
    /// key's length and bytes are constants at the call site (a delivery
    /// writes seven keys per publish).
    #[inline]
    fn key(&mut self, key: &str) {
        self.len += 1;
        write_str(self.out, key);
    }

    #[inline]
    pub(crate) fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        write_str(self.out, value);
        self
    }

    #[inline]
    pub(crate) fn uint(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        write_uint(self.out, value);
        self
    }

    /// Writes `key: 0` as a fixed-width `uint 64`; returns where its 8 value
    /// bytes start.
    fn fixed_uint64(&mut self, key: &str) -> usize {
        self.key(key);
        self.out.push(0xcf);
        let at = self.out.len();
        self.out.extend_from_slice(&[0; 8]);
        at
    }

    pub(crate) fn opt_uint(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        if let Some(value) = value {
            self.uint(key, value);
        }
        self
    }

    pub(crate) fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        let marker = if value { 0xc3 } else { 0xc2 };
        self.out.push(marker);
        self
    }

    fn nil(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.out.push(0xc0);
        self
    }

    /// Writes an already-encoded MessagePack value.
    #[inline]
    fn raw(&mut self, key: &str, value: &[u8]) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(value);
        self
    }

    fn map(&mut self, key: &str, write: impl FnOnce(&mut MapWriter<'_>)) -> &mut Self {
        self.key(key);
        let mut nested = MapWriter::begin(self.out);
        write(&mut nested);
        nested.finish();
        self
    }

    #[inline]
    pub(crate) fn finish(&mut self) {
        debug_assert!(self.len < 16, "fixmap holds at most 15 entries");
        self.out[self.header_at] = 0x80 | self.len;
    }
}

fn write_range(map: &mut MapWriter<'_>, range: &OffsetRange) {
    map.uint("from", range.from).uint("to", range.to);
}

fn read_range(fields: &Fields<'_>, kind: &'static str) -> Result<OffsetRange, DecodeError> {
    Ok(OffsetRange {
        from: fields.uint(kind, "from")?,
        to: fields.uint(kind, "to")?,
    })
}

impl ClientMessage {
    /// The request id.
    pub fn id(&self) -> RequestId {
        match self {
            ClientMessage::Subscribe { id, .. }
            | ClientMessage::Unsubscribe { id, .. }
            | ClientMessage::Publish { id, .. }
            | ClientMessage::Ping { id }
            | ClientMessage::Refresh { id, .. } => *id,
        }
    }

    /// Appends the MessagePack body to `out`.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        let mut map = MapWriter::begin(out);
        match self {
            ClientMessage::Subscribe {
                id,
                topic,
                position,
            } => {
                map.str("type", "subscribe")
                    .uint("id", *id)
                    .str("topic", topic);
                if let Some(position) = position {
                    map.map("position", |p| match *position {
                        Position::After { epoch, offset } => {
                            p.str("kind", "after")
                                .uint("epoch", epoch)
                                .uint("offset", offset);
                        }
                        Position::Oldest => {
                            p.str("kind", "oldest");
                        }
                        Position::Last { count } => {
                            p.str("kind", "last").uint("count", count);
                        }
                    });
                }
            }
            ClientMessage::Unsubscribe { id, topic } => {
                map.str("type", "unsubscribe")
                    .uint("id", *id)
                    .str("topic", topic);
            }
            ClientMessage::Publish {
                id,
                topic,
                payload,
                ack,
            } => {
                map.str("type", "publish")
                    .uint("id", *id)
                    .str("topic", topic)
                    .raw("payload", payload.as_msgpack())
                    .bool("ack", *ack);
            }
            ClientMessage::Ping { id } => {
                map.str("type", "ping").uint("id", *id);
            }
            ClientMessage::Refresh { id, token } => {
                map.str("type", "refresh")
                    .uint("id", *id)
                    .str("token", token);
            }
        }
        map.finish();
    }

    /// Encodes a complete frame (header and body).
    pub fn encode_frame(&self, compression: &Compression) -> Bytes {
        let mut frame = FrameBuf::new();
        self.encode_body(frame.body_mut());
        frame.seal(compression)
    }

    /// Decodes a body (as returned by [`crate::frame::open`]). The payload of
    /// a `publish` is a zero-copy slice of `body`.
    pub fn decode(body: &Bytes) -> Result<Self, MessageError> {
        let fields = Fields::parse(body).map_err(|error| MessageError { id: None, error })?;
        // Read the id first so that every later error can carry it; it is
        // read once, and each kind then requires it.
        let id = fields.opt_uint("id");
        let with_id = |error| MessageError {
            id: id.as_ref().ok().copied().flatten(),
            error,
        };
        let kind = fields.str_bytes("message", "type").map_err(with_id)?;
        Self::decode_fields(kind, &id, &fields, body).map_err(with_id)
    }

    /// The kind is matched as bytes: every known kind is ASCII, so only an
    /// unknown one needs its UTF-8 checked (for the error).
    fn decode_fields(
        kind: &[u8],
        id: &Result<Option<u64>, DecodeError>,
        fields: &Fields<'_>,
        body: &Bytes,
    ) -> Result<Self, DecodeError> {
        let required_id = |kind: &'static str| match id {
            Ok(Some(id)) => Ok(*id),
            Ok(None) => Err(DecodeError::MissingField { kind, field: "id" }),
            Err(error) => Err(error.clone()),
        };
        Ok(match kind {
            b"subscribe" => ClientMessage::Subscribe {
                id: required_id("subscribe")?,
                topic: fields.str("subscribe", "topic")?.to_owned(),
                position: match fields.opt_map("position")? {
                    None => None,
                    Some(position) => Some(decode_position(&position)?),
                },
            },
            b"unsubscribe" => ClientMessage::Unsubscribe {
                id: required_id("unsubscribe")?,
                topic: fields.str("unsubscribe", "topic")?.to_owned(),
            },
            b"publish" => {
                let range = fields.range("payload").ok_or(DecodeError::MissingField {
                    kind: "publish",
                    field: "payload",
                })?;
                ClientMessage::Publish {
                    id: required_id("publish")?,
                    topic: fields.str("publish", "topic")?.to_owned(),
                    payload: Payload(body.slice(range)),
                    ack: fields.opt_bool("ack")?.unwrap_or(true),
                }
            }
            b"ping" => ClientMessage::Ping {
                id: required_id("ping")?,
            },
            b"refresh" => ClientMessage::Refresh {
                id: required_id("refresh")?,
                token: fields.str("refresh", "token")?.to_owned(),
            },
            _ => {
                // Not UTF-8 is that error; otherwise a kind we do not know.
                let other = fields.str("message", "type")?;
                return Err(DecodeError::UnknownType {
                    kind: other.to_owned(),
                });
            }
        })
    }
}

fn decode_position(position: &Fields<'_>) -> Result<Position, DecodeError> {
    match position.str("position", "kind")? {
        "after" => Ok(Position::After {
            epoch: position.uint("position", "epoch")?,
            offset: position.uint("position", "offset")?,
        }),
        "oldest" => Ok(Position::Oldest),
        "last" => Ok(Position::Last {
            count: position.uint("position", "count")?,
        }),
        _ => Err(DecodeError::WrongType {
            field: "kind",
            expected: "one of \"after\", \"oldest\", \"last\"",
        }),
    }
}

impl ServerMessage {
    /// The wire name of this kind (the `type` field).
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Welcome(_) => "welcome",
            ServerMessage::Subscribed(_) => "subscribed",
            ServerMessage::Unsubscribed { .. } => "unsubscribed",
            ServerMessage::Published { .. } => "published",
            ServerMessage::Pong { .. } => "pong",
            ServerMessage::Refreshed { .. } => "refreshed",
            ServerMessage::Error { .. } => "error",
            ServerMessage::Message(_) => "message",
            ServerMessage::TokenExpiring { .. } => "token_expiring",
            ServerMessage::Gap { .. } => "gap",
            ServerMessage::Reset { .. } => "reset",
        }
    }

    /// Appends the MessagePack body to `out`.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        let mut map = MapWriter::begin(out);
        map.str("type", self.kind());
        match self {
            ServerMessage::Welcome(welcome) => {
                map.uint("connection_id", welcome.connection_id)
                    .uint("version", u64::from(welcome.version))
                    .str("subject", &welcome.subject)
                    .uint("heartbeat_interval_ms", welcome.heartbeat_interval_ms)
                    .uint("heartbeat_timeout_ms", welcome.heartbeat_timeout_ms)
                    .opt_uint("token_expires_at", welcome.token_expires_at)
                    .map("limits", |limits| welcome.limits.encode(limits));
            }
            ServerMessage::Subscribed(reply) => {
                map.uint("id", reply.id)
                    .str("topic", &reply.topic)
                    .bool("stored", reply.stored)
                    .uint("epoch", reply.epoch)
                    .uint("last_offset", reply.last_offset)
                    .uint("next_offset", reply.next_offset)
                    .bool("complete", reply.complete);
                if let Some(gap) = &reply.gap {
                    map.map("gap", |m| write_range(m, gap));
                }
                map.bool("epoch_changed", reply.epoch_changed);
            }
            ServerMessage::Unsubscribed { id, topic } => {
                map.uint("id", *id).str("topic", topic);
            }
            ServerMessage::Published { id, epoch, offset } => {
                map.uint("id", *id)
                    .uint("epoch", *epoch)
                    .uint("offset", *offset);
            }
            ServerMessage::Pong { id } => {
                map.uint("id", *id);
            }
            ServerMessage::Refreshed { id, expires_at } => {
                map.uint("id", *id).opt_uint("expires_at", *expires_at);
            }
            ServerMessage::Error { id, code, message } => {
                match id {
                    Some(id) => map.uint("id", *id),
                    None => map.nil("id"),
                };
                map.str("code", code.as_str()).str("message", message);
            }
            ServerMessage::Message(delivery) => {
                delivery.as_ref().write_fields(&mut map);
            }
            ServerMessage::TokenExpiring { expires_at } => {
                map.uint("expires_at", *expires_at);
            }
            ServerMessage::Gap {
                topic,
                epoch,
                range,
            } => {
                map.str("topic", topic).uint("epoch", *epoch);
                write_range(&mut map, range);
            }
            ServerMessage::Reset { topic, epoch } => {
                map.str("topic", topic).uint("epoch", *epoch);
            }
        }
        map.finish();
    }

    /// Encodes a complete frame (header and body), compressed when the body
    /// is over the threshold.
    pub fn encode_frame(&self, compression: &Compression) -> Bytes {
        let mut frame = FrameBuf::new();
        self.encode_body(frame.body_mut());
        frame.seal(compression)
    }

    /// Decodes a body (as returned by [`crate::frame::open`]).
    pub fn decode(body: &Bytes) -> Result<Self, DecodeError> {
        let fields = Fields::parse(body)?;
        let kind = fields.str("message", "type")?;
        Ok(match kind {
            "welcome" => {
                let limits = fields.opt_map("limits")?.ok_or(DecodeError::MissingField {
                    kind: "welcome",
                    field: "limits",
                })?;
                ServerMessage::Welcome(Welcome {
                    connection_id: fields.uint("welcome", "connection_id")?,
                    version: u32::try_from(fields.uint("welcome", "version")?).map_err(|_| {
                        DecodeError::WrongType {
                            field: "version",
                            expected: "a 32-bit unsigned integer",
                        }
                    })?,
                    subject: fields.str("welcome", "subject")?.to_owned(),
                    heartbeat_interval_ms: fields.uint("welcome", "heartbeat_interval_ms")?,
                    heartbeat_timeout_ms: fields.uint("welcome", "heartbeat_timeout_ms")?,
                    token_expires_at: fields.opt_uint("token_expires_at")?,
                    limits: Limits::decode(&limits)?,
                })
            }
            "subscribed" => ServerMessage::Subscribed(Subscribed {
                id: fields.uint("subscribed", "id")?,
                topic: fields.str("subscribed", "topic")?.to_owned(),
                stored: fields.opt_bool("stored")?.unwrap_or(false),
                epoch: fields.uint("subscribed", "epoch")?,
                last_offset: fields.uint("subscribed", "last_offset")?,
                next_offset: fields.uint("subscribed", "next_offset")?,
                complete: fields.opt_bool("complete")?.unwrap_or(true),
                gap: match fields.opt_map("gap")? {
                    Some(gap) => Some(read_range(&gap, "gap")?),
                    None => None,
                },
                epoch_changed: fields.opt_bool("epoch_changed")?.unwrap_or(false),
            }),
            "unsubscribed" => ServerMessage::Unsubscribed {
                id: fields.uint("unsubscribed", "id")?,
                topic: fields.str("unsubscribed", "topic")?.to_owned(),
            },
            "published" => ServerMessage::Published {
                id: fields.uint("published", "id")?,
                epoch: fields.uint("published", "epoch")?,
                offset: fields.uint("published", "offset")?,
            },
            "pong" => ServerMessage::Pong {
                id: fields.uint("pong", "id")?,
            },
            "refreshed" => ServerMessage::Refreshed {
                id: fields.uint("refreshed", "id")?,
                expires_at: fields.opt_uint("expires_at")?,
            },
            "error" => ServerMessage::Error {
                id: fields.opt_uint("id")?,
                code: ErrorCode::from_wire(fields.str("error", "code")?),
                message: fields.opt_str("message")?.unwrap_or_default().to_owned(),
            },
            "message" => {
                let range = fields.range("payload").ok_or(DecodeError::MissingField {
                    kind: "message",
                    field: "payload",
                })?;
                ServerMessage::Message(Delivery {
                    topic: fields.str("message", "topic")?.to_owned(),
                    epoch: fields.uint("message", "epoch")?,
                    offset: fields.uint("message", "offset")?,
                    timestamp_ms: fields.uint("message", "ts")?,
                    publisher: fields.str("message", "publisher")?.to_owned(),
                    payload: Payload(body.slice(range)),
                })
            }
            "token_expiring" => ServerMessage::TokenExpiring {
                expires_at: fields.uint("token_expiring", "expires_at")?,
            },
            "gap" => ServerMessage::Gap {
                topic: fields.str("gap", "topic")?.to_owned(),
                epoch: fields.uint("gap", "epoch")?,
                range: read_range(&fields, "gap")?,
            },
            "reset" => ServerMessage::Reset {
                topic: fields.str("reset", "topic")?.to_owned(),
                epoch: fields.uint("reset", "epoch")?,
            },
            other => {
                return Err(DecodeError::UnknownType {
                    kind: other.to_owned(),
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_str_and_uint_match_rmp() {
        let lengths = [0, 1, 31, 32, 255, 256, 65_535, 65_536, 70_000];
        for len in lengths {
            let value = "x".repeat(len);
            let mut ours = Vec::new();
            write_str(&mut ours, &value);
            let mut theirs = Vec::new();
            encode::write_str(&mut theirs, &value).expect("a Vec never fails");
            assert_eq!(ours, theirs, "string of {len} bytes");
        }
        let mut values = vec![0, u64::MAX];
        for bits in [7, 8, 16, 32] {
            let edge = 1u64 << bits;
            values.extend([edge - 1, edge, edge + 1]);
        }
        for value in values {
            let mut ours = Vec::new();
            write_uint(&mut ours, value);
            let mut theirs = Vec::new();
            encode::write_uint(&mut theirs, value).expect("a Vec never fails");
            assert_eq!(ours, theirs, "integer {value}");
        }
    }
}
