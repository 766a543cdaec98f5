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

/// Room for the worst case of raw deflate at any level: level 1 (zlib-rs's
/// `deflate_quick`) writes every literal with the fixed Huffman code, up to
/// 9 bits per byte, so incompressible input grows by an eighth; the other
/// levels fall back to stored blocks (5 bytes per 64 KiB). 64 bytes cover the
/// block headers and the final bits.
fn deflate_bound(len: usize) -> usize {
    len + len / 8 + 64
}

/// Deflates `body` into a complete compressed frame (header included), or
/// returns `None` when the result would not be smaller.
///
/// The output buffer always has room for the worst case. zlib-rs 0.6.8
/// panics (`buf.len() must fit in remaining()`, in `deflate_quick`) when
/// level 1 runs out of output space on incompressible input; with room for
/// the whole result that path is never taken
/// (the unit tests below send random payloads of 1 KiB to 1 MiB through
/// every level, unguarded, and fail on any panic). Compression is optional,
/// so should any compressor panic remain, it is caught here, the thread's
/// compressor is dropped (its state is unknown) and the frame goes out
/// uncompressed instead of ending the connection.
fn deflate(body: &[u8], level: u32) -> Option<Vec<u8>> {
    std::panic::catch_unwind(|| deflate_unguarded(body, level)).unwrap_or_else(|_| {
        COMPRESSOR.with(|cell| {
            if let Ok(mut slot) = cell.try_borrow_mut() {
                *slot = None;
            }
        });
        None
    })
}

fn deflate_unguarded(body: &[u8], level: u32) -> Option<Vec<u8>> {
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
        // One call with room for the worst case, so the stream always
        // finishes in one step; then keep it only if the frame shrank.
        let mut out = Vec::with_capacity(1 + deflate_bound(body.len()));
        out.push(FLAG_DEFLATE);
        let status = compress
            .compress_vec(body, &mut out, FlushCompress::Finish)
            .ok()?;
        if status != Status::StreamEnd {
            return None;
        }
        if out.len() > body.len() {
            return None;
        }
        // The frame may wait in outbound queues, whose byte budget
        // counts its length: give back the worst-case room, so what a
        // queued frame holds stays close to what the budget counts.
        out.shrink_to_fit();
        Some(out)
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

/// Inflates, turning a panic inside the decompressor (none is known; the
/// unit tests feed it random streams unguarded) into a decode error, so
/// hostile input can never panic a connection's task.
fn inflate(compressed: &[u8], max_inflated: usize) -> Result<Vec<u8>, DecodeError> {
    std::panic::catch_unwind(|| inflate_unguarded(compressed, max_inflated)).unwrap_or_else(|_| {
        DECOMPRESSOR.with(|cell| {
            if let Ok(mut decompress) = cell.try_borrow_mut() {
                *decompress = Decompress::new(false);
            }
        });
        Err(DecodeError::Inflate {
            reason: "the decompressor failed on this stream".into(),
        })
    })
}

fn inflate_unguarded(compressed: &[u8], max_inflated: usize) -> Result<Vec<u8>, DecodeError> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

    use super::*;

    /// xorshift64: deterministic noise, which deflate cannot shrink.
    fn noise(state: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                (*state >> 24) as u8
            })
            .collect()
    }

    const SIZES: [usize; 10] = [
        1024,
        1025,
        2048,
        4096,
        16_384,
        16_385,
        65_536,
        100_000,
        262_144,
        1 << 20,
    ];

    /// zlib-rs 0.6.8 panicked at level 1 on such payloads when the output
    /// buffer was smaller than the deflated stream; the unguarded path is
    /// called here, so a panic fails the test instead of being caught.
    #[test]
    fn random_payloads_never_panic_and_go_out_uncompressed() {
        let mut state = 0x9e37_79b9_7f4a_7c15;
        for level in 0..=9 {
            for size in SIZES {
                let repeats = if size > 100_000 { 2 } else { 8 };
                for _ in 0..repeats {
                    let body = noise(&mut state, size);
                    assert!(
                        deflate_unguarded(&body, level).is_none(),
                        "level {level}, {size} random bytes: deflate is not smaller"
                    );
                    let mut buf = FrameBuf::with_capacity(size);
                    buf.body_mut().extend_from_slice(&body);
                    let frame = buf.seal(&Compression {
                        threshold: 0,
                        level,
                    });
                    assert_eq!(frame[0], 0, "sent uncompressed");
                    assert_eq!(&frame[1..], &body[..]);
                }
            }
        }
    }

    /// Compressible payloads of the same sizes round-trip at every level,
    /// also right after a random one on the same thread's compressor.
    #[test]
    fn compressible_payloads_round_trip_after_random_ones() {
        let mut state = 0x2545_f491_4f6c_dd1d;
        for level in 1..=9 {
            for size in SIZES {
                let _ = deflate_unguarded(&noise(&mut state, size), level);
                let body: Vec<u8> = (0..size)
                    .map(|i| b"sockeye "[i % 8] ^ (i / 97) as u8)
                    .collect();
                let frame = deflate_unguarded(&body, level).expect("text-like data shrinks");
                assert_eq!(frame[0], FLAG_DEFLATE);
                let opened = inflate_unguarded(&frame[1..], size).unwrap();
                assert_eq!(opened, body, "level {level}, {size} bytes");
            }
        }
    }

    /// Random bytes claimed to be deflate are refused with an error (or, by
    /// chance, inflate to something within the limit), never a panic.
    #[test]
    fn random_deflate_streams_are_errors_not_panics() {
        let mut state = 0x1234_5678_9abc_def1;
        for size in [1, 2, 7, 64, 1024, 65_536] {
            for _ in 0..64 {
                let stream = noise(&mut state, size);
                if let Ok(body) = inflate_unguarded(&stream, 1 << 20) {
                    assert!(body.len() <= 1 << 20);
                }
            }
        }
    }
}
