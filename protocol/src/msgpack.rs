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
    /// by the input length.
    pub(crate) fn skip_value(&mut self) -> Result<(), DecodeError> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            let skip = match self.marker()? {
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
                Marker::Str8 | Marker::Bin8 => usize::from(self.u8()?),
                Marker::Str16 | Marker::Bin16 => usize::from(self.u16()?),
                Marker::Str32 | Marker::Bin32 => self.u32()? as usize,
                Marker::FixExt1 => 2,
                Marker::FixExt2 => 3,
                Marker::FixExt4 => 5,
                Marker::FixExt8 => 9,
                Marker::FixExt16 => 17,
                Marker::Ext8 => usize::from(self.u8()?) + 1,
                Marker::Ext16 => usize::from(self.u16()?) + 1,
                Marker::Ext32 => self.u32()? as usize + 1,
                Marker::FixArray(n) => {
                    pending = pending.saturating_add(u64::from(n));
                    0
                }
                Marker::Array16 => {
                    pending = pending.saturating_add(u64::from(self.u16()?));
                    0
                }
                Marker::Array32 => {
                    pending = pending.saturating_add(u64::from(self.u32()?));
                    0
                }
                Marker::FixMap(n) => {
                    pending = pending.saturating_add(2 * u64::from(n));
                    0
                }
                Marker::Map16 => {
                    pending = pending.saturating_add(2 * u64::from(self.u16()?));
                    0
                }
                Marker::Map32 => {
                    pending = pending.saturating_add(2 * u64::from(self.u32()?));
                    0
                }
                Marker::Reserved => unreachable!("marker() rejects the reserved byte"),
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
    /// Each key's bytes (valid UTF-8, checked by `parse_at`) and its
    /// value's range: lookups compare bytes, as every field name we ask
    /// for is ASCII.
    entries: SmallVec<[(&'a [u8], Range<usize>); INLINE_FIELDS]>,
}

/// Fields kept without a heap allocation: more than any request has.
const INLINE_FIELDS: usize = 8;

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
        let mut entries: SmallVec<[(&[u8], Range<usize>); INLINE_FIELDS]> =
            SmallVec::with_capacity(len as usize);
        for _ in 0..len {
            let key_offset = cursor.position();
            let key = cursor
                .str_bytes()?
                .ok_or(DecodeError::KeyNotString { offset: key_offset })?;
            // Keys are nearly always ASCII, which is UTF-8: the full check
            // (a call per key) only for the others.
            if !key.is_ascii() && std::str::from_utf8(key).is_err() {
                return Err(DecodeError::InvalidUtf8 { offset: key_offset });
            }
            let start = cursor.position();
            cursor.skip_value()?;
            if entries.iter().any(|(existing, _)| *existing == key) {
                return Err(DecodeError::DuplicateField {
                    field: String::from_utf8_lossy(key).into_owned(),
                });
            }
            entries.push((key, start..cursor.position()));
        }
        Ok(Self {
            body: cursor.buf,
            entries,
        })
    }

    fn value(&self, field: &str) -> Option<Cursor<'a>> {
        self.entries
            .iter()
            .find(|(key, _)| *key == field.as_bytes())
            .map(|(_, range)| Cursor {
                buf: &self.body[..range.end],
                pos: range.start,
            })
    }

    /// The byte range of a field's value, if present.
    pub(crate) fn range(&self, field: &str) -> Option<Range<usize>> {
        self.entries
            .iter()
            .find(|(key, _)| *key == field.as_bytes())
            .map(|(_, range)| range.clone())
    }

    /// The field's value, or `None` if it is missing or nil (optional fields
    /// may be either).
    fn present(&self, field: &str) -> Result<Option<Cursor<'a>>, DecodeError> {
        match self.value(field) {
            Some(cursor) if !cursor.is_nil()? => Ok(Some(cursor)),
            _ => Ok(None),
        }
    }

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

    pub(crate) fn opt_str(&self, field: &'static str) -> Result<Option<&'a str>, DecodeError> {
        let Some(mut cursor) = self.present(field)? else {
            return Ok(None);
        };
        cursor.str()?.map(Some).ok_or(DecodeError::WrongType {
            field,
            expected: "a string",
        })
    }

    pub(crate) fn uint(&self, kind: &'static str, field: &'static str) -> Result<u64, DecodeError> {
        self.opt_uint(field)?
            .ok_or(DecodeError::MissingField { kind, field })
    }

    pub(crate) fn opt_uint(&self, field: &'static str) -> Result<Option<u64>, DecodeError> {
        let Some(mut cursor) = self.present(field)? else {
            return Ok(None);
        };
        cursor.uint()?.map(Some).ok_or(DecodeError::WrongType {
            field,
            expected: "a non-negative integer",
        })
    }

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
