//! Kafka's RecordBatch v2 (magic 2): the format of a batch on disk and on the wire.
//!
//! Pure code: no I/O, no async. Every decoder treats its input as hostile: lengths are
//! bounded before anything is allocated, nothing panics on bad bytes, and every failure is
//! a [`BatchError`] that says what was wrong.
//!
//! Layout (big-endian), offsets in bytes:
//!
//! ```text
//!  0 base_offset i64        | not covered by the CRC: the log patches it at append
//!  8 batch_length i32       | bytes after this field
//! 12 partition_leader_epoch i32
//! 16 magic i8 (= 2)
//! 17 crc u32                | CRC-32C of bytes 21.. end of batch
//! 21 attributes i16         | bits 0-2 compression, 3 timestamp type, 4 transactional, 5 control
//! 23 last_offset_delta i32
//! 27 base_timestamp i64
//! 35 max_timestamp i64
//! 43 producer_id i64
//! 51 producer_epoch i16
//! 53 base_sequence i32
//! 57 records_count i32
//! 61 records...
//! ```

mod builder;
pub mod compression;
mod records;
pub mod varint;

pub use builder::{BatchBuilder, HeaderRef};
pub use records::{Record, RecordHeader, RecordIter, RecordView, decode_records};

use crate::limits::{BATCH_BYTES_MAX, BATCH_HEADER_BYTES, BATCH_LOG_OVERHEAD_BYTES};

/// The only batch format Spate reads and writes.
pub const MAGIC_V2: i8 = 2;

/// Start of the bytes the CRC covers (the attributes field).
const CRC_COVERAGE_START: usize = 21;

/// Why a batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("batch length field says {declared} bytes but {actual} bytes were given")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("batch length {declared} is invalid (smallest {min}, largest {max})")]
    InvalidLength {
        declared: i64,
        min: usize,
        max: usize,
    },
    #[error("unsupported batch magic {0}: only RecordBatch v2 (magic 2) is accepted")]
    UnsupportedMagic(i8),
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("cannot decompress the {codec} batch: {reason}")]
    Decompression { codec: Compression, reason: String },
    #[error("the {codec} batch decompresses to more than {max} bytes")]
    DecompressedTooLarge { codec: Compression, max: usize },
    #[error("unknown compression codec id {0}")]
    UnknownCompression(u8),
    #[error("batch declares {declared} records but carries {actual}")]
    RecordCount { declared: i64, actual: usize },
    #[error("last offset delta {last_offset_delta} does not match record count {records_count}")]
    OffsetDeltaCount {
        last_offset_delta: i32,
        records_count: i32,
    },
    #[error("record {index} has offset delta {found}, expected {expected}")]
    RecordOffsetDelta {
        index: usize,
        expected: i32,
        found: i32,
    },
    #[error("malformed record: {0}")]
    MalformedRecord(&'static str),
    #[error("batch max timestamp {declared} differs from its records' largest timestamp {records}")]
    MaxTimestampMismatch { declared: i64, records: i64 },
    #[error("batch is empty: a batch carries at least one record")]
    Empty,
}

/// Compression codec named by bits 0-2 of the attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// The codec's id in the attributes (bits 0-2).
    pub fn id(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// A codec by its Kafka name (`compression.type`).
    pub fn from_name(name: &str) -> Option<Compression> {
        [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ]
        .into_iter()
        .find(|codec| codec.to_string() == name)
    }

    fn from_attributes(attributes: i16) -> Result<Compression, BatchError> {
        match (attributes & 0x07) as u8 {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(BatchError::UnknownCompression(other)),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        };
        f.write_str(name)
    }
}

/// The fixed 61-byte header of a batch, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Decodes the header at the front of `bytes`. Checks only that the header is present
    /// and that `batch_length` is within bounds; [`validate`] checks the rest.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::Truncated {
                needed: BATCH_HEADER_BYTES,
                available: bytes.len(),
            });
        }
        let header = BatchHeader {
            base_offset: i64::from_be_bytes(array(bytes, 0)),
            batch_length: i32::from_be_bytes(array(bytes, 8)),
            partition_leader_epoch: i32::from_be_bytes(array(bytes, 12)),
            magic: bytes[16] as i8,
            crc: u32::from_be_bytes(array(bytes, 17)),
            attributes: i16::from_be_bytes(array(bytes, 21)),
            last_offset_delta: i32::from_be_bytes(array(bytes, 23)),
            base_timestamp: i64::from_be_bytes(array(bytes, 27)),
            max_timestamp: i64::from_be_bytes(array(bytes, 35)),
            producer_id: i64::from_be_bytes(array(bytes, 43)),
            producer_epoch: i16::from_be_bytes(array(bytes, 51)),
            base_sequence: i32::from_be_bytes(array(bytes, 53)),
            records_count: i32::from_be_bytes(array(bytes, 57)),
        };
        let total = i64::from(header.batch_length) + BATCH_LOG_OVERHEAD_BYTES as i64;
        if total < BATCH_HEADER_BYTES as i64 || total > BATCH_BYTES_MAX as i64 {
            return Err(BatchError::InvalidLength {
                declared: total,
                min: BATCH_HEADER_BYTES,
                max: BATCH_BYTES_MAX,
            });
        }
        Ok(header)
    }

    /// Whole size of the batch in bytes, header included.
    pub fn total_bytes(&self) -> usize {
        self.batch_length as usize + BATCH_LOG_OVERHEAD_BYTES
    }

    /// Offset of the batch's last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Offset the batch after this one starts at.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_attributes(self.attributes)
    }

    /// Bit 3 of the attributes: the timestamps were set by the broker, not the producer.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & 0x08 != 0
    }

    /// Encodes the header into the first 61 bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        assert!(out.len() >= BATCH_HEADER_BYTES, "header buffer too small");
        out[0..8].copy_from_slice(&self.base_offset.to_be_bytes());
        out[8..12].copy_from_slice(&self.batch_length.to_be_bytes());
        out[12..16].copy_from_slice(&self.partition_leader_epoch.to_be_bytes());
        out[16] = self.magic as u8;
        out[17..21].copy_from_slice(&self.crc.to_be_bytes());
        out[21..23].copy_from_slice(&self.attributes.to_be_bytes());
        out[23..27].copy_from_slice(&self.last_offset_delta.to_be_bytes());
        out[27..35].copy_from_slice(&self.base_timestamp.to_be_bytes());
        out[35..43].copy_from_slice(&self.max_timestamp.to_be_bytes());
        out[43..51].copy_from_slice(&self.producer_id.to_be_bytes());
        out[51..53].copy_from_slice(&self.producer_epoch.to_be_bytes());
        out[53..57].copy_from_slice(&self.base_sequence.to_be_bytes());
        out[57..61].copy_from_slice(&self.records_count.to_be_bytes());
    }
}

fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// CRC-32C over the bytes the batch CRC covers (attributes to the end).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[CRC_COVERAGE_START..])
}

/// Checks one complete batch: `batch` must be exactly one batch, no more and no less.
///
/// Checked: header present, length field equal to the slice length and within bounds,
/// magic 2, CRC-32C, a known codec, at least one record, `last_offset_delta` equal to
/// `records_count - 1`, and that the records decode (decompressed first), number
/// `records_count` and carry offset deltas 0, 1, 2, ...
pub fn validate(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    validate_records(batch, false)
}

/// `validate`, and for a CreateTime batch also that its `max_timestamp` is the largest of
/// its records' timestamps: what a broker checks of a batch it is asked to store, since
/// the stored max drives retention, `segment.ms` and lookups by time. Readers use
/// `validate`, so batches stored before this check existed stay readable.
pub fn validate_new(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    validate_records(batch, true)
}

fn validate_records(batch: &[u8], check_max_timestamp: bool) -> Result<BatchHeader, BatchError> {
    let header = validate_framing(batch)?;
    if header.total_bytes() != batch.len() {
        return Err(BatchError::LengthMismatch {
            declared: header.total_bytes(),
            actual: batch.len(),
        });
    }
    let section = compression::records_section(batch, &header)?;
    let mut count = 0usize;
    let mut records_max_timestamp = i64::MIN;
    for (index, record) in RecordIter::new(&section).enumerate() {
        let record = record?;
        if index >= header.records_count as usize {
            return Err(BatchError::RecordCount {
                declared: i64::from(header.records_count),
                actual: index + 1,
            });
        }
        if record.offset_delta != index as i32 {
            return Err(BatchError::RecordOffsetDelta {
                index,
                expected: index as i32,
                found: record.offset_delta,
            });
        }
        // Wrapping, as the producer computed the delta: any timestamp round-trips.
        let timestamp = header.base_timestamp.wrapping_add(record.timestamp_delta);
        records_max_timestamp = records_max_timestamp.max(timestamp);
        count += 1;
    }
    if count != header.records_count as usize {
        return Err(BatchError::RecordCount {
            declared: i64::from(header.records_count),
            actual: count,
        });
    }
    // The stored max timestamp drives retention, `segment.ms` and lookups by time, so the
    // client must not set it apart from its records (Kafka's producers set the max of the
    // records' timestamps). A LogAppendTime batch's timestamps are the broker's, not the
    // records'.
    if check_max_timestamp
        && !header.is_log_append_time()
        && header.max_timestamp != records_max_timestamp
    {
        return Err(BatchError::MaxTimestampMismatch {
            declared: header.max_timestamp,
            records: records_max_timestamp,
        });
    }
    Ok(header)
}

/// The checks that need no record decoding: header, length bounds, magic, CRC, counts.
/// Used when scanning stored segments, where the records were validated at append.
pub fn validate_framing(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if batch.len() < header.total_bytes() {
        return Err(BatchError::Truncated {
            needed: header.total_bytes(),
            available: batch.len(),
        });
    }
    if header.magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic(header.magic));
    }
    let computed = compute_crc(&batch[..header.total_bytes()]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    if header.records_count <= 0 {
        return Err(BatchError::Empty);
    }
    if header.records_count as usize > crate::limits::BATCH_RECORDS_MAX {
        return Err(BatchError::RecordCount {
            declared: i64::from(header.records_count),
            actual: 0,
        });
    }
    if i64::from(header.last_offset_delta) != i64::from(header.records_count) - 1 {
        return Err(BatchError::OffsetDeltaCount {
            last_offset_delta: header.last_offset_delta,
            records_count: header.records_count,
        });
    }
    header.compression()?;
    Ok(header)
}

/// Stamps an idempotent producer's id, epoch and first sequence number on a whole batch
/// and recomputes its CRC (which covers them).
pub fn set_producer(batch: &mut [u8], producer_id: i64, producer_epoch: i16, base_sequence: i32) {
    assert!(batch.len() >= BATCH_HEADER_BYTES, "not a batch");
    batch[43..51].copy_from_slice(&producer_id.to_be_bytes());
    batch[51..53].copy_from_slice(&producer_epoch.to_be_bytes());
    batch[53..57].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = compute_crc(batch);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Overwrites the base offset of the batch at the front of `batch`. The CRC does not cover
/// this field, so the batch stays valid.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    assert!(batch.len() >= BATCH_HEADER_BYTES, "not a batch");
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Stamps a batch with the leader epoch of the partition leader that appended it (not
/// covered by the CRC, like the base offset).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    assert!(batch.len() >= BATCH_HEADER_BYTES, "not a batch");
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// Splits a buffer of concatenated batches into (header, byte range) pairs, validating
/// each batch fully (`validate`). Stops at the first error.
pub fn split_batches(
    bytes: &[u8],
) -> impl Iterator<Item = Result<(BatchHeader, std::ops::Range<usize>), BatchError>> + '_ {
    split_checked(bytes, validate)
}

/// `split_batches` for batches a broker is asked to store: each is checked with
/// `validate_new`.
pub fn split_new_batches(
    bytes: &[u8],
) -> impl Iterator<Item = Result<(BatchHeader, std::ops::Range<usize>), BatchError>> + '_ {
    split_checked(bytes, validate_new)
}

fn split_checked(
    bytes: &[u8],
    check: fn(&[u8]) -> Result<BatchHeader, BatchError>,
) -> impl Iterator<Item = Result<(BatchHeader, std::ops::Range<usize>), BatchError>> + '_ {
    let mut position = 0usize;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || position >= bytes.len() {
            return None;
        }
        let rest = &bytes[position..];
        let result = BatchHeader::parse(rest).and_then(|header| {
            let end = header.total_bytes();
            if rest.len() < end {
                return Err(BatchError::Truncated {
                    needed: end,
                    available: rest.len(),
                });
            }
            check(&rest[..end]).map(|header| (header, position..position + end))
        });
        match &result {
            Ok((_, range)) => position = range.end,
            Err(_) => failed = true,
        }
        Some(result)
    })
}

#[cfg(test)]
mod tests;
