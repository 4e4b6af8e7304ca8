//! Requests and responses, version 1 of every kind. docs/PROTOCOL.md lists the fields in
//! the order they are encoded here.
//!
//! Every response body starts with a status (`u16` error code, string message). When the
//! code is not 0 the body ends there: the request failed as a whole. Otherwise the fields of
//! the response follow, and per-topic or per-partition entries carry their own status.

use bytes::{BufMut, Bytes, BytesMut};

use super::groups::{
    GroupDescription, GroupListing, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, OffsetCommitRequest, OffsetCommitTopicResponse, OffsetFetchRequest,
    OffsetFetchTopic, SyncGroupRequest, TopicPartitions, put_group_listings, put_offset_fetch,
    put_partition_statuses, put_topic_partitions, read_group_listings, read_offset_fetch,
    read_partition_statuses, read_topic_partitions,
};
use super::wire::{Reader, put_blob, put_count, put_string};
use super::{ApiKey, ErrorCode, ProtocolError, RequestHeader, Status};
use crate::limits::REQUEST_ENTRIES_MAX;

/// `timestamp` values of a ListOffsets request that are not timestamps.
pub const OFFSET_EARLIEST: i64 = -2;
pub const OFFSET_LATEST: i64 = -1;

/// How many acknowledgements a producer waits for. On a single node `Leader` and `All` are
/// the same: the log's flush policy decides durability. With `None` no response is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    None,
    Leader,
    All,
}

impl Acks {
    fn to_i8(self) -> i8 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }

    fn from_i8(value: i8) -> Result<Acks, ProtocolError> {
        match value {
            0 => Ok(Acks::None),
            1 => Ok(Acks::Leader),
            -1 => Ok(Acks::All),
            _ => Err(ProtocolError::Invalid {
                what: "produce acks",
                reason: "must be 0, 1 or -1",
            }),
        }
    }
}

// ---- shared pieces ------------------------------------------------------------------------

/// Longest status message sent: messages may quote client input (a topic name), so they
/// are cut here rather than trusted to fit a `u16` length.
pub const STATUS_MESSAGE_BYTES_MAX: usize = 1024;

pub(super) fn put_status(out: &mut BytesMut, status: &Status) {
    out.put_u16(status.code as u16);
    let mut end = status.message.len().min(STATUS_MESSAGE_BYTES_MAX);
    while !status.message.is_char_boundary(end) {
        end -= 1;
    }
    put_string(out, &status.message[..end]);
}

pub(super) fn read_status(
    reader: &mut Reader,
    what: &'static str,
) -> Result<Status, ProtocolError> {
    let code = ErrorCode::from_u16(reader.u16(what)?)?;
    let message = reader.string(what)?;
    Ok(Status { code, message })
}

fn put_array<T>(out: &mut BytesMut, items: &[T], mut put: impl FnMut(&mut BytesMut, &T)) {
    put_count(out, items.len());
    for item in items {
        put(out, item);
    }
}

fn read_array<T>(
    reader: &mut Reader,
    what: &'static str,
    element_bytes_min: usize,
    mut read: impl FnMut(&mut Reader) -> Result<T, ProtocolError>,
) -> Result<Vec<T>, ProtocolError> {
    let count = reader.count(what, element_bytes_min)?;
    let mut items = Vec::with_capacity(count);
    for _ in 0..count {
        items.push(read(reader)?);
    }
    Ok(items)
}

fn read_strings(reader: &mut Reader, what: &'static str) -> Result<Vec<String>, ProtocolError> {
    read_array(reader, what, 2, |reader| reader.string(what))
}

fn put_configs(out: &mut BytesMut, configs: &[(String, String)]) {
    put_array(out, configs, |out, (key, value)| {
        put_string(out, key);
        put_string(out, value);
    });
}

fn read_configs(reader: &mut Reader) -> Result<Vec<(String, String)>, ProtocolError> {
    read_array(reader, "configs", 4, |reader| {
        Ok((reader.string("config key")?, reader.string("config value")?))
    })
}

/// A topic name and a status: the per-topic answer of admin requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStatus {
    pub name: String,
    pub status: Status,
}

fn put_topic_statuses(out: &mut BytesMut, topics: &[TopicStatus]) {
    put_array(out, topics, |out, topic| {
        put_string(out, &topic.name);
        put_status(out, &topic.status);
    });
}

fn read_topic_statuses(reader: &mut Reader) -> Result<Vec<TopicStatus>, ProtocolError> {
    read_array(reader, "topics", 6, |reader| {
        Ok(TopicStatus {
            name: reader.string("topic name")?,
            status: read_status(reader, "topic status")?,
        })
    })
}

// ---- requests -----------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiVersionsRequest {
    pub client_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataRequest {
    /// Topics to describe; empty means all.
    pub topics: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    pub partitions: u32,
    pub configs: Vec<(String, String)>,
    /// Copies of each partition, on as many brokers (v2; 1 before). A single broker
    /// accepts only 1.
    pub replication_factor: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTopicsRequest {
    pub topics: Vec<NewTopic>,
}

/// A topic to grow to `count` partitions (the count of all its partitions, new and old).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPartitions {
    pub name: String,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePartitionsRequest {
    pub topics: Vec<NewPartitions>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteTopicsRequest {
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeTopicsRequest {
    /// Topics to describe; empty means all (the topic list).
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducePartition {
    pub partition: u32,
    /// One or more whole record batches (RecordBatch v2), as raw bytes.
    pub records: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceTopic {
    pub name: String,
    pub partitions: Vec<ProducePartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceRequest {
    pub acks: Acks,
    pub timeout_ms: u32,
    pub topics: Vec<ProduceTopic>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPartition {
    pub partition: u32,
    pub offset: i64,
    pub max_bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchTopic {
    pub name: String,
    pub partitions: Vec<FetchPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// Longest time to wait for `min_bytes` to arrive (long polling).
    pub max_wait_ms: u32,
    pub min_bytes: u32,
    /// Limit on the records of the whole response (at least one batch is always returned).
    pub max_bytes: u32,
    pub topics: Vec<FetchTopic>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsPartition {
    pub partition: u32,
    /// `OFFSET_EARLIEST`, `OFFSET_LATEST`, or a timestamp in ms.
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsTopic {
    pub name: String,
    pub partitions: Vec<ListOffsetsPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsRequest {
    pub topics: Vec<ListOffsetsTopic>,
}

/// A request that names one group and nothing else (describe, delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupIdRequest {
    pub group_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    ApiVersions(ApiVersionsRequest),
    Metadata(MetadataRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    DescribeTopics(DescribeTopicsRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    /// Every group of the broker (no fields).
    ListGroups,
    DescribeGroup(GroupIdRequest),
    DeleteGroup(GroupIdRequest),
    /// What each shard holds and is doing (no fields).
    DescribeBroker,
    CreatePartitions(CreatePartitionsRequest),
    /// Between the nodes of a cluster: one message of the metadata Raft group (opaque
    /// here: `cluster::node` encodes it).
    ClusterRpc(Bytes),
    DescribeCluster(DescribeClusterRequest),
    /// From a follower node to a partition's leader: records from the follower's log end.
    ReplicaFetch(ReplicaFetchRequest),
}

impl Request {
    pub fn api_key(&self) -> ApiKey {
        match self {
            Request::ApiVersions(_) => ApiKey::ApiVersions,
            Request::Metadata(_) => ApiKey::Metadata,
            Request::CreateTopics(_) => ApiKey::CreateTopics,
            Request::DeleteTopics(_) => ApiKey::DeleteTopics,
            Request::DescribeTopics(_) => ApiKey::DescribeTopics,
            Request::Produce(_) => ApiKey::Produce,
            Request::Fetch(_) => ApiKey::Fetch,
            Request::ListOffsets(_) => ApiKey::ListOffsets,
            Request::JoinGroup(_) => ApiKey::JoinGroup,
            Request::SyncGroup(_) => ApiKey::SyncGroup,
            Request::Heartbeat(_) => ApiKey::Heartbeat,
            Request::LeaveGroup(_) => ApiKey::LeaveGroup,
            Request::OffsetCommit(_) => ApiKey::OffsetCommit,
            Request::OffsetFetch(_) => ApiKey::OffsetFetch,
            Request::ListGroups => ApiKey::ListGroups,
            Request::DescribeGroup(_) => ApiKey::DescribeGroup,
            Request::DeleteGroup(_) => ApiKey::DeleteGroup,
            Request::DescribeBroker => ApiKey::DescribeBroker,
            Request::CreatePartitions(_) => ApiKey::CreatePartitions,
            Request::ClusterRpc(_) => ApiKey::ClusterRpc,
            Request::DescribeCluster(_) => ApiKey::DescribeCluster,
            Request::ReplicaFetch(_) => ApiKey::ReplicaFetch,
        }
    }

    /// The group a group request is about (`None` for other kinds and ListGroups).
    pub fn group_id(&self) -> Option<&str> {
        Some(match self {
            Request::JoinGroup(request) => &request.group_id,
            Request::SyncGroup(request) => &request.group_id,
            Request::Heartbeat(request) => &request.group_id,
            Request::LeaveGroup(request) => &request.group_id,
            Request::OffsetCommit(request) => &request.group_id,
            Request::OffsetFetch(request) => &request.group_id,
            Request::DescribeGroup(request) | Request::DeleteGroup(request) => &request.group_id,
            _ => return None,
        })
    }

    /// Encodes the whole frame, length field included, at the highest version we speak.
    pub fn encode(&self, correlation_id: u32) -> BytesMut {
        // Sized up front for a produce's batches, so they are copied once, not again at
        // every growth of the buffer.
        let records: usize = match self {
            Request::Produce(request) => request
                .topics
                .iter()
                .map(|topic| {
                    topic.name.len()
                        + topic
                            .partitions
                            .iter()
                            .map(|partition| 16 + partition.records.len())
                            .sum::<usize>()
                })
                .sum(),
            _ => 0,
        };
        let mut out = BytesMut::with_capacity(64 + records);
        out.put_u32(0); // length, patched below
        out.put_u16(self.api_key() as u16);
        out.put_u16(self.api_key().versions().1);
        out.put_u32(correlation_id);
        self.encode_body(&mut out);
        patch_length(&mut out);
        out
    }

    fn encode_body(&self, out: &mut BytesMut) {
        match self {
            Request::ApiVersions(request) => put_string(out, &request.client_id),
            Request::Metadata(request) => {
                put_array(out, &request.topics, |out, name| put_string(out, name))
            }
            Request::CreateTopics(request) => put_array(out, &request.topics, |out, topic| {
                put_string(out, &topic.name);
                out.put_u32(topic.partitions);
                put_configs(out, &topic.configs);
                out.put_u16(topic.replication_factor);
            }),
            Request::ClusterRpc(message) => put_blob(out, message),
            Request::DescribeCluster(request) => put_array(out, &request.topics, |out, name| {
                put_string(out, name);
            }),
            Request::ReplicaFetch(request) => request.encode(out),
            Request::DeleteTopics(request) => {
                put_array(out, &request.names, |out, name| put_string(out, name))
            }
            Request::CreatePartitions(request) => put_array(out, &request.topics, |out, topic| {
                put_string(out, &topic.name);
                out.put_u32(topic.count);
            }),
            Request::DescribeTopics(request) => {
                put_array(out, &request.names, |out, name| put_string(out, name))
            }
            Request::Produce(request) => {
                out.put_i8(request.acks.to_i8());
                out.put_u32(request.timeout_ms);
                put_array(out, &request.topics, |out, topic| {
                    put_string(out, &topic.name);
                    put_array(out, &topic.partitions, |out, partition| {
                        out.put_u32(partition.partition);
                        put_blob(out, &partition.records);
                    });
                });
            }
            Request::Fetch(request) => {
                out.put_u32(request.max_wait_ms);
                out.put_u32(request.min_bytes);
                out.put_u32(request.max_bytes);
                put_array(out, &request.topics, |out, topic| {
                    put_string(out, &topic.name);
                    put_array(out, &topic.partitions, |out, partition| {
                        out.put_u32(partition.partition);
                        out.put_i64(partition.offset);
                        out.put_u32(partition.max_bytes);
                    });
                });
            }
            Request::ListOffsets(request) => put_array(out, &request.topics, |out, topic| {
                put_string(out, &topic.name);
                put_array(out, &topic.partitions, |out, partition| {
                    out.put_u32(partition.partition);
                    out.put_i64(partition.timestamp);
                });
            }),
            Request::JoinGroup(request) => request.encode(out),
            Request::SyncGroup(request) => request.encode(out),
            Request::Heartbeat(request) => request.encode(out),
            Request::LeaveGroup(request) => request.encode(out),
            Request::OffsetCommit(request) => request.encode(out),
            Request::OffsetFetch(request) => {
                put_string(out, &request.group_id);
                put_topic_partitions(out, &request.topics);
            }
            Request::ListGroups | Request::DescribeBroker => {}
            Request::DescribeGroup(request) | Request::DeleteGroup(request) => {
                put_string(out, &request.group_id)
            }
        }
    }

    /// Decodes a request body. The header's kind must be known and its version supported
    /// (ApiVersions is decoded at any version, so that any client can negotiate).
    pub fn decode(header: &RequestHeader, body: Bytes) -> Result<Request, ProtocolError> {
        Request::decode_counting(header, body).map(|(request, _)| request)
    }

    /// Decodes a request body, as `decode`, and says how many entries (array elements, at
    /// every level) it carries. A request with more than `REQUEST_ENTRIES_MAX` is refused
    /// as soon as its arrays declare them, before they are built.
    pub fn decode_counting(
        header: &RequestHeader,
        body: Bytes,
    ) -> Result<(Request, usize), ProtocolError> {
        let api_key = ApiKey::from_u16(header.api_key)?;
        let mut reader = Reader::with_entry_limit(body, REQUEST_ENTRIES_MAX);
        let request = match api_key {
            ApiKey::ApiVersions => Request::ApiVersions(ApiVersionsRequest {
                client_id: reader.string("client id")?,
            }),
            ApiKey::Metadata => Request::Metadata(MetadataRequest {
                topics: read_strings(&mut reader, "topics")?,
            }),
            ApiKey::CreateTopics => Request::CreateTopics(CreateTopicsRequest {
                topics: read_array(&mut reader, "topics", 10, |reader| {
                    Ok(NewTopic {
                        name: reader.string("topic name")?,
                        partitions: reader.u32("partition count")?,
                        configs: read_configs(reader)?,
                        replication_factor: if header.api_version >= 2 {
                            reader.u16("replication factor")?
                        } else {
                            1
                        },
                    })
                })?,
            }),
            ApiKey::DeleteTopics => Request::DeleteTopics(DeleteTopicsRequest {
                names: read_strings(&mut reader, "topics")?,
            }),
            ApiKey::CreatePartitions => Request::CreatePartitions(CreatePartitionsRequest {
                topics: read_array(&mut reader, "topics", 6, |reader| {
                    Ok(NewPartitions {
                        name: reader.string("topic name")?,
                        count: reader.u32("partition count")?,
                    })
                })?,
            }),
            ApiKey::DescribeTopics => Request::DescribeTopics(DescribeTopicsRequest {
                names: read_strings(&mut reader, "topics")?,
            }),
            ApiKey::Produce => Request::Produce(ProduceRequest {
                acks: Acks::from_i8(reader.i8("produce acks")?)?,
                timeout_ms: reader.u32("produce timeout")?,
                topics: read_array(&mut reader, "topics", 6, |reader| {
                    Ok(ProduceTopic {
                        name: reader.string("topic name")?,
                        partitions: read_array(reader, "partitions", 8, |reader| {
                            Ok(ProducePartition {
                                partition: reader.u32("partition")?,
                                records: reader.blob("records")?,
                            })
                        })?,
                    })
                })?,
            }),
            ApiKey::Fetch => Request::Fetch(FetchRequest {
                max_wait_ms: reader.u32("fetch max wait")?,
                min_bytes: reader.u32("fetch min bytes")?,
                max_bytes: reader.u32("fetch max bytes")?,
                topics: read_array(&mut reader, "topics", 6, |reader| {
                    Ok(FetchTopic {
                        name: reader.string("topic name")?,
                        partitions: read_array(reader, "partitions", 16, |reader| {
                            Ok(FetchPartition {
                                partition: reader.u32("partition")?,
                                offset: reader.i64("fetch offset")?,
                                max_bytes: reader.u32("partition max bytes")?,
                            })
                        })?,
                    })
                })?,
            }),
            ApiKey::ListOffsets => Request::ListOffsets(ListOffsetsRequest {
                topics: read_array(&mut reader, "topics", 6, |reader| {
                    Ok(ListOffsetsTopic {
                        name: reader.string("topic name")?,
                        partitions: read_array(reader, "partitions", 12, |reader| {
                            Ok(ListOffsetsPartition {
                                partition: reader.u32("partition")?,
                                timestamp: reader.i64("timestamp")?,
                            })
                        })?,
                    })
                })?,
            }),
            ApiKey::JoinGroup => Request::JoinGroup(JoinGroupRequest::decode(&mut reader)?),
            ApiKey::SyncGroup => Request::SyncGroup(SyncGroupRequest::decode(&mut reader)?),
            ApiKey::Heartbeat => Request::Heartbeat(HeartbeatRequest::decode(&mut reader)?),
            ApiKey::LeaveGroup => Request::LeaveGroup(LeaveGroupRequest::decode(&mut reader)?),
            ApiKey::OffsetCommit => {
                Request::OffsetCommit(OffsetCommitRequest::decode(&mut reader)?)
            }
            ApiKey::OffsetFetch => Request::OffsetFetch(OffsetFetchRequest {
                group_id: reader.string("group id")?,
                topics: read_topic_partitions(&mut reader)?,
            }),
            ApiKey::ListGroups => Request::ListGroups,
            ApiKey::DescribeGroup => Request::DescribeGroup(GroupIdRequest {
                group_id: reader.string("group id")?,
            }),
            ApiKey::DeleteGroup => Request::DeleteGroup(GroupIdRequest {
                group_id: reader.string("group id")?,
            }),
            ApiKey::DescribeBroker => Request::DescribeBroker,
            ApiKey::ClusterRpc => Request::ClusterRpc(reader.blob("cluster message")?),
            ApiKey::DescribeCluster => Request::DescribeCluster(DescribeClusterRequest {
                topics: read_strings(&mut reader, "topics")?,
            }),
            ApiKey::ReplicaFetch => {
                Request::ReplicaFetch(ReplicaFetchRequest::decode(&mut reader)?)
            }
        };
        let entries = reader.entries();
        reader.finish("request")?;
        Ok((request, entries))
    }
}

fn patch_length(frame: &mut BytesMut) {
    let length = u32::try_from(frame.len() - 4).expect("frame fits in u32");
    frame[..4].copy_from_slice(&length.to_be_bytes());
}

// ---- responses ----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiVersionRange {
    pub api_key: u16,
    pub min_version: u16,
    pub max_version: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiVersionsResponse {
    pub broker_version: String,
    pub apis: Vec<ApiVersionRange>,
    pub shard_count: u16,
    /// The shard whose listener answered.
    pub shard_id: u16,
}

impl ApiVersionsResponse {
    /// The version of `api_key` both sides speak, if any.
    pub fn negotiate(&self, api_key: ApiKey) -> Option<u16> {
        let (ours_min, ours_max) = api_key.versions();
        let theirs = self
            .apis
            .iter()
            .find(|range| range.api_key == api_key as u16)?;
        let version = ours_max.min(theirs.max_version);
        (version >= ours_min.max(theirs.min_version)).then_some(version)
    }
}

/// Where a shard accepts connections: a client that talks to the owning shard directly
/// keeps the produce and fetch path on one core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardAddress {
    pub shard_id: u16,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMetadata {
    pub partition: u32,
    /// The shard that owns the partition.
    pub shard_id: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    pub name: String,
    pub status: Status,
    pub partitions: Vec<PartitionMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataResponse {
    pub shards: Vec<ShardAddress>,
    pub topics: Vec<TopicMetadata>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFetchRequest {
    /// The follower's node id.
    pub replica: u64,
    /// How long the leader may hold the request while none of its partitions has data.
    pub max_wait_ms: u32,
    /// Most record bytes per partition.
    pub max_bytes: u32,
    pub partitions: Vec<ReplicaFetchPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFetchPartition {
    pub topic: String,
    pub partition: u32,
    /// The leader epoch the follower believes current: another is refused
    /// (`FencedLeaderEpoch`), so neither side acts on a stale leadership.
    pub leader_epoch: u32,
    /// The follower's log end: it holds everything below.
    pub fetch_offset: i64,
    /// The epoch of the follower's last batch (-1: empty log), against which the leader
    /// checks that their logs agree up to `fetch_offset` (Kafka's KIP-320).
    pub last_fetched_epoch: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaFetchPartitionResponse {
    pub topic: String,
    pub partition: u32,
    pub status: Status,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// When the follower's log diverged from the leader's: the largest epoch the leader
    /// has at or below `last_fetched_epoch`, and where that epoch ends in the leader's log;
    /// the follower truncates there and fetches again. -1 and -1 when the logs agree.
    pub diverging_epoch: i32,
    pub diverging_end_offset: i64,
    pub records: Bytes,
}

impl ReplicaFetchRequest {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.replica);
        out.put_u32(self.max_wait_ms);
        out.put_u32(self.max_bytes);
        put_array(out, &self.partitions, |out, partition| {
            put_string(out, &partition.topic);
            out.put_u32(partition.partition);
            out.put_u32(partition.leader_epoch);
            out.put_i64(partition.fetch_offset);
            out.put_i32(partition.last_fetched_epoch);
        });
    }

    fn decode(reader: &mut Reader) -> Result<ReplicaFetchRequest, ProtocolError> {
        Ok(ReplicaFetchRequest {
            replica: reader.u64("replica")?,
            max_wait_ms: reader.u32("max wait")?,
            max_bytes: reader.u32("max bytes")?,
            partitions: read_array(reader, "partitions", 22, |reader| {
                Ok(ReplicaFetchPartition {
                    topic: reader.string("topic name")?,
                    partition: reader.u32("partition")?,
                    leader_epoch: reader.u32("leader epoch")?,
                    fetch_offset: reader.i64("fetch offset")?,
                    last_fetched_epoch: reader.i32("last fetched epoch")?,
                })
            })?,
        })
    }
}

impl ReplicaFetchPartitionResponse {
    fn encode(&self, out: &mut BytesMut) {
        put_string(out, &self.topic);
        out.put_u32(self.partition);
        put_status(out, &self.status);
        out.put_i64(self.high_watermark);
        out.put_i64(self.log_start_offset);
        out.put_i32(self.diverging_epoch);
        out.put_i64(self.diverging_end_offset);
        put_blob(out, &self.records);
    }

    fn decode(reader: &mut Reader) -> Result<ReplicaFetchPartitionResponse, ProtocolError> {
        Ok(ReplicaFetchPartitionResponse {
            topic: reader.string("topic name")?,
            partition: reader.u32("partition")?,
            status: read_status(reader, "partition status")?,
            high_watermark: reader.i64("high watermark")?,
            log_start_offset: reader.i64("log start offset")?,
            diverging_epoch: reader.i32("diverging epoch")?,
            diverging_end_offset: reader.i64("diverging end offset")?,
            records: reader.blob("records")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeClusterRequest {
    /// The topics whose partitions to describe; none: every topic.
    pub topics: Vec<String>,
}

/// The cluster as the answering node knows it: its nodes, the controller, and each
/// partition's replicas. A single broker (no `--cluster`) answers as a cluster of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    /// The node that answered.
    pub node_id: u64,
    /// Whether the broker runs as part of a cluster (`--cluster`).
    pub clustered: bool,
    /// The controller (the metadata Raft group's leader), -1 when there is none now.
    pub controller: i64,
    pub nodes: Vec<NodeDescription>,
    pub topics: Vec<TopicReplicas>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDescription {
    pub id: u64,
    /// Its native bootstrap address.
    pub address: String,
    /// Its first Kafka port's address; empty when it has no Kafka door.
    pub kafka_address: String,
    pub shards: u16,
    /// Missed its session with the controller: leads nothing, in no ISR it shares.
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicReplicas {
    pub name: String,
    pub status: Status,
    pub partitions: Vec<PartitionReplicas>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionReplicas {
    pub partition: u32,
    /// -1: no leader now (its only in-sync replica is down).
    pub leader: i64,
    pub leader_epoch: u32,
    pub replicas: Vec<u64>,
    pub isr: Vec<u64>,
}

impl ClusterDescription {
    fn encode(&self, out: &mut BytesMut) {
        out.put_u64(self.node_id);
        out.put_u8(u8::from(self.clustered));
        out.put_i64(self.controller);
        put_array(out, &self.nodes, |out, node| {
            out.put_u64(node.id);
            put_string(out, &node.address);
            put_string(out, &node.kafka_address);
            out.put_u16(node.shards);
            out.put_u8(u8::from(node.fenced));
        });
        put_array(out, &self.topics, |out, topic| {
            put_string(out, &topic.name);
            put_status(out, &topic.status);
            put_array(out, &topic.partitions, |out, partition| {
                out.put_u32(partition.partition);
                out.put_i64(partition.leader);
                out.put_u32(partition.leader_epoch);
                put_array(out, &partition.replicas, |out, id| out.put_u64(*id));
                put_array(out, &partition.isr, |out, id| out.put_u64(*id));
            });
        });
    }

    fn decode(reader: &mut Reader) -> Result<ClusterDescription, ProtocolError> {
        Ok(ClusterDescription {
            node_id: reader.u64("node id")?,
            clustered: reader.u8("clustered")? != 0,
            controller: reader.i64("controller")?,
            nodes: read_array(reader, "nodes", 15, |reader| {
                Ok(NodeDescription {
                    id: reader.u64("node id")?,
                    address: reader.string("node address")?,
                    kafka_address: reader.string("node Kafka address")?,
                    shards: reader.u16("node shards")?,
                    fenced: reader.u8("node fenced")? != 0,
                })
            })?,
            topics: read_array(reader, "topics", 10, |reader| {
                Ok(TopicReplicas {
                    name: reader.string("topic name")?,
                    status: read_status(reader, "topic status")?,
                    partitions: read_array(reader, "partitions", 24, |reader| {
                        Ok(PartitionReplicas {
                            partition: reader.u32("partition")?,
                            leader: reader.i64("leader")?,
                            leader_epoch: reader.u32("leader epoch")?,
                            replicas: read_array(reader, "replicas", 8, |reader| {
                                reader.u64("replica")
                            })?,
                            isr: read_array(reader, "in-sync replicas", 8, |reader| {
                                reader.u64("in-sync replica")
                            })?,
                        })
                    })?,
                })
            })?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDescription {
    pub name: String,
    pub status: Status,
    pub partitions: u32,
    /// Every config of the topic, defaults included.
    pub configs: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducePartitionResponse {
    pub partition: u32,
    pub status: Status,
    /// Offset of the first record appended (-1 on error).
    pub base_offset: i64,
    pub log_end_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceTopicResponse {
    pub name: String,
    pub partitions: Vec<ProducePartitionResponse>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceResponse {
    pub topics: Vec<ProduceTopicResponse>,
}

/// Bytes of records that a response carries without copying them into the frame.
pub trait Payload {
    fn payload_len(&self) -> usize;
}

impl Payload for Bytes {
    fn payload_len(&self) -> usize {
        self.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPartitionResponse<R = Bytes> {
    pub partition: u32,
    pub status: Status,
    /// One past the last offset a consumer can read.
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// Whole record batches.
    pub records: R,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchTopicResponse<R = Bytes> {
    pub name: String,
    pub partitions: Vec<FetchPartitionResponse<R>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResponse<R = Bytes> {
    pub topics: Vec<FetchTopicResponse<R>>,
}

/// A piece of an encoded frame: bytes the encoder wrote, or a payload to send as it is.
#[derive(Debug)]
pub enum Piece<R> {
    Encoded(Bytes),
    Payload(R),
}

impl<R: Payload> FetchResponse<R> {
    /// Encodes the frame as pieces so that the records are sent from where they are
    /// (the tail cache or the disk read buffer) with no copy into the frame.
    pub fn into_pieces(self, correlation_id: u32) -> Vec<Piece<R>> {
        enum Building<R> {
            Encoded(BytesMut),
            Payload(R),
        }
        let mut pieces: Vec<Building<R>> = Vec::new();
        let mut out = BytesMut::new();
        out.put_u32(0); // length, patched below
        out.put_u32(correlation_id);
        put_status(&mut out, &Status::ok());
        put_count(&mut out, self.topics.len());
        for topic in self.topics {
            put_string(&mut out, &topic.name);
            put_count(&mut out, topic.partitions.len());
            for partition in topic.partitions {
                out.put_u32(partition.partition);
                put_status(&mut out, &partition.status);
                out.put_i64(partition.high_watermark);
                out.put_i64(partition.log_start_offset);
                let records_len = partition.records.payload_len();
                out.put_u32(u32::try_from(records_len).expect("records fit in a frame"));
                if records_len > 0 {
                    pieces.push(Building::Encoded(out.split()));
                    pieces.push(Building::Payload(partition.records));
                }
            }
        }
        pieces.push(Building::Encoded(out));
        let total: usize = pieces
            .iter()
            .map(|piece| match piece {
                Building::Encoded(bytes) => bytes.len(),
                Building::Payload(payload) => payload.payload_len(),
            })
            .sum();
        let Building::Encoded(first) = &mut pieces[0] else {
            unreachable!("the header comes first")
        };
        let length = u32::try_from(total - 4).expect("frame fits in u32");
        first[..4].copy_from_slice(&length.to_be_bytes());
        pieces
            .into_iter()
            .map(|piece| match piece {
                Building::Encoded(bytes) => Piece::Encoded(bytes.freeze()),
                Building::Payload(payload) => Piece::Payload(payload),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsPartitionResponse {
    pub partition: u32,
    pub status: Status,
    /// -1 when no record is at or after the asked timestamp.
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsTopicResponse {
    pub name: String,
    pub partitions: Vec<ListOffsetsPartitionResponse>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsResponse {
    pub topics: Vec<ListOffsetsTopicResponse>,
}

/// One shard, as `DescribeBroker` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardDescription {
    pub shard_id: u16,
    /// Partitions whose log this shard owns (consumer-group offsets logs not counted).
    pub partitions: u32,
    /// Client connections open on this shard.
    pub connections: u32,
    /// Waits for new data on this shard's partitions now under way: long polls of its
    /// own connections and of other shards' fetches.
    pub long_poll_waits: u32,
    /// Partition requests (produce, fetch, long-poll waits, list offsets) this shard has
    /// sent to the owning shard since it started, because they arrived here.
    pub forwarded_requests: u64,
    /// This shard's share of the broker's `--memory-max`.
    pub memory_budget_bytes: u64,
    /// Bytes its partitions' tail caches hold, and the most they may hold together.
    pub tail_cache_bytes: u64,
    pub tail_cache_budget_bytes: u64,
    /// Cached batches dropped to keep the tail caches within their budget (reads of them
    /// go to disk).
    pub tail_cache_evicted_batches: u64,
    /// Segment files this shard holds open, and the most it keeps open (least recently
    /// used closed first).
    pub segment_files_open: u32,
    pub segment_files_max: u32,
    /// Bytes the requests in flight on its connections hold, and the most they may hold.
    pub request_bytes: u64,
    pub request_budget_bytes: u64,
    /// Bytes its partitions hold read ahead from disk, and the most they may hold.
    pub read_ahead_bytes: u64,
    pub read_ahead_budget_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerDescription {
    pub broker_version: String,
    /// File descriptors the broker process has open.
    pub open_files: u64,
    pub shards: Vec<ShardDescription>,
}

/// A response: a request-level failure, or the body of the request's kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// The request failed as a whole (unknown kind, unsupported version, malformed body,
    /// resource limit...): the body is the status alone.
    Failed(Status),
    ApiVersions(ApiVersionsResponse),
    Metadata(MetadataResponse),
    CreateTopics(Vec<TopicStatus>),
    DeleteTopics(Vec<TopicStatus>),
    CreatePartitions(Vec<TopicStatus>),
    DescribeTopics(Vec<TopicDescription>),
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    ListOffsets(ListOffsetsResponse),
    JoinGroup(JoinGroupResponse),
    /// The member's assignment.
    SyncGroup(Vec<TopicPartitions>),
    Heartbeat,
    LeaveGroup,
    OffsetCommit(Vec<OffsetCommitTopicResponse>),
    OffsetFetch(Vec<OffsetFetchTopic>),
    ListGroups(Vec<GroupListing>),
    DescribeGroup(GroupDescription),
    DeleteGroup,
    DescribeBroker(BrokerDescription),
    ClusterRpc(Bytes),
    DescribeCluster(ClusterDescription),
    ReplicaFetch(Vec<ReplicaFetchPartitionResponse>),
}

impl Response {
    /// Encodes the whole frame, length field included.
    pub fn encode(&self, correlation_id: u32) -> BytesMut {
        if let Response::Fetch(fetch) = self {
            let mut out = BytesMut::new();
            for piece in fetch.clone().into_pieces(correlation_id) {
                match piece {
                    Piece::Encoded(bytes) | Piece::Payload(bytes) => out.put_slice(&bytes),
                }
            }
            return out;
        }
        let mut out = BytesMut::new();
        out.put_u32(0);
        out.put_u32(correlation_id);
        match self {
            Response::Failed(status) => {
                assert!(!status.is_ok(), "a failed response carries an error");
                put_status(&mut out, status);
            }
            other => {
                put_status(&mut out, &Status::ok());
                other.encode_body(&mut out);
            }
        }
        patch_length(&mut out);
        out
    }

    fn encode_body(&self, out: &mut BytesMut) {
        match self {
            Response::Failed(_) | Response::Fetch(_) => unreachable!("encoded by `encode`"),
            Response::ApiVersions(response) => {
                put_string(out, &response.broker_version);
                put_array(out, &response.apis, |out, range| {
                    out.put_u16(range.api_key);
                    out.put_u16(range.min_version);
                    out.put_u16(range.max_version);
                });
                out.put_u16(response.shard_count);
                out.put_u16(response.shard_id);
            }
            Response::Metadata(response) => {
                put_array(out, &response.shards, |out, shard| {
                    out.put_u16(shard.shard_id);
                    put_string(out, &shard.host);
                    out.put_u16(shard.port);
                });
                put_array(out, &response.topics, |out, topic| {
                    put_string(out, &topic.name);
                    put_status(out, &topic.status);
                    put_array(out, &topic.partitions, |out, partition| {
                        out.put_u32(partition.partition);
                        out.put_u16(partition.shard_id);
                    });
                });
            }
            Response::CreateTopics(topics)
            | Response::DeleteTopics(topics)
            | Response::CreatePartitions(topics) => put_topic_statuses(out, topics),
            Response::DescribeTopics(topics) => put_array(out, topics, |out, topic| {
                put_string(out, &topic.name);
                put_status(out, &topic.status);
                out.put_u32(topic.partitions);
                put_configs(out, &topic.configs);
            }),
            Response::Produce(response) => put_array(out, &response.topics, |out, topic| {
                put_string(out, &topic.name);
                put_array(out, &topic.partitions, |out, partition| {
                    out.put_u32(partition.partition);
                    put_status(out, &partition.status);
                    out.put_i64(partition.base_offset);
                    out.put_i64(partition.log_end_offset);
                });
            }),
            Response::ListOffsets(response) => put_array(out, &response.topics, |out, topic| {
                put_string(out, &topic.name);
                put_array(out, &topic.partitions, |out, partition| {
                    out.put_u32(partition.partition);
                    put_status(out, &partition.status);
                    out.put_i64(partition.offset);
                });
            }),
            Response::JoinGroup(response) => response.encode(out),
            Response::SyncGroup(assignment) => put_topic_partitions(out, assignment),
            Response::Heartbeat | Response::LeaveGroup | Response::DeleteGroup => {}
            Response::OffsetCommit(topics) => put_partition_statuses(out, topics),
            Response::OffsetFetch(topics) => put_offset_fetch(out, topics),
            Response::ListGroups(groups) => put_group_listings(out, groups),
            Response::DescribeGroup(group) => group.encode(out),
            Response::DescribeBroker(broker) => {
                put_string(out, &broker.broker_version);
                out.put_u64(broker.open_files);
                put_array(out, &broker.shards, |out, shard| {
                    out.put_u16(shard.shard_id);
                    out.put_u32(shard.partitions);
                    out.put_u32(shard.connections);
                    out.put_u32(shard.long_poll_waits);
                    out.put_u64(shard.forwarded_requests);
                    out.put_u64(shard.memory_budget_bytes);
                    out.put_u64(shard.tail_cache_bytes);
                    out.put_u64(shard.tail_cache_budget_bytes);
                    out.put_u64(shard.tail_cache_evicted_batches);
                    out.put_u32(shard.segment_files_open);
                    out.put_u32(shard.segment_files_max);
                    out.put_u64(shard.request_bytes);
                    out.put_u64(shard.request_budget_bytes);
                    out.put_u64(shard.read_ahead_bytes);
                    out.put_u64(shard.read_ahead_budget_bytes);
                });
            }
            Response::ClusterRpc(message) => put_blob(out, message),
            Response::DescribeCluster(cluster) => cluster.encode(out),
            Response::ReplicaFetch(partitions) => put_array(out, partitions, |out, partition| {
                partition.encode(out);
            }),
        }
    }

    /// Decodes a response body (after the correlation id) to a request of kind `api_key`.
    pub fn decode(api_key: ApiKey, body: Bytes) -> Result<Response, ProtocolError> {
        let mut reader = Reader::new(body);
        let status = read_status(&mut reader, "response status")?;
        if !status.is_ok() {
            reader.finish("failed response")?;
            return Ok(Response::Failed(status));
        }
        let response = match api_key {
            ApiKey::ApiVersions => Response::ApiVersions(ApiVersionsResponse {
                broker_version: reader.string("broker version")?,
                apis: read_array(&mut reader, "api versions", 6, |reader| {
                    Ok(ApiVersionRange {
                        api_key: reader.u16("api key")?,
                        min_version: reader.u16("min version")?,
                        max_version: reader.u16("max version")?,
                    })
                })?,
                shard_count: reader.u16("shard count")?,
                shard_id: reader.u16("shard id")?,
            }),
            ApiKey::Metadata => Response::Metadata(MetadataResponse {
                shards: read_array(&mut reader, "shards", 6, |reader| {
                    Ok(ShardAddress {
                        shard_id: reader.u16("shard id")?,
                        host: reader.string("shard host")?,
                        port: reader.u16("shard port")?,
                    })
                })?,
                topics: read_array(&mut reader, "topics", 10, |reader| {
                    Ok(TopicMetadata {
                        name: reader.string("topic name")?,
                        status: read_status(reader, "topic status")?,
                        partitions: read_array(reader, "partitions", 6, |reader| {
                            Ok(PartitionMetadata {
                                partition: reader.u32("partition")?,
                                shard_id: reader.u16("shard id")?,
                            })
                        })?,
                    })
                })?,
            }),
            ApiKey::CreateTopics => Response::CreateTopics(read_topic_statuses(&mut reader)?),
            ApiKey::DeleteTopics => Response::DeleteTopics(read_topic_statuses(&mut reader)?),
            ApiKey::CreatePartitions => {
                Response::CreatePartitions(read_topic_statuses(&mut reader)?)
            }
            ApiKey::DescribeTopics => {
                Response::DescribeTopics(read_array(&mut reader, "topics", 14, |reader| {
                    Ok(TopicDescription {
                        name: reader.string("topic name")?,
                        status: read_status(reader, "topic status")?,
                        partitions: reader.u32("partition count")?,
                        configs: read_configs(reader)?,
                    })
                })?)
            }
            ApiKey::Produce => Response::Produce(ProduceResponse {
                topics: read_array(&mut reader, "topics", 6, |reader| {
                    Ok(ProduceTopicResponse {
                        name: reader.string("topic name")?,
                        partitions: read_array(reader, "partitions", 24, |reader| {
                            Ok(ProducePartitionResponse {
                                partition: reader.u32("partition")?,
                                status: read_status(reader, "partition status")?,
                                base_offset: reader.i64("base offset")?,
                                log_end_offset: reader.i64("log end offset")?,
                            })
                        })?,
                    })
                })?,
            }),
            ApiKey::Fetch => Response::Fetch(FetchResponse {
                topics: read_array(&mut reader, "topics", 6, |reader| {
                    Ok(FetchTopicResponse {
                        name: reader.string("topic name")?,
                        partitions: read_array(reader, "partitions", 28, |reader| {
                            Ok(FetchPartitionResponse {
                                partition: reader.u32("partition")?,
                                status: read_status(reader, "partition status")?,
                                high_watermark: reader.i64("high watermark")?,
                                log_start_offset: reader.i64("log start offset")?,
                                records: reader.blob("records")?,
                            })
                        })?,
                    })
                })?,
            }),
            ApiKey::ListOffsets => Response::ListOffsets(ListOffsetsResponse {
                topics: read_array(&mut reader, "topics", 6, |reader| {
                    Ok(ListOffsetsTopicResponse {
                        name: reader.string("topic name")?,
                        partitions: read_array(reader, "partitions", 16, |reader| {
                            Ok(ListOffsetsPartitionResponse {
                                partition: reader.u32("partition")?,
                                status: read_status(reader, "partition status")?,
                                offset: reader.i64("offset")?,
                            })
                        })?,
                    })
                })?,
            }),
            ApiKey::JoinGroup => Response::JoinGroup(JoinGroupResponse::decode(&mut reader)?),
            ApiKey::SyncGroup => Response::SyncGroup(read_topic_partitions(&mut reader)?),
            ApiKey::Heartbeat => Response::Heartbeat,
            ApiKey::LeaveGroup => Response::LeaveGroup,
            ApiKey::OffsetCommit => Response::OffsetCommit(read_partition_statuses(&mut reader)?),
            ApiKey::OffsetFetch => Response::OffsetFetch(read_offset_fetch(&mut reader)?),
            ApiKey::ListGroups => Response::ListGroups(read_group_listings(&mut reader)?),
            ApiKey::DescribeGroup => {
                Response::DescribeGroup(GroupDescription::decode(&mut reader)?)
            }
            ApiKey::DeleteGroup => Response::DeleteGroup,
            ApiKey::DescribeBroker => Response::DescribeBroker(BrokerDescription {
                broker_version: reader.string("broker version")?,
                open_files: reader.u64("open files")?,
                shards: read_array(&mut reader, "shards", 22, |reader| {
                    Ok(ShardDescription {
                        shard_id: reader.u16("shard id")?,
                        partitions: reader.u32("partitions")?,
                        connections: reader.u32("connections")?,
                        long_poll_waits: reader.u32("long poll waits")?,
                        forwarded_requests: reader.u64("forwarded requests")?,
                        memory_budget_bytes: reader.u64("memory budget")?,
                        tail_cache_bytes: reader.u64("tail cache bytes")?,
                        tail_cache_budget_bytes: reader.u64("tail cache budget")?,
                        tail_cache_evicted_batches: reader.u64("tail cache evictions")?,
                        segment_files_open: reader.u32("segment files open")?,
                        segment_files_max: reader.u32("segment files max")?,
                        request_bytes: reader.u64("request bytes")?,
                        request_budget_bytes: reader.u64("request budget")?,
                        read_ahead_bytes: reader.u64("read-ahead bytes")?,
                        read_ahead_budget_bytes: reader.u64("read-ahead budget")?,
                    })
                })?,
            }),
            ApiKey::ClusterRpc => Response::ClusterRpc(reader.blob("cluster message")?),
            ApiKey::DescribeCluster => {
                Response::DescribeCluster(ClusterDescription::decode(&mut reader)?)
            }
            ApiKey::ReplicaFetch => Response::ReplicaFetch(read_array(
                &mut reader,
                "partitions",
                36,
                ReplicaFetchPartitionResponse::decode,
            )?),
        };
        reader.finish("response")?;
        Ok(response)
    }
}
