//! Sparse per-segment indexes and their file format.
//!
//! - The offset index maps a batch's base offset to its byte position in the segment,
//!   one entry every `index.interval.bytes`. A lookup returns the position of the last
//!   entry at or before the wanted offset; the reader scans forward from there.
//! - The time index maps a timestamp to an offset: entry `(t, o)` says that every record
//!   before offset `o` has a timestamp of at most `t`. Entries are added only when `t`
//!   grows, so they are sorted by both fields.
//!
//! Both live in memory for every segment; sealed segments also keep them on disk
//! (`<base>.index`, `<base>.timeindex`) so opening a partition does not rescan them. The
//! files carry a CRC-32C and a copy of the segment's summary; any mismatch makes recovery
//! rebuild them from the segment, so an index file is never trusted blindly.

use crate::storage::StorageError;

/// Index entry positions and offsets are relative to the segment, stored as `u32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct OffsetIndex {
    entries: Vec<OffsetEntry>,
}

impl OffsetIndex {
    pub fn push(&mut self, entry: OffsetEntry) {
        if let Some(last) = self.entries.last() {
            assert!(
                entry.relative_offset > last.relative_offset,
                "offset index not increasing"
            );
            assert!(
                entry.position > last.position,
                "offset index positions not increasing"
            );
        }
        self.entries.push(entry);
    }

    /// The last entry at or before `relative_offset`: where to start scanning for it (the
    /// segment start when there is none).
    pub fn lookup(&self, relative_offset: u32) -> OffsetEntry {
        let index = self
            .entries
            .partition_point(|entry| entry.relative_offset <= relative_offset);
        if index == 0 {
            OffsetEntry {
                relative_offset: 0,
                position: 0,
            }
        } else {
            self.entries[index - 1]
        }
    }

    pub fn last(&self) -> Option<OffsetEntry> {
        self.entries.last().copied()
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct TimeIndex {
    entries: Vec<TimeEntry>,
}

impl TimeIndex {
    /// Records that everything before `relative_offset` is at most `timestamp`; ignored
    /// unless the timestamp grew.
    pub fn maybe_push(&mut self, entry: TimeEntry) {
        match self.entries.last() {
            Some(last) if entry.timestamp <= last.timestamp => {}
            Some(last) => {
                assert!(
                    entry.relative_offset > last.relative_offset,
                    "time index not increasing"
                );
                self.entries.push(entry);
            }
            None => self.entries.push(entry),
        }
    }

    /// The offset from which the first record with a timestamp at or after `timestamp` can
    /// be searched for: every record before it is older.
    pub fn lookup(&self, timestamp: i64) -> u32 {
        let index = self
            .entries
            .partition_point(|entry| entry.timestamp < timestamp);
        if index == 0 {
            0
        } else {
            self.entries[index - 1].relative_offset
        }
    }
}

/// What a segment's index file says about the segment; checked against the segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentSummary {
    pub base_offset: i64,
    pub size_bytes: u64,
    pub next_offset: i64,
    pub max_timestamp: i64,
    pub first_timestamp: i64,
}

const OFFSET_MAGIC: &[u8; 8] = b"SPATEOIX";
const TIME_MAGIC: &[u8; 8] = b"SPATETIX";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 64;
const OFFSET_ENTRY_BYTES: usize = 8;
const TIME_ENTRY_BYTES: usize = 12;

/// Encodes an offset index file: header (magic, version, count, summary, CRC) + entries,
/// little-endian.
pub(crate) fn encode_offset_index(summary: &SegmentSummary, index: &OffsetIndex) -> Vec<u8> {
    let mut body = Vec::with_capacity(index.entries.len() * OFFSET_ENTRY_BYTES);
    for entry in &index.entries {
        body.extend_from_slice(&entry.relative_offset.to_le_bytes());
        body.extend_from_slice(&entry.position.to_le_bytes());
    }
    encode_file(OFFSET_MAGIC, summary, index.entries.len(), &body)
}

pub(crate) fn encode_time_index(summary: &SegmentSummary, index: &TimeIndex) -> Vec<u8> {
    let mut body = Vec::with_capacity(index.entries.len() * TIME_ENTRY_BYTES);
    for entry in &index.entries {
        body.extend_from_slice(&entry.timestamp.to_le_bytes());
        body.extend_from_slice(&entry.relative_offset.to_le_bytes());
    }
    encode_file(TIME_MAGIC, summary, index.entries.len(), &body)
}

fn encode_file(magic: &[u8; 8], summary: &SegmentSummary, count: usize, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(&summary.base_offset.to_le_bytes());
    out.extend_from_slice(&summary.size_bytes.to_le_bytes());
    out.extend_from_slice(&summary.next_offset.to_le_bytes());
    out.extend_from_slice(&summary.max_timestamp.to_le_bytes());
    out.extend_from_slice(&summary.first_timestamp.to_le_bytes());
    // 56 bytes so far; the CRC goes at 56..60, then 4 bytes of zero padding.
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(body);
    let crc = file_crc(&out);
    out[56..60].copy_from_slice(&crc.to_le_bytes());
    out
}

fn file_crc(file: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&file[..56]);
    crc32c::crc32c_append(crc, &file[HEADER_BYTES..])
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn le_i64(bytes: &[u8], at: usize) -> i64 {
    i64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes and checks a file: magic, version, CRC, entry count against the length.
fn decode_file<'a>(
    magic: &[u8; 8],
    bytes: &'a [u8],
    entry_bytes: usize,
) -> Result<(SegmentSummary, &'a [u8]), &'static str> {
    if bytes.len() < HEADER_BYTES {
        return Err("shorter than its header");
    }
    if &bytes[..8] != magic {
        return Err("bad magic");
    }
    if le_u32(bytes, 8) != VERSION {
        return Err("unknown version");
    }
    let count = le_u32(bytes, 12) as usize;
    let body_bytes = count
        .checked_mul(entry_bytes)
        .ok_or("entry count overflows")?;
    if bytes.len() < HEADER_BYTES + body_bytes {
        return Err("shorter than its entry count");
    }
    let file = &bytes[..HEADER_BYTES + body_bytes];
    if le_u32(file, 56) != file_crc(file) {
        return Err("CRC mismatch");
    }
    let summary = SegmentSummary {
        base_offset: le_i64(file, 16),
        size_bytes: u64::from_le_bytes(file[24..32].try_into().expect("8 bytes")),
        next_offset: le_i64(file, 32),
        max_timestamp: le_i64(file, 40),
        first_timestamp: le_i64(file, 48),
    };
    Ok((summary, &file[HEADER_BYTES..]))
}

pub(crate) fn decode_offset_index(
    bytes: &[u8],
) -> Result<(SegmentSummary, OffsetIndex), &'static str> {
    let (summary, body) = decode_file(OFFSET_MAGIC, bytes, OFFSET_ENTRY_BYTES)?;
    let mut index = OffsetIndex::default();
    for chunk in body.chunks_exact(OFFSET_ENTRY_BYTES) {
        let entry = OffsetEntry {
            relative_offset: le_u32(chunk, 0),
            position: le_u32(chunk, 4),
        };
        if let Some(last) = index.last()
            && (entry.relative_offset <= last.relative_offset || entry.position <= last.position)
        {
            return Err("entries not increasing");
        }
        if u64::from(entry.position) >= summary.size_bytes {
            return Err("entry past the end of the segment");
        }
        index.entries.push(entry);
    }
    Ok((summary, index))
}

pub(crate) fn decode_time_index(bytes: &[u8]) -> Result<(SegmentSummary, TimeIndex), &'static str> {
    let (summary, body) = decode_file(TIME_MAGIC, bytes, TIME_ENTRY_BYTES)?;
    let mut index = TimeIndex::default();
    for chunk in body.chunks_exact(TIME_ENTRY_BYTES) {
        let entry = TimeEntry {
            timestamp: le_i64(chunk, 0),
            relative_offset: le_u32(chunk, 8),
        };
        if let Some(last) = index.entries.last()
            && (entry.timestamp <= last.timestamp || entry.relative_offset <= last.relative_offset)
        {
            return Err("entries not increasing");
        }
        index.entries.push(entry);
    }
    Ok((summary, index))
}

/// Index lookups need offsets relative to a segment; this is the one place that narrows.
pub(crate) fn relative(base_offset: i64, offset: i64) -> Result<u32, StorageError> {
    u32::try_from(offset - base_offset).map_err(|_| StorageError::Internal {
        reason: format!("offset {offset} is not within 2^32 of segment base {base_offset}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> SegmentSummary {
        SegmentSummary {
            base_offset: 100,
            size_bytes: 10_000,
            next_offset: 180,
            max_timestamp: 55,
            first_timestamp: 5,
        }
    }

    #[test]
    fn lookups() {
        let mut offsets = OffsetIndex::default();
        offsets.push(OffsetEntry {
            relative_offset: 10,
            position: 4096,
        });
        offsets.push(OffsetEntry {
            relative_offset: 20,
            position: 8192,
        });
        let position = |offset| offsets.lookup(offset).position;
        assert_eq!(position(0), 0);
        assert_eq!(position(9), 0);
        assert_eq!(position(10), 4096);
        assert_eq!(
            offsets.lookup(19),
            OffsetEntry {
                relative_offset: 10,
                position: 4096
            }
        );
        assert_eq!(position(25), 8192);

        let mut times = TimeIndex::default();
        times.maybe_push(TimeEntry {
            timestamp: 50,
            relative_offset: 10,
        });
        times.maybe_push(TimeEntry {
            timestamp: 40,
            relative_offset: 15,
        });
        times.maybe_push(TimeEntry {
            timestamp: 70,
            relative_offset: 20,
        });
        assert_eq!(times.entries.len(), 2);
        assert_eq!(times.lookup(10), 0);
        assert_eq!(times.lookup(50), 0);
        assert_eq!(times.lookup(51), 10);
        assert_eq!(times.lookup(1000), 20);
    }

    #[test]
    fn files_round_trip_and_detect_damage() {
        let mut offsets = OffsetIndex::default();
        offsets.push(OffsetEntry {
            relative_offset: 3,
            position: 5000,
        });
        offsets.push(OffsetEntry {
            relative_offset: 9,
            position: 9000,
        });
        let file = encode_offset_index(&summary(), &offsets);
        let (got_summary, got) = decode_offset_index(&file).unwrap();
        assert_eq!(got_summary, summary());
        assert_eq!(got, offsets);

        let mut times = TimeIndex::default();
        times.maybe_push(TimeEntry {
            timestamp: 7,
            relative_offset: 3,
        });
        let file = encode_time_index(&summary(), &times);
        assert_eq!(decode_time_index(&file).unwrap().1, times);

        let file = encode_offset_index(&summary(), &offsets);
        for position in 0..file.len() {
            let mut damaged = file.clone();
            damaged[position] ^= 0x10;
            if (60..64).contains(&position) {
                continue; // padding, not covered
            }
            assert!(
                decode_offset_index(&damaged).is_err(),
                "flip at {position} undetected"
            );
        }
        assert!(decode_offset_index(&file[..file.len() - 1]).is_err());
    }
}
