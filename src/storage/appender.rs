//! The one task per partition that changes the log.
//!
//! Every mutation arrives as a [`Command`] on the log's queue and is carried out in order,
//! so appends, rolls, truncations, retention and deletions of old records never
//! interleave. Appends waiting at the same moment are coalesced: one aligned write of the
//! dirty range, one sync (with `flush.ms=0`), then every waiter is answered (group
//! commit). Syncs go through the shard's durability rounds (`rounds.rs`), where the
//! partitions of a shard that need one at the same time share it.
//!
//! Direct-I/O tail handling: the active segment's last partial 4 KiB block is kept in
//! memory (`Active::tail_block`). Each group write starts at that block's aligned start,
//! re-writes its bytes unchanged, appends the new batches and zero-pads to the next block
//! boundary. Because the re-written prefix is byte-identical, a torn write can only damage
//! bytes that were never acknowledged.

use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_channel::oneshot;
use glommio::io::{DmaBuffer, DmaFile};

use super::StorageError;
use super::clean;
use super::io::{self, align_down, align_up};
use super::log::{AppendInfo, LogInner, LogStats, RetentionReport};
use super::producers::{self, Pending, Verdict};
use super::segment::{
    ScanStop, Segment, SegmentMeta, offset_index_path, segment_file_name, time_index_path,
};
use super::tail_cache;
use crate::limits::{GROUP_WRITE_BYTES_MAX, WRITE_CHUNK_BYTES};
use crate::record::{BatchHeader, set_base_offset, set_partition_leader_epoch};
use crate::semaphore::FifoPermit;

type Reply<T> = oneshot::Sender<Result<T, StorageError>>;

pub(crate) enum Command {
    Append(PendingAppend),
    Truncate {
        offset: i64,
        reply: Reply<i64>,
    },
    Roll {
        reply: Reply<()>,
    },
    Flush {
        reply: Reply<()>,
    },
    Retention {
        now_ms: i64,
        /// No segment holding this offset or a later one is deleted.
        limit: i64,
        reply: Reply<RetentionReport>,
    },
    DeleteBefore {
        offset: i64,
        reply: Reply<i64>,
    },
    Close {
        reply: Reply<()>,
    },
}

impl Command {
    fn fail(self, error: StorageError) {
        match self {
            Command::Append(append) => drop(append.reply.send(Err(error))),
            Command::Truncate { reply, .. } | Command::DeleteBefore { reply, .. } => {
                drop(reply.send(Err(error)))
            }
            Command::Roll { reply } | Command::Flush { reply } | Command::Close { reply } => {
                drop(reply.send(Err(error)))
            }
            Command::Retention { reply, .. } => drop(reply.send(Err(error))),
        }
    }
}

/// Validated batches waiting to be written, with where each batch sits in `records`.
pub(crate) struct PendingAppend {
    pub records: BytesMut,
    pub batches: Vec<(BatchHeader, Range<usize>)>,
    pub origin: AppendOrigin,
    pub reply: Reply<AppendInfo>,
    /// Holds `records.len()` units of the log's pending-bytes budget until answered.
    pub _permit: FifoPermit,
}

/// Where an append's batches come from, which decides their offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOrigin {
    /// A producer's: offsets are assigned at the log end; `leader_epoch`, when given, is
    /// stamped into every batch (a cluster's partition leader does).
    Client { leader_epoch: Option<i32> },
    /// A follower copying its leader: the batches keep the offsets and epochs they have,
    /// and must start at the log end.
    Replica,
}

impl PendingAppend {
    fn max_timestamp(&self) -> i64 {
        self.batches
            .iter()
            .map(|(header, _)| header.max_timestamp)
            .max()
            .unwrap_or(i64::MIN)
    }
}

/// The appender's private view of the active segment.
/// Bounds of the step by which the active segment is allocated ahead of its end.
const PREALLOCATE_MIN_BYTES: u64 = 64 * 1024;
const PREALLOCATE_MAX_BYTES: u64 = 4 << 20;

pub(crate) struct Active {
    segment: Rc<Segment>,
    /// Bytes of the last, partial block: `[align_down(size), size)`.
    tail_block: Vec<u8>,
    /// Bytes written but not yet covered by an fdatasync.
    unsynced_bytes: u64,
    /// When the pending interval flush (`flush.ms` above 0) must happen.
    sync_deadline: Option<Instant>,
    /// The file's size: space allocated ahead of the log end (`preallocate`).
    allocated: u64,
    /// A clean close's snapshot of this segment is on disk and still true (`clean.rs`):
    /// removed before the first change, and the next clean close need not write one.
    snapshot: bool,
}

impl Active {
    /// `snapshot`: the segment was opened from a clean close's snapshot, still on disk.
    pub async fn open(segment: Rc<Segment>, snapshot: bool) -> Result<Active, StorageError> {
        let size = segment.meta.borrow().size_bytes;
        let file = segment.file().await?;
        let tail_block = read_tail_block(&segment, &file, size).await?;
        // Recovery leaves the zeros after the last batch (space allocated ahead before a
        // crash): they count as allocated.
        let allocated = file
            .file_size()
            .await
            .map_err(|error| io::io_error(&segment.path, "stat", error.into()))?
            .max(size);
        Ok(Active {
            snapshot,
            allocated,
            ..Active::with_tail(segment, tail_block)
        })
    }

    /// `segment`'s file must be no longer than its log end (as a roll and a truncation
    /// leave it; `open` takes a longer file's size).
    fn with_tail(segment: Rc<Segment>, tail_block: Vec<u8>) -> Active {
        let allocated = segment.meta.borrow().size_bytes;
        Active {
            segment,
            tail_block,
            unsynced_bytes: 0,
            sync_deadline: None,
            allocated,
            snapshot: false,
        }
    }
}

/// The bytes of the partial block that ends at `size`: `[align_down(size), size)`.
async fn read_tail_block(
    segment: &Segment,
    file: &DmaFile,
    size: u64,
) -> Result<Vec<u8>, StorageError> {
    let start = align_down(size);
    let mut tail_block = Vec::new();
    if size > start {
        let read = io::read_at(file, &segment.path, start, (size - start) as usize).await?;
        tail_block.extend_from_slice(&read);
    }
    assert_eq!(
        tail_block.len() as u64,
        size - start,
        "tail block must be readable"
    );
    Ok(tail_block)
}

pub(crate) async fn run(inner: Rc<LogInner>, active: Active) {
    let mut appender = Appender { inner, active };
    while let Some(command) = appender.next_command().await {
        if let Some(failure) = appender.failure()
            && !matches!(command, Command::Close { .. })
        {
            command.fail(failure);
            continue;
        }
        match command {
            Command::Append(first) => appender.append_group(first).await,
            Command::Truncate { offset, reply } => {
                drop(reply.send(appender.truncate(offset).await))
            }
            Command::Roll { reply } => drop(reply.send(appender.roll().await)),
            Command::Flush { reply } => drop(reply.send(appender.sync(true).await)),
            Command::Retention {
                now_ms,
                limit,
                reply,
            } => drop(reply.send(appender.retention(now_ms, limit).await)),
            Command::DeleteBefore { offset, reply } => {
                drop(reply.send(appender.delete_before(offset).await))
            }
            Command::Close { reply } => {
                let result = match appender.failure() {
                    Some(failure) => Err(failure),
                    None => appender.close().await,
                };
                appender.shut_down();
                drop(reply.send(result));
                return;
            }
        }
    }
}

struct Appender {
    inner: Rc<LogInner>,
    active: Active,
}

impl Appender {
    /// The next command, running the interval flush when its deadline comes first.
    async fn next_command(&mut self) -> Option<Command> {
        loop {
            // The deadline comes first: under a constant stream of appends the queue is never
            // empty, and `flush.ms` must still bound how long data stays unsynced.
            let due = self
                .active
                .sync_deadline
                .is_some_and(|deadline| Instant::now() >= deadline);
            // A failed flush is not retried: `sync` has failed the log, and every command
            // from now on is refused.
            if due && let Err(error) = self.sync(false).await {
                tracing::error!(%error, "interval flush failed");
            }
            if let Some(command) = self.inner.queue.borrow_mut().pop_front() {
                return Some(command);
            }
            match self.active.sync_deadline {
                None => self.inner.appender_wake.wait().await,
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    let wake = self.inner.appender_wake.wait();
                    futures_lite::future::or(wake, glommio::timer::sleep(wait)).await;
                }
            }
        }
    }

    fn failure(&self) -> Option<StorageError> {
        let state = self.inner.state.borrow();
        state
            .failure
            .clone()
            .map(|reason| StorageError::LogFailed { reason })
    }

    /// Stops accepting changes after a failure that left memory and disk out of step, or
    /// the disk's contents in doubt. Reads go on; reopening the log recovers from what is
    /// on disk. The first cause is kept; returns the error every write now gets.
    fn fail_log(&self, reason: String) -> StorageError {
        let dir = self.inner.dir.display();
        let mut state = self.inner.state.borrow_mut();
        match &state.failure {
            Some(first) => tracing::error!(
                %dir,
                reason,
                first = %first,
                "another failure on a partition log that already refuses writes"
            ),
            None => {
                tracing::error!(
                    %dir,
                    reason,
                    "partition log failed: it refuses writes until the broker restarts and recovers it from disk"
                );
                state.failure = Some(reason);
            }
        }
        StorageError::LogFailed {
            reason: state.failure.clone().expect("set above"),
        }
    }

    /// fdatasync of a segment file. A failure fails the log for good: after a failed
    /// writeback Linux may have dropped the dirty pages and cleared the error, so a retry
    /// could report success for data that is not on disk (PostgreSQL's fsync lesson).
    /// Only reopening, which reads back what the disk really holds, makes writes safe
    /// again.
    async fn fdatasync_segment(&self, segment: &Rc<Segment>) -> Result<(), StorageError> {
        super::rounds::sync(segment).await.map_err(|error| {
            self.fail_log(format!(
                "{error}; what was written since the last successful fdatasync may be lost, \
                     and a retry could report success for data the kernel has dropped"
            ))
        })
    }

    fn count(&self, update: impl FnOnce(&mut LogStats)) {
        let mut stats = self.inner.stats.get();
        update(&mut stats);
        self.inner.stats.set(stats);
    }

    fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.inner.config.flush_ms)
    }

    fn shut_down(&mut self) {
        let mut state = self.inner.state.borrow_mut();
        state.closed = true;
        // A closed log holds no descriptors, whoever still holds the log.
        for segment in state.segments.values() {
            segment.slot.release();
        }
        drop(state);
        drop(self.inner.lock.borrow_mut().take());
        let rest: Vec<Command> = self.inner.queue.borrow_mut().drain(..).collect();
        for command in rest {
            command.fail(StorageError::Closed);
        }
        self.inner.pending_bytes.close();
        self.inner.data_arrived.notify_all();
    }

    /// fdatasync of the active segment if anything is unsynced (or always, if `force`).
    /// A failure fails the log (`fdatasync_segment`), and the pending interval flush is
    /// dropped with it: it is never retried.
    async fn sync(&mut self, force: bool) -> Result<(), StorageError> {
        if self.active.unsynced_bytes == 0 && !force {
            return Ok(());
        }
        self.active.sync_deadline = None;
        let segment = self.active.segment.clone();
        self.fdatasync_segment(&segment).await?;
        self.count(|stats| stats.fdatasyncs += 1);
        self.active.unsynced_bytes = 0;
        Ok(())
    }

    /// Whether `append` must go to a new segment, given `group_bytes` already headed for
    /// the active one, the first of which has max timestamp `group_first_timestamp`.
    fn needs_roll(
        &self,
        group_bytes: usize,
        group_first_timestamp: Option<i64>,
        append: &PendingAppend,
    ) -> bool {
        let config = &self.inner.config;
        let meta = self.active.segment.meta.borrow();
        let size = meta.size_bytes + group_bytes as u64;
        if size == 0 {
            return false;
        }
        if size + append.records.len() as u64 > config.segment_bytes {
            return true;
        }
        meta.first_timestamp
            .or(group_first_timestamp)
            .is_some_and(|first| {
                append.max_timestamp().saturating_sub(first) > config.segment_ms as i64
            })
    }

    /// Takes `first` and every append queued right behind it (up to the write limit and the
    /// segment boundary), writes them at once and answers them all.
    async fn append_group(&mut self, first: PendingAppend) {
        // Idempotent producers' retries are answered from the table, gaps refused.
        let mut pending = Pending::new();
        let Some(first) = self.screen(first, &mut pending) else {
            return;
        };
        if self.needs_roll(0, None, &first)
            && let Err(error) = self.roll().await
        {
            drop(first.reply.send(Err(error)));
            return;
        }
        let mut group_bytes = first.records.len();
        // note_batch takes a segment's first timestamp from its first batch's max timestamp.
        let group_first_timestamp = Some(first.batches[0].0.max_timestamp);
        let mut group = vec![first];
        loop {
            let mut queue = self.inner.queue.borrow_mut();
            let Some(Command::Append(next)) = queue.front() else {
                break;
            };
            let fits = group_bytes + next.records.len() <= GROUP_WRITE_BYTES_MAX;
            if !fits || self.needs_roll(group_bytes, group_first_timestamp, next) {
                break;
            }
            let Some(Command::Append(next)) = queue.pop_front() else {
                unreachable!("peeked")
            };
            drop(queue);
            let Some(next) = self.screen(next, &mut pending) else {
                continue;
            };
            group_bytes += next.records.len();
            group.push(next);
        }
        match self.write_group(&mut group, group_bytes).await {
            Ok(new_tail) => self.commit(group, new_tail),
            Err(error) => {
                // A failed sync has failed the log already; the bytes are removed all the
                // same, so that a reopened log does not adopt unacknowledged batches.
                if let Err(cleanup) = self.discard_unacknowledged().await {
                    self.fail_log(cleanup.to_string());
                }
                for append in group {
                    drop(append.reply.send(Err(error.clone())));
                }
            }
        }
    }

    /// Checks an append's batches of idempotent producers against the producer table and
    /// the group being built (`pending`): returns it to be written, or answers it here (a
    /// retry of stored batches gets their offsets; a gap or a fenced epoch its error).
    fn screen(&self, append: PendingAppend, pending: &mut Pending) -> Option<PendingAppend> {
        // A replica copies what its leader already screened.
        if append.origin == AppendOrigin::Replica
            || !append
                .batches
                .iter()
                .any(|(header, _)| producers::is_idempotent(header))
        {
            return Some(append);
        }
        let state = self.inner.state.borrow();
        let mut tentative = pending.clone();
        let mut duplicates = Vec::new();
        let mut refusal = None;
        for (header, _) in &append.batches {
            match state.producers.check(header, &mut tentative) {
                Ok(Verdict::Write) => {}
                Ok(Verdict::Duplicate {
                    base_offset,
                    last_offset,
                }) => duplicates.push((base_offset, last_offset)),
                Err(error) => {
                    refusal = Some(error);
                    break;
                }
            }
        }
        drop(state);
        if refusal.is_none() && duplicates.is_empty() {
            *pending = tentative;
            return Some(append);
        }
        let answer = match refusal {
            Some(error) => Err(error),
            None if duplicates.len() == append.batches.len() => {
                self.count(|stats| stats.duplicates += 1);
                Ok(AppendInfo {
                    base_offset: duplicates[0].0,
                    last_offset: duplicates[duplicates.len() - 1].1,
                })
            }
            // Some batches stored, some not: the request is not a plain retry. It is
            // refused as out of order, naming the sequence the producer's next batch must
            // start at.
            None => {
                let (header, _) = &append.batches[0];
                let expected = self
                    .inner
                    .state
                    .borrow()
                    .producers
                    .next_sequence(header.producer_id)
                    .unwrap_or(0);
                Err(StorageError::OutOfOrderSequence {
                    producer_id: header.producer_id,
                    expected,
                    found: header.base_sequence,
                })
            }
        };
        drop(append.reply.send(answer));
        None
    }

    /// Assigns offsets, writes the group after the tail block in one aligned write, and
    /// syncs as the flush policy says. Changes nothing visible: `commit` does that. Returns
    /// the new tail block.
    async fn write_group(
        &mut self,
        group: &mut [PendingAppend],
        group_bytes: usize,
    ) -> Result<Vec<u8>, StorageError> {
        self.retire_snapshot();
        let segment = self.active.segment.clone();
        let (end, mut next_offset) = {
            let meta = segment.meta.borrow();
            assert!(!meta.sealed, "writes go to the active segment only");
            (meta.size_bytes, meta.next_offset)
        };
        let write_start = align_down(end);
        let tail = &self.active.tail_block;
        assert_eq!(
            write_start + tail.len() as u64,
            end,
            "tail block out of step"
        );
        let logical_bytes = tail.len() + group_bytes;
        let write_bytes = align_up(logical_bytes as u64) as usize;
        // Held until the write is done: the shard's cap on open files may close the
        // segment's meanwhile (`files.rs`).
        let file = segment.file().await?;
        // Offsets first, so that a replica append out of step fails before any write.
        for append in group.iter_mut() {
            for (header, range) in append.batches.iter_mut() {
                match append.origin {
                    AppendOrigin::Replica if header.base_offset != next_offset => {
                        return Err(StorageError::ReplicaOffsetMismatch {
                            expected: next_offset,
                            found: header.base_offset,
                        });
                    }
                    AppendOrigin::Replica => {}
                    AppendOrigin::Client { leader_epoch } => {
                        let batch = &mut append.records[range.clone()];
                        set_base_offset(batch, next_offset);
                        header.base_offset = next_offset;
                        if let Some(epoch) = leader_epoch {
                            set_partition_leader_epoch(batch, epoch);
                            header.partition_leader_epoch = epoch;
                        }
                    }
                }
                next_offset = header.next_offset();
            }
        }
        let mut chunks = Chunks::new(&file, write_bytes);
        chunks.put(tail);
        for append in group.iter() {
            chunks.put(&append.records);
        }
        // DMA buffers are recycled: the padding must be zeroed by hand (docs/GLOMMIO.md §3).
        let new_tail = chunks.finish();
        self.preallocate(&file, write_start + write_bytes as u64)
            .await;
        let chunks_sent = chunks.buffers.len() as u64;
        let started = std::time::Instant::now();
        chunks.write_at(&segment, &file, write_start).await?;
        crate::metrics::with(|metrics| {
            metrics.append_latency.observe_duration(started.elapsed());
            metrics.appended_bytes.add(group_bytes as u64);
            let batches: usize = group.iter().map(|append| append.batches.len()).sum();
            metrics.appended_batches.add(batches as u64);
        });
        self.count(|stats| stats.chunk_writes += chunks_sent);
        self.count(|stats| stats.group_writes += 1);
        self.active.unsynced_bytes += group_bytes as u64;
        let config = &self.inner.config;
        let over_bytes = config
            .flush_bytes
            .is_some_and(|limit| self.active.unsynced_bytes >= limit);
        if config.syncs_before_ack() || over_bytes {
            self.sync(false).await?;
        } else if self.active.sync_deadline.is_none() {
            self.active.sync_deadline = Some(Instant::now() + self.flush_interval());
        }
        Ok(new_tail)
    }

    /// A clean close: the space allocated ahead is given back (the file ends at the block
    /// after the last batch, as recovery expects to find it), everything is synced, and a
    /// snapshot of the active segment's metadata saves the next open a scan (`clean.rs`).
    async fn close(&mut self) -> Result<(), StorageError> {
        let segment = self.active.segment.clone();
        let padded = align_up(segment.meta.borrow().size_bytes);
        let mut trimmed = false;
        if self.active.allocated > padded {
            let file = segment.file().await?;
            match file.truncate(padded).await {
                Ok(()) => {
                    self.active.allocated = padded;
                    trimmed = true;
                }
                // Harmless: recovery takes the zeros for unused space and trims them.
                Err(error) => tracing::warn!(
                    error = %io::io_error(&segment.path, "truncate", error.into()),
                    "could not give back the space allocated ahead"
                ),
            }
        }
        self.sync(trimmed).await?;
        if self.active.snapshot {
            return Ok(()); // nothing changed since the open that took it
        }
        let snapshot = {
            let meta = segment.meta.borrow();
            let state = self.inner.state.borrow();
            clean::encode(segment.base_offset, &meta, &state.producers)
        };
        let path = clean::clean_path(&segment.path);
        // A small buffered write, not synced (a lost snapshot costs a scan): done here
        // rather than on the blocking thread, whose round trip would cost more.
        if let Err(error) = std::fs::write(&path, snapshot) {
            tracing::warn!(%error, path = %path.display(), "could not save the clean-close snapshot; the next start scans the active segment");
        }
        Ok(())
    }

    /// Removes the clean close's snapshot of the active segment, if it is still on disk,
    /// before the segment or the producer table changes. Not made durable: a snapshot that
    /// a crash brings back no longer matches the segment once anything was written to it
    /// (`clean.rs`), and is refused.
    fn retire_snapshot(&mut self) {
        if std::mem::take(&mut self.active.snapshot) {
            let _ = std::fs::remove_file(clean::clean_path(&self.active.segment.path));
        }
    }

    /// Makes sure the file is allocated up to `write_end`, allocating ahead: a direct write
    /// inside the file's size needs no block allocation and no size change, so io_uring
    /// completes it inline instead of handing it to a kernel worker thread (the io-wq
    /// detour every extending write takes). The step grows with the segment (as much
    /// again as it holds, from 64 KiB to 4 MiB), so idle partitions reserve little. A
    /// failure (a full disk) is not an error here: the write then extends the file itself,
    /// and fails on its own if it must.
    async fn preallocate(&mut self, file: &DmaFile, write_end: u64) {
        if write_end <= self.active.allocated {
            return;
        }
        let step = write_end.clamp(PREALLOCATE_MIN_BYTES, PREALLOCATE_MAX_BYTES);
        let target = align_up(write_end + step)
            .min(align_up(self.inner.config.segment_bytes).max(align_up(write_end)));
        if file.pre_allocate(target, false).await.is_ok() {
            self.active.allocated = target;
        }
    }

    /// After a failed group write: removes whatever it may have left past the acknowledged
    /// end (a write that landed before its fdatasync failed, or a partial write), so that
    /// recovery can never adopt batches whose appenders were told they failed.
    async fn discard_unacknowledged(&mut self) -> Result<(), StorageError> {
        let segment = self.active.segment.clone();
        let end = segment.meta.borrow().size_bytes;
        let file = segment.file().await?;
        if !self.active.tail_block.is_empty() {
            // Rewrites an existing block: needs no new space on a full disk.
            let tail = &self.active.tail_block;
            io::write_all_at(&file, &segment.path, tail, align_down(end)).await?;
        }
        file.truncate(align_up(end))
            .await
            .map_err(|error| io::io_error(&segment.path, "truncate", error.into()))?;
        self.active.allocated = align_up(end);
        self.sync(true).await
    }

    /// Makes a written group visible: indexes, tail cache, log end; then answers it.
    fn commit(&mut self, group: Vec<PendingAppend>, new_tail: Vec<u8>) {
        let interval = self.inner.config.index_interval_bytes;
        let segment = self.active.segment.clone();
        let mut meta = segment.meta.borrow_mut();
        let mut state = self.inner.state.borrow_mut();
        let appended = group.len() as u64;
        let mut cached = Vec::new();
        for append in group {
            let records = append.records.freeze();
            let base_offset = append.batches[0].0.base_offset;
            for (header, range) in &append.batches {
                let position = meta.size_bytes;
                meta.note_batch(segment.base_offset, position, header, interval);
                state.producers.record(header);
                state.cache.push(
                    header.base_offset,
                    header.next_offset(),
                    records.slice(range.clone()),
                );
                cached.push(header.next_offset());
            }
            let last_offset = meta.next_offset - 1;
            drop(append.reply.send(Ok(AppendInfo {
                base_offset,
                last_offset,
            })));
        }
        state.log_end = meta.next_offset;
        let size = meta.size_bytes;
        drop(state);
        drop(meta);
        assert_eq!(
            align_down(size) + new_tail.len() as u64,
            size,
            "tail block out of step"
        );
        self.active.tail_block = new_tail;
        self.count(|stats| stats.appends += appended);
        // With no log's state borrowed: the shard's budget may take from any partition.
        for next_offset in cached {
            tail_cache::note(&self.inner, next_offset);
        }
        tail_cache::enforce();
        self.inner.data_arrived.notify_all();
    }

    /// Seals the active segment and opens a new one at the log end. Nothing changes if the
    /// new segment cannot be created.
    async fn roll(&mut self) -> Result<(), StorageError> {
        let old = self.active.segment.clone();
        let (size, next_offset) = {
            let meta = old.meta.borrow();
            (meta.size_bytes, meta.next_offset)
        };
        if size == 0 {
            return Ok(());
        }
        self.retire_snapshot();
        // The old segment is durable before the new one exists, so a crash can never leave
        // a gap between them.
        self.sync(false).await?;
        let dir = self.inner.dir.clone();
        let path = dir.join(segment_file_name(next_offset));
        let file = io::open_rw(&path, true).await?;
        let created = async {
            file.truncate(0)
                .await
                .map_err(|error| io::io_error(&path, "truncate", error.into()))?;
            io::sync_directory(&dir).await
        };
        if let Err(error) = created.await {
            let _ = glommio::io::remove(&path).await;
            return Err(error);
        }
        // Cut the padding off the sealed segment; if this is lost in a crash, recovery
        // finds zero padding and cuts it again. A failed fdatasync, though, fails the log
        // (after the roll is complete, so that memory matches the files).
        let mut synced = Ok(());
        let trimmed = async {
            let file = old.file().await?;
            file.truncate(size)
                .await
                .map_err(|error| io::io_error(&old.path, "truncate", error.into()))
        };
        match trimmed.await {
            Ok(()) => synced = self.fdatasync_segment(&old).await,
            Err(error) => {
                tracing::warn!(%error, "could not trim the sealed segment; recovery will");
            }
        }
        old.meta.borrow_mut().sealed = true;
        if let Err(error) = old.write_indexes().await {
            tracing::warn!(%error, "could not write the sealed segment's index; recovery will rebuild it");
        }
        let segment = Rc::new(Segment::new(
            next_offset,
            path,
            file,
            SegmentMeta::empty(next_offset),
        ));
        self.inner
            .state
            .borrow_mut()
            .segments
            .insert(next_offset, segment.clone());
        self.active = Active::with_tail(segment, Vec::new());
        tracing::debug!(base_offset = next_offset, "rolled to a new segment");
        synced
    }

    async fn truncate(&mut self, offset: i64) -> Result<i64, StorageError> {
        let (log_start, log_end) = {
            let state = self.inner.state.borrow();
            (state.log_start, state.log_end)
        };
        if offset >= log_end {
            return Ok(log_end);
        }
        if offset < log_start {
            return Err(self.inner.state.borrow().out_of_range(offset));
        }
        self.retire_snapshot();
        self.sync(false).await?;
        // Find the cut while the log is unchanged: scanning the segment that holds the
        // offset rebuilds its metadata as it will be after the cut.
        let target = {
            let state = self.inner.state.borrow();
            let (_, segment) = state
                .segments
                .range(..=offset)
                .next_back()
                .expect("offset >= log start");
            segment.clone()
        };
        let size = target.meta.borrow().size_bytes;
        let interval = self.inner.config.index_interval_bytes;
        let file = target.file().await?;
        let (mut meta, stop) = Segment::scan(
            &file,
            &target.path,
            target.base_offset,
            size,
            Some(offset),
            interval,
        )
        .await?;
        if stop != ScanStop::ReachedOffset {
            return Err(StorageError::CorruptSegment {
                path: target.path.clone(),
                position: meta.size_bytes,
                reason: format!("truncation to offset {offset} did not find its batch: {stop:?}"),
            });
        }
        let new_end = meta.next_offset;
        let cut = meta.size_bytes;
        // Bytes below the cut do not change: the new tail block can be read now.
        let tail_block = read_tail_block(&target, &file, cut).await?;
        // One synchronous step moves readers and the appender to the truncated log; a read
        // already under way on a changed segment sees its truncation count move and starts
        // again.
        let doomed: Vec<Rc<Segment>> = {
            let mut state = self.inner.state.borrow_mut();
            let doomed: Vec<_> = state
                .segments
                .split_off(&(target.base_offset + 1))
                .into_values()
                .collect();
            for segment in doomed.iter().chain(std::iter::once(&target)) {
                segment.truncations.set(segment.truncations.get() + 1);
            }
            meta.sealed = false;
            *target.meta.borrow_mut() = meta;
            state.log_end = new_end;
            state.cache.truncate(new_end);
            state.producers.truncate(new_end);
            doomed
        };
        self.active = Active::with_tail(target.clone(), tail_block);
        // From here memory is ahead of the disk: a failure stops the log until reopened.
        if let Err(error) = self.cut_files(&doomed, &target, cut).await {
            self.fail_log(error.to_string());
            return Err(error);
        }
        tracing::info!(offset, new_end, "truncated the log");
        Ok(new_end)
    }

    /// The file side of a truncation: newer segments go first, newest first, so that a
    /// crash in the middle leaves a contiguous prefix (the target still whole).
    async fn cut_files(
        &self,
        doomed: &[Rc<Segment>],
        target: &Segment,
        cut: u64,
    ) -> Result<(), StorageError> {
        for segment in doomed.iter().rev() {
            remove_segment_files(segment).await?;
        }
        let file = target.file().await?;
        file.truncate(cut)
            .await
            .map_err(|error| io::io_error(&target.path, "truncate", error.into()))?;
        io::fdatasync(&file, &target.path).await?;
        for index in [
            offset_index_path(&target.path),
            time_index_path(&target.path),
        ] {
            remove_if_present(&index).await?;
        }
        io::sync_directory(&self.inner.dir).await
    }

    async fn retention(
        &mut self,
        now_ms: i64,
        limit: i64,
    ) -> Result<RetentionReport, StorageError> {
        let config = self.inner.config.clone();
        let cutoff = config
            .retention_ms
            .map(|ms| now_ms.saturating_sub(ms as i64));
        let expired = |meta: &SegmentMeta| {
            cutoff.is_some_and(|cutoff| meta.size_bytes > 0 && meta.max_timestamp < cutoff)
        };
        // As in Kafka, an expired active segment is rolled so that data does not outlive
        // its retention just because nothing new arrived.
        let active_expired = expired(&self.active.segment.meta.borrow());
        if active_expired {
            self.roll().await?;
        }
        let victims: Vec<Rc<Segment>> = {
            let state = self.inner.state.borrow();
            let mut remaining: u64 = state
                .segments
                .values()
                .map(|segment| segment.meta.borrow().size_bytes)
                .sum();
            // Each sealed segment with the base of the one after it (where it ends).
            let sealed = state.segments.values().zip(state.segments.keys().skip(1));
            let mut victims = Vec::new();
            for (segment, &next_base) in sealed {
                if next_base > limit {
                    break;
                }
                let meta = segment.meta.borrow();
                let over_size = config
                    .retention_bytes
                    .is_some_and(|limit| remaining - meta.size_bytes >= limit);
                if !(expired(&meta) || over_size) {
                    break;
                }
                remaining -= meta.size_bytes;
                victims.push(segment.clone());
            }
            victims
        };
        self.delete_oldest(&victims, "retention").await
    }

    /// Deletes the sealed segments whose records all lie below `offset` (the next segment
    /// starts at or before it); returns the new log start. An offset past the log end is
    /// refused; one at or below the log start deletes nothing.
    async fn delete_before(&mut self, offset: i64) -> Result<i64, StorageError> {
        let victims: Vec<Rc<Segment>> = {
            let state = self.inner.state.borrow();
            if offset > state.log_end {
                return Err(state.out_of_range(offset));
            }
            // Pairs each segment with its successor's base, so the active one never qualifies.
            state
                .segments
                .values()
                .zip(state.segments.keys().skip(1))
                .take_while(|&(_, &next_base)| next_base <= offset)
                .map(|(segment, _)| segment.clone())
                .collect()
        };
        let report = self.delete_oldest(&victims, "delete records").await?;
        Ok(report.log_start_offset)
    }

    /// Deletes `victims`, the oldest sealed segments in order, and moves the log start past
    /// them (retention and `delete_before` differ only in how they choose). Files go first,
    /// oldest first; then the segments whose files are gone leave the map in one
    /// synchronous step, with the log start, the tail cache and the read ahead; then the
    /// directory is synced. A failed unlink never leaves memory ahead of the disk, nor a gap
    /// on it: the segments deleted before it are still applied, and the error is returned.
    async fn delete_oldest(
        &mut self,
        victims: &[Rc<Segment>],
        cause: &'static str,
    ) -> Result<RetentionReport, StorageError> {
        let log_start_offset = {
            let state = self.inner.state.borrow();
            assert!(
                victims.len() < state.segments.len(),
                "the active segment is never deleted"
            );
            assert!(
                state
                    .segments
                    .values()
                    .zip(victims)
                    .all(|(segment, victim)| Rc::ptr_eq(segment, victim)),
                "only the oldest segments are deleted, oldest first"
            );
            state.log_start
        };
        let mut report = RetentionReport {
            log_start_offset,
            ..RetentionReport::default()
        };
        let mut deleted = 0;
        let mut outcome = Ok(());
        for victim in victims {
            // Files open on use: a reader that took this segment before it goes must still
            // find its file after the unlink. The descriptor is held until the segment is
            // dropped (no reader left), as Kafka's deleted-but-open segments are.
            let removed = match victim.slot.hold_open(&victim.path).await {
                Ok(()) => remove_segment_files(victim).await,
                Err(error) => Err(error),
            };
            if let Err(error) = removed {
                outcome = Err(error);
                break;
            }
            deleted += 1;
        }
        if deleted > 0 {
            let mut state = self.inner.state.borrow_mut();
            for victim in &victims[..deleted] {
                state.segments.remove(&victim.base_offset);
                report.deleted_segments.push(victim.base_offset);
                report.deleted_bytes += victim.meta.borrow().size_bytes;
            }
            let first = *state
                .segments
                .keys()
                .next()
                .expect("the active segment remains");
            state.log_start = state.log_start.max(first);
            let log_start = state.log_start;
            state.cache.drop_before(log_start);
            report.log_start_offset = log_start;
            drop(state);
            // A read ahead of a deleted segment would keep its file (and disk space).
            self.inner.read_ahead.borrow_mut().take();
        }
        if !report.deleted_segments.is_empty() {
            io::sync_directory(&self.inner.dir).await?;
            tracing::info!(
                cause,
                deleted = report.deleted_segments.len(),
                bytes = report.deleted_bytes,
                log_start = report.log_start_offset,
                "deleted old segments"
            );
        }
        outcome.map(|()| report)
    }
}

async fn remove_segment_files(segment: &Segment) -> Result<(), StorageError> {
    remove_if_present(&offset_index_path(&segment.path)).await?;
    remove_if_present(&time_index_path(&segment.path)).await?;
    remove_if_present(&segment.path).await
}

async fn remove_if_present(path: &std::path::Path) -> Result<(), StorageError> {
    match glommio::io::remove(path).await {
        Ok(()) => Ok(()),
        Err(error) => {
            let error: std::io::Error = error.into();
            if error.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(io::io_error(path, "remove", error))
            }
        }
    }
}

/// A group write's bytes in aligned DMA buffers of at most `WRITE_CHUNK_BYTES` each,
/// filled in order and written together. The chunks cover disjoint block ranges of the
/// file, so their order on the device does not matter, and the group is answered once all
/// are done. A crash between them leaves a torn group, which recovery cuts like any torn
/// write (nothing in it was acknowledged).
struct Chunks {
    buffers: Vec<DmaBuffer>,
    /// The buffer being filled, and how much of it is.
    index: usize,
    at: usize,
}

impl Chunks {
    fn new(file: &DmaFile, bytes: usize) -> Chunks {
        let buffers = (0..bytes.div_ceil(WRITE_CHUNK_BYTES))
            .map(|index| {
                let start = index * WRITE_CHUNK_BYTES;
                file.alloc_dma_buffer((bytes - start).min(WRITE_CHUNK_BYTES))
            })
            .collect();
        Chunks {
            buffers,
            index: 0,
            at: 0,
        }
    }

    /// Appends `bytes`, across chunk boundaries where it must.
    fn put(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let chunk = self.buffers[self.index].as_bytes_mut();
            let take = bytes.len().min(chunk.len() - self.at);
            chunk[self.at..self.at + take].copy_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            self.at += take;
            if self.at == chunk.len() {
                self.index += 1;
                self.at = 0;
            }
        }
    }

    /// Zeroes everything after what was put, and returns the last partial block's bytes
    /// (the appender's next tail block; chunks hold whole blocks, so a block never
    /// straddles two).
    fn finish(&mut self) -> Vec<u8> {
        let Some(chunk) = self.buffers.get_mut(self.index) else {
            return Vec::new();
        };
        let bytes = chunk.as_bytes_mut();
        bytes[self.at..].fill(0);
        bytes[align_down(self.at as u64) as usize..self.at].to_vec()
    }

    /// Writes every chunk at its place from `position`, all sent at once, and waits for
    /// all of them (even after a failure, so that none is still in flight on return).
    async fn write_at(
        self,
        segment: &Segment,
        file: &Rc<DmaFile>,
        position: u64,
    ) -> Result<(), StorageError> {
        let mut writes = Vec::with_capacity(self.buffers.len());
        let mut at = position;
        for buffer in self.buffers {
            let (length, file) = (buffer.len(), file.clone());
            let write = glommio::spawn_local(async move { file.write_at(buffer, at).await });
            writes.push((write.detach(), length));
            at += length as u64;
        }
        let mut outcome = Ok(());
        for (write, expected) in writes {
            let result = match write.await {
                Some(Ok(written)) if written == expected => Ok(()),
                Some(Ok(written)) => Err(io::short_write(&segment.path, written, expected)),
                Some(Err(error)) => Err(io::io_error(&segment.path, "write", error.into())),
                None => Err(io::io_error(
                    &segment.path,
                    "write",
                    std::io::Error::other("the write was cancelled"),
                )),
            };
            if outcome.is_ok() {
                outcome = result;
            }
        }
        outcome
    }
}
