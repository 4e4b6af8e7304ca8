use std::rc::Rc;

use crate::protocol::{
    CreatePartitionsRequest, CreateTopicsRequest, DeleteTopicsRequest, DescribeTopicsRequest,
    ErrorCode, Response, Status, TopicDescription, quoted,
};
use crate::server::shard::Shard;
use crate::storage::LogConfig;

pub(super) async fn create(shard: &Rc<Shard>, request: CreateTopicsRequest) -> Response {
    Response::CreateTopics(shard.create_topics(request.topics).await)
}

pub(super) async fn create_partitions(
    shard: &Rc<Shard>,
    request: CreatePartitionsRequest,
) -> Response {
    Response::CreatePartitions(shard.create_partitions(request.topics).await)
}

pub(super) async fn delete(shard: &Rc<Shard>, request: DeleteTopicsRequest) -> Response {
    Response::DeleteTopics(shard.delete_topics(request.names).await)
}

pub(super) fn describe(shard: &Shard, request: DescribeTopicsRequest) -> Response {
    let metadata = shard.metadata.borrow();
    let names = metadata.names_or_all(request.names);
    let topics = names
        .into_iter()
        .map(|name| match metadata.topic(&name) {
            Some(topic) => TopicDescription {
                name,
                status: Status::ok(),
                partitions: topic.partitions,
                configs: effective_configs(&shard.log_config(topic)),
            },
            None => TopicDescription {
                status: Status::error(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("topic {} does not exist", quoted(&name)),
                ),
                name,
                partitions: 0,
                configs: Vec::new(),
            },
        })
        .collect();
    Response::DescribeTopics(topics)
}

/// Every config key with its value in effect, in Kafka's spelling (-1: no limit).
pub(crate) fn effective_configs(config: &LogConfig) -> Vec<(String, String)> {
    let optional = |value: Option<u64>| value.map_or("-1".to_string(), |value| value.to_string());
    vec![
        ("segment.bytes".into(), config.segment_bytes.to_string()),
        ("segment.ms".into(), config.segment_ms.to_string()),
        ("retention.ms".into(), optional(config.retention_ms)),
        ("retention.bytes".into(), optional(config.retention_bytes)),
        ("flush.ms".into(), config.flush_ms.to_string()),
        ("flush.bytes".into(), optional(config.flush_bytes)),
        (
            "index.interval.bytes".into(),
            config.index_interval_bytes.to_string(),
        ),
        (
            "tail.cache.bytes".into(),
            config.tail_cache_bytes.to_string(),
        ),
        (
            "message.timestamp.after.max.ms".into(),
            config.message_timestamp_after_max_ms.to_string(),
        ),
        (
            "message.timestamp.before.max.ms".into(),
            config.message_timestamp_before_max_ms.to_string(),
        ),
        (
            "min.insync.replicas".into(),
            config.min_insync_replicas.to_string(),
        ),
    ]
}
