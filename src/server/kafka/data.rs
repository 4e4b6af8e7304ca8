//! Metadata, Produce, Fetch and ListOffsets over Kafka's protocol.

use std::rc::Rc;

use bytes::Bytes;

use super::{answered, code, kafka_index, partition_index};
use crate::broker::metadata::shard_for;
use crate::broker::view::ClusterView;
use crate::kafka::{self, error};
use crate::protocol::{self, Acks};
use crate::server::handlers::{Exchange, Outgoing, fetch, produce as native_produce};
use crate::server::shard::{FetchPayload, Shard};

/// Every shard is a Kafka broker; partitions are led by their owner shard. Topics the
/// request names that do not exist are created first when both the client allows it and
/// the broker auto-creates topics.
pub(super) async fn metadata(
    shard: &Rc<Shard>,
    request: kafka::MetadataRequest,
) -> kafka::MetadataResponse {
    if request.allow_auto_topic_creation
        && let Some(names) = &request.topics
    {
        native_produce::auto_create(shard, names.iter().map(String::as_str)).await;
    }
    let brokers = brokers(shard);
    let view = shard.view.borrow().clone();
    let metadata = shard.metadata.borrow();
    let names = metadata.names_or_all(request.topics.unwrap_or_default());
    let placed = |name: &str, partition: u32| -> kafka::MetadataPartition {
        let index = kafka_index(partition);
        if !view.clustered() {
            // Every partition has one replica, its owner shard, always in sync.
            let leader_id = shard_for(name, partition, shard.count) as i32;
            return kafka::MetadataPartition {
                error_code: error::NONE,
                partition_index: index,
                leader_id,
                leader_epoch: 0,
                replicas: vec![leader_id],
                isr: vec![leader_id],
            };
        }
        let ids = |nodes: &[u64]| -> Vec<i32> {
            nodes
                .iter()
                .filter_map(|node| view.replica_shard(*node, name, partition))
                .map(|id| id as i32)
                .collect()
        };
        match view.partition(name, partition) {
            Some(state) => {
                let leader_id = state
                    .leader
                    .and_then(|leader| view.replica_shard(leader, name, partition))
                    .map_or(-1, |id| id as i32);
                kafka::MetadataPartition {
                    error_code: if leader_id < 0 {
                        error::LEADER_NOT_AVAILABLE
                    } else {
                        error::NONE
                    },
                    partition_index: index,
                    leader_id,
                    leader_epoch: state.leader_epoch as i32,
                    replicas: ids(&state.replicas),
                    isr: ids(&state.isr),
                }
            }
            None => kafka::MetadataPartition {
                error_code: error::LEADER_NOT_AVAILABLE,
                partition_index: index,
                leader_id: -1,
                leader_epoch: -1,
                replicas: Vec::new(),
                isr: Vec::new(),
            },
        }
    };
    let topics = names
        .into_iter()
        .map(|name| match metadata.topic(&name) {
            Some(topic) => kafka::MetadataTopic {
                error_code: error::NONE,
                partitions: (0..topic.partitions)
                    .map(|partition| placed(&name, partition))
                    .collect(),
                name,
            },
            None => kafka::MetadataTopic {
                error_code: error::UNKNOWN_TOPIC_OR_PARTITION,
                name,
                partitions: Vec::new(),
            },
        })
        .collect();
    kafka::MetadataResponse {
        brokers,
        cluster_id: CLUSTER_ID.to_string(),
        controller_id: controller_id(shard),
        topics,
    }
}

/// The broker Metadata and DescribeCluster name as the controller: shard 0 (which
/// coordinates topic changes) on its own, else shard 0 of the controller node (-1 while
/// there is none).
pub(super) fn controller_id(shard: &Shard) -> i32 {
    match &shard.cluster {
        None => CONTROLLER_ID,
        Some(handle) => handle
            .leader()
            .map_or(-1, |node| ClusterView::global_shard_id(node, 0) as i32),
    }
}

/// What Metadata and DescribeCluster call the cluster, and the broker they name as its
/// controller (shard 0, which coordinates topic changes).
pub(super) const CLUSTER_ID: &str = "spate";
pub(super) const CONTROLLER_ID: i32 = 0;

/// Every shard as a Kafka broker: node id = shard id, on its own Kafka port.
pub(super) fn brokers(shard: &Shard) -> Vec<kafka::MetadataBroker> {
    let view = shard.view.borrow().clone();
    if view.clustered() {
        // Every shard of every live node with a Kafka door, at the ports after its
        // Kafka address.
        return view
            .live_brokers()
            .filter_map(|(node, broker)| {
                let (host, port) = broker.info.kafka_address.rsplit_once(':')?;
                let port: u16 = port.parse().ok()?;
                let host = host.to_string();
                Some(
                    (0..usize::from(broker.info.shards)).map(move |index| kafka::MetadataBroker {
                        node_id: ClusterView::global_shard_id(node, index) as i32,
                        host: host.clone(),
                        port: i32::from(port) + 1 + index as i32,
                    }),
                )
            })
            .flatten()
            .collect();
    }
    let host = shard.config.kafka_host();
    (0..shard.count)
        .map(|id| kafka::MetadataBroker {
            node_id: id as i32,
            host: host.clone(),
            port: i32::from(shard.config.kafka_shard_port(id).unwrap_or(0)),
        })
        .collect()
}

/// Appends through the same path as a native produce (`handlers::produce::append_all`).
/// `Ok(None)`: acks=0, no answer; `Err`: the connection closes (a failed acks=0 produce).
pub(super) async fn produce(
    shard: &Rc<Shard>,
    request: kafka::ProduceRequest,
    exchange: &Exchange,
) -> Result<Option<kafka::ProduceResponse>, Outgoing> {
    let refuse_all = |code: i16, message: &str| kafka::ProduceResponse {
        topics: request
            .topics
            .iter()
            .map(|topic| {
                let partitions = topic
                    .partitions
                    .iter()
                    .map(|partition| kafka::ProducePartitionResponse {
                        index: partition.index,
                        error_code: code,
                        base_offset: -1,
                        log_start_offset: -1,
                        error_message: Some(message.to_string()),
                    })
                    .collect();
                (topic.name.clone(), partitions)
            })
            .collect(),
    };
    let acks = match request.acks {
        0 => Acks::None,
        1 => Acks::Leader,
        -1 => Acks::All,
        other => {
            return Ok(Some(refuse_all(
                error::INVALID_REQUIRED_ACKS,
                &format!("acks must be 0, 1 or -1, not {other}"),
            )));
        }
    };
    if request.transactional_id.is_some() {
        let answer = refuse_all(
            error::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            "Spate does not support transactions",
        );
        return if acks == Acks::None {
            Err(Outgoing::Close)
        } else {
            Ok(Some(answer))
        };
    }
    native_produce::auto_create(
        shard,
        request.topics.iter().map(|topic| topic.name.as_str()),
    )
    .await;
    let native = protocol::ProduceRequest {
        acks,
        timeout_ms: u32::try_from(request.timeout_ms).unwrap_or(0),
        topics: request
            .topics
            .into_iter()
            .map(|topic| protocol::ProduceTopic {
                name: topic.name,
                partitions: topic
                    .partitions
                    .into_iter()
                    .map(|partition| protocol::ProducePartition {
                        partition: partition_index(partition.index),
                        // A null record set appends nothing: the log refuses it as empty.
                        records: partition.records.unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect(),
    };
    let Some(topics) = native_produce::append_all(shard, native, exchange).await? else {
        return Ok(None);
    };
    Ok(Some(kafka::ProduceResponse {
        topics: topics
            .into_iter()
            .map(|topic| {
                let partitions = topic
                    .partitions
                    .into_iter()
                    .map(|partition| {
                        let ok = partition.status.is_ok();
                        kafka::ProducePartitionResponse {
                            index: kafka_index(partition.partition),
                            error_code: code(&partition.status),
                            base_offset: if ok { partition.base_offset } else { -1 },
                            log_start_offset: -1,
                            error_message: (!ok).then_some(partition.status.message),
                        }
                    })
                    .collect();
                (topic.name, partitions)
            })
            .collect(),
    }))
}

/// Long-polls through the same path as a native fetch (`handlers::fetch::fetch_records`):
/// the stored batches go out as they are, without a copy.
pub(super) async fn fetch(
    shard: &Rc<Shard>,
    request: kafka::FetchRequest,
    exchange: &Exchange,
) -> (kafka::FetchResponse<FetchPayload>, Option<fetch::Room>) {
    let native = protocol::FetchRequest {
        max_wait_ms: u32::try_from(request.max_wait_ms).unwrap_or(0),
        min_bytes: u32::try_from(request.min_bytes).unwrap_or(0),
        max_bytes: u32::try_from(request.max_bytes).unwrap_or(0),
        topics: request
            .topics
            .into_iter()
            .map(|topic| protocol::FetchTopic {
                name: topic.topic,
                partitions: topic
                    .partitions
                    .into_iter()
                    .map(|partition| protocol::FetchPartition {
                        partition: partition_index(partition.partition),
                        offset: partition.fetch_offset,
                        max_bytes: u32::try_from(partition.partition_max_bytes).unwrap_or(0),
                    })
                    .collect(),
            })
            .collect(),
    };
    // A fetch refused as a whole (too many partitions, one named twice): every partition
    // answers the error, and from v7 the top-level code says it too.
    if let Err(status) = fetch::check(&native) {
        let failed = answered(&status);
        let topics = native
            .topics
            .into_iter()
            .map(|topic| {
                let partitions = topic
                    .partitions
                    .into_iter()
                    .map(|partition| kafka::FetchPartitionResponse {
                        partition_index: kafka_index(partition.partition),
                        error_code: failed,
                        high_watermark: -1,
                        log_start_offset: -1,
                        records: FetchPayload::Remote(Bytes::new()),
                    })
                    .collect();
                (topic.name, partitions)
            })
            .collect();
        let response = kafka::FetchResponse {
            error_code: failed,
            topics,
        };
        return (response, None);
    }
    let (response, room) = fetch::fetch_records(shard, native, exchange).await;
    let topics = response
        .topics
        .into_iter()
        .map(|topic| {
            let partitions = topic
                .partitions
                .into_iter()
                .map(|partition| kafka::FetchPartitionResponse {
                    partition_index: kafka_index(partition.partition),
                    error_code: code(&partition.status),
                    high_watermark: partition.high_watermark,
                    log_start_offset: partition.log_start_offset,
                    records: partition.records,
                })
                .collect();
            (topic.name, partitions)
        })
        .collect();
    (
        kafka::FetchResponse {
            error_code: error::NONE,
            topics,
        },
        room,
    )
}

/// Earliest (-2), latest (-1), or the first offset at or after a timestamp. Kafka answers
/// -1 as the timestamp of earliest and latest; Spate answers -1 for every lookup (the
/// offset is what clients use).
pub(super) async fn list_offsets(
    shard: &Rc<Shard>,
    request: kafka::ListOffsetsRequest,
) -> kafka::ListOffsetsResponse {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            let answer = shard
                .list_offset(
                    &topic.name,
                    partition_index(partition.partition_index),
                    partition.timestamp,
                )
                .await;
            partitions.push(kafka::ListOffsetsPartitionResponse {
                partition_index: partition.partition_index,
                error_code: answered(&answer.status),
                timestamp: -1,
                offset: if answer.status.is_ok() {
                    answer.offset
                } else {
                    -1
                },
            });
        }
        topics.push((topic.name, partitions));
    }
    kafka::ListOffsetsResponse { topics }
}
