//! An in-memory engine for the seam's own tests: every topic is stored,
//! offsets are dense from 1, and a test can make it drop deliveries (a node
//! that missed some), fail reads, or reset a stream, to drive the hub's hard
//! cases without sockets or disks.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use sockeye_protocol::{Compression, FIRST_OFFSET, Payload, StreamPosition, TopicName};
use tokio::sync::watch;

use super::sled::store::StoredMessage;
use super::{Ack, DurableMark, Published, ReadBatch, StoreError, StreamBounds, WriteError, now_ms};
use crate::hub::Hub;

#[derive(Debug)]
struct MemoryStream {
    epoch: u64,
    next: u64,
    /// Offset -> stored record (`timestamp_ms BE | body`), as sled keeps it.
    records: BTreeMap<u64, Vec<u8>>,
}

/// All streams in a map behind one lock (held while delivering, so
/// deliveries of a topic stay in offset order).
#[derive(Debug)]
pub(crate) struct MemoryEngine {
    hub: Arc<Hub>,
    compression: Compression,
    streams: Mutex<HashMap<TopicName, MemoryStream>>,
    /// While set, published messages are stored but not delivered.
    pub(crate) drop_deliveries: AtomicBool,
    /// While set, every read fails.
    pub(crate) fail_reads: AtomicBool,
    durable: watch::Sender<DurableMark>,
}

impl MemoryEngine {
    pub(crate) fn new(hub: Arc<Hub>) -> Self {
        Self {
            hub,
            compression: Compression::default(),
            streams: Mutex::new(HashMap::new()),
            drop_deliveries: AtomicBool::new(false),
            fail_reads: AtomicBool::new(false),
            durable: watch::Sender::new(DurableMark::default()),
        }
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<TopicName, MemoryStream>> {
        self.streams
            .lock()
            .expect("no test panics holding the streams")
    }

    pub(crate) fn is_stored(&self, _topic: &TopicName) -> bool {
        true
    }

    pub(crate) fn is_failing(&self) -> bool {
        false
    }

    pub(crate) fn durable(&self) -> watch::Receiver<DurableMark> {
        self.durable.subscribe()
    }

    pub(crate) fn publish(
        &self,
        topic: &TopicName,
        payload: &Payload,
        publisher: &str,
    ) -> Result<Published, WriteError> {
        let mut streams = self.streams();
        let stream = streams
            .entry(topic.clone())
            .or_insert_with(|| MemoryStream {
                epoch: 1,
                next: FIRST_OFFSET,
                records: BTreeMap::new(),
            });
        let position = StreamPosition {
            epoch: stream.epoch,
            offset: stream.next,
        };
        let timestamp_ms = now_ms();
        let body = super::encode_delivery(
            topic.as_str(),
            position.epoch,
            position.offset,
            timestamp_ms,
            publisher,
            payload,
        );
        let mut record = timestamp_ms.to_be_bytes().to_vec();
        record.extend_from_slice(body.body());
        stream.records.insert(position.offset, record);
        stream.next += 1;
        let frame = body.seal(&self.compression);
        if !self.drop_deliveries.load(Ordering::Acquire) {
            self.hub
                .deliver(topic, Some(position), &frame, crate::hub::Accepted::now());
        }
        Ok(Published {
            position: Some(position),
            ack: Ack::Now,
        })
    }

    pub(crate) fn with_bounds<R>(
        &self,
        topic: &TopicName,
        _create: bool,
        plan: impl FnOnce(Option<&StreamBounds<'_>>) -> R,
    ) -> Result<R, WriteError> {
        let mut streams = self.streams();
        let stream = streams
            .entry(topic.clone())
            .or_insert_with(|| MemoryStream {
                epoch: 1,
                next: FIRST_OFFSET,
                records: BTreeMap::new(),
            });
        let first = stream.records.keys().next().copied().unwrap_or(stream.next);
        let bounds = StreamBounds {
            epoch: stream.epoch,
            first,
            next: stream.next,
            holes: &[],
        };
        Ok(plan(Some(&bounds)))
    }

    pub(crate) fn read(
        &self,
        topic: &TopicName,
        epoch: u64,
        from: u64,
        until: u64,
        max: usize,
        _max_bytes: usize,
    ) -> Result<ReadBatch, StoreError> {
        if self.fail_reads.load(Ordering::Acquire) {
            return Err(StoreError::Corrupt {
                what: format!("a test read of {topic}"),
            });
        }
        let streams = self.streams();
        let Some(stream) = streams.get(topic).filter(|stream| stream.epoch == epoch) else {
            return Ok(ReadBatch {
                messages: Vec::new(),
                reached_end: true,
            });
        };
        let mut messages = Vec::new();
        let mut reached_end = true;
        for (offset, record) in stream.records.range(from..until) {
            if messages.len() == max {
                reached_end = false;
                break;
            }
            messages.push(StoredMessage {
                offset: *offset,
                body: record.as_slice().into(),
            });
        }
        Ok(ReadBatch {
            messages,
            reached_end,
        })
    }

    /// Replaces the topic's stream with an empty one in the next epoch.
    pub(crate) fn reset(&self, topic: &TopicName) -> Option<u64> {
        let mut streams = self.streams();
        let stream = streams.get_mut(topic)?;
        stream.epoch += 1;
        stream.next = FIRST_OFFSET;
        stream.records.clear();
        self.hub.stream_reset(topic, stream.epoch);
        Some(stream.epoch)
    }
}
