//! The broker's model of its data: the durable topic metadata every shard copies, the
//! partition-to-shard table, and how storage failures are reported to clients.

pub mod metadata;
pub mod producer_ids;
pub mod view;

use crate::protocol::{ErrorCode, Status};
use crate::storage::StorageError;

/// The answer a client gets for a storage failure: a code it can act on, and the message.
pub fn storage_status(error: &StorageError) -> Status {
    let code = match error {
        StorageError::InvalidBatch(_) => ErrorCode::CorruptBatch,
        StorageError::RecordTooLarge { .. } => ErrorCode::RecordTooLarge,
        StorageError::InvalidTimestamp { .. } => ErrorCode::InvalidTimestamp,
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        StorageError::DiskFull { .. } => ErrorCode::DiskFull,
        StorageError::Closed => ErrorCode::ShuttingDown,
        StorageError::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
        StorageError::InvalidProducerEpoch { .. } => ErrorCode::InvalidProducerEpoch,
        _ => ErrorCode::StorageError,
    };
    Status::error(code, error.to_string())
}
