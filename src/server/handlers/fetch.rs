use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::sync::{Semaphore, StaticPermit};

use super::{Exchange, Outgoing};
use crate::protocol::{
    ErrorCode, FetchPartition, FetchPartitionResponse, FetchRequest, FetchResponse,
    FetchTopicResponse, Payload, Status,
};
use crate::server::shard::{FetchPayload, Shard, WaitFor};

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
    request: FetchRequest,
    exchange: &Exchange,
) -> Result<Outgoing, Status> {
    check(&request)?;
    let (response, room) = fetch_records(shard, request, exchange).await;
    Ok(Outgoing::Pieces(
        response.into_pieces(exchange.correlation_id),
        room,
    ))
}

/// The work of a fetch, shared by the native and Kafka doors (each `check`s the request
/// first): the answer (records as they sit in the log) and the room it holds in the
/// connection's byte budget until it is written.
pub(crate) async fn fetch_records(
    shard: &Rc<Shard>,
    mut request: FetchRequest,
    exchange: &Exchange,
) -> (FetchResponse<FetchPayload>, Option<Room>) {
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
        let budgets = [&exchange.budget, &shard.request_bytes];
        let (room, room_bytes) = take_room(budgets, max_bytes, ending()).await;
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
            for topic in &response.topics {
                for partition in &topic.partitions {
                    shard.metrics.error(partition.status.code);
                }
            }
            return (response, room);
        }
        drop(room);
        let waits: Vec<_> = to_watch
            .into_iter()
            .map(|(name, partition, offset)| {
                let shard = shard.clone();
                let wait_ms = (deadline - now).as_millis() as u32;
                glommio::spawn_local(async move {
                    shard
                        .wait_for_data(&name, partition, offset, wait_ms, WaitFor::Readable)
                        .await
                })
            })
            .collect();
        drop(response);
        let any_data = crate::wake::first_of(waits);
        let give_up =
            futures_lite::future::or(glommio::timer::sleep(deadline - now), closed.wait());
        futures_lite::future::or(any_data, give_up).await;
    }
}

/// The room a fetch answer holds until it is written: in its connection's byte budget and
/// in its shard's share of `--memory-max` (answers read from disk are new buffers).
pub(crate) struct Room {
    _connection: StaticPermit,
    _shard: StaticPermit,
}

/// Room for an answer of up to `max_bytes` in both `budgets` (the connection's, then the
/// shard's): all of it if they have it now, else what they have, waiting for at least
/// `ROOM_MIN_BYTES` (or `max_bytes` if smaller) until `give_up` resolves; then `None` and
/// 0 bytes (an offsets-only answer). Giving up is what keeps fetches from waiting on each
/// other forever: each holds its frame's share while it waits, and those shares could add
/// up to the whole budget.
async fn take_room(
    budgets: [&Rc<Semaphore>; 2],
    max_bytes: u32,
    give_up: impl std::future::Future<Output = ()>,
) -> (Option<Room>, u32) {
    let [connection, shard] = budgets;
    let max_bytes = u64::from(max_bytes.max(1));
    let floor = max_bytes.min(u64::from(ROOM_MIN_BYTES));
    let want = budgets.iter().fold(max_bytes, |want, budget| {
        want.min(budget.available().max(floor))
    });
    if let Ok(first) = connection.try_acquire_static_permit(want)
        && let Ok(second) = shard.try_acquire_static_permit(want)
    {
        let room = Room {
            _connection: first,
            _shard: second,
        };
        return (Some(room), want as u32);
    }
    let acquired = async {
        let first = connection.clone().acquire_static_permit(want).await.ok()?;
        let second = shard.clone().acquire_static_permit(want).await.ok()?;
        let room = Room {
            _connection: first,
            _shard: second,
        };
        Some((Some(room), want as u32))
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
pub(crate) fn check(request: &FetchRequest) -> Result<(), Status> {
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

/// Most partition reads of one fetch under way at once: reads on another shard cost a
/// round trip over the mesh each, and disk reads wait on the device, so one after another
/// they add up; at once they overlap.
const READS_CONCURRENT_MAX: usize = 128;

/// One read of every partition. The response stays within `max_bytes` except that the first
/// partition with data returns at least one whole batch, as Kafka does; once the budget is
/// spent, later partitions report their offsets with no records.
async fn read_all(shard: &Rc<Shard>, request: &FetchRequest) -> FetchResponse<FetchPayload> {
    read_all_with(
        request,
        |topic, partition, offset, max_bytes, at_least_one_batch| {
            shard.fetch(topic, partition, offset, max_bytes, at_least_one_batch)
        },
    )
    .await
}

/// `read_all` over any partition reader, with the answers reading one partition after
/// another would give, but with the reads overlapped. Reading in order, each partition
/// gets `min(its max_bytes, what is left of the budget)` and returns at least one batch
/// while anything is left (the first batch may exceed its share).
///
/// Here partitions are read in windows of up to `READS_CONCURRENT_MAX` at once. In a
/// window each partition is granted its share out of what is left, in request order, and
/// the window ends where the budget is all granted; its reads are strict (never more
/// than the grant, so together they stay within the budget, whatever the batches'
/// sizes), and what they leave unused goes to the next window, so empty partitions early
/// in a request do not starve later ones. The answers are then taken in request order:
/// one whose turn comes with the budget spent answers offsets only; one whose first batch
/// did not fit its grant (or that would now pass the budget) is read again, alone, as
/// reading in order would have read it. So the answer passes the budget by at most one
/// batch, and what a fetch reads, the reads it drops included, stays under twice its
/// budget and one batch (reading all at once with each partition's own share could read
/// a whole batch per partition: 128 batches of 8 MiB for a 64 MiB answer).
async fn read_all_with<'a, P, R, F>(request: &'a FetchRequest, read: R) -> FetchResponse<P>
where
    P: Payload + Default,
    R: Fn(&'a str, u32, i64, u32, bool) -> F,
    F: std::future::Future<Output = FetchPartitionResponse<P>> + 'a,
{
    let entries: Vec<(&str, &FetchPartition)> = request
        .topics
        .iter()
        .flat_map(|topic| {
            topic
                .partitions
                .iter()
                .map(move |partition| (topic.name.as_str(), partition))
        })
        .collect();
    let mut answers: Vec<FetchPartitionResponse<P>> = Vec::with_capacity(entries.len());
    let mut remaining = request.max_bytes as usize;
    let mut next = 0;
    while next < entries.len() {
        let first = next;
        let mut granted = 0usize;
        let mut reads: Vec<F> = Vec::new();
        while let Some(&(topic, partition)) = entries.get(next) {
            let grant = (partition.max_bytes as usize).min(remaining - granted);
            let budget_all_granted = remaining > 0 && granted == remaining;
            if reads.len() == READS_CONCURRENT_MAX || (budget_all_granted && !reads.is_empty()) {
                break;
            }
            granted += grant;
            let strict = read(
                topic,
                partition.partition,
                partition.offset,
                grant as u32,
                false,
            );
            reads.push(strict);
            next += 1;
        }
        for (&(topic, partition), mut answer) in
            entries[first..next].iter().zip(join_all(reads).await)
        {
            if remaining == 0 {
                answer.records = P::default();
            } else {
                let bytes = answer.records.payload_len();
                let first_did_not_fit =
                    bytes == 0 && answer.status.is_ok() && partition.offset < answer.high_watermark;
                if (first_did_not_fit && partition.max_bytes > 0) || bytes > remaining {
                    let share = (partition.max_bytes as usize).min(remaining) as u32;
                    answer = read(topic, partition.partition, partition.offset, share, true).await;
                }
            }
            remaining = remaining.saturating_sub(answer.records.payload_len());
            answers.push(answer);
        }
        glommio::yield_if_needed().await;
    }
    let mut answers = answers.into_iter();
    let topics = request
        .topics
        .iter()
        .map(|topic| FetchTopicResponse {
            name: topic.name.clone(),
            partitions: answers.by_ref().take(topic.partitions.len()).collect(),
        })
        .collect();
    FetchResponse { topics }
}

/// Runs `futures` at once on this task, and returns their outputs in order.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|context| {
        let mut done = true;
        for (future, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(context) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|output| output.expect("every future finished"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use bytes::Bytes;

    use super::*;
    use crate::protocol::FetchTopic;

    fn request(partitions: u32, max_bytes: u32, partition_max_bytes: u32) -> FetchRequest {
        FetchRequest {
            max_wait_ms: 0,
            min_bytes: 1,
            max_bytes,
            topics: vec![FetchTopic {
                name: "t".into(),
                partitions: (0..partitions)
                    .map(|partition| FetchPartition {
                        partition,
                        offset: 0,
                        max_bytes: partition_max_bytes,
                    })
                    .collect(),
            }],
        }
    }

    /// What a log whose batches have the sizes `batches` answers a read from its start:
    /// whole batches up to `max_bytes`, at least one if `at_least_one_batch`.
    fn answer(
        partition: u32,
        batches: &[usize],
        max_bytes: u32,
        at_least_one_batch: bool,
    ) -> FetchPartitionResponse<Bytes> {
        let mut bytes = 0;
        for &batch in batches {
            if (bytes > 0 || !at_least_one_batch) && bytes + batch > max_bytes as usize {
                break;
            }
            bytes += batch;
        }
        FetchPartitionResponse {
            partition,
            status: Status::ok(),
            high_watermark: batches.len() as i64,
            log_start_offset: 0,
            records: Bytes::from(vec![0u8; bytes]),
        }
    }

    fn sizes(response: &FetchResponse<Bytes>) -> Vec<usize> {
        response.topics[0]
            .partitions
            .iter()
            .map(|partition| partition.records.len())
            .collect()
    }

    fn on_executor<T: Send + 'static>(make: impl FnOnce() -> T + Send + 'static) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move { make() })
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn partitions_are_read_at_once_not_one_after_another() {
        on_executor(|| {
            let request = request(40, 1 << 20, 1000);
            // Each read finishes only once all 40 have begun: reading one after another
            // would never finish.
            let begun = Cell::new(0);
            let read = |_topic: &str, partition: u32, _offset: i64, max_bytes: u32, _: bool| {
                let begun = &begun;
                let mut counted = false;
                async move {
                    std::future::poll_fn(|context| {
                        if !counted {
                            counted = true;
                            begun.set(begun.get() + 1);
                        }
                        if begun.get() == 40 {
                            std::task::Poll::Ready(())
                        } else {
                            context.waker().wake_by_ref();
                            std::task::Poll::Pending
                        }
                    })
                    .await;
                    answer(partition, &[10], max_bytes, false)
                }
            };
            let response = futures_lite::future::block_on(async {
                let reading = async { Some(read_all_with(&request, read).await) };
                let hang_guard = async {
                    // Polled many times over by then: this guards a hang, it times nothing.
                    for _ in 0..10_000 {
                        futures_lite::future::yield_now().await;
                    }
                    None
                };
                futures_lite::future::or(reading, hang_guard).await
            })
            .expect("every read began before any finished");
            assert_eq!(sizes(&response), vec![10; 40]);
        });
    }

    #[test]
    fn the_budget_is_shared_as_reading_one_partition_after_another_shares_it() {
        on_executor(|| {
            // A 2500-byte budget over partitions of max_bytes 1000 whose first batch is
            // 1200 bytes: in order, the first two get 1000 and return their batch, the
            // third gets the 100 left and returns its batch, the rest get nothing.
            let request = request(6, 2500, 1000);
            let whole_reads = RefCell::new(Vec::new());
            let read = |_topic: &str, partition: u32, _offset: i64, max_bytes: u32, whole| {
                if whole {
                    whole_reads.borrow_mut().push(max_bytes);
                }
                let answer = answer(partition, &[1200], max_bytes, whole);
                async move { answer }
            };
            let response = futures_lite::future::block_on(read_all_with(&request, read));
            assert_eq!(*whole_reads.borrow(), [1000, 1000, 100]);
            assert_eq!(sizes(&response), [1200, 1200, 1200, 0, 0, 0]);
        });
    }

    #[test]
    fn empty_partitions_early_in_a_fetch_do_not_starve_later_ones() {
        on_executor(|| {
            // Only the last two of six partitions have data (small batches); the budget
            // covers two partitions' max_bytes at a time.
            let request = request(6, 2000, 1000);
            let read = |_topic: &str, partition: u32, _offset: i64, max_bytes: u32, whole| {
                let batches: &[usize] = if partition >= 4 { &[100; 20] } else { &[] };
                let answer = answer(partition, batches, max_bytes, whole);
                async move { answer }
            };
            let response = futures_lite::future::block_on(read_all_with(&request, read));
            assert_eq!(sizes(&response), [0, 0, 0, 0, 1000, 1000]);
        });
    }

    #[test]
    fn a_fetch_reads_at_most_its_budget_and_one_batch_whatever_the_batches() {
        on_executor(|| {
            // 128 partitions of one 8 MiB batch each, read with a partition max_bytes of
            // 1 byte and a 64 MiB budget: eight batches come back, and no more than that
            // (and one batch) may be read, or a window of reads would hold 1 GiB.
            const BATCH: usize = 8 << 20;
            let request = request(128, 64 << 20, 1);
            let read_bytes = Cell::new(0usize);
            let read = |_topic: &str, partition: u32, _offset: i64, max_bytes: u32, whole| {
                let answer = answer(partition, &[BATCH], max_bytes, whole);
                read_bytes.set(read_bytes.get() + answer.records.len());
                async move { answer }
            };
            let response = futures_lite::future::block_on(read_all_with(&request, read));
            let sizes = sizes(&response);
            assert_eq!(sizes.iter().filter(|&&size| size == BATCH).count(), 8);
            assert_eq!(sizes.iter().sum::<usize>(), 64 << 20);
            assert!(
                read_bytes.get() <= (64 << 20) + BATCH,
                "{} bytes read",
                read_bytes.get()
            );
        });
    }
}
