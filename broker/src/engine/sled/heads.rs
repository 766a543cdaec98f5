//! The heads journal: each stored topic's durable head, recorded outside
//! sled so that damage sled's recovery would hide cannot go unnoticed.
//!
//! sled recovers from a truncated or corrupted log by keeping what it can
//! read and dropping the rest, silently. The journal is a small append-only
//! file next to sled's, written by the flusher *after* each successful sled
//! flush (and before any acknowledgement of that flush goes out): for every
//! topic written since the previous flush, its epoch and the highest offset
//! that flush made durable. At start the store compares what sled recovered
//! with the journal; a topic whose stream ends below its journaled head, or
//! that is missing altogether, lost acknowledged data.
//!
//! # Format
//!
//! A header line [`MAGIC`], then records: `len u32 LE | crc32 u32 LE |
//! payload`, where the payload is `kind u8 | epoch u64 BE | head u64 BE |
//! topic name` (kind 1, a head) or `kind u8 | epoch u64 BE` (kind 2, an
//! epoch retired by a reset or a deletion). A record cut short at the very
//! end of the file is a write the crash interrupted and is ignored (its
//! flush's acknowledgements were never sent); any other bad record makes the
//! journal unreadable, which the store reports like damage.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// First bytes of every journal file.
pub(crate) const MAGIC: &[u8] = b"sockeye heads journal v1\n";

/// Largest record payload read back (a topic name is at most 4 KiB).
const MAX_PAYLOAD: usize = 17 + 4096;

const KIND_HEAD: u8 = 1;
const KIND_RETIRED: u8 = 2;

/// What the journal says about one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JournaledEpoch {
    /// The topic the epoch belongs to.
    pub(crate) topic: String,
    /// The highest offset known durable.
    pub(crate) head: u64,
    /// Set when the epoch was reset or deleted.
    pub(crate) retired: bool,
}

/// One record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeadRecord {
    /// `topic`'s stream `epoch` is durable through `head`.
    Head {
        /// The epoch.
        epoch: u64,
        /// The highest durable offset.
        head: u64,
        /// The topic.
        topic: String,
    },
    /// The epoch no longer exists (reset, deleted).
    Retired {
        /// The epoch.
        epoch: u64,
    },
}

/// The journal could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// Reading or writing the file failed.
    #[error("heads journal {path}")]
    Io {
        /// The journal file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a journal, or a record in it is damaged. The store
    /// cannot tell what was durable; it refuses to start (move the file
    /// away to start without the check, at your own risk).
    #[error("heads journal {path} is damaged at byte {at}: {what}")]
    Damaged {
        /// The journal file.
        path: String,
        /// Where the damage starts.
        at: u64,
        /// What is wrong.
        what: &'static str,
    },
}

/// The open journal, appended to by the flusher.
#[derive(Debug)]
pub(crate) struct HeadsJournal {
    path: PathBuf,
    file: File,
    /// Bytes in the file, for deciding when to compact.
    len: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn encode(record: &HeadRecord, out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(32);
    match record {
        HeadRecord::Head { epoch, head, topic } => {
            payload.push(KIND_HEAD);
            payload.extend_from_slice(&epoch.to_be_bytes());
            payload.extend_from_slice(&head.to_be_bytes());
            payload.extend_from_slice(topic.as_bytes());
        }
        HeadRecord::Retired { epoch } => {
            payload.push(KIND_RETIRED);
            payload.extend_from_slice(&epoch.to_be_bytes());
        }
    }
    let len = u32::try_from(payload.len()).expect("a record is a few KiB at most");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    bytes.get(..8)?.try_into().ok().map(u64::from_be_bytes)
}

/// Parses a whole journal file into the state of every epoch it names, and
/// the length of its readable part (shorter than the file after a torn
/// final append).
fn parse(path: &Path, bytes: &[u8]) -> Result<(HashMap<u64, JournaledEpoch>, usize), JournalError> {
    let damaged = |at: usize, what| JournalError::Damaged {
        path: path.display().to_string(),
        at: at as u64,
        what,
    };
    if !bytes.starts_with(MAGIC) {
        return Err(damaged(0, "not a heads journal"));
    }
    let mut epochs: HashMap<u64, JournaledEpoch> = HashMap::new();
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 8) else {
            // A header cut short by a crash mid-append.
            break;
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let end = at + 8 + len;
        if end > bytes.len() {
            if len <= MAX_PAYLOAD {
                // The last record, cut short by a crash mid-append.
                break;
            }
            return Err(damaged(at, "a record length is out of range"));
        }
        let payload = &bytes[at + 8..end];
        if crc32fast::hash(payload) != crc {
            if end == bytes.len() {
                // A torn final write can leave a whole-looking record with
                // stale bytes; its acknowledgements were never sent.
                break;
            }
            return Err(damaged(at, "a record fails its checksum"));
        }
        match payload.first() {
            Some(&KIND_HEAD) => {
                let (Some(epoch), Some(head)) = (
                    payload.get(1..).and_then(be_u64),
                    payload.get(9..).and_then(be_u64),
                ) else {
                    return Err(damaged(at, "a head record is too short"));
                };
                let topic = std::str::from_utf8(&payload[17..])
                    .map_err(|_| damaged(at, "a topic name is not UTF-8"))?;
                let entry = epochs.entry(epoch).or_insert_with(|| JournaledEpoch {
                    topic: topic.to_owned(),
                    head: 0,
                    retired: false,
                });
                entry.head = entry.head.max(head);
            }
            Some(&KIND_RETIRED) => {
                let Some(epoch) = payload.get(1..).and_then(be_u64) else {
                    return Err(damaged(at, "a retire record is too short"));
                };
                if let Some(entry) = epochs.get_mut(&epoch) {
                    entry.retired = true;
                }
            }
            _ => return Err(damaged(at, "unknown record kind")),
        }
        at = end;
    }
    Ok((epochs, at))
}

impl HeadsJournal {
    /// Opens the journal at `path` and reads it, without changing what it
    /// holds (but for cutting off a torn final record, so appends follow
    /// whole ones). A missing file is created empty and read as `None`: a
    /// new store, or one from before journals existed.
    pub(crate) fn open(
        path: &Path,
    ) -> Result<(Self, Option<HashMap<u64, JournaledEpoch>>), JournalError> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes).map_err(io(path))?;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Self::create(path, &[])?, None));
            }
            Err(err) => return Err(io(path)(err)),
        }
        let (epochs, readable) = parse(path, &bytes)?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io(path))?;
        if readable < bytes.len() {
            file.set_len(readable as u64).map_err(io(path))?;
            file.sync_all().map_err(io(path))?;
        }
        let journal = Self {
            path: path.to_path_buf(),
            file,
            len: readable as u64,
        };
        Ok((journal, Some(epochs)))
    }

    /// Replaces the journal with one holding exactly `records`, atomically
    /// (a temporary file renamed over it, then the directory synced).
    pub(crate) fn create(path: &Path, records: &[HeadRecord]) -> Result<Self, JournalError> {
        let temporary = path.with_extension("tmp");
        let mut bytes = MAGIC.to_vec();
        for record in records {
            encode(record, &mut bytes);
        }
        {
            let mut file = File::create(&temporary).map_err(io(&temporary))?;
            file.write_all(&bytes).map_err(io(&temporary))?;
            file.sync_all().map_err(io(&temporary))?;
        }
        std::fs::rename(&temporary, path).map_err(io(path))?;
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io(dir))?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len: bytes.len() as u64,
        })
    }

    /// Appends `records` and syncs them to disk.
    pub(crate) fn append(&mut self, records: &[HeadRecord]) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(records.len() * 48);
        for record in records {
            encode(record, &mut bytes);
        }
        self.file.write_all(&bytes).map_err(io(&self.path))?;
        self.file.sync_data().map_err(io(&self.path))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Bytes in the journal file.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The journal's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(epoch: u64, head: u64, topic: &str) -> HeadRecord {
        HeadRecord::Head {
            epoch,
            head,
            topic: topic.into(),
        }
    }

    #[test]
    fn records_read_back_with_the_highest_head_and_retirements() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("heads.log");
        let mut journal = HeadsJournal::create(&path, &[head(7, 3, "a")]).expect("create");
        journal
            .append(&[
                head(7, 9, "a"),
                head(8, 2, "b"),
                HeadRecord::Retired { epoch: 8 },
            ])
            .expect("append");
        let (_, read) = HeadsJournal::open(&path).expect("open");
        let read = read.expect("the journal exists");
        assert_eq!(read[&7].head, 9);
        assert!(!read[&7].retired);
        assert_eq!(read[&8].topic, "b");
        assert!(read[&8].retired);
    }

    #[test]
    fn a_torn_last_record_is_ignored_but_damage_before_the_end_is_reported() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("heads.log");
        let mut journal = HeadsJournal::create(&path, &[]).expect("create");
        journal
            .append(&[head(1, 5, "a"), head(2, 6, "b")])
            .expect("append");
        drop(journal);
        let bytes = std::fs::read(&path).expect("read");
        // Cut the last record in half: a crash during the append.
        std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("write");
        let (_, read) = HeadsJournal::open(&path).expect("a torn tail is not damage");
        let read = read.expect("exists");
        assert_eq!(read.len(), 1);
        assert_eq!(read[&1].head, 5);
        // Flip a byte inside the first record.
        let mut flipped = bytes.clone();
        flipped[MAGIC.len() + 10] ^= 0xff;
        std::fs::write(&path, &flipped).expect("write");
        assert!(matches!(
            HeadsJournal::open(&path),
            Err(JournalError::Damaged { .. })
        ));
        std::fs::write(&path, b"garbage").expect("write");
        assert!(matches!(
            HeadsJournal::open(&path),
            Err(JournalError::Damaged { .. })
        ));
    }
}
