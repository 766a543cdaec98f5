//! The SDK's error type and the reasons a client can end up closed.

use std::fmt;
use std::time::Duration;

use sockeye_protocol::{ErrorCode, TopicError};

/// A boxed error from an application callback (the token provider).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the SDK.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker URL cannot be used (not `ws://`, or unparseable, for
    /// example without a host); returned by
    /// [`ClientBuilder::build`](crate::ClientBuilder::build) and
    /// [`ClientBuilder::connect`](crate::ClientBuilder::connect).
    #[error("invalid broker URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The builder was given no token and no token provider.
    #[error("no token: call `token` or `token_provider` on the client builder")]
    NoToken,
    /// A topic name or filter breaks the naming rules (checked before
    /// anything is sent).
    #[error("invalid topic `{topic}`")]
    InvalidTopic {
        /// The name or filter as given.
        topic: String,
        /// Which rule it breaks.
        #[source]
        source: TopicError,
    },
    /// The filter overlaps a filter this client already holds. The protocol
    /// delivers every message to exactly one subscription per connection,
    /// so a connection's filters may not overlap: drop the other
    /// subscription first, or use a second [`Client`](crate::Client).
    #[error("`{filter}` overlaps a subscription this client already holds: {message}")]
    SubscriptionOverlaps {
        /// The filter that was refused.
        filter: String,
        /// The broker's explanation (names the other filter).
        message: String,
    },
    /// The broker answered the request with an `error` reply.
    #[error("the broker refused the request ({code}): {message}")]
    Rejected {
        /// The stable error code.
        code: ErrorCode,
        /// The broker's explanation (not stable).
        message: String,
    },
    /// The value could not be encoded as MessagePack.
    #[error("could not encode the payload as MessagePack")]
    Encode(#[from] rmp_serde::encode::Error),
    /// A delivered payload does not decode as the subscription's type. The
    /// subscription continues with the next message.
    #[error("the payload of `{topic}` at {epoch}:{offset} does not decode as the subscribed type")]
    Decode {
        /// The message's topic.
        topic: String,
        /// Its epoch.
        epoch: u64,
        /// Its offset.
        offset: u64,
        /// Why it did not decode.
        #[source]
        source: rmp_serde::decode::Error,
    },
    /// The connection was lost after the request was sent and before its
    /// reply arrived. For a publish, the message may or may not have been
    /// stored: the SDK does not resend it, so it is never stored twice.
    #[error(
        "the connection was lost before the broker replied; the request may or may not have taken effect"
    )]
    ConnectionLost,
    /// No reply within [`ClientConfig::request_timeout`](crate::ClientConfig::request_timeout)
    /// (this includes time spent waiting for a connection). Like
    /// [`Error::ConnectionLost`], a publish may or may not have been stored.
    #[error("no reply from the broker within {0:?}")]
    Timeout(Duration),
    /// The client is closed and takes no more requests.
    #[error("the client is closed: {0}")]
    Closed(CloseReason),
}

impl Error {
    /// The broker's error code, if the broker refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Rejected { code, .. } => Some(*code),
            Error::SubscriptionOverlaps { .. } => Some(ErrorCode::SubscriptionOverlaps),
            _ => None,
        }
    }

    pub(crate) fn from_reply(code: ErrorCode, message: String, topic: &str) -> Self {
        match code {
            ErrorCode::SubscriptionOverlaps => Error::SubscriptionOverlaps {
                filter: topic.to_owned(),
                message,
            },
            code => Error::Rejected { code, message },
        }
    }
}

/// Why a client is closed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The application called [`Client::close`](crate::Client::close), or
    /// dropped every handle.
    ClientClosed,
    /// The broker closed the connection with a code after which the protocol
    /// says not to reconnect (1000, 1002, 1003, 1007, 1008).
    Broker {
        /// The WebSocket close code.
        code: u16,
        /// The close reason text.
        reason: String,
    },
    /// The broker refused the WebSocket handshake with an HTTP status that
    /// reconnecting cannot fix (for example 401 with a fixed token, or 403).
    HandshakeRejected {
        /// The HTTP status.
        status: u16,
        /// The response body: JSON `{"code": ..., "message": ...}` from a
        /// Sockeye broker.
        body: String,
    },
    /// The configured [`Backoff::max_attempts`](crate::Backoff::max_attempts)
    /// consecutive attempts failed.
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
        /// What the last one failed with.
        last_error: String,
    },
    /// The connection library refused the URL when connecting. URLs that
    /// are not `ws://` or do not parse are refused earlier, by
    /// [`ClientBuilder::build`](crate::ClientBuilder::build) with
    /// [`Error::InvalidUrl`], so this is only reached for a URL that passed
    /// those checks and still cannot be used.
    InvalidUrl {
        /// What is wrong.
        reason: String,
    },
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ClientClosed => f.write_str("closed by the application"),
            CloseReason::Broker { code, reason } => {
                write!(f, "the broker closed the connection with {code} ({reason})")
            }
            CloseReason::HandshakeRejected { status, body } => {
                write!(
                    f,
                    "the broker refused the handshake with HTTP {status}: {body}"
                )
            }
            CloseReason::GaveUp {
                attempts,
                last_error,
            } => write!(f, "gave up after {attempts} attempts; last: {last_error}"),
            CloseReason::InvalidUrl { reason } => write!(f, "unusable URL: {reason}"),
        }
    }
}
