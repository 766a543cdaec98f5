//! The history store on sled: what is kept where, and when it is durable.
//!
//! # Layout
//!
//! Three trees:
//!
//! - `topics`: topic name -> `epoch (u64 BE) | trimmed_through (u64 BE) |
//!   created_ms (u64 BE)`. `trimmed_through` is the highest offset the
//!   trimmer ever deleted, so the next offset survives even when retention
//!   has emptied the topic.
//! - `messages`: `epoch (u64 BE) | offset (u64 BE)` -> `timestamp_ms (u64 BE)
//!   | body`, where body is the MessagePack body of the `message` frame as
//!   it was first sent. Keys sort by epoch, then offset, so one topic's
//!   stream is one contiguous key range and a replay is one range scan.
//! - `epochs`: `epoch (u64 BE)` -> topic name, to keep epochs unique and to
//!   find the messages of reset streams that still need deleting.
//!
//! An epoch is random (below 2^53, so JavaScript clients hold it exactly)
//! and is the key prefix of its stream, so a reset is a new prefix and a
//! lost store can never hand out an epoch a client still remembers.
//!
//! # Durability
//!
//! Every append increments a write sequence. A flusher task flushes sled and
//! then fsyncs its files, and publishes the sequence it covered on a watch
//! channel; in `fsync` mode acknowledgements wait for that. sled's own flush
//! only calls `sync_file_range` on the log, which neither flushes the
//! drive's write cache nor the file's metadata, and it never syncs its blob
//! files; the extra `fsync` of the `db` file and of new blob files closes
//! that gap.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Durability, StoreConfig};
use crate::stats::{BATCH_BOUNDS, Histogram, LATENCY_BOUNDS};

/// Largest epoch value: epochs stay below 2^53.
const EPOCH_LIMIT: u64 = 1 << 53;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled reported an error.
    #[error("history store: {0}")]
    Sled(#[from] sled::Error),
    /// A file operation outside sled failed.
    #[error("history store file {path}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A record did not have the expected layout.
    #[error("history store record for {what} is corrupt")]
    Corrupt {
        /// Which record.
        what: String,
    },
    /// The flusher is gone (the store is shutting down).
    #[error("history store is closed")]
    Closed,
}

/// The position of one topic's stored stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamState {
    /// The stream's epoch.
    pub epoch: u64,
    /// Oldest retained offset; equals `next` when nothing is retained.
    pub first: u64,
    /// The offset the next message gets.
    pub next: u64,
    /// Bytes of retained message bodies.
    pub bytes: u64,
    /// When the stream was created, unix ms.
    pub created_ms: u64,
}

/// One stored message, as read back.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its offset.
    pub offset: u64,
    /// When the broker accepted it, unix ms.
    pub timestamp_ms: u64,
    /// The MessagePack body of its `message` frame.
    pub body: sled::IVec,
}

impl StoredMessage {
    /// The body bytes.
    pub fn body(&self) -> &[u8] {
        &self.body[8..]
    }
}

/// The history store.
pub struct Store {
    db: sled::Db,
    dir: PathBuf,
    topics: sled::Tree,
    messages: sled::Tree,
    epochs: sled::Tree,
    durability: Durability,
    flush_interval: Duration,
    /// Appends made so far.
    written: AtomicU64,
    /// The highest append sequence known to be flushed and fsynced.
    durable: watch::Sender<u64>,
    /// Wakes the flusher when an acknowledgement is waiting.
    flush_requested: Notify,
    /// Blob files already fsynced (sled writes large pages as separate files).
    synced_blobs: Mutex<HashSet<PathBuf>>,
    /// Set when the temporary flag is on (tests): no fsync at all.
    temporary: bool,
    /// Duration of each flush (sled flush plus fsync), for the metrics.
    pub flush_latency: Histogram,
    /// Appends covered by each flush, for the metrics: how well concurrent
    /// publishers share flushes.
    pub flush_batch: Histogram,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

fn message_key(epoch: u64, offset: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&epoch.to_be_bytes());
    key[8..].copy_from_slice(&offset.to_be_bytes());
    key
}

fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    bytes
        .get(at..at + 8)
        .and_then(|slice| slice.try_into().ok())
        .map(u64::from_be_bytes)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, config: &StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(config.cache_capacity.as_u64())
            // Our flusher flushes and fsyncs on its own schedule.
            .flush_every_ms(None)
            // Large segments keep single messages out of separate blob files.
            .segment_size(8 << 20)
            .open()?;
        Self::from_db(db, dir.to_path_buf(), config, false)
    }

    /// Opens a store that lives in memory and a temporary directory and is
    /// deleted on drop (tests that do not need durability).
    pub fn temporary(config: &StoreConfig) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .segment_size(8 << 20)
            .open()?;
        Self::from_db(db, PathBuf::new(), config, true)
    }

    fn from_db(
        db: sled::Db,
        dir: PathBuf,
        config: &StoreConfig,
        temporary: bool,
    ) -> Result<Self, StoreError> {
        let store = Self {
            topics: db.open_tree("topics")?,
            messages: db.open_tree("messages")?,
            epochs: db.open_tree("epochs")?,
            db,
            dir,
            durability: config.durability,
            flush_interval: config.flush_interval,
            written: AtomicU64::new(0),
            durable: watch::Sender::new(0),
            flush_requested: Notify::new(),
            synced_blobs: Mutex::new(HashSet::new()),
            temporary,
            flush_latency: Histogram::new(LATENCY_BOUNDS),
            flush_batch: Histogram::new(BATCH_BOUNDS),
        };
        store.delete_orphaned_streams()?;
        Ok(store)
    }

    /// The configured durability mode.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Every stored topic and the state of its stream.
    pub fn load_topics(&self) -> Result<Vec<(String, StreamState)>, StoreError> {
        let mut topics = Vec::new();
        for entry in self.topics.iter() {
            let (name, record) = entry?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| StoreError::Corrupt {
                what: "a topic name".into(),
            })?;
            let state = self.stream_state(&name, &record)?;
            topics.push((name, state));
        }
        Ok(topics)
    }

    fn stream_state(&self, name: &str, record: &[u8]) -> Result<StreamState, StoreError> {
        let corrupt = || StoreError::Corrupt {
            what: format!("topic {name}"),
        };
        let epoch = be_u64(record, 0).ok_or_else(corrupt)?;
        let trimmed_through = be_u64(record, 8).ok_or_else(corrupt)?;
        let created_ms = be_u64(record, 16).ok_or_else(corrupt)?;
        let mut first = None;
        let mut last = trimmed_through;
        let mut bytes = 0;
        for entry in self.messages.scan_prefix(epoch.to_be_bytes()) {
            let (key, value) = entry?;
            let offset = be_u64(&key, 8).ok_or_else(corrupt)?;
            first.get_or_insert(offset);
            last = last.max(offset);
            bytes += value.len().saturating_sub(8) as u64;
        }
        let next = last + 1;
        Ok(StreamState {
            epoch,
            first: first.unwrap_or(next),
            next,
            bytes,
            created_ms,
        })
    }

    fn fresh_epoch(&self, topic: &str) -> Result<u64, StoreError> {
        loop {
            let epoch = rand::rng().random_range(1..EPOCH_LIMIT);
            let claimed = self.epochs.compare_and_swap(
                epoch.to_be_bytes(),
                None as Option<&[u8]>,
                Some(topic.as_bytes()),
            )?;
            if claimed.is_ok() {
                return Ok(epoch);
            }
        }
    }

    fn write_topic_record(
        &self,
        topic: &str,
        epoch: u64,
        trimmed_through: u64,
        created_ms: u64,
    ) -> Result<(), StoreError> {
        let mut record = [0u8; 24];
        record[..8].copy_from_slice(&epoch.to_be_bytes());
        record[8..16].copy_from_slice(&trimmed_through.to_be_bytes());
        record[16..].copy_from_slice(&created_ms.to_be_bytes());
        self.topics.insert(topic.as_bytes(), &record[..])?;
        Ok(())
    }

    /// Starts the stored stream of a topic seen for the first time.
    pub fn create_stream(&self, topic: &str) -> Result<StreamState, StoreError> {
        let epoch = self.fresh_epoch(topic)?;
        let created_ms = now_ms();
        self.write_topic_record(topic, epoch, 0, created_ms)?;
        Ok(StreamState {
            epoch,
            first: 1,
            next: 1,
            bytes: 0,
            created_ms,
        })
    }

    /// Deletes every message of a stream (after a reset).
    pub fn delete_stream(&self, epoch: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut pending = 0;
        for key in self.messages.scan_prefix(epoch.to_be_bytes()).keys() {
            batch.remove(key?);
            pending += 1;
            if pending == 4096 {
                self.messages.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        self.messages.apply_batch(batch)?;
        self.epochs.remove(epoch.to_be_bytes())?;
        Ok(())
    }

    /// Deletes the messages of epochs that no topic refers to any more (left
    /// behind when a reset was interrupted).
    fn delete_orphaned_streams(&self) -> Result<(), StoreError> {
        let mut live = HashSet::new();
        for record in self.topics.iter().values() {
            if let Some(epoch) = be_u64(&record?, 0) {
                live.insert(epoch);
            }
        }
        let mut orphans = Vec::new();
        for key in self.epochs.iter().keys() {
            if let Some(epoch) = be_u64(&key?, 0)
                && !live.contains(&epoch)
            {
                orphans.push(epoch);
            }
        }
        for epoch in orphans {
            tracing::info!(epoch, "deleting the messages of a reset stream");
            self.delete_stream(epoch)?;
        }
        Ok(())
    }

    /// Appends one message; returns its write sequence for
    /// [`Store::durable`].
    pub fn append(
        &self,
        epoch: u64,
        offset: u64,
        timestamp_ms: u64,
        body: &[u8],
    ) -> Result<u64, StoreError> {
        let mut value = Vec::with_capacity(8 + body.len());
        value.extend_from_slice(&timestamp_ms.to_be_bytes());
        value.extend_from_slice(body);
        self.messages.insert(message_key(epoch, offset), value)?;
        Ok(self.written.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// Reads up to `max` messages (and, past the first, at most `max_bytes`
    /// of bodies) of `epoch` with offsets from `from` on, in offset order.
    /// Missing offsets (trimmed) are simply absent.
    pub fn read(
        &self,
        epoch: u64,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let start = message_key(epoch, from);
        let end = message_key(epoch, u64::MAX);
        let mut out = Vec::with_capacity(max.min(1024));
        let mut bytes = 0;
        for entry in self.messages.range(start..=end).take(max) {
            let (key, value) = entry?;
            if !out.is_empty() && bytes + value.len() > max_bytes {
                break;
            }
            bytes += value.len();
            let corrupt = || StoreError::Corrupt {
                what: format!("message in epoch {epoch}"),
            };
            out.push(StoredMessage {
                offset: be_u64(&key, 8).ok_or_else(corrupt)?,
                timestamp_ms: be_u64(&value, 0).ok_or_else(corrupt)?,
                body: value,
            });
        }
        Ok(out)
    }

    /// Deletes the oldest messages of a stream that break a retention limit,
    /// at most `max_deletions` of them. Returns `(trimmed_through, bytes)`:
    /// the last offset deleted and the body bytes freed, or `None` if
    /// nothing was.
    pub fn trim(
        &self,
        topic: &str,
        state: &StreamState,
        limits: TrimLimits,
        max_deletions: usize,
    ) -> Result<Option<(u64, u64)>, StoreError> {
        let count = state.next - state.first;
        let mut excess_messages = count.saturating_sub(limits.max_messages);
        let mut excess_bytes = state.bytes.saturating_sub(limits.max_bytes);
        let mut batch = sled::Batch::default();
        let mut through = None;
        let mut freed = 0u64;
        let start = message_key(state.epoch, state.first);
        let end = message_key(state.epoch, u64::MAX);
        for entry in self.messages.range(start..=end).take(max_deletions) {
            let (key, value) = entry?;
            let too_old = be_u64(&value, 0).is_some_and(|ts| ts < limits.oldest_ms);
            if excess_messages == 0 && excess_bytes == 0 && !too_old {
                break;
            }
            let size = value.len().saturating_sub(8) as u64;
            excess_messages = excess_messages.saturating_sub(1);
            excess_bytes = excess_bytes.saturating_sub(size);
            freed += size;
            through = be_u64(&key, 8);
            batch.remove(key);
        }
        let Some(through) = through else {
            return Ok(None);
        };
        // Record the high-water mark first: if we crash between the two
        // writes, the next offset is still right.
        self.write_topic_record(topic, state.epoch, through, state.created_ms)?;
        self.messages.apply_batch(batch)?;
        Ok(Some((through, freed)))
    }

    /// Bytes the store occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Asks the flusher to flush soon (an acknowledgement is waiting).
    pub fn request_flush(&self) {
        self.flush_requested.notify_one();
    }

    /// A receiver of the durable write sequence.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// The write sequence up to which appends are acknowledged: in `fsync`
    /// mode what the flusher covered, in `interval` mode every append.
    pub fn acknowledged_through(&self) -> u64 {
        match self.durability {
            Durability::Fsync => *self.durable.borrow(),
            Durability::Interval => self.written.load(Ordering::Acquire),
        }
    }

    /// Flushes sled and fsyncs its files; blocking.
    fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        if self.temporary {
            return Ok(());
        }
        // fdatasync, not fsync: sled preallocates its segments, so the file's
        // size rarely changes and its other metadata is not needed to read
        // the data back.
        let db_file = self.dir.join("db");
        File::open(&db_file)
            .and_then(|file| file.sync_data())
            .map_err(io_error(&db_file))?;
        self.sync_new_blobs()
    }

    fn sync_new_blobs(&self) -> Result<(), StoreError> {
        let blob_dir = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&blob_dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(io_error(&blob_dir)(err)),
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .expect("no code panics while holding synced_blobs");
        let mut any_new = false;
        let mut present = HashSet::new();
        for entry in entries {
            let path = entry.map_err(io_error(&blob_dir))?.path();
            if !synced.contains(&path) {
                // A blob may be deleted by sled between listing and opening.
                if let Ok(file) = File::open(&path) {
                    file.sync_all().map_err(io_error(&path))?;
                }
                any_new = true;
            }
            present.insert(path);
        }
        *synced = present;
        if any_new {
            File::open(&blob_dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io_error(&blob_dir))?;
        }
        Ok(())
    }

    /// Runs the flusher until `shutdown`, then flushes one last time.
    ///
    /// In `fsync` mode it flushes as soon as an acknowledgement waits; writes
    /// that arrive during a flush are covered by the next one, so concurrent
    /// publishers share flushes. In both modes it also flushes every
    /// `flush_interval`.
    pub async fn run_flusher(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.flush_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                () = shutdown.cancelled() => true,
                () = self.flush_requested.notified() => false,
                _ = ticker.tick() => false,
            };
            let target = self.written.load(Ordering::Acquire);
            let covered = *self.durable.borrow();
            if target > covered || stop {
                let store = Arc::clone(&self);
                let started = std::time::Instant::now();
                let result = tokio::task::spawn_blocking(move || store.flush_blocking()).await;
                match result {
                    Ok(Ok(())) => {
                        self.flush_latency.observe(started.elapsed());
                        self.flush_batch.observe_count(target - covered);
                        self.durable.send_replace(target);
                    }
                    Ok(Err(err)) => {
                        tracing::error!(cause = %err, "flushing the history store failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(err) => {
                        tracing::error!(cause = %err, "the flush task failed");
                    }
                }
            }
            if stop {
                return;
            }
        }
    }
}

/// The retention limits of one topic, resolved for one trim pass.
#[derive(Debug, Clone, Copy)]
pub struct TrimLimits {
    /// Most messages kept.
    pub max_messages: u64,
    /// Most body bytes kept.
    pub max_bytes: u64,
    /// Messages older than this (unix ms) are deleted.
    pub oldest_ms: u64,
}
