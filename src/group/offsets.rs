//! Committed offsets, kept durably in an internal log per offsets partition
//! (`<data dir>/groups/offsets-<n>/`, a storage `Log` with `flush.ms=0`: a commit is
//! acknowledged once fdatasync'ed, and concurrent commits share one sync).
//!
//! Each commit is one record batch: one record per partition, keyed by (group, topic,
//! partition), whose value is the offset; a group's deletion is one record keyed by the
//! group with no value. Replaying the log from its start, later records win.
//!
//! The log is compacted by rewriting: once it has grown past a threshold, the live
//! entries are appended again after a roll, and the segments before them are deleted.
//! A crash between the two leaves both copies, and replay gives the same state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use glommio::sync::Semaphore;

use crate::record::{BatchBuilder, decode_records, split_batches};
use crate::storage::{Log, LogConfig, StorageError};

/// How many offsets partitions there are. A group's offsets live in partition
/// `crc32c(group) % OFFSETS_PARTITIONS`, coordinated by shard `partition % shards`, so
/// any shard count finds them again. Changing it would lose every group's offsets.
pub const OFFSETS_PARTITIONS: u32 = 16;

/// Segment size of an offsets log: small, so compaction frees space soon.
const OFFSETS_SEGMENT_BYTES: u64 = 8 << 20;

/// Most bytes of live entries written per batch while compacting.
const SNAPSHOT_BATCH_BYTES: usize = 512 * 1024;

/// Commits hold one unit while they append and apply; compaction holds all of them, so
/// the state it writes is exactly what the log holds before it.
const TURN_UNITS: u64 = 1 << 30;

pub fn offsets_partition(group_id: &str) -> u32 {
    crc32c::crc32c(group_id.as_bytes()) % OFFSETS_PARTITIONS
}

/// The shard that coordinates `group_id`.
pub fn coordinator_shard(group_id: &str, shards: usize) -> usize {
    offsets_partition(group_id) as usize % shards
}

pub fn offsets_dir(data_dir: &Path, partition: u32) -> PathBuf {
    data_dir.join("groups").join(format!("offsets-{partition}"))
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub metadata: String,
    pub commit_ms: i64,
}

/// Every committed offset of one group, by (topic, partition).
pub type GroupOffsets = BTreeMap<(String, u32), Committed>;

/// One change to the committed offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Offset {
        group: String,
        topic: String,
        partition: u32,
        committed: Committed,
    },
    /// One offset is gone (its topic was deleted).
    OffsetDeleted {
        group: String,
        topic: String,
        partition: u32,
    },
    /// The group and all its offsets are gone.
    GroupDeleted { group: String },
}

const KIND_OFFSET: u8 = 0;
const KIND_GROUP: u8 = 1;

fn put_str(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value.as_bytes());
}

/// A bounds-checked reader over a stored key or value: stored bytes passed their CRC, but
/// a record that does not parse is reported, never a panic.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, count: usize) -> Option<&[u8]> {
        if self.0.len() < count {
            return None;
        }
        let (head, rest) = self.0.split_at(count);
        self.0 = rest;
        Some(head)
    }

    fn string(&mut self) -> Option<String> {
        let length = u16::from_be_bytes(self.take(2)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(length)?.to_vec()).ok()
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// The key of one committed offset: a later record with it replaces (or, without a
/// value, deletes) the offset.
fn offset_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut key = vec![KIND_OFFSET];
    put_str(&mut key, group);
    put_str(&mut key, topic);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

impl Entry {
    fn key_value(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        match self {
            Entry::Offset {
                group,
                topic,
                partition,
                committed,
            } => {
                let key = offset_key(group, topic, *partition);
                let mut value = Vec::with_capacity(18 + committed.metadata.len());
                value.extend_from_slice(&committed.offset.to_be_bytes());
                value.extend_from_slice(&committed.commit_ms.to_be_bytes());
                put_str(&mut value, &committed.metadata);
                (key, Some(value))
            }
            Entry::OffsetDeleted {
                group,
                topic,
                partition,
            } => (offset_key(group, topic, *partition), None),
            Entry::GroupDeleted { group } => {
                let mut key = vec![KIND_GROUP];
                put_str(&mut key, group);
                (key, None)
            }
        }
    }

    fn decode(key: &[u8], value: Option<&[u8]>) -> Option<Entry> {
        let (&kind, key) = key.split_first()?;
        let mut key = Cursor(key);
        let entry = match (kind, value) {
            (KIND_OFFSET, Some(value)) => {
                let mut value = Cursor(value);
                Entry::Offset {
                    group: key.string()?,
                    topic: key.string()?,
                    partition: key.u32()?,
                    committed: Committed {
                        offset: value.i64()?,
                        commit_ms: value.i64()?,
                        metadata: value.string()?,
                    },
                }
            }
            (KIND_OFFSET, None) => Entry::OffsetDeleted {
                group: key.string()?,
                topic: key.string()?,
                partition: key.u32()?,
            },
            (KIND_GROUP, None) => Entry::GroupDeleted {
                group: key.string()?,
            },
            _ => return None,
        };
        Some(entry)
    }

    /// Applies this change to `groups`.
    pub fn apply(self, groups: &mut BTreeMap<String, GroupOffsets>) {
        match self {
            Entry::Offset {
                group,
                topic,
                partition,
                committed,
            } => {
                groups
                    .entry(group)
                    .or_default()
                    .insert((topic, partition), committed);
            }
            Entry::OffsetDeleted {
                group,
                topic,
                partition,
            } => {
                if let Some(offsets) = groups.get_mut(&group) {
                    offsets.remove(&(topic, partition));
                    if offsets.is_empty() {
                        groups.remove(&group);
                    }
                }
            }
            Entry::GroupDeleted { group } => {
                groups.remove(&group);
            }
        }
    }
}

fn encode_batch(entries: &[Entry], now_ms: i64) -> BytesMut {
    let mut builder = BatchBuilder::new();
    for entry in entries {
        let (key, value) = entry.key_value();
        builder.push(now_ms, Some(&key), value.as_deref(), &[]);
    }
    BytesMut::from(builder.build(0))
}

/// The offsets log of one offsets partition.
pub struct OffsetStore {
    log: Log,
    /// See `TURN_UNITS`.
    turn: Semaphore,
    /// The log's size after the last compaction (or at open): the next compaction waits
    /// until the log has grown past twice this, so live state alone never triggers it.
    compacted_bytes: std::cell::Cell<u64>,
    /// Set while a compaction waits for its turn: new commits wait behind it (the
    /// semaphore alone would let a steady stream of commits starve it).
    compaction_waiting: std::cell::Cell<bool>,
    turns_open: crate::wake::Event,
}

/// A commit's hold on its store: appends made under it are applied to memory before it
/// is dropped, so a compaction never writes state older than the log.
pub struct Turn<'a>(#[allow(dead_code)] glommio::sync::Permit<'a>);

impl OffsetStore {
    /// Opens (creating) the log in `dir` and replays it.
    pub async fn open(
        dir: PathBuf,
    ) -> Result<(OffsetStore, BTreeMap<String, GroupOffsets>), StorageError> {
        let config = LogConfig {
            segment_bytes: OFFSETS_SEGMENT_BYTES,
            retention_ms: None,
            flush_ms: 0,
            tail_cache_bytes: 1 << 20,
            ..LogConfig::default()
        };
        let log = Log::open(dir, config).await?;
        let mut groups = BTreeMap::new();
        let mut offset = log.log_start_offset();
        let end = log.log_end_offset();
        while offset < end {
            let outcome = log.read(offset, 1 << 20).await?;
            let bytes = Bytes::from(outcome.to_vec());
            if bytes.is_empty() {
                break;
            }
            for batch in split_batches(&bytes) {
                let corrupt = |error: crate::record::BatchError| StorageError::InconsistentLog {
                    path: log.dir().to_path_buf(),
                    reason: format!("an offsets batch does not decode: {error}"),
                };
                let (header, range) = batch.map_err(corrupt)?;
                let records = decode_records(&bytes.slice(range)).map_err(corrupt)?;
                for record in records {
                    if record.offset < offset {
                        continue;
                    }
                    let key = record.key.as_deref().unwrap_or_default();
                    match Entry::decode(key, record.value.as_deref()) {
                        Some(entry) => entry.apply(&mut groups),
                        None => tracing::warn!(
                            dir = %log.dir().display(),
                            offset = record.offset,
                            "skipping an offsets record that does not parse"
                        ),
                    }
                }
                offset = offset.max(header.next_offset());
            }
        }
        let store = OffsetStore {
            compacted_bytes: std::cell::Cell::new(log.size_bytes()),
            log,
            turn: Semaphore::new(TURN_UNITS),
            compaction_waiting: std::cell::Cell::new(false),
            turns_open: crate::wake::Event::default(),
        };
        Ok((store, groups))
    }

    /// A commit's turn: many at once, none during a compaction.
    pub async fn turn(&self) -> Turn<'_> {
        self.turns_open
            .wait_until(|| !self.compaction_waiting.get())
            .await;
        Turn(
            self.turn
                .acquire_permit(1)
                .await
                .expect("the semaphore is never closed"),
        )
    }

    /// Appends `entries` as one batch and returns once it is durable.
    pub async fn append(&self, _turn: &Turn<'_>, entries: &[Entry]) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.log
            .append(encode_batch(entries, crate::clock::now_ms()))
            .await
            .map(|_| ())
    }

    /// Whether the log has grown enough since the last compaction to rewrite it.
    pub fn wants_compaction(&self, threshold_bytes: u64) -> bool {
        let size = self.log.size_bytes();
        size > threshold_bytes && size > 2 * self.compacted_bytes.get()
    }

    /// Rewrites the live state and deletes what it replaces. `live` is called once no
    /// commit is between its append and its apply, and must return every live entry.
    pub async fn compact(&self, live: impl FnOnce() -> Vec<Entry>) -> Result<(), StorageError> {
        self.compaction_waiting.set(true);
        let _all = self
            .turn
            .acquire_permit(TURN_UNITS)
            .await
            .expect("the semaphore is never closed");
        self.compaction_waiting.set(false);
        self.turns_open.notify_all();
        let entries = live();
        let outcome = self.rewrite(entries).await;
        // Also after a failure: the next attempt waits until the log has doubled again,
        // instead of rewriting the state at every commit.
        self.compacted_bytes.set(self.log.size_bytes());
        outcome
    }

    async fn rewrite(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let before = self.log.size_bytes();
        self.log.roll().await?;
        let start = self.log.log_end_offset();
        let now_ms = crate::clock::now_ms();
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0;
        for entry in entries {
            chunk_bytes += 64
                + match &entry {
                    Entry::Offset {
                        group,
                        topic,
                        committed,
                        ..
                    } => group.len() + topic.len() + committed.metadata.len(),
                    Entry::OffsetDeleted { group, topic, .. } => group.len() + topic.len(),
                    Entry::GroupDeleted { group } => group.len(),
                };
            chunk.push(entry);
            if chunk_bytes >= SNAPSHOT_BATCH_BYTES {
                self.log.append(encode_batch(&chunk, now_ms)).await?;
                chunk.clear();
                chunk_bytes = 0;
            }
        }
        if !chunk.is_empty() {
            self.log.append(encode_batch(&chunk, now_ms)).await?;
        }
        let log_start = self.log.delete_before(start).await?;
        tracing::info!(
            dir = %self.log.dir().display(),
            before,
            after = self.log.size_bytes(),
            log_start,
            "compacted the offsets log"
        );
        Ok(())
    }

    pub fn size_bytes(&self) -> u64 {
        self.log.size_bytes()
    }

    pub async fn close(&self) {
        if let Err(error) = self.log.close().await {
            tracing::warn!(%error, dir = %self.log.dir().display(), "closing an offsets log");
        }
    }
}
