//! A consumer of one partition: reads from an offset, the earliest or the latest, and keeps
//! its position.

use std::time::Duration;

use bytes::Bytes;

use super::{ClientError, Connection};
use crate::protocol::{OFFSET_EARLIEST, OFFSET_LATEST};
use crate::record::{Record, decode_records, split_batches};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    Offset(i64),
}

pub struct PartitionConsumer {
    topic: String,
    partition: u32,
    /// The next offset to read.
    position: i64,
    fetch_bytes: u32,
}

impl PartitionConsumer {
    pub fn new(
        connection: &mut Connection,
        topic: &str,
        partition: u32,
        start: StartAt,
    ) -> Result<PartitionConsumer, ClientError> {
        let position = match start {
            StartAt::Earliest => connection.list_offset(topic, partition, OFFSET_EARLIEST)?,
            StartAt::Latest => connection.list_offset(topic, partition, OFFSET_LATEST)?,
            StartAt::Offset(offset) => offset,
        };
        Ok(PartitionConsumer {
            topic: topic.to_string(),
            partition,
            position,
            fetch_bytes: 1 << 20,
        })
    }

    pub fn position(&self) -> i64 {
        self.position
    }

    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// Records from the position on, waiting up to `max_wait` for at least one; advances
    /// the position past what it returns.
    pub fn poll(
        &mut self,
        connection: &mut Connection,
        max_wait: Duration,
    ) -> Result<Vec<Record>, ClientError> {
        let wait_ms = max_wait.as_millis().min(u128::from(u32::MAX)) as u32;
        let answer = connection.fetch(
            &self.topic,
            self.partition,
            self.position,
            self.fetch_bytes,
            wait_ms,
        )?;
        if !answer.status.is_ok() {
            return Err(ClientError::Broker(answer.status));
        }
        let mut records = Vec::new();
        for batch in split_batches(&answer.records) {
            let (_, range) = batch.map_err(|_| ClientError::Unexpected)?;
            let batch: Bytes = answer.records.slice(range);
            let decoded = decode_records(&batch).map_err(|_| ClientError::Unexpected)?;
            // The first batch may start before the position: skip what was already read.
            records.extend(
                decoded
                    .into_iter()
                    .filter(|record| record.offset >= self.position),
            );
        }
        if let Some(last) = records.last() {
            self.position = last.offset + 1;
        }
        Ok(records)
    }
}
