//! Kafka's primitive types: a bounds-checked reader and the writers.
//!
//! Integers are big-endian. A string is an `i16` length (-1: null) and UTF-8; bytes an
//! `i32` length (-1: null); an array an `i32` count (-1: null). Flexible versions use
//! "compact" forms (an unsigned varint of length + 1, 0 meaning null) and end each
//! structure with a tagged-field section. The reader checks every length and count
//! against the bytes that follow before allocating anything, and counts the array
//! elements a message declares against a limit.

use bytes::{BufMut, Bytes, BytesMut};

use super::KafkaError;

pub struct Reader {
    input: Bytes,
    entries_left: usize,
    entries_max: usize,
}

impl Reader {
    /// A reader refusing a message whose arrays declare more than `entries_max` elements
    /// in all.
    pub fn new(input: Bytes, entries_max: usize) -> Reader {
        Reader {
            input,
            entries_left: entries_max,
            entries_max,
        }
    }

    /// Array elements declared so far.
    pub fn entries(&self) -> usize {
        self.entries_max - self.entries_left
    }

    pub fn remaining(&self) -> usize {
        self.input.len()
    }

    fn take(&mut self, length: usize, what: &'static str) -> Result<Bytes, KafkaError> {
        if self.input.len() < length {
            return Err(KafkaError::Truncated(what));
        }
        Ok(self.input.split_to(length))
    }

    fn fixed<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], KafkaError> {
        let bytes = self.take(N, what)?;
        Ok(bytes[..].try_into().expect("N bytes"))
    }

    pub fn i8(&mut self, what: &'static str) -> Result<i8, KafkaError> {
        Ok(i8::from_be_bytes(self.fixed(what)?))
    }

    pub fn bool(&mut self, what: &'static str) -> Result<bool, KafkaError> {
        Ok(self.i8(what)? != 0)
    }

    pub fn i16(&mut self, what: &'static str) -> Result<i16, KafkaError> {
        Ok(i16::from_be_bytes(self.fixed(what)?))
    }

    pub fn i32(&mut self, what: &'static str) -> Result<i32, KafkaError> {
        Ok(i32::from_be_bytes(self.fixed(what)?))
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64, KafkaError> {
        Ok(i64::from_be_bytes(self.fixed(what)?))
    }

    /// An unsigned varint of at most 5 bytes (32 bits).
    pub fn uvarint(&mut self, what: &'static str) -> Result<u32, KafkaError> {
        let mut value: u32 = 0;
        for index in 0..5 {
            let [byte] = self.fixed::<1>(what)?;
            if index == 4 && byte > 0x0f {
                return Err(KafkaError::Malformed(what, "varint longer than 32 bits"));
            }
            value |= u32::from(byte & 0x7f) << (7 * index);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(KafkaError::Malformed(what, "varint longer than 5 bytes"))
    }

    fn text(bytes: Bytes, what: &'static str) -> Result<String, KafkaError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| KafkaError::Malformed(what, "not UTF-8"))
    }

    /// A string's length: `None` for null.
    fn string_length(
        &mut self,
        flexible: bool,
        what: &'static str,
    ) -> Result<Option<usize>, KafkaError> {
        if flexible {
            let length = self.uvarint(what)?;
            return Ok(length.checked_sub(1).map(|length| length as usize));
        }
        let length = self.i16(what)?;
        match length {
            -1 => Ok(None),
            length if length < 0 => Err(KafkaError::Malformed(what, "negative length")),
            length => Ok(Some(length as usize)),
        }
    }

    pub fn nullable_string(
        &mut self,
        flexible: bool,
        what: &'static str,
    ) -> Result<Option<String>, KafkaError> {
        match self.string_length(flexible, what)? {
            None => Ok(None),
            Some(length) => {
                let bytes = self.take(length, what)?;
                Self::text(bytes, what).map(Some)
            }
        }
    }

    pub fn string(&mut self, flexible: bool, what: &'static str) -> Result<String, KafkaError> {
        self.nullable_string(flexible, what)?
            .ok_or(KafkaError::Malformed(
                what,
                "null where a string is required",
            ))
    }

    pub fn nullable_bytes(
        &mut self,
        flexible: bool,
        what: &'static str,
    ) -> Result<Option<Bytes>, KafkaError> {
        let length = if flexible {
            self.uvarint(what)?
                .checked_sub(1)
                .map(|length| length as usize)
        } else {
            match self.i32(what)? {
                -1 => None,
                length if length < 0 => {
                    return Err(KafkaError::Malformed(what, "negative length"));
                }
                length => Some(length as usize),
            }
        };
        length.map(|length| self.take(length, what)).transpose()
    }

    pub fn bytes(&mut self, flexible: bool, what: &'static str) -> Result<Bytes, KafkaError> {
        Ok(self.nullable_bytes(flexible, what)?.unwrap_or_default())
    }

    /// An array's element count (`None`: null), checked against the bytes left (each
    /// element takes at least `min_element_bytes`) and the message's entry limit.
    pub fn nullable_count(
        &mut self,
        flexible: bool,
        min_element_bytes: usize,
        what: &'static str,
    ) -> Result<Option<usize>, KafkaError> {
        let count = if flexible {
            match self.uvarint(what)?.checked_sub(1) {
                None => return Ok(None),
                Some(count) => count as usize,
            }
        } else {
            match self.i32(what)? {
                -1 => return Ok(None),
                count if count < 0 => return Err(KafkaError::Malformed(what, "negative count")),
                count => count as usize,
            }
        };
        if count.saturating_mul(min_element_bytes.max(1)) > self.input.len() {
            return Err(KafkaError::Truncated(what));
        }
        if count > self.entries_left {
            return Err(KafkaError::TooManyEntries {
                max: self.entries_max,
            });
        }
        self.entries_left -= count;
        Ok(Some(count))
    }

    pub fn count(
        &mut self,
        flexible: bool,
        min_element_bytes: usize,
        what: &'static str,
    ) -> Result<usize, KafkaError> {
        Ok(self
            .nullable_count(flexible, min_element_bytes, what)?
            .unwrap_or(0))
    }

    /// Skips a tagged-field section (none of the fields Spate reads are tagged).
    pub fn tagged_fields(&mut self) -> Result<(), KafkaError> {
        let fields = self.uvarint("tagged fields")? as usize;
        if fields > self.input.len() {
            return Err(KafkaError::Truncated("tagged fields"));
        }
        for _ in 0..fields {
            self.uvarint("tag")?;
            let length = self.uvarint("tagged field length")? as usize;
            self.take(length, "tagged field")?;
        }
        Ok(())
    }

    /// Fails if bytes are left over.
    pub fn finish(self) -> Result<(), KafkaError> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(KafkaError::TrailingBytes(self.input.len()))
        }
    }
}

pub fn put_uvarint(out: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

pub fn put_bool(out: &mut BytesMut, value: bool) {
    out.put_i8(i8::from(value));
}

pub fn put_nullable_string(out: &mut BytesMut, value: Option<&str>, flexible: bool) {
    match (value, flexible) {
        (None, false) => out.put_i16(-1),
        (None, true) => put_uvarint(out, 0),
        (Some(text), false) => {
            let length = text.len().min(i16::MAX as usize);
            out.put_i16(length as i16);
            out.put_slice(&text.as_bytes()[..length]);
        }
        (Some(text), true) => {
            put_uvarint(out, text.len() as u32 + 1);
            out.put_slice(text.as_bytes());
        }
    }
}

pub fn put_string(out: &mut BytesMut, value: &str, flexible: bool) {
    put_nullable_string(out, Some(value), flexible);
}

pub fn put_nullable_bytes(out: &mut BytesMut, value: Option<&[u8]>, flexible: bool) {
    match (value, flexible) {
        (None, false) => out.put_i32(-1),
        (None, true) => put_uvarint(out, 0),
        (Some(bytes), false) => {
            out.put_i32(i32::try_from(bytes.len()).expect("bytes fit a frame"));
            out.put_slice(bytes);
        }
        (Some(bytes), true) => {
            put_uvarint(out, bytes.len() as u32 + 1);
            out.put_slice(bytes);
        }
    }
}

pub fn put_bytes(out: &mut BytesMut, value: &[u8], flexible: bool) {
    put_nullable_bytes(out, Some(value), flexible);
}

pub fn put_count(out: &mut BytesMut, count: usize, flexible: bool) {
    let count = u32::try_from(count).expect("count fits");
    if flexible {
        put_uvarint(out, count + 1);
    } else {
        out.put_i32(count as i32);
    }
}

/// An array of `i32`s.
pub fn put_i32s(out: &mut BytesMut, values: &[i32], flexible: bool) {
    put_count(out, values.len(), flexible);
    for value in values {
        out.put_i32(*value);
    }
}

/// An empty tagged-field section.
pub fn put_no_tags(out: &mut BytesMut) {
    put_uvarint(out, 0);
}
