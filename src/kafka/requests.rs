//! Kafka requests: what the broker reads of each (fields absent in a version take
//! Kafka's default), decoded per version, and encoded by Spate's own Kafka client.

use bytes::{BufMut, Bytes, BytesMut};

use super::wire::{Reader, put_bool, put_count, put_no_tags, put_nullable_string, put_string};
use super::{KafkaError, RequestHeader, api, is_flexible};
use crate::limits::REQUEST_ENTRIES_MAX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiVersionsRequest {
    pub client_software_name: String,
    pub client_software_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataRequest {
    /// `None`: every topic.
    pub topics: Option<Vec<String>>,
    pub allow_auto_topic_creation: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducePartition {
    pub index: i32,
    /// Record batches as they came, a slice of the frame (no copy).
    pub records: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceTopic {
    pub name: String,
    pub partitions: Vec<ProducePartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceRequest {
    pub transactional_id: Option<String>,
    pub acks: i16,
    pub timeout_ms: i32,
    pub topics: Vec<ProduceTopic>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchPartition {
    pub partition: i32,
    pub fetch_offset: i64,
    pub partition_max_bytes: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchTopic {
    pub topic: String,
    pub partitions: Vec<FetchPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    pub max_bytes: i32,
    pub isolation_level: i8,
    pub session_id: i32,
    pub session_epoch: i32,
    pub topics: Vec<FetchTopic>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsPartition {
    pub partition_index: i32,
    /// -2 earliest, -1 latest, else a timestamp in ms.
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsTopic {
    pub name: String,
    pub partitions: Vec<ListOffsetsPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOffsetsRequest {
    pub isolation_level: i8,
    pub topics: Vec<ListOffsetsTopic>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindCoordinatorRequest {
    pub key: String,
    /// 0: a group; 1: a transaction.
    pub key_type: i8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinGroupRequest {
    pub group_id: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub protocol_type: String,
    /// (name, opaque metadata), preferred first.
    pub protocols: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncGroupRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    /// (member id, opaque assignment): the leader's.
    pub assignments: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveGroupRequest {
    pub group_id: String,
    /// One member before v3, a batch from v3 on.
    pub member_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitPartition {
    pub partition_index: i32,
    pub committed_offset: i64,
    pub committed_metadata: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitTopic {
    pub name: String,
    pub partitions: Vec<OffsetCommitPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommitRequest {
    pub group_id: String,
    pub generation_id: i32,
    pub member_id: String,
    pub topics: Vec<OffsetCommitTopic>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetFetchRequest {
    pub group_id: String,
    /// `None`: every partition the group has an offset for (v2+).
    pub topics: Option<Vec<(String, Vec<i32>)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatableTopic {
    pub name: String,
    pub num_partitions: i32,
    pub replication_factor: i16,
    pub assignments: usize,
    pub configs: Vec<(String, Option<String>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTopicsRequest {
    pub topics: Vec<CreatableTopic>,
    pub timeout_ms: i32,
    pub validate_only: bool,
}

/// A topic to grow to `count` partitions; `assignments` counts the explicit replica
/// assignments sent (Spate refuses them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePartitionsTopic {
    pub name: String,
    pub count: i32,
    pub assignments: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatePartitionsRequest {
    pub topics: Vec<CreatePartitionsTopic>,
    pub timeout_ms: i32,
    pub validate_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteTopicsRequest {
    pub names: Vec<String>,
    pub timeout_ms: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeConfigsResource {
    /// 2: a topic; 4: a broker.
    pub resource_type: i8,
    pub resource_name: String,
    pub configuration_keys: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeConfigsRequest {
    pub resources: Vec<DescribeConfigsResource>,
    pub include_synonyms: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitProducerIdRequest {
    pub transactional_id: Option<String>,
    pub transaction_timeout_ms: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeClusterRequest {
    pub include_cluster_authorized_operations: bool,
}

/// A decoded request of an API and version Spate serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaRequest {
    ApiVersions(ApiVersionsRequest),
    Metadata(MetadataRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    SyncGroup(SyncGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    ListGroups,
    DescribeGroups(Vec<String>),
    DeleteGroups(Vec<String>),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
    DescribeConfigs(DescribeConfigsRequest),
    InitProducerId(InitProducerIdRequest),
    DescribeCluster(DescribeClusterRequest),
    CreatePartitions(CreatePartitionsRequest),
}

/// Decodes the body of a request whose header `decode_header` read; also how many array
/// elements it declared (for the connection's budget).
pub fn decode_request(
    header: &RequestHeader,
    body: Bytes,
) -> Result<(KafkaRequest, usize), KafkaError> {
    let version = header.api_version;
    let flexible = is_flexible(header.api_key, version);
    let mut r = Reader::new(body, REQUEST_ENTRIES_MAX);
    let f = flexible;
    let request = match header.api_key {
        api::API_VERSIONS => {
            let (client_software_name, client_software_version) = if version >= 3 {
                (
                    r.string(f, "client software name")?,
                    r.string(f, "client software version")?,
                )
            } else {
                Default::default()
            };
            KafkaRequest::ApiVersions(ApiVersionsRequest {
                client_software_name,
                client_software_version,
            })
        }
        api::METADATA => {
            let topics = match r.nullable_count(f, 2, "topics")? {
                // v0 had no null: an empty array meant every topic.
                Some(0) if version == 0 => None,
                None if version == 0 => {
                    return Err(KafkaError::Malformed("topics", "null in version 0"));
                }
                None => None,
                Some(count) => Some(
                    (0..count)
                        .map(|_| r.string(f, "topic name"))
                        .collect::<Result<_, _>>()?,
                ),
            };
            let allow_auto_topic_creation = if version >= 4 {
                r.bool("allow auto topic creation")?
            } else {
                true
            };
            if version >= 8 {
                r.bool("include cluster authorized operations")?;
                r.bool("include topic authorized operations")?;
            }
            KafkaRequest::Metadata(MetadataRequest {
                topics,
                allow_auto_topic_creation,
            })
        }
        api::PRODUCE => {
            let transactional_id = r.nullable_string(f, "transactional id")?;
            let acks = r.i16("acks")?;
            let timeout_ms = r.i32("timeout")?;
            let topics = (0..r.count(f, 6, "topics")?)
                .map(|_| {
                    let name = r.string(f, "topic name")?;
                    let partitions = (0..r.count(f, 8, "partitions")?)
                        .map(|_| {
                            Ok(ProducePartition {
                                index: r.i32("partition")?,
                                records: r.nullable_bytes(f, "records")?,
                            })
                        })
                        .collect::<Result<_, KafkaError>>()?;
                    Ok(ProduceTopic { name, partitions })
                })
                .collect::<Result<_, KafkaError>>()?;
            KafkaRequest::Produce(ProduceRequest {
                transactional_id,
                acks,
                timeout_ms,
                topics,
            })
        }
        api::FETCH => {
            r.i32("replica id")?;
            let max_wait_ms = r.i32("max wait")?;
            let min_bytes = r.i32("min bytes")?;
            let max_bytes = r.i32("max bytes")?;
            let isolation_level = r.i8("isolation level")?;
            let (session_id, session_epoch) = if version >= 7 {
                (r.i32("session id")?, r.i32("session epoch")?)
            } else {
                (0, -1)
            };
            let partition_bytes =
                16 + if version >= 5 { 8 } else { 0 } + if version >= 9 { 4 } else { 0 };
            let topics = (0..r.count(f, 6, "topics")?)
                .map(|_| {
                    let topic = r.string(f, "topic name")?;
                    let partitions = (0..r.count(f, partition_bytes, "partitions")?)
                        .map(|_| {
                            let partition = r.i32("partition")?;
                            if version >= 9 {
                                r.i32("current leader epoch")?;
                            }
                            let fetch_offset = r.i64("fetch offset")?;
                            if version >= 5 {
                                r.i64("log start offset")?;
                            }
                            Ok(FetchPartition {
                                partition,
                                fetch_offset,
                                partition_max_bytes: r.i32("partition max bytes")?,
                            })
                        })
                        .collect::<Result<_, KafkaError>>()?;
                    Ok(FetchTopic { topic, partitions })
                })
                .collect::<Result<_, KafkaError>>()?;
            if version >= 7 {
                for _ in 0..r.count(f, 6, "forgotten topics")? {
                    r.string(f, "forgotten topic")?;
                    for _ in 0..r.count(f, 4, "forgotten partitions")? {
                        r.i32("forgotten partition")?;
                    }
                }
            }
            if version >= 11 {
                r.string(f, "rack id")?;
            }
            KafkaRequest::Fetch(FetchRequest {
                max_wait_ms,
                min_bytes,
                max_bytes,
                isolation_level,
                session_id,
                session_epoch,
                topics,
            })
        }
        api::LIST_OFFSETS => {
            r.i32("replica id")?;
            let isolation_level = if version >= 2 {
                r.i8("isolation level")?
            } else {
                0
            };
            let partition_bytes = 12 + if version >= 4 { 4 } else { 0 };
            let topics = (0..r.count(f, 6, "topics")?)
                .map(|_| {
                    let name = r.string(f, "topic name")?;
                    let partitions = (0..r.count(f, partition_bytes, "partitions")?)
                        .map(|_| {
                            let partition_index = r.i32("partition")?;
                            if version >= 4 {
                                r.i32("current leader epoch")?;
                            }
                            Ok(ListOffsetsPartition {
                                partition_index,
                                timestamp: r.i64("timestamp")?,
                            })
                        })
                        .collect::<Result<_, KafkaError>>()?;
                    Ok(ListOffsetsTopic { name, partitions })
                })
                .collect::<Result<_, KafkaError>>()?;
            KafkaRequest::ListOffsets(ListOffsetsRequest {
                isolation_level,
                topics,
            })
        }
        api::FIND_COORDINATOR => {
            let key = r.string(f, "key")?;
            let key_type = if version >= 1 { r.i8("key type")? } else { 0 };
            KafkaRequest::FindCoordinator(FindCoordinatorRequest { key, key_type })
        }
        api::JOIN_GROUP => {
            let group_id = r.string(f, "group id")?;
            let session_timeout_ms = r.i32("session timeout")?;
            let rebalance_timeout_ms = if version >= 1 {
                r.i32("rebalance timeout")?
            } else {
                session_timeout_ms
            };
            let member_id = r.string(f, "member id")?;
            let group_instance_id = if version >= 5 {
                r.nullable_string(f, "group instance id")?
            } else {
                None
            };
            let protocol_type = r.string(f, "protocol type")?;
            let protocols = (0..r.count(f, 6, "protocols")?)
                .map(|_| {
                    Ok((
                        r.string(f, "protocol name")?,
                        r.bytes(f, "protocol metadata")?,
                    ))
                })
                .collect::<Result<_, KafkaError>>()?;
            KafkaRequest::JoinGroup(JoinGroupRequest {
                group_id,
                session_timeout_ms,
                rebalance_timeout_ms,
                member_id,
                group_instance_id,
                protocol_type,
                protocols,
            })
        }
        api::SYNC_GROUP => {
            let group_id = r.string(f, "group id")?;
            let generation_id = r.i32("generation id")?;
            let member_id = r.string(f, "member id")?;
            if version >= 3 {
                r.nullable_string(f, "group instance id")?;
            }
            let assignments = (0..r.count(f, 6, "assignments")?)
                .map(|_| Ok((r.string(f, "member id")?, r.bytes(f, "assignment")?)))
                .collect::<Result<_, KafkaError>>()?;
            KafkaRequest::SyncGroup(SyncGroupRequest {
                group_id,
                generation_id,
                member_id,
                assignments,
            })
        }
        api::HEARTBEAT => {
            let group_id = r.string(f, "group id")?;
            let generation_id = r.i32("generation id")?;
            let member_id = r.string(f, "member id")?;
            if version >= 3 {
                r.nullable_string(f, "group instance id")?;
            }
            KafkaRequest::Heartbeat(HeartbeatRequest {
                group_id,
                generation_id,
                member_id,
            })
        }
        api::LEAVE_GROUP => {
            let group_id = r.string(f, "group id")?;
            let member_ids = if version >= 3 {
                (0..r.count(f, 4, "members")?)
                    .map(|_| {
                        let member_id = r.string(f, "member id")?;
                        r.nullable_string(f, "group instance id")?;
                        Ok(member_id)
                    })
                    .collect::<Result<_, KafkaError>>()?
            } else {
                vec![r.string(f, "member id")?]
            };
            KafkaRequest::LeaveGroup(LeaveGroupRequest {
                group_id,
                member_ids,
            })
        }
        api::OFFSET_COMMIT => {
            let group_id = r.string(f, "group id")?;
            let generation_id = r.i32("generation id")?;
            let member_id = r.string(f, "member id")?;
            if version >= 7 {
                r.nullable_string(f, "group instance id")?;
            }
            if (2..=4).contains(&version) {
                r.i64("retention time")?;
            }
            let partition_bytes = 14 + if version >= 6 { 4 } else { 0 };
            let topics = (0..r.count(f, 6, "topics")?)
                .map(|_| {
                    let name = r.string(f, "topic name")?;
                    let partitions = (0..r.count(f, partition_bytes, "partitions")?)
                        .map(|_| {
                            let partition_index = r.i32("partition")?;
                            let committed_offset = r.i64("committed offset")?;
                            if version >= 6 {
                                r.i32("committed leader epoch")?;
                            }
                            Ok(OffsetCommitPartition {
                                partition_index,
                                committed_offset,
                                committed_metadata: r.nullable_string(f, "committed metadata")?,
                            })
                        })
                        .collect::<Result<_, KafkaError>>()?;
                    Ok(OffsetCommitTopic { name, partitions })
                })
                .collect::<Result<_, KafkaError>>()?;
            KafkaRequest::OffsetCommit(OffsetCommitRequest {
                group_id,
                generation_id,
                member_id,
                topics,
            })
        }
        api::OFFSET_FETCH => {
            let group_id = r.string(f, "group id")?;
            let topics = match r.nullable_count(f, 6, "topics")? {
                None if version < 2 => {
                    return Err(KafkaError::Malformed("topics", "null before version 2"));
                }
                None => None,
                Some(count) => Some(
                    (0..count)
                        .map(|_| {
                            let name = r.string(f, "topic name")?;
                            let partitions = (0..r.count(f, 4, "partitions")?)
                                .map(|_| r.i32("partition"))
                                .collect::<Result<_, _>>()?;
                            Ok((name, partitions))
                        })
                        .collect::<Result<_, KafkaError>>()?,
                ),
            };
            KafkaRequest::OffsetFetch(OffsetFetchRequest { group_id, topics })
        }
        api::LIST_GROUPS => KafkaRequest::ListGroups,
        api::DESCRIBE_GROUPS => {
            let groups = (0..r.count(f, 2, "groups")?)
                .map(|_| r.string(f, "group id"))
                .collect::<Result<_, _>>()?;
            if version >= 3 {
                r.bool("include authorized operations")?;
            }
            KafkaRequest::DescribeGroups(groups)
        }
        api::DELETE_GROUPS => KafkaRequest::DeleteGroups(
            (0..r.count(f, 2, "groups")?)
                .map(|_| r.string(f, "group id"))
                .collect::<Result<_, _>>()?,
        ),
        api::CREATE_TOPICS => {
            let topics = (0..r.count(f, 16, "topics")?)
                .map(|_| {
                    let name = r.string(f, "topic name")?;
                    let num_partitions = r.i32("partitions")?;
                    let replication_factor = r.i16("replication factor")?;
                    let assignments = r.count(f, 8, "assignments")?;
                    for _ in 0..assignments {
                        r.i32("partition")?;
                        for _ in 0..r.count(f, 4, "broker ids")? {
                            r.i32("broker id")?;
                        }
                    }
                    let configs = (0..r.count(f, 4, "configs")?)
                        .map(|_| {
                            Ok((
                                r.string(f, "config name")?,
                                r.nullable_string(f, "config value")?,
                            ))
                        })
                        .collect::<Result<_, KafkaError>>()?;
                    Ok(CreatableTopic {
                        name,
                        num_partitions,
                        replication_factor,
                        assignments,
                        configs,
                    })
                })
                .collect::<Result<_, KafkaError>>()?;
            let timeout_ms = r.i32("timeout")?;
            let validate_only = r.bool("validate only")?;
            KafkaRequest::CreateTopics(CreateTopicsRequest {
                topics,
                timeout_ms,
                validate_only,
            })
        }
        api::CREATE_PARTITIONS => {
            let topics = (0..r.count(f, 10, "topics")?)
                .map(|_| {
                    let name = r.string(f, "topic name")?;
                    let count = r.i32("partition count")?;
                    let assignments = r.nullable_count(f, 4, "assignments")?.unwrap_or(0);
                    for _ in 0..assignments {
                        for _ in 0..r.count(f, 4, "broker ids")? {
                            r.i32("broker id")?;
                        }
                    }
                    Ok(CreatePartitionsTopic {
                        name,
                        count,
                        assignments,
                    })
                })
                .collect::<Result<_, KafkaError>>()?;
            KafkaRequest::CreatePartitions(CreatePartitionsRequest {
                topics,
                timeout_ms: r.i32("timeout")?,
                validate_only: r.bool("validate only")?,
            })
        }
        api::DELETE_TOPICS => {
            let names = (0..r.count(f, 2, "topics")?)
                .map(|_| r.string(f, "topic name"))
                .collect::<Result<_, _>>()?;
            KafkaRequest::DeleteTopics(DeleteTopicsRequest {
                names,
                timeout_ms: r.i32("timeout")?,
            })
        }
        api::DESCRIBE_CONFIGS => {
            let resources = (0..r.count(f, 7, "resources")?)
                .map(|_| {
                    let resource_type = r.i8("resource type")?;
                    let resource_name = r.string(f, "resource name")?;
                    let configuration_keys = r
                        .nullable_count(f, 2, "configuration keys")?
                        .map(|count| {
                            (0..count)
                                .map(|_| r.string(f, "configuration key"))
                                .collect::<Result<Vec<_>, _>>()
                        })
                        .transpose()?;
                    Ok(DescribeConfigsResource {
                        resource_type,
                        resource_name,
                        configuration_keys,
                    })
                })
                .collect::<Result<_, KafkaError>>()?;
            let include_synonyms = r.bool("include synonyms")?;
            if version >= 3 {
                r.bool("include documentation")?;
            }
            KafkaRequest::DescribeConfigs(DescribeConfigsRequest {
                resources,
                include_synonyms,
            })
        }
        api::INIT_PRODUCER_ID => KafkaRequest::InitProducerId(InitProducerIdRequest {
            transactional_id: r.nullable_string(f, "transactional id")?,
            transaction_timeout_ms: r.i32("transaction timeout")?,
        }),
        api::DESCRIBE_CLUSTER => KafkaRequest::DescribeCluster(DescribeClusterRequest {
            include_cluster_authorized_operations: r
                .bool("include cluster authorized operations")?,
        }),
        other => return Err(KafkaError::UnknownApiKey(other)),
    };
    if flexible {
        r.tagged_fields()?;
    }
    let entries = r.entries();
    r.finish()?;
    Ok((request, entries))
}

// ---- encoding (Spate's own Kafka client) --------------------------------------------------

/// Encodes a whole request frame (length, header v1 or v2, body) for `version`.
pub fn encode_request(
    request: &KafkaRequest,
    version: i16,
    correlation_id: i32,
    client_id: &str,
) -> BytesMut {
    let api_key = request.api_key();
    let f = is_flexible(api_key, version);
    let mut out = BytesMut::with_capacity(128);
    out.put_i32(0);
    out.put_i16(api_key);
    out.put_i16(version);
    out.put_i32(correlation_id);
    put_nullable_string(&mut out, Some(client_id), false);
    if f {
        put_no_tags(&mut out);
    }
    let o = &mut out;
    match request {
        KafkaRequest::ApiVersions(request) => {
            if version >= 3 {
                put_string(o, &request.client_software_name, f);
                put_string(o, &request.client_software_version, f);
            }
        }
        KafkaRequest::Metadata(request) => {
            match &request.topics {
                None if version == 0 => put_count(o, 0, f),
                None => o.put_i32(-1),
                Some(topics) => {
                    put_count(o, topics.len(), f);
                    for topic in topics {
                        put_string(o, topic, f);
                    }
                }
            }
            if version >= 4 {
                put_bool(o, request.allow_auto_topic_creation);
            }
            if version >= 8 {
                put_bool(o, false);
                put_bool(o, false);
            }
        }
        KafkaRequest::Produce(request) => {
            put_nullable_string(o, request.transactional_id.as_deref(), f);
            o.put_i16(request.acks);
            o.put_i32(request.timeout_ms);
            put_count(o, request.topics.len(), f);
            for topic in &request.topics {
                put_string(o, &topic.name, f);
                put_count(o, topic.partitions.len(), f);
                for partition in &topic.partitions {
                    o.put_i32(partition.index);
                    super::wire::put_nullable_bytes(o, partition.records.as_deref(), f);
                }
            }
        }
        KafkaRequest::Fetch(request) => {
            o.put_i32(-1);
            o.put_i32(request.max_wait_ms);
            o.put_i32(request.min_bytes);
            o.put_i32(request.max_bytes);
            o.put_i8(request.isolation_level);
            if version >= 7 {
                o.put_i32(request.session_id);
                o.put_i32(request.session_epoch);
            }
            put_count(o, request.topics.len(), f);
            for topic in &request.topics {
                put_string(o, &topic.topic, f);
                put_count(o, topic.partitions.len(), f);
                for partition in &topic.partitions {
                    o.put_i32(partition.partition);
                    if version >= 9 {
                        o.put_i32(-1);
                    }
                    o.put_i64(partition.fetch_offset);
                    if version >= 5 {
                        o.put_i64(-1);
                    }
                    o.put_i32(partition.partition_max_bytes);
                }
            }
            if version >= 7 {
                put_count(o, 0, f);
            }
            if version >= 11 {
                put_string(o, "", f);
            }
        }
        KafkaRequest::ListOffsets(request) => {
            o.put_i32(-1);
            if version >= 2 {
                o.put_i8(request.isolation_level);
            }
            put_count(o, request.topics.len(), f);
            for topic in &request.topics {
                put_string(o, &topic.name, f);
                put_count(o, topic.partitions.len(), f);
                for partition in &topic.partitions {
                    o.put_i32(partition.partition_index);
                    if version >= 4 {
                        o.put_i32(-1);
                    }
                    o.put_i64(partition.timestamp);
                }
            }
        }
        KafkaRequest::CreateTopics(request) => {
            put_count(o, request.topics.len(), f);
            for topic in &request.topics {
                put_string(o, &topic.name, f);
                o.put_i32(topic.num_partitions);
                o.put_i16(topic.replication_factor);
                put_count(o, 0, f);
                put_count(o, topic.configs.len(), f);
                for (name, value) in &topic.configs {
                    put_string(o, name, f);
                    put_nullable_string(o, value.as_deref(), f);
                }
            }
            o.put_i32(request.timeout_ms);
            if version >= 1 {
                put_bool(o, request.validate_only);
            }
        }
        KafkaRequest::InitProducerId(request) => {
            put_nullable_string(o, request.transactional_id.as_deref(), f);
            o.put_i32(request.transaction_timeout_ms);
        }
        KafkaRequest::FindCoordinator(request) => {
            put_string(o, &request.key, f);
            if version >= 1 {
                o.put_i8(request.key_type);
            }
        }
        KafkaRequest::DescribeGroups(groups) | KafkaRequest::DeleteGroups(groups) => {
            put_count(o, groups.len(), f);
            for group in groups {
                put_string(o, group, f);
            }
            if matches!(request, KafkaRequest::DescribeGroups(_)) && version >= 3 {
                put_bool(o, false);
            }
        }
        KafkaRequest::ListGroups => {}
        KafkaRequest::DescribeCluster(request) => {
            put_bool(o, request.include_cluster_authorized_operations);
        }
        KafkaRequest::CreatePartitions(request) => {
            put_count(o, request.topics.len(), f);
            for topic in &request.topics {
                put_string(o, &topic.name, f);
                o.put_i32(topic.count);
                // Spate's client never sends assignments: a null array (v0-1 only).
                o.put_i32(-1);
            }
            o.put_i32(request.timeout_ms);
            put_bool(o, request.validate_only);
        }
        other => unimplemented!("Spate's Kafka client does not send {:?}", other.api_key()),
    }
    if f {
        put_no_tags(o);
    }
    super::finish_frame(out)
}

impl KafkaRequest {
    pub fn api_key(&self) -> i16 {
        match self {
            KafkaRequest::ApiVersions(_) => api::API_VERSIONS,
            KafkaRequest::Metadata(_) => api::METADATA,
            KafkaRequest::Produce(_) => api::PRODUCE,
            KafkaRequest::Fetch(_) => api::FETCH,
            KafkaRequest::ListOffsets(_) => api::LIST_OFFSETS,
            KafkaRequest::FindCoordinator(_) => api::FIND_COORDINATOR,
            KafkaRequest::JoinGroup(_) => api::JOIN_GROUP,
            KafkaRequest::SyncGroup(_) => api::SYNC_GROUP,
            KafkaRequest::Heartbeat(_) => api::HEARTBEAT,
            KafkaRequest::LeaveGroup(_) => api::LEAVE_GROUP,
            KafkaRequest::OffsetCommit(_) => api::OFFSET_COMMIT,
            KafkaRequest::OffsetFetch(_) => api::OFFSET_FETCH,
            KafkaRequest::ListGroups => api::LIST_GROUPS,
            KafkaRequest::DescribeGroups(_) => api::DESCRIBE_GROUPS,
            KafkaRequest::DeleteGroups(_) => api::DELETE_GROUPS,
            KafkaRequest::CreateTopics(_) => api::CREATE_TOPICS,
            KafkaRequest::DeleteTopics(_) => api::DELETE_TOPICS,
            KafkaRequest::DescribeConfigs(_) => api::DESCRIBE_CONFIGS,
            KafkaRequest::InitProducerId(_) => api::INIT_PRODUCER_ID,
            KafkaRequest::DescribeCluster(_) => api::DESCRIBE_CLUSTER,
            KafkaRequest::CreatePartitions(_) => api::CREATE_PARTITIONS,
        }
    }
}
