//! Idempotent producers: per producer id, the epoch and the sequence ranges of its last
//! `PRODUCER_BATCHES_KEPT` batches in this partition, so that a retried batch is answered
//! with its original offsets instead of being stored twice, and a gap is refused.
//!
//! The appender checks batches against the table before writing and records them after
//! they are written; `Log::open` rebuilds the table from the active segment's batch
//! headers (its recovery scan reads them anyway). A batch without a producer id or
//! sequence (-1, as native clients and non-idempotent Kafka producers send) is not
//! tracked.

use std::collections::{HashMap, VecDeque};

use super::StorageError;
use crate::limits::PRODUCER_BATCHES_KEPT;
use crate::record::BatchHeader;

/// Where one stored batch of a producer sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stored {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: i64,
    last_offset: i64,
}

#[derive(Debug, Clone, Default)]
struct Producer {
    epoch: i16,
    /// Oldest first.
    batches: VecDeque<Stored>,
}

/// What the table says of a batch about to be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not tracked, or the next in its producer's sequence: write it.
    Write,
    /// Already stored at these offsets: answer with them, write nothing.
    Duplicate { base_offset: i64, last_offset: i64 },
}

/// The epoch and last sequence a producer will have once the batches of the group being
/// built are written (checked before any of them is recorded).
pub(crate) type Pending = HashMap<i64, (i16, i32)>;

#[derive(Debug, Clone, Default)]
pub(crate) struct ProducerTable {
    producers: HashMap<i64, Producer>,
}

/// Whether a batch carries an idempotent producer's id and sequence.
pub(crate) fn is_idempotent(header: &BatchHeader) -> bool {
    header.producer_id >= 0 && header.base_sequence >= 0
}

/// Sequence numbers wrap from `i32::MAX` to 0, as in Kafka.
fn sequence_after(sequence: i32, steps: i32) -> i32 {
    ((i64::from(sequence) + i64::from(steps)) % (i64::from(i32::MAX) + 1)) as i32
}

fn last_sequence(header: &BatchHeader) -> i32 {
    sequence_after(header.base_sequence, header.last_offset_delta)
}

impl ProducerTable {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Checks a batch of an idempotent producer against what is stored and what `pending`
    /// (the group being built) will store, and notes it in `pending` when it is to be
    /// written.
    pub fn check(
        &self,
        header: &BatchHeader,
        pending: &mut Pending,
    ) -> Result<Verdict, StorageError> {
        if !is_idempotent(header) {
            return Ok(Verdict::Write);
        }
        let producer_id = header.producer_id;
        let epoch = header.producer_epoch;
        let first = header.base_sequence;
        let last = last_sequence(header);
        let stored = self.producers.get(&producer_id);
        if let Some(producer) = stored
            && producer.epoch == epoch
            && let Some(batch) = producer
                .batches
                .iter()
                .find(|batch| batch.first_sequence == first && batch.last_sequence == last)
        {
            return Ok(Verdict::Duplicate {
                base_offset: batch.base_offset,
                last_offset: batch.last_offset,
            });
        }
        let known = pending.get(&producer_id).copied().or_else(|| {
            stored.and_then(|producer| {
                let last = producer.batches.back()?.last_sequence;
                Some((producer.epoch, last))
            })
        });
        if let Some((current, last_written)) = known {
            if epoch < current {
                return Err(StorageError::InvalidProducerEpoch {
                    producer_id,
                    epoch,
                    current,
                });
            }
            // A new epoch starts its sequence again at 0.
            let expected = if epoch > current {
                0
            } else {
                sequence_after(last_written, 1)
            };
            if first != expected {
                return Err(StorageError::OutOfOrderSequence {
                    producer_id,
                    expected,
                    found: first,
                });
            }
        }
        // A producer the partition has no record of (new, or its batches were removed by
        // retention or written before the last restart's active segment) starts anywhere.
        pending.insert(producer_id, (epoch, last));
        Ok(Verdict::Write)
    }

    /// The sequence `producer_id`'s next batch must start at, if the partition knows it.
    pub fn next_sequence(&self, producer_id: i64) -> Option<i32> {
        let last = self
            .producers
            .get(&producer_id)?
            .batches
            .back()?
            .last_sequence;
        Some(sequence_after(last, 1))
    }

    /// Records a written batch (its base offset assigned).
    pub fn record(&mut self, header: &BatchHeader) {
        if !is_idempotent(header) {
            return;
        }
        let producer = self.producers.entry(header.producer_id).or_default();
        if header.producer_epoch != producer.epoch {
            producer.epoch = header.producer_epoch;
            producer.batches.clear();
        }
        if producer.batches.len() == PRODUCER_BATCHES_KEPT {
            producer.batches.pop_front();
        }
        producer.batches.push_back(Stored {
            first_sequence: header.base_sequence,
            last_sequence: last_sequence(header),
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
        });
    }

    /// The table as bytes (little-endian): per producer its id, epoch and batches.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.producers.len() as u32).to_le_bytes());
        for (id, producer) in &self.producers {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&producer.epoch.to_le_bytes());
            out.push(producer.batches.len() as u8);
            for batch in &producer.batches {
                out.extend_from_slice(&batch.first_sequence.to_le_bytes());
                out.extend_from_slice(&batch.last_sequence.to_le_bytes());
                out.extend_from_slice(&batch.base_offset.to_le_bytes());
                out.extend_from_slice(&batch.last_offset.to_le_bytes());
            }
        }
    }

    /// The table `encode` wrote, if `bytes` hold exactly one.
    pub fn decode(bytes: &[u8]) -> Option<ProducerTable> {
        fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            let (head, rest) = bytes.split_at_checked(n)?;
            *bytes = rest;
            Some(head)
        }
        fn array<const N: usize>(bytes: &mut &[u8]) -> Option<[u8; N]> {
            take(bytes, N)?.try_into().ok()
        }
        let mut bytes = bytes;
        let count = u32::from_le_bytes(array(&mut bytes)?);
        let mut table = ProducerTable::default();
        for _ in 0..count {
            let id = i64::from_le_bytes(array(&mut bytes)?);
            let epoch = i16::from_le_bytes(array(&mut bytes)?);
            let kept = usize::from(take(&mut bytes, 1)?[0]);
            if kept > PRODUCER_BATCHES_KEPT {
                return None;
            }
            let mut batches = VecDeque::with_capacity(kept);
            for _ in 0..kept {
                batches.push_back(Stored {
                    first_sequence: i32::from_le_bytes(array(&mut bytes)?),
                    last_sequence: i32::from_le_bytes(array(&mut bytes)?),
                    base_offset: i64::from_le_bytes(array(&mut bytes)?),
                    last_offset: i64::from_le_bytes(array(&mut bytes)?),
                });
            }
            table.producers.insert(id, Producer { epoch, batches });
        }
        bytes.is_empty().then_some(table)
    }

    /// Forgets batches at or after `offset` (the log was cut back there).
    pub fn truncate(&mut self, offset: i64) {
        for producer in self.producers.values_mut() {
            producer.batches.retain(|batch| batch.base_offset < offset);
        }
        self.producers
            .retain(|_, producer| !producer.batches.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(
        producer_id: i64,
        epoch: i16,
        sequence: i32,
        records: i32,
        base_offset: i64,
    ) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 0,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id,
            producer_epoch: epoch,
            base_sequence: sequence,
            records_count: records,
        }
    }

    fn write(table: &mut ProducerTable, header: BatchHeader) -> Result<Verdict, StorageError> {
        let verdict = table.check(&header, &mut Pending::new())?;
        if verdict == Verdict::Write {
            table.record(&header);
        }
        Ok(verdict)
    }

    #[test]
    fn retries_of_the_last_five_batches_are_duplicates_and_gaps_are_refused() {
        let mut table = ProducerTable::default();
        for i in 0..7 {
            assert_eq!(
                write(&mut table, batch(9, 0, i * 3, 3, 100 + i64::from(i) * 3)).unwrap(),
                Verdict::Write
            );
        }
        // Batches 2..=6 are remembered; batch 6 starts at sequence 18, offset 118.
        assert_eq!(
            write(&mut table, batch(9, 0, 18, 3, -1)).unwrap(),
            Verdict::Duplicate {
                base_offset: 118,
                last_offset: 120
            }
        );
        assert_eq!(
            write(&mut table, batch(9, 0, 6, 3, -1)).unwrap(),
            Verdict::Duplicate {
                base_offset: 106,
                last_offset: 108
            }
        );
        // Batch 0 is forgotten: its retry is out of order, as is a gap.
        assert!(matches!(
            write(&mut table, batch(9, 0, 0, 3, -1)),
            Err(StorageError::OutOfOrderSequence {
                expected: 21,
                found: 0,
                ..
            })
        ));
        assert!(matches!(
            write(&mut table, batch(9, 0, 22, 1, -1)),
            Err(StorageError::OutOfOrderSequence { .. })
        ));
        assert_eq!(
            write(&mut table, batch(9, 0, 21, 1, 121)).unwrap(),
            Verdict::Write
        );
        // What a request mixing a retry and a new batch is told to start at.
        assert_eq!(table.next_sequence(9), Some(22));
        assert_eq!(table.next_sequence(77), None);
        // A new epoch restarts at 0; then the old one is fenced.
        assert!(matches!(
            write(&mut table, batch(9, 1, 5, 1, -1)),
            Err(StorageError::OutOfOrderSequence { expected: 0, .. })
        ));
        assert_eq!(
            write(&mut table, batch(9, 1, 0, 1, 122)).unwrap(),
            Verdict::Write
        );
        assert!(matches!(
            write(&mut table, batch(9, 0, 22, 1, -1)),
            Err(StorageError::InvalidProducerEpoch { current: 1, .. })
        ));
        // Untracked batches and other producers are independent.
        assert_eq!(
            write(&mut table, batch(-1, -1, -1, 4, 123)).unwrap(),
            Verdict::Write
        );
        assert_eq!(
            write(&mut table, batch(10, 0, 77, 1, 127)).unwrap(),
            Verdict::Write
        );
    }

    #[test]
    fn pending_batches_of_one_group_follow_each_other_and_sequences_wrap() {
        let table = ProducerTable::default();
        let mut pending = Pending::new();
        assert_eq!(
            table
                .check(&batch(1, 0, i32::MAX - 1, 2, 0), &mut pending)
                .unwrap(),
            Verdict::Write
        );
        assert_eq!(
            table.check(&batch(1, 0, 0, 1, 2), &mut pending).unwrap(),
            Verdict::Write
        );
        assert!(table.check(&batch(1, 0, 0, 1, 3), &mut pending).is_err());
    }

    #[test]
    fn the_table_survives_encoding() {
        let mut table = ProducerTable::default();
        for i in 0..8 {
            write(&mut table, batch(4, 1, i * 2, 2, 10 + i64::from(i) * 2)).unwrap();
        }
        write(&mut table, batch(5, 0, 0, 1, 40)).unwrap();
        let mut bytes = Vec::new();
        table.encode(&mut bytes);
        let decoded = ProducerTable::decode(&bytes).expect("decodes");
        assert_eq!(decoded.next_sequence(4), Some(16));
        assert_eq!(
            write(&mut decoded.clone(), batch(4, 1, 14, 2, -1)).unwrap(),
            Verdict::Duplicate {
                base_offset: 24,
                last_offset: 25
            }
        );
        assert_eq!(decoded.next_sequence(5), Some(1));
        assert!(ProducerTable::decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(ProducerTable::decode(&[bytes.as_slice(), &[0]].concat()).is_none());
    }

    #[test]
    fn truncation_forgets_the_batches_cut_off() {
        let mut table = ProducerTable::default();
        write(&mut table, batch(4, 0, 0, 1, 10)).unwrap();
        write(&mut table, batch(4, 0, 1, 1, 11)).unwrap();
        table.truncate(11);
        assert!(matches!(
            write(&mut table, batch(4, 0, 1, 1, 11)).unwrap(),
            Verdict::Write
        ));
        table.truncate(0);
        assert!(table.is_empty());
    }
}
