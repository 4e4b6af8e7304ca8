//! Framing: every message is a `u32` length (of what follows) and that many bytes.
//!
//! ```text
//! request:  u32 length | u16 api_key | u16 api_version | u32 correlation_id | body
//! response: u32 length | u32 correlation_id | body
//! ```

use bytes::{Buf, Bytes, BytesMut};

use super::ProtocolError;
use super::wire::Reader;

/// Bytes of a request header after the length field.
pub const REQUEST_HEADER_BYTES: usize = 8;
/// Bytes of a response header after the length field.
pub const RESPONSE_HEADER_BYTES: usize = 4;

/// Takes one whole frame off the front of `buffer`, without its length field, or `None`
/// when more bytes are needed. A length over `frame_bytes_max` is an error before any
/// allocation: the caller closes the connection, since the stream cannot be resynchronised.
pub fn split_frame(
    buffer: &mut BytesMut,
    frame_bytes_max: usize,
) -> Result<Option<Bytes>, ProtocolError> {
    if buffer.len() < 4 {
        return Ok(None);
    }
    let length = u32::from_be_bytes(buffer[..4].try_into().expect("4 bytes")) as usize;
    if length > frame_bytes_max {
        return Err(ProtocolError::FrameTooLarge {
            length,
            max: frame_bytes_max,
        });
    }
    if buffer.len() < 4 + length {
        // Let the caller read the rest in as few reads as possible.
        buffer.reserve(4 + length - buffer.len());
        return Ok(None);
    }
    buffer.advance(4);
    Ok(Some(buffer.split_to(length).freeze()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Raw kind: an unknown kind still gets an answer carrying its correlation id.
    pub api_key: u16,
    pub api_version: u16,
    pub correlation_id: u32,
}

/// Splits a request frame into its header and body.
pub fn decode_request_header(frame: Bytes) -> Result<(RequestHeader, Bytes), ProtocolError> {
    let mut reader = Reader::new(frame.slice(..REQUEST_HEADER_BYTES.min(frame.len())));
    let header = RequestHeader {
        api_key: reader.u16("request header")?,
        api_version: reader.u16("request header")?,
        correlation_id: reader.u32("request header")?,
    };
    Ok((header, frame.slice(REQUEST_HEADER_BYTES..)))
}
