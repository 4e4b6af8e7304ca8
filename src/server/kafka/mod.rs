//! The Kafka door: Kafka's wire protocol on every shard, translated into the same `Shard`
//! operations and group calls the native handlers use (no second storage or group path).
//!
//! Every shard is advertised as a Kafka broker of its own (node id = shard id, port =
//! `ServeConfig::kafka_shard_port`), so clients that follow metadata send each partition's
//! produce and fetch to its owner core; a request that arrives elsewhere is forwarded over
//! the shard mesh (and counted in the shard's probe, as native forwards are).
//!
//! - `data`: Metadata, Produce, Fetch, ListOffsets.
//! - `groups`: FindCoordinator and the consumer-group APIs, through the group coordinator.
//! - `admin`: ApiVersions, CreateTopics, CreatePartitions, DeleteTopics, DescribeConfigs,
//!   InitProducerId, DescribeCluster.

mod admin;
mod data;
mod groups;

use std::rc::Rc;

use bytes::Bytes;

use super::connection::{Decoded, Work};
use super::handlers::{self, Exchange, Outgoing};
use super::shard::Shard;
use crate::kafka::{
    ApiVersionsResponse, KafkaError, KafkaRequest, KafkaResponse, RequestHeader, api,
    decode_header, decode_request, error, peek_header,
};
use crate::protocol::{ErrorCode, Status};

/// A decoded Kafka request and the header it came with (version, correlation id).
pub(crate) struct KafkaWork {
    header: RequestHeader,
    request: KafkaRequest,
}

impl KafkaWork {
    pub(crate) fn api_key(&self) -> i16 {
        self.header.api_key
    }
}

/// Decodes one Kafka frame. A request that cannot be decoded closes the connection
/// (`Err`, logged once by the connection), as Kafka brokers do, because its header may
/// not even say where its body ends; the exception is ApiVersions at a version Spate does
/// not serve, which is answered in the v0 layout with error 35 and the supported ranges,
/// so that a newer client can retry at a version both know.
pub(crate) fn decode(frame: Bytes, bytes_max: usize) -> Result<Decoded, String> {
    let frame_bytes = frame.len();
    let (api_key, api_version, correlation_id) =
        peek_header(&frame).map_err(|error| format!("Kafka request: {error}"))?;
    let (header, body) = match decode_header(frame) {
        Ok(split) => split,
        Err(KafkaError::UnsupportedVersion { .. }) if api_key == api::API_VERSIONS => {
            let answer = ApiVersionsResponse {
                error_code: error::UNSUPPORTED_VERSION,
            }
            .frame(api_version, correlation_id);
            return Ok(Decoded {
                correlation_id: correlation_id as u32,
                work: Err(Outgoing::Frame(answer)),
                weight: frame_bytes.min(bytes_max),
            });
        }
        Err(error) => return Err(format!("Kafka request: {error}")),
    };
    let (mut request, entries) = decode_request(&header, body).map_err(|error| {
        format!("Kafka request (API key {api_key} version {api_version}): {error}")
    })?;
    let weight = match request {
        KafkaRequest::Produce(_) => handlers::produce_weight(frame_bytes, entries),
        _ => handlers::request_weight(frame_bytes, entries),
    };
    if let KafkaRequest::Fetch(fetch) = &mut request {
        // As for native fetches (`handlers::weigh`): never more than the budget can give.
        let max_bytes = u32::try_from(fetch.max_bytes.max(1)).unwrap_or(1);
        fetch.max_bytes = handlers::fetch_max_bytes(max_bytes, weight, bytes_max) as i32;
    }
    Ok(Decoded {
        correlation_id: correlation_id as u32,
        work: Ok(Work::Kafka(KafkaWork { header, request })),
        weight: weight.min(bytes_max),
    })
}

/// Answers one Kafka request; `None` when no answer is due (a produce with acks=0).
pub(crate) async fn handle(
    shard: Rc<Shard>,
    work: KafkaWork,
    exchange: &Exchange,
) -> Option<Outgoing> {
    let KafkaWork { header, request } = work;
    let version = header.api_version;
    let correlation_id = header.correlation_id;
    if shard.stopping.is_set() {
        // Kafka has no "shutting down" answer: the connection closes after the answers
        // before this one, and clients reconnect elsewhere or retry.
        if let KafkaRequest::Produce(produce) = &request
            && produce.acks == 0
        {
            return None;
        }
        return Some(Outgoing::Close);
    }
    fn frame(response: impl KafkaResponse, version: i16, correlation_id: i32) -> Outgoing {
        Outgoing::Frame(response.frame(version, correlation_id))
    }
    let shard = &shard;
    Some(match request {
        KafkaRequest::ApiVersions(_) => frame(admin::api_versions(), version, correlation_id),
        KafkaRequest::Metadata(request) => frame(
            data::metadata(shard, request).await,
            version,
            correlation_id,
        ),
        KafkaRequest::Produce(request) => {
            return data::produce(shard, request, exchange)
                .await
                .map(|answer| answer.map(|response| frame(response, version, correlation_id)))
                .unwrap_or_else(Some);
        }
        KafkaRequest::Fetch(request) => {
            let (response, room) = data::fetch(shard, request, exchange).await;
            Outgoing::Pieces(response.into_pieces(version, correlation_id), room)
        }
        KafkaRequest::ListOffsets(request) => frame(
            data::list_offsets(shard, request).await,
            version,
            correlation_id,
        ),
        KafkaRequest::FindCoordinator(request) => frame(
            groups::find_coordinator(shard, request).await,
            version,
            correlation_id,
        ),
        KafkaRequest::JoinGroup(request) => frame(
            groups::join(shard, request, &header).await,
            version,
            correlation_id,
        ),
        KafkaRequest::SyncGroup(request) => {
            frame(groups::sync(shard, request).await, version, correlation_id)
        }
        KafkaRequest::Heartbeat(request) => frame(
            groups::heartbeat(shard, request).await,
            version,
            correlation_id,
        ),
        KafkaRequest::LeaveGroup(request) => {
            frame(groups::leave(shard, request).await, version, correlation_id)
        }
        KafkaRequest::OffsetCommit(request) => frame(
            groups::commit(shard, request).await,
            version,
            correlation_id,
        ),
        KafkaRequest::OffsetFetch(request) => frame(
            groups::fetch_offsets(shard, request).await,
            version,
            correlation_id,
        ),
        KafkaRequest::ListGroups => frame(groups::list(shard).await, version, correlation_id),
        KafkaRequest::DescribeGroups(names) => frame(
            groups::describe(shard, names).await,
            version,
            correlation_id,
        ),
        KafkaRequest::DeleteGroups(names) => {
            frame(groups::delete(shard, names).await, version, correlation_id)
        }
        KafkaRequest::CreateTopics(request) => frame(
            admin::create_topics(shard, request).await,
            version,
            correlation_id,
        ),
        KafkaRequest::DeleteTopics(request) => frame(
            admin::delete_topics(shard, request).await,
            version,
            correlation_id,
        ),
        KafkaRequest::DescribeConfigs(request) => frame(
            admin::describe_configs(shard, request),
            version,
            correlation_id,
        ),
        KafkaRequest::InitProducerId(request) => frame(
            admin::init_producer_id(shard, request).await,
            version,
            correlation_id,
        ),
        KafkaRequest::CreatePartitions(request) => frame(
            admin::create_partitions(shard, request).await,
            version,
            correlation_id,
        ),
        KafkaRequest::DescribeCluster(_) => {
            frame(admin::describe_cluster(shard), version, correlation_id)
        }
    })
}

/// Kafka's error code for a native status answered to a client, counted in
/// `spate_errors_total` under the native code. Produce's and fetch's partitions use
/// `code` instead: the native paths they share with the other door count those.
fn answered(status: &Status) -> i16 {
    crate::metrics::with(|metrics| metrics.error(status.code));
    code(status)
}

/// Kafka's error code for a native status (the message is lost: most Kafka answers have
/// no room for one).
fn code(status: &Status) -> i16 {
    match status.code {
        ErrorCode::None => error::NONE,
        ErrorCode::UnknownTopicOrPartition => error::UNKNOWN_TOPIC_OR_PARTITION,
        ErrorCode::OffsetOutOfRange => error::OFFSET_OUT_OF_RANGE,
        ErrorCode::CorruptBatch => error::CORRUPT_MESSAGE,
        ErrorCode::RecordTooLarge => error::MESSAGE_TOO_LARGE,
        // Retriable: the client refreshes its metadata and tries again.
        ErrorCode::NotOwner | ErrorCode::ShuttingDown => error::NOT_LEADER_OR_FOLLOWER,
        ErrorCode::Timeout => error::REQUEST_TIMED_OUT,
        ErrorCode::InvalidRequest => error::INVALID_REQUEST,
        ErrorCode::UnsupportedVersion | ErrorCode::UnknownRequestKind => error::UNSUPPORTED_VERSION,
        ErrorCode::TopicAlreadyExists => error::TOPIC_ALREADY_EXISTS,
        ErrorCode::InvalidConfig => error::INVALID_CONFIG,
        ErrorCode::InvalidPartitions => error::INVALID_PARTITIONS,
        ErrorCode::DiskFull | ErrorCode::StorageError => error::KAFKA_STORAGE_ERROR,
        ErrorCode::ResourceLimit => error::POLICY_VIOLATION,
        ErrorCode::UnknownMemberId => error::UNKNOWN_MEMBER_ID,
        // A commit for a partition the member was not assigned: rejoin.
        ErrorCode::IllegalGeneration | ErrorCode::NotAssigned => error::ILLEGAL_GENERATION,
        ErrorCode::RebalanceInProgress => error::REBALANCE_IN_PROGRESS,
        ErrorCode::GroupNotEmpty => error::NON_EMPTY_GROUP,
        ErrorCode::UnknownGroup => error::GROUP_ID_NOT_FOUND,
        ErrorCode::InconsistentGroupProtocol => error::INCONSISTENT_GROUP_PROTOCOL,
        ErrorCode::OffsetMetadataTooLarge => error::OFFSET_METADATA_TOO_LARGE,
        ErrorCode::InvalidTimestamp => error::INVALID_TIMESTAMP,
        ErrorCode::OutOfOrderSequence => error::OUT_OF_ORDER_SEQUENCE_NUMBER,
        ErrorCode::InvalidProducerEpoch => error::INVALID_PRODUCER_EPOCH,
        ErrorCode::InvalidReplicationFactor => error::INVALID_REPLICATION_FACTOR,
        // Retriable, as NOT_LEADER_OR_FOLLOWER: a client refreshes its metadata.
        ErrorCode::FencedLeaderEpoch => error::NOT_LEADER_OR_FOLLOWER,
        ErrorCode::NotEnoughReplicas => error::NOT_ENOUGH_REPLICAS,
        ErrorCode::NotEnoughReplicasAfterAppend => error::NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        ErrorCode::NotCoordinator => error::NOT_COORDINATOR,
    }
}

/// A Kafka partition index as the native operations take it: a negative one becomes an
/// index no topic has, so it is answered "unknown topic or partition" like any other.
fn partition_index(index: i32) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// The Kafka partition index of a native one (the inverse of `partition_index`).
fn kafka_index(partition: u32) -> i32 {
    i32::try_from(partition).unwrap_or(-1)
}
