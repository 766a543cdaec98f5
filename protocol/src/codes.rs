//! Stable error codes (in `error` replies) and WebSocket close codes, with
//! what a client should do about each.

use std::fmt;

/// The machine-readable `code` of an `error` reply. The string forms are
/// stable across versions; new codes may be added, so clients must treat an
/// unknown code like [`ErrorCode::Internal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be opened or parsed (bad flags, corrupt deflate,
    /// not MessagePack, not a map). Fix the client.
    MalformedFrame,
    /// The `type` field named an unknown kind. Fix the client, or check the
    /// protocol version in `welcome`.
    UnknownType,
    /// A field was missing or had the wrong type. Fix the client.
    BadRequest,
    /// A topic name or filter broke the naming rules. Fix the name.
    InvalidTopic,
    /// The token's permissions do not allow this topic. Do not retry with the
    /// same token.
    Forbidden,
    /// This connection already has a subscription with this exact filter.
    AlreadySubscribed,
    /// `unsubscribe` for a filter this connection does not hold.
    NotSubscribed,
    /// The filter overlaps one this connection already holds; every delivered
    /// message belongs to exactly one subscription. Unsubscribe first or use
    /// a second connection.
    SubscriptionOverlaps,
    /// The connection holds the maximum number of subscriptions.
    TooManySubscriptions,
    /// A resume position was given for a filter that cannot be resumed
    /// (a wildcard filter, or a topic whose history is not stored).
    PositionUnsupported,
    /// The publish exceeded the connection's rate limit; retry later.
    RateLimited,
    /// A `refresh` carried a token that failed validation.
    InvalidToken,
    /// A `refresh` carried a valid token for a different `sub`.
    SubjectMismatch,
    /// The history store failed; the request may be retried.
    StorageFailed,
    /// The broker is shutting down; reconnect elsewhere or later.
    ShuttingDown,
    /// An unexpected server-side failure; the request may be retried.
    Internal,
    /// The publish (or subscribe) would store a new topic, and the broker
    /// stores its maximum number of topics (`store.max_topics`). Use an
    /// existing topic, or retry after topics were deleted.
    TooManyTopics,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::MalformedFrame,
        ErrorCode::UnknownType,
        ErrorCode::BadRequest,
        ErrorCode::InvalidTopic,
        ErrorCode::Forbidden,
        ErrorCode::AlreadySubscribed,
        ErrorCode::NotSubscribed,
        ErrorCode::SubscriptionOverlaps,
        ErrorCode::TooManySubscriptions,
        ErrorCode::PositionUnsupported,
        ErrorCode::RateLimited,
        ErrorCode::InvalidToken,
        ErrorCode::SubjectMismatch,
        ErrorCode::StorageFailed,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
        ErrorCode::TooManyTopics,
    ];

    /// The stable string sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::AlreadySubscribed => "already_subscribed",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::SubscriptionOverlaps => "subscription_overlaps",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::PositionUnsupported => "position_unsupported",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::SubjectMismatch => "subject_mismatch",
            ErrorCode::StorageFailed => "storage_failed",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::TooManyTopics => "too_many_topics",
        }
    }

    /// Parses a wire string; unknown strings map to [`ErrorCode::Internal`]
    /// as the protocol tells clients to do.
    pub fn from_wire(text: &str) -> Self {
        Self::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
            .unwrap_or(ErrorCode::Internal)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the broker closed a WebSocket connection, sent as the close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// 1000: normal closure, after the client closed. Do not reconnect.
    Normal,
    /// 1001: the broker is shutting down or draining. Reconnect after the
    /// delay given in the close reason (`retry_after_ms=N`), with resume.
    GoingAway,
    /// 1002: WebSocket protocol violation (detected by the WebSocket layer).
    /// Fix the client.
    ProtocolError,
    /// 1003: a text frame was received; this protocol is binary only.
    /// Fix the client.
    UnsupportedData,
    /// 1007: a frame's content was inconsistent with its type. Fix the client.
    InvalidPayload,
    /// 1008: a policy was violated. Not sent by the broker itself in this
    /// version; an operator may use it to disconnect a client for good.
    /// Fix the client.
    PolicyViolation,
    /// 1009: a frame was larger than `max_frame_bytes`, or inflated past
    /// `max_inflated_bytes`. Fix the client; reconnecting is allowed.
    MessageTooBig,
    /// 1011: an unexpected server failure. Reconnect with backoff.
    InternalError,
    /// 4000: the token expired and was not refreshed. Reconnect with a fresh
    /// token.
    TokenExpired,
    /// 4001: an operator disconnected this connection. Reconnect only after
    /// backoff; an operator who wants a client gone also revokes its access.
    Kicked,
    /// 4002: the connection could not keep up with its deliveries and its
    /// outbound queue overflowed. Reconnect and resume from the last offset.
    SlowConsumer,
    /// 4003: the connection exceeded a rate limit. Reserved: this version
    /// answers rate-limited publishes with a `rate_limited` error reply and
    /// keeps the connection. Reconnect after backoff.
    RateLimited,
    /// 4004: no frame and no pong arrived within the heartbeat timeout.
    /// Reconnect with resume.
    HeartbeatTimeout,
}

impl CloseCode {
    /// Every code, for documentation and tests.
    pub const ALL: [CloseCode; 13] = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::ProtocolError,
        CloseCode::UnsupportedData,
        CloseCode::InvalidPayload,
        CloseCode::PolicyViolation,
        CloseCode::MessageTooBig,
        CloseCode::InternalError,
        CloseCode::TokenExpired,
        CloseCode::Kicked,
        CloseCode::SlowConsumer,
        CloseCode::RateLimited,
        CloseCode::HeartbeatTimeout,
    ];

    /// The numeric code sent in the close frame.
    pub fn code(self) -> u16 {
        match self {
            CloseCode::Normal => 1000,
            CloseCode::GoingAway => 1001,
            CloseCode::ProtocolError => 1002,
            CloseCode::UnsupportedData => 1003,
            CloseCode::InvalidPayload => 1007,
            CloseCode::PolicyViolation => 1008,
            CloseCode::MessageTooBig => 1009,
            CloseCode::InternalError => 1011,
            CloseCode::TokenExpired => 4000,
            CloseCode::Kicked => 4001,
            CloseCode::SlowConsumer => 4002,
            CloseCode::RateLimited => 4003,
            CloseCode::HeartbeatTimeout => 4004,
        }
    }

    /// The code for a numeric value, if it is one of ours.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|known| known.code() == code)
    }

    /// A short snake_case name, used in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::GoingAway => "going_away",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::UnsupportedData => "unsupported_data",
            CloseCode::InvalidPayload => "invalid_payload",
            CloseCode::PolicyViolation => "policy_violation",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::InternalError => "internal_error",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::Kicked => "kicked",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::RateLimited => "rate_limited",
            CloseCode::HeartbeatTimeout => "heartbeat_timeout",
        }
    }

    /// Whether a client should reconnect automatically after this close.
    pub fn should_reconnect(self) -> bool {
        !matches!(
            self,
            CloseCode::Normal
                | CloseCode::ProtocolError
                | CloseCode::UnsupportedData
                | CloseCode::InvalidPayload
                | CloseCode::PolicyViolation
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_through_their_wire_strings() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_wire(code.as_str()), code);
        }
        assert_eq!(ErrorCode::from_wire("from_the_future"), ErrorCode::Internal);
    }

    #[test]
    fn close_codes_are_unique_and_round_trip() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(code.code()), Some(code));
        }
        assert_eq!(CloseCode::from_code(4999), None);
    }
}
