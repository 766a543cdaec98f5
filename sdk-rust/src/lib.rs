//! Sockeye SDK: a Rust client for the Sockeye pub/sub broker.
//!
//! A [`Client`] holds one WebSocket connection to a broker and keeps it up:
//! it reconnects with exponential backoff and full jitter, honours the
//! broker's `retry_after_ms` hint when the broker shuts down, refreshes its
//! token in-band when given a token provider, and on every reconnect resumes
//! each subscription to a stored topic right after the last message it
//! delivered, so the application sees one contiguous stream. When messages
//! really are gone (trimmed history, a reset topic, an interrupted wildcard
//! subscription), the subscription yields an explicit [`Event`]: nothing is
//! lost silently.
//!
//! Payloads are MessagePack: [`Client::publish`] encodes any `Serialize`
//! value with field names (so any language can read it) and
//! [`Client::subscribe`] decodes into any `Deserialize` type.
//! [`Client::publish_raw`] and [`Client::subscribe_raw`] work on
//! [`Payload`]s directly.
//!
//! # Quick start
//!
//! ```
//! use futures_util::StreamExt;
//! use serde::{Deserialize, Serialize};
//! use sockeye_sdk::{Client, Event, Position, SubscribeOptions};
//!
//! #[derive(Debug, Serialize, Deserialize, PartialEq)]
//! struct Chat {
//!     user: String,
//!     text: String,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let mut config = sockeye_broker::Config::default();
//! # config.server.data_dir = dir.path().to_owned();
//! # let broker = sockeye_broker::Broker::open(config).await?;
//! # let token = broker.authenticator().mint(sockeye_broker::Claims {
//! #     sub: "alice".into(),
//! #     exp: Some(sockeye_broker::auth::unix_now() + 3600),
//! #     ..Default::default()
//! # })?;
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let url = format!("ws://{}/ws", listener.local_addr()?);
//! # tokio::spawn(broker.serve(listener, std::future::pending()));
//! // `url` is like "ws://127.0.0.1:8080/ws"; `token` is a JWT from your issuer.
//! let client = Client::connect(&url, &token).await?;
//!
//! // Everything stored on the topic so far, then live messages.
//! let options = SubscribeOptions::new().position(Position::Oldest);
//! let mut chat = client.subscribe_with::<Chat>("chat.lobby", options).await?;
//!
//! let hello = Chat { user: "alice".into(), text: "hello".into() };
//! let stored = client.publish("chat.lobby", &hello).await?;
//!
//! match chat.next().await {
//!     Some(Ok(Event::Message(message))) => {
//!         assert_eq!(message.value, hello);
//!         assert_eq!(message.offset, stored.offset);
//!         assert_eq!(message.publisher, "alice");
//!     }
//!     other => panic!("expected the message, got {other:?}"),
//! }
//! client.close().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Slow applications and bounded queues
//!
//! Every queue is bounded. Requests wait for room in the request queue
//! ([`ClientConfig::request_queue`]) and for a free slot among the requests
//! in flight ([`ClientConfig::max_in_flight`]); while the client is
//! reconnecting they wait there, up to [`ClientConfig::request_timeout`].
//! Encoded frames then wait in the outbox ([`ClientConfig::outbox`]) and
//! the socket writer's queue ([`ClientConfig::write_queue`]).
//!
//! Each subscription has its own queue ([`SubscribeOptions::capacity`],
//! default [`ClientConfig::subscription_capacity`]). The connection never
//! waits for a subscription's queue, so one slow subscription does not stall
//! the others, replies, or the connection's heartbeat, and an application
//! may `publish(..).await` from inside the loop that reads a subscription.
//! When a queue is full:
//!
//! - an **exact subscription to a stored topic** loses nothing: the client
//!   stops taking its deliveries, and once the application has read half the
//!   queue it resubscribes after the last message it delivered; the broker
//!   replays the rest from its history. If the broker trimmed some of those
//!   messages meanwhile, the subscription yields [`Event::Gap`].
//! - **other subscriptions** (wildcard filters, ephemeral topics) cannot be
//!   replayed: the client discards deliveries while the queue is full and
//!   then yields [`Event::Lagged`] with the number discarded. A broker-side
//!   slow-consumer close (4002) affects them the same way, reported as
//!   [`Event::Interrupted`]. Notices ([`Event::Interrupted`],
//!   [`Event::Gap`], [`Event::EpochChanged`]) are never discarded: they wait
//!   for room and come before the [`Event::Lagged`] count.
//!
//! # Reconnecting
//!
//! The client follows the close-code table of the protocol (section 9 of
//! `docs/protocol.md`): it stops for good after 1000, 1002, 1003, 1007 and
//! 1008, and after a handshake refused with a status that retrying cannot
//! fix (401 with a fixed token, 403, 404); after 1001 it waits the broker's
//! `retry_after_ms`; after 4001, 4003 and 1011 its first delay is drawn from
//! a later step of the [`Backoff`] schedule; otherwise it reconnects after a
//! short random delay. Publishes in flight when a connection drops fail with
//! [`Error::ConnectionLost`] and are not resent, so a message is never
//! stored twice by the SDK.
//!
//! # Layout
//!
//! - [`Client`], [`ClientBuilder`], [`ClientConfig`], [`ConnectionState`]:
//!   the handle the application uses (module `client`).
//! - [`Subscription`], [`Event`], [`Message`]: what a subscriber receives
//!   (module `subscription`).
//! - [`Backoff`]: the reconnect schedule (module `backoff`).
//! - `driver`: the background task that owns the connection.
//! - [`Error`], [`CloseReason`]: what can go wrong (module `error`).

mod backoff;
mod client;
mod driver;
mod error;
mod subscription;

pub use crate::backoff::Backoff;
pub use crate::client::{Client, ClientBuilder, ClientConfig, ConnectionState, Published};
pub use crate::error::{BoxError, CloseReason, Error};
pub use crate::subscription::{Event, Gap, Message, SubscribeOptions, Subscription};
pub use sockeye_protocol::{ErrorCode, Payload, Position, Subscribed};
