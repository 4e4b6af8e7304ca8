use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::sync::{Semaphore, StaticPermit};

use super::{Exchange, Outgoing};
use crate::protocol::{
    ErrorCode, FetchPartitionResponse, FetchRequest, FetchResponse, FetchTopicResponse, Payload,
    Status,
};
use crate::server::shard::{FetchPayload, Shard};

pub use crate::limits::FETCH_PARTITIONS_MAX;

/// Largest `max_bytes` honoured for a whole response (a larger one is lowered to this).
pub const FETCH_RESPONSE_BYTES_MAX: u32 = 64 * 1024 * 1024;
/// Longest long poll honoured (a longer `max_wait_ms` is lowered to this).
pub const FETCH_WAIT_MS_MAX: u32 = 30_000;

/// The least room a read waits for in the connection's byte budget, when the budget
/// cannot give the whole `max_bytes` at once.
const ROOM_MIN_BYTES: u32 = 64 * 1024;

/// Reads every partition; while fewer than `min_bytes` came back and `max_wait_ms` has not
/// passed, waits for new data on any of them and reads again; a connection that is closing
/// ends the wait early. Records are sent as they sit in the log (tail cache or disk
/// buffer) when this shard owns the partition.
///
/// Room in the connection's byte budget is taken for each read and given back while
/// waiting, so a long poll does not hold up the requests behind it. When the budget is
/// short, the read is made smaller rather than waiting for the whole `max_bytes`; a fetch
/// that still finds no room by its deadline (or as the connection or shard ends) answers
/// with offsets only. Partitions that answered with an error are not waited on: if none
/// is left to wait on, the answer goes out at once.
pub(super) async fn handle(
    shard: &Rc<Shard>,
    mut request: FetchRequest,
    exchange: &Exchange,
) -> Result<Outgoing, Status> {
    check(&request)?;
    let closed = &exchange.closed;
    let max_bytes = request.max_bytes.min(FETCH_RESPONSE_BYTES_MAX);
    let max_wait = Duration::from_millis(u64::from(request.max_wait_ms.min(FETCH_WAIT_MS_MAX)));
    let deadline = Instant::now() + max_wait;
    let min_bytes = request.min_bytes.max(1) as usize;
    let ending = || {
        futures_lite::future::or(
            glommio::timer::sleep(deadline.saturating_duration_since(Instant::now())),
            futures_lite::future::or(closed.wait(), shard.stopping.wait()),
        )
    };
    loop {
        let (room, room_bytes) = take_room(&exchange.budget, max_bytes, ending()).await;
        request.max_bytes = room_bytes;
        let response = read_all(shard, &request).await;
        let now = Instant::now();
        // Wait for any (readable) partition's log end to pass what was just seen.
        let to_watch: Vec<(String, u32, i64)> = request
            .topics
            .iter()
            .zip(&response.topics)
            .flat_map(|(topic, answered)| {
                topic
                    .partitions
                    .iter()
                    .zip(&answered.partitions)
                    .filter(|(_, answer)| answer.status.is_ok())
                    .map(move |(partition, answer)| {
                        (
                            topic.name.clone(),
                            partition.partition,
                            partition.offset.max(answer.high_watermark),
                        )
                    })
            })
            .collect();
        let enough = bytes_in(&response) >= min_bytes;
        if enough || now >= deadline || closed.is_set() || to_watch.is_empty() || room.is_none() {
            return Ok(Outgoing::Pieces(
                response.into_pieces(exchange.correlation_id),
                room,
            ));
        }
        drop(room);
        let waits: Vec<_> = to_watch
            .into_iter()
            .map(|(name, partition, offset)| {
                let shard = shard.clone();
                let wait_ms = (deadline - now).as_millis() as u32;
                glommio::spawn_local(async move {
                    shard.wait_for_data(&name, partition, offset, wait_ms).await
                })
            })
            .collect();
        drop(response);
        let any_data = async {
            let mut waits = waits;
            futures_lite::future::poll_fn(|context| {
                for wait in waits.iter_mut() {
                    if std::future::Future::poll(std::pin::Pin::new(wait), context).is_ready() {
                        return std::task::Poll::Ready(());
                    }
                }
                std::task::Poll::Pending
            })
            .await
        };
        let give_up =
            futures_lite::future::or(glommio::timer::sleep(deadline - now), closed.wait());
        futures_lite::future::or(any_data, give_up).await;
    }
}

/// Room for an answer of up to `max_bytes`: all of it if the budget has it now, else what
/// it has, waiting for at least `ROOM_MIN_BYTES` (or `max_bytes` if smaller) until
/// `give_up` resolves; then `None` and 0 bytes (an offsets-only answer). Giving up is what
/// keeps fetches from waiting on each other forever: each holds its frame's share while
/// it waits, and those shares could add up to the whole budget.
async fn take_room(
    budget: &Rc<Semaphore>,
    max_bytes: u32,
    give_up: impl std::future::Future<Output = ()>,
) -> (Option<StaticPermit>, u32) {
    let max_bytes = u64::from(max_bytes.max(1));
    let floor = max_bytes.min(u64::from(ROOM_MIN_BYTES));
    let want = max_bytes.min(budget.available().max(floor));
    if let Ok(room) = budget.try_acquire_static_permit(want) {
        return (Some(room), want as u32);
    }
    let acquired = async {
        let room = budget.clone().acquire_static_permit(want).await.ok();
        room.map(|room| (Some(room), want as u32))
    };
    let gave_up = async {
        give_up.await;
        None
    };
    futures_lite::future::or(acquired, gave_up)
        .await
        .unwrap_or((None, 0))
}

/// Bounds what one request may ask for: a hostile fetch must not make the answer (or the
/// waits behind it) unbounded.
fn check(request: &FetchRequest) -> Result<(), Status> {
    let entries: usize = request
        .topics
        .iter()
        .map(|topic| topic.partitions.len())
        .sum();
    if entries > FETCH_PARTITIONS_MAX {
        return Err(Status::error(
            ErrorCode::InvalidRequest,
            format!("a fetch may name at most {FETCH_PARTITIONS_MAX} partitions, not {entries}"),
        ));
    }
    let mut seen = HashSet::new();
    for topic in &request.topics {
        for partition in &topic.partitions {
            if !seen.insert((topic.name.as_str(), partition.partition)) {
                return Err(Status::error(
                    ErrorCode::InvalidRequest,
                    format!(
                        "partition {}-{} is named twice in one fetch",
                        topic.name, partition.partition
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn bytes_in(response: &FetchResponse<FetchPayload>) -> usize {
    response
        .topics
        .iter()
        .flat_map(|topic| &topic.partitions)
        .map(|partition| partition.records.payload_len())
        .sum()
}

/// One read of every partition. The response stays within `max_bytes` except that the first
/// partition with data returns at least one whole batch, as Kafka does; once the budget is
/// spent, later partitions report their offsets with no records.
async fn read_all(shard: &Rc<Shard>, request: &FetchRequest) -> FetchResponse<FetchPayload> {
    let mut remaining = request.max_bytes as usize;
    let mut topics = Vec::with_capacity(request.topics.len());
    for topic in &request.topics {
        let mut partitions: Vec<FetchPartitionResponse<FetchPayload>> =
            Vec::with_capacity(topic.partitions.len());
        for partition in &topic.partitions {
            let max_bytes = (partition.max_bytes as usize).min(remaining) as u32;
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
            glommio::yield_if_needed().await;
        }
        topics.push(FetchTopicResponse {
            name: topic.name.clone(),
            partitions,
        });
    }
    FetchResponse { topics }
}
