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
//!
//! In a cluster the log of offsets partition `n` is partition `n` of the replicated topic
//! `__consumer_offsets` (`OFFSETS_TOPIC`), and commits go through its leader like an
//! acks=all produce (`OffsetsWriter`); see `coordinator.rs`.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::wire::{Reader, put_string};
use crate::protocol::{ProtocolError, Status};
use crate::record::{BatchBuilder, BatchError, decode_records, split_batches};
use crate::semaphore::{FifoPermit, FifoSemaphore};
use crate::storage::{Log, LogConfig, StorageError};

/// The replicated topic that holds committed offsets in a cluster (Kafka's name): its
/// partition `n` is offsets partition `n`, and its leader coordinates the groups in it.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// How many offsets partitions there are. A group's offsets live in partition
/// `crc32c(group) % OFFSETS_PARTITIONS`, coordinated on a broker on its own by shard
/// `partition % shards`, so any shard count finds them again (in a cluster, by the
/// partition's leader). Changing it would lose every group's offsets.
pub const OFFSETS_PARTITIONS: u32 = 16;

/// Segment size of an offsets log: small, so compaction frees space soon.
const OFFSETS_SEGMENT_BYTES: u64 = 8 << 20;

/// Most bytes of live entries written per batch while compacting.
const SNAPSHOT_BATCH_BYTES: usize = 512 * 1024;

/// Commits hold one unit while they append and apply; compaction and the forgetting of a
/// deleted topic's offsets hold all of them, so they see exactly what the log holds. Turns
/// are first come, first served: a steady stream of commits cannot starve the others.
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

/// The key of one committed offset: a later record with it replaces (or, without a
/// value, deletes) the offset.
fn offset_key(group: &str, topic: &str, partition: u32) -> BytesMut {
    let mut key = BytesMut::new();
    key.put_u8(KIND_OFFSET);
    put_string(&mut key, group);
    put_string(&mut key, topic);
    key.put_u32(partition);
    key
}

impl Entry {
    /// A record's key and value, in the native protocol's encoding (`protocol::wire`).
    pub(crate) fn key_value(&self) -> (BytesMut, Option<BytesMut>) {
        match self {
            Entry::Offset {
                group,
                topic,
                partition,
                committed,
            } => {
                let mut value = BytesMut::with_capacity(18 + committed.metadata.len());
                value.put_i64(committed.offset);
                value.put_i64(committed.commit_ms);
                put_string(&mut value, &committed.metadata);
                (offset_key(group, topic, *partition), Some(value))
            }
            Entry::OffsetDeleted {
                group,
                topic,
                partition,
            } => (offset_key(group, topic, *partition), None),
            Entry::GroupDeleted { group } => {
                let mut key = BytesMut::new();
                key.put_u8(KIND_GROUP);
                put_string(&mut key, group);
                (key, None)
            }
        }
    }

    /// Decodes a stored record. Stored bytes passed their CRC, but one that does not
    /// parse is an error to report, never a panic.
    pub(crate) fn decode(key: Bytes, value: Option<Bytes>) -> Result<Entry, ProtocolError> {
        let mut key = Reader::new(key);
        let kind = key.u8("offsets record kind")?;
        let entry = match (kind, value) {
            (KIND_OFFSET, value) => {
                let (group, topic) = (key.string("group")?, key.string("topic")?);
                let partition = key.u32("partition")?;
                match value {
                    None => Entry::OffsetDeleted {
                        group,
                        topic,
                        partition,
                    },
                    Some(value) => {
                        let mut value = Reader::new(value);
                        let committed = Committed {
                            offset: value.i64("offset")?,
                            commit_ms: value.i64("commit time")?,
                            metadata: value.string("offset metadata")?,
                        };
                        value.finish("offset value")?;
                        Entry::Offset {
                            group,
                            topic,
                            partition,
                            committed,
                        }
                    }
                }
            }
            (KIND_GROUP, None) => Entry::GroupDeleted {
                group: key.string("group")?,
            },
            _ => {
                return Err(ProtocolError::Invalid {
                    what: "offsets record",
                    reason: "unknown kind",
                });
            }
        };
        key.finish("offsets record key")?;
        Ok(entry)
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

/// Where a store's batches go in a cluster: through the replicated `__consumer_offsets`
/// partition this node leads (its epoch stamped, answered once the in-sync replicas hold
/// the batch, as an acks=all produce). The server implements it; a broker on its own
/// appends to its own log instead.
pub trait OffsetsWriter {
    fn append<'a>(
        &'a self,
        partition: u32,
        batch: BytesMut,
    ) -> Pin<Box<dyn Future<Output = Result<(), Status>> + 'a>>;
}

/// The offsets log of one offsets partition.
pub struct OffsetStore {
    log: Log,
    /// In a cluster: the writer, and this store's offsets partition. The log is then the
    /// partition's replica, which the shard owns (and closes).
    replicated: Option<(u32, Rc<dyn OffsetsWriter>)>,
    /// See `TURN_UNITS`.
    turn: Rc<FifoSemaphore>,
    /// The log's size after the last compaction (or at open): the next compaction waits
    /// until the log has grown past twice this, so live state alone never triggers it.
    compacted_bytes: std::cell::Cell<u64>,
}

/// A hold on a store: a commit's appends are applied to memory before its turn is
/// dropped, so whoever takes the exclusive turn next (a compaction, a deleted topic's
/// tombstones) sees memory and log agree.
pub struct Turn(#[allow(dead_code)] FifoPermit);

/// The config of an offsets log: small segments, so compaction frees space soon; every
/// commit fdatasync'ed before it is answered; nothing deleted by age or size.
pub fn offsets_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: OFFSETS_SEGMENT_BYTES,
        retention_ms: None,
        flush_ms: 0,
        tail_cache_bytes: 1 << 20,
        ..LogConfig::default()
    }
}

/// The same config as topic configs, for the replicated `__consumer_offsets` topic.
pub fn offsets_topic_configs() -> Vec<(String, String)> {
    [
        ("segment.bytes", OFFSETS_SEGMENT_BYTES.to_string()),
        ("retention.ms", "-1".to_string()),
        ("flush.ms", "0".to_string()),
        ("tail.cache.bytes", (1u64 << 20).to_string()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect()
}

/// Every group's committed offsets, as the log from its start to its end says.
async fn replay(log: &Log) -> Result<BTreeMap<String, GroupOffsets>, StorageError> {
    let mut groups = BTreeMap::new();
    let mut offset = log.log_start_offset();
    let end = log.log_end_offset();
    while offset < end {
        let outcome = log.read(offset, 1 << 20).await?;
        let bytes = Bytes::from(outcome.to_vec());
        if bytes.is_empty() {
            break;
        }
        replay_batches(&bytes, &mut offset, &mut groups, log.dir()).map_err(|error| {
            StorageError::InconsistentLog {
                path: log.dir().to_path_buf(),
                reason: format!("an offsets batch does not decode: {error}"),
            }
        })?;
    }
    Ok(groups)
}

/// Applies to `groups` the records at or after `*offset` of `bytes`, whole batches read
/// from the offsets log in `dir`, and moves `*offset` past them. A record that does not
/// parse is skipped (and logged); a batch that does not decode is an error.
pub(crate) fn replay_batches(
    bytes: &Bytes,
    offset: &mut i64,
    groups: &mut BTreeMap<String, GroupOffsets>,
    dir: &Path,
) -> Result<(), BatchError> {
    for batch in split_batches(bytes) {
        let (header, range) = batch?;
        let records = decode_records(&bytes.slice(range))?;
        for record in records {
            if record.offset < *offset {
                continue;
            }
            match Entry::decode(record.key.unwrap_or_default(), record.value) {
                Ok(entry) => entry.apply(groups),
                Err(error) => tracing::warn!(
                    dir = %dir.display(),
                    offset = record.offset,
                    %error,
                    "skipping an offsets record that does not parse"
                ),
            }
        }
        *offset = (*offset).max(header.next_offset());
    }
    Ok(())
}

impl OffsetStore {
    /// Opens (creating) the log in `dir` and replays it.
    pub async fn open(
        dir: PathBuf,
    ) -> Result<(OffsetStore, BTreeMap<String, GroupOffsets>), StorageError> {
        let log = Log::open(dir, offsets_log_config()).await?;
        let groups = replay(&log).await?;
        Ok((OffsetStore::new(log, None), groups))
    }

    /// A cluster's store of offsets partition `partition`, over its replica `log`, which
    /// this node has just taken up the leadership of: replays it to its end.
    pub async fn replicated(
        log: Log,
        partition: u32,
        writer: Rc<dyn OffsetsWriter>,
    ) -> Result<(OffsetStore, BTreeMap<String, GroupOffsets>), StorageError> {
        let groups = replay(&log).await?;
        Ok((OffsetStore::new(log, Some((partition, writer))), groups))
    }

    fn new(log: Log, replicated: Option<(u32, Rc<dyn OffsetsWriter>)>) -> OffsetStore {
        OffsetStore {
            compacted_bytes: std::cell::Cell::new(log.size_bytes()),
            log,
            replicated,
            turn: Rc::new(FifoSemaphore::new(TURN_UNITS)),
        }
    }

    /// A commit's turn: many at once, none while an exclusive turn is held or awaited.
    pub async fn turn(&self) -> Turn {
        Turn(
            self.turn
                .acquire(1)
                .await
                .expect("the semaphore is never closed"),
        )
    }

    /// The only turn: every commit admitted before it has applied its offsets, and none
    /// admitted after it starts until it is dropped.
    pub async fn exclusive_turn(&self) -> Turn {
        Turn(
            self.turn
                .acquire(TURN_UNITS)
                .await
                .expect("the semaphore is never closed"),
        )
    }

    /// Appends `entries` as one batch and returns once it is durable (in a cluster: held
    /// by the in-sync replicas).
    pub async fn append(&self, _turn: &Turn, entries: &[Entry]) -> Result<(), Status> {
        if entries.is_empty() {
            return Ok(());
        }
        self.append_batch(encode_batch(entries, crate::clock::now_ms()))
            .await
    }

    async fn append_batch(&self, batch: BytesMut) -> Result<(), Status> {
        match &self.replicated {
            Some((partition, writer)) => writer.append(*partition, batch).await,
            None => self
                .log
                .append(batch)
                .await
                .map(|_| ())
                .map_err(|error| crate::broker::storage_status(&error)),
        }
    }

    /// Whether the log has grown enough since the last compaction to rewrite it.
    pub fn wants_compaction(&self, threshold_bytes: u64) -> bool {
        let size = self.log.size_bytes();
        size > threshold_bytes && size > 2 * self.compacted_bytes.get()
    }

    /// Rewrites the live state and deletes what it replaces. `live` is called once no
    /// commit is between its append and its apply, and must return every live entry.
    pub async fn compact(&self, live: impl FnOnce() -> Vec<Entry>) -> Result<(), Status> {
        let _all = self.exclusive_turn().await;
        let entries = live();
        let outcome = self.rewrite(entries).await;
        // Also after a failure: the next attempt waits until the log has doubled again,
        // instead of rewriting the state at every commit.
        self.compacted_bytes.set(self.log.size_bytes());
        outcome
    }

    /// Appends the live entries again after a roll and deletes the segments before them.
    /// In a cluster the entries go through the replicated partition, and only once they
    /// are held by the in-sync replicas does the leader delete; its followers delete up to
    /// the log start its fetch answers tell them.
    async fn rewrite(&self, entries: Vec<Entry>) -> Result<(), Status> {
        let storage = |error: StorageError| crate::broker::storage_status(&error);
        let before = self.log.size_bytes();
        self.log.roll().await.map_err(storage)?;
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
                self.append_batch(encode_batch(&chunk, now_ms)).await?;
                chunk.clear();
                chunk_bytes = 0;
            }
        }
        if !chunk.is_empty() {
            self.append_batch(encode_batch(&chunk, now_ms)).await?;
        }
        let log_start = self.log.delete_before(start).await.map_err(storage)?;
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

    /// Closes a broker's own log; a cluster's replica stays open with its shard.
    pub async fn close(&self) {
        if self.replicated.is_some() {
            return;
        }
        if let Err(error) = self.log.close().await {
            tracing::warn!(%error, dir = %self.log.dir().display(), "closing an offsets log");
        }
    }
}
