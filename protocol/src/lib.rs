//! The Sockeye wire protocol: a pure codec, with no I/O and no async.
//!
//! Everything a client and the broker exchange after the WebSocket handshake
//! is defined here and specified in `docs/protocol.md`:
//!
//! - [`frame`]: one WebSocket binary message is one frame: a flags byte, then
//!   a MessagePack body, raw-deflate compressed when large. Inflation is
//!   bounded, so an inflate bomb is rejected, never allocated.
//! - [`message`]: every message kind in both directions
//!   ([`ClientMessage`], [`ServerMessage`]) and its codec. Application
//!   payloads are arbitrary MessagePack values carried through untouched
//!   ([`Payload`]).
//! - [`topic`]: topic names and filters with `*` and `>` wildcards.
//! - [`codes`]: stable error codes and WebSocket close codes.
//! - [`limits`]: the limits a broker announces in `welcome`.
//!
//! Decoding never panics and never trusts a length from the input: every
//! failure is a typed [`DecodeError`].
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use sockeye_protocol::{frame, ClientMessage, Compression, Payload};
//!
//! let publish = ClientMessage::Publish {
//!     id: 7,
//!     topic: "chat.lobby".into(),
//!     payload: Payload::binary(b"hello"),
//!     ack: true,
//! };
//! let wire: Bytes = publish.encode_frame(&Compression::default());
//! let body = frame::open(&wire, 1 << 20).unwrap();
//! assert_eq!(ClientMessage::decode(&body).unwrap(), publish);
//! ```

pub mod codes;
pub mod error;
pub mod frame;
pub mod limits;
pub mod message;
mod msgpack;
pub mod topic;

pub use codes::{CloseCode, ErrorCode};
pub use error::{DecodeError, MessageError, TopicError};
pub use frame::Compression;
pub use limits::Limits;
pub use message::{
    ClientMessage, Delivery, DeliveryRef, FIRST_OFFSET, OffsetRange, PROTOCOL_VERSION, Payload,
    Position, PositionSlots, RequestId, SUBPROTOCOL, ServerMessage, StreamPosition, Subscribed,
    Welcome,
};
pub use topic::{TopicFilter, TopicName};
