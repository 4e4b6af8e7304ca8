//! Consumer groups over Kafka's protocol, through the same group coordinator as native
//! members (`group::coordinator`): Kafka members assign partitions themselves (the leader
//! gets every member's subscription in JoinGroup and sends the assignments in SyncGroup),
//! which the coordinator supports alongside its own assignors.

use std::rc::Rc;

use bytes::Bytes;

use super::{answered, kafka_index, partition_index};
use crate::group::coordinator::{ClientAssignment, GroupAnswer, GroupCall, MemberMetadata};
use crate::group::coordinator_shard;
use crate::kafka::{self, RequestHeader, consumer, error};
use crate::protocol::{self, GroupIdRequest, Request, Response, Status, TopicPartitions};
use crate::server::handlers::groups as native;
use crate::server::shard::Shard;

/// The shard that coordinates a group, as a Kafka broker: on a broker on its own, the
/// shard its offsets partition falls to; in a cluster, the shard of the node that leads
/// its `__consumer_offsets` partition (created at the first ask). Transactions have no
/// coordinator in Spate.
pub(super) async fn find_coordinator(
    shard: &Shard,
    request: kafka::FindCoordinatorRequest,
) -> kafka::FindCoordinatorResponse {
    let unavailable = |message: String| kafka::FindCoordinatorResponse {
        error_code: error::COORDINATOR_NOT_AVAILABLE,
        error_message: Some(message),
        node_id: -1,
        host: String::new(),
        port: -1,
    };
    if request.key_type != 0 {
        return unavailable("Spate does not support transactions".to_string());
    }
    if shard.cluster.is_some() {
        let found = match native::kafka_coordinator(shard, &request.key).await {
            Ok(Some(id)) => super::data::brokers(shard)
                .into_iter()
                .find(|broker| i64::from(broker.node_id) == id as i64),
            Ok(None) => None,
            Err(status) => return unavailable(status.message),
        };
        return match found {
            Some(broker) => kafka::FindCoordinatorResponse {
                error_code: error::NONE,
                error_message: None,
                node_id: broker.node_id,
                host: broker.host,
                port: broker.port,
            },
            None => unavailable(format!(
                "group {}'s coordinator is moving: ask again",
                protocol::quoted(&request.key)
            )),
        };
    }
    let coordinator = coordinator_shard(&request.key, shard.count);
    kafka::FindCoordinatorResponse {
        error_code: error::NONE,
        error_message: None,
        node_id: coordinator as i32,
        host: shard.config.kafka_host(),
        port: i32::from(shard.config.kafka_shard_port(coordinator).unwrap_or(0)),
    }
}

fn join_failed(code: i16, member_id: String) -> kafka::JoinGroupResponse {
    kafka::JoinGroupResponse {
        error_code: code,
        generation_id: -1,
        protocol_name: String::new(),
        leader: String::new(),
        member_id,
        members: Vec::new(),
    }
}

pub(super) async fn join(
    shard: &Rc<Shard>,
    request: kafka::JoinGroupRequest,
    header: &RequestHeader,
) -> kafka::JoinGroupResponse {
    let config = &shard.config;
    let session = u32::try_from(request.session_timeout_ms).unwrap_or(0);
    if !(config.group_min_session_timeout_ms..=config.group_max_session_timeout_ms)
        .contains(&session)
    {
        return join_failed(error::INVALID_SESSION_TIMEOUT, request.member_id);
    }
    // v0 has no rebalance timeout: the session timeout stands in for it, as in Kafka.
    let rebalance = u32::try_from(request.rebalance_timeout_ms).unwrap_or(session);
    // The topics of the first subscription that decodes (Kafka's consumer protocol);
    // other protocol types subscribe to nothing the coordinator can see.
    let topics = if request.protocol_type == consumer::CONSUMER {
        request
            .protocols
            .iter()
            .find_map(|(_, metadata)| consumer::decode_subscription(metadata.clone()).ok())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let call = GroupCall::KafkaJoin {
        request: protocol::JoinGroupRequest {
            group_id: request.group_id,
            member_id: request.member_id.clone(),
            client_id: header.client_id.clone().unwrap_or_default(),
            session_timeout_ms: session,
            rebalance_timeout_ms: rebalance,
            topics,
            assignors: request
                .protocols
                .iter()
                .map(|(name, _)| name.clone())
                .collect(),
        },
        protocol_type: request.protocol_type,
        protocols: request.protocols,
    };
    match native::call(shard, call).await {
        Ok(GroupAnswer::Joined(Ok(joined))) => kafka::JoinGroupResponse {
            error_code: error::NONE,
            generation_id: joined.response.generation,
            protocol_name: joined.response.assignor,
            leader: joined.response.leader_id,
            member_id: joined.response.member_id,
            members: joined
                .members
                .into_iter()
                .map(|(member_id, metadata)| (member_id, metadata_bytes(metadata)))
                .collect(),
        },
        Ok(GroupAnswer::Joined(Err(status))) | Err(status) => {
            join_failed(answered(&status), request.member_id)
        }
        Ok(_) => unreachable!("a join gets a join's answer"),
    }
}

/// A member's subscription as a Kafka leader reads it: a native member's topics are
/// written as Kafka's consumer protocol subscription.
fn metadata_bytes(metadata: MemberMetadata) -> Bytes {
    match metadata {
        MemberMetadata::Kafka(bytes) => bytes,
        MemberMetadata::Native { topics } => consumer::encode_subscription(&topics),
    }
}

pub(super) async fn sync(
    shard: &Rc<Shard>,
    request: kafka::SyncGroupRequest,
) -> kafka::SyncGroupResponse {
    let assignments = request
        .assignments
        .into_iter()
        .map(|(member_id, bytes)| ClientAssignment {
            member_id,
            partitions: consumer::decode_assignment(bytes.clone()).ok(),
            bytes,
        })
        .collect();
    let call = GroupCall::KafkaSync {
        request: protocol::SyncGroupRequest {
            group_id: request.group_id,
            generation: request.generation_id,
            member_id: request.member_id,
        },
        assignments,
    };
    match native::call(shard, call).await {
        Ok(GroupAnswer::Synced(Ok(assignment))) => kafka::SyncGroupResponse {
            error_code: error::NONE,
            assignment,
        },
        Ok(GroupAnswer::Synced(Err(status))) | Err(status) => kafka::SyncGroupResponse {
            error_code: answered(&status),
            assignment: Bytes::new(),
        },
        Ok(_) => unreachable!("a sync gets a sync's answer"),
    }
}

/// A native group request's answer, or the status it failed with.
async fn native_call(shard: &Rc<Shard>, request: Request) -> Result<Response, Status> {
    match native::call(shard, GroupCall::Native(request)).await? {
        GroupAnswer::Native(Response::Failed(status)) => Err(status),
        GroupAnswer::Native(response) => Ok(response),
        _ => unreachable!("a native call gets a native answer"),
    }
}

fn error_code(outcome: &Result<Response, Status>) -> i16 {
    match outcome {
        Ok(_) => error::NONE,
        Err(status) => answered(status),
    }
}

/// Answered at once (no held heartbeat): Kafka clients send their own on a timer.
pub(super) async fn heartbeat(
    shard: &Rc<Shard>,
    request: kafka::HeartbeatRequest,
) -> kafka::HeartbeatResponse {
    let outcome = native_call(
        shard,
        Request::Heartbeat(protocol::HeartbeatRequest {
            group_id: request.group_id,
            generation: request.generation_id,
            member_id: request.member_id,
            max_wait_ms: 0,
        }),
    )
    .await;
    kafka::HeartbeatResponse {
        error_code: error_code(&outcome),
    }
}

pub(super) async fn leave(
    shard: &Rc<Shard>,
    request: kafka::LeaveGroupRequest,
) -> kafka::LeaveGroupResponse {
    let mut members = Vec::with_capacity(request.member_ids.len());
    for member_id in request.member_ids {
        let outcome = native_call(
            shard,
            Request::LeaveGroup(protocol::LeaveGroupRequest {
                group_id: request.group_id.clone(),
                member_id: member_id.clone(),
            }),
        )
        .await;
        members.push((member_id, error_code(&outcome)));
    }
    kafka::LeaveGroupResponse {
        // Before v3 one member leaves and the top-level code is its own.
        error_code: members.first().map_or(error::NONE, |(_, code)| *code),
        members,
    }
}

pub(super) async fn commit(
    shard: &Rc<Shard>,
    request: kafka::OffsetCommitRequest,
) -> kafka::OffsetCommitResponse {
    let asked: Vec<(String, Vec<i32>)> = request
        .topics
        .iter()
        .map(|topic| {
            let partitions = topic.partitions.iter().map(|p| p.partition_index).collect();
            (topic.name.clone(), partitions)
        })
        .collect();
    let outcome = native_call(
        shard,
        Request::OffsetCommit(protocol::OffsetCommitRequest {
            group_id: request.group_id,
            generation: request.generation_id,
            member_id: request.member_id,
            topics: request
                .topics
                .into_iter()
                .map(|topic| protocol::OffsetCommitTopic {
                    name: topic.name,
                    partitions: topic
                        .partitions
                        .into_iter()
                        .map(|partition| protocol::OffsetCommitPartition {
                            partition: partition_index(partition.partition_index),
                            offset: partition.committed_offset,
                            metadata: partition.committed_metadata.unwrap_or_default(),
                        })
                        .collect(),
                })
                .collect(),
        }),
    )
    .await;
    let topics = match outcome {
        Ok(Response::OffsetCommit(topics)) => topics
            .into_iter()
            .map(|topic| {
                let partitions = topic
                    .partitions
                    .iter()
                    .map(|partition| {
                        (
                            kafka_index(partition.partition),
                            answered(&partition.status),
                        )
                    })
                    .collect();
                (topic.name, partitions)
            })
            .collect(),
        Ok(_) => unreachable!("a commit gets a commit's answer"),
        // Refused as a whole (not a member, a stale generation): every partition says so.
        Err(status) => {
            let failed = answered(&status);
            asked
                .into_iter()
                .map(|(name, partitions)| {
                    (name, partitions.into_iter().map(|p| (p, failed)).collect())
                })
                .collect()
        }
    };
    kafka::OffsetCommitResponse { topics }
}

/// Committed offsets (-1 where the group has none, as Kafka answers for an unknown group
/// too).
pub(super) async fn fetch_offsets(
    shard: &Rc<Shard>,
    request: kafka::OffsetFetchRequest,
) -> kafka::OffsetFetchResponse {
    let topics = request
        .topics
        .unwrap_or_default()
        .into_iter()
        .map(|(name, partitions)| TopicPartitions {
            name,
            partitions: partitions.into_iter().map(partition_index).collect(),
        })
        .collect();
    let outcome = native_call(
        shard,
        Request::OffsetFetch(protocol::OffsetFetchRequest {
            group_id: request.group_id,
            topics,
        }),
    )
    .await;
    match outcome {
        Ok(Response::OffsetFetch(topics)) => kafka::OffsetFetchResponse {
            error_code: error::NONE,
            topics: topics
                .into_iter()
                .map(|topic| {
                    let partitions = topic
                        .partitions
                        .into_iter()
                        .map(|partition| kafka::OffsetFetchPartitionResponse {
                            partition_index: kafka_index(partition.partition),
                            committed_offset: partition.offset,
                            metadata: Some(partition.metadata),
                            error_code: answered(&partition.status),
                        })
                        .collect();
                    (topic.name, partitions)
                })
                .collect(),
        },
        Ok(_) => unreachable!("an offset fetch gets an offset fetch's answer"),
        Err(status) => kafka::OffsetFetchResponse {
            error_code: answered(&status),
            topics: Vec::new(),
        },
    }
}

/// Every shard's groups; Spate's groups all speak the consumer protocol type unless a
/// Kafka member brought another.
pub(super) async fn list(shard: &Rc<Shard>) -> kafka::ListGroupsResponse {
    match native::list(shard).await {
        Ok(groups) => kafka::ListGroupsResponse {
            error_code: error::NONE,
            groups: groups
                .into_iter()
                .map(|group| (group.group_id, consumer::CONSUMER.to_string()))
                .collect(),
        },
        Err(status) => kafka::ListGroupsResponse {
            error_code: answered(&status),
            groups: Vec::new(),
        },
    }
}

/// A group that does not exist is described as "Dead" with no members, as Kafka does.
pub(super) async fn describe(
    shard: &Rc<Shard>,
    names: Vec<String>,
) -> kafka::DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(names.len());
    for group_id in names {
        let call = GroupCall::KafkaDescribe {
            group_id: group_id.clone(),
        };
        let described = match native::call(shard, call).await {
            Ok(GroupAnswer::Described(described)) => described,
            Ok(_) => unreachable!("a describe gets a describe's answer"),
            Err(status) => Err(status),
        };
        groups.push(match described {
            Ok(group) => kafka::DescribedGroup {
                error_code: error::NONE,
                group_id,
                state: group.state.to_string(),
                protocol_type: group.protocol_type,
                protocol: group.protocol,
                members: group
                    .members
                    .into_iter()
                    .map(|member| kafka::DescribedMember {
                        member_id: member.member_id,
                        client_id: member.client_id,
                        client_host: String::new(),
                        metadata: metadata_bytes(member.metadata),
                        assignment: match member.assignment {
                            Ok(bytes) => bytes,
                            Err(partitions) => consumer::encode_assignment(
                                &partitions
                                    .into_iter()
                                    .map(|topic| (topic.name, topic.partitions))
                                    .collect(),
                            ),
                        },
                    })
                    .collect(),
            },
            Err(status) => kafka::DescribedGroup {
                error_code: match status.code {
                    protocol::ErrorCode::UnknownGroup => error::NONE,
                    protocol::ErrorCode::InvalidRequest => error::INVALID_GROUP_ID,
                    _ => answered(&status),
                },
                group_id,
                state: "Dead".to_string(),
                protocol_type: String::new(),
                protocol: String::new(),
                members: Vec::new(),
            },
        });
    }
    kafka::DescribeGroupsResponse { groups }
}

pub(super) async fn delete(shard: &Rc<Shard>, names: Vec<String>) -> kafka::DeleteGroupsResponse {
    let mut results = Vec::with_capacity(names.len());
    for group_id in names {
        let outcome = native_call(
            shard,
            Request::DeleteGroup(GroupIdRequest {
                group_id: group_id.clone(),
            }),
        )
        .await;
        results.push((group_id, error_code(&outcome)));
    }
    kafka::DeleteGroupsResponse { results }
}
