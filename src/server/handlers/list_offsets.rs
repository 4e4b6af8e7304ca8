use std::rc::Rc;

use crate::protocol::{
    ListOffsetsRequest, ListOffsetsResponse, ListOffsetsTopicResponse, Response,
};
use crate::server::shard::Shard;

pub(super) async fn handle(shard: &Rc<Shard>, request: ListOffsetsRequest) -> Response {
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for partition in topic.partitions {
            partitions.push(
                shard
                    .list_offset(&topic.name, partition.partition, partition.timestamp)
                    .await,
            );
        }
        topics.push(ListOffsetsTopicResponse {
            name: topic.name,
            partitions,
        });
    }
    Response::ListOffsets(ListOffsetsResponse { topics })
}
