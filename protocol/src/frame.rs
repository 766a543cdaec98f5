//! Frame layout: one header byte of flags, then the MessagePack body, raw
//! deflate-compressed when the flags say so.
//!
//! ```text
//! +--------+---------------------------------------------+
//! | flags  | body: MessagePack map (or raw deflate of it) |
//! | 1 byte | rest of the WebSocket binary message        |
//! +--------+---------------------------------------------+
//! flags: 0x00 = plain, 0x01 = body is raw deflate (RFC 1951); other bits reserved (must be 0)
//! ```
//!
//! Encoding compresses only when the body is larger than the threshold *and*
//! compression makes it smaller. Decoding accepts both forms and inflates at
//! most the configured number of bytes, so an inflate bomb costs at most that
//! much memory before it is rejected.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{
    Compress, Compression as DeflateLevel, Decompress, FlushCompress, FlushDecompress, Status,
};

use crate::error::DecodeError;

/// Header flag: the body is compressed with raw deflate (RFC 1951, no zlib
/// or gzip wrapper).
pub const FLAG_DEFLATE: u8 = 0x01;

/// When and how hard to compress outgoing frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// Bodies strictly larger than this many bytes are compressed.
    pub threshold: usize,
    /// Deflate level, 0 (store) to 9 (best). 1 is fast and usually enough.
    pub level: u32,
}

impl Default for Compression {
    fn default() -> Self {
        Self {
            threshold: 1024,
            level: 1,
        }
    }
}

impl Compression {
    /// Never compress.
    pub const OFF: Self = Self {
        threshold: usize::MAX,
        level: 0,
    };
}

/// A buffer that collects one frame: it starts with a placeholder header byte
/// and the body is written after it, so an uncompressed frame is sealed
/// without copying.
///
/// ```
/// use sockeye_protocol::frame::{Compression, FrameBuf};
/// let mut buf = FrameBuf::new();
/// buf.body_mut().extend_from_slice(&[0x80]); // an empty MessagePack map
/// let frame = buf.seal(&Compression::default());
/// assert_eq!(&frame[..], &[0x00, 0x80]);
/// ```
#[derive(Debug)]
pub struct FrameBuf {
    buf: Vec<u8>,
}

impl Default for FrameBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameBuf {
    /// An empty frame buffer.
    pub fn new() -> Self {
        Self::with_capacity(64)
    }

    /// An empty frame buffer with room for a body of `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + 1);
        buf.push(0);
        Self { buf }
    }

    /// The buffer to append the MessagePack body to. Index 0 holds the
    /// header placeholder, so only append to it (never truncate or resize).
    pub fn body_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The body written so far.
    pub fn body(&self) -> &[u8] {
        &self.buf[1..]
    }

    /// Length of the body written so far.
    pub fn body_len(&self) -> usize {
        self.buf.len() - 1
    }

    /// Finishes the frame: sets the header and compresses the body when it is
    /// over the threshold and compression pays off.
    pub fn seal(mut self, compression: &Compression) -> Bytes {
        if self.body_len() > compression.threshold
            && let Some(deflated) = deflate(&self.buf[1..], compression.level)
        {
            return Bytes::from(deflated);
        }
        self.buf[0] = 0;
        Bytes::from(self.buf)
    }
}

thread_local! {
    /// One raw-deflate compressor per thread, reset for each frame: building
    /// a fresh one costs far more than compressing a small frame (it
    /// allocates and clears hundreds of kilobytes of state).
    static COMPRESSOR: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
    /// One raw-deflate decompressor per thread, reset for each frame.
    static DECOMPRESSOR: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Deflates `body` into a complete compressed frame (header included), or
/// returns `None` when the result would not be smaller.
fn deflate(body: &[u8], level: u32) -> Option<Vec<u8>> {
    let level = level.min(9);
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compress = match &mut *slot {
            Some((current, compress)) if *current == level => {
                compress.reset();
                compress
            }
            other => {
                let (_, compress) =
                    other.insert((level, Compress::new(DeflateLevel::new(level), false)));
                compress
            }
        };
        // One call with room for the worst case (deflate's bound: stored
        // blocks add 5 bytes per 16 KiB block), so the stream always
        // finishes in one step; then keep it only if the frame shrank.
        let limit = body.len() + 1;
        let bound = body.len() + body.len() / 16_384 * 5 + 64;
        let mut out = Vec::with_capacity(1 + bound);
        out.push(FLAG_DEFLATE);
        let status = compress
            .compress_vec(body, &mut out, FlushCompress::Finish)
            .ok()?;
        if status != Status::StreamEnd {
            return None;
        }
        (out.len() < limit).then_some(out)
    })
}

/// Opens a received frame and returns its MessagePack body, inflated if the
/// frame was compressed. An uncompressed body is a zero-copy slice of `frame`.
///
/// `max_inflated` bounds the decompressed size: a frame that would inflate
/// past it is rejected with [`DecodeError::InflateLimit`] after at most
/// `max_inflated + 1` bytes were produced.
///
/// ```
/// use bytes::Bytes;
/// use sockeye_protocol::frame::open;
/// let body = open(&Bytes::from_static(&[0x00, 0x80]), 1024).unwrap();
/// assert_eq!(&body[..], &[0x80]);
/// ```
pub fn open(frame: &Bytes, max_inflated: usize) -> Result<Bytes, DecodeError> {
    let flags = *frame.first().ok_or(DecodeError::EmptyFrame)?;
    match flags {
        0 => Ok(frame.slice(1..)),
        FLAG_DEFLATE => inflate(&frame[1..], max_inflated).map(Bytes::from),
        other => Err(DecodeError::UnknownFlags { flags: other }),
    }
}

fn inflate(compressed: &[u8], max_inflated: usize) -> Result<Vec<u8>, DecodeError> {
    // Output may grow to one byte past the limit, which proves the limit was
    // exceeded without ever allocating more.
    let cap = max_inflated.saturating_add(1);
    DECOMPRESSOR.with(|cell| {
        let mut decompress = cell.borrow_mut();
        decompress.reset(false);
        let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).clamp(64, cap));
        loop {
            let consumed = usize::try_from(decompress.total_in()).unwrap_or(usize::MAX);
            let input = compressed.get(consumed..).unwrap_or_default();
            let before = (consumed, out.len());
            let status = decompress
                .decompress_vec(input, &mut out, FlushDecompress::None)
                .map_err(|err| DecodeError::Inflate {
                    reason: err.to_string(),
                })?;
            if out.len() > max_inflated {
                return Err(DecodeError::InflateLimit {
                    limit: max_inflated,
                });
            }
            if status == Status::StreamEnd {
                return Ok(out);
            }
            if out.len() == out.capacity() {
                if out.capacity() >= cap {
                    return Err(DecodeError::InflateLimit {
                        limit: max_inflated,
                    });
                }
                out.reserve(out.capacity().min(cap - out.len()));
                continue;
            }
            let consumed_now = usize::try_from(decompress.total_in()).unwrap_or(usize::MAX);
            if (consumed_now, out.len()) == before {
                return Err(DecodeError::Inflate {
                    reason: "the deflate stream ends before its final block".into(),
                });
            }
        }
    })
}
