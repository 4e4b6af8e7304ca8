//! Building a RecordBatch v2 from records (uncompressed, or compressed by a codec).

use bytes::Bytes;

use super::varint::{put_varint, put_varlong, varint_len, varlong_len};
use super::{BatchHeader, Compression, MAGIC_V2, compute_crc};
use crate::limits::{BATCH_HEADER_BYTES, BATCH_LOG_OVERHEAD_BYTES};

/// A header to encode: a key and an optional value.
#[derive(Debug, Clone, Copy)]
pub struct HeaderRef<'a> {
    pub key: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// Accumulates records and encodes them as one batch.
///
/// The first record's timestamp becomes the batch's base timestamp; producer id, epoch
/// and base sequence are -1 (no idempotence), as a plain Kafka producer sends them.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    /// The batch being built: room for the header (written by `build`), then the records,
    /// so the finished batch is handed out with no copy.
    batch: Vec<u8>,
    records_count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        BatchBuilder::default()
    }

    /// Number of records pushed so far.
    pub fn records_count(&self) -> usize {
        self.records_count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.records_count == 0
    }

    /// Size the batch would have if built now.
    pub fn encoded_bytes(&self) -> usize {
        BATCH_HEADER_BYTES.max(self.batch.len())
    }

    /// Size a record would add to the batch (useful to decide when a batch is full).
    pub fn record_bytes(
        &self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[HeaderRef<'_>],
    ) -> usize {
        let body = self.body_bytes(timestamp, key, value, headers);
        varint_len(body as i32) + body
    }

    fn body_bytes(
        &self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[HeaderRef<'_>],
    ) -> usize {
        let base = if self.records_count == 0 {
            timestamp
        } else {
            self.base_timestamp
        };
        let nullable = |field: Option<&[u8]>| match field {
            None => varint_len(-1),
            Some(bytes) => varint_len(bytes.len() as i32) + bytes.len(),
        };
        let headers_bytes: usize = headers
            .iter()
            .map(|header| nullable(Some(header.key)) + nullable(header.value))
            .sum();
        1 + varlong_len(timestamp.wrapping_sub(base))
            + varint_len(self.records_count)
            + nullable(key)
            + nullable(value)
            + varint_len(headers.len() as i32)
            + headers_bytes
    }

    /// Appends one record.
    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[HeaderRef<'_>],
    ) {
        if self.records_count == 0 {
            self.base_timestamp = timestamp;
            self.max_timestamp = timestamp;
            self.batch.resize(BATCH_HEADER_BYTES, 0);
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let body = self.body_bytes(timestamp, key, value, headers);
        let out = &mut self.batch;
        put_varint(out, body as i32);
        let body_start = out.len();
        out.push(0); // record attributes: unused in v2
        put_varlong(out, timestamp.wrapping_sub(self.base_timestamp));
        put_varint(out, self.records_count);
        put_nullable(out, key);
        put_nullable(out, value);
        put_varint(out, headers.len() as i32);
        for header in headers {
            put_nullable(out, Some(header.key));
            put_nullable(out, header.value);
        }
        debug_assert_eq!(out.len() - body_start, body);
        self.records_count += 1;
    }

    /// Encodes the batch with the given base offset and leaves the builder empty.
    pub fn build(&mut self, base_offset: i64) -> Bytes {
        self.build_compressed(base_offset, Compression::None)
    }

    /// `build`, with the records section compressed by `codec` (as Kafka's producers do:
    /// the header stays plain, the attributes name the codec).
    pub fn build_compressed(&mut self, base_offset: i64, codec: Compression) -> Bytes {
        assert!(
            self.records_count > 0,
            "a batch carries at least one record"
        );
        // The next batch starts with room for one like this.
        let room = Vec::with_capacity(self.batch.len());
        let mut batch = std::mem::replace(&mut self.batch, room);
        if codec != Compression::None {
            let compressed = super::compression::compress(codec, &batch[BATCH_HEADER_BYTES..]);
            batch.truncate(BATCH_HEADER_BYTES);
            batch.extend_from_slice(&compressed);
        }
        let total = batch.len();
        let header = BatchHeader {
            base_offset,
            batch_length: (total - BATCH_LOG_OVERHEAD_BYTES) as i32,
            partition_leader_epoch: -1,
            magic: MAGIC_V2,
            crc: 0,
            attributes: codec.id(),
            last_offset_delta: self.records_count - 1,
            base_timestamp: self.base_timestamp,
            max_timestamp: self.max_timestamp,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: self.records_count,
        };
        header.write(&mut batch);
        let crc = compute_crc(&batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        self.records_count = 0;
        Bytes::from(batch)
    }
}

fn put_nullable(out: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        None => put_varint(out, -1),
        Some(bytes) => {
            put_varint(out, bytes.len() as i32);
            out.extend_from_slice(bytes);
        }
    }
}
