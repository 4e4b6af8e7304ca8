use std::rc::Rc;

use super::Outgoing;
use crate::protocol::{
    Acks, ErrorCode, NewTopic, ProducePartitionResponse, ProduceRequest, ProduceResponse,
    ProduceTopicResponse, Response,
};
use crate::server::shard::Shard;

/// Appends every partition's batches (partitions in parallel, on their owners) and answers
/// once all are durable under their topic's flush policy; with acks=0, not at all.
pub(super) async fn handle(
    shard: &Rc<Shard>,
    request: ProduceRequest,
    correlation_id: u32,
) -> Option<Outgoing> {
    if shard.config.auto_create_topics {
        let missing: Vec<NewTopic> = request
            .topics
            .iter()
            .filter(|topic| shard.metadata.borrow().topic(&topic.name).is_none())
            .map(|topic| NewTopic {
                name: topic.name.clone(),
                partitions: shard.config.default_partitions,
                configs: Vec::new(),
            })
            .collect();
        if !missing.is_empty() {
            for created in shard.create_topics(missing).await {
                if !created.status.is_ok() && created.status.code != ErrorCode::TopicAlreadyExists {
                    tracing::warn!(topic = created.name, status = %created.status, "auto-creating a topic");
                }
            }
        }
    }
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in request.topics {
        let tasks: Vec<_> = topic
            .partitions
            .into_iter()
            .map(|partition| {
                let shard = shard.clone();
                let name = topic.name.clone();
                glommio::spawn_local(async move {
                    shard
                        .produce(&name, partition.partition, partition.records)
                        .await
                })
            })
            .collect();
        let mut partitions: Vec<ProducePartitionResponse> = Vec::with_capacity(tasks.len());
        for task in tasks {
            partitions.push(task.await);
        }
        topics.push(ProduceTopicResponse {
            name: topic.name,
            partitions,
        });
    }
    if request.acks == Acks::None {
        return None;
    }
    Some(Outgoing::Frame(
        Response::Produce(ProduceResponse { topics }).encode(correlation_id),
    ))
}
