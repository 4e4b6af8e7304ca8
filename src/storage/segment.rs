//! One segment: a file of whole batches named by its base offset, its in-memory indexes,
//! the scan that rebuilds them, and reads by offset.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, ReadResult};

use super::files::Slot;
use super::index::{
    OffsetEntry, OffsetIndex, SegmentSummary, TimeEntry, TimeIndex, encode_offset_index,
    encode_time_index, relative,
};
use super::{Chunk, StorageError, io};
use crate::limits::{BATCH_HEADER_BYTES, SCAN_WINDOW_BYTES};
use crate::record::{BatchHeader, validate_framing};

/// `<base offset, 20 digits>.log`, as Kafka names segments.
pub(crate) fn segment_file_name(base_offset: i64) -> String {
    format!("{base_offset:020}.log")
}

pub(crate) fn offset_index_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("index")
}

pub(crate) fn time_index_path(log_path: &Path) -> PathBuf {
    log_path.with_extension("timeindex")
}

/// What is known about a segment's contents. Only the appender task changes it, and only
/// after the bytes it describes are written (and, with `flush.ms=0`, synced): readers
/// never see past `size_bytes`.
#[derive(Debug, Clone, Default)]
pub(crate) struct SegmentMeta {
    /// Bytes of whole, acknowledged batches from the start of the file.
    pub size_bytes: u64,
    /// Offset the next batch appended to this segment gets.
    pub next_offset: i64,
    /// Largest batch max timestamp in the segment (`i64::MIN` while empty).
    pub max_timestamp: i64,
    /// Max timestamp of the first batch: `segment.ms` is measured from it.
    pub first_timestamp: Option<i64>,
    pub offset_index: OffsetIndex,
    pub time_index: TimeIndex,
    pub sealed: bool,
    /// Where the last batch starts and its CRC (`None` for an empty segment, and for a
    /// sealed one loaded from its index files): how a clean close's snapshot of the active
    /// segment is checked against the file (`clean.rs`).
    pub last_batch: Option<(u64, u32)>,
    /// Idempotent producers' batches seen by a recovery scan (empty otherwise): how
    /// `Log::open` rebuilds the log's producer table from the active segment.
    pub producers: super::producers::ProducerTable,
}

impl SegmentMeta {
    pub fn empty(base_offset: i64) -> SegmentMeta {
        SegmentMeta {
            next_offset: base_offset,
            max_timestamp: i64::MIN,
            ..SegmentMeta::default()
        }
    }

    /// What index files (or a clean close's snapshot) say of a segment, taken whole.
    pub fn from_summary(
        summary: &SegmentSummary,
        offset_index: OffsetIndex,
        time_index: TimeIndex,
        sealed: bool,
    ) -> SegmentMeta {
        SegmentMeta {
            size_bytes: summary.size_bytes,
            next_offset: summary.next_offset,
            max_timestamp: summary.max_timestamp,
            first_timestamp: (summary.first_timestamp != i64::MIN)
                .then_some(summary.first_timestamp),
            offset_index,
            time_index,
            sealed,
            last_batch: None,
            producers: Default::default(),
        }
    }

    /// Accounts for a batch stored at `position`, adding index entries every
    /// `index_interval_bytes`.
    pub fn note_batch(
        &mut self,
        base_offset: i64,
        position: u64,
        header: &BatchHeader,
        index_interval_bytes: u64,
    ) {
        assert_eq!(position, self.size_bytes, "batches are stored back to back");
        assert_eq!(
            header.base_offset, self.next_offset,
            "offsets are contiguous"
        );
        let last_indexed = self
            .offset_index
            .last()
            .map_or(0, |entry| u64::from(entry.position));
        if position > 0 && position - last_indexed >= index_interval_bytes {
            let relative_offset = (header.base_offset - base_offset) as u32;
            self.offset_index.push(OffsetEntry {
                relative_offset,
                position: position as u32,
            });
            if self.max_timestamp != i64::MIN {
                self.time_index.maybe_push(TimeEntry {
                    timestamp: self.max_timestamp,
                    relative_offset,
                });
            }
        }
        self.max_timestamp = self.max_timestamp.max(header.max_timestamp);
        self.first_timestamp.get_or_insert(header.max_timestamp);
        self.next_offset = header.next_offset();
        self.size_bytes = position + header.total_bytes() as u64;
        self.last_batch = Some((position, header.crc));
    }
}

pub(crate) struct Segment {
    pub base_offset: i64,
    pub path: PathBuf,
    /// The file: opened on use and closed by the shard's cap on open files (`files.rs`).
    pub slot: Rc<Slot>,
    pub meta: RefCell<SegmentMeta>,
    /// Bumped each time the segment is cut (or dropped) by a truncation. A reader that
    /// sees it move during its read throws the read away and starts again.
    pub truncations: Cell<u64>,
    /// The device the file lives on, once a durability round has asked (`rounds.rs`).
    pub device: Cell<Option<u64>>,
}

/// What `Segment::read` found.
#[derive(Default)]
pub(crate) struct SegmentRead {
    pub chunks: Vec<Chunk>,
    /// Where the batch after the last one returned starts, and its base offset, when the
    /// read stopped at `max_bytes` before the segment's end.
    pub next: Option<(u64, i64)>,
}

/// Bytes read from `position`, where the batch with base offset `offset` starts, before
/// a reader asked for them.
pub(crate) struct ReadAhead {
    pub position: u64,
    pub offset: i64,
    pub data: ReadResult,
}

/// Why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanStop {
    /// Reached the limit exactly on a batch boundary.
    End,
    /// The bytes after the last batch are zeros: direct-I/O padding, not damage.
    ZeroPadding,
    /// The scan reached the batch holding the requested offset.
    ReachedOffset,
    /// The bytes at `position` are not a valid next batch.
    Damaged { position: u64, reason: String },
}

/// Reads a file through windows of `SCAN_WINDOW_BYTES` (or larger for a big batch).
struct Window<'a> {
    file: &'a DmaFile,
    path: &'a Path,
    limit: u64,
    start: u64,
    data: ReadResult,
    preferred_bytes: usize,
}

impl<'a> Window<'a> {
    fn new(file: &'a DmaFile, path: &'a Path, limit: u64, preferred_bytes: usize) -> Window<'a> {
        Window {
            file,
            path,
            limit,
            start: 0,
            data: ReadResult::default(),
            preferred_bytes,
        }
    }

    /// Makes `[position, position + length)` available, reading if it is not already.
    /// Returns `None` when the range goes past the limit or past the end of the file.
    async fn get(&mut self, position: u64, length: usize) -> Result<Option<&[u8]>, StorageError> {
        if position + length as u64 > self.limit {
            return Ok(None);
        }
        if !self.contains(position, length) {
            let want = length
                .max(self.preferred_bytes)
                .min((self.limit - position) as usize);
            self.data = io::read_at(self.file, self.path, position, want).await?;
            self.start = position;
            if self.data.len() < length {
                return Ok(None);
            }
        }
        let from = (position - self.start) as usize;
        Ok(Some(&self.data[from..from + length]))
    }

    fn contains(&self, position: u64, length: usize) -> bool {
        position >= self.start && position + length as u64 <= self.start + self.data.len() as u64
    }

    fn slice(&self, position: u64, length: usize) -> ReadResult {
        let from = (position - self.start) as usize;
        ReadResult::slice(&self.data, from, length).expect("slice within the window")
    }
}

impl Segment {
    /// A segment whose file is open (a new segment, or one just recovered).
    pub fn new(base_offset: i64, path: PathBuf, file: DmaFile, meta: SegmentMeta) -> Segment {
        Segment {
            base_offset,
            slot: Slot::open(file),
            path,
            meta: RefCell::new(meta),
            truncations: Cell::new(0),
            device: Cell::new(None),
        }
    }

    /// A segment whose file is opened when first used.
    pub fn sealed(base_offset: i64, path: PathBuf, meta: SegmentMeta) -> Segment {
        Segment {
            base_offset,
            slot: Slot::closed(),
            path,
            meta: RefCell::new(meta),
            truncations: Cell::new(0),
            device: Cell::new(None),
        }
    }

    /// The segment's file, opened if the shard had closed it. Keep the handle for as long
    /// as the descriptor is used.
    pub async fn file(&self) -> Result<Rc<DmaFile>, StorageError> {
        self.slot.get(&self.path).await
    }

    /// Walks the segment from the start, checking every batch (framing, CRC, contiguous
    /// offsets) and rebuilding the indexes. Stops at `limit`, at the first invalid bytes,
    /// or before the batch holding `stop_at_offset`.
    pub async fn scan(
        file: &DmaFile,
        path: &Path,
        base_offset: i64,
        limit: u64,
        stop_at_offset: Option<i64>,
        index_interval_bytes: u64,
    ) -> Result<(SegmentMeta, ScanStop), StorageError> {
        let mut window = Window::new(file, path, limit, SCAN_WINDOW_BYTES);
        scan_source(
            &mut window,
            base_offset,
            limit,
            stop_at_offset,
            index_interval_bytes,
        )
        .await
    }

    /// Reads whole batches starting with the one that holds `offset`, up to `max_bytes`
    /// (at least one batch). Returns no chunks when `offset` is past this segment's end.
    /// Every batch's CRC is checked after the read; a damaged batch is an error, never data.
    /// `ahead`, bytes read ahead from where the batch holding `offset` starts, is used
    /// instead of reading them again. The answer says where a next sequential read would
    /// start, if this one stopped before the segment's end.
    pub async fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        at_least_one_batch: bool,
        ahead: Option<ReadAhead>,
    ) -> Result<SegmentRead, StorageError> {
        let (limit, entry) = {
            let meta = self.meta.borrow();
            if offset >= meta.next_offset {
                return Ok(SegmentRead::default());
            }
            let relative_offset = relative(self.base_offset, offset.max(self.base_offset))?;
            (meta.size_bytes, meta.offset_index.lookup(relative_offset))
        };
        let preferred = max_bytes.clamp(BATCH_HEADER_BYTES, SCAN_WINDOW_BYTES);
        let file = self.file().await?;
        let mut window = Window::new(&file, &self.path, limit, preferred);
        // The base offset is outside the CRC: check it against the index (or where the
        // read-ahead started) and the batch before, so a damaged one is refused instead of
        // served under the wrong offset.
        let (mut position, mut expected_offset) = match ahead {
            Some(ahead) if ahead.offset == offset => {
                window.start = ahead.position;
                window.data = ahead.data;
                (ahead.position, ahead.offset)
            }
            _ => (
                u64::from(entry.position),
                self.base_offset + i64::from(entry.relative_offset),
            ),
        };
        let mut chunks: Vec<Chunk> = Vec::new();
        // Contiguous batches in the current window, sliced out (not copied) before the
        // window moves on.
        let mut run: Option<(u64, usize)> = None;
        let mut total_bytes = 0usize;
        let mut next = None;
        while position < limit {
            if !window.contains(position, BATCH_HEADER_BYTES) {
                flush_run(&mut run, &window, &mut chunks);
            }
            let Some(header_bytes) = window.get(position, BATCH_HEADER_BYTES).await? else {
                return Err(self.corrupt(position, "segment ends inside a batch header".into()));
            };
            let header = BatchHeader::parse(header_bytes)
                .map_err(|error| self.corrupt(position, error.to_string()))?;
            if header.base_offset != expected_offset {
                let reason = format!(
                    "batch base offset {} where {expected_offset} was expected",
                    header.base_offset
                );
                return Err(self.corrupt(position, reason));
            }
            expected_offset = header.next_offset();
            let length = header.total_bytes();
            if header.next_offset() <= offset {
                position += length as u64;
                continue;
            }
            if (total_bytes > 0 || !at_least_one_batch) && total_bytes + length > max_bytes {
                next = Some((position, header.base_offset));
                break;
            }
            if !window.contains(position, length) {
                flush_run(&mut run, &window, &mut chunks);
            }
            let Some(batch) = window.get(position, length).await? else {
                return Err(self.corrupt(position, "segment ends inside a batch".into()));
            };
            validate_framing(batch).map_err(|error| self.corrupt(position, error.to_string()))?;
            run = Some(match run {
                Some((start, bytes)) if start + bytes as u64 == position => (start, bytes + length),
                _ => (position, length),
            });
            total_bytes += length;
            position += length as u64;
        }
        flush_run(&mut run, &window, &mut chunks);
        Ok(SegmentRead { chunks, next })
    }

    /// Writes the offset and time index files (sealed segments only), each replaced
    /// atomically and carrying the segment summary that recovery checks them against.
    pub async fn write_indexes(&self) -> Result<(), StorageError> {
        let (offset_file, time_file) = {
            let meta = self.meta.borrow();
            assert!(meta.sealed, "only sealed segments keep index files");
            let summary = SegmentSummary {
                base_offset: self.base_offset,
                size_bytes: meta.size_bytes,
                next_offset: meta.next_offset,
                max_timestamp: meta.max_timestamp,
                first_timestamp: meta.first_timestamp.unwrap_or(i64::MIN),
            };
            (
                encode_offset_index(&summary, &meta.offset_index),
                encode_time_index(&summary, &meta.time_index),
            )
        };
        io::write_file_atomically(&offset_index_path(&self.path), &offset_file).await?;
        io::write_file_atomically(&time_index_path(&self.path), &time_file).await?;
        io::sync_directory(self.path.parent().expect("segments live in a directory")).await
    }

    fn corrupt(&self, position: u64, reason: String) -> StorageError {
        StorageError::CorruptSegment {
            path: self.path.clone(),
            position,
            reason,
        }
    }
}

/// Where a recovery scan reads a segment: the file through windows, or (for the fuzz
/// targets, `crate::fuzzing`) bytes in memory.
pub(crate) trait ScanSource {
    /// `[position, position + length)`, or `None` when the range goes past the limit or
    /// past the end of the bytes.
    async fn get(&mut self, position: u64, length: usize) -> Result<Option<&[u8]>, StorageError>;
}

impl ScanSource for Window<'_> {
    async fn get(&mut self, position: u64, length: usize) -> Result<Option<&[u8]>, StorageError> {
        Window::get(self, position, length).await
    }
}

/// A whole segment file in memory.
struct MemorySource<'a>(&'a [u8]);

impl ScanSource for MemorySource<'_> {
    async fn get(&mut self, position: u64, length: usize) -> Result<Option<&[u8]>, StorageError> {
        let Ok(start) = usize::try_from(position) else {
            return Ok(None);
        };
        Ok(start
            .checked_add(length)
            .and_then(|end| self.0.get(start..end)))
    }
}

/// `Segment::scan` over the bytes of a whole segment file in memory: recovery's logic
/// without the file (the fuzz targets, `crate::fuzzing`).
pub(crate) fn scan_bytes(
    bytes: &[u8],
    base_offset: i64,
    stop_at_offset: Option<i64>,
    index_interval_bytes: u64,
) -> (SegmentMeta, ScanStop) {
    let mut source = MemorySource(bytes);
    let scan = scan_source(
        &mut source,
        base_offset,
        bytes.len() as u64,
        stop_at_offset,
        index_interval_bytes,
    );
    futures_lite::future::block_on(scan).expect("reading memory cannot fail")
}

/// The scan behind `Segment::scan` (see there), reading through `source`.
async fn scan_source(
    source: &mut impl ScanSource,
    base_offset: i64,
    limit: u64,
    stop_at_offset: Option<i64>,
    index_interval_bytes: u64,
) -> Result<(SegmentMeta, ScanStop), StorageError> {
    let mut meta = SegmentMeta::empty(base_offset);
    let damaged = |position: u64, reason: String| ScanStop::Damaged { position, reason };
    loop {
        let position = meta.size_bytes;
        if position == limit {
            return Ok((meta, ScanStop::End));
        }
        let header_bytes = match source.get(position, BATCH_HEADER_BYTES).await? {
            Some(bytes) => bytes,
            None => {
                let rest = source.get(position, (limit - position) as usize).await?;
                return Ok((meta, classify_tail(position, rest.unwrap_or(&[]))));
            }
        };
        if header_bytes.iter().all(|&byte| byte == 0) {
            return Ok((meta, ScanStop::ZeroPadding));
        }
        let header = match BatchHeader::parse(header_bytes) {
            Ok(header) => header,
            Err(error) => return Ok((meta, damaged(position, error.to_string()))),
        };
        if header.base_offset != meta.next_offset {
            let reason = format!(
                "batch base offset {} where {} was expected",
                header.base_offset, meta.next_offset
            );
            return Ok((meta, damaged(position, reason)));
        }
        // Offsets that would pass i64::MAX (a segment named near it) have no next offset.
        let Some(next_offset) = header
            .base_offset
            .checked_add(i64::from(header.last_offset_delta))
            .and_then(|last_offset| last_offset.checked_add(1))
        else {
            return Ok((meta, damaged(position, "offsets overflow i64".to_string())));
        };
        if stop_at_offset.is_some_and(|offset| next_offset > offset) {
            return Ok((meta, ScanStop::ReachedOffset));
        }
        let Some(batch) = source.get(position, header.total_bytes()).await? else {
            let reason = format!("batch of {} bytes runs past the end", header.total_bytes());
            return Ok((meta, damaged(position, reason)));
        };
        if let Err(error) = validate_framing(batch) {
            return Ok((meta, damaged(position, error.to_string())));
        }
        if relative(base_offset, header.last_offset()).is_err() {
            return Ok((
                meta,
                damaged(position, "offsets overflow the segment".to_string()),
            ));
        }
        meta.note_batch(base_offset, position, &header, index_interval_bytes);
        meta.producers.record(&header);
    }
}

fn flush_run(run: &mut Option<(u64, usize)>, window: &Window<'_>, chunks: &mut Vec<Chunk>) {
    if let Some((start, bytes)) = run.take() {
        chunks.push(Chunk::Disk(window.slice(start, bytes)));
    }
}

/// Fewer bytes than a header remain before the limit: padding or a torn write?
fn classify_tail(position: u64, rest: &[u8]) -> ScanStop {
    if rest.iter().all(|&byte| byte == 0) {
        ScanStop::ZeroPadding
    } else {
        ScanStop::Damaged {
            position,
            reason: format!("{} stray bytes after the last batch", rest.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::BatchBuilder;

    /// Found by the segment_recovery fuzz target: a batch whose last offset passes
    /// i64::MAX (in a segment named near it) overflowed in the recovery scan, a panic with
    /// overflow checks and a log end wrapped negative without.
    #[test]
    fn offsets_past_i64_max_are_damage_not_an_overflow() {
        let base_offset = i64::MAX - 1;
        let mut builder = BatchBuilder::new();
        for value in [&b"a"[..], b"b", b"c"] {
            builder.push(0, None, Some(value), &[]);
        }
        let batch = builder.build(base_offset);
        for stop_at_offset in [None, Some(i64::MAX)] {
            let (meta, stop) = scan_bytes(&batch, base_offset, stop_at_offset, 4096);
            assert_eq!(meta.size_bytes, 0);
            assert_eq!(meta.next_offset, base_offset);
            assert!(
                matches!(&stop, ScanStop::Damaged { position: 0, reason } if reason.contains("overflow")),
                "{stop:?}"
            );
        }
    }
}
