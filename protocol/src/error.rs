//! Typed errors for everything the codec can reject.

/// Why a frame or a message body could not be decoded.
///
/// Every variant carries enough context to be logged or turned into an error
/// reply; none of them is ever produced by a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame had no header byte at all.
    #[error("empty frame: a frame needs at least its one-byte header")]
    EmptyFrame,
    /// The header byte set flags this protocol version does not define.
    #[error("unknown frame flags {flags:#04x}: only 0x01 (deflate) is defined")]
    UnknownFlags {
        /// The header byte as received.
        flags: u8,
    },
    /// The deflate stream of a compressed frame was corrupt or cut short.
    #[error("compressed frame does not inflate: {reason}")]
    Inflate {
        /// What the inflater reported.
        reason: String,
    },
    /// A compressed frame inflated past the configured maximum.
    #[error("compressed frame inflates past the limit of {limit} bytes")]
    InflateLimit {
        /// The maximum decompressed size in force.
        limit: usize,
    },
    /// The body ended in the middle of a value.
    #[error("truncated at byte {offset}: needed {needed} more bytes")]
    Truncated {
        /// Offset in the body where more bytes were needed.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// A byte that MessagePack reserves (0xc1) appeared as a marker.
    #[error("invalid MessagePack marker {marker:#04x} at byte {offset}")]
    InvalidMarker {
        /// The marker byte.
        marker: u8,
        /// Where it was found.
        offset: usize,
    },
    /// The body is not a MessagePack map.
    #[error("the body must be a MessagePack map with string keys")]
    NotAMap,
    /// A map key was not a string.
    #[error("map key at byte {offset} is not a string")]
    KeyNotString {
        /// Where the key starts.
        offset: usize,
    },
    /// A string was not valid UTF-8.
    #[error("string at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Where the string starts.
        offset: usize,
    },
    /// The same key appeared twice in one map.
    #[error("field `{field}` appears more than once")]
    DuplicateField {
        /// The repeated key.
        field: String,
    },
    /// Bytes were left over after the body's top-level map.
    #[error("{extra} unexpected bytes after the message")]
    TrailingBytes {
        /// How many bytes were left.
        extra: usize,
    },
    /// The `type` field named a kind this side does not know.
    #[error("unknown message type `{kind}`")]
    UnknownType {
        /// The `type` value as received.
        kind: String,
    },
    /// A required field was absent.
    #[error("`{kind}` is missing the required field `{field}`")]
    MissingField {
        /// The message kind.
        kind: &'static str,
        /// The missing key.
        field: &'static str,
    },
    /// A field had the wrong MessagePack type or an out-of-range value.
    #[error("field `{field}` must be {expected}")]
    WrongType {
        /// The offending key.
        field: &'static str,
        /// What was expected, in words.
        expected: &'static str,
    },
}

/// A client message that could not be decoded, with the request id when the
/// decoder got far enough to read one, so the error reply can carry it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct MessageError {
    /// The `id` field, if it was present and readable.
    pub id: Option<u64>,
    /// What went wrong.
    #[source]
    pub error: DecodeError,
}

/// Why a topic name or a subscription filter was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The name was empty.
    #[error("topic is empty")]
    Empty,
    /// The name was longer than the limit.
    #[error("topic is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Length of the name in bytes.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A segment between dots was empty (`a..b`, `.a`, `a.`).
    #[error("topic has an empty segment")]
    EmptySegment,
    /// A character outside the allowed set.
    #[error(
        "character {ch:?} is not allowed in a topic (allowed: A-Z a-z 0-9 _ - : and . between segments)"
    )]
    InvalidChar {
        /// The rejected character.
        ch: char,
    },
    /// A wildcard in a topic name used for publishing.
    #[error("wildcards (`*`, `>`) are only allowed in subscription filters")]
    WildcardInName,
    /// A wildcard that is not a whole segment, or `>` that is not last.
    #[error("misplaced wildcard: `*` must be a whole segment, `>` a whole last segment")]
    MisplacedWildcard,
}
