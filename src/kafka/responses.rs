//! Kafka responses: encoded by the broker per version (every field of the version, as
//! Kafka's schemas give them); the few Spate's own Kafka client reads are decoded too.

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::{
    Reader, put_bool, put_bytes, put_count, put_i32s, put_no_tags, put_nullable_string, put_string,
};
use super::{KafkaError, SUPPORTED_APIS, api, error, finish_frame, is_flexible, start_frame};
use crate::limits::REQUEST_ENTRIES_MAX;
use crate::protocol::{Payload, Piece};

/// A response body that encodes itself for a version.
pub trait KafkaResponse {
    const API_KEY: i16;
    fn encode_body(&self, version: i16, out: &mut BytesMut);

    /// The whole frame: length, response header, body.
    fn frame(&self, version: i16, correlation_id: i32) -> BytesMut {
        let mut out = start_frame(Self::API_KEY, version, correlation_id);
        self.encode_body(version, &mut out);
        if Self::API_KEY != api::API_VERSIONS && is_flexible(Self::API_KEY, version) {
            put_no_tags(&mut out);
        }
        finish_frame(out)
    }
}

/// ApiVersions' answer: `error_code` 35 for a version Spate does not serve, always with
/// the whole table. A v3 answer ends with an empty tagged-field section (no features:
/// older librdkafka misreads them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiVersionsResponse {
    pub error_code: i16,
}

impl KafkaResponse for ApiVersionsResponse {
    const API_KEY: i16 = api::API_VERSIONS;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        // An unsupported version is answered in the v0 layout.
        let version = if self.error_code == error::UNSUPPORTED_VERSION {
            0
        } else {
            version
        };
        let f = version >= 3;
        out.put_i16(self.error_code);
        put_count(out, SUPPORTED_APIS.len(), f);
        for range in SUPPORTED_APIS {
            out.put_i16(range.api_key);
            out.put_i16(range.min);
            out.put_i16(range.max);
            if f {
                put_no_tags(out);
            }
        }
        if version >= 1 {
            out.put_i32(0);
        }
        if f {
            put_no_tags(out);
        }
    }
}

/// The API ranges an ApiVersions answer lists.
/// (API key, min version, max version) of one API a broker serves.
pub type ApiRange = (i16, i16, i16);

pub fn decode_api_versions(body: Bytes) -> Result<(i16, Vec<ApiRange>), KafkaError> {
    let mut r = Reader::new(body, REQUEST_ENTRIES_MAX);
    let error_code = r.i16("error code")?;
    let ranges = (0..r.count(false, 6, "api keys")?)
        .map(|_| Ok((r.i16("api key")?, r.i16("min")?, r.i16("max")?)))
        .collect::<Result<_, KafkaError>>()?;
    Ok((error_code, ranges))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataBroker {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataPartition {
    pub error_code: i16,
    pub partition_index: i32,
    pub leader_id: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataTopic {
    pub error_code: i16,
    pub name: String,
    pub partitions: Vec<MetadataPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataResponse {
    pub brokers: Vec<MetadataBroker>,
    pub cluster_id: String,
    pub controller_id: i32,
    pub topics: Vec<MetadataTopic>,
}

impl KafkaResponse for MetadataResponse {
    const API_KEY: i16 = api::METADATA;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        let f = false;
        if version >= 3 {
            out.put_i32(0);
        }
        put_count(out, self.brokers.len(), f);
        for broker in &self.brokers {
            out.put_i32(broker.node_id);
            put_string(out, &broker.host, f);
            out.put_i32(broker.port);
            if version >= 1 {
                put_nullable_string(out, None, f);
            }
        }
        if version >= 2 {
            put_nullable_string(out, Some(&self.cluster_id), f);
        }
        if version >= 1 {
            out.put_i32(self.controller_id);
        }
        put_count(out, self.topics.len(), f);
        for topic in &self.topics {
            out.put_i16(topic.error_code);
            put_string(out, &topic.name, f);
            if version >= 1 {
                put_bool(out, false);
            }
            put_count(out, topic.partitions.len(), f);
            for partition in &topic.partitions {
                out.put_i16(partition.error_code);
                out.put_i32(partition.partition_index);
                out.put_i32(partition.leader_id);
                if version >= 7 {
                    out.put_i32(partition.leader_epoch);
                }
                put_i32s(out, &partition.replicas, f);
                put_i32s(out, &partition.isr, f);
                if version >= 5 {
                    put_i32s(out, &[], f);
                }
            }
            if version >= 8 {
                out.put_i32(i32::MIN);
            }
        }
        if version >= 8 {
            out.put_i32(i32::MIN);
        }
    }
}

impl MetadataResponse {
    /// Reads a Metadata answer of `version` (1 or more).
    pub fn decode(body: Bytes, version: i16) -> Result<MetadataResponse, KafkaError> {
        let f = false;
        let mut r = Reader::new(body, usize::MAX);
        if version >= 3 {
            r.i32("throttle")?;
        }
        let brokers = (0..r.count(f, 10, "brokers")?)
            .map(|_| {
                let node_id = r.i32("node id")?;
                let host = r.string(f, "host")?;
                let port = r.i32("port")?;
                if version >= 1 {
                    r.nullable_string(f, "rack")?;
                }
                Ok(MetadataBroker {
                    node_id,
                    host,
                    port,
                })
            })
            .collect::<Result<_, KafkaError>>()?;
        let cluster_id = if version >= 2 {
            r.nullable_string(f, "cluster id")?.unwrap_or_default()
        } else {
            String::new()
        };
        let controller_id = if version >= 1 {
            r.i32("controller")?
        } else {
            -1
        };
        let topics = (0..r.count(f, 8, "topics")?)
            .map(|_| {
                let error_code = r.i16("error code")?;
                let name = r.string(f, "topic name")?;
                if version >= 1 {
                    r.bool("internal")?;
                }
                let partitions = (0..r.count(f, 18, "partitions")?)
                    .map(|_| {
                        let error_code = r.i16("error code")?;
                        let partition_index = r.i32("partition")?;
                        let leader_id = r.i32("leader")?;
                        let leader_epoch = if version >= 7 {
                            r.i32("leader epoch")?
                        } else {
                            -1
                        };
                        let mut lists = [Vec::new(), Vec::new()];
                        for (list, what) in lists.iter_mut().zip(["replicas", "isr"]) {
                            for _ in 0..r.count(f, 4, what)? {
                                list.push(r.i32(what)?);
                            }
                        }
                        let [replicas, isr] = lists;
                        if version >= 5 {
                            for _ in 0..r.count(f, 4, "offline")? {
                                r.i32("offline")?;
                            }
                        }
                        Ok(MetadataPartition {
                            error_code,
                            partition_index,
                            leader_id,
                            leader_epoch,
                            replicas,
                            isr,
                        })
                    })
                    .collect::<Result<_, KafkaError>>()?;
                if version >= 8 {
                    r.i32("authorized operations")?;
                }
                Ok(MetadataTopic {
                    error_code,
                    name,
                    partitions,
                })
            })
            .collect::<Result<_, KafkaError>>()?;
        Ok(MetadataResponse {
            brokers,
            cluster_id,
            controller_id,
            topics,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducePartitionResponse {
    pub index: i32,
    pub error_code: i16,
    pub base_offset: i64,
    pub log_start_offset: i64,
    pub error_message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceResponse {
    pub topics: Vec<(String, Vec<ProducePartitionResponse>)>,
}

impl KafkaResponse for ProduceResponse {
    const API_KEY: i16 = api::PRODUCE;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        let f = false;
        put_count(out, self.topics.len(), f);
        for (name, partitions) in &self.topics {
            put_string(out, name, f);
            put_count(out, partitions.len(), f);
            for partition in partitions {
                out.put_i32(partition.index);
                out.put_i16(partition.error_code);
                out.put_i64(partition.base_offset);
                out.put_i64(-1); // log append time: CreateTime topics
                if version >= 5 {
                    out.put_i64(partition.log_start_offset);
                }
                if version >= 8 {
                    put_count(out, 0, f);
                    put_nullable_string(out, partition.error_message.as_deref(), f);
                }
            }
        }
        out.put_i32(0);
    }
}

impl ProduceResponse {
    pub fn decode(body: Bytes, version: i16) -> Result<ProduceResponse, KafkaError> {
        let f = false;
        let mut r = Reader::new(body, usize::MAX);
        let topics = (0..r.count(f, 6, "topics")?)
            .map(|_| {
                let name = r.string(f, "topic")?;
                let partitions = (0..r.count(f, 22, "partitions")?)
                    .map(|_| {
                        let index = r.i32("partition")?;
                        let error_code = r.i16("error code")?;
                        let base_offset = r.i64("base offset")?;
                        r.i64("log append time")?;
                        let log_start_offset = if version >= 5 {
                            r.i64("log start offset")?
                        } else {
                            -1
                        };
                        let mut error_message = None;
                        if version >= 8 {
                            for _ in 0..r.count(f, 6, "record errors")? {
                                r.i32("batch index")?;
                                r.nullable_string(f, "batch error")?;
                            }
                            error_message = r.nullable_string(f, "error message")?;
                        }
                        Ok(ProducePartitionResponse {
                            index,
                            error_code,
                            base_offset,
                            log_start_offset,
                            error_message,
                        })
                    })
                    .collect::<Result<_, KafkaError>>()?;
                Ok((name, partitions))
            })
            .collect::<Result<_, KafkaError>>()?;
        Ok(ProduceResponse { topics })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPartitionResponse<R> {
    pub partition_index: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub records: R,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResponse<R> {
    pub error_code: i16,
    pub topics: Vec<(String, Vec<FetchPartitionResponse<R>>)>,
}

impl<R: Payload> FetchResponse<R> {
    /// The frame as pieces: the encoded bytes around each partition's records, and the
    /// records as they are (never copied into the frame); the length is in the first.
    pub fn into_pieces(self, version: i16, correlation_id: i32) -> Vec<Piece<R>> {
        let f = false;
        let mut pieces: Vec<Piece<R>> = Vec::new();
        let mut out = start_frame(api::FETCH, version, correlation_id);
        let mut total = 0usize;
        out.put_i32(0); // throttle
        if version >= 7 {
            out.put_i16(self.error_code);
            out.put_i32(0); // no fetch session: every fetch is a full one
        }
        put_count(&mut out, self.topics.len(), f);
        for (topic, partitions) in self.topics {
            put_string(&mut out, &topic, f);
            put_count(&mut out, partitions.len(), f);
            for partition in partitions {
                out.put_i32(partition.partition_index);
                out.put_i16(partition.error_code);
                out.put_i64(partition.high_watermark);
                out.put_i64(partition.high_watermark); // last stable offset
                if version >= 5 {
                    out.put_i64(partition.log_start_offset);
                }
                put_count(&mut out, 0, f); // aborted transactions
                if version >= 11 {
                    out.put_i32(-1); // preferred read replica
                }
                let length = partition.records.payload_len();
                out.put_i32(i32::try_from(length).expect("records fit a frame"));
                if length > 0 {
                    let encoded = out.split().freeze();
                    total += encoded.len() + length;
                    pieces.push(Piece::Encoded(encoded));
                    pieces.push(Piece::Payload(partition.records));
                }
            }
        }
        total += out.len();
        pieces.push(Piece::Encoded(out.freeze()));
        let length = i32::try_from(total - 4).expect("a frame fits in i32");
        let Piece::Encoded(first) = &mut pieces[0] else {
            unreachable!("the header comes first")
        };
        let mut patched = BytesMut::from(&first[..]);
        patched[..4].copy_from_slice(&length.to_be_bytes());
        *first = patched.freeze();
        pieces
    }
}

impl FetchResponse<Bytes> {
    pub fn decode(body: Bytes, version: i16) -> Result<FetchResponse<Bytes>, KafkaError> {
        let f = false;
        let mut r = Reader::new(body, usize::MAX);
        r.i32("throttle")?;
        let mut error_code = 0;
        if version >= 7 {
            error_code = r.i16("error code")?;
            r.i32("session id")?;
        }
        let topics = (0..r.count(f, 6, "topics")?)
            .map(|_| {
                let topic = r.string(f, "topic")?;
                let partitions = (0..r.count(f, 30, "partitions")?)
                    .map(|_| {
                        let partition_index = r.i32("partition")?;
                        let error_code = r.i16("error code")?;
                        let high_watermark = r.i64("high watermark")?;
                        r.i64("last stable offset")?;
                        let log_start_offset = if version >= 5 {
                            r.i64("log start offset")?
                        } else {
                            -1
                        };
                        for _ in 0..r.count(f, 16, "aborted")? {
                            r.i64("producer id")?;
                            r.i64("first offset")?;
                        }
                        if version >= 11 {
                            r.i32("preferred read replica")?;
                        }
                        let records = r.bytes(f, "records")?;
                        Ok(FetchPartitionResponse {
                            partition_index,
                            error_code,
                            high_watermark,
                            log_start_offset,
                            records,
                        })
                    })
                    .collect::<Result<_, KafkaError>>()?;
                Ok((topic, partitions))
            })
            .collect::<Result<_, KafkaError>>()?;
        Ok(FetchResponse { error_code, topics })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsPartitionResponse {
    pub partition_index: i32,
    pub error_code: i16,
    pub timestamp: i64,
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsResponse {
    pub topics: Vec<(String, Vec<ListOffsetsPartitionResponse>)>,
}

impl KafkaResponse for ListOffsetsResponse {
    const API_KEY: i16 = api::LIST_OFFSETS;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        let f = false;
        if version >= 2 {
            out.put_i32(0);
        }
        put_count(out, self.topics.len(), f);
        for (name, partitions) in &self.topics {
            put_string(out, name, f);
            put_count(out, partitions.len(), f);
            for partition in partitions {
                out.put_i32(partition.partition_index);
                out.put_i16(partition.error_code);
                out.put_i64(partition.timestamp);
                out.put_i64(partition.offset);
                if version >= 4 {
                    out.put_i32(-1);
                }
            }
        }
    }
}

impl ListOffsetsResponse {
    pub fn decode(body: Bytes, version: i16) -> Result<ListOffsetsResponse, KafkaError> {
        let f = false;
        let mut r = Reader::new(body, usize::MAX);
        if version >= 2 {
            r.i32("throttle")?;
        }
        let topics = (0..r.count(f, 6, "topics")?)
            .map(|_| {
                let name = r.string(f, "topic")?;
                let partitions = (0..r.count(f, 22, "partitions")?)
                    .map(|_| {
                        let partition_index = r.i32("partition")?;
                        let error_code = r.i16("error code")?;
                        let timestamp = r.i64("timestamp")?;
                        let offset = r.i64("offset")?;
                        if version >= 4 {
                            r.i32("leader epoch")?;
                        }
                        Ok(ListOffsetsPartitionResponse {
                            partition_index,
                            error_code,
                            timestamp,
                            offset,
                        })
                    })
                    .collect::<Result<_, KafkaError>>()?;
                Ok((name, partitions))
            })
            .collect::<Result<_, KafkaError>>()?;
        Ok(ListOffsetsResponse { topics })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindCoordinatorResponse {
    pub error_code: i16,
    pub error_message: Option<String>,
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

impl KafkaResponse for FindCoordinatorResponse {
    const API_KEY: i16 = api::FIND_COORDINATOR;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        let f = false;
        if version >= 1 {
            out.put_i32(0);
        }
        out.put_i16(self.error_code);
        if version >= 1 {
            put_nullable_string(out, self.error_message.as_deref(), f);
        }
        out.put_i32(self.node_id);
        put_string(out, &self.host, f);
        out.put_i32(self.port);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroupResponse {
    pub error_code: i16,
    pub generation_id: i32,
    pub protocol_name: String,
    pub leader: String,
    pub member_id: String,
    pub members: Vec<(String, Bytes)>,
}

impl KafkaResponse for JoinGroupResponse {
    const API_KEY: i16 = api::JOIN_GROUP;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        let f = false;
        if version >= 2 {
            out.put_i32(0);
        }
        out.put_i16(self.error_code);
        out.put_i32(self.generation_id);
        put_string(out, &self.protocol_name, f);
        put_string(out, &self.leader, f);
        put_string(out, &self.member_id, f);
        put_count(out, self.members.len(), f);
        for (member_id, metadata) in &self.members {
            put_string(out, member_id, f);
            if version >= 5 {
                put_nullable_string(out, None, f);
            }
            put_bytes(out, metadata, f);
        }
    }
}

/// SyncGroup's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncGroupResponse {
    pub error_code: i16,
    pub assignment: Bytes,
}

impl KafkaResponse for SyncGroupResponse {
    const API_KEY: i16 = api::SYNC_GROUP;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        if version >= 1 {
            out.put_i32(0);
        }
        out.put_i16(self.error_code);
        put_bytes(out, &self.assignment, false);
    }
}

/// An answer that is an error code alone (after the throttle time from `throttle_from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorOnlyResponse<const API: i16> {
    pub error_code: i16,
}

pub type HeartbeatResponse = ErrorOnlyResponse<{ api::HEARTBEAT }>;

impl KafkaResponse for HeartbeatResponse {
    const API_KEY: i16 = api::HEARTBEAT;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        if version >= 1 {
            out.put_i32(0);
        }
        out.put_i16(self.error_code);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveGroupResponse {
    pub error_code: i16,
    /// Per member (v3+).
    pub members: Vec<(String, i16)>,
}

impl KafkaResponse for LeaveGroupResponse {
    const API_KEY: i16 = api::LEAVE_GROUP;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        let f = false;
        if version >= 1 {
            out.put_i32(0);
        }
        out.put_i16(self.error_code);
        if version >= 3 {
            put_count(out, self.members.len(), f);
            for (member_id, error_code) in &self.members {
                put_string(out, member_id, f);
                put_nullable_string(out, None, f);
                out.put_i16(*error_code);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitResponse {
    pub topics: Vec<(String, Vec<(i32, i16)>)>,
}

impl KafkaResponse for OffsetCommitResponse {
    const API_KEY: i16 = api::OFFSET_COMMIT;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        let f = false;
        if version >= 3 {
            out.put_i32(0);
        }
        put_count(out, self.topics.len(), f);
        for (name, partitions) in &self.topics {
            put_string(out, name, f);
            put_count(out, partitions.len(), f);
            for (partition, error_code) in partitions {
                out.put_i32(*partition);
                out.put_i16(*error_code);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetFetchPartitionResponse {
    pub partition_index: i32,
    pub committed_offset: i64,
    pub metadata: Option<String>,
    pub error_code: i16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetFetchResponse {
    pub topics: Vec<(String, Vec<OffsetFetchPartitionResponse>)>,
    pub error_code: i16,
}

impl KafkaResponse for OffsetFetchResponse {
    const API_KEY: i16 = api::OFFSET_FETCH;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        let f = false;
        if version >= 3 {
            out.put_i32(0);
        }
        put_count(out, self.topics.len(), f);
        for (name, partitions) in &self.topics {
            put_string(out, name, f);
            put_count(out, partitions.len(), f);
            for partition in partitions {
                out.put_i32(partition.partition_index);
                out.put_i64(partition.committed_offset);
                if version >= 5 {
                    out.put_i32(-1);
                }
                put_nullable_string(out, partition.metadata.as_deref(), f);
                out.put_i16(partition.error_code);
            }
        }
        if version >= 2 {
            out.put_i16(self.error_code);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListGroupsResponse {
    pub error_code: i16,
    /// (group id, protocol type).
    pub groups: Vec<(String, String)>,
}

impl KafkaResponse for ListGroupsResponse {
    const API_KEY: i16 = api::LIST_GROUPS;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        let f = false;
        if version >= 1 {
            out.put_i32(0);
        }
        out.put_i16(self.error_code);
        put_count(out, self.groups.len(), f);
        for (group_id, protocol_type) in &self.groups {
            put_string(out, group_id, f);
            put_string(out, protocol_type, f);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedMember {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedGroup {
    pub error_code: i16,
    pub group_id: String,
    pub state: String,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<DescribedMember>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeGroupsResponse {
    pub groups: Vec<DescribedGroup>,
}

impl KafkaResponse for DescribeGroupsResponse {
    const API_KEY: i16 = api::DESCRIBE_GROUPS;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        let f = false;
        if version >= 1 {
            out.put_i32(0);
        }
        put_count(out, self.groups.len(), f);
        for group in &self.groups {
            out.put_i16(group.error_code);
            put_string(out, &group.group_id, f);
            put_string(out, &group.state, f);
            put_string(out, &group.protocol_type, f);
            put_string(out, &group.protocol, f);
            put_count(out, group.members.len(), f);
            for member in &group.members {
                put_string(out, &member.member_id, f);
                if version >= 4 {
                    put_nullable_string(out, None, f);
                }
                put_string(out, &member.client_id, f);
                put_string(out, &member.client_host, f);
                put_bytes(out, &member.metadata, f);
                put_bytes(out, &member.assignment, f);
            }
            if version >= 3 {
                out.put_i32(i32::MIN);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteGroupsResponse {
    pub results: Vec<(String, i16)>,
}

impl KafkaResponse for DeleteGroupsResponse {
    const API_KEY: i16 = api::DELETE_GROUPS;
    fn encode_body(&self, _version: i16, out: &mut BytesMut) {
        out.put_i32(0);
        put_count(out, self.results.len(), false);
        for (group_id, error_code) in &self.results {
            put_string(out, group_id, false);
            out.put_i16(*error_code);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicResult {
    pub name: String,
    pub error_code: i16,
    pub error_message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTopicsResponse {
    pub topics: Vec<TopicResult>,
}

impl KafkaResponse for CreateTopicsResponse {
    const API_KEY: i16 = api::CREATE_TOPICS;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        let f = false;
        if version >= 2 {
            out.put_i32(0);
        }
        put_count(out, self.topics.len(), f);
        for topic in &self.topics {
            put_string(out, &topic.name, f);
            out.put_i16(topic.error_code);
            if version >= 1 {
                put_nullable_string(out, topic.error_message.as_deref(), f);
            }
        }
    }
}

/// One result per topic, as CreateTopics answers (v0-1 of CreatePartitions have the same
/// layout as CreateTopics v2-4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePartitionsResponse {
    pub topics: Vec<TopicResult>,
}

impl KafkaResponse for CreatePartitionsResponse {
    const API_KEY: i16 = api::CREATE_PARTITIONS;
    fn encode_body(&self, _version: i16, out: &mut BytesMut) {
        let f = false;
        out.put_i32(0);
        put_count(out, self.topics.len(), f);
        for topic in &self.topics {
            put_string(out, &topic.name, f);
            out.put_i16(topic.error_code);
            put_nullable_string(out, topic.error_message.as_deref(), f);
        }
    }
}

impl CreateTopicsResponse {
    pub fn decode(body: Bytes, version: i16) -> Result<CreateTopicsResponse, KafkaError> {
        let f = false;
        let mut r = Reader::new(body, usize::MAX);
        if version >= 2 {
            r.i32("throttle")?;
        }
        let topics = (0..r.count(f, 4, "topics")?)
            .map(|_| {
                Ok(TopicResult {
                    name: r.string(f, "topic")?,
                    error_code: r.i16("error code")?,
                    error_message: if version >= 1 {
                        r.nullable_string(f, "error message")?
                    } else {
                        None
                    },
                })
            })
            .collect::<Result<_, KafkaError>>()?;
        Ok(CreateTopicsResponse { topics })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteTopicsResponse {
    pub topics: Vec<(String, i16)>,
}

impl KafkaResponse for DeleteTopicsResponse {
    const API_KEY: i16 = api::DELETE_TOPICS;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        if version >= 1 {
            out.put_i32(0);
        }
        put_count(out, self.topics.len(), false);
        for (name, error_code) in &self.topics {
            put_string(out, name, false);
            out.put_i16(*error_code);
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub name: String,
    pub value: String,
    /// Kafka's config source: 1 a topic's own setting, 5 the broker's default.
    pub source: i8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeConfigsResult {
    pub error_code: i16,
    pub error_message: Option<String>,
    pub resource_type: i8,
    pub resource_name: String,
    pub configs: Vec<ConfigEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeConfigsResponse {
    pub results: Vec<DescribeConfigsResult>,
}

impl KafkaResponse for DescribeConfigsResponse {
    const API_KEY: i16 = api::DESCRIBE_CONFIGS;
    fn encode_body(&self, version: i16, out: &mut BytesMut) {
        let f = false;
        out.put_i32(0);
        put_count(out, self.results.len(), f);
        for result in &self.results {
            out.put_i16(result.error_code);
            put_nullable_string(out, result.error_message.as_deref(), f);
            out.put_i8(result.resource_type);
            put_string(out, &result.resource_name, f);
            put_count(out, result.configs.len(), f);
            for config in &result.configs {
                put_string(out, &config.name, f);
                put_nullable_string(out, Some(&config.value), f);
                put_bool(out, false); // read only
                if version == 0 {
                    put_bool(out, config.source == 5);
                } else {
                    out.put_i8(config.source);
                }
                put_bool(out, false); // sensitive
                if version >= 1 {
                    put_count(out, 0, f); // synonyms
                }
                if version >= 3 {
                    out.put_i8(0); // type unknown
                    put_nullable_string(out, None, f);
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitProducerIdResponse {
    pub error_code: i16,
    pub producer_id: i64,
    pub producer_epoch: i16,
}

impl KafkaResponse for InitProducerIdResponse {
    const API_KEY: i16 = api::INIT_PRODUCER_ID;
    fn encode_body(&self, _version: i16, out: &mut BytesMut) {
        out.put_i32(0);
        out.put_i16(self.error_code);
        out.put_i64(self.producer_id);
        out.put_i16(self.producer_epoch);
    }
}

impl InitProducerIdResponse {
    pub fn decode(body: Bytes) -> Result<InitProducerIdResponse, KafkaError> {
        let mut r = Reader::new(body, 0);
        r.i32("throttle")?;
        Ok(InitProducerIdResponse {
            error_code: r.i16("error code")?,
            producer_id: r.i64("producer id")?,
            producer_epoch: r.i16("producer epoch")?,
        })
    }
}

/// The brokers (every shard), the cluster id and the controller, as Metadata gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeClusterResponse {
    pub cluster_id: String,
    pub controller_id: i32,
    pub brokers: Vec<MetadataBroker>,
}

/// `cluster_authorized_operations` when they were not asked for (Spate has no ACLs).
const AUTHORIZED_OPERATIONS_UNKNOWN: i32 = i32::MIN;

impl KafkaResponse for DescribeClusterResponse {
    const API_KEY: i16 = api::DESCRIBE_CLUSTER;
    fn encode_body(&self, _version: i16, out: &mut BytesMut) {
        let f = true;
        out.put_i32(0);
        out.put_i16(error::NONE);
        put_nullable_string(out, None, f);
        put_string(out, &self.cluster_id, f);
        out.put_i32(self.controller_id);
        put_count(out, self.brokers.len(), f);
        for broker in &self.brokers {
            out.put_i32(broker.node_id);
            put_string(out, &broker.host, f);
            out.put_i32(broker.port);
            put_nullable_string(out, None, f);
            put_no_tags(out);
        }
        out.put_i32(AUTHORIZED_OPERATIONS_UNKNOWN);
    }
}

impl DescribeClusterResponse {
    /// Reads a DescribeCluster v0 answer (from its response header's tagged fields on);
    /// an answer with an error code is an error.
    pub fn decode(body: Bytes) -> Result<DescribeClusterResponse, KafkaError> {
        let f = true;
        let mut r = Reader::new(body, usize::MAX);
        r.tagged_fields()?;
        r.i32("throttle")?;
        if r.i16("error code")? != error::NONE {
            return Err(KafkaError::Malformed("describe cluster", "an error answer"));
        }
        r.nullable_string(f, "error message")?;
        let cluster_id = r.string(f, "cluster id")?;
        let controller_id = r.i32("controller id")?;
        let brokers = (0..r.count(f, 10, "brokers")?)
            .map(|_| {
                let node_id = r.i32("broker id")?;
                let host = r.string(f, "host")?;
                let port = r.i32("port")?;
                r.nullable_string(f, "rack")?;
                r.tagged_fields()?;
                Ok(MetadataBroker {
                    node_id,
                    host,
                    port,
                })
            })
            .collect::<Result<_, KafkaError>>()?;
        r.i32("cluster authorized operations")?;
        r.tagged_fields()?;
        r.finish()?;
        Ok(DescribeClusterResponse {
            cluster_id,
            controller_id,
            brokers,
        })
    }
}
