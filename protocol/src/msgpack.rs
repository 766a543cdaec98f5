//! MessagePack reading primitives: a bounds-checked cursor, value skipping
//! without recursion or allocation, and a parsed view of a map's fields.
//!
//! Writing goes straight through `rmp::encode`; only reading needs care,
//! because every length in the input is untrusted.

use std::ops::Range;

use rmp::Marker;
use smallvec::SmallVec;

use crate::error::DecodeError;

/// A read position in a byte slice. Every read checks bounds first, so a
/// hostile length can make a read fail but never slice out of range.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        let slice = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn marker(&mut self) -> Result<Marker, DecodeError> {
        let offset = self.pos;
        let byte = self.u8()?;
        match Marker::from_u8(byte) {
            Marker::Reserved => Err(DecodeError::InvalidMarker {
                marker: byte,
                offset,
            }),
            marker => Ok(marker),
        }
    }

    fn peek_marker(&self) -> Result<Marker, DecodeError> {
        self.clone().marker()
    }

    /// Skips exactly one complete value, however deeply nested.
    ///
    /// Containers are handled with a pending-value counter instead of
    /// recursion, so nesting depth cannot exhaust the stack, and nothing is
    /// allocated. Each step consumes at least one byte, so the loop is bounded
    /// by the input length. The marker byte is matched directly (not through
    /// `rmp::Marker`): every key's value is skipped when a map is parsed, and
    /// the table lookup cost more than the skip itself.
    pub(crate) fn skip_value(&mut self) -> Result<(), DecodeError> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let offset = self.pos;
            let marker = self.u8()?;
            let skip = match marker {
                // positive and negative fixint, nil, false, true
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => 0,
                0x80..=0x8f => {
                    pending = pending.saturating_add(2 * u64::from(marker & 0x0f));
                    0
                }
                0x90..=0x9f => {
                    pending = pending.saturating_add(u64::from(marker & 0x0f));
                    0
                }
                0xa0..=0xbf => usize::from(marker & 0x1f),
                0xc1 => return Err(DecodeError::InvalidMarker { marker, offset }),
                // bin 8/16/32, str 8/16/32
                0xc4 | 0xd9 => usize::from(self.u8()?),
                0xc5 | 0xda => usize::from(self.u16()?),
                0xc6 | 0xdb => self.u32()? as usize,
                // ext 8/16/32: the length, then a type byte
                0xc7 => usize::from(self.u8()?) + 1,
                0xc8 => usize::from(self.u16()?) + 1,
                0xc9 => self.u32()? as usize + 1,
                // uint 8, int 8 / uint 16, int 16 / ... / float 32, 64
                0xcc | 0xd0 => 1,
                0xcd | 0xd1 => 2,
                0xce | 0xd2 | 0xca => 4,
                0xcf | 0xd3 | 0xcb => 8,
                // fixext 1/2/4/8/16: a type byte and the data
                0xd4 => 2,
                0xd5 => 3,
                0xd6 => 5,
                0xd7 => 9,
                0xd8 => 17,
                0xdc => {
                    pending = pending.saturating_add(u64::from(self.u16()?));
                    0
                }
                0xdd => {
                    pending = pending.saturating_add(u64::from(self.u32()?));
                    0
                }
                0xde => {
                    pending = pending.saturating_add(2 * u64::from(self.u16()?));
                    0
                }
                0xdf => {
                    pending = pending.saturating_add(2 * u64::from(self.u32()?));
                    0
                }
            };
            self.take(skip)?;
        }
        Ok(())
    }

    /// Reads a map header and returns its entry count, or `None` if the next
    /// value is not a map.
    fn map_len(&mut self) -> Result<Option<u32>, DecodeError> {
        Ok(match self.peek_marker()? {
            Marker::FixMap(n) => {
                self.pos += 1;
                Some(u32::from(n))
            }
            Marker::Map16 => {
                self.pos += 1;
                Some(u32::from(self.u16()?))
            }
            Marker::Map32 => {
                self.pos += 1;
                Some(self.u32()?)
            }
            _ => None,
        })
    }

    /// Reads a string, or returns `None` (consuming nothing) if the next value
    /// is not a string.
    fn str(&mut self) -> Result<Option<&'a str>, DecodeError> {
        let start = self.pos;
        let Some(bytes) = self.str_bytes()? else {
            return Ok(None);
        };
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| DecodeError::InvalidUtf8 { offset: start })
    }

    /// Reads a string's bytes, not yet checked to be UTF-8, or returns `None`
    /// (consuming nothing) if the next value is not a string.
    fn str_bytes(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        let len = match self.peek_marker()? {
            Marker::FixStr(n) => {
                self.pos += 1;
                usize::from(n)
            }
            Marker::Str8 => {
                self.pos += 1;
                usize::from(self.u8()?)
            }
            Marker::Str16 => {
                self.pos += 1;
                usize::from(self.u16()?)
            }
            Marker::Str32 => {
                self.pos += 1;
                self.u32()? as usize
            }
            _ => return Ok(None),
        };
        self.take(len).map(Some)
    }

    /// Reads a non-negative integer of any MessagePack width (signed forms
    /// are accepted when the value is not negative, since some encoders
    /// always write signed integers).
    fn uint(&mut self) -> Result<Option<u64>, DecodeError> {
        let value = match self.peek_marker()? {
            Marker::FixPos(n) => {
                self.pos += 1;
                u64::from(n)
            }
            Marker::U8 => {
                self.pos += 1;
                u64::from(self.u8()?)
            }
            Marker::U16 => {
                self.pos += 1;
                u64::from(self.u16()?)
            }
            Marker::U32 => {
                self.pos += 1;
                u64::from(self.u32()?)
            }
            Marker::U64 => {
                self.pos += 1;
                self.u64()?
            }
            Marker::I8 | Marker::I16 | Marker::I32 | Marker::I64 => {
                let mut probe = self.clone();
                let marker = probe.marker()?;
                let signed = match marker {
                    Marker::I8 => i64::from(probe.u8()? as i8),
                    Marker::I16 => i64::from(probe.u16()? as i16),
                    Marker::I32 => i64::from(probe.u32()? as i32),
                    _ => probe.u64()? as i64,
                };
                match u64::try_from(signed) {
                    Ok(v) => {
                        *self = probe;
                        v
                    }
                    Err(_) => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(value))
    }

    fn bool(&mut self) -> Result<Option<bool>, DecodeError> {
        Ok(match self.peek_marker()? {
            Marker::True => {
                self.pos += 1;
                Some(true)
            }
            Marker::False => {
                self.pos += 1;
                Some(false)
            }
            _ => None,
        })
    }

    fn is_nil(&self) -> Result<bool, DecodeError> {
        Ok(matches!(self.peek_marker()?, Marker::Null))
    }
}

/// The fields of one MessagePack map, each as the byte range of its value
/// inside the body. Values are decoded lazily, by the getter that knows the
/// expected type.
#[derive(Debug)]
pub(crate) struct Fields<'a> {
    body: &'a [u8],
    /// The value ranges of the [`SLOTTED`] names, by slot; valid where
    /// `filled` has the slot's bit. Every request and delivery is made of
    /// these names, so parsing files a key with one `match` and a lookup is
    /// an index, where a search compared each key with each name asked for.
    slots: [Range<usize>; SLOTTED.len()],
    filled: u16,
    /// Every other key's bytes (valid UTF-8, checked by `parse_at`) and its
    /// value's range, in map order.
    others: SmallVec<[(&'a [u8], Range<usize>); INLINE_OTHERS]>,
}

/// The field names with a slot in [`Fields`]: those of the messages sent
/// most (requests, `message`, `published`, `position`).
const SLOTTED: [&str; 13] = [
    "type",
    "id",
    "topic",
    "payload",
    "ack",
    "epoch",
    "offset",
    "ts",
    "publisher",
    "position",
    "kind",
    "count",
    "token",
];

/// The slot of a [`SLOTTED`] name. Always inlined: a lookup asks for a
/// constant name, whose slot is then a constant too.
#[inline(always)]
fn slot_of(name: &[u8]) -> Option<usize> {
    Some(match name {
        b"type" => 0,
        b"id" => 1,
        b"topic" => 2,
        b"payload" => 3,
        b"ack" => 4,
        b"epoch" => 5,
        b"offset" => 6,
        b"ts" => 7,
        b"publisher" => 8,
        b"position" => 9,
        b"kind" => 10,
        b"count" => 11,
        b"token" => 12,
        _ => return None,
    })
}

/// Other fields kept without a heap allocation. Few messages have any (a
/// `welcome`, a `subscribed`), and a small [`Fields`] is cheap to return.
const INLINE_OTHERS: usize = 2;

/// Maps that hold more entries than this are not one of our messages; the cap
/// keeps the field list small without trusting the declared length.
const MAX_FIELDS: u32 = 64;

impl<'a> Fields<'a> {
    /// Parses the map that makes up the whole of `body`.
    pub(crate) fn parse(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut cursor = Cursor::new(body);
        let fields = Self::parse_at(&mut cursor)?;
        if cursor.remaining() > 0 {
            return Err(DecodeError::TrailingBytes {
                extra: cursor.remaining(),
            });
        }
        Ok(fields)
    }

    /// Parses a map at the cursor and leaves the cursor after it.
    fn parse_at(cursor: &mut Cursor<'a>) -> Result<Self, DecodeError> {
        let len = cursor.map_len()?.ok_or(DecodeError::NotAMap)?;
        if len > MAX_FIELDS {
            return Err(DecodeError::WrongType {
                field: "(map)",
                expected: "a map of at most 64 fields",
            });
        }
        let mut fields = Self {
            body: cursor.buf,
            slots: Default::default(),
            filled: 0,
            others: SmallVec::new(),
        };
        for _ in 0..len {
            let key_offset = cursor.position();
            let key = cursor
                .str_bytes()?
                .ok_or(DecodeError::KeyNotString { offset: key_offset })?;
            let slot = slot_of(key);
            // A slotted name is ASCII, which is UTF-8; other keys are nearly
            // always ASCII too: the full check (a call) only for the rest.
            if slot.is_none() && !key.is_ascii() && std::str::from_utf8(key).is_err() {
                return Err(DecodeError::InvalidUtf8 { offset: key_offset });
            }
            let start = cursor.position();
            cursor.skip_value()?;
            let range = start..cursor.position();
            let duplicate = match slot {
                Some(slot) => {
                    let bit = 1 << slot;
                    let seen = fields.filled & bit != 0;
                    fields.filled |= bit;
                    fields.slots[slot] = range;
                    seen
                }
                None => {
                    let seen = fields.others.iter().any(|(existing, _)| *existing == key);
                    fields.others.push((key, range));
                    seen
                }
            };
            if duplicate {
                return Err(DecodeError::DuplicateField {
                    field: String::from_utf8_lossy(key).into_owned(),
                });
            }
        }
        Ok(fields)
    }

    /// The byte range of a field's value, if present.
    #[inline(always)]
    pub(crate) fn range(&self, field: &str) -> Option<Range<usize>> {
        match slot_of(field.as_bytes()) {
            Some(slot) if self.filled & (1 << slot) != 0 => Some(self.slots[slot].clone()),
            Some(_) => None,
            None => self
                .others
                .iter()
                .find(|(key, _)| *key == field.as_bytes())
                .map(|(_, range)| range.clone()),
        }
    }

    #[inline(always)]
    fn value(&self, field: &str) -> Option<Cursor<'a>> {
        self.range(field).map(|range| Cursor {
            buf: &self.body[..range.end],
            pos: range.start,
        })
    }

    /// The field's value, or `None` if it is missing or nil (optional fields
    /// may be either).
    #[inline(always)]
    fn present(&self, field: &str) -> Result<Option<Cursor<'a>>, DecodeError> {
        match self.value(field) {
            Some(cursor) if !cursor.is_nil()? => Ok(Some(cursor)),
            _ => Ok(None),
        }
    }

    #[inline]
    pub(crate) fn str(
        &self,
        kind: &'static str,
        field: &'static str,
    ) -> Result<&'a str, DecodeError> {
        self.opt_str(field)?
            .ok_or(DecodeError::MissingField { kind, field })
    }

    /// A required string's bytes, not checked to be UTF-8: for a value
    /// compared against known ASCII names (the `type` of a message), where
    /// only a mismatch needs the full [`Fields::str`].
    #[inline]
    pub(crate) fn str_bytes(
        &self,
        kind: &'static str,
        field: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        let Some(mut cursor) = self.present(field)? else {
            return Err(DecodeError::MissingField { kind, field });
        };
        cursor.str_bytes()?.ok_or(DecodeError::WrongType {
            field,
            expected: "a string",
        })
    }

    #[inline]
    pub(crate) fn opt_str(&self, field: &'static str) -> Result<Option<&'a str>, DecodeError> {
        let Some(mut cursor) = self.present(field)? else {
            return Ok(None);
        };
        cursor.str()?.map(Some).ok_or(DecodeError::WrongType {
            field,
            expected: "a string",
        })
    }

    #[inline]
    pub(crate) fn uint(&self, kind: &'static str, field: &'static str) -> Result<u64, DecodeError> {
        self.opt_uint(field)?
            .ok_or(DecodeError::MissingField { kind, field })
    }

    #[inline]
    pub(crate) fn opt_uint(&self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        let Some(mut cursor) = self.present(field)? else {
            return Ok(None);
        };
        cursor.uint()?.map(Some).ok_or(DecodeError::WrongType {
            field,
            expected: "a non-negative integer",
        })
    }

    #[inline]
    pub(crate) fn opt_bool(&self, field: &'static str) -> Result<Option<bool>, DecodeError> {
        let Some(mut cursor) = self.present(field)? else {
            return Ok(None);
        };
        cursor.bool()?.map(Some).ok_or(DecodeError::WrongType {
            field,
            expected: "a boolean",
        })
    }

    pub(crate) fn opt_map(&self, field: &'static str) -> Result<Option<Fields<'a>>, DecodeError> {
        let Some(mut cursor) = self.present(field)? else {
            return Ok(None);
        };
        match Self::parse_at(&mut cursor) {
            Ok(fields) => Ok(Some(fields)),
            Err(DecodeError::NotAMap) => Err(DecodeError::WrongType {
                field,
                expected: "a map",
            }),
            Err(other) => Err(other),
        }
    }
}

/// Checks that `bytes` hold exactly one complete MessagePack value.
pub(crate) fn validate_single_value(bytes: &[u8]) -> Result<(), DecodeError> {
    let mut cursor = Cursor::new(bytes);
    cursor.skip_value()?;
    if cursor.remaining() > 0 {
        return Err(DecodeError::TrailingBytes {
            extra: cursor.remaining(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slotted_name_has_its_own_slot() {
        for (slot, name) in SLOTTED.iter().enumerate() {
            assert_eq!(slot_of(name.as_bytes()), Some(slot), "{name}");
        }
        assert_eq!(slot_of(b"types"), None);
        assert_eq!(slot_of(b""), None);
    }

    /// `skip_value` as it was until it matched marker bytes directly
    /// (through `rmp::Marker`), kept as the reference it must agree with.
    fn skip_by_marker(cursor: &mut Cursor<'_>) -> Result<(), DecodeError> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let skip = match cursor.marker()? {
                Marker::FixPos(_)
                | Marker::FixNeg(_)
                | Marker::Null
                | Marker::True
                | Marker::False => 0,
                Marker::U8 | Marker::I8 => 1,
                Marker::U16 | Marker::I16 => 2,
                Marker::U32 | Marker::I32 | Marker::F32 => 4,
                Marker::U64 | Marker::I64 | Marker::F64 => 8,
                Marker::FixStr(n) => usize::from(n),
                Marker::Str8 | Marker::Bin8 => usize::from(cursor.u8()?),
                Marker::Str16 | Marker::Bin16 => usize::from(cursor.u16()?),
                Marker::Str32 | Marker::Bin32 => cursor.u32()? as usize,
                Marker::FixExt1 => 2,
                Marker::FixExt2 => 3,
                Marker::FixExt4 => 5,
                Marker::FixExt8 => 9,
                Marker::FixExt16 => 17,
                Marker::Ext8 => usize::from(cursor.u8()?) + 1,
                Marker::Ext16 => usize::from(cursor.u16()?) + 1,
                Marker::Ext32 => cursor.u32()? as usize + 1,
                Marker::FixArray(n) => {
                    pending = pending.saturating_add(u64::from(n));
                    0
                }
                Marker::Array16 => {
                    pending = pending.saturating_add(u64::from(cursor.u16()?));
                    0
                }
                Marker::Array32 => {
                    pending = pending.saturating_add(u64::from(cursor.u32()?));
                    0
                }
                Marker::FixMap(n) => {
                    pending = pending.saturating_add(2 * u64::from(n));
                    0
                }
                Marker::Map16 => {
                    pending = pending.saturating_add(2 * u64::from(cursor.u16()?));
                    0
                }
                Marker::Map32 => {
                    pending = pending.saturating_add(2 * u64::from(cursor.u32()?));
                    0
                }
                Marker::Reserved => unreachable!("marker() rejects the reserved byte"),
            };
            cursor.take(skip)?;
        }
        Ok(())
    }

    /// Every marker byte, alone, inside an array and inside a map, followed
    /// by continuations that complete it, cut it short or leave bytes over:
    /// the same result and the same end position as the reference.
    #[test]
    fn skipping_matches_the_marker_table_for_every_marker() {
        let tails: [&[u8]; 5] = [
            &[],
            &[200],
            &[0, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9],
            &[
                0, 0, 0, 1, 0xc3, 0xc2, 0xc0, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
            ],
            &[0xff; 40],
        ];
        for first in 0..=u8::MAX {
            for tail in tails {
                for prefix in [&[][..], &[0x92][..], &[0x81, 0xa1, b'k'][..]] {
                    let mut input = prefix.to_vec();
                    input.push(first);
                    input.extend_from_slice(tail);
                    let mut ours = Cursor::new(&input);
                    let mut reference = Cursor::new(&input);
                    let our_result = ours.skip_value();
                    let reference_result = skip_by_marker(&mut reference);
                    let case = format!("{input:02x?}");
                    assert_eq!(our_result, reference_result, "{case}");
                    if our_result.is_ok() {
                        assert_eq!(ours.position(), reference.position(), "{case}");
                    }
                }
            }
        }
    }
}
