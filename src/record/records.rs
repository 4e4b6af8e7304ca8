//! Records inside an uncompressed batch: borrowed views for scanning, owned values for
//! clients.

use bytes::Bytes;

use super::varint::{get_varint, get_varlong};
use super::{BatchError, BatchHeader};
use crate::limits::BATCH_HEADER_BYTES;

/// One record as it sits in the batch, borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub attributes: i8,
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    headers_count: usize,
    headers_bytes: &'a [u8],
}

impl<'a> RecordView<'a> {
    /// The record's headers, in order. They were checked when the record was decoded.
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        let mut input = self.headers_bytes;
        (0..self.headers_count).map(move |_| {
            let (key, value) = read_header(&mut input).expect("headers were validated");
            (key, value)
        })
    }

    pub fn headers_count(&self) -> usize {
        self.headers_count
    }
}

/// A record with its absolute offset and timestamp, owning (shared) bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

/// A record header: a key and an optional value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: Bytes,
    pub value: Option<Bytes>,
}

/// Iterates over the records section of an uncompressed batch (the bytes after the
/// 61-byte header). Yields an error once and then stops if a record is malformed.
pub struct RecordIter<'a> {
    input: &'a [u8],
    failed: bool,
}

impl<'a> RecordIter<'a> {
    pub fn new(records: &'a [u8]) -> RecordIter<'a> {
        RecordIter {
            input: records,
            failed: false,
        }
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.input.is_empty() {
            return None;
        }
        let result = read_record(&mut self.input);
        if result.is_err() {
            self.failed = true;
        }
        Some(result)
    }
}

fn read_record<'a>(input: &mut &'a [u8]) -> Result<RecordView<'a>, BatchError> {
    let length = get_varint(input)?;
    if length < 0 || length as usize > input.len() {
        return Err(BatchError::MalformedRecord(
            "record length exceeds the batch",
        ));
    }
    let (mut body, rest) = input.split_at(length as usize);
    *input = rest;
    let Some((&attributes, tail)) = body.split_first() else {
        return Err(BatchError::MalformedRecord(
            "record shorter than its attributes",
        ));
    };
    body = tail;
    let timestamp_delta = get_varlong(&mut body)?;
    let offset_delta = get_varint(&mut body)?;
    let key = read_nullable(&mut body)?;
    let value = read_nullable(&mut body)?;
    let headers_count = get_varint(&mut body)?;
    if headers_count < 0 {
        return Err(BatchError::MalformedRecord("negative header count"));
    }
    let headers_bytes = body;
    for _ in 0..headers_count {
        read_header(&mut body)?;
    }
    if !body.is_empty() {
        return Err(BatchError::MalformedRecord(
            "record has bytes after its headers",
        ));
    }
    Ok(RecordView {
        attributes: attributes as i8,
        timestamp_delta,
        offset_delta,
        key,
        value,
        headers_count: headers_count as usize,
        headers_bytes,
    })
}

type HeaderSlices<'a> = (&'a [u8], Option<&'a [u8]>);

fn read_header<'a>(input: &mut &'a [u8]) -> Result<HeaderSlices<'a>, BatchError> {
    let key =
        read_nullable(input)?.ok_or(BatchError::MalformedRecord("record header key is null"))?;
    let value = read_nullable(input)?;
    Ok((key, value))
}

/// A varint length (-1 for null) followed by that many bytes.
fn read_nullable<'a>(input: &mut &'a [u8]) -> Result<Option<&'a [u8]>, BatchError> {
    let length = get_varint(input)?;
    if length == -1 {
        return Ok(None);
    }
    if length < 0 || length as usize > input.len() {
        return Err(BatchError::MalformedRecord(
            "field length exceeds the record",
        ));
    }
    let (field, rest) = input.split_at(length as usize);
    *input = rest;
    Ok(Some(field))
}

/// Decodes every record of one whole batch. The batch is validated first (CRC included);
/// the records share `batch`'s memory, or for a compressed batch its decompressed copy.
pub fn decode_records(batch: &Bytes) -> Result<Vec<Record>, BatchError> {
    let header: BatchHeader = super::validate(batch)?;
    let section = match super::compression::records_section(batch, &header)? {
        std::borrow::Cow::Borrowed(_) => batch.slice(BATCH_HEADER_BYTES..),
        std::borrow::Cow::Owned(decompressed) => Bytes::from(decompressed),
    };
    let share = |slice: &[u8]| section.slice_ref(slice);
    let mut records = Vec::with_capacity(header.records_count as usize);
    for record in RecordIter::new(&section) {
        let record = record?;
        // The base offset is not covered by the CRC: any value may come.
        let offset = header
            .base_offset
            .checked_add(i64::from(record.offset_delta))
            .ok_or(BatchError::MalformedRecord("record offset past i64::MAX"))?;
        records.push(Record {
            offset,
            timestamp: header.base_timestamp.wrapping_add(record.timestamp_delta),
            key: record.key.map(share),
            value: record.value.map(share),
            headers: record
                .headers()
                .map(|(key, value)| RecordHeader {
                    key: share(key),
                    value: value.map(share),
                })
                .collect(),
        });
    }
    Ok(records)
}
