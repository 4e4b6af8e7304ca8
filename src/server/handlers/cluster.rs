//! The cluster's requests: messages between nodes (handed to this node's Raft thread),
//! and DescribeCluster.

use bytes::Bytes;

use crate::broker::view::ClusterView;
use crate::protocol::{
    ClusterDescription, DescribeClusterRequest, ErrorCode, NodeDescription, PartitionReplicas,
    Response, Status, TopicReplicas, quoted,
};
use crate::server::shard::Shard;

/// A message from another node of the cluster.
pub(super) async fn rpc(shard: &Shard, message: Bytes) -> Response {
    let Some(handle) = &shard.cluster else {
        return Response::Failed(Status::error(
            ErrorCode::InvalidRequest,
            "this broker runs on its own (no --cluster): it takes no cluster messages",
        ));
    };
    match handle.rpc(message).await {
        Ok(answer) => Response::ClusterRpc(answer),
        Err(reason) => Response::Failed(Status::error(ErrorCode::ShuttingDown, reason)),
    }
}

/// The cluster as this node knows it. A broker on its own answers as a cluster of one
/// (node 0), leading every partition.
pub(super) fn describe(shard: &Shard, request: DescribeClusterRequest) -> Response {
    let view = shard.view.borrow().clone();
    let metadata = shard.metadata.borrow();
    let names = metadata.names_or_all(request.topics);
    let Some(handle) = &shard.cluster else {
        let kafka_address = shard
            .config
            .kafka_listen
            .map(|kafka| format!("{}:{}", shard.config.kafka_host(), kafka.port()))
            .unwrap_or_default();
        let topics = names
            .into_iter()
            .map(|name| match metadata.topic(&name) {
                Some(topic) => TopicReplicas {
                    partitions: (0..topic.partitions)
                        .map(|partition| PartitionReplicas {
                            partition,
                            leader: 0,
                            leader_epoch: 0,
                            replicas: vec![0],
                            isr: vec![0],
                        })
                        .collect(),
                    name,
                    status: Status::ok(),
                },
                None => missing(name),
            })
            .collect();
        return Response::DescribeCluster(ClusterDescription {
            node_id: 0,
            clustered: false,
            controller: -1,
            nodes: vec![NodeDescription {
                id: 0,
                address: shard.config.listen.to_string(),
                kafka_address,
                shards: shard.count as u16,
                fenced: false,
            }],
            topics,
        });
    };
    // A topic this node has not applied yet is not described, as Metadata does not name
    // it: both answer from what this node serves.
    let names = names
        .into_iter()
        .map(|name| (metadata.topic(&name).is_some(), name))
        .collect();
    Response::DescribeCluster(describe_cluster(&view, handle.leader(), names))
}

fn describe_cluster(
    view: &ClusterView,
    controller: Option<u64>,
    names: Vec<(bool, String)>,
) -> ClusterDescription {
    let topics = names
        .into_iter()
        .map(|(applied, name)| match view.state.topics.get(&name) {
            Some(topic) if applied => TopicReplicas {
                partitions: topic
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(index, partition)| PartitionReplicas {
                        partition: index as u32,
                        leader: partition.leader.map_or(-1, |leader| leader as i64),
                        leader_epoch: partition.leader_epoch,
                        replicas: partition.replicas.clone(),
                        isr: partition.isr.clone(),
                    })
                    .collect(),
                name,
                status: Status::ok(),
            },
            _ => missing(name),
        })
        .collect();
    ClusterDescription {
        node_id: view.node_id.unwrap_or(0),
        clustered: true,
        controller: controller.map_or(-1, |id| id as i64),
        nodes: view
            .state
            .brokers
            .iter()
            .map(|(id, broker)| NodeDescription {
                id: *id,
                address: broker.info.address.clone(),
                kafka_address: broker.info.kafka_address.clone(),
                shards: broker.info.shards,
                fenced: broker.fenced,
            })
            .collect(),
        topics,
    }
}

fn missing(name: String) -> TopicReplicas {
    TopicReplicas {
        status: Status::error(
            ErrorCode::UnknownTopicOrPartition,
            format!("topic {} does not exist", quoted(&name)),
        ),
        name,
        partitions: Vec::new(),
    }
}
