//! ApiVersions, CreateTopics, CreatePartitions, DeleteTopics, DescribeConfigs,
//! InitProducerId and DescribeCluster over Kafka's protocol.

use std::rc::Rc;

use super::answered;
use crate::kafka::{self, error};
use crate::protocol::{ErrorCode, NewPartitions, NewTopic, Status, TopicStatus};
use crate::server::handlers::topics::effective_configs;
use crate::server::shard::Shard;

/// Kafka's resource types in DescribeConfigs.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Kafka's config sources: a topic's own setting, or the broker's default.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_DEFAULT: i8 = 5;

pub(super) fn api_versions() -> kafka::ApiVersionsResponse {
    kafka::ApiVersionsResponse {
        error_code: error::NONE,
    }
}

/// Creates topics through the same path as the native door. Spate keeps one copy of each
/// partition (on its owner shard), so a replication factor other than 1 (or -1, the
/// broker's default) and explicit replica assignments are refused with Kafka's codes.
pub(super) async fn create_topics(
    shard: &Rc<Shard>,
    request: kafka::CreateTopicsRequest,
) -> kafka::CreateTopicsResponse {
    let mut results: Vec<Option<kafka::TopicResult>> = Vec::with_capacity(request.topics.len());
    let mut to_create = Vec::new();
    for topic in request.topics {
        let refuse = |code: i16, message: String| {
            Some(kafka::TopicResult {
                name: topic.name.clone(),
                error_code: code,
                error_message: Some(message),
            })
        };
        let result = if topic.replication_factor == 0 || topic.replication_factor < -1 {
            refuse(
                error::INVALID_REPLICATION_FACTOR,
                format!(
                    "a replication factor of {} is not one; send -1 for the broker's default",
                    topic.replication_factor
                ),
            )
        } else if topic.assignments > 0 {
            refuse(
                error::INVALID_REPLICA_ASSIGNMENT,
                "Spate places partitions on shards itself; send no replica assignment".to_string(),
            )
        } else if topic.num_partitions == 0 || topic.num_partitions < -1 {
            refuse(
                error::INVALID_PARTITIONS,
                format!(
                    "a topic needs at least one partition, not {}",
                    topic.num_partitions
                ),
            )
        } else if request.validate_only {
            let exists = shard.metadata.borrow().topic(&topic.name).is_some();
            Some(kafka::TopicResult {
                error_code: if exists {
                    error::TOPIC_ALREADY_EXISTS
                } else {
                    error::NONE
                },
                error_message: None,
                name: topic.name.clone(),
            })
        } else {
            None
        };
        if result.is_none() {
            to_create.push(NewTopic {
                partitions: u32::try_from(topic.num_partitions)
                    .unwrap_or(shard.config.default_partitions),
                configs: topic
                    .configs
                    .into_iter()
                    .filter_map(|(key, value)| value.map(|value| (key, value)))
                    .collect(),
                name: topic.name,
                replication_factor: u16::try_from(topic.replication_factor)
                    .unwrap_or(shard.config.default_replication_factor),
            });
        }
        results.push(result);
    }
    let created = shard.create_topics(to_create).await;
    kafka::CreateTopicsResponse {
        topics: merge(results, created),
    }
}

/// Adds partitions through the same path as the native door. Explicit replica
/// assignments are refused, as at creation; `validate_only` checks without adding.
pub(super) async fn create_partitions(
    shard: &Rc<Shard>,
    request: kafka::CreatePartitionsRequest,
) -> kafka::CreatePartitionsResponse {
    let mut results: Vec<Option<kafka::TopicResult>> = Vec::with_capacity(request.topics.len());
    let mut to_grow = Vec::new();
    for topic in request.topics {
        let refuse = |status: Status| {
            Some(kafka::TopicResult {
                name: topic.name.clone(),
                error_code: answered(&status),
                error_message: Some(status.message),
            })
        };
        let result = if topic.assignments > 0 {
            Some(kafka::TopicResult {
                name: topic.name.clone(),
                error_code: error::INVALID_REPLICA_ASSIGNMENT,
                error_message: Some(
                    "Spate places partitions on shards itself; send no replica assignment"
                        .to_string(),
                ),
            })
        } else if topic.count < 1 {
            refuse(Status::error(
                ErrorCode::InvalidPartitions,
                format!("a topic needs at least one partition, not {}", topic.count),
            ))
        } else if request.validate_only {
            let checked = shard
                .metadata
                .borrow()
                .check_new_partitions(&topic.name, topic.count as u32);
            match checked {
                Ok(_) => Some(kafka::TopicResult {
                    name: topic.name.clone(),
                    error_code: error::NONE,
                    error_message: None,
                }),
                Err(status) => refuse(status),
            }
        } else {
            None
        };
        if result.is_none() {
            to_grow.push(NewPartitions {
                name: topic.name,
                count: topic.count as u32,
            });
        }
        results.push(result);
    }
    let grown = shard.create_partitions(to_grow).await;
    kafka::CreatePartitionsResponse {
        topics: merge(results, grown),
    }
}

/// The answers in request order: those given in the Kafka door (`Some`), and in their
/// places (`None`) the native path's answers to the rest, in its order.
fn merge(
    results: Vec<Option<kafka::TopicResult>>,
    native: Vec<TopicStatus>,
) -> Vec<kafka::TopicResult> {
    let mut native = native.into_iter();
    results
        .into_iter()
        .map(|result| {
            result.unwrap_or_else(|| {
                let status = native.next().expect("one native answer per topic sent on");
                let ok = status.status.is_ok();
                kafka::TopicResult {
                    name: status.name,
                    error_code: answered(&status.status),
                    error_message: (!ok).then_some(status.status.message),
                }
            })
        })
        .collect()
}

pub(super) async fn delete_topics(
    shard: &Rc<Shard>,
    request: kafka::DeleteTopicsRequest,
) -> kafka::DeleteTopicsResponse {
    let topics = shard
        .delete_topics(request.names)
        .await
        .into_iter()
        .map(|status| (status.name, answered(&status.status)))
        .collect();
    kafka::DeleteTopicsResponse { topics }
}

/// A topic's configs in effect (the keys Spate has, in Kafka's spelling), each marked as
/// the topic's own setting or the broker's default; a broker has none to describe.
pub(super) fn describe_configs(
    shard: &Shard,
    request: kafka::DescribeConfigsRequest,
) -> kafka::DescribeConfigsResponse {
    let metadata = shard.metadata.borrow();
    let results = request
        .resources
        .into_iter()
        .map(|resource| {
            let mut result = kafka::DescribeConfigsResult {
                error_code: error::NONE,
                error_message: None,
                resource_type: resource.resource_type,
                resource_name: resource.resource_name,
                configs: Vec::new(),
            };
            match resource.resource_type {
                RESOURCE_TOPIC => match metadata.topic(&result.resource_name) {
                    Some(topic) => {
                        let wanted = |key: &str| {
                            resource
                                .configuration_keys
                                .as_ref()
                                .is_none_or(|keys| keys.iter().any(|wanted| wanted == key))
                        };
                        result.configs = effective_configs(&shard.log_config(topic))
                            .into_iter()
                            .filter(|(key, _)| wanted(key))
                            .map(|(name, value)| kafka::ConfigEntry {
                                source: if topic.configs.iter().any(|(own, _)| *own == name) {
                                    SOURCE_TOPIC
                                } else {
                                    SOURCE_DEFAULT
                                },
                                name,
                                value,
                            })
                            .collect();
                    }
                    None => {
                        result.error_code = error::UNKNOWN_TOPIC_OR_PARTITION;
                        result.error_message =
                            Some(format!("topic {} does not exist", result.resource_name));
                    }
                },
                RESOURCE_BROKER => {}
                other => {
                    result.error_code = error::INVALID_REQUEST;
                    result.error_message = Some(format!(
                        "Spate describes topics (resource type 2) and brokers (4), not resource type {other}"
                    ));
                }
            }
            result
        })
        .collect();
    kafka::DescribeConfigsResponse { results }
}

/// The cluster as Metadata describes it (librdkafka's `DescribeCluster` admin call).
pub(super) fn describe_cluster(shard: &Shard) -> kafka::DescribeClusterResponse {
    kafka::DescribeClusterResponse {
        cluster_id: super::data::CLUSTER_ID.to_string(),
        controller_id: super::data::controller_id(shard),
        brokers: super::data::brokers(shard),
    }
}

/// A producer id for an idempotent producer (epoch 0). Transactions are not supported.
pub(super) async fn init_producer_id(
    shard: &Rc<Shard>,
    request: kafka::InitProducerIdRequest,
) -> kafka::InitProducerIdResponse {
    if request.transactional_id.is_some() {
        return kafka::InitProducerIdResponse {
            error_code: error::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            producer_id: -1,
            producer_epoch: -1,
        };
    }
    match shard.init_producer_id().await {
        Ok(producer_id) => kafka::InitProducerIdResponse {
            error_code: error::NONE,
            producer_id,
            producer_epoch: 0,
        },
        Err(status) => kafka::InitProducerIdResponse {
            error_code: answered(&status),
            producer_id: -1,
            producer_epoch: -1,
        },
    }
}
