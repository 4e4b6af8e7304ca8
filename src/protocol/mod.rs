//! Spate's native binary protocol: frames and messages. Pure code shared by the server
//! and the client: no I/O, no async. docs/PROTOCOL.md is the specification; this module
//! is its one implementation.
//!
//! Every decoder treats its input as hostile: a frame length is checked against the frame
//! limit before anything is allocated, array counts are checked against the bytes that
//! follow, a body with bytes left over is an error, and nothing panics.

mod frame;
mod groups;
mod messages;
#[cfg(test)]
mod tests;
pub mod wire;

pub use frame::{
    REQUEST_HEADER_BYTES, RESPONSE_HEADER_BYTES, RequestHeader, decode_request_header, split_frame,
};
pub use groups::*;
pub use messages::*;

/// Default largest frame (request or response) a peer accepts, length field excluded.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024;

/// Why bytes could not be decoded. Connection-level: the peer gets `InvalidRequest` (or the
/// connection is closed when the frame itself is unusable).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {length} bytes is larger than the limit of {max} bytes")]
    FrameTooLarge { length: usize, max: usize },
    #[error("{what}: {needed} bytes needed, {available} available")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("{what}: {reason}")]
    Invalid {
        what: &'static str,
        reason: &'static str,
    },
    #[error(
        "{what}: a request may carry at most {max} entries in all (topics, partitions, names); split it"
    )]
    TooManyEntries { what: &'static str, max: usize },
    #[error("{what}: {count} unexpected bytes after the message")]
    TrailingBytes { what: &'static str, count: usize },
    #[error("unknown request kind {0}")]
    UnknownApiKey(u16),
    #[error("unknown error code {0}")]
    UnknownErrorCode(u16),
}

/// Request kinds. The numbers are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKey {
    ApiVersions = 0,
    Metadata = 1,
    CreateTopics = 2,
    DeleteTopics = 3,
    DescribeTopics = 4,
    Produce = 5,
    Fetch = 6,
    ListOffsets = 7,
    JoinGroup = 8,
    SyncGroup = 9,
    Heartbeat = 10,
    LeaveGroup = 11,
    OffsetCommit = 12,
    OffsetFetch = 13,
    ListGroups = 14,
    DescribeGroup = 15,
    DeleteGroup = 16,
    DescribeBroker = 17,
    CreatePartitions = 18,
    ClusterRpc = 19,
    DescribeCluster = 20,
    ReplicaFetch = 21,
}

impl ApiKey {
    pub const ALL: [ApiKey; 22] = [
        ApiKey::ApiVersions,
        ApiKey::Metadata,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::DescribeTopics,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::JoinGroup,
        ApiKey::SyncGroup,
        ApiKey::Heartbeat,
        ApiKey::LeaveGroup,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::ListGroups,
        ApiKey::DescribeGroup,
        ApiKey::DeleteGroup,
        ApiKey::DescribeBroker,
        ApiKey::CreatePartitions,
        ApiKey::ClusterRpc,
        ApiKey::DescribeCluster,
        ApiKey::ReplicaFetch,
    ];

    pub fn from_u16(value: u16) -> Result<ApiKey, ProtocolError> {
        ApiKey::ALL
            .get(value as usize)
            .copied()
            .ok_or(ProtocolError::UnknownApiKey(value))
    }

    /// Versions of this request this implementation speaks, lowest and highest.
    pub fn versions(self) -> (u16, u16) {
        match self {
            // v2 adds each topic's replication factor.
            ApiKey::CreateTopics => (1, 2),
            _ => (1, 1),
        }
    }
}

/// Every failure a response can carry. The numbers are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    None = 0,
    UnknownTopicOrPartition = 1,
    OffsetOutOfRange = 2,
    CorruptBatch = 3,
    RecordTooLarge = 4,
    NotOwner = 5,
    Timeout = 6,
    InvalidRequest = 7,
    UnsupportedVersion = 8,
    UnknownRequestKind = 9,
    TopicAlreadyExists = 10,
    InvalidConfig = 11,
    InvalidPartitions = 12,
    DiskFull = 13,
    StorageError = 14,
    ShuttingDown = 15,
    ResourceLimit = 16,
    UnknownMemberId = 17,
    IllegalGeneration = 18,
    RebalanceInProgress = 19,
    NotAssigned = 20,
    GroupNotEmpty = 21,
    UnknownGroup = 22,
    InconsistentGroupProtocol = 23,
    OffsetMetadataTooLarge = 24,
    InvalidTimestamp = 25,
    OutOfOrderSequence = 26,
    InvalidProducerEpoch = 27,
    InvalidReplicationFactor = 28,
    FencedLeaderEpoch = 29,
    NotEnoughReplicas = 30,
    NotEnoughReplicasAfterAppend = 31,
    NotCoordinator = 32,
}

impl ErrorCode {
    const ALL: [ErrorCode; 33] = [
        ErrorCode::None,
        ErrorCode::UnknownTopicOrPartition,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::CorruptBatch,
        ErrorCode::RecordTooLarge,
        ErrorCode::NotOwner,
        ErrorCode::Timeout,
        ErrorCode::InvalidRequest,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnknownRequestKind,
        ErrorCode::TopicAlreadyExists,
        ErrorCode::InvalidConfig,
        ErrorCode::InvalidPartitions,
        ErrorCode::DiskFull,
        ErrorCode::StorageError,
        ErrorCode::ShuttingDown,
        ErrorCode::ResourceLimit,
        ErrorCode::UnknownMemberId,
        ErrorCode::IllegalGeneration,
        ErrorCode::RebalanceInProgress,
        ErrorCode::NotAssigned,
        ErrorCode::GroupNotEmpty,
        ErrorCode::UnknownGroup,
        ErrorCode::InconsistentGroupProtocol,
        ErrorCode::OffsetMetadataTooLarge,
        ErrorCode::InvalidTimestamp,
        ErrorCode::OutOfOrderSequence,
        ErrorCode::InvalidProducerEpoch,
        ErrorCode::InvalidReplicationFactor,
        ErrorCode::FencedLeaderEpoch,
        ErrorCode::NotEnoughReplicas,
        ErrorCode::NotEnoughReplicasAfterAppend,
        ErrorCode::NotCoordinator,
    ];

    pub fn from_u16(value: u16) -> Result<ErrorCode, ProtocolError> {
        ErrorCode::ALL
            .get(value as usize)
            .copied()
            .ok_or(ProtocolError::UnknownErrorCode(value))
    }

    /// Whether a client may retry the same request unchanged and expect success later.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotOwner
                | ErrorCode::FencedLeaderEpoch
                | ErrorCode::NotEnoughReplicas
                | ErrorCode::NotEnoughReplicasAfterAppend
                | ErrorCode::NotCoordinator
                | ErrorCode::Timeout
                | ErrorCode::DiskFull
                | ErrorCode::ShuttingDown
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            ErrorCode::None => "none",
            ErrorCode::UnknownTopicOrPartition => "unknown topic or partition",
            ErrorCode::OffsetOutOfRange => "offset out of range",
            ErrorCode::CorruptBatch => "corrupt record batch",
            ErrorCode::RecordTooLarge => "record too large",
            ErrorCode::NotOwner => "not the owner of the partition",
            ErrorCode::Timeout => "timed out",
            ErrorCode::InvalidRequest => "invalid request",
            ErrorCode::UnsupportedVersion => "unsupported version",
            ErrorCode::UnknownRequestKind => "unknown request kind",
            ErrorCode::TopicAlreadyExists => "topic already exists",
            ErrorCode::InvalidConfig => "invalid config",
            ErrorCode::InvalidPartitions => "invalid partition count",
            ErrorCode::DiskFull => "disk full",
            ErrorCode::StorageError => "storage error",
            ErrorCode::ShuttingDown => "broker shutting down",
            ErrorCode::ResourceLimit => "resource limit reached",
            ErrorCode::UnknownMemberId => "unknown member id",
            ErrorCode::IllegalGeneration => "stale group generation",
            ErrorCode::RebalanceInProgress => "group rebalance in progress",
            ErrorCode::NotAssigned => "partition not assigned to the member",
            ErrorCode::GroupNotEmpty => "group has active members",
            ErrorCode::UnknownGroup => "unknown group",
            ErrorCode::InconsistentGroupProtocol => "no assignment strategy shared by the group",
            ErrorCode::OffsetMetadataTooLarge => "offset metadata too large",
            ErrorCode::InvalidTimestamp => "record timestamp out of the topic's range",
            ErrorCode::OutOfOrderSequence => "producer sequence number out of order",
            ErrorCode::InvalidProducerEpoch => "producer epoch fenced by a newer one",
            ErrorCode::InvalidReplicationFactor => "replication factor not available",
            ErrorCode::FencedLeaderEpoch => "leader epoch is not the partition's current one",
            ErrorCode::NotEnoughReplicas => "fewer in-sync replicas than min.insync.replicas",
            ErrorCode::NotEnoughReplicasAfterAppend => {
                "appended, but fewer in-sync replicas than min.insync.replicas hold it"
            }
            ErrorCode::NotCoordinator => "not the coordinator of the group",
        };
        f.write_str(name)
    }
}

/// Most bytes of a client-supplied name (a topic, a group) that a status message quotes.
/// Every valid name is shorter; a longer one is shown cut, so that a request naming it in
/// thousands of entries does not make each message as long as the name.
pub const NAME_IN_MESSAGE_BYTES_MAX: usize = 255;

/// `name` as a status message quotes it: whole, or its first `NAME_IN_MESSAGE_BYTES_MAX`
/// bytes (at a character boundary) and an ellipsis.
pub fn quoted(name: &str) -> std::borrow::Cow<'_, str> {
    if name.len() <= NAME_IN_MESSAGE_BYTES_MAX {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut end = NAME_IN_MESSAGE_BYTES_MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…", &name[..end]))
}

/// An error code with the message that explains it to a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: ErrorCode,
    pub message: String,
}

impl Status {
    pub fn ok() -> Status {
        Status {
            code: ErrorCode::None,
            message: String::new(),
        }
    }

    /// An error with its message, cut to `STATUS_MESSAGE_BYTES_MAX` (at a character
    /// boundary): messages quote client input, such as a topic name, and a request with
    /// many entries must not make each of its answers as large as that input.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Status {
        let mut message = message.into();
        if message.len() > STATUS_MESSAGE_BYTES_MAX {
            let mut end = STATUS_MESSAGE_BYTES_MAX;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.shrink_to_fit();
        }
        Status { code, message }
    }

    pub fn is_ok(&self) -> bool {
        self.code == ErrorCode::None
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}
