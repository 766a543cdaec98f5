//! The limits a broker enforces on a connection, as announced in `welcome`.

use crate::error::DecodeError;
use crate::message::MapWriter;
use crate::msgpack::Fields;

/// Limits in force on one connection. The broker sends them in `welcome`
/// so a client can stay within them instead of discovering them by error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest WebSocket message the broker accepts (close 1009 beyond).
    pub max_frame_bytes: u64,
    /// Largest body a compressed frame may inflate to (close 1009 beyond).
    pub max_inflated_bytes: u64,
    /// Bodies larger than this are compressed by the broker; clients should
    /// do the same.
    pub compression_threshold_bytes: u64,
    /// Longest topic name or filter, in bytes.
    pub max_topic_bytes: u64,
    /// Most subscriptions one connection may hold.
    pub max_subscriptions: u64,
    /// Sustained publishes per second allowed (0 means unlimited).
    pub publish_rate_per_sec: u64,
    /// Publishes allowed in a burst above the sustained rate.
    pub publish_burst: u64,
}

impl Limits {
    pub(crate) fn encode(&self, map: &mut MapWriter<'_>) {
        map.uint("max_frame_bytes", self.max_frame_bytes)
            .uint("max_inflated_bytes", self.max_inflated_bytes)
            .uint(
                "compression_threshold_bytes",
                self.compression_threshold_bytes,
            )
            .uint("max_topic_bytes", self.max_topic_bytes)
            .uint("max_subscriptions", self.max_subscriptions)
            .uint("publish_rate_per_sec", self.publish_rate_per_sec)
            .uint("publish_burst", self.publish_burst);
    }

    pub(crate) fn decode(fields: &Fields<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            max_frame_bytes: fields.uint("limits", "max_frame_bytes")?,
            max_inflated_bytes: fields.uint("limits", "max_inflated_bytes")?,
            compression_threshold_bytes: fields.uint("limits", "compression_threshold_bytes")?,
            max_topic_bytes: fields.uint("limits", "max_topic_bytes")?,
            max_subscriptions: fields.uint("limits", "max_subscriptions")?,
            publish_rate_per_sec: fields.uint("limits", "publish_rate_per_sec")?,
            publish_burst: fields.uint("limits", "publish_burst")?,
        })
    }
}
