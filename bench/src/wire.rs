//! The hot path of reading frames: finding the few fields the generator needs
//! in a MessagePack map without decoding the rest, and the stamp every
//! benchmark payload carries (which stream, which sequence number, when it
//! was sent).
//!
//! Full decoding with `sockeye-protocol` allocates the topic and publisher
//! strings of every delivery; at millions of deliveries per second on a
//! machine the broker shares, that cost would show up as broker slowness.
//! The scanner here reads the same bytes without allocating. It is only used
//! where a frame's shape is known (deliveries and acks); every other frame is
//! decoded with the protocol crate.

use std::ops::Range;

/// First bytes of every benchmark payload, so a stray frame is never taken
/// for a delivery.
pub(crate) const STAMP_MAGIC: [u8; 4] = *b"SKB1";

/// Bytes the stamp occupies at the start of a payload; payloads are never
/// smaller.
pub(crate) const STAMP_LEN: usize = 24;

/// Deepest nesting the scanner follows before giving up on a value.
const MAX_DEPTH: usize = 32;

/// What the generator puts at the start of every payload it publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Which publisher (stream) sent it: its index in the run.
    pub(crate) stream: u32,
    /// Position in that publisher's sequence, from 0.
    pub(crate) seq: u64,
    /// When it was sent, nanoseconds on the generator's clock.
    pub(crate) sent_ns: u64,
}

impl Stamp {
    /// Writes the stamp over the first [`STAMP_LEN`] bytes of `data`.
    pub(crate) fn write(&self, data: &mut [u8]) {
        data[0..4].copy_from_slice(&STAMP_MAGIC);
        data[4..8].copy_from_slice(&self.stream.to_le_bytes());
        data[8..16].copy_from_slice(&self.seq.to_le_bytes());
        data[16..24].copy_from_slice(&self.sent_ns.to_le_bytes());
    }

    /// Reads a stamp from the start of a payload's raw bytes.
    pub(crate) fn read(data: &[u8]) -> Option<Self> {
        let head = data.get(..STAMP_LEN)?;
        if head[0..4] != STAMP_MAGIC {
            return None;
        }
        Some(Self {
            stream: u32::from_le_bytes(head[4..8].try_into().ok()?),
            seq: u64::from_le_bytes(head[8..16].try_into().ok()?),
            sent_ns: u64::from_le_bytes(head[16..24].try_into().ok()?),
        })
    }
}

/// The fields of a frame body the generator looks at. Ranges index into the
/// scanned body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct FrameView {
    /// The `type` string.
    pub(crate) kind: Option<Range<usize>>,
    /// The request `id`.
    pub(crate) id: Option<u64>,
    /// The `epoch`.
    pub(crate) epoch: Option<u64>,
    /// The `offset`.
    pub(crate) offset: Option<u64>,
    /// The whole `payload` value, still MessagePack-encoded.
    pub(crate) payload: Option<Range<usize>>,
}

/// Why a body could not be scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScanError {
    /// The body ends inside a value.
    Truncated,
    /// A byte that starts no MessagePack value (0xc1), or nesting too deep.
    Invalid,
    /// The body is not a map with string keys.
    NotAMap,
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScanError::Truncated => "the body ends inside a value",
            ScanError::Invalid => "invalid MessagePack",
            ScanError::NotAMap => "the body is not a map with string keys",
        })
    }
}

impl std::error::Error for ScanError {}

/// Scans a frame body (a MessagePack map) for the fields in [`FrameView`].
///
/// This runs once per delivery on the generator, so it is written for the
/// shapes the targets send: keys are short strings, numbers are small.
pub(crate) fn scan(body: &[u8]) -> Result<FrameView, ScanError> {
    let mut reader = Reader { body, pos: 0 };
    let entries = match reader.container()? {
        Some((Container::Map, len)) => len,
        _ => return Err(ScanError::NotAMap),
    };
    let mut view = FrameView::default();
    for _ in 0..entries {
        let key = reader.str()?.ok_or(ScanError::NotAMap)?;
        let value_start = reader.pos;
        match &body[key] {
            b"type" => view.kind = Some(reader.str()?.ok_or(ScanError::Invalid)?),
            b"id" => view.id = reader.uint()?,
            b"epoch" => view.epoch = reader.uint()?,
            b"offset" => view.offset = reader.uint()?,
            b"payload" => {
                reader.skip_value(0)?;
                view.payload = Some(value_start..reader.pos);
            }
            _ => reader.skip_value(0)?,
        }
        // A value read as one type but encoded as another (say, `id: nil`)
        // was not consumed: skip it now.
        if reader.pos == value_start {
            reader.skip_value(0)?;
        }
    }
    Ok(view)
}

/// The contents of a MessagePack `bin` value, or `None` if `value` is not
/// exactly one `bin`.
pub(crate) fn bin_contents(value: &[u8]) -> Option<&[u8]> {
    let (&marker, rest) = value.split_first()?;
    let (len, rest) = match marker {
        0xc4 => (usize::from(*rest.first()?), rest.get(1..)?),
        0xc5 => (
            usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            rest.get(2..)?,
        ),
        0xc6 => (
            usize::try_from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)).ok()?,
            rest.get(4..)?,
        ),
        _ => return None,
    };
    (rest.len() == len).then_some(rest)
}

enum Container {
    Map,
    Array,
}

/// A position in a body being scanned.
struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    /// The byte at the position, not consumed.
    #[inline]
    fn peek(&self) -> Result<u8, ScanError> {
        self.body.get(self.pos).copied().ok_or(ScanError::Truncated)
    }

    /// Moves past `n` bytes that must be there.
    #[inline]
    fn advance(&mut self, n: usize) -> Result<(), ScanError> {
        if self.body.len() - self.pos < n {
            return Err(ScanError::Truncated);
        }
        self.pos += n;
        Ok(())
    }

    /// A big-endian unsigned integer of `n` (1, 2, 4 or 8) bytes.
    #[inline]
    fn be_uint(&mut self, n: usize) -> Result<u64, ScanError> {
        let start = self.pos;
        self.advance(n)?;
        Ok(self.body[start..self.pos]
            .iter()
            .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte)))
    }

    /// A length of `n` bytes, as `usize`.
    #[inline]
    fn be_len(&mut self, n: usize) -> Result<usize, ScanError> {
        usize::try_from(self.be_uint(n)?).map_err(|_| ScanError::Truncated)
    }

    /// A map or array header, or `None` (consuming nothing) for other values.
    fn container(&mut self) -> Result<Option<(Container, u64)>, ScanError> {
        let byte = self.peek()?;
        let (kind, len) = match byte {
            0x80..=0x8f => (Container::Map, u64::from(byte & 0x0f)),
            0x90..=0x9f => (Container::Array, u64::from(byte & 0x0f)),
            0xdc..=0xdf => {
                self.pos += 1;
                let kind = if byte >= 0xde {
                    Container::Map
                } else {
                    Container::Array
                };
                let width = if byte & 1 == 0 { 2 } else { 4 };
                return Ok(Some((kind, self.be_uint(width)?)));
            }
            _ => return Ok(None),
        };
        self.pos += 1;
        Ok(Some((kind, len)))
    }

    /// A string's byte range, or `None` (consuming nothing) for other values.
    #[inline]
    fn str(&mut self) -> Result<Option<Range<usize>>, ScanError> {
        let byte = self.peek()?;
        let len = match byte {
            0xa0..=0xbf => {
                self.pos += 1;
                usize::from(byte & 0x1f)
            }
            0xd9..=0xdb => {
                self.pos += 1;
                self.be_len(1 << (byte - 0xd9))?
            }
            _ => return Ok(None),
        };
        let start = self.pos;
        self.advance(len)?;
        Ok(Some(start..self.pos))
    }

    /// A non-negative integer in any width, or `None` (consuming nothing)
    /// for other values, negative ones included.
    fn uint(&mut self) -> Result<Option<u64>, ScanError> {
        let byte = self.peek()?;
        let width = match byte {
            0x00..=0x7f => {
                self.pos += 1;
                return Ok(Some(u64::from(byte)));
            }
            0xcc | 0xd0 => 1,
            0xcd | 0xd1 => 2,
            0xce | 0xd2 => 4,
            0xcf | 0xd3 => 8,
            _ => return Ok(None),
        };
        let start = self.pos;
        self.pos += 1;
        let value = match self.be_uint(width) {
            Ok(value) => value,
            Err(err) => {
                self.pos = start;
                return Err(err);
            }
        };
        let negative = byte >= 0xd0 && (value >> (width * 8 - 1)) & 1 == 1;
        if negative {
            self.pos = start;
            return Ok(None);
        }
        Ok(Some(value))
    }

    /// Moves past one complete value of any type.
    fn skip_value(&mut self, depth: usize) -> Result<(), ScanError> {
        let byte = self.peek()?;
        self.pos += 1;
        let len = match byte {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
            0xa0..=0xbf => usize::from(byte & 0x1f),
            0xc4 | 0xd9 => self.be_len(1)?,
            0xc5 | 0xda => self.be_len(2)?,
            0xc6 | 0xdb => self.be_len(4)?,
            0xcc | 0xd0 => 1,
            0xcd | 0xd1 | 0xd4 => 2,
            0xd5 => 3,
            0xca | 0xce | 0xd2 => 4,
            0xd6 => 5,
            0xcb | 0xcf | 0xd3 => 8,
            0xd7 => 9,
            0xd8 => 17,
            // ext 8/16/32: a length, then a type byte and the data.
            0xc7 => self.be_len(1)?.checked_add(1).ok_or(ScanError::Truncated)?,
            0xc8 => self.be_len(2)?.checked_add(1).ok_or(ScanError::Truncated)?,
            0xc9 => self.be_len(4)?.checked_add(1).ok_or(ScanError::Truncated)?,
            0x80..=0x9f | 0xdc..=0xdf => {
                if depth >= MAX_DEPTH {
                    return Err(ScanError::Invalid);
                }
                self.pos -= 1;
                let Some((kind, len)) = self.container()? else {
                    return Err(ScanError::Invalid);
                };
                let items = match kind {
                    Container::Map => len.saturating_mul(2),
                    Container::Array => len,
                };
                for _ in 0..items {
                    self.skip_value(depth + 1)?;
                }
                return Ok(());
            }
            _ => return Err(ScanError::Invalid),
        };
        self.advance(len)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use sockeye_protocol::{ClientMessage, Compression, Delivery, Payload, ServerMessage, frame};

    use super::*;

    fn stamped(size: usize) -> Vec<u8> {
        let mut data = vec![7u8; size];
        Stamp {
            stream: 3,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        }
        .write(&mut data);
        data
    }

    #[test]
    fn finds_the_payload_of_a_broker_message_frame() {
        let data = stamped(1000);
        let wire = ServerMessage::Message(Delivery {
            topic: "bench.fanout".into(),
            epoch: 9,
            offset: 70_000,
            timestamp_ms: 1_700_000_000_000,
            publisher: "bench".into(),
            payload: Payload::binary(&data),
        })
        .encode_frame(&Compression::OFF);
        let body = frame::open(&wire, 1 << 20).unwrap();
        let view = scan(&body).unwrap();
        assert_eq!(&body[view.kind.unwrap()], b"message");
        assert_eq!(view.epoch, Some(9));
        assert_eq!(view.offset, Some(70_000));
        let payload = bin_contents(&body[view.payload.unwrap()]).unwrap();
        assert_eq!(payload, &data[..]);
        assert_eq!(
            Stamp::read(payload),
            Some(Stamp {
                stream: 3,
                seq: 1 << 40,
                sent_ns: 123_456_789
            })
        );
    }

    #[test]
    fn finds_the_payload_of_a_compressed_publish_frame() {
        let data = stamped(16 * 1024);
        let wire = ClientMessage::Publish {
            id: 300,
            topic: "bench.x".into(),
            payload: Payload::binary(&data),
            ack: false,
        }
        .encode_frame(&Compression::default());
        assert_eq!(wire[0], frame::FLAG_DEFLATE);
        let body = frame::open(&wire, 1 << 20).unwrap();
        let view = scan(&body).unwrap();
        assert_eq!(&body[view.kind.unwrap()], b"publish");
        assert_eq!(view.id, Some(300));
        assert_eq!(bin_contents(&body[view.payload.unwrap()]), Some(&data[..]));
    }

    #[test]
    fn skips_nested_and_unknown_values_and_reads_signed_ids() {
        // {"x": [1, {"y": nil}, 1.5], "type": "published", "id": int8 5, "offset": int16 -1}
        let body: &[u8] = &[
            0x84, 0xa1, b'x', 0x93, 0x01, 0x81, 0xa1, b'y', 0xc0, 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0,
            0, 0xa4, b't', b'y', b'p', b'e', 0xa9, b'p', b'u', b'b', b'l', b'i', b's', b'h', b'e',
            b'd', 0xa2, b'i', b'd', 0xd0, 0x05, 0xa6, b'o', b'f', b'f', b's', b'e', b't', 0xd1,
            0xff, 0xff,
        ];
        let view = scan(body).unwrap();
        assert_eq!(&body[view.kind.clone().unwrap()], b"published");
        assert_eq!(view.id, Some(5));
        assert_eq!(view.offset, None, "a negative offset is not an offset");
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let wire = ServerMessage::Published {
            id: 1 << 33,
            epoch: 2,
            offset: 3,
        }
        .encode_frame(&Compression::OFF);
        let body = Bytes::copy_from_slice(&wire[1..]);
        assert!(scan(&body).is_ok());
        for cut in 0..body.len() {
            assert!(scan(&body[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn rejects_bodies_that_are_not_maps_and_stamps_without_magic() {
        assert_eq!(scan(&[0x93, 1, 2, 3]), Err(ScanError::NotAMap));
        assert_eq!(scan(&[0x81, 0x01, 0x01]), Err(ScanError::NotAMap));
        assert_eq!(scan(&[0x81, 0xa1, b'a', 0xc1]), Err(ScanError::Invalid));
        assert_eq!(Stamp::read(&[0u8; 64]), None);
        assert_eq!(Stamp::read(&STAMP_MAGIC), None);
        assert_eq!(bin_contents(&[0xc4, 2, 1]), None);
        assert_eq!(bin_contents(&[0xa1, b'a']), None);
    }
}
