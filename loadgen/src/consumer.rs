//! A consumer thread: long-polls its share of the partitions (partition `p` goes to
//! consumer `p % consumers`) on their owners, counts records and batch bytes, and for e2e
//! reads each value's send time to record the latency from send to receipt. Consumers
//! follow their partitions' leaders when they move (in a cluster).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use spate::record::{BatchHeader, RecordIter};

use crate::door::{Layout, by_owner, fetcher};
use crate::options::{Plan, Workload};
use crate::run::Shared;
use crate::stats::Recorder;

/// How long a consumer looks for the new leaders of its partitions after losing them.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads from `start[p]` for each assigned partition until `done` says so. A fetch that
/// fails (its leader moved, its node went away) has the consumer learn where the
/// partitions are now and go on from the same offsets; a broker that no longer answers at
/// any address ends the run.
pub fn run(
    index: usize,
    plan: &Plan,
    layout: &Layout,
    shared: &Arc<Shared>,
    start: &[i64],
    recorder: &Recorder,
    done: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let mut offsets: HashMap<u32, i64> = (0..plan.partitions)
        .filter(|partition| *partition as usize % plan.consumers == index)
        .map(|partition| (partition, start[partition as usize]))
        .collect();
    let mut layout = layout.clone();
    let mut lost_since: Option<Instant> = None;
    loop {
        let failed = match read(
            plan,
            &layout,
            shared,
            &mut offsets,
            recorder,
            &done,
            &mut lost_since,
        ) {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let since = *lost_since.get_or_insert_with(Instant::now);
        loop {
            if done() || shared.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
            match layout.relearn(plan) {
                Ok(learnt) => {
                    layout = learnt;
                    shared.consumer_failovers.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err((false, _)) => return Err(failed),
                Err((true, error)) if since.elapsed() > FAILOVER_TIMEOUT => {
                    return Err(failed.context(format!(
                        "no leader for every partition {} s later: {error:#}",
                        FAILOVER_TIMEOUT.as_secs()
                    )));
                }
                Err((true, _)) => {}
            }
        }
        if since.elapsed() > FAILOVER_TIMEOUT {
            return Err(failed.context(format!(
                "fetches still failing {} s after the first",
                FAILOVER_TIMEOUT.as_secs()
            )));
        }
    }
}

/// Reads with the fetchers `layout` gives, until `done` or a fetch fails.
fn read(
    plan: &Plan,
    layout: &Layout,
    shared: &Arc<Shared>,
    offsets: &mut HashMap<u32, i64>,
    recorder: &Recorder,
    done: &impl Fn() -> bool,
    lost_since: &mut Option<Instant>,
) -> anyhow::Result<()> {
    let by_owner = by_owner(layout, offsets.keys().copied());
    let mut fetchers = HashMap::new();
    for &owner in by_owner.keys() {
        let address = layout.address(owner);
        let fetcher = fetcher(plan.protocol, address)
            .with_context(|| format!("connecting to {owner} at {address}"))?;
        fetchers.insert(owner, fetcher);
    }
    let e2e = plan.workload == Workload::E2e;
    let mut latencies = Vec::new();
    let mut asked = Vec::new();
    // A fetch names at most FETCH_PARTITIONS_MAX partitions: an owner of more gets several.
    let fetches: Vec<(i32, &[u32])> = by_owner
        .iter()
        .flat_map(|(owner, partitions)| {
            partitions
                .chunks(spate::limits::FETCH_PARTITIONS_MAX)
                .map(move |chunk| (*owner, chunk))
        })
        .collect();
    while !done() && !shared.stop.load(Ordering::Relaxed) {
        for (owner, partitions) in &fetches {
            asked.clear();
            asked.extend(
                partitions
                    .iter()
                    .map(|&partition| (partition, offsets[&partition])),
            );
            let fetcher = fetchers.get_mut(owner).expect("connected above");
            let answer = fetcher
                .fetch(&plan.topic, &asked)
                .with_context(|| format!("fetching from {owner}"))?;
            let received = Instant::now();
            for (partition, records) in answer {
                let offset = offsets
                    .get_mut(&partition)
                    .context("an unasked partition")?;
                let (records, bytes) = count(
                    &records,
                    offset,
                    e2e.then_some((&mut latencies, shared, received)),
                )?;
                recorder.record(records, bytes, latencies.drain(..));
                shared.consumed.fetch_add(records, Ordering::Relaxed);
            }
        }
        // A whole round answered: every owner is reached again.
        *lost_since = None;
    }
    Ok(())
}

/// Counts the records at or past `offset` in `batches` (and their batches' bytes),
/// advancing `offset`; with `e2e`, gathers each record's latency from the send time its
/// value starts with.
fn count(
    batches: &[u8],
    offset: &mut i64,
    mut e2e: Option<(&mut Vec<Duration>, &Shared, Instant)>,
) -> anyhow::Result<(u64, u64)> {
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut rest = batches;
    while rest.len() >= spate::limits::BATCH_HEADER_BYTES {
        let header = BatchHeader::parse(rest).context("a malformed batch")?;
        let total = header.total_bytes();
        if total > rest.len() {
            break;
        }
        let batch = &rest[..total];
        rest = &rest[total..];
        if header.last_offset() < *offset {
            continue;
        }
        records += (header.last_offset() - (*offset).max(header.base_offset) + 1) as u64;
        bytes += total as u64;
        if let Some((latencies, shared, received)) = e2e.as_mut() {
            let received = received.duration_since(shared.epoch).as_nanos() as u64;
            let body = &batch[spate::limits::BATCH_HEADER_BYTES..];
            for record in RecordIter::new(body) {
                let record = record.context("a malformed record")?;
                if header.base_offset + i64::from(record.offset_delta) < *offset {
                    continue;
                }
                if let Some(value) = record.value.filter(|value| value.len() >= 8) {
                    let sent = u64::from_le_bytes(value[..8].try_into().expect("8 bytes"));
                    latencies.push(Duration::from_nanos(received.saturating_sub(sent)));
                }
            }
        }
        *offset = header.last_offset() + 1;
    }
    Ok((records, bytes))
}
