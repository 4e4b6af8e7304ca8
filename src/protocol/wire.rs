//! Primitive encoders and a bounds-checked reader for the native protocol.
//!
//! Integers are big-endian (network order, as Kafka). A string is a `u16` length and UTF-8
//! bytes; a byte blob is a `u32` length and the bytes; an array is a `u32` count and its
//! elements. The reader never reads past its input and checks every count against the
//! bytes left before allocating.

use bytes::{BufMut, Bytes, BytesMut};

use super::ProtocolError;

pub fn put_string(out: &mut BytesMut, value: &str) {
    assert!(
        value.len() <= u16::MAX as usize,
        "string longer than the protocol allows"
    );
    out.put_u16(value.len() as u16);
    out.put_slice(value.as_bytes());
}

pub fn put_blob(out: &mut BytesMut, value: &[u8]) {
    out.put_u32(value.len() as u32);
    out.put_slice(value);
}

pub fn put_count(out: &mut BytesMut, count: usize) {
    out.put_u32(u32::try_from(count).expect("array count fits in u32"));
}

/// Reads one message body. Every getter fails with `Truncated` instead of reading past the
/// end; `finish` fails if bytes are left over.
pub struct Reader {
    input: Bytes,
    /// Array elements the rest of the message may still declare (see `with_entry_limit`).
    entries_left: usize,
    entries_max: usize,
}

impl Reader {
    pub fn new(input: Bytes) -> Reader {
        Reader::with_entry_limit(input, usize::MAX)
    }

    /// A reader that refuses a message whose arrays declare more than `entries_max`
    /// elements in all (a request: see `limits::REQUEST_ENTRIES_MAX`).
    pub fn with_entry_limit(input: Bytes, entries_max: usize) -> Reader {
        Reader {
            input,
            entries_left: entries_max,
            entries_max,
        }
    }

    /// How many array elements the message has declared so far.
    pub fn entries(&self) -> usize {
        self.entries_max - self.entries_left
    }

    fn take(&mut self, length: usize, what: &'static str) -> Result<Bytes, ProtocolError> {
        if self.input.len() < length {
            return Err(ProtocolError::Truncated {
                what,
                needed: length,
                available: self.input.len(),
            });
        }
        Ok(self.input.split_to(length))
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtocolError> {
        let bytes = self.take(N, what)?;
        Ok(bytes[..].try_into().expect("took N bytes"))
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn i8(&mut self, what: &'static str) -> Result<i8, ProtocolError> {
        Ok(self.array::<1>(what)?[0] as i8)
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub fn i32(&mut self, what: &'static str) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    pub fn i64(&mut self, what: &'static str) -> Result<i64, ProtocolError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    pub fn string(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        let length = self.u16(what)? as usize;
        let bytes = self.take(length, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ProtocolError::Invalid {
            what,
            reason: "not UTF-8",
        })
    }

    /// A `u32`-length blob, shared with the input (no copy).
    pub fn blob(&mut self, what: &'static str) -> Result<Bytes, ProtocolError> {
        let length = self.u32(what)? as usize;
        self.take(length, what)
    }

    /// An array count, checked against the bytes left: each element takes at least
    /// `element_bytes_min`, so a hostile count cannot make the caller allocate.
    pub fn count(
        &mut self,
        what: &'static str,
        element_bytes_min: usize,
    ) -> Result<usize, ProtocolError> {
        let count = self.u32(what)? as usize;
        if count.saturating_mul(element_bytes_min.max(1)) > self.input.len() {
            return Err(ProtocolError::Invalid {
                what,
                reason: "count larger than the bytes that follow",
            });
        }
        if count > self.entries_left {
            return Err(ProtocolError::TooManyEntries {
                what,
                max: self.entries_max,
            });
        }
        self.entries_left -= count;
        Ok(count)
    }

    pub fn finish(self, what: &'static str) -> Result<(), ProtocolError> {
        if self.input.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes {
                what,
                count: self.input.len(),
            })
        }
    }
}
