use std::rc::Rc;
use std::time::Duration;

use super::Outgoing;
use crate::protocol::{
    FetchPartitionResponse, FetchRequest, FetchResponse, FetchTopicResponse, Payload,
};
use crate::server::shard::{FetchPayload, Shard};

/// Reads every partition; if fewer than `min_bytes` came back, waits (up to `max_wait_ms`)
/// for new data on any of them and reads once more. Records are sent as they sit in the
/// log (tail cache or disk buffer) when this shard owns the partition.
pub(super) async fn handle(
    shard: &Rc<Shard>,
    request: FetchRequest,
    correlation_id: u32,
) -> Outgoing {
    let mut response = read_all(shard, &request).await;
    let total: usize = bytes_in(&response);
    if total < request.min_bytes.max(1) as usize && request.max_wait_ms > 0 {
        let max_wait_ms = request.max_wait_ms;
        let waits: Vec<_> = request
            .topics
            .iter()
            .flat_map(|topic| {
                topic.partitions.iter().map(move |partition| {
                    (topic.name.clone(), partition.partition, partition.offset)
                })
            })
            .map(|(name, partition, offset)| {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    shard
                        .wait_for_data(&name, partition, offset, max_wait_ms)
                        .await
                })
            })
            .collect();
        if !waits.is_empty() {
            let any_data = async {
                let mut waits = waits;
                futures_lite::future::poll_fn(|context| {
                    for wait in waits.iter_mut() {
                        if std::pin::Pin::new(wait).poll(context).is_ready() {
                            return std::task::Poll::Ready(());
                        }
                    }
                    std::task::Poll::Pending
                })
                .await
            };
            let timeout =
                glommio::timer::sleep(Duration::from_millis(u64::from(request.max_wait_ms)));
            futures_lite::future::or(any_data, timeout).await;
            response = read_all(shard, &request).await;
        }
    }
    Outgoing::Pieces(response.into_pieces(correlation_id))
}

fn bytes_in(response: &FetchResponse<FetchPayload>) -> usize {
    response
        .topics
        .iter()
        .flat_map(|topic| &topic.partitions)
        .map(|partition| partition.records.payload_len())
        .sum()
}

async fn read_all(shard: &Rc<Shard>, request: &FetchRequest) -> FetchResponse<FetchPayload> {
    let mut remaining = request.max_bytes as usize;
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let mut partitions: Vec<FetchPartitionResponse<FetchPayload>> =
            Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            // At least one batch per partition, as Kafka does; the limit shrinks as data comes.
            let max_bytes = (partition.max_bytes as usize).min(remaining.max(1)) as u32;
            let answer = shard
                .fetch(
                    &topic.name,
                    partition.partition,
                    partition.offset,
                    max_bytes,
                )
                .await;
            remaining = remaining.saturating_sub(answer.records.payload_len());
            partitions.push(answer);
        }
        topics.push(FetchTopicResponse {
            name: topic.name.clone(),
            partitions,
        });
    }
    FetchResponse { topics }
}
