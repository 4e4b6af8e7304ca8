use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Exchange, Outgoing};
use crate::protocol::{
    Acks, ErrorCode, NewTopic, ProducePartitionResponse, ProduceRequest, ProduceResponse,
    ProduceTopicResponse, Response, Status,
};
use crate::server::shard::{Shard, produce_failed};

/// Appends every partition's batches (partitions in parallel, on their owners) and answers
/// once all are durable under their topic's flush policy; with acks=0, not at all.
pub(super) async fn handle(
    shard: &Rc<Shard>,
    request: ProduceRequest,
    exchange: &Exchange,
) -> Option<Outgoing> {
    let correlation_id = exchange.correlation_id;
    auto_create(
        shard,
        request.topics.iter().map(|topic| topic.name.as_str()),
    )
    .await;
    match append_all(shard, request, exchange).await {
        Ok(Some(topics)) => Some(Outgoing::Frame(
            Response::Produce(ProduceResponse { topics }).encode(correlation_id),
        )),
        Ok(None) => None,
        Err(close) => Some(close),
    }
}

/// Creates the named topics that do not exist, with the broker's default partition count,
/// when the broker auto-creates topics (`--auto-create-topics`): a produce to a new topic
/// creates it, as does a Kafka client's metadata request that allows it.
pub(crate) async fn auto_create<'a>(shard: &Rc<Shard>, names: impl Iterator<Item = &'a str>) {
    if !shard.config.auto_create_topics {
        return;
    }
    let mut missing: Vec<NewTopic> = Vec::new();
    for name in names {
        if shard.metadata.borrow().topic(name).is_none()
            && !missing.iter().any(|topic| topic.name == name)
        {
            missing.push(NewTopic {
                name: name.to_string(),
                partitions: shard.config.default_partitions,
                configs: Vec::new(),
                replication_factor: shard.config.default_replication_factor,
            });
        }
    }
    if missing.is_empty() {
        return;
    }
    for created in shard.create_topics(missing).await {
        if !created.status.is_ok() && created.status.code != ErrorCode::TopicAlreadyExists {
            tracing::warn!(topic = created.name, status = %created.status, "auto-creating a topic");
        }
    }
}

/// The work of a produce, shared by the native and Kafka doors: every partition's
/// batches appended (in request order), and their answers once all are durable under
/// their topic's flush policy or the request's timeout has passed. With acks=0 there is
/// no answer (`Ok(None)`), and a failure closes the connection (`Err(Outgoing::Close)`).
pub(crate) async fn append_all(
    shard: &Rc<Shard>,
    request: ProduceRequest,
    exchange: &Exchange,
) -> Result<Option<Vec<ProduceTopicResponse>>, Outgoing> {
    let held = &exchange.held;
    // The whole request shares one deadline, as Kafka's produce timeout does. An append
    // still running when it passes is answered `Timeout` and left to finish: the client
    // cannot know whether it landed (a retry may duplicate it, as in Kafka). The append
    // keeps the request's bytes counted against the connection until it is done, so a
    // client retrying against a stalled disk is slowed down instead of filling memory.
    // With acks=0 nothing is acknowledged, so there is nothing to time out.
    let deadline = (request.acks != Acks::None)
        .then(|| Instant::now() + Duration::from_millis(u64::from(request.timeout_ms)));
    // Every partition of every topic starts at once; the answers are gathered in order.
    let acks = request.acks;
    let started: Vec<_> = request
        .topics
        .into_iter()
        .map(|topic| {
            // One copy of the name, shared by the topic's partitions.
            let shared_name: Rc<str> = Rc::from(topic.name.as_str());
            let tasks: Vec<_> = topic
                .partitions
                .into_iter()
                .map(|partition| {
                    let shard = shard.clone();
                    let name = shared_name.clone();
                    let id = partition.partition;
                    let records = own_or_copy(partition.records, exchange);
                    let task = glommio::spawn_local(async move {
                        shard.produce(&name, id, records, acks).await
                    });
                    (id, task)
                })
                .collect();
            (topic.name, tasks)
        })
        .collect();
    let mut topics = Vec::with_capacity(started.len());
    for (name, tasks) in started {
        let mut partitions: Vec<ProducePartitionResponse> = Vec::with_capacity(tasks.len());
        for (id, task) in tasks {
            let answer = within(deadline, id, task, request.timeout_ms, held).await;
            shard.metrics.error(answer.status.code);
            partitions.push(answer);
        }
        topics.push(ProduceTopicResponse { name, partitions });
    }
    if request.acks == Acks::None {
        // No answer is due; a failure closes the connection, so the client notices.
        let failure = topics
            .iter()
            .flat_map(|topic| {
                topic
                    .partitions
                    .iter()
                    .map(move |partition| (topic, partition))
            })
            .find(|(_, partition)| !partition.status.is_ok());
        return match failure {
            Some((topic, partition)) => {
                tracing::warn!(
                    topic = topic.name,
                    partition = partition.partition,
                    status = %partition.status,
                    "an acks=0 produce failed: closing its connection"
                );
                Err(Outgoing::Close)
            }
            None => Ok(None),
        };
    }
    Ok(Some(topics))
}

/// Batches the log may keep as they are: those that fill most of a frame read into a
/// buffer of its own. Any other batch is a slice of a buffer shared with other requests
/// (or of a frame mostly holding other batches); the log keeps its batches in the tail
/// cache, so such a slice is copied out rather than pinning all of that buffer.
fn own_or_copy(records: Bytes, exchange: &Exchange) -> Bytes {
    if exchange.own_frame && records.len() * 2 >= exchange.frame_bytes {
        records
    } else {
        Bytes::copy_from_slice(&records)
    }
}

/// The append's answer, or `Timeout` once `deadline` has passed (the append is then left
/// to finish on its own, holding `held` until it does).
async fn within(
    deadline: Option<Instant>,
    partition: u32,
    mut task: glommio::Task<ProducePartitionResponse>,
    timeout_ms: u32,
    held: &Rc<super::Held>,
) -> ProducePartitionResponse {
    let Some(deadline) = deadline else {
        return task.await;
    };
    let timer = glommio::timer::sleep(deadline.saturating_duration_since(Instant::now()));
    let answer = futures_lite::future::or(async { Some((&mut task).await) }, async {
        timer.await;
        None
    })
    .await;
    answer.unwrap_or_else(|| {
        let held = held.clone();
        glommio::spawn_local(async move {
            task.await;
            drop(held);
        })
        .detach();
        produce_failed(
            partition,
            Status::error(
                ErrorCode::Timeout,
                format!(
                    "not acknowledged within the request's timeout_ms ({timeout_ms} ms); the append may still complete"
                ),
            ),
        )
    })
}
