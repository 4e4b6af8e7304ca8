//! A producer for one topic: batches records per partition by size and linger time, sends
//! each batch with the chosen acks, and reports where every record landed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::partitioner::partition_for_key;
use super::{ClientError, Connection, ShardRouter};
use crate::clock::now_ms;
use crate::protocol::{Acks, ErrorCode, Status};
use crate::record::BatchBuilder;

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// A batch is sent once it reaches this size.
    pub batch_bytes: usize,
    /// ...or once its first record has waited this long (checked on every send and flush).
    pub linger: Duration,
    pub acks: Acks,
    /// How long a batch may be retried (a leader moved, a node went down) before its
    /// error is returned (Kafka's `delivery.timeout.ms`).
    pub delivery_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_bytes: 16 * 1024,
            linger: Duration::from_millis(5),
            acks: Acks::All,
            delivery_timeout: Duration::from_secs(30),
        }
    }
}

/// The pause before a batch is sent again.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);

/// Where a record landed. `sequence` numbers records in the order they were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub sequence: u64,
    pub partition: u32,
    /// -1 with acks=0 (no answer to learn it from).
    pub offset: i64,
}

struct PendingBatch {
    builder: BatchBuilder,
    /// Send order of each record in the batch (records of one partition interleave with
    /// other partitions' records).
    sequences: Vec<u64>,
    started: Instant,
}

pub struct Producer {
    router: ShardRouter,
    topic: String,
    partitions: u32,
    config: ProducerConfig,
    batches: HashMap<u32, PendingBatch>,
    next_sequence: u64,
    /// Keyless records go here until its batch is sent (Kafka's sticky partitioner).
    sticky_partition: u32,
}

impl Producer {
    /// A producer for `topic`, which must exist. Each batch goes straight to the shard
    /// that owns its partition.
    pub fn new(
        connection: Connection,
        topic: &str,
        config: ProducerConfig,
    ) -> Result<Producer, ClientError> {
        let router = ShardRouter::new(connection, topic, "spate-producer")?;
        let partitions = router.partitions();
        Ok(Producer {
            router,
            topic: topic.to_string(),
            partitions,
            config,
            batches: HashMap::new(),
            next_sequence: 0,
            sticky_partition: (now_ms() as u32) % partitions.max(1),
        })
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Queues a record: to `partition` if given, else by key hash, else to the sticky
    /// partition. Returns the deliveries of any batch this sent.
    pub fn send(
        &mut self,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<Vec<Delivery>, ClientError> {
        let partition = match (partition, key) {
            (Some(partition), _) => partition,
            (None, Some(key)) => partition_for_key(key, self.partitions),
            (None, None) => self.sticky_partition,
        };
        if partition >= self.partitions {
            return Err(ClientError::Broker(Status::error(
                ErrorCode::UnknownTopicOrPartition,
                format!(
                    "topic {} has partitions 0 to {}, not {partition}",
                    self.topic,
                    self.partitions - 1
                ),
            )));
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let batch = self
            .batches
            .entry(partition)
            .or_insert_with(|| PendingBatch {
                builder: BatchBuilder::new(),
                sequences: Vec::new(),
                started: Instant::now(),
            });
        batch.builder.push(now_ms(), key, Some(value), &[]);
        batch.sequences.push(sequence);
        let mut deliveries = Vec::new();
        if batch.builder.encoded_bytes() >= self.config.batch_bytes {
            deliveries.extend(self.send_batch(partition)?);
        }
        deliveries.extend(self.send_lingering()?);
        Ok(deliveries)
    }

    /// Sends batches whose linger time is up.
    pub fn send_lingering(&mut self) -> Result<Vec<Delivery>, ClientError> {
        let due: Vec<u32> = self
            .batches
            .iter()
            .filter(|(_, batch)| batch.started.elapsed() >= self.config.linger)
            .map(|(&partition, _)| partition)
            .collect();
        let mut deliveries = Vec::new();
        for partition in due {
            deliveries.extend(self.send_batch(partition)?);
        }
        Ok(deliveries)
    }

    /// Sends every pending batch and waits for them.
    pub fn flush(&mut self) -> Result<Vec<Delivery>, ClientError> {
        let mut partitions: Vec<u32> = self.batches.keys().copied().collect();
        partitions.sort_unstable();
        let mut deliveries = Vec::new();
        for partition in partitions {
            deliveries.extend(self.send_batch(partition)?);
        }
        deliveries.sort_by_key(|delivery| delivery.sequence);
        Ok(deliveries)
    }

    fn send_batch(&mut self, partition: u32) -> Result<Vec<Delivery>, ClientError> {
        let Some(mut batch) = self.batches.remove(&partition) else {
            return Ok(Vec::new());
        };
        if partition == self.sticky_partition && self.partitions > 1 {
            self.sticky_partition = (self.sticky_partition + 1) % self.partitions;
        }
        let records = batch.builder.build(0);
        let acks = self.config.acks;
        // Until the delivery timeout, a batch whose partition's leader moved (or whose
        // connection failed) is sent again to the leader the refreshed metadata names. The
        // next batch of the partition waits for this one, so order holds; a retry may
        // store the batch twice if the first attempt landed (at least once, as Kafka's
        // producer without idempotence).
        let deadline = Instant::now() + self.config.delivery_timeout;
        let base_offset = loop {
            let sent = self
                .router
                .connection_for(partition)
                .and_then(|connection| {
                    connection.produce(&self.topic, partition, records.clone(), acks)
                });
            let retriable = match &sent {
                Ok(None) => break -1,
                Ok(Some(answer)) if answer.status.is_ok() => break answer.base_offset,
                Ok(Some(answer)) => answer.status.code.is_retriable(),
                Err(
                    ClientError::Io(_) | ClientError::Unreachable { .. } | ClientError::TimedOut,
                ) => {
                    if let Some(shard) = self.router.owner(partition) {
                        self.router.forget(shard);
                    }
                    true
                }
                Err(_) => false,
            };
            if !retriable || Instant::now() >= deadline {
                return match sent {
                    Ok(Some(answer)) => Err(ClientError::Broker(answer.status)),
                    Ok(None) => unreachable!("answered above"),
                    Err(error) => Err(error),
                };
            }
            std::thread::sleep(RETRY_BACKOFF);
            // A node that is down fails this too: the next attempt tries again.
            let _ = self.router.refresh();
        };
        Ok(batch
            .sequences
            .into_iter()
            .enumerate()
            .map(|(index, sequence)| Delivery {
                sequence,
                partition,
                offset: if base_offset < 0 {
                    -1
                } else {
                    base_offset + index as i64
                },
            })
            .collect())
    }
}
