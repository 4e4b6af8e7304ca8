//! The partition log's public face: open (with recovery), append, read, and the commands
//! the appender task carries out (roll, truncate, flush, retention, delete before an
//! offset, close).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::BytesMut;
use futures_channel::oneshot;

use super::appender::{self, AppendOrigin, Command, PendingAppend};
use super::clean;
use super::index::{SegmentSummary, decode_offset_index, decode_time_index};
use super::producers::ProducerTable;
use super::segment::{
    ReadAhead, ScanStop, Segment, SegmentMeta, offset_index_path, segment_file_name,
    time_index_path,
};
use super::tail_cache::{self, TailCache};
use super::{Chunk, LogConfig, StorageError, io};
use crate::limits::{
    BATCH_BYTES_MAX, IO_ALIGNMENT_BYTES, PENDING_APPEND_BYTES_MAX, READ_AHEAD_BYTES_MAX,
};
use crate::record::{BatchError, BatchHeader, RecordIter, split_batches, split_new_batches};
use crate::semaphore::FifoSemaphore;
use crate::wake::{Event, Notify};

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record appended.
    pub base_offset: i64,
    /// Offset of the last record appended.
    pub last_offset: i64,
}

/// The answer to a read: whole batches (possibly none, at the log end) and the log's
/// bounds when the read began.
#[derive(Debug, Clone)]
pub struct ReadOutcome {
    pub chunks: Vec<Chunk>,
    pub log_start_offset: i64,
    pub log_end_offset: i64,
}

impl ReadOutcome {
    pub fn bytes_len(&self) -> usize {
        self.chunks.iter().map(|chunk| chunk.len()).sum()
    }

    /// Copies the chunks into one buffer (for tests and tools; the fetch path sends the
    /// chunks as they are).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes_len());
        for chunk in &self.chunks {
            out.extend_from_slice(chunk);
        }
        out
    }
}

/// Counters of what the appender did, for tests and benchmarks: `appends / group_writes`
/// is the group-commit factor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Appends acknowledged.
    pub appends: u64,
    /// Aligned writes issued for appends (one per group).
    pub group_writes: u64,
    /// The writes those went to the disk as: a group larger than `WRITE_CHUNK_BYTES` is
    /// sent as several, together.
    pub chunk_writes: u64,
    /// fdatasync calls on segment files.
    pub fdatasyncs: u64,
    /// Disk reads served (at least in part) by bytes read ahead.
    pub read_ahead_hits: u64,
    /// Retries of idempotent producers' stored batches, answered without a write.
    pub duplicates: u64,
    /// Bytes of the active segment that opening the log read through to recover it: none
    /// after a clean close, whose snapshot it takes instead (`clean.rs`).
    pub scanned_bytes_at_open: u64,
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_segments: Vec<i64>,
    pub deleted_bytes: u64,
    pub log_start_offset: i64,
}

/// A segment as seen from outside, for tools and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size_bytes: u64,
    pub max_timestamp: i64,
    pub sealed: bool,
    pub path: PathBuf,
}

pub(crate) struct LogState {
    /// Every segment by base offset; the last one is the active segment.
    pub segments: BTreeMap<i64, Rc<Segment>>,
    /// First offset a read may ask for.
    pub log_start: i64,
    /// One past the last acknowledged offset: reads see everything before it.
    pub log_end: i64,
    pub cache: TailCache,
    pub closed: bool,
    /// Set when a failure left memory and disk out of step: writes are refused (reads go
    /// on) until the log is reopened.
    pub failure: Option<String>,
    /// Idempotent producers' recent batches (see `producers`).
    pub producers: ProducerTable,
}

impl LogState {
    pub fn out_of_range(&self, offset: i64) -> StorageError {
        StorageError::OffsetOutOfRange {
            offset,
            log_start: self.log_start,
            log_end: self.log_end,
        }
    }

    pub fn active(&self) -> Rc<Segment> {
        self.segments
            .values()
            .next_back()
            .expect("a log always has a segment")
            .clone()
    }
}

pub(crate) struct LogInner {
    pub dir: PathBuf,
    pub config: LogConfig,
    pub state: RefCell<LogState>,
    pub queue: RefCell<VecDeque<Command>>,
    pub appender_wake: Notify,
    pub data_arrived: Event,
    /// Bytes of appends admitted and not yet answered. First come, first served, so that
    /// appends enter the queue in the order `append` was called.
    pub pending_bytes: Rc<FifoSemaphore>,
    pub stats: Cell<LogStats>,
    /// Exclusive lock on the partition directory, released at close.
    pub lock: RefCell<Option<io::DirectoryLock>>,
    /// Direct I/O bypasses the page cache and its readahead, so the log reads ahead for
    /// a sequential reader itself: one read in flight (or done) for the bytes the next
    /// read is expected to ask for. Dropped by truncation, by the appender when it deletes
    /// segments (retention, `delete_before`), and at close.
    pub read_ahead: RefCell<Option<PendingReadAhead>>,
    /// Where the last disk read stopped (segment base, next offset): a read that starts
    /// there is sequential.
    pub last_read_end: Cell<Option<(i64, i64)>>,
}

/// A read ahead under way: `length` bytes of `segment` from `position`, where the batch
/// with base offset `offset` starts.
pub(crate) struct PendingReadAhead {
    segment: Rc<Segment>,
    truncations: u64,
    position: u64,
    offset: i64,
    task: glommio::Task<Result<glommio::io::ReadResult, StorageError>>,
    /// Its share of the shard's read-ahead budget, held until the bytes are taken or
    /// thrown away.
    _permit: tail_cache::ReadAheadPermit,
}

impl LogInner {
    fn submit(&self, command: Command) -> Result<(), StorageError> {
        let state = self.state.borrow();
        if state.closed {
            return Err(StorageError::Closed);
        }
        if let (Some(reason), false) = (&state.failure, matches!(command, Command::Close { .. })) {
            return Err(StorageError::LogFailed {
                reason: reason.clone(),
            });
        }
        drop(state);
        self.queue.borrow_mut().push_back(command);
        self.appender_wake.notify();
        Ok(())
    }
}

/// One partition's log. Cheap to clone; every clone is the same log. Lives on the
/// executor that opened it.
#[derive(Clone)]
pub struct Log {
    inner: Rc<LogInner>,
}

impl Log {
    /// Opens the partition in `dir` (creating it if needed), recovering from whatever a
    /// crash left: sealed segments are checked against their index files (or rescanned),
    /// the active segment is validated batch by batch and cut back to its last whole batch.
    pub async fn open(dir: impl Into<PathBuf>, config: LogConfig) -> Result<Log, StorageError> {
        Log::open_with(dir.into(), config, true).await
    }

    /// `open`, for a caller that holds an exclusive lock on a directory above `dir` (the
    /// broker holds one on its data directory): the partition takes no lock of its own,
    /// which saves it a file descriptor for as long as it is open.
    pub async fn open_under_lock(
        dir: impl Into<PathBuf>,
        config: LogConfig,
    ) -> Result<Log, StorageError> {
        Log::open_with(dir.into(), config, false).await
    }

    async fn open_with(dir: PathBuf, config: LogConfig, lock: bool) -> Result<Log, StorageError> {
        // The new directories' entries, up to the first that existed (`<data>/groups` as
        // well as `<data>/groups/offsets-3`), must be durable before anything in them is.
        io::create_dir_all_durably(&dir).await?;
        let lock = if lock {
            Some(io::DirectoryLock::acquire(&dir)?)
        } else {
            None
        };
        io::prepare_device(&dir).await?;
        let Listing {
            mut bases,
            mut clean,
        } = list_segments(&dir).await?;
        if bases.is_empty() {
            let path = dir.join(segment_file_name(0));
            drop(io::open_rw(&path, true).await?);
            io::sync_directory(&dir).await?;
            bases.push(0);
        }
        // Nothing on disk changes until every segment has been checked: a directory that
        // is refused is left exactly as it was found.
        let mut repairs = Vec::new();
        let mut segments = BTreeMap::new();
        let mut previous: Option<(PathBuf, i64)> = None;
        let mut scanned_bytes_at_open = 0;
        let mut from_snapshot = false;
        for (position, &base_offset) in bases.iter().enumerate() {
            let path = dir.join(segment_file_name(base_offset));
            if let Some((previous_path, previous_next)) = &previous
                && *previous_next != base_offset
            {
                let kind = if *previous_next < base_offset {
                    "gap"
                } else {
                    "overlap"
                };
                return Err(StorageError::InconsistentLog {
                    path: path.clone(),
                    reason: format!(
                        "{kind}: {} ends before offset {previous_next} but {} starts at {base_offset}",
                        previous_path.display(),
                        path.display()
                    ),
                });
            }
            let is_active = position + 1 == bases.len();
            let segment = if is_active {
                let (segment, scanned) =
                    open_active(&path, base_offset, &config, clean.take()).await?;
                from_snapshot = scanned.is_none();
                scanned_bytes_at_open = scanned.unwrap_or(0);
                Rc::new(segment)
            } else {
                let (segment, repair) = open_sealed(&path, base_offset, &config).await?;
                let segment = Rc::new(segment);
                if let Some(repair) = repair {
                    repairs.push((segment.clone(), repair));
                }
                segment
            };
            previous = Some((path, segment.meta.borrow().next_offset));
            segments.insert(base_offset, segment);
        }
        for (segment, repair) in repairs {
            repair_sealed(&segment, repair).await?;
        }
        let log_start = *segments.keys().next().expect("at least one segment");
        let log_end = segments
            .values()
            .next_back()
            .expect("at least one")
            .meta
            .borrow()
            .next_offset;
        let producers = std::mem::take(
            &mut segments
                .values()
                .next_back()
                .expect("at least one")
                .meta
                .borrow_mut()
                .producers,
        );
        let inner = Rc::new(LogInner {
            dir,
            state: RefCell::new(LogState {
                segments,
                log_start,
                log_end,
                cache: TailCache::new(config.tail_cache_bytes),
                closed: false,
                failure: None,
                producers,
            }),
            config,
            queue: RefCell::new(VecDeque::new()),
            appender_wake: Notify::default(),
            data_arrived: Event::default(),
            pending_bytes: Rc::new(FifoSemaphore::new(PENDING_APPEND_BYTES_MAX as u64)),
            stats: Cell::new(LogStats {
                scanned_bytes_at_open,
                ..LogStats::default()
            }),
            lock: RefCell::new(lock),
            read_ahead: RefCell::new(None),
            last_read_end: Cell::new(None),
        });
        let active_segment = inner.state.borrow().active();
        let active = appender::Active::open(active_segment, from_snapshot).await?;
        glommio::spawn_local(appender::run(inner.clone(), active)).detach();
        tracing::debug!(dir = %inner.dir.display(), log_start, log_end, "partition log open");
        Ok(Log { inner })
    }

    /// Empties the closed log in `dir` and makes it start, empty, at `base_offset`: every
    /// segment file and its companions go (the names that start with a digit; other
    /// files, such as a replica's `.leader-epochs`, stay), and one empty segment at
    /// `base_offset` is created, so the next `open` finds log start = log end =
    /// `base_offset`. A cluster's follower does this when its leader no longer holds the
    /// records it needs next (Kafka's "truncate fully and start at").
    pub async fn start_empty_at(dir: &Path, base_offset: i64) -> Result<(), StorageError> {
        let entries =
            std::fs::read_dir(dir).map_err(|error| io::io_error(dir, "list directory", error))?;
        for entry in entries {
            let entry = entry.map_err(|error| io::io_error(dir, "list directory", error))?;
            let name = entry.file_name();
            if name
                .to_string_lossy()
                .starts_with(|c: char| c.is_ascii_digit())
            {
                let path = entry.path();
                std::fs::remove_file(&path)
                    .map_err(|error| io::io_error(&path, "remove file", error))?;
            }
        }
        let path = dir.join(segment_file_name(base_offset));
        drop(io::open_rw(&path, true).await?);
        io::sync_directory(dir).await
    }

    /// Appends one or more concatenated record batches as a unit. Every batch is validated
    /// first (framing, CRC, records); nothing is written if any is bad. Offsets are assigned
    /// here, and the answer comes once the batches are durable under the flush policy.
    pub async fn append(&self, records: BytesMut) -> Result<AppendInfo, StorageError> {
        self.append_as(records, AppendOrigin::Client { leader_epoch: None })
            .await
    }

    /// As `append`, for a producer's batches (offsets assigned here, stamped with
    /// `leader_epoch` if given) or a replica's (`AppendOrigin::Replica`: they keep their
    /// offsets, must start at the log end, and their timestamps were checked by the
    /// leader).
    pub async fn append_as(
        &self,
        records: BytesMut,
        origin: AppendOrigin,
    ) -> Result<AppendInfo, StorageError> {
        let max = BATCH_BYTES_MAX.min(self.inner.config.segment_bytes as usize);
        if records.len() > max {
            return Err(StorageError::RecordTooLarge {
                bytes: records.len(),
                max,
            });
        }
        let batches = split_new_batches(&records).collect::<Result<Vec<_>, BatchError>>()?;
        if batches.is_empty() {
            return Err(BatchError::Empty.into());
        }
        if origin != AppendOrigin::Replica {
            check_timestamps(
                &self.inner.config,
                &records,
                &batches,
                crate::clock::now_ms(),
            )?;
        }
        let permit = self
            .inner
            .pending_bytes
            .acquire(records.len() as u64)
            .await
            .map_err(|_| StorageError::Closed)?;
        self.call(|reply| {
            Command::Append(PendingAppend {
                records,
                batches,
                origin,
                reply,
                _permit: permit,
            })
        })
        .await
    }

    /// Reads whole batches from the one holding `offset`, up to `max_bytes` but at least
    /// one batch. At the log end the answer is empty; outside the log it is
    /// `OffsetOutOfRange`. Tail reads come from memory, older ones from disk.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadOutcome, StorageError> {
        self.read_batches(offset, max_bytes, true).await
    }

    /// As `read`, but never more than `max_bytes`: the answer is empty below the log end
    /// when the batch holding `offset` alone is larger. For readers that share one budget
    /// and must not each take a batch past it.
    pub async fn read_within(
        &self,
        offset: i64,
        max_bytes: usize,
    ) -> Result<ReadOutcome, StorageError> {
        self.read_batches(offset, max_bytes, false).await
    }

    async fn read_batches(
        &self,
        offset: i64,
        max_bytes: usize,
        at_least_one_batch: bool,
    ) -> Result<ReadOutcome, StorageError> {
        let mut counted = false;
        loop {
            let (segment, log_start_offset, log_end_offset) = {
                let state = self.inner.state.borrow();
                if offset < state.log_start || offset > state.log_end {
                    return Err(state.out_of_range(offset));
                }
                let (log_start_offset, log_end_offset) = (state.log_start, state.log_end);
                let outcome = |chunks| ReadOutcome {
                    chunks,
                    log_start_offset,
                    log_end_offset,
                };
                if offset == state.log_end {
                    return Ok(outcome(Vec::new()));
                }
                let cached = state.cache.read(offset, max_bytes, at_least_one_batch);
                if !counted {
                    // Once per read (a retry after a truncation is the same read).
                    counted = true;
                    crate::metrics::with(|metrics| match cached {
                        Some(_) => metrics.tail_cache_hits.inc(),
                        None => metrics.tail_cache_misses.inc(),
                    });
                }
                if let Some(chunks) = cached {
                    // A reader served from memory has caught up: what was read ahead for
                    // it is no longer wanted.
                    if let Ok(mut slot) = self.inner.read_ahead.try_borrow_mut() {
                        slot.take();
                    }
                    return Ok(outcome(chunks));
                }
                let segment = state
                    .segments
                    .range(..=offset)
                    .next_back()
                    .map(|(_, s)| s.clone());
                (
                    segment.ok_or_else(|| state.out_of_range(offset))?,
                    log_start_offset,
                    log_end_offset,
                )
            };
            let truncations = segment.truncations.get();
            let ahead = self.take_read_ahead(&segment, offset, truncations).await;
            let sequential = ahead.is_some()
                || self.inner.last_read_end.get() == Some((segment.base_offset, offset));
            let result = segment
                .read(offset, max_bytes, at_least_one_batch, ahead)
                .await;
            if segment.truncations.get() != truncations {
                // A truncation cut this segment while it was being read: what was read may
                // be gone. Answer from the log as it is now.
                continue;
            }
            let read = result?;
            // Empty below the log end only when the first batch did not fit a read within.
            let first_too_large = !at_least_one_batch && read.next.is_some();
            if read.chunks.is_empty() && !first_too_large {
                return Err(StorageError::Internal {
                    reason: format!("offset {offset} is below the log end but no segment holds it"),
                });
            }
            self.inner
                .last_read_end
                .set(read.next.map(|(_, next)| (segment.base_offset, next)));
            if let (Some((position, next)), true) = (read.next, sequential) {
                self.start_read_ahead(&segment, truncations, position, next, max_bytes);
            }
            return Ok(ReadOutcome {
                chunks: read.chunks,
                log_start_offset,
                log_end_offset,
            });
        }
    }

    /// The bytes read ahead for a read of `segment` at `offset`, if that is where the read
    /// ahead started (and no truncation has cut the segment since). A read ahead for
    /// another place is left for its reader.
    async fn take_read_ahead(
        &self,
        segment: &Rc<Segment>,
        offset: i64,
        truncations: u64,
    ) -> Option<ReadAhead> {
        let pending = {
            let mut slot = self.inner.read_ahead.borrow_mut();
            let matches = slot.as_ref().is_some_and(|pending| {
                Rc::ptr_eq(&pending.segment, segment)
                    && pending.offset == offset
                    && pending.truncations == truncations
            });
            // One cut by a truncation since is useless to every reader.
            let stale = slot
                .as_ref()
                .is_some_and(|pending| pending.segment.truncations.get() != pending.truncations);
            if stale {
                slot.take();
            }
            if !matches {
                return None;
            }
            slot.take()?
        };
        let data = pending.task.await.ok()?;
        let stats = self.inner.stats.get();
        self.inner.stats.set(LogStats {
            read_ahead_hits: stats.read_ahead_hits + 1,
            ..stats
        });
        Some(ReadAhead {
            position: pending.position,
            offset,
            data,
        })
    }

    /// Starts reading, from `position` (where the batch `offset` starts), as much as the
    /// reader just asked for (at most 4 MiB), for a sequential reader's next read.
    fn start_read_ahead(
        &self,
        segment: &Rc<Segment>,
        truncations: u64,
        position: u64,
        offset: i64,
        max_bytes: usize,
    ) {
        {
            let state = self.inner.state.borrow();
            // A segment deleted (retention, `delete_before`) while it was being read is not
            // read ahead: that would keep its file, and its disk space, alive.
            let present = state
                .segments
                .get(&segment.base_offset)
                .is_some_and(|current| Rc::ptr_eq(current, segment));
            if state.closed || !present {
                return;
            }
        }
        let limit = segment.meta.borrow().size_bytes;
        // As much as the reader asks for at a time: the next read uses no more.
        let length = max_bytes
            .clamp(IO_ALIGNMENT_BYTES, READ_AHEAD_BYTES_MAX)
            .min(limit.saturating_sub(position) as usize);
        if length == 0 {
            return;
        }
        // The read ahead this one replaces gives its bytes back first.
        self.inner.read_ahead.borrow_mut().take();
        let Some(permit) = tail_cache::reserve_read_ahead(length as u64) else {
            return;
        };
        let reading = segment.clone();
        let task = glommio::spawn_local(async move {
            let file = reading.file().await?;
            io::read_at(&file, &reading.path, position, length).await
        });
        // A read ahead for another place is replaced (dropping a task cancels it).
        *self.inner.read_ahead.borrow_mut() = Some(PendingReadAhead {
            segment: segment.clone(),
            truncations,
            position,
            offset,
            task,
            _permit: permit,
        });
    }

    /// Waits until the log end is past `offset` (new data for a reader at `offset`), or the
    /// log closes. For long polling.
    pub async fn wait_for_data(&self, offset: i64) {
        let inner = &self.inner;
        inner
            .data_arrived
            .wait_until(|| {
                let state = inner.state.borrow();
                state.log_end > offset || state.closed
            })
            .await
    }

    /// The first offset whose record timestamp is at or after `timestamp`, or `None` when
    /// every record is older (Kafka's ListOffsets by timestamp).
    pub async fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<i64>, StorageError> {
        let mut offset = {
            let state = self.inner.state.borrow();
            let candidate = state
                .segments
                .values()
                .find(|segment| segment.meta.borrow().max_timestamp >= timestamp);
            let Some(segment) = candidate else {
                return Ok(None);
            };
            let meta = segment.meta.borrow();
            (segment.base_offset + i64::from(meta.time_index.lookup(timestamp)))
                .max(state.log_start)
        };
        loop {
            let outcome = match self.read(offset, 1 << 20).await {
                Ok(outcome) => outcome,
                // Retention may have moved the start meanwhile: continue from there.
                Err(StorageError::OffsetOutOfRange { log_start, .. }) if offset < log_start => {
                    offset = log_start;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if outcome.chunks.is_empty() {
                return Ok(None);
            }
            let bytes = outcome.to_vec();
            for batch in split_batches(&bytes) {
                let (header, range) = batch?;
                offset = header.next_offset();
                if header.max_timestamp < timestamp {
                    continue;
                }
                let section = crate::record::compression::records_section(&bytes[range], &header)?;
                for record in RecordIter::new(&section) {
                    let record = record?;
                    if header.base_timestamp.wrapping_add(record.timestamp_delta) >= timestamp {
                        return Ok(Some(header.base_offset + i64::from(record.offset_delta)));
                    }
                }
            }
        }
    }

    /// Removes every batch from the one holding `offset` on; returns the new log end
    /// (a batch boundary at or before `offset`). For a follower whose log diverged.
    pub async fn truncate(&self, offset: i64) -> Result<i64, StorageError> {
        let result = self.call(|reply| Command::Truncate { offset, reply }).await;
        self.inner.read_ahead.borrow_mut().take();
        result
    }

    /// Seals the active segment and starts a new one (no-op when it is empty).
    pub async fn roll(&self) -> Result<(), StorageError> {
        self.call(|reply| Command::Roll { reply }).await
    }

    /// Makes everything appended so far durable now, whatever `flush.ms` says.
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.call(|reply| Command::Flush { reply }).await
    }

    /// Deletes whole sealed segments past `retention.ms` (judged by their newest record
    /// against `now_ms`) or beyond `retention.bytes`, oldest first, and moves the log start.
    /// Deleting a segment drops the read ahead, which could be holding its file.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<RetentionReport, StorageError> {
        self.enforce_retention_below(now_ms, i64::MAX).await
    }

    /// `enforce_retention`, deleting no segment that holds offset `limit` or later: a
    /// cluster's leader keeps what is at or above its high watermark (Kafka's log start
    /// never passes it), which followers may still need.
    pub async fn enforce_retention_below(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> Result<RetentionReport, StorageError> {
        self.call(|reply| Command::Retention {
            now_ms,
            limit,
            reply,
        })
        .await
    }

    /// Deletes the sealed segments whose records all lie below `offset` (Kafka's
    /// DeleteRecords, by whole segments), oldest first, through the appender like
    /// retention; returns the new log start offset. The active segment is never deleted
    /// (call `roll` first to seal it). An offset past the log end is an error
    /// (`OffsetOutOfRange`).
    ///
    /// The new log start is the base of the first segment kept, so it may stay below
    /// `offset`; an offset at or below the log start deletes nothing. Deleting a segment
    /// drops the read ahead, as retention does.
    pub async fn delete_before(&self, offset: i64) -> Result<i64, StorageError> {
        self.call(|reply| Command::DeleteBefore { offset, reply })
            .await
    }

    /// Finishes every queued command, syncs, and stops the appender. Later calls fail
    /// with `Closed`.
    pub async fn close(&self) -> Result<(), StorageError> {
        self.inner.read_ahead.borrow_mut().take();
        let result = self.call(|reply| Command::Close { reply }).await;
        self.inner.data_arrived.notify_all();
        result
    }

    /// Queues a command for the appender and waits for its answer.
    async fn call<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, StorageError>>) -> Command,
    ) -> Result<T, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.inner.submit(command(reply))?;
        answer.await.map_err(|_| StorageError::Closed)?
    }

    pub fn stats(&self) -> LogStats {
        self.inner.stats.get()
    }

    pub fn log_start_offset(&self) -> i64 {
        self.inner.state.borrow().log_start
    }

    /// One past the last acknowledged offset (Kafka's log end offset / high watermark on
    /// a single node).
    pub fn log_end_offset(&self) -> i64 {
        self.inner.state.borrow().log_end
    }

    pub fn size_bytes(&self) -> u64 {
        let state = self.inner.state.borrow();
        state
            .segments
            .values()
            .map(|segment| segment.meta.borrow().size_bytes)
            .sum()
    }

    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn segments(&self) -> Vec<SegmentInfo> {
        let state = self.inner.state.borrow();
        state
            .segments
            .values()
            .map(|segment| {
                let meta = segment.meta.borrow();
                SegmentInfo {
                    base_offset: segment.base_offset,
                    next_offset: meta.next_offset,
                    size_bytes: meta.size_bytes,
                    max_timestamp: meta.max_timestamp,
                    sealed: meta.sealed,
                    path: segment.path.clone(),
                }
            })
            .collect()
    }
}

/// Refuses batches with a record timestamp outside `[now - message.timestamp.before.max.ms,
/// now + message.timestamp.after.max.ms]`, as Kafka does: record timestamps drive retention,
/// `segment.ms` and lookups by time, so a client must not be able to keep a segment for
/// ever or hide a batch from a lookup. `validate` has checked that a CreateTime batch's
/// max timestamp is its records', so the max alone decides "after"; records are walked
/// for "before" only when it is limited. Records without a timestamp (-1, Kafka's
/// NO_TIMESTAMP) are exempt. A LogAppendTime batch's records all carry its max timestamp,
/// so that one is checked against both bounds.
fn check_timestamps(
    config: &LogConfig,
    records: &[u8],
    batches: &[(BatchHeader, Range<usize>)],
    now_ms: i64,
) -> Result<(), StorageError> {
    const NO_TIMESTAMP: i64 = -1;
    let after_ms = config.message_timestamp_after_max_ms;
    let before_ms = config.message_timestamp_before_max_ms;
    let latest = now_ms.saturating_add_unsigned(after_ms);
    let earliest = now_ms.saturating_sub_unsigned(before_ms);
    let too_new = |timestamp| StorageError::InvalidTimestamp {
        timestamp,
        now_ms,
        direction: "ahead of",
        key: "message.timestamp.after.max.ms",
        limit_ms: after_ms,
    };
    let too_old = |timestamp| StorageError::InvalidTimestamp {
        timestamp,
        now_ms,
        direction: "behind",
        key: "message.timestamp.before.max.ms",
        limit_ms: before_ms,
    };
    for (header, range) in batches {
        if header.max_timestamp > latest {
            return Err(too_new(header.max_timestamp));
        }
        if !config.limits_old_timestamps() {
            continue;
        }
        if header.is_log_append_time() {
            if header.max_timestamp != NO_TIMESTAMP && header.max_timestamp < earliest {
                return Err(too_old(header.max_timestamp));
            }
            continue;
        }
        let batch = &records[range.clone()];
        let section = crate::record::compression::records_section(batch, header)?;
        for record in RecordIter::new(&section) {
            let timestamp = header.base_timestamp.wrapping_add(record?.timestamp_delta);
            if timestamp != NO_TIMESTAMP && timestamp < earliest {
                return Err(too_old(timestamp));
            }
        }
    }
    Ok(())
}

/// The segment files of a partition directory.
struct Listing {
    /// Base offsets, sorted.
    bases: Vec<i64>,
    /// The last segment's clean-close snapshot (`clean.rs`), read.
    clean: Option<Vec<u8>>,
}

/// Lists the segment files in `dir`. Removes leftovers of interrupted index writes
/// (`*.tmp`), index files whose segment is gone or is the active one (an active segment's
/// indexes live in memory; a truncation that made a sealed segment active again may not
/// have removed them), and snapshots of segments that are no longer active. The active
/// segment's snapshot is read here, where the listing already runs off the reactor, and
/// through the page cache (it was written through it, and a direct read would first wait
/// for its writeback).
async fn list_segments(dir: &Path) -> Result<Listing, StorageError> {
    let owned = dir.to_path_buf();
    // Listing and unlinking are blocking calls (a large directory takes a while): they
    // run on the executor's blocking thread (docs/GLOMMIO.md §7).
    glommio::executor()
        .spawn_blocking(move || scan_directory(&owned))
        .await
        .map_err(|error| io::io_error(dir, "list directory", error))
}

fn scan_directory(dir: &Path) -> std::io::Result<Listing> {
    let mut bases = Vec::new();
    let mut indexes = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue; // the lock file and the self-test probe
        }
        if name.ends_with(".tmp") {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let Some((stem, extension)) = name.split_once('.') else {
            continue;
        };
        let base = match stem.parse::<i64>() {
            Ok(base) if stem.len() == 20 && base >= 0 => base,
            _ => {
                tracing::warn!(path = %path.display(), "ignoring a file that is not a segment");
                continue;
            }
        };
        match extension {
            "log" => bases.push(base),
            "index" | "timeindex" | "clean" => indexes.push((base, path)),
            _ => tracing::warn!(path = %path.display(), "ignoring a file that is not a segment"),
        }
    }
    bases.sort_unstable();
    let last = bases.last().copied();
    let mut clean = None;
    for (base, path) in indexes {
        let snapshot = path
            .extension()
            .is_some_and(|extension| extension == "clean");
        if Some(base) == last && snapshot {
            clean = std::fs::read(&path).ok();
        } else if Some(base) == last || snapshot {
            let _ = std::fs::remove_file(&path);
        } else if !bases.contains(&base) {
            tracing::warn!(path = %path.display(), "removing an index whose segment is gone");
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(Listing { bases, clean })
}

/// What a sealed segment needs once the whole directory has been found consistent.
struct SealedRepair {
    /// Cut zero padding left when a crash lost the trim that sealing does.
    trim: bool,
}

async fn open_sealed(
    path: &Path,
    base_offset: i64,
    config: &LogConfig,
) -> Result<(Segment, Option<SealedRepair>), StorageError> {
    // The index files vouch for the segment: it is not opened until a reader needs it.
    let size = std::fs::metadata(path)
        .map_err(|error| io::io_error(path, "stat", error))?
        .len();
    if let Some(meta) = load_indexes(path, base_offset, size).await {
        return Ok((Segment::sealed(base_offset, path.to_path_buf(), meta), None));
    }
    let file = io::open_rw(path, false).await?;
    tracing::warn!(path = %path.display(), "index missing or damaged: rebuilding from the segment");
    let interval = config.index_interval_bytes;
    let (mut meta, stop) = Segment::scan(&file, path, base_offset, size, None, interval).await?;
    let corrupt = |position, reason| StorageError::CorruptSegment {
        path: path.to_path_buf(),
        position,
        reason,
    };
    let trim = match stop {
        ScanStop::End => false,
        ScanStop::ZeroPadding => {
            // Sealing trims the padding and the space allocated ahead, and a crash may
            // lose that trim; zeros followed by data are lost data.
            let end = meta.size_bytes;
            if !zeros_are_padding(&file, path, end, size).await? {
                return Err(corrupt(end, zeros_reason(end, size)));
            }
            true
        }
        ScanStop::Damaged { position, reason } => return Err(corrupt(position, reason)),
        ScanStop::ReachedOffset => unreachable!("no stop offset was given"),
    };
    meta.sealed = true;
    let segment = Segment::sealed(base_offset, path.to_path_buf(), meta);
    Ok((segment, Some(SealedRepair { trim })))
}

async fn repair_sealed(segment: &Segment, repair: SealedRepair) -> Result<(), StorageError> {
    let path = &segment.path;
    if repair.trim {
        let size = segment.meta.borrow().size_bytes;
        let file = segment.file().await?;
        file.truncate(size)
            .await
            .map_err(|error| io::io_error(path, "truncate", error.into()))?;
        io::fdatasync(&file, path).await?;
    }
    if let Err(error) = segment.write_indexes().await {
        tracing::warn!(%error, "could not rewrite the index; it will be rebuilt at next open");
    }
    Ok(())
}

/// Loads a sealed segment's summary and indexes from its index files, if both are intact
/// and agree with the segment file.
async fn load_indexes(path: &Path, base_offset: i64, size: u64) -> Option<SegmentMeta> {
    let offset_bytes = read_small_file(&offset_index_path(path)).await?;
    let time_bytes = read_small_file(&time_index_path(path)).await?;
    let (summary, offset_index) = decode_offset_index(&offset_bytes).ok()?;
    let (time_summary, time_index) = decode_time_index(&time_bytes).ok()?;
    let expected = SegmentSummary {
        base_offset,
        size_bytes: size,
        ..summary
    };
    if summary != expected || time_summary != summary || summary.next_offset <= base_offset {
        return None;
    }
    Some(SegmentMeta::from_summary(
        &summary,
        offset_index,
        time_index,
        true,
    ))
}

async fn read_small_file(path: &Path) -> Option<Vec<u8>> {
    let file = io::open_rw(path, false).await.ok()?;
    let size = file.file_size().await.ok()?;
    let bytes = io::read_at(&file, path, 0, size as usize).await.ok()?;
    let out = bytes.to_vec();
    let _ = file.close().await;
    (out.len() as u64 == size).then_some(out)
}

/// Copies `[position, end)` of a segment to `<segment>.damaged-at-<position>` (ignored
/// by recovery) and makes the copy and its directory entry durable, before the tail is cut.
async fn preserve_damaged_tail(path: &Path, position: u64) -> Result<PathBuf, StorageError> {
    let mut name = path.file_name().expect("a segment file").to_os_string();
    name.push(format!(".damaged-at-{position}"));
    let kept = path.with_file_name(name);
    let (source_path, target_path) = (path.to_path_buf(), kept.clone());
    // A buffered copy of up to a whole segment, and its fsync, block: they run on the
    // executor's blocking thread so that the shard's other partitions are served meanwhile
    // (docs/GLOMMIO.md §7).
    let copy = move || -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        let mut source = std::fs::File::open(&source_path)?;
        source.seek(SeekFrom::Start(position))?;
        let mut target = std::fs::File::create(&target_path)?;
        std::io::copy(&mut source, &mut target)?;
        target.sync_all()
    };
    glommio::executor()
        .spawn_blocking(copy)
        .await
        .map_err(|error| io::io_error(&kept, "preserve damaged tail", error))?;
    // A crash right after the cut must not lose the copy's name either.
    io::sync_directory(path.parent().expect("segments live in a directory")).await?;
    Ok(kept)
}

/// Opens the active segment: from a clean close's snapshot where there is one that the
/// file bears out (`clean.rs`), else by scanning it batch by batch and cutting whatever
/// follows the last whole batch. Also says how many bytes it scanned (`None`: it took the
/// snapshot).
async fn open_active(
    path: &Path,
    base_offset: i64,
    config: &LogConfig,
    clean: Option<Vec<u8>>,
) -> Result<(Segment, Option<u64>), StorageError> {
    let file = io::open_rw(path, false).await?;
    let size = file
        .file_size()
        .await
        .map_err(|error| io::io_error(path, "stat", error.into()))?;
    if let Some(bytes) = clean {
        let meta = match clean::decode(base_offset, &bytes) {
            Some(meta) if clean::matches(&file, path, &meta, size).await? => Some(meta),
            _ => None,
        };
        match meta {
            // Kept until the appender first changes the segment (`Active::snapshot`): a
            // partition that stays idle until the next clean close needs no new one.
            Some(meta) => {
                return Ok((
                    Segment::new(base_offset, path.to_path_buf(), file, meta),
                    None,
                ));
            }
            None => {
                // The sealed segments were all accepted before the active one opens:
                // the directory is no longer at risk of being refused unchanged.
                let _ = std::fs::remove_file(clean::clean_path(path));
                tracing::warn!(
                    path = %path.display(),
                    "the clean-close snapshot does not match the segment: scanning it"
                );
            }
        }
    }
    let (meta, stop) = Segment::scan(
        &file,
        path,
        base_offset,
        size,
        None,
        config.index_interval_bytes,
    )
    .await?;
    let end = meta.size_bytes;
    let damage = match stop {
        ScanStop::End => None,
        // The appender pads to the block boundary after the last batch and allocates space
        // ahead, all zeros to the end of the file: zeros followed by anything else are a
        // lost or torn write, which a bad disk can leave in front of acknowledged batches
        // just as a crash leaves it after them.
        ScanStop::ZeroPadding if zeros_are_padding(&file, path, end, size).await? => None,
        ScanStop::ZeroPadding => Some((end, zeros_reason(end, size))),
        ScanStop::Damaged { position, reason } => Some((position, reason)),
        ScanStop::ReachedOffset => unreachable!("no stop offset was given"),
    };
    let damaged = damage.is_some();
    if let Some((position, reason)) = damage {
        // Keep what is about to be cut: with flush.ms=0 it is a torn write that was never
        // acknowledged, but damage further back would otherwise be lost for good.
        let kept = preserve_damaged_tail(path, position).await?;
        tracing::warn!(
            kept = %kept.display(),
            path = %path.display(),
            position,
            reason,
            discarded_bytes = size - position,
            "cutting a torn or corrupt tail back to the last whole batch"
        );
    }
    // Unused space after the last batch (padding, space allocated ahead: zeros) is left
    // as it is: the appender writes over it (`Active::open` takes the file's size as what
    // is allocated) and a clean close cuts it. Cutting it here cost an ftruncate on the
    // reactor per partition, most of a start after a crash with thousands of partitions.
    // Damage is cut, and the cut synced at once, as it was kept first.
    if damaged {
        file.truncate(end)
            .await
            .map_err(|error| io::io_error(path, "truncate", error.into()))?;
        io::fdatasync(&file, path).await?;
    }
    Ok((
        Segment::new(base_offset, path.to_path_buf(), file, meta),
        Some(size),
    ))
}

/// Whether the zeros a scan found at `end`, the end of the last whole batch, are unused
/// space: the appender's padding to the block boundary, and the space it allocates ahead of
/// the log end (`Appender::preallocate`), which reads as zeros. Both run to the end of the
/// file; zeros followed by anything else are a lost or torn write in front of later data.
/// Both sealed and active segments are judged by this one rule.
async fn zeros_are_padding(
    file: &glommio::io::DmaFile,
    path: &Path,
    end: u64,
    size: u64,
) -> Result<bool, StorageError> {
    // Read in windows: after a crash the allocated space can be megabytes long.
    const WINDOW_BYTES: u64 = 1 << 20;
    let mut position = end;
    while position < size {
        // Space allocated ahead and never written reads as zeros without being stored:
        // the filesystem reports it as a hole, and only the regions it reports as data
        // need reading. (Where it cannot tell, everything is data: slower, as correct.)
        let (data, hole) = match next_data(file, position) {
            Some(region) if region.0 < size => region,
            _ => return Ok(true),
        };
        position = data;
        // (A hole reported where the data starts would be a filesystem's bug: read on.)
        let region_end = if hole > position {
            hole.min(size)
        } else {
            size
        };
        let length = (region_end - position).min(WINDOW_BYTES) as usize;
        let rest = io::read_at(file, path, position, length).await?;
        if rest.len() != length || !all_zeros(&rest) {
            return Ok(false);
        }
        position += length as u64;
    }
    Ok(true)
}

/// The first region of data at or after `position`, `[start, end)` (`lseek` with
/// `SEEK_DATA`, then `SEEK_HOLE`), or `None` when there is none up to the end of the file.
/// Where the filesystem cannot tell, everything is data.
fn next_data(file: &glommio::io::DmaFile, position: u64) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let seek = |from: u64, whence| {
        // SAFETY: lseek on a descriptor the file holds open; it moves only the file
        // offset, which glommio's positioned I/O never uses.
        let found = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, whence) };
        if found >= 0 {
            Ok(found as u64)
        } else {
            Err(std::io::Error::last_os_error().raw_os_error())
        }
    };
    let start = match seek(position, libc::SEEK_DATA) {
        Ok(start) => start,
        Err(Some(libc::ENXIO)) => return None,
        Err(_) => return Some((position, u64::MAX)),
    };
    Some((start, seek(start, libc::SEEK_HOLE).unwrap_or(u64::MAX)))
}

/// `bytes.iter().all(|&b| b == 0)`, eight bytes at a time.
fn all_zeros(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    words.all(|word| u64::from_ne_bytes(word.try_into().expect("8 bytes")) == 0)
        && words.remainder().iter().all(|&byte| byte == 0)
}

fn zeros_reason(end: u64, size: u64) -> String {
    format!(
        "zeros where a batch should start, followed by other bytes before the file's end \
         {} bytes on (a lost write in front of later data)",
        size - end
    )
}
