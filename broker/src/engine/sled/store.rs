//! The history store on sled: what is kept where, when it is durable, how a
//! damaged store is recognised, and how a failed one is reopened.
//!
//! # Layout
//!
//! Four trees:
//!
//! - `topics`: topic name -> `epoch | trimmed_through | created_ms |
//!   reserved_through` (u64 BE each). `trimmed_through` is the highest
//!   offset the trimmer ever deleted, so the next offset survives even when
//!   retention has emptied the topic. `reserved_through` (interval mode) is
//!   the highest offset that may have been handed out (see
//!   [Reservations](#reservations)). Records written before reservations
//!   existed are 24 bytes long and read as `reserved_through = 0`.
//! - `messages`: `epoch | offset` (u64 BE) -> `timestamp_ms (u64 BE) |
//!   body`, where body is the MessagePack body of the `message` frame as it
//!   was first sent. Keys sort by epoch, then offset, so one topic's stream
//!   is one contiguous key range and a replay is one range scan.
//! - `epochs`: `epoch (u64 BE)` -> topic name, to keep epochs unique and to
//!   find the messages of reset streams that still need deleting.
//! - `holes`: `epoch | from` -> `to` (u64 BE): offsets that may have been
//!   delivered live and were then lost (interval mode, after a crash or a
//!   store failure). Replays report them as `gap`s.
//!
//! An epoch is random (below 2^53, so JavaScript clients hold it exactly)
//! and is the key prefix of its stream, so a reset is a new prefix and a
//! lost store can never hand out an epoch a client still remembers.
//!
//! # Durability
//!
//! Every append and record write increments a write sequence. The flusher
//! (in `topics.rs`, which also releases what a flush made durable) flushes
//! sled, fsyncs its files, appends the flushed heads to the heads journal
//! ([`heads`]), and publishes the sequence it covered as a [`DurableMark`];
//! a failed flush publishes the sequence it failed to cover instead, so
//! waiting acknowledgements fail at once rather than hang. sled's own flush
//! only calls `sync_file_range` on the log, which neither flushes the
//! drive's write cache nor the file's metadata, and it never syncs its blob
//! files; the extra `fsync` of the `db` file and of new blob files closes
//! that gap.
//!
//! # Failure and reopening
//!
//! After an I/O error sled refuses every later operation with the same
//! error, even once the cause is gone (a full disk with room again). The
//! store therefore keeps sled behind a lock and can drop and reopen it in
//! place ([`Store::reopen`]); the topic layer then reconciles its state with
//! what the reopened store holds.
//!
//! # Reservations
//!
//! In `interval` mode messages are delivered before they are durable, so a
//! crash can lose offsets that subscribers saw. To never hand such an offset
//! to a second message, a topic's offsets are reserved ahead in its record:
//! an offset is used only once a record covering it is durable (or while
//! the topic's epoch itself is not yet durable, since then a crash loses the
//! whole epoch). At start, offsets between the last stored message and the
//! reservation are recorded as a hole: they may have been seen and are gone.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use rand::Rng;
use sockeye_protocol::OffsetRange;
use tokio::sync::watch;

use crate::config::{Durability, StoreConfig};
use crate::stats::{BATCH_BOUNDS, Histogram, LATENCY_BOUNDS};

use super::flusher::FlushSignal;
use super::heads::{HeadRecord, HeadsJournal, JournalError, JournaledEpoch};

/// Largest epoch value: epochs stay below 2^53.
const EPOCH_LIMIT: u64 = 1 << 53;

/// Offsets reserved ahead per topic in `interval` mode.
pub(crate) const RESERVATION: u64 = 16_384;

/// The journal is rewritten from the live heads once it grows past this.
const JOURNAL_COMPACT_BYTES: u64 = 8 << 20;

/// Free bytes the store's filesystem needs before a failed store is
/// reopened: two of sled's segments (it may start a new one while it
/// recovers) and room for the journal.
pub(crate) const MIN_FREE_BYTES: u64 = 2 * SEGMENT_BYTES + (1 << 20);

/// sled's segment size: large, so single messages stay out of blob files.
const SEGMENT_BYTES: u64 = 8 << 20;

/// Name of the heads journal in the store directory.
pub(crate) const HEADS_FILE: &str = "sockeye-heads.log";

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
    /// The heads journal could not be read or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Stored topics lost acknowledged messages (see `docs/operations.md`).
    #[error(
        "the history store lost acknowledged messages of {} topic(s): {}; \
         refusing to serve shortened streams under their old epochs. Restore the \
         data directory from a backup, or start with `store.on_damage = \"new_epoch\"` \
         (flag `--reset-damaged-topics`) to give these topics new epochs",
        .0.len(),
        describe_damage(.0)
    )]
    Damaged(Vec<Damage>),
    /// The store is failing (disk full, I/O errors) and refuses writes
    /// until it recovers.
    #[error("history store is failing; retry later")]
    Failing,
    /// The store is another server (Redis) that did not answer, or answered
    /// with an error.
    #[error("history store is unavailable: {reason}")]
    Unavailable {
        /// What went wrong.
        reason: String,
    },
    /// The flusher is gone (the store is shutting down).
    #[error("history store is closed")]
    Closed,
}

fn describe_damage(damage: &[Damage]) -> String {
    let mut text: Vec<String> = damage.iter().take(10).map(Damage::to_string).collect();
    if damage.len() > 10 {
        text.push(format!("and {} more", damage.len() - 10));
    }
    text.join("; ")
}

/// One stored topic found to have lost acknowledged data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The topic.
    pub topic: String,
    /// The epoch that lost data.
    pub epoch: u64,
    /// What is wrong.
    pub kind: DamageKind,
}

/// How a stored topic was damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// The stream ends at `found`, below the durable head `journaled`.
    Truncated {
        /// The head the journal recorded as durable.
        journaled: u64,
        /// The head the store holds.
        found: u64,
    },
    /// Offsets are missing inside the retained range.
    MissingOffsets {
        /// How many are missing.
        missing: u64,
    },
    /// The topic's record is gone, or names an epoch the journal had retired.
    Lost,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            DamageKind::Truncated { journaled, found } => write!(
                f,
                "`{}` epoch {} ends at offset {found}, but {journaled} was durable",
                self.topic, self.epoch
            ),
            DamageKind::MissingOffsets { missing } => write!(
                f,
                "`{}` epoch {} is missing {missing} offsets inside its retained range",
                self.topic, self.epoch
            ),
            DamageKind::Lost => write!(
                f,
                "`{}` epoch {} is gone from the store",
                self.topic, self.epoch
            ),
        }
    }
}

/// The position of one topic's stored stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamState {
    /// The stream's epoch.
    pub epoch: u64,
    /// Oldest retained offset; equals `visible` when nothing is retained.
    pub first: u64,
    /// The offset the next message gets.
    pub next: u64,
    /// The first offset not yet released to readers: every offset below it
    /// is durable under the durability mode (in `fsync` mode, flushed; in
    /// `interval` mode, written) and has been delivered live.
    pub visible: u64,
    /// Bytes of retained message bodies.
    pub bytes: u64,
    /// When the stream was created, unix ms.
    pub created_ms: u64,
    /// Timestamp of the oldest retained message, unix ms (0 if none), for
    /// scheduling age-based trimming.
    pub oldest_ms: u64,
    /// Offsets reserved ahead (interval mode only).
    pub reservation: Reservation,
}

/// The offsets a topic may hand out without another durable record
/// (interval mode; unused in fsync mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Reservation {
    /// Offsets up to this one may be used now.
    pub safe_through: u64,
    /// The highest reservation written to the store.
    pub written_through: u64,
    /// The write sequence of that record; once durable, `written_through`
    /// becomes safe.
    pub written_seq: u64,
}

/// One stored message, as read back.
#[derive(Debug, Clone)]
pub(crate) struct StoredMessage {
    /// Its offset.
    pub offset: u64,
    /// The MessagePack body of its `message` frame.
    pub body: sled::IVec,
}

impl StoredMessage {
    /// The body bytes.
    pub(crate) fn body(&self) -> &[u8] {
        // Reads check that a record holds its timestamp.
        self.body.get(8..).unwrap_or_default()
    }
}

/// A batch read from one stream.
#[derive(Debug, Default)]
pub(crate) struct ReadBatch {
    /// Messages in offset order.
    pub messages: Vec<StoredMessage>,
    /// True if the read reached the requested end: no message below it was
    /// left unread.
    pub reached_end: bool,
}

/// One stored topic as found when the store is opened.
#[derive(Debug, Clone)]
pub(crate) struct LoadedTopic {
    /// The topic name.
    pub name: String,
    /// Its stream.
    pub stream: StreamState,
    /// Offsets lost after being handed out (interval mode), oldest first.
    pub holes: Vec<OffsetRange>,
    /// The highest offset the store accounts for (stored, trimmed, or in a
    /// hole recorded before this open): what is compared with the journal.
    pub stored_head: u64,
}

/// What the store found when it was opened.
#[derive(Debug, Default)]
pub(crate) struct LoadReport {
    /// Every stored topic.
    pub topics: Vec<LoadedTopic>,
    /// Topics that lost acknowledged data (empty unless damaged).
    pub damaged: Vec<Damage>,
}

/// How far flushes got: what the flusher made durable, and the writes whose
/// flush failed (they are never acknowledged, and in `fsync` mode never
/// stored: see `Topics::reconcile`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct DurableMark {
    /// Writes up to this sequence are durable, but for failed ones.
    pub through: u64,
    /// Ranges of write sequences (inclusive) whose flush failed, oldest
    /// first; one per failure episode, at most [`MAX_FAILED_RANGES`].
    pub failed: Arc<Vec<(u64, u64)>>,
}

/// Failure episodes remembered in a [`DurableMark`]; older ones are merged.
pub(crate) const MAX_FAILED_RANGES: usize = 64;

/// Whether a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckState {
    /// Durable under the durability mode.
    Acked,
    /// Its flush failed: answer `storage_failed`.
    Failed,
    /// Not yet flushed.
    Waiting,
}

impl DurableMark {
    /// The state of write `write` under this mark.
    pub(crate) fn ack_state(&self, write: u64) -> AckState {
        if self
            .failed
            .iter()
            .rev()
            .any(|&(from, to)| (from..=to).contains(&write))
        {
            AckState::Failed
        } else if write <= self.through {
            AckState::Acked
        } else {
            AckState::Waiting
        }
    }

    fn add_failed(&mut self, from: u64, to: u64) {
        if from > to {
            return;
        }
        let failed = Arc::make_mut(&mut self.failed);
        match failed.last_mut() {
            Some(last) if from <= last.1 + 1 && to >= last.0 => {
                last.0 = last.0.min(from);
                last.1 = last.1.max(to);
            }
            _ => failed.push((from, to)),
        }
        if failed.len() > MAX_FAILED_RANGES {
            let merged = (failed[0].0, failed[1].1);
            failed.splice(0..2, [merged]);
        }
    }
}

/// The sled handles, replaced as a whole when the store is reopened.
struct Sled {
    db: sled::Db,
    topics: sled::Tree,
    messages: sled::Tree,
    epochs: sled::Tree,
    holes: sled::Tree,
    /// sled's data file, kept open for the `fdatasync` after each flush
    /// (an `open` and a `close` fewer per group commit); `None` for a
    /// temporary store. A reopen opens it again with the new handles.
    db_file: Option<File>,
}

impl Sled {
    fn open(dir: Option<&Path>, config: &StoreConfig) -> Result<Self, StoreError> {
        let sled_config = sled::Config::new()
            .cache_capacity(config.cache_capacity.as_u64())
            // Our flusher flushes and fsyncs on its own schedule.
            .flush_every_ms(None)
            .segment_size(SEGMENT_BYTES as usize);
        let db = match dir {
            Some(dir) => sled_config.path(dir).open()?,
            None => sled_config.temporary(true).open()?,
        };
        let db_file = match dir {
            Some(dir) => {
                let path = dir.join("db");
                Some(File::open(&path).map_err(io_error(&path))?)
            }
            None => None,
        };
        Ok(Self {
            topics: db.open_tree("topics")?,
            messages: db.open_tree("messages")?,
            epochs: db.open_tree("epochs")?,
            holes: db.open_tree("holes")?,
            db,
            db_file,
        })
    }
}

/// The history store.
pub(crate) struct Store {
    sled: RwLock<Sled>,
    dir: PathBuf,
    config: StoreConfig,
    durability: Durability,
    /// Set when the temporary flag is on (tests): no fsync, no journal.
    temporary: bool,
    /// Writes (appends and record updates) made so far.
    written: AtomicU64,
    /// Body bytes appended so far, and the part a flush has covered: the
    /// difference is what a stalled disk keeps in memory.
    written_bytes: AtomicU64,
    flushed_bytes: AtomicU64,
    /// How far flushes got.
    durable: watch::Sender<DurableMark>,
    /// Wakes the flusher thread when an acknowledgement or a release is
    /// waiting, and tells it to stop.
    pub(super) flush_signal: FlushSignal,
    /// Blob files already fsynced (sled writes large pages as separate files).
    synced_blobs: Mutex<HashSet<PathBuf>>,
    /// The heads journal (`None` for temporary stores).
    journal: Mutex<Option<HeadsJournal>>,
    /// Set while flushes fail; writes are refused until a flush succeeds.
    failing: AtomicBool,
    /// What the last failure was, for `/readyz`.
    failure: Mutex<Option<String>>,
    /// Duration of each flush (sled flush plus fsync), for the metrics.
    pub flush_latency: Histogram,
    /// Appends covered by each flush, for the metrics: how well concurrent
    /// publishers share flushes.
    pub flush_batch: Histogram,
    /// Flushes that failed.
    pub flush_failures: AtomicU64,
    /// Times sled was reopened after failing.
    pub reopens: AtomicU64,
    /// Topics found to have lost acknowledged data (at start or after a
    /// reopen) and given new epochs.
    pub damaged_topics: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

fn key(epoch: u64, offset: u64) -> [u8; 16] {
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
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

/// A topic record as stored.
#[derive(Debug, Clone, Copy)]
struct TopicRecord {
    epoch: u64,
    trimmed_through: u64,
    created_ms: u64,
    reserved_through: u64,
}

impl TopicRecord {
    fn decode(record: &[u8]) -> Option<Self> {
        Some(Self {
            epoch: be_u64(record, 0)?,
            trimmed_through: be_u64(record, 8)?,
            created_ms: be_u64(record, 16)?,
            reserved_through: be_u64(record, 24).unwrap_or(0),
        })
    }

    fn encode(&self) -> [u8; 32] {
        let mut record = [0u8; 32];
        record[..8].copy_from_slice(&self.epoch.to_be_bytes());
        record[8..16].copy_from_slice(&self.trimmed_through.to_be_bytes());
        record[16..24].copy_from_slice(&self.created_ms.to_be_bytes());
        record[24..].copy_from_slice(&self.reserved_through.to_be_bytes());
        record
    }
}

/// What a scan of one stream found.
#[derive(Debug, Default)]
struct Scan {
    first: Option<u64>,
    last: Option<u64>,
    count: u64,
    bytes: u64,
    oldest_ms: u64,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub(crate) fn open(dir: &Path, config: &StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let sled = Sled::open(Some(dir), config)?;
        Self::build(sled, dir.to_path_buf(), config, false)
    }

    fn build(
        sled: Sled,
        dir: PathBuf,
        config: &StoreConfig,
        temporary: bool,
    ) -> Result<Self, StoreError> {
        let store = Self {
            sled: RwLock::new(sled),
            dir,
            config: config.clone(),
            durability: config.durability,
            temporary,
            written: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            flushed_bytes: AtomicU64::new(0),
            durable: watch::Sender::new(DurableMark::default()),
            flush_signal: FlushSignal::default(),
            synced_blobs: Mutex::new(HashSet::new()),
            journal: Mutex::new(None),
            failing: AtomicBool::new(false),
            failure: Mutex::new(None),
            flush_latency: Histogram::new(LATENCY_BOUNDS),
            flush_batch: Histogram::new(BATCH_BOUNDS),
            flush_failures: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            damaged_topics: AtomicU64::new(0),
        };
        store.delete_orphaned_streams()?;
        Ok(store)
    }

    fn sled(&self) -> RwLockReadGuard<'_, Sled> {
        self.sled
            .read()
            .expect("no code panics while holding the sled handles")
    }

    fn next_write(&self) -> u64 {
        self.written.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The write sequence of the latest write.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Loads every stored topic and checks it against the heads journal.
    /// Offsets that may have been handed out without being stored (interval
    /// mode, after an unclean stop) are recorded as holes first.
    pub(crate) fn load(&self) -> Result<LoadReport, StoreError> {
        let journal = if self.temporary {
            None
        } else {
            let path = self.dir.join(HEADS_FILE);
            let (journal, existing) = HeadsJournal::open(&path)?;
            *self.journal() = Some(journal);
            existing
        };
        let mut report = self.scan_topics()?;
        if let Some(journaled) = journal {
            report.damaged = check_against_journal(&report.topics, &journaled);
        }
        Ok(report)
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Option<HeadsJournal>> {
        self.journal
            .lock()
            .expect("no code panics while holding the journal")
    }

    /// Every stored topic as the store holds it now, with holes recorded
    /// for reservations past the last stored offset, and streams with
    /// missing offsets reported as damaged.
    fn scan_topics(&self) -> Result<LoadReport, StoreError> {
        let sled = self.sled();
        let mut report = LoadReport::default();
        let mut new_holes = Vec::new();
        for entry in sled.topics.iter() {
            let (name, record) = entry?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| StoreError::Corrupt {
                what: "a topic name".into(),
            })?;
            let record = TopicRecord::decode(&record).ok_or_else(|| StoreError::Corrupt {
                what: format!("topic {name}"),
            })?;
            let scan = scan_stream(&sled, record.epoch, &name)?;
            let mut holes = read_holes(&sled, record.epoch)?;
            let stored_head = scan
                .last
                .unwrap_or(0)
                .max(record.trimmed_through)
                .max(holes.last().map_or(0, |hole| hole.to));
            if record.reserved_through > stored_head {
                // Handed out, perhaps delivered, and not stored: a crash in
                // interval mode. Never reuse them; tell resumers.
                let hole = OffsetRange {
                    from: stored_head + 1,
                    to: record.reserved_through,
                };
                new_holes.push((record.epoch, hole));
                holes.push(hole);
            }
            let next = stored_head.max(record.reserved_through) + 1;
            let first = scan.first.unwrap_or(next);
            if let Some(last) = scan.last {
                let in_holes: u64 = holes.iter().map(|hole| overlap(hole, first, last)).sum();
                let expected = last - first + 1 - in_holes;
                if scan.count < expected {
                    report.damaged.push(Damage {
                        topic: name.clone(),
                        epoch: record.epoch,
                        kind: DamageKind::MissingOffsets {
                            missing: expected - scan.count,
                        },
                    });
                }
            }
            holes.retain(|hole| hole.to >= first);
            report.topics.push(LoadedTopic {
                name,
                stream: StreamState {
                    epoch: record.epoch,
                    first,
                    next,
                    visible: next,
                    bytes: scan.bytes,
                    created_ms: record.created_ms,
                    oldest_ms: scan.oldest_ms,
                    reservation: Reservation {
                        safe_through: next - 1,
                        written_through: next - 1,
                        written_seq: 0,
                    },
                },
                holes,
                stored_head,
            });
        }
        for (epoch, hole) in new_holes {
            sled.holes
                .insert(key(epoch, hole.from), &hole.to.to_be_bytes())?;
        }
        Ok(report)
    }

    fn fresh_epoch(&self, sled: &Sled, topic: &str) -> Result<u64, StoreError> {
        loop {
            let epoch = rand::rng().random_range(1..EPOCH_LIMIT);
            let claimed = sled.epochs.compare_and_swap(
                epoch.to_be_bytes(),
                None as Option<&[u8]>,
                Some(topic.as_bytes()),
            )?;
            if claimed.is_ok() {
                return Ok(epoch);
            }
        }
    }

    /// Writes `topic`'s record from `stream`; returns its write sequence.
    /// Callers hold the topic's lock, so records of one topic are written
    /// in order and a reservation is never overwritten by an older one.
    pub(crate) fn write_record(
        &self,
        topic: &str,
        stream: &StreamState,
    ) -> Result<u64, StoreError> {
        let record = TopicRecord {
            epoch: stream.epoch,
            trimmed_through: stream.first.saturating_sub(1),
            created_ms: stream.created_ms,
            reserved_through: stream.reservation.written_through,
        };
        self.sled()
            .topics
            .insert(topic.as_bytes(), &record.encode()[..])?;
        Ok(self.next_write())
    }

    /// Starts the stored stream of a topic seen for the first time (or after
    /// a reset). In interval mode its first reservation is usable at once:
    /// until the record is durable a crash loses the whole epoch, so no
    /// offset of it can be reused.
    pub(crate) fn create_stream(&self, topic: &str) -> Result<StreamState, StoreError> {
        let epoch = self.fresh_epoch(&self.sled(), topic)?;
        let reserved = match self.durability {
            Durability::Interval => RESERVATION,
            Durability::Fsync => 0,
        };
        let mut stream = StreamState {
            epoch,
            first: 1,
            next: 1,
            visible: 1,
            bytes: 0,
            created_ms: now_ms(),
            oldest_ms: 0,
            reservation: Reservation {
                safe_through: reserved,
                written_through: reserved,
                written_seq: 0,
            },
        };
        stream.reservation.written_seq = self.write_record(topic, &stream)?;
        Ok(stream)
    }

    /// Deletes every message and hole of a stream (after a reset).
    pub(crate) fn delete_stream(&self, epoch: u64) -> Result<(), StoreError> {
        let sled = self.sled();
        for tree in [&sled.messages, &sled.holes] {
            let mut batch = sled::Batch::default();
            let mut pending = 0;
            for key in tree.scan_prefix(epoch.to_be_bytes()).keys() {
                batch.remove(key?);
                pending += 1;
                if pending == 4096 {
                    tree.apply_batch(std::mem::take(&mut batch))?;
                    pending = 0;
                }
            }
            tree.apply_batch(batch)?;
        }
        sled.epochs.remove(epoch.to_be_bytes())?;
        Ok(())
    }

    /// Deletes the messages of epochs that no topic refers to any more (left
    /// behind when a reset was interrupted).
    fn delete_orphaned_streams(&self) -> Result<(), StoreError> {
        let mut orphans = Vec::new();
        {
            let sled = self.sled();
            let mut live = HashSet::new();
            for record in sled.topics.iter().values() {
                if let Some(epoch) = be_u64(&record?, 0) {
                    live.insert(epoch);
                }
            }
            for key in sled.epochs.iter().keys() {
                if let Some(epoch) = be_u64(&key?, 0)
                    && !live.contains(&epoch)
                {
                    orphans.push(epoch);
                }
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
    pub(crate) fn append(
        &self,
        epoch: u64,
        offset: u64,
        timestamp_ms: u64,
        body: &[u8],
    ) -> Result<u64, StoreError> {
        let mut value = Vec::with_capacity(8 + body.len());
        value.extend_from_slice(&timestamp_ms.to_be_bytes());
        value.extend_from_slice(body);
        self.sled().messages.insert(key(epoch, offset), value)?;
        self.written_bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(self.next_write())
    }

    /// Body bytes appended but not yet covered by a flush.
    pub(crate) fn unflushed_bytes(&self) -> u64 {
        self.written_bytes
            .load(Ordering::Relaxed)
            .saturating_sub(self.flushed_bytes.load(Ordering::Relaxed))
    }

    /// Records offsets `hole` of `epoch` as lost after being handed out.
    pub(crate) fn record_hole(&self, epoch: u64, hole: OffsetRange) -> Result<u64, StoreError> {
        self.sled()
            .holes
            .insert(key(epoch, hole.from), &hole.to.to_be_bytes())?;
        Ok(self.next_write())
    }

    /// Deletes the messages of `epoch` from `from` on (writes whose flush
    /// failed, before anyone could read them).
    pub(crate) fn delete_from(&self, epoch: u64, from: u64) -> Result<(), StoreError> {
        let sled = self.sled();
        let mut batch = sled::Batch::default();
        for key in sled
            .messages
            .range(key(epoch, from)..=key(epoch, u64::MAX))
            .keys()
        {
            batch.remove(key?);
        }
        sled.messages.apply_batch(batch)?;
        Ok(())
    }

    /// Reads messages of `epoch` with offsets in `from..until`, in offset
    /// order: at most `max`, and past the first at most `max_bytes` of
    /// stored records. Missing offsets (trimmed, holes) are simply absent.
    pub(crate) fn read(
        &self,
        epoch: u64,
        from: u64,
        until: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, StoreError> {
        if from >= until {
            return Ok(ReadBatch {
                messages: Vec::new(),
                reached_end: true,
            });
        }
        let sled = self.sled();
        let mut out = Vec::with_capacity(max.min(1024));
        let mut bytes = 0;
        let mut reached_end = true;
        for entry in sled.messages.range(key(epoch, from)..key(epoch, until)) {
            let (key, value) = entry?;
            if out.len() == max || (!out.is_empty() && bytes + value.len() > max_bytes) {
                reached_end = false;
                break;
            }
            bytes += value.len();
            let corrupt = || StoreError::Corrupt {
                what: format!("message in epoch {epoch}"),
            };
            if value.len() < 8 {
                return Err(corrupt());
            }
            out.push(StoredMessage {
                offset: be_u64(&key, 8).ok_or_else(corrupt)?,
                body: value,
            });
        }
        Ok(ReadBatch {
            messages: out,
            reached_end,
        })
    }

    /// Finds the oldest messages of a stream that break a retention limit,
    /// at most `max_deletions` of them, without deleting anything. Returns
    /// the plan, or `None` if nothing breaks a limit.
    pub(crate) fn plan_trim(
        &self,
        state: &StreamState,
        limits: TrimLimits,
        max_deletions: usize,
    ) -> Result<Option<TrimPlan>, StoreError> {
        let count = state.visible - state.first;
        let mut excess_messages = count.saturating_sub(limits.max_messages);
        let mut excess_bytes = state.bytes.saturating_sub(limits.max_bytes);
        let sled = self.sled();
        let mut plan = TrimPlan::default();
        let range = key(state.epoch, state.first)..key(state.epoch, state.visible);
        for entry in sled.messages.range(range) {
            let (key, value) = entry?;
            let timestamp = be_u64(&value, 0).unwrap_or(0);
            let too_old = timestamp < limits.oldest_ms;
            let capped = plan.keys.len() == max_deletions;
            if (excess_messages == 0 && excess_bytes == 0 && !too_old) || capped {
                plan.next_oldest_ms = timestamp;
                plan.capped = capped;
                break;
            }
            let size = value.len().saturating_sub(8) as u64;
            excess_messages = excess_messages.saturating_sub(1);
            excess_bytes = excess_bytes.saturating_sub(size);
            plan.freed += size;
            plan.through = be_u64(&key, 8).unwrap_or(plan.through);
            plan.keys.push(key);
        }
        Ok((!plan.keys.is_empty()).then_some(plan))
    }

    /// Deletes what a trim plan found (after the topic's record says the
    /// new first offset, so a crash in between keeps the next offset).
    pub(crate) fn apply_trim(&self, plan: TrimPlan) -> Result<(), StoreError> {
        let sled = self.sled();
        let mut batch = sled::Batch::default();
        for key in plan.keys {
            batch.remove(key);
        }
        sled.messages.apply_batch(batch)?;
        Ok(())
    }

    /// Deletes the hole records of `epoch` that end below `first`.
    pub(crate) fn delete_holes_below(&self, epoch: u64, first: u64) -> Result<(), StoreError> {
        let sled = self.sled();
        let mut batch = sled::Batch::default();
        for entry in sled.holes.range(key(epoch, 0)..key(epoch, first)) {
            let (key, to) = entry?;
            if be_u64(&to, 0).is_some_and(|to| to < first) {
                batch.remove(key);
            }
        }
        sled.holes.apply_batch(batch)?;
        Ok(())
    }

    /// Bytes the store occupies on disk.
    pub(crate) fn size_on_disk(&self) -> u64 {
        self.sled().db.size_on_disk().unwrap_or(0)
    }

    /// Asks the flusher to flush soon (an acknowledgement is waiting).
    pub(crate) fn request_flush(&self) {
        self.flush_signal.request();
    }

    /// A receiver of the durable mark.
    pub(crate) fn durable(&self) -> watch::Receiver<DurableMark> {
        self.durable.subscribe()
    }

    /// The write sequence up to which writes are acknowledged: in `fsync`
    /// mode what the flusher covered, in `interval` mode every write.
    pub(crate) fn acknowledged_through(&self) -> u64 {
        match self.durability {
            Durability::Fsync => self.durable.borrow().through,
            Durability::Interval => self.written.load(Ordering::Acquire),
        }
    }

    /// True once a flush has covered write `write`.
    pub(crate) fn is_durable(&self, write: u64) -> bool {
        self.durable.borrow().through >= write
    }

    /// Whether write `write` is acknowledged now.
    pub(crate) fn ack_state(&self, write: u64) -> AckState {
        match self.durability {
            Durability::Fsync => self.durable.borrow().ack_state(write),
            Durability::Interval => AckState::Acked,
        }
    }

    /// True while the store refuses writes after failing.
    pub(crate) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// What the current failure is, if the store is failing.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .expect("no code panics while holding the failure")
            .clone()
    }

    /// Flushes sled and fsyncs its files, then journals `heads` (appended,
    /// or as the whole new journal if `rewrite`); blocking. On success,
    /// every write made before the call is durable.
    pub(crate) fn flush(&self, heads: &[HeadRecord], rewrite: bool) -> Result<(), StoreError> {
        let flushed_bytes = self.written_bytes.load(Ordering::Relaxed);
        {
            let sled = self.sled();
            sled.db.flush()?;
            // fdatasync, not fsync: sled preallocates its segments, so the
            // file's size rarely changes and its other metadata is not
            // needed to read the data back.
            if let Some(db_file) = &sled.db_file {
                db_file
                    .sync_data()
                    .map_err(io_error(&self.dir.join("db")))?;
            }
        }
        if !self.temporary {
            self.sync_new_blobs()?;
            let mut journal = self.journal();
            if let Some(current) = journal.as_mut() {
                if rewrite {
                    let path = current.path().to_path_buf();
                    *journal = Some(HeadsJournal::create(&path, heads)?);
                } else {
                    current.append(heads)?;
                }
            }
        }
        self.flushed_bytes
            .fetch_max(flushed_bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Fails the acknowledgement of every write up to `through` that no
    /// flush has covered yet (after a reopen dropped them).
    pub(crate) fn fail_writes_through(&self, through: u64) {
        self.durable.send_modify(|mark| {
            let from = mark.through + 1;
            mark.add_failed(from, through);
        });
    }

    /// Publishes that writes up to `target` are durable, and that the store
    /// works again if it was failing.
    pub(crate) fn mark_durable(&self, target: u64) {
        self.durable.send_modify(|mark| {
            mark.through = mark.through.max(target);
        });
        if self.failing.swap(false, Ordering::AcqRel) {
            *self
                .failure
                .lock()
                .expect("no code panics while holding the failure") = None;
            tracing::info!("the history store works again");
        }
    }

    /// Publishes that writes after the durable mark up to `target` failed:
    /// their acknowledgements fail, and writes are refused until a flush
    /// succeeds. Returns true if the store was working until now.
    pub(crate) fn mark_failed(&self, target: u64, error: &StoreError) -> bool {
        self.flush_failures.fetch_add(1, Ordering::Relaxed);
        self.durable.send_modify(|mark| {
            let from = mark.through + 1;
            mark.add_failed(from, target);
        });
        *self
            .failure
            .lock()
            .expect("no code panics while holding the failure") = Some(error.to_string());
        !self.failing.swap(true, Ordering::AcqRel)
    }

    /// Fails unless the store's filesystem has room for sled to reopen and
    /// write ([`MIN_FREE_BYTES`]).
    pub(crate) fn check_room(&self) -> Result<(), StoreError> {
        if self.temporary {
            return Ok(());
        }
        let available = fs2::available_space(&self.dir).map_err(io_error(&self.dir))?;
        if available < MIN_FREE_BYTES {
            return Err(StoreError::Io {
                path: self.dir.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!(
                        "{available} bytes free; waiting for {MIN_FREE_BYTES} before reopening"
                    ),
                ),
            });
        }
        Ok(())
    }

    /// Drops sled and opens it again (sled refuses everything after an I/O
    /// error until reopened). The caller reconciles its state with
    /// [`Store::scan`] afterwards.
    pub(crate) fn reopen(&self) -> Result<(), StoreError> {
        if self.temporary {
            // A temporary store cannot be reopened (its files go with it);
            // a flush retry is all it gets.
            return Ok(());
        }
        let mut slot = self
            .sled
            .write()
            .expect("no code panics while holding the sled handles");
        // sled holds a lock on its files until the last handle is dropped:
        // swap in a throwaway in-memory store, drop the old one, reopen.
        let placeholder = Sled::open(None, &self.config)?;
        drop(std::mem::replace(&mut *slot, placeholder));
        *slot = Sled::open(Some(&self.dir), &self.config)?;
        drop(slot);
        self.synced_blobs
            .lock()
            .expect("no code panics while holding synced_blobs")
            .clear();
        self.reopens.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Every stored topic as the store holds it now (after a reopen).
    pub(crate) fn scan(&self) -> Result<HashMap<String, LoadedTopic>, StoreError> {
        let report = self.scan_topics()?;
        Ok(report
            .topics
            .into_iter()
            .map(|topic| (topic.name.clone(), topic))
            .collect())
    }

    /// True when the journal should be rewritten from the live heads.
    pub(crate) fn journal_wants_compaction(&self) -> bool {
        self.journal()
            .as_ref()
            .is_some_and(|journal| journal.len() > JOURNAL_COMPACT_BYTES)
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

    /// The configured flush period.
    pub(crate) fn flush_interval(&self) -> Duration {
        self.config.flush_interval
    }
}

/// How many offsets of `hole` fall inside `first..=last`.
fn overlap(hole: &OffsetRange, first: u64, last: u64) -> u64 {
    let from = hole.from.max(first);
    let to = hole.to.min(last);
    if from > to { 0 } else { to - from + 1 }
}

fn scan_stream(sled: &Sled, epoch: u64, name: &str) -> Result<Scan, StoreError> {
    let corrupt = || StoreError::Corrupt {
        what: format!("a message of topic {name}"),
    };
    let mut scan = Scan::default();
    for entry in sled.messages.scan_prefix(epoch.to_be_bytes()) {
        let (key, value) = entry?;
        let offset = be_u64(&key, 8).ok_or_else(corrupt)?;
        if scan.first.is_none() {
            scan.first = Some(offset);
            scan.oldest_ms = be_u64(&value, 0).ok_or_else(corrupt)?;
        }
        scan.last = Some(offset);
        scan.count += 1;
        scan.bytes += value.len().saturating_sub(8) as u64;
    }
    Ok(scan)
}

fn read_holes(sled: &Sled, epoch: u64) -> Result<Vec<OffsetRange>, StoreError> {
    let mut holes = Vec::new();
    for entry in sled.holes.scan_prefix(epoch.to_be_bytes()) {
        let (key, to) = entry?;
        if let (Some(from), Some(to)) = (be_u64(&key, 8), be_u64(&to, 0)) {
            holes.push(OffsetRange { from, to });
        }
    }
    Ok(holes)
}

/// Compares what the store holds with what the journal recorded as durable.
fn check_against_journal(
    topics: &[LoadedTopic],
    journaled: &HashMap<u64, JournaledEpoch>,
) -> Vec<Damage> {
    let by_name: HashMap<&str, &LoadedTopic> = topics
        .iter()
        .map(|topic| (topic.name.as_str(), topic))
        .collect();
    let mut damaged = Vec::new();
    for (&epoch, entry) in journaled {
        if entry.retired {
            continue;
        }
        match by_name.get(entry.topic.as_str()) {
            Some(topic) if topic.stream.epoch == epoch => {
                let found = topic.stored_head;
                if found < entry.head {
                    damaged.push(Damage {
                        topic: entry.topic.clone(),
                        epoch,
                        kind: DamageKind::Truncated {
                            journaled: entry.head,
                            found,
                        },
                    });
                }
            }
            // Another epoch: a reset after the last journal write (a newer
            // epoch, unknown to the journal) or a rollback, caught below.
            Some(_) => {}
            None if entry.head > 0 => damaged.push(Damage {
                topic: entry.topic.clone(),
                epoch,
                kind: DamageKind::Lost,
            }),
            None => {}
        }
    }
    // A topic back at an epoch the journal saw retired: sled lost the
    // reset (and what was published after it).
    for topic in topics {
        if journaled
            .get(&topic.stream.epoch)
            .is_some_and(|entry| entry.retired)
        {
            damaged.push(Damage {
                topic: topic.name.clone(),
                epoch: topic.stream.epoch,
                kind: DamageKind::Lost,
            });
        }
    }
    damaged.sort_by(|a, b| a.topic.cmp(&b.topic));
    damaged
}

/// The retention limits of one topic, resolved for one trim pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrimLimits {
    /// Most messages kept.
    pub max_messages: u64,
    /// Most body bytes kept.
    pub max_bytes: u64,
    /// Messages older than this (unix ms) are deleted.
    pub oldest_ms: u64,
}

/// What one trim step will delete.
#[derive(Debug, Default)]
pub(crate) struct TrimPlan {
    /// Keys to delete, oldest first.
    keys: Vec<sled::IVec>,
    /// The last offset deleted.
    pub(crate) through: u64,
    /// Body bytes freed.
    pub(crate) freed: u64,
    /// Timestamp of the oldest message kept (0 if the plan reached the
    /// end of the readable stream).
    pub(crate) next_oldest_ms: u64,
    /// True if the plan stopped at its deletion cap with more to delete.
    pub(crate) capped: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(name: &str, epoch: u64, next: u64) -> LoadedTopic {
        LoadedTopic {
            name: name.into(),
            stream: StreamState {
                epoch,
                first: 1,
                next,
                visible: next,
                bytes: 0,
                created_ms: 0,
                oldest_ms: 0,
                reservation: Reservation::default(),
            },
            holes: Vec::new(),
            stored_head: next - 1,
        }
    }

    fn journaled(topic: &str, head: u64, retired: bool) -> JournaledEpoch {
        JournaledEpoch {
            topic: topic.into(),
            head,
            retired,
        }
    }

    #[test]
    fn a_stream_shorter_than_its_journaled_head_is_damaged() {
        let topics = vec![loaded("a", 7, 11), loaded("b", 8, 6)];
        let journal = HashMap::from([
            (7, journaled("a", 10, false)),
            (8, journaled("b", 9, false)),
        ]);
        let damage = check_against_journal(&topics, &journal);
        assert_eq!(
            damage,
            vec![Damage {
                topic: "b".into(),
                epoch: 8,
                kind: DamageKind::Truncated {
                    journaled: 9,
                    found: 5
                }
            }]
        );
    }

    #[test]
    fn a_lost_topic_is_damaged_but_a_reset_one_is_not() {
        // `a` was reset after the last journal write (new epoch 9, unknown
        // to the journal); `b` is gone; `c` rolled back to a retired epoch.
        let topics = vec![loaded("a", 9, 1), loaded("c", 3, 5)];
        let journal = HashMap::from([
            (7, journaled("a", 10, false)),
            (8, journaled("b", 4, false)),
            (3, journaled("c", 4, true)),
            (4, journaled("c", 2, false)),
        ]);
        let damage = check_against_journal(&topics, &journal);
        let lost: Vec<&str> = damage.iter().map(|d| d.topic.as_str()).collect();
        assert_eq!(lost, vec!["b", "c"]);
    }
}
