use crate::broker::metadata::shard_for;
use crate::broker::view::ClusterView;
use crate::protocol::{
    ErrorCode, MetadataRequest, MetadataResponse, PartitionMetadata, Response, ShardAddress,
    Status, TopicMetadata, quoted,
};
use crate::server::shard::Shard;

/// The shard id metadata gives a partition with no leader now: no shard has it, so a
/// client asks again later.
pub(crate) const NO_LEADER: u16 = u16::MAX;

/// Every shard's address, and for each topic asked about, the shard that leads each of
/// its partitions: this broker's own shards, or in a cluster, every live node's.
pub(super) fn handle(shard: &Shard, request: MetadataRequest) -> Response {
    let view = shard.view.borrow().clone();
    let shards = if view.clustered() {
        cluster_shards(&view)
    } else {
        let host = shard.config.listen.ip().to_string();
        (0..shard.count)
            .map(|id| ShardAddress {
                shard_id: id as u16,
                host: host.clone(),
                port: shard.config.shard_port(id),
            })
            .collect()
    };
    let leader_shard = |name: &str, partition: u32| -> u16 {
        if !view.clustered() {
            return shard_for(name, partition, shard.count) as u16;
        }
        view.partition(name, partition)
            .and_then(|state| state.leader)
            .and_then(|leader| view.replica_shard(leader, name, partition))
            .map_or(NO_LEADER, |id| id as u16)
    };
    let metadata = shard.metadata.borrow();
    let names = metadata.names_or_all(request.topics);
    let topics = names
        .into_iter()
        .map(|name| match metadata.topic(&name) {
            Some(topic) => TopicMetadata {
                partitions: (0..topic.partitions)
                    .map(|partition| PartitionMetadata {
                        partition,
                        shard_id: leader_shard(&name, partition),
                    })
                    .collect(),
                name,
                status: Status::ok(),
            },
            None => TopicMetadata {
                status: Status::error(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("topic {} does not exist", quoted(&name)),
                ),
                name,
                partitions: Vec::new(),
            },
        })
        .collect();
    Response::Metadata(MetadataResponse { shards, topics })
}

/// Each live node's shards, at the ports after its bootstrap address.
fn cluster_shards(view: &ClusterView) -> Vec<ShardAddress> {
    view.live_brokers()
        .filter_map(|(node, broker)| {
            let address: std::net::SocketAddr = broker.info.address.parse().ok()?;
            Some(
                (0..usize::from(broker.info.shards)).map(move |index| ShardAddress {
                    shard_id: ClusterView::global_shard_id(node, index) as u16,
                    host: address.ip().to_string(),
                    port: address.port() + 1 + index as u16,
                }),
            )
        })
        .flatten()
        .collect()
}
