//! The most recently appended batches of a partition, kept in memory so that consumers at
//! the tail are served with no disk I/O. With O_DIRECT there is no page cache to do this.
//!
//! Invariant: the cached batches are contiguous and end exactly at the log end offset.
//!
//! Each partition's cache is bounded by its topic's `tail.cache.bytes`; all the caches of a
//! shard together are bounded by the shard's cache budget (`set_shard_budget`, from
//! `spate serve --memory-max`). Over that budget the shard's oldest cached batches go
//! first, whichever partition holds them: a tail consumer reads what was appended last,
//! and the bytes dropped stay on disk, where a read finds them.
//!
//! The shard's account also bounds what its partitions read ahead from disk together
//! (`set_read_ahead_budget`): a read ahead that does not fit is not started.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use bytes::Bytes;

use super::Chunk;
use super::log::LogInner;

/// The caches of one shard (one executor): their bytes against the budget, and every
/// cached batch in the order it was added, for eviction oldest first. Entries of batches
/// already gone (evicted by their own partition's bound, truncated, deleted) are skipped
/// when reached, and pruned when they outnumber the live ones.
#[derive(Default)]
struct Shard {
    budget: Cell<Option<u64>>,
    bytes: Cell<u64>,
    batches: Cell<u64>,
    evicted: Cell<u64>,
    order: RefCell<VecDeque<(Weak<LogInner>, i64)>>,
    /// Bytes being read ahead, or read ahead and not yet taken, by all the shard's
    /// partitions (`Log::read`'s read-ahead), against their own budget.
    read_ahead_budget: Cell<Option<u64>>,
    read_ahead_bytes: Cell<u64>,
    read_ahead_refused: Cell<u64>,
}

thread_local! {
    static SHARD: Rc<Shard> = Rc::new(Shard::default());
}

/// The shard is the thread: each shard's executor runs on a thread of its own.
fn shard() -> Rc<Shard> {
    SHARD.with(Rc::clone)
}

/// Bounds all the tail caches of this executor's partitions together (`None`: only each
/// partition's own bound).
pub fn set_shard_budget(bytes: Option<u64>) {
    shard().budget.set(bytes);
}

/// Bounds the bytes all of this executor's partitions read ahead at once (`None`: no
/// bound but each partition's one read ahead).
pub fn set_read_ahead_budget(bytes: Option<u64>) {
    shard().read_ahead_budget.set(bytes);
}

/// This shard's tail caches: bytes held, the budget, and batches evicted to keep to it;
/// and its read-ahead: bytes held, the budget, and read-aheads not started for want of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheUsage {
    pub bytes: u64,
    pub budget: Option<u64>,
    pub evicted_batches: u64,
    pub read_ahead_bytes: u64,
    pub read_ahead_budget: Option<u64>,
    pub read_ahead_refused: u64,
}

pub fn shard_usage() -> CacheUsage {
    let shard = shard();
    CacheUsage {
        bytes: shard.bytes.get(),
        budget: shard.budget.get(),
        evicted_batches: shard.evicted.get(),
        read_ahead_bytes: shard.read_ahead_bytes.get(),
        read_ahead_budget: shard.read_ahead_budget.get(),
        read_ahead_refused: shard.read_ahead_refused.get(),
    }
}

/// `bytes` of the shard's read-ahead budget, given back when dropped; `None` (and the
/// read ahead is not started) when the budget cannot hold them now.
pub(crate) fn reserve_read_ahead(bytes: u64) -> Option<ReadAheadPermit> {
    let shard = shard();
    let held = shard.read_ahead_bytes.get();
    if shard
        .read_ahead_budget
        .get()
        .is_some_and(|budget| held + bytes > budget)
    {
        shard
            .read_ahead_refused
            .set(shard.read_ahead_refused.get() + 1);
        return None;
    }
    shard.read_ahead_bytes.set(held + bytes);
    Some(ReadAheadPermit { bytes })
}

pub(crate) struct ReadAheadPermit {
    bytes: u64,
}

impl Drop for ReadAheadPermit {
    fn drop(&mut self) {
        // The thread may be ending, its account already gone: nothing to give back then.
        let _ = SHARD.try_with(|shard| {
            let held = shard.read_ahead_bytes.get();
            shard.read_ahead_bytes.set(held - self.bytes);
        });
    }
}

/// Notes a batch `log` just cached (ending at `next_offset`), in the shard's order.
pub(crate) fn note(log: &Rc<LogInner>, next_offset: i64) {
    let shard = shard();
    let mut order = shard.order.borrow_mut();
    order.push_back((Rc::downgrade(log), next_offset));
    if order.len() as u64 > 2 * shard.batches.get() + 1024 {
        order.retain(|(log, next_offset)| {
            log.upgrade()
                .is_some_and(|log| log.state.borrow().cache.holds_end(*next_offset))
        });
    }
}

/// Drops the shard's oldest cached batches until its caches are within the budget. Call
/// with no log's state borrowed.
pub(crate) fn enforce() {
    let shard = shard();
    let Some(budget) = shard.budget.get() else {
        return;
    };
    while shard.bytes.get() > budget {
        let Some((log, next_offset)) = shard.order.borrow_mut().pop_front() else {
            break;
        };
        if let Some(log) = log.upgrade() {
            let mut state = log.state.borrow_mut();
            let before = state.cache.batches.len();
            state.cache.drop_before(next_offset);
            let dropped = before - state.cache.batches.len();
            shard.evicted.set(shard.evicted.get() + dropped as u64);
        }
    }
}

#[derive(Debug)]
struct CachedBatch {
    base_offset: i64,
    next_offset: i64,
    bytes: Bytes,
}

#[derive(Debug)]
pub(crate) struct TailCache {
    batches: VecDeque<CachedBatch>,
    bytes_total: u64,
    bytes_max: u64,
}

impl TailCache {
    pub fn new(bytes_max: u64) -> TailCache {
        TailCache {
            batches: VecDeque::new(),
            bytes_total: 0,
            bytes_max,
        }
    }

    /// Whether a cached batch ends at `next_offset`.
    fn holds_end(&self, next_offset: i64) -> bool {
        let start = self
            .batches
            .partition_point(|batch| batch.next_offset < next_offset);
        self.batches
            .get(start)
            .is_some_and(|batch| batch.next_offset == next_offset)
    }

    /// Every change of what is cached goes through these two, so the shard's count holds.
    fn added(&mut self, bytes: u64) {
        self.bytes_total += bytes;
        let shard = shard();
        shard.bytes.set(shard.bytes.get() + bytes);
        shard.batches.set(shard.batches.get() + 1);
    }

    fn removed(&mut self, batch: CachedBatch) {
        let bytes = batch.bytes.len() as u64;
        self.bytes_total -= bytes;
        // `try_with`: a cache dropped while the thread itself ends has no account left.
        let _ = SHARD.try_with(|shard| {
            shard.bytes.set(shard.bytes.get().saturating_sub(bytes));
            shard.batches.set(shard.batches.get().saturating_sub(1));
        });
    }

    /// Adds the batch that was just acknowledged, evicting the oldest to stay in budget.
    pub fn push(&mut self, base_offset: i64, next_offset: i64, bytes: Bytes) {
        if let Some(last) = self.batches.back() {
            assert_eq!(
                last.next_offset, base_offset,
                "tail cache must stay contiguous"
            );
        }
        if bytes.len() as u64 > self.bytes_max {
            // Too big to keep: drop everything so the cache still ends at the log end.
            self.clear();
            return;
        }
        self.added(bytes.len() as u64);
        self.batches.push_back(CachedBatch {
            base_offset,
            next_offset,
            bytes,
        });
        while self.bytes_total > self.bytes_max {
            let evicted = self
                .batches
                .pop_front()
                .expect("over budget means non-empty");
            self.removed(evicted);
        }
    }

    /// Whole batches from the one holding `offset`, up to `max_bytes` (but at least one
    /// with `at_least_one_batch`), or `None` when the cache does not reach back to
    /// `offset`.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        at_least_one_batch: bool,
    ) -> Option<Vec<Chunk>> {
        let (first, last) = (self.batches.front()?, self.batches.back()?);
        if offset < first.base_offset || offset >= last.next_offset {
            return None;
        }
        let start = self
            .batches
            .partition_point(|batch| batch.next_offset <= offset);
        let mut chunks = Vec::new();
        let mut total = 0usize;
        for batch in self.batches.range(start..) {
            if (total > 0 || !at_least_one_batch) && total + batch.bytes.len() > max_bytes {
                break;
            }
            total += batch.bytes.len();
            chunks.push(Chunk::Cached(batch.bytes.clone()));
        }
        Some(chunks)
    }

    /// Drops batches at or past `offset` (after a truncation).
    pub fn truncate(&mut self, offset: i64) {
        while self
            .batches
            .back()
            .is_some_and(|batch| batch.next_offset > offset)
        {
            let dropped = self.batches.pop_back().expect("checked");
            self.removed(dropped);
        }
    }

    /// Drops batches that end at or before `offset` (after retention moved the log start).
    pub fn drop_before(&mut self, offset: i64) {
        while self
            .batches
            .front()
            .is_some_and(|batch| batch.next_offset <= offset)
        {
            let dropped = self.batches.pop_front().expect("checked");
            self.removed(dropped);
        }
    }

    pub fn clear(&mut self) {
        while let Some(batch) = self.batches.pop_front() {
            self.removed(batch);
        }
    }
}

impl Drop for TailCache {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(chunks: &[Chunk]) -> Vec<usize> {
        chunks.iter().map(|chunk| chunk.len()).collect()
    }

    #[test]
    fn serves_the_tail_within_budget() {
        let mut cache = TailCache::new(30);
        cache.push(0, 5, Bytes::from(vec![0; 10]));
        cache.push(5, 7, Bytes::from(vec![1; 10]));
        cache.push(7, 9, Bytes::from(vec![2; 10]));
        assert_eq!(
            offsets(&cache.read(0, 100, true).unwrap()),
            vec![10, 10, 10]
        );
        assert_eq!(offsets(&cache.read(6, 100, true).unwrap()), vec![10, 10]);
        assert_eq!(
            offsets(&cache.read(6, 5, true).unwrap()),
            vec![10],
            "at least one batch"
        );
        assert!(
            cache.read(6, 5, false).unwrap().is_empty(),
            "none when asked for no more than max_bytes"
        );
        assert_eq!(offsets(&cache.read(6, 25, false).unwrap()), vec![10, 10]);
        cache.push(9, 10, Bytes::from(vec![3; 10]));
        assert!(cache.read(4, 100, true).is_none(), "evicted");
        assert_eq!(offsets(&cache.read(5, 15, true).unwrap()), vec![10]);
        cache.truncate(7);
        assert_eq!(offsets(&cache.read(5, 100, true).unwrap()), vec![10]);
        cache.drop_before(7);
        assert!(cache.read(5, 100, true).is_none());
        cache.push(7, 8, Bytes::from(vec![0; 31]));
        assert!(
            cache.read(7, 100, true).is_none(),
            "an oversized batch empties the cache"
        );
    }
}
