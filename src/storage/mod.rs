//! The partition log: an append-only sequence of segments on local disk, written with
//! direct I/O through glommio.
//!
//! `storage` knows nothing of the network. A [`Log`] lives on one glommio executor (it is
//! `!Send`); one appender task per log owns the active segment's writes and applies every
//! change (append, roll, truncate, retention, `delete_before`) in order, so nothing else
//! mutates a segment.
//!
//! File layout of a partition directory:
//!
//! ```text
//! 00000000000000000000.log        sealed segment: whole batches, exact size
//! 00000000000000000000.index      sparse offset index (sealed segments only)
//! 00000000000000000000.timeindex  time index (sealed segments only)
//! 00000000000000001234.log        active segment: whole batches, then zeros (padding to
//!                                 4 KiB, and space allocated ahead; cut at close)
//! ```

mod appender;
mod clean;
mod config;
mod files;
mod index;
mod io;
mod log;
mod producers;
mod rounds;
mod segment;
mod tail_cache;

use std::path::PathBuf;
use std::rc::Rc;

pub use appender::AppendOrigin;
pub use config::{LOG_CONFIG_KEYS, LogConfig};
pub use files::{SEGMENT_FILES_MAX_DEFAULT, SegmentFiles, segment_files, set_segment_files_max};
pub use io::{DirectoryLock, faults};
pub use log::{AppendInfo, Log, LogStats, ReadOutcome, RetentionReport, SegmentInfo};
pub use rounds::round_counts;
pub use tail_cache::{CacheUsage, set_read_ahead_budget, set_shard_budget, shard_usage};
// Recovery's pure parts, which the fuzz targets (`crate::fuzzing`) drive.
pub(crate) use index::{
    SegmentSummary, decode_offset_index, decode_time_index, encode_offset_index, encode_time_index,
};
pub(crate) use segment::{ScanStop, SegmentMeta, scan_bytes};
pub(crate) use {clean::decode as decode_clean, clean::encode as encode_clean};

use crate::record::BatchError;

/// Every way a storage operation can fail. Each message says what the user can do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("append of {bytes} bytes is larger than the limit of {max} bytes")]
    RecordTooLarge { bytes: usize, max: usize },
    #[error(
        "record timestamp {timestamp} is more than {limit_ms} ms {direction} the broker's clock ({now_ms}): correct the producer's timestamps or clock, or raise the topic's {key}"
    )]
    InvalidTimestamp {
        timestamp: i64,
        now_ms: i64,
        /// "ahead of" or "behind".
        direction: &'static str,
        /// The topic config that refused it.
        key: &'static str,
        limit_ms: u64,
    },
    #[error(
        "offset {offset} is out of range: the log holds offsets {log_start} to {log_end} (exclusive)"
    )]
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    #[error("disk full writing {}: free space; the log is unchanged and appends can be retried", path.display())]
    DiskFull { path: PathBuf },
    #[error("I/O error during {operation} on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        operation: &'static str,
        #[source]
        source: Rc<std::io::Error>,
    },
    #[error("corrupt segment {} at byte {position}: {reason}", path.display())]
    CorruptSegment {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("partition directory {} is inconsistent: {reason}", path.display())]
    InconsistentLog { path: PathBuf, reason: String },
    #[error("invalid config {key}={value}: {reason}")]
    InvalidConfig {
        key: String,
        value: String,
        reason: String,
    },
    #[error("direct-I/O self-test failed on {}: {reason}", path.display())]
    SelfTest { path: PathBuf, reason: String },
    #[error("directory {} is in use (locked by another Spate log or broker, in this or another process)", path.display())]
    Locked { path: PathBuf },
    #[error(
        "producer {producer_id} sent sequence {found} where {expected} was expected: a batch before it is missing"
    )]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        found: i32,
    },
    #[error(
        "producer {producer_id} epoch {epoch} is older than epoch {current}, which the partition has seen: this producer was fenced"
    )]
    InvalidProducerEpoch {
        producer_id: i64,
        epoch: i16,
        current: i16,
    },
    #[error(
        "a replica append starts at offset {found}, but the log ends at {expected}: fetch from the log end"
    )]
    ReplicaOffsetMismatch { expected: i64, found: i64 },
    #[error("the partition log is closed")]
    Closed,
    #[error(
        "the partition refuses writes after a failure ({reason}) until it is reopened: restart the broker to recover it from disk"
    )]
    LogFailed { reason: String },
    #[error("internal error: {reason}")]
    Internal { reason: String },
}

/// A piece of a read: bytes of whole batches, either shared from the tail cache or a view
/// of the buffer the disk read DMA'd into. Neither is a copy of the payload.
#[derive(Debug, Clone)]
pub enum Chunk {
    Cached(bytes::Bytes),
    Disk(glommio::io::ReadResult),
}

impl std::ops::Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Chunk::Cached(bytes) => bytes,
            Chunk::Disk(read) => read,
        }
    }
}
