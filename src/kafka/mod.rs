//! Kafka's wire protocol: the request and response codec of Spate's second front door
//! (docs/KAFKA.md lists the APIs and versions). A pure codec shared by the broker's Kafka
//! door (`server::kafka`) and the Kafka client of the load generator (`client`).
//!
//! **Invariant: `kafka` does no I/O (except `client`) and never panics on input.** Every
//! length and array count is checked against the bytes that follow before anything is
//! allocated (an array count of 2^31-1 with ten bytes left is an error, not an
//! allocation), varints are bounded, a message's array elements are counted against
//! `limits::REQUEST_ENTRIES_MAX`, and leftover bytes after a body are an error.

pub mod client;
pub mod consumer;
mod requests;
mod responses;
#[cfg(test)]
mod tests;
pub mod wire;

pub use requests::*;
pub use responses::*;

use bytes::{BufMut, Bytes, BytesMut};

/// Why a Kafka frame cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaError {
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("malformed {0}: {1}")]
    Malformed(&'static str, &'static str),
    #[error("{0} bytes left over after the request body")]
    TrailingBytes(usize),
    #[error("the request declares more than {max} array elements in all")]
    TooManyEntries { max: usize },
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("API key {api_key} version {version} is not supported (supported: {min} to {max})")]
    UnsupportedVersion {
        api_key: i16,
        version: i16,
        min: i16,
        max: i16,
    },
}

/// Kafka's API keys that Spate serves.
pub mod api {
    pub const PRODUCE: i16 = 0;
    pub const FETCH: i16 = 1;
    pub const LIST_OFFSETS: i16 = 2;
    pub const METADATA: i16 = 3;
    pub const OFFSET_COMMIT: i16 = 8;
    pub const OFFSET_FETCH: i16 = 9;
    pub const FIND_COORDINATOR: i16 = 10;
    pub const JOIN_GROUP: i16 = 11;
    pub const HEARTBEAT: i16 = 12;
    pub const LEAVE_GROUP: i16 = 13;
    pub const SYNC_GROUP: i16 = 14;
    pub const DESCRIBE_GROUPS: i16 = 15;
    pub const LIST_GROUPS: i16 = 16;
    pub const API_VERSIONS: i16 = 18;
    pub const CREATE_TOPICS: i16 = 19;
    pub const DELETE_TOPICS: i16 = 20;
    pub const INIT_PRODUCER_ID: i16 = 22;
    pub const DESCRIBE_CONFIGS: i16 = 32;
    pub const CREATE_PARTITIONS: i16 = 37;
    pub const DELETE_GROUPS: i16 = 42;
    pub const DESCRIBE_CLUSTER: i16 = 60;

    /// An API's name in snake case (the `kind` label of Spate's request metrics).
    pub fn name(key: i16) -> &'static str {
        match key {
            PRODUCE => "produce",
            FETCH => "fetch",
            LIST_OFFSETS => "list_offsets",
            METADATA => "metadata",
            OFFSET_COMMIT => "offset_commit",
            OFFSET_FETCH => "offset_fetch",
            FIND_COORDINATOR => "find_coordinator",
            JOIN_GROUP => "join_group",
            HEARTBEAT => "heartbeat",
            LEAVE_GROUP => "leave_group",
            SYNC_GROUP => "sync_group",
            DESCRIBE_GROUPS => "describe_groups",
            LIST_GROUPS => "list_groups",
            API_VERSIONS => "api_versions",
            CREATE_TOPICS => "create_topics",
            DELETE_TOPICS => "delete_topics",
            INIT_PRODUCER_ID => "init_producer_id",
            DESCRIBE_CONFIGS => "describe_configs",
            CREATE_PARTITIONS => "create_partitions",
            DELETE_GROUPS => "delete_groups",
            DESCRIBE_CLUSTER => "describe_cluster",
            _ => "unknown",
        }
    }
}

/// An API and the versions of it Spate serves, and the first of them that is flexible
/// (compact types and tagged fields), if any is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRange {
    pub api_key: i16,
    pub min: i16,
    pub max: i16,
    pub flexible_from: Option<i16>,
}

const fn range(api_key: i16, min: i16, max: i16, flexible_from: Option<i16>) -> ApiRange {
    ApiRange {
        api_key,
        min,
        max,
        flexible_from,
    }
}

/// What ApiVersions advertises: exactly what is implemented. Flexible versions are
/// served only for ApiVersions (v3), which clients send first; the rest stop at their
/// last version before flexible ones, which every client of the last years negotiates.
pub const SUPPORTED_APIS: &[ApiRange] = &[
    range(api::PRODUCE, 3, 8, Some(9)),
    range(api::FETCH, 4, 11, Some(12)),
    range(api::LIST_OFFSETS, 1, 5, Some(6)),
    range(api::METADATA, 0, 8, Some(9)),
    range(api::OFFSET_COMMIT, 2, 7, Some(8)),
    range(api::OFFSET_FETCH, 1, 5, Some(6)),
    range(api::FIND_COORDINATOR, 0, 2, Some(3)),
    range(api::JOIN_GROUP, 0, 5, Some(6)),
    range(api::HEARTBEAT, 0, 3, Some(4)),
    range(api::LEAVE_GROUP, 0, 3, Some(4)),
    range(api::SYNC_GROUP, 0, 3, Some(4)),
    range(api::DESCRIBE_GROUPS, 0, 4, Some(5)),
    range(api::LIST_GROUPS, 0, 2, Some(3)),
    range(api::API_VERSIONS, 0, 3, Some(3)),
    range(api::CREATE_TOPICS, 2, 4, Some(5)),
    range(api::DELETE_TOPICS, 1, 3, Some(4)),
    range(api::INIT_PRODUCER_ID, 0, 1, Some(2)),
    range(api::DESCRIBE_CONFIGS, 1, 3, Some(4)),
    range(api::CREATE_PARTITIONS, 0, 1, Some(2)),
    range(api::DELETE_GROUPS, 0, 1, Some(2)),
    // Flexible from its first version; v0 is what librdkafka's DescribeCluster sends.
    range(api::DESCRIBE_CLUSTER, 0, 0, Some(0)),
];

pub fn api_range(api_key: i16) -> Option<&'static ApiRange> {
    SUPPORTED_APIS.iter().find(|range| range.api_key == api_key)
}

/// Whether `version` of `api_key` uses flexible encodings.
pub fn is_flexible(api_key: i16, version: i16) -> bool {
    api_range(api_key)
        .and_then(|range| range.flexible_from)
        .is_some_and(|from| version >= from)
}

/// Kafka's error codes that Spate answers with.
pub mod error {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    pub const RECORD_LIST_TOO_LARGE: i16 = 18;
    pub const INVALID_REQUIRED_ACKS: i16 = 21;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const INVALID_TIMESTAMP: i16 = 32;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    pub const INVALID_PARTITIONS: i16 = 37;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = 20;
    pub const INVALID_REPLICATION_FACTOR: i16 = 38;
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    pub const INVALID_CONFIG: i16 = 40;
    pub const INVALID_REQUEST: i16 = 42;
    pub const POLICY_VIOLATION: i16 = 44;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const INVALID_RECORD: i16 = 87;
}

/// A request header (v1, or v2 with tagged fields for flexible versions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    pub client_id: Option<String>,
}

/// The fixed start of a request header (API key, version, correlation id), readable
/// whatever the API and version: enough to answer or refuse a request that cannot be
/// decoded.
pub fn peek_header(frame: &[u8]) -> Result<(i16, i16, i32), KafkaError> {
    if frame.len() < 8 {
        return Err(KafkaError::Truncated("request header"));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes(frame[4..8].try_into().expect("4 bytes"));
    Ok((api_key, version, correlation_id))
}

/// Splits a frame (without its length prefix) into its header and body; the API and
/// version must be supported (else the header's layout is unknown).
pub fn decode_header(frame: Bytes) -> Result<(RequestHeader, Bytes), KafkaError> {
    let (api_key, api_version, correlation_id) = peek_header(&frame)?;
    let range = api_range(api_key).ok_or(KafkaError::UnknownApiKey(api_key))?;
    if !(range.min..=range.max).contains(&api_version) {
        return Err(KafkaError::UnsupportedVersion {
            api_key,
            version: api_version,
            min: range.min,
            max: range.max,
        });
    }
    let mut reader = wire::Reader::new(frame.slice(8..), 0);
    // The client id is a classic nullable string even in header v2.
    let client_id = reader.nullable_string(false, "client id")?;
    if is_flexible(api_key, api_version) {
        reader.tagged_fields()?;
    }
    let consumed = frame.len() - reader.remaining();
    Ok((
        RequestHeader {
            api_key,
            api_version,
            correlation_id,
            client_id,
        },
        frame.slice(consumed..),
    ))
}

/// Starts a response frame: a length to patch (`finish_frame`), the correlation id, and
/// for a flexible response header (v1) an empty tagged-field section. ApiVersions always
/// answers with header v0, so that a client can read it whatever version it asked for.
pub fn start_frame(api_key: i16, version: i16, correlation_id: i32) -> BytesMut {
    let mut out = BytesMut::with_capacity(64);
    out.put_i32(0);
    out.put_i32(correlation_id);
    if api_key != api::API_VERSIONS && is_flexible(api_key, version) {
        wire::put_no_tags(&mut out);
    }
    out
}

/// Writes the frame's length into its first four bytes.
pub fn finish_frame(mut out: BytesMut) -> BytesMut {
    let length = i32::try_from(out.len() - 4).expect("a frame fits in i32");
    out[..4].copy_from_slice(&length.to_be_bytes());
    out
}
