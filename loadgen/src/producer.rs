//! A producer thread: builds batches per partition (by size, record count and linger),
//! pipelines them to the owning shards, and records each record's latency when its batch
//! is acknowledged. With a target rate it is open-loop: record `i` is due at
//! `start + i / rate`, and its latency counts from then, so a broker stall shows in the
//! percentiles instead of silently slowing the sender (coordinated omission).
//!
//! A batch refused for a reason that passes (a leader moved, too few replicas in sync for
//! a moment, a connection lost with its node) goes back to its producer, which waits for
//! every answer still on its way, learns where the partitions are now, and sends the
//! refused batches again to their new leaders in the order they were first sent, up to
//! `DELIVERY_TIMEOUT` after that. A broker that no longer answers at all (every address
//! refuses) ends the run, with the figures so far.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use spate::client::partitioner::partition_for_key;
use spate::client::{Answer, Pipeline};
use spate::protocol::Acks;
use spate::record::BatchBuilder;

use crate::door::{Layout, ProduceWire, Refusal};
use crate::options::Plan;
use crate::run::Shared;
use crate::stats::Recorder;

/// How long a refused batch is sent again (Kafka's `delivery.timeout.ms` default).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The pause before refused batches go again (and between looks at the cluster while a
/// partition has no leader).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What a sent batch carries to its acknowledgement.
pub struct Sent {
    partition: u32,
    records: u64,
    bytes: u64,
    /// When each record was due (open-loop) or handed to the batch (closed-loop), as
    /// nanoseconds since the run's epoch.
    due: Vec<u64>,
    /// The batch, to send again if it is refused for a reason that passes.
    batch: Bytes,
    /// The order batches were first sent in: refused ones go again in it.
    sequence: u64,
    first_sent: Instant,
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
    let (retry, retries) = mpsc::channel::<Sent>();
    let settled = Arc::new(AtomicU64::new(0));
    let collector = {
        let recorder = recorder.clone();
        let shared = shared.clone();
        let settled = settled.clone();
        std::thread::Builder::new()
            .name(format!("ack-{index}"))
            .spawn(move || collect::<W>(acknowledged, &retry, &settled, &recorder, &shared))?
    };
    let mut outbox = Outbox::<W> {
        pipelines: HashMap::new(),
        plan,
        layout: layout.clone(),
        answers,
        shared,
        recorder,
        retries,
        refused: Vec::new(),
        settled,
        expected: 0,
        next_sequence: 0,
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
                if outbox.any_refused() {
                    outbox.send_refused_again()?;
                }
            }
        }
        for (partition, batch) in std::mem::take(&mut open) {
            outbox.send(partition, batch)?;
        }
        // Every answer in, and whatever was refused meanwhile sent again.
        while outbox.send_refused_again()? {}
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
/// answers reach the collector; and the batches refused on the way, to send again.
struct Outbox<'a, W: ProduceWire> {
    pipelines: HashMap<i32, Pipeline<Sent, W>>,
    plan: &'a Plan,
    /// Where the partitions are, as last learnt.
    layout: Layout,
    answers: mpsc::Sender<Answer<Sent, W::Response>>,
    shared: &'a Shared,
    recorder: &'a Recorder,
    /// Batches the collector found refused for a reason that passes.
    retries: mpsc::Receiver<Sent>,
    /// Refused batches gathered here (from `retries`, or never taken by a pipeline).
    refused: Vec<Sent>,
    /// Answers the collector has dealt with, against the answered requests sent.
    settled: Arc<AtomicU64>,
    expected: u64,
    next_sequence: u64,
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
        let records = batch.builder.build(0);
        self.next_sequence += 1;
        let sent = Sent {
            partition,
            records: batch.due.len() as u64,
            bytes: records.len() as u64,
            due: std::mem::take(&mut batch.due),
            batch: records,
            sequence: self.next_sequence,
            first_sent: Instant::now(),
        };
        self.dispatch(sent)
    }

    /// Sends a batch to its partition's owner as the layout says.
    fn dispatch(&mut self, sent: Sent) -> anyhow::Result<()> {
        let owner = self.layout.owners[sent.partition as usize];
        let pipeline = match self.pipelines.entry(owner) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let address = self.layout.address(owner);
                match W::open(address, self.plan.max_in_flight, self.answers.clone()) {
                    Ok(pipeline) => entry.insert(pipeline),
                    Err(error) => {
                        // Its node may have gone: the batch waits for the next layout.
                        tracing_note(&format!("connecting to {owner} at {address}: {error:#}"));
                        self.refused.push(sent);
                        return Ok(());
                    }
                }
            }
        };
        let request = W::produce(self.plan, sent.partition, sent.batch.clone());
        if self.plan.acks == Acks::None {
            // No answer will come: the batch counts as done once written.
            pipeline
                .send_unanswered(&request)
                .with_context(|| format!("sending to {owner}"))?;
            acknowledge(sent, Instant::now(), self.recorder, self.shared);
            return Ok(());
        }
        match pipeline.try_send(&request, sent) {
            Ok(()) => self.expected += 1,
            // Taken, and failed: it comes back through the collector.
            Err((_, None)) => self.expected += 1,
            Err((_, Some(sent))) => self.refused.push(sent),
        }
        Ok(())
    }

    /// Whether some batch waits to be sent again.
    fn any_refused(&mut self) -> bool {
        self.refused.extend(self.retries.try_iter());
        !self.refused.is_empty()
    }

    /// Waits for every answer on its way; if any batch was refused, learns where the
    /// partitions are now and sends the refused ones again, in the order they were first
    /// sent. `true` when it sent some again (their answers are then on their way).
    fn send_refused_again(&mut self) -> anyhow::Result<bool> {
        for pipeline in self.pipelines.values() {
            pipeline.drain();
        }
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        while self.settled.load(Ordering::Acquire) < self.expected {
            if Instant::now() > deadline {
                bail!("answers to sent batches never came");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if !self.any_refused() {
            return Ok(false);
        }
        // Connections to the old leaders may be dead or lead nothing now.
        self.pipelines.clear();
        let mut refused = std::mem::take(&mut self.refused);
        refused.sort_by_key(|sent| sent.sequence);
        let oldest = refused
            .iter()
            .map(|sent| sent.first_sent)
            .min()
            .expect("some");
        if oldest.elapsed() > DELIVERY_TIMEOUT {
            self.shared.fail();
            bail!(
                "a batch was not acknowledged within {} s of its first sending",
                DELIVERY_TIMEOUT.as_secs()
            );
        }
        loop {
            std::thread::sleep(RETRY_PAUSE);
            match self.layout.relearn(self.plan) {
                Ok(layout) => {
                    self.layout = layout;
                    break;
                }
                Err((false, error)) => {
                    self.shared.fail();
                    bail!("the broker no longer answers at any address: {error:#}");
                }
                Err((true, error)) if oldest.elapsed() > DELIVERY_TIMEOUT => {
                    self.shared.fail();
                    bail!(
                        "partitions still without a leader {} s after a batch was refused: {error:#}",
                        DELIVERY_TIMEOUT.as_secs()
                    );
                }
                Err((true, _)) => {}
            }
        }
        self.shared
            .resent
            .fetch_add(refused.len() as u64, Ordering::Relaxed);
        for sent in refused {
            self.dispatch(sent)?;
        }
        Ok(true)
    }
}

fn tracing_note(message: &str) {
    eprintln!("note: {message}");
}

fn collect<W: ProduceWire>(
    answers: mpsc::Receiver<Answer<Sent, W::Response>>,
    retry: &mpsc::Sender<Sent>,
    settled: &AtomicU64,
    recorder: &Recorder,
    shared: &Shared,
) {
    for answer in answers {
        let sent = answer.token;
        let verdict = match answer.response {
            Ok(response) => W::verdict(response),
            Err(error) => Err(Refusal {
                retriable: error.is_retriable(),
                message: error.to_string(),
            }),
        };
        match verdict {
            Ok(()) => acknowledge(sent, answer.received, recorder, shared),
            Err(refusal) if refusal.retriable && sent.first_sent.elapsed() < DELIVERY_TIMEOUT => {
                if let Err(unsent) = retry.send(sent) {
                    // The producer is gone: nothing will send it again.
                    recorder.error(format!(
                        "partition {}: {}",
                        unsent.0.partition, refusal.message
                    ));
                    shared.fail();
                }
            }
            Err(refusal) => {
                recorder.error(format!("partition {}: {}", sent.partition, refusal.message));
                shared.fail();
            }
        }
        settled.fetch_add(1, Ordering::Release);
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
