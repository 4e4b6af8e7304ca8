//! The most recently appended batches of a partition, kept in memory so that consumers at
//! the tail are served with no disk I/O. With O_DIRECT there is no page cache to do this.
//!
//! Invariant: the cached batches are contiguous and end exactly at the log end offset.

use std::collections::VecDeque;

use bytes::Bytes;

use super::Chunk;

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
        self.bytes_total += bytes.len() as u64;
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
            self.bytes_total -= evicted.bytes.len() as u64;
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
            self.bytes_total -= dropped.bytes.len() as u64;
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
            self.bytes_total -= dropped.bytes.len() as u64;
        }
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes_total = 0;
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
