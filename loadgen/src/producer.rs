//! A producer thread: builds batches per partition (by size, record count and linger),
//! pipelines them to the owning shards, and records each record's latency when its batch
//! is acknowledged. With a target rate it is open-loop: record `i` is due at
//! `start + i / rate`, and its latency counts from then, so a broker stall shows in the
//! percentiles instead of silently slowing the sender (coordinated omission).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use spate::client::partitioner::partition_for_key;
use spate::client::{Answer, Pipeline};
use spate::protocol::Acks;
use spate::record::BatchBuilder;

use crate::door::{Layout, ProduceWire};
use crate::options::Plan;
use crate::run::Shared;
use crate::stats::Recorder;

/// What a sent batch carries to its acknowledgement.
pub struct Sent {
    partition: u32,
    records: u64,
    bytes: u64,
    /// When each record was due (open-loop) or handed to the batch (closed-loop), as
    /// nanoseconds since the run's epoch.
    due: Vec<u64>,
}

struct Open {
    builder: BatchBuilder,
    due: Vec<u64>,
    since: Instant,
}

/// Sends `records` records (or until the run stops) through `W`, then waits for their
/// answers.
pub fn run<W: ProduceWire>(
    index: usize,
    plan: &Plan,
    layout: &Layout,
    shared: &Arc<Shared>,
    records: Option<u64>,
    recorder: &Arc<Recorder>,
) -> anyhow::Result<()> {
    let (answers, acknowledged) = mpsc::channel::<Answer<Sent, W::Response>>();
    let collector = {
        let recorder = recorder.clone();
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("ack-{index}"))
            .spawn(move || collect::<W>(acknowledged, &recorder, &shared))?
    };
    let mut outbox = Outbox::<W> {
        pipelines: HashMap::new(),
        plan,
        layout,
        answers,
        shared,
        recorder,
    };
    let mut open: HashMap<u32, Open> = HashMap::new();
    let rate = plan
        .rate_records_per_s
        .map(|rate| rate / plan.producers as f64);
    let linger = Duration::from_millis(plan.linger_ms);
    let mut rng = fastrand::Rng::with_seed(0x5eed + index as u64);
    let mut value = vec![b'v'; plan.message_size.1];
    let mut sticky = (index as u32) % plan.partitions;
    let start = Instant::now();
    let mut sent: u64 = 0;
    let outcome: anyhow::Result<()> = (|| {
        loop {
            if records.is_some_and(|records| sent >= records) || shared.stop.load(Ordering::Relaxed)
            {
                break;
            }
            let due = match rate {
                Some(rate) => {
                    let due = start + Duration::from_secs_f64(sent as f64 / rate);
                    // Batches lingering while we wait still go out on time.
                    loop {
                        let now = Instant::now();
                        if now >= due {
                            break;
                        }
                        outbox.send_lingering(&mut open, linger)?;
                        // Sleep, never spin: a spinning producer holds the core that
                        // the same run's consumer and answer threads need, and their
                        // wake-ups then wait for the scheduler (about a millisecond),
                        // which the e2e figures would count as the broker's latency.
                        let left = due - now;
                        std::thread::sleep(left.min(linger.max(Duration::from_micros(100))));
                    }
                    due
                }
                None => Instant::now(),
            };
            let size = rng.usize(plan.message_size.0..=plan.message_size.1);
            let due_ns = due.duration_since(shared.epoch).as_nanos() as u64;
            if size >= 8 {
                value[..8].copy_from_slice(&due_ns.to_le_bytes());
            }
            let key = (plan.keys > 0).then(|| format!("key-{}", rng.u64(0..plan.keys)));
            let partition = match &key {
                Some(key) => partition_for_key(key.as_bytes(), plan.partitions),
                None => sticky,
            };
            let batch = open.entry(partition).or_insert_with(|| Open {
                builder: BatchBuilder::new(),
                due: Vec::new(),
                since: Instant::now(),
            });
            let timestamp_ms = shared.wall_ms_at(due);
            batch.builder.push(
                timestamp_ms,
                key.as_deref().map(str::as_bytes),
                Some(&value[..size]),
                &[],
            );
            batch.due.push(due_ns);
            sent += 1;
            let full = batch.builder.encoded_bytes() >= plan.batch_bytes
                || plan
                    .batch_records
                    .is_some_and(|limit| batch.builder.records_count() >= limit);
            if full {
                let batch = open.remove(&partition).expect("just filled");
                outbox.send(partition, batch)?;
                if key.is_none() {
                    sticky = (sticky + 1) % plan.partitions;
                }
            }
            if sent.is_multiple_of(64) {
                outbox.send_lingering(&mut open, linger)?;
            }
        }
        for (partition, batch) in std::mem::take(&mut open) {
            outbox.send(partition, batch)?;
        }
        Ok(())
    })();
    for pipeline in outbox.pipelines.values() {
        pipeline.drain();
    }
    // The pipelines' readers and this sender gone, the collector's channel ends.
    drop(outbox);
    let _ = collector.join();
    outcome
}

/// Where a producer's batches go: a pipeline per owner, opened on first use, whose
/// answers reach the collector.
struct Outbox<'a, W: ProduceWire> {
    pipelines: HashMap<i32, Pipeline<Sent, W>>,
    plan: &'a Plan,
    layout: &'a Layout,
    answers: mpsc::Sender<Answer<Sent, W::Response>>,
    shared: &'a Shared,
    recorder: &'a Recorder,
}

impl<W: ProduceWire> Outbox<'_, W> {
    /// Sends every open batch that has lingered long enough.
    fn send_lingering(
        &mut self,
        open: &mut HashMap<u32, Open>,
        linger: Duration,
    ) -> anyhow::Result<()> {
        let due: Vec<u32> = open
            .iter()
            .filter(|(_, batch)| batch.since.elapsed() >= linger)
            .map(|(&partition, _)| partition)
            .collect();
        for partition in due {
            let batch = open.remove(&partition).expect("listed");
            self.send(partition, batch)?;
        }
        Ok(())
    }

    fn send(&mut self, partition: u32, mut batch: Open) -> anyhow::Result<()> {
        let owner = self.layout.owners[partition as usize];
        let pipeline = match self.pipelines.entry(owner) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let address = self.layout.address(owner);
                let pipeline = W::open(address, self.plan.max_in_flight, self.answers.clone())
                    .with_context(|| format!("connecting to {owner} at {address}"))?;
                entry.insert(pipeline)
            }
        };
        let records = batch.builder.build(0);
        let sent = Sent {
            partition,
            records: batch.due.len() as u64,
            bytes: records.len() as u64,
            due: std::mem::take(&mut batch.due),
        };
        let request = W::produce(self.plan, partition, records);
        if self.plan.acks == Acks::None {
            // No answer will come: the batch counts as done once written.
            pipeline.send_unanswered(&request)?;
            acknowledge(sent, Instant::now(), self.recorder, self.shared);
            return Ok(());
        }
        pipeline
            .send(&request, sent)
            .with_context(|| format!("sending to {owner}"))
    }
}

fn collect<W: ProduceWire>(
    answers: mpsc::Receiver<Answer<Sent, W::Response>>,
    recorder: &Recorder,
    shared: &Shared,
) {
    for answer in answers {
        let sent = answer.token;
        let verdict = match answer.response {
            Ok(response) => W::verdict(response),
            Err(error) => Err(error.to_string()),
        };
        match verdict {
            Ok(()) => acknowledge(sent, answer.received, recorder, shared),
            Err(error) => {
                recorder.error(format!("partition {}: {error}", sent.partition));
                shared.fail();
            }
        }
    }
}

/// Counts an acknowledged batch, each record's latency from when it was due.
fn acknowledge(sent: Sent, received: Instant, recorder: &Recorder, shared: &Shared) {
    shared
        .acknowledged
        .fetch_add(sent.records, Ordering::Relaxed);
    let received = received.duration_since(shared.epoch).as_nanos() as u64;
    recorder.record(
        sent.records,
        sent.bytes,
        sent.due
            .iter()
            .map(|&due| Duration::from_nanos(received.saturating_sub(due))),
    );
}
