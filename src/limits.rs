//! Every bound Spate enforces, in one place, with compile-time checks of how they relate.
//!
//! Names carry their unit last (`_bytes`, `_count`, `_ms`). A limit that a user can change
//! per topic lives in `storage::LogConfig`; what is here is either fixed by the format or
//! a ceiling that configuration cannot exceed.

/// Size of the fixed RecordBatch v2 header, from base offset to record count.
pub const BATCH_HEADER_BYTES: usize = 61;

/// Bytes of the header that precede the `batch_length` field's coverage
/// (base offset and the length field itself).
pub const BATCH_LOG_OVERHEAD_BYTES: usize = 12;

/// The largest record batch the log accepts (Kafka's `message.max.bytes` is about 1 MiB
/// by default; Spate allows more for throughput benchmarks, bounded by the frame limit).
pub const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// The most records one batch may declare; bounds the work of validating a batch.
pub const BATCH_RECORDS_MAX: usize = 1 << 20;
/// Largest records section a compressed batch may decompress to (the broker decompresses
/// a batch to check it; a small zstd frame can claim gigabytes).
/// Batches per idempotent producer and partition whose sequence numbers a log remembers:
/// a retry of any of them is answered with its first offsets instead of being stored
/// twice (Kafka's producers keep at most five requests in flight per partition).
pub const PRODUCER_BATCHES_KEPT: usize = 5;
pub const DECOMPRESSED_BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Direct-I/O alignment used for every write position and length. The device here reports
/// 512; 4096 is safe on every device Spate targets.
pub const IO_ALIGNMENT_BYTES: usize = 4096;

/// Largest single write the appender issues for one group commit. Appends waiting beyond
/// this are taken by the next group.
pub const GROUP_WRITE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// A group write larger than this goes to the device as several writes of at most this
/// size, submitted together: the disk here moves 2 MiB about a third faster as four
/// concurrent 512 KiB writes than as one (fio, O_DIRECT: 1876 vs 2497 MB/s).
pub const WRITE_CHUNK_BYTES: usize = 512 * 1024;

/// Bytes of appends that may wait for one partition's appender before `append` blocks.
pub const PENDING_APPEND_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Largest segment a partition may be configured with: index entries store positions
/// relative to the segment start as `u32`.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;

/// Smallest segment size accepted from configuration (one batch must always fit).
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;

/// Window read from disk at a time while scanning a segment (recovery, index rebuild).
pub const SCAN_WINDOW_BYTES: usize = 1024 * 1024;

/// Most a partition reads ahead for its sequential reader (one read ahead per partition).
pub const READ_AHEAD_BYTES_MAX: usize = 4 * 1024 * 1024;

const _: () = assert!(BATCH_BYTES_MAX <= GROUP_WRITE_BYTES_MAX);
const _: () = assert!(GROUP_WRITE_BYTES_MAX <= PENDING_APPEND_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX as u64 <= SEGMENT_BYTES_MAX);
const _: () = assert!(SCAN_WINDOW_BYTES.is_multiple_of(IO_ALIGNMENT_BYTES));
const _: () = assert!(WRITE_CHUNK_BYTES.is_multiple_of(IO_ALIGNMENT_BYTES));
const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(IO_ALIGNMENT_BYTES as u64));
const _: () = assert!(BATCH_HEADER_BYTES > BATCH_LOG_OVERHEAD_BYTES);

/// Longest group id, member id, client id or assignor name a group request may carry.
pub const GROUP_NAME_BYTES_MAX: usize = 255;

/// Most bytes of free text a committed offset may carry (Kafka's
/// `offset.metadata.max.bytes`).
pub const OFFSET_METADATA_BYTES_MAX: usize = 4096;

/// Most members one group may have (Kafka's `group.max.size`), and most topics one member
/// may subscribe to.
pub const GROUP_MEMBERS_MAX: usize = 1000;
pub const GROUP_TOPICS_MAX: usize = 1000;

/// Producer ids reserved at a time (`broker::producer_ids`): one durable write per this
/// many InitProducerId requests; a restart skips what was left of the block.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

/// Most partition entries one fetch may name.
pub const FETCH_PARTITIONS_MAX: usize = 1000;

/// Most entries one request may carry, counting the elements of every array in it at
/// every level (topics, partitions, names, configs...). What a request makes a shard build
/// grows with its entries, not only with its bytes: a few bytes of frame can name a
/// topic whose answer is a thousand partitions, or start a task. This bounds that work;
/// a request over it is refused whole, before anything is built for it. One topic of the
/// most partitions a topic may have fits twice over.
pub const REQUEST_ENTRIES_MAX: usize = 20_000;

/// What one entry of a request is counted at in its connection's byte budget, besides
/// the frame's bytes: the decoded entry, its answer (a status whose message is at most
/// `protocol::STATUS_MESSAGE_BYTES_MAX`), and its share of the tasks serving it. With
/// this the budget bounds what a connection's requests hold, not just their frames.
pub const REQUEST_ENTRY_WEIGHT_BYTES: usize = 2048;

const _: () = assert!(FETCH_PARTITIONS_MAX <= REQUEST_ENTRIES_MAX);
const _: () =
    assert!(2 * crate::broker::metadata::TOPIC_PARTITIONS_MAX as usize <= REQUEST_ENTRIES_MAX);
const _: () = assert!(crate::protocol::STATUS_MESSAGE_BYTES_MAX < REQUEST_ENTRY_WEIGHT_BYTES);

/// Longest rebalance timeout a member may ask for: a join is answered within it, and it
/// stays below the Rust client's 65 s answer timeout.
pub const GROUP_REBALANCE_TIMEOUT_MAX_MS: u32 = 60_000;
