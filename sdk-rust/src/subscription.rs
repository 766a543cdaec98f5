//! What a subscriber receives: the [`Subscription`] stream, its [`Event`]s
//! and typed [`Message`]s, and the options of a subscribe.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use sockeye_protocol::{Delivery, Payload, Position, Subscribed};
use tokio::sync::mpsc;

use crate::client::Client;
use crate::error::Error;

/// Identifies a subscription inside one client.
pub(crate) type SubKey = u64;

/// How a payload becomes the subscription's item type.
pub(crate) type Decoder<T> = fn(Payload) -> Result<T, rmp_serde::decode::Error>;

/// A message delivered on a subscription, with its payload decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<T> {
    /// The topic it was published to (matches the subscription's filter).
    pub topic: String,
    /// The topic's epoch (0 for ephemeral topics).
    pub epoch: u64,
    /// Its offset within the epoch (0 for ephemeral topics). Within one
    /// epoch of a stored topic, a subscription sees offsets that grow by
    /// exactly one, unless an [`Event::Gap`] says otherwise.
    pub offset: u64,
    /// When the broker accepted it, unix milliseconds.
    pub timestamp_ms: u64,
    /// The `sub` of the publisher's token.
    pub publisher: String,
    /// The payload.
    pub value: T,
}

/// Offsets of a stored topic that will never be delivered, because the
/// broker trimmed them from its history before this subscriber read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The epoch the offsets belong to.
    pub epoch: u64,
    /// First missing offset.
    pub from: u64,
    /// Last missing offset (inclusive).
    pub to: u64,
}

/// One item of a [`Subscription`]. Every way a subscriber can miss messages
/// is one of these events: the SDK never loses messages silently.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<T> {
    /// The next message.
    Message(Message<T>),
    /// Offsets `from..=to` of `topic` are gone (trimmed before they could be
    /// read); delivery continues at `to + 1`. Sent for `gap` frames and for
    /// a resume whose start was no longer retained.
    Gap {
        /// The topic.
        topic: String,
        /// The missing range.
        gap: Gap,
    },
    /// The topic's stored stream was reset (history deleted, or the store
    /// lost): offsets of the previous epoch mean nothing any more. Delivery
    /// continues in `epoch` from `next_offset`. Drop state derived from the
    /// old epoch.
    EpochChanged {
        /// The topic.
        topic: String,
        /// The new epoch.
        epoch: u64,
        /// The first offset that will be delivered in it.
        next_offset: u64,
    },
    /// The connection was lost and this subscription, which cannot be
    /// resumed (a wildcard filter or an ephemeral topic), was made again on
    /// a new connection: messages published while disconnected are missing.
    Interrupted,
    /// This subscription, which cannot be resumed, fell behind: its queue
    /// was full and `missed` messages were discarded.
    Lagged {
        /// How many messages were discarded.
        missed: u64,
    },
}

/// Options of [`Client::subscribe_with`] and [`Client::subscribe_raw`].
///
/// ```
/// use sockeye_sdk::{Position, SubscribeOptions};
/// let options = SubscribeOptions::new().position(Position::Oldest).capacity(64);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    pub(crate) position: Option<Position>,
    pub(crate) capacity: Option<usize>,
}

impl SubscribeOptions {
    /// Live messages only, with the client's default queue capacity.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where to start (exact stored topics only): replayed messages are
    /// followed by live ones without a gap or duplicate.
    pub fn position(mut self, position: Position) -> Self {
        self.position = Some(position);
        self
    }

    /// How many events may wait in this subscription's queue before the
    /// slow-subscriber policy applies (see the crate docs). At least 1.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity.max(1));
        self
    }
}

/// What the connection driver sends to a subscription's queue.
#[derive(Debug)]
pub(crate) enum Item {
    Message(Delivery),
    Gap {
        topic: String,
        gap: Gap,
    },
    EpochChanged {
        topic: String,
        epoch: u64,
        next_offset: u64,
    },
    Interrupted,
    Lagged {
        missed: u64,
    },
    /// The subscription could not be made again after a reconnect; the
    /// stream ends after this.
    Failed(Error),
}

/// A live subscription: a [`Stream`] of [`Event`]s, each a `Result` because
/// a payload may fail to decode as `T` (the stream continues after such an
/// error) or the subscription may end with an error.
///
/// Dropping it unsubscribes. It keeps its client's connection alive, and
/// survives reconnects: exact subscriptions to stored topics resume after
/// the last message delivered to this stream, so the stream stays
/// contiguous.
///
/// The stream ends (`None`) when the client is closed.
#[derive(Debug)]
pub struct Subscription<T> {
    pub(crate) filter: String,
    pub(crate) key: SubKey,
    pub(crate) reply: Subscribed,
    pub(crate) queue: mpsc::Receiver<Item>,
    pub(crate) decode: Decoder<T>,
    pub(crate) client: Client,
}

impl<T> Subscription<T> {
    /// The filter, as subscribed.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// The broker's `subscribed` reply to the first subscribe: whether the
    /// topic is stored, its epoch, the first offset delivered, and whether
    /// the requested position was honoured in full (any shortfall is also
    /// delivered as an [`Event`]).
    pub fn info(&self) -> &Subscribed {
        &self.reply
    }

    /// The client this subscription belongs to.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn convert(&self, item: Item) -> Result<Event<T>, Error> {
        match item {
            Item::Message(delivery) => {
                let Delivery {
                    topic,
                    epoch,
                    offset,
                    timestamp_ms,
                    publisher,
                    payload,
                } = delivery;
                match (self.decode)(payload) {
                    Ok(value) => Ok(Event::Message(Message {
                        topic,
                        epoch,
                        offset,
                        timestamp_ms,
                        publisher,
                        value,
                    })),
                    Err(source) => Err(Error::Decode {
                        topic,
                        epoch,
                        offset,
                        source,
                    }),
                }
            }
            Item::Gap { topic, gap } => Ok(Event::Gap { topic, gap }),
            Item::EpochChanged {
                topic,
                epoch,
                next_offset,
            } => Ok(Event::EpochChanged {
                topic,
                epoch,
                next_offset,
            }),
            Item::Interrupted => Ok(Event::Interrupted),
            Item::Lagged { missed } => Ok(Event::Lagged { missed }),
            Item::Failed(error) => Err(error),
        }
    }
}

impl<T> Stream for Subscription<T> {
    type Item = Result<Event<T>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match this.queue.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(this.convert(item))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        self.client.unsubscribe_on_drop(self.key);
    }
}

pub(crate) fn decode_value<T: serde::de::DeserializeOwned>(
    payload: Payload,
) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(payload.as_msgpack())
}

pub(crate) fn keep_raw(payload: Payload) -> Result<Payload, rmp_serde::decode::Error> {
    Ok(payload)
}
