use crate::broker::metadata::shard_for;
use crate::protocol::{
    ErrorCode, MetadataRequest, MetadataResponse, PartitionMetadata, Response, ShardAddress,
    Status, TopicMetadata, quoted,
};
use crate::server::shard::Shard;

pub(super) fn handle(shard: &Shard, request: MetadataRequest) -> Response {
    let host = shard.config.listen.ip().to_string();
    let shards = (0..shard.count)
        .map(|id| ShardAddress {
            shard_id: id as u16,
            host: host.clone(),
            port: shard.config.shard_port(id),
        })
        .collect();
    let metadata = shard.metadata.borrow();
    let names = metadata.names_or_all(request.topics);
    let topics = names
        .into_iter()
        .map(|name| match metadata.topic(&name) {
            Some(topic) => TopicMetadata {
                partitions: (0..topic.partitions)
                    .map(|partition| PartitionMetadata {
                        partition,
                        shard_id: shard_for(&name, partition, shard.count) as u16,
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
