//! What a clean close leaves beside the active segment: `<base>.clean`, the segment's
//! summary and indexes, where its last batch starts and that batch's CRC, and the log's
//! producer table. The next open takes them instead of reading the whole active segment
//! (up to `segment.bytes`) to rebuild them, which is what makes a restart with thousands of
//! partitions quick.
//!
//! Nothing is taken on trust. The file carries a CRC-32C; the index sections carry their
//! own and must agree with each other; and the segment must still be exactly as described:
//! its size the block after the last batch (a clean close gives back the space allocated
//! ahead), the header at the recorded position the recorded batch (same CRC, ending at the
//! recorded size with the recorded next offset), and only zeros after it in the last block.
//! Any write after the snapshot changes one of these (a new batch lands in the last block
//! or grows the file), so a snapshot that a crash left behind is refused and the segment is
//! scanned as after any crash.
//!
//! The snapshot stays on disk while it is true: the appender removes it before it first
//! changes the segment or the producer table (a write, a roll, a truncation), and a clean
//! close of a partition that did not change writes none. An idle partition thus costs a
//! stop and a start nothing but the snapshot's read, even after a crash. A snapshot that
//! the open refuses is removed there.
//!
//! The snapshot is written after the segment's final fdatasync and not synced itself: a
//! crash that loses or tears it costs the next start a scan, nothing else.

use std::path::{Path, PathBuf};

use glommio::io::DmaFile;

use super::StorageError;
use super::index::{
    SegmentSummary, decode_offset_index, decode_time_index, encode_offset_index, encode_time_index,
};
use super::io::{self, align_down, align_up};
use super::producers::ProducerTable;
use super::segment::SegmentMeta;
use crate::limits::BATCH_HEADER_BYTES;
use crate::record::BatchHeader;

const MAGIC: &[u8; 8] = b"SPATECLN";
const VERSION: u32 = 1;
/// Stands for "no last batch" (an empty segment).
const NO_BATCH: u64 = u64::MAX;

/// `<base offset>.clean`, beside the segment.
pub(crate) fn clean_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("clean")
}

/// The snapshot of an active segment (`meta`, `base_offset`) and its log's producers.
pub(crate) fn encode(base_offset: i64, meta: &SegmentMeta, producers: &ProducerTable) -> Vec<u8> {
    let summary = SegmentSummary {
        base_offset,
        size_bytes: meta.size_bytes,
        next_offset: meta.next_offset,
        max_timestamp: meta.max_timestamp,
        first_timestamp: meta.first_timestamp.unwrap_or(i64::MIN),
    };
    let mut table = Vec::new();
    producers.encode(&mut table);
    let sections = [
        encode_offset_index(&summary, &meta.offset_index),
        encode_time_index(&summary, &meta.time_index),
        table,
    ];
    let (position, crc) = meta.last_batch.unwrap_or((NO_BATCH, 0));
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    for section in &sections {
        out.extend_from_slice(&(section.len() as u32).to_le_bytes());
        out.extend_from_slice(section);
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The segment's metadata (producer table included) a snapshot holds, if it is whole and
/// consistent and describes the segment based at `base_offset`.
pub(crate) fn decode(base_offset: i64, bytes: &[u8]) -> Option<SegmentMeta> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let (header, mut rest) = body.split_at_checked(8 + 4 + 8 + 4)?;
    if &header[..8] != MAGIC || header[8..12] != VERSION.to_le_bytes() {
        return None;
    }
    let position = u64::from_le_bytes(header[12..20].try_into().ok()?);
    let last_crc = u32::from_le_bytes(header[20..24].try_into().ok()?);
    let mut sections = Vec::with_capacity(3);
    for _ in 0..3 {
        let (length, after) = rest.split_at_checked(4)?;
        let length = u32::from_le_bytes(length.try_into().ok()?) as usize;
        let (section, after) = after.split_at_checked(length)?;
        sections.push(section);
        rest = after;
    }
    if !rest.is_empty() {
        return None;
    }
    let (summary, offset_index) = decode_offset_index(sections[0]).ok()?;
    let (time_summary, time_index) = decode_time_index(sections[1]).ok()?;
    let producers = ProducerTable::decode(sections[2])?;
    let last_batch = (position != NO_BATCH).then_some((position, last_crc));
    let consistent = summary == time_summary
        && summary.base_offset == base_offset
        && summary.next_offset >= base_offset
        && match last_batch {
            None => summary.size_bytes == 0 && summary.next_offset == base_offset,
            Some((position, _)) => position < summary.size_bytes,
        };
    consistent.then(|| SegmentMeta {
        last_batch,
        producers,
        ..SegmentMeta::from_summary(&summary, offset_index, time_index, false)
    })
}

/// Whether the segment file (of `file_size` bytes) is still exactly as `meta`, from a
/// snapshot, describes it (see the module's notes).
pub(crate) async fn matches(
    file: &DmaFile,
    path: &Path,
    meta: &SegmentMeta,
    file_size: u64,
) -> Result<bool, StorageError> {
    let end = meta.size_bytes;
    if file_size != align_up(end) {
        return Ok(false);
    }
    let Some((position, crc)) = meta.last_batch else {
        return Ok(end == 0);
    };
    let bytes = io::read_at(file, path, position, BATCH_HEADER_BYTES).await?;
    let Ok(header) = BatchHeader::parse(&bytes) else {
        return Ok(false);
    };
    if header.crc != crc
        || position + header.total_bytes() as u64 != end
        || header.next_offset() != meta.next_offset
    {
        return Ok(false);
    }
    let block = align_down(end);
    if end > block {
        let bytes = io::read_at(file, path, block, (align_up(end) - block) as usize).await?;
        let after = (end - block) as usize;
        if bytes.len() != (align_up(end) - block) as usize
            || bytes[after..].iter().any(|&byte| byte != 0)
        {
            return Ok(false);
        }
    }
    Ok(true)
}
