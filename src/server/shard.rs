//! One shard: the partitions it owns, its copy of the topic metadata, and the messages
//! shards send each other. Lives on one pinned glommio executor; nothing here is shared
//! with another core except through the mesh of glommio channels.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use glommio::sync::Semaphore;

use super::ServerConfig;
use crate::broker::metadata::{ClusterMetadata, TopicRecord, partition_dir, shard_for};
use crate::protocol::{
    ErrorCode, FetchPartitionResponse, ListOffsetsPartitionResponse, NewTopic, OFFSET_EARLIEST,
    OFFSET_LATEST, Payload, ProducePartitionResponse, Status, TopicStatus,
};
use crate::storage::{Chunk, Log, StorageError};
use crate::wake::Latch;

/// Everything one shard asks of another. Closed: a new cross-shard interaction is a new
/// variant here. Replies travel on the oneshot channel inside the message.
pub(crate) enum ShardMessage {
    Produce {
        topic: String,
        partition: u32,
        records: Bytes,
        reply: oneshot::Sender<ProducePartitionResponse>,
    },
    Fetch {
        topic: String,
        partition: u32,
        offset: i64,
        max_bytes: u32,
        reply: oneshot::Sender<FetchPartitionResponse>,
    },
    WaitForData {
        topic: String,
        partition: u32,
        offset: i64,
        max_wait_ms: u32,
        reply: oneshot::Sender<()>,
    },
    ListOffsets {
        topic: String,
        partition: u32,
        timestamp: i64,
        reply: oneshot::Sender<ListOffsetsPartitionResponse>,
    },
    /// To shard 0, which owns topic metadata changes.
    CreateTopics {
        topics: Vec<NewTopic>,
        reply: oneshot::Sender<Vec<TopicStatus>>,
    },
    DeleteTopics {
        names: Vec<String>,
        reply: oneshot::Sender<Vec<TopicStatus>>,
    },
    /// From shard 0 to every shard: the new metadata and the topics it no longer has.
    ApplyMetadata {
        metadata: ClusterMetadata,
        deleted: Vec<TopicRecord>,
        reply: oneshot::Sender<()>,
    },
}

/// Records a fetch returns: views of this shard's log (no copy), or bytes another shard
/// copied out of its log.
pub(crate) enum FetchPayload {
    Local(Vec<Chunk>),
    Remote(Bytes),
}

impl Payload for FetchPayload {
    fn payload_len(&self) -> usize {
        match self {
            FetchPayload::Local(chunks) => chunks.iter().map(|chunk| chunk.len()).sum(),
            FetchPayload::Remote(bytes) => bytes.len(),
        }
    }
}

pub(crate) struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: Rc<ServerConfig>,
    pub metadata: RefCell<ClusterMetadata>,
    logs: RefCell<HashMap<(String, u32), Log>>,
    peers: Senders<ShardMessage>,
    /// Shard 0 applies one metadata change at a time.
    admin: Semaphore,
    /// Set once when the broker begins to stop: new requests are refused, waits end.
    pub stopping: Latch,
}

fn storage_status(error: &StorageError) -> Status {
    let code = match error {
        StorageError::InvalidBatch(_) => ErrorCode::CorruptBatch,
        StorageError::RecordTooLarge { .. } => ErrorCode::RecordTooLarge,
        StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
        StorageError::DiskFull { .. } => ErrorCode::DiskFull,
        StorageError::Closed => ErrorCode::ShuttingDown,
        _ => ErrorCode::StorageError,
    };
    Status::error(code, error.to_string())
}

impl Shard {
    /// Opens the partitions this shard owns.
    pub async fn open(
        id: usize,
        config: Rc<ServerConfig>,
        metadata: ClusterMetadata,
        peers: Senders<ShardMessage>,
    ) -> Result<Rc<Shard>, StorageError> {
        let shard = Rc::new(Shard {
            id,
            count: config.shards,
            config,
            metadata: RefCell::new(ClusterMetadata::default()),
            logs: RefCell::new(HashMap::new()),
            peers,
            admin: Semaphore::new(1),
            stopping: Latch::default(),
        });
        shard.apply_metadata(metadata, Vec::new()).await?;
        Ok(shard)
    }

    /// Closes every log (each finishes its queued appends and syncs).
    pub async fn close(&self) {
        let logs: Vec<Log> = self.logs.borrow_mut().drain().map(|(_, log)| log).collect();
        for log in logs {
            if let Err(error) = log.close().await {
                tracing::warn!(%error, dir = %log.dir().display(), "closing a partition log");
            }
        }
    }

    /// Applies retention to every partition this shard owns (deleting expired or excess
    /// segments), judged against the wall clock.
    pub async fn enforce_retention(&self) {
        let now_ms = crate::clock::now_ms();
        let logs: Vec<Log> = self.logs.borrow().values().cloned().collect();
        for log in logs {
            match log.enforce_retention(now_ms).await {
                Ok(report) if !report.deleted_segments.is_empty() => tracing::info!(
                    dir = %log.dir().display(),
                    segments = report.deleted_segments.len(),
                    bytes = report.deleted_bytes,
                    log_start = report.log_start_offset,
                    "retention"
                ),
                Ok(_) | Err(StorageError::Closed) => {}
                Err(error) => {
                    tracing::warn!(%error, dir = %log.dir().display(), "retention failed")
                }
            }
        }
    }

    /// The owner of a partition, or why there is none.
    pub fn owner(&self, topic: &str, partition: u32) -> Result<usize, Status> {
        let metadata = self.metadata.borrow();
        let record = metadata.topic(topic).ok_or_else(|| unknown_topic(topic))?;
        if partition >= record.partitions {
            return Err(Status::error(
                ErrorCode::UnknownTopicOrPartition,
                format!(
                    "topic {topic} has partitions 0 to {}, not {partition}",
                    record.partitions - 1
                ),
            ));
        }
        Ok(shard_for(topic, partition, self.count))
    }

    /// The open log of a partition this shard owns, or why there is none.
    fn log(&self, topic: &str, partition: u32) -> Result<Log, Status> {
        if let Some(log) = self.logs.borrow().get(&(topic.to_string(), partition)) {
            return Ok(log.clone());
        }
        Err(self.no_log(topic, partition))
    }

    /// Why a partition has no open log here: the broker is stopping, the topic is gone
    /// (deleted while the request was on its way), or another shard owns it.
    fn no_log(&self, topic: &str, partition: u32) -> Status {
        if self.stopping.is_set() {
            return Status::error(ErrorCode::ShuttingDown, "the broker is shutting down");
        }
        match self.owner(topic, partition) {
            Err(status) => status,
            Ok(_) => Status::error(
                ErrorCode::NotOwner,
                format!("shard {} does not own {topic}-{partition}", self.id),
            ),
        }
    }

    /// The answer for a storage error; a log closed under a request (its topic deleted)
    /// answers as the missing partition does.
    fn storage_status(&self, topic: &str, partition: u32, error: &StorageError) -> Status {
        match error {
            StorageError::Closed => self.no_log(topic, partition),
            error => storage_status(error),
        }
    }

    /// Sends `message` to shard `peer` (never this one).
    pub async fn send(&self, peer: usize, message: ShardMessage) -> Result<(), Status> {
        assert_ne!(peer, self.id, "local work is done in place");
        self.peers.send_to(peer, message).await.map_err(|_| {
            Status::error(ErrorCode::ShuttingDown, format!("shard {peer} is stopping"))
        })
    }

    /// Sends shard `peer` the message `make` builds around a reply channel and waits for
    /// the answer; a shard that stops first answers `ShuttingDown`.
    async fn ask<T>(
        &self,
        peer: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> ShardMessage,
    ) -> Result<T, Status> {
        let (reply, answer) = oneshot::channel();
        self.send(peer, make(reply)).await?;
        answer.await.map_err(|_| {
            Status::error(
                ErrorCode::ShuttingDown,
                format!("shard {peer} stopped before answering"),
            )
        })
    }

    /// Appends to a partition, here or on its owner.
    pub async fn produce(
        self: &Rc<Self>,
        topic: &str,
        partition: u32,
        records: Bytes,
    ) -> ProducePartitionResponse {
        let answer = match self.owner(topic, partition) {
            Ok(owner) if owner == self.id => {
                return self.produce_local(topic, partition, records).await;
            }
            Ok(owner) => {
                let topic = topic.to_string();
                self.ask(owner, |reply| ShardMessage::Produce {
                    topic,
                    partition,
                    records,
                    reply,
                })
                .await
            }
            Err(status) => Err(status),
        };
        answer.unwrap_or_else(|status| produce_failed(partition, status))
    }

    async fn produce_local(
        &self,
        topic: &str,
        partition: u32,
        records: Bytes,
    ) -> ProducePartitionResponse {
        let log = match self.log(topic, partition) {
            Ok(log) => log,
            Err(status) => return produce_failed(partition, status),
        };
        // The log patches base offsets in place, so it takes its own copy of the batches.
        match log.append(BytesMut::from(&records[..])).await {
            Ok(info) => ProducePartitionResponse {
                partition,
                status: Status::ok(),
                base_offset: info.base_offset,
                log_end_offset: log.log_end_offset(),
            },
            Err(error) => produce_failed(partition, self.storage_status(topic, partition, &error)),
        }
    }

    /// Reads a partition here (views of the log) or on its owner (a copy).
    pub async fn fetch(
        self: &Rc<Self>,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: u32,
    ) -> FetchPartitionResponse<FetchPayload> {
        let answer = match self.owner(topic, partition) {
            Ok(owner) if owner == self.id => {
                return self.fetch_local(topic, partition, offset, max_bytes).await;
            }
            Ok(owner) => {
                let topic = topic.to_string();
                self.ask(owner, |reply| ShardMessage::Fetch {
                    topic,
                    partition,
                    offset,
                    max_bytes,
                    reply,
                })
                .await
            }
            Err(status) => Err(status),
        };
        match answer {
            Ok(response) => FetchPartitionResponse {
                partition,
                status: response.status,
                high_watermark: response.high_watermark,
                log_start_offset: response.log_start_offset,
                records: FetchPayload::Remote(response.records),
            },
            Err(status) => fetch_failed(partition, status),
        }
    }

    async fn fetch_local(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: u32,
    ) -> FetchPartitionResponse<FetchPayload> {
        let log = match self.log(topic, partition) {
            Ok(log) => log,
            Err(status) => return fetch_failed(partition, status),
        };
        // With the response's byte budget spent (max_bytes 0), or on a read error: offsets
        // only, no records.
        let status = if max_bytes == 0 {
            Status::ok()
        } else {
            match log.read(offset, max_bytes as usize).await {
                Ok(outcome) => {
                    return FetchPartitionResponse {
                        partition,
                        status: Status::ok(),
                        high_watermark: outcome.log_end_offset,
                        log_start_offset: outcome.log_start_offset,
                        records: FetchPayload::Local(outcome.chunks),
                    };
                }
                Err(error) => self.storage_status(topic, partition, &error),
            }
        };
        FetchPartitionResponse {
            partition,
            status,
            high_watermark: log.log_end_offset(),
            log_start_offset: log.log_start_offset(),
            records: FetchPayload::Local(Vec::new()),
        }
    }

    /// Resolves once the partition's log end passes `offset`, the partition is gone, or
    /// `max_wait_ms` has passed. The owner applies the deadline itself, so a wait whose
    /// fetch gave up does not linger on another shard.
    pub async fn wait_for_data(
        self: &Rc<Self>,
        topic: &str,
        partition: u32,
        offset: i64,
        max_wait_ms: u32,
    ) {
        match self.owner(topic, partition) {
            Ok(owner) if owner == self.id => {
                if let Ok(log) = self.log(topic, partition) {
                    let wait = std::time::Duration::from_millis(u64::from(max_wait_ms));
                    let give_up =
                        futures_lite::future::or(glommio::timer::sleep(wait), self.stopping.wait());
                    futures_lite::future::or(log.wait_for_data(offset), give_up).await;
                }
            }
            Ok(owner) => {
                let topic = topic.to_string();
                let _ = self
                    .ask(owner, |reply| ShardMessage::WaitForData {
                        topic,
                        partition,
                        offset,
                        max_wait_ms,
                        reply,
                    })
                    .await;
            }
            Err(_) => {}
        }
    }

    pub async fn list_offset(
        self: &Rc<Self>,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> ListOffsetsPartitionResponse {
        let log = match self.owner(topic, partition) {
            Ok(owner) if owner == self.id => match self.log(topic, partition) {
                Ok(log) => log,
                Err(status) => return offsets_failed(partition, status),
            },
            Ok(owner) => {
                let topic = topic.to_string();
                let answer = self
                    .ask(owner, |reply| ShardMessage::ListOffsets {
                        topic,
                        partition,
                        timestamp,
                        reply,
                    })
                    .await;
                return answer.unwrap_or_else(|status| offsets_failed(partition, status));
            }
            Err(status) => return offsets_failed(partition, status),
        };
        let offset = match timestamp {
            OFFSET_EARLIEST => Ok(Some(log.log_start_offset())),
            OFFSET_LATEST => Ok(Some(log.log_end_offset())),
            timestamp => log.offset_for_timestamp(timestamp).await,
        };
        match offset {
            Ok(offset) => ListOffsetsPartitionResponse {
                partition,
                status: Status::ok(),
                offset: offset.unwrap_or(-1),
            },
            Err(error) => offsets_failed(partition, self.storage_status(topic, partition, &error)),
        }
    }

    /// Sends an admin request to shard 0, which owns metadata changes, and waits for its
    /// per-topic answers; if shard 0 cannot answer, every topic fails with the reason.
    async fn ask_coordinator(
        &self,
        names: Vec<String>,
        message: impl FnOnce(oneshot::Sender<Vec<TopicStatus>>) -> ShardMessage,
    ) -> Vec<TopicStatus> {
        match self.ask(0, message).await {
            Ok(statuses) => statuses,
            Err(status) => all_failed(&names, &status.message),
        }
    }

    /// Creates topics (shard 0 does it; other shards forward).
    pub async fn create_topics(self: &Rc<Self>, topics: Vec<NewTopic>) -> Vec<TopicStatus> {
        let names: Vec<String> = topics.iter().map(|topic| topic.name.clone()).collect();
        if self.id != 0 {
            return self
                .ask_coordinator(names, |reply| ShardMessage::CreateTopics { topics, reply })
                .await;
        }
        let _turn = self.admin.acquire_permit(1).await;
        let mut metadata = self.metadata.borrow().clone();
        let statuses: Vec<TopicStatus> = topics
            .iter()
            .map(|topic| TopicStatus {
                name: topic.name.clone(),
                status: metadata
                    .create_topic(topic)
                    .err()
                    .unwrap_or_else(Status::ok),
            })
            .collect();
        if statuses.iter().any(|topic| topic.status.is_ok())
            && let Err(status) = self.publish(metadata, Vec::new()).await
        {
            return all_failed(&names, &status.message);
        }
        statuses
    }

    /// Deletes topics and their data (shard 0 does it; other shards forward).
    pub async fn delete_topics(self: &Rc<Self>, names: Vec<String>) -> Vec<TopicStatus> {
        if self.id != 0 {
            let forwarded = names.clone();
            return self
                .ask_coordinator(names, |reply| ShardMessage::DeleteTopics {
                    names: forwarded,
                    reply,
                })
                .await;
        }
        let _turn = self.admin.acquire_permit(1).await;
        let mut metadata = self.metadata.borrow().clone();
        let mut deleted = Vec::new();
        let statuses: Vec<TopicStatus> = names
            .iter()
            .map(|name| {
                let status = match metadata.delete_topic(name) {
                    Ok(record) => {
                        deleted.push(record);
                        Status::ok()
                    }
                    Err(status) => status,
                };
                TopicStatus {
                    name: name.clone(),
                    status,
                }
            })
            .collect();
        if !deleted.is_empty()
            && let Err(status) = self.publish(metadata, deleted).await
        {
            return all_failed(&names, &status.message);
        }
        statuses
    }

    /// Saves new metadata and has every shard apply it before answering.
    async fn publish(
        self: &Rc<Self>,
        metadata: ClusterMetadata,
        deleted: Vec<TopicRecord>,
    ) -> Result<(), Status> {
        metadata
            .save(&self.config.data_dir)
            .map_err(|error| Status::error(ErrorCode::StorageError, error.to_string()))?;
        let mut answers = Vec::new();
        for peer in (0..self.count).filter(|&peer| peer != self.id) {
            let (reply, answer) = oneshot::channel();
            let message = ShardMessage::ApplyMetadata {
                metadata: metadata.clone(),
                deleted: deleted.clone(),
                reply,
            };
            self.send(peer, message).await?;
            answers.push(answer);
        }
        self.apply_metadata(metadata, deleted)
            .await
            .map_err(|error| Status::error(ErrorCode::StorageError, error.to_string()))?;
        for answer in answers {
            answer.await.map_err(|_| {
                Status::error(
                    ErrorCode::StorageError,
                    "a shard failed to apply the metadata",
                )
            })?;
        }
        Ok(())
    }

    /// Takes a new copy of the metadata: opens partitions this shard now owns, closes and
    /// removes those of deleted topics.
    pub async fn apply_metadata(
        &self,
        metadata: ClusterMetadata,
        deleted: Vec<TopicRecord>,
    ) -> Result<(), StorageError> {
        for topic in &deleted {
            for partition in 0..topic.partitions {
                if shard_for(&topic.name, partition, self.count) != self.id {
                    continue;
                }
                let log = self
                    .logs
                    .borrow_mut()
                    .remove(&(topic.name.clone(), partition));
                if let Some(log) = log {
                    let _ = log.close().await;
                }
                let dir = partition_dir(&self.config.data_dir, &topic.name, partition);
                if let Err(error) = std::fs::remove_dir_all(&dir)
                    && error.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(%error, dir = %dir.display(), "removing a deleted partition");
                }
            }
        }
        for topic in &metadata.topics {
            for partition in 0..topic.partitions {
                let key = (topic.name.clone(), partition);
                if shard_for(&topic.name, partition, self.count) != self.id
                    || self.logs.borrow().contains_key(&key)
                {
                    continue;
                }
                let dir = partition_dir(&self.config.data_dir, &topic.name, partition);
                let log = Log::open(dir, topic.log_config()).await?;
                self.logs.borrow_mut().insert(key, log);
            }
        }
        *self.metadata.borrow_mut() = metadata;
        Ok(())
    }

    /// Serves a message from another shard.
    pub async fn handle_message(self: Rc<Self>, message: ShardMessage) {
        match message {
            ShardMessage::Produce {
                topic,
                partition,
                records,
                reply,
            } => {
                let _ = reply.send(self.produce_local(&topic, partition, records).await);
            }
            ShardMessage::Fetch {
                topic,
                partition,
                offset,
                max_bytes,
                reply,
            } => {
                let response = self.fetch_local(&topic, partition, offset, max_bytes).await;
                // The bytes leave this core: copy them out of the log's buffers.
                let records = match response.records {
                    FetchPayload::Local(chunks) => {
                        let mut bytes =
                            BytesMut::with_capacity(chunks.iter().map(|chunk| chunk.len()).sum());
                        for chunk in &chunks {
                            bytes.extend_from_slice(chunk);
                        }
                        bytes.freeze()
                    }
                    FetchPayload::Remote(bytes) => bytes,
                };
                let _ = reply.send(FetchPartitionResponse {
                    partition,
                    status: response.status,
                    high_watermark: response.high_watermark,
                    log_start_offset: response.log_start_offset,
                    records,
                });
            }
            ShardMessage::WaitForData {
                topic,
                partition,
                offset,
                max_wait_ms,
                reply,
            } => {
                self.wait_for_data(&topic, partition, offset, max_wait_ms)
                    .await;
                let _ = reply.send(());
            }
            ShardMessage::ListOffsets {
                topic,
                partition,
                timestamp,
                reply,
            } => {
                let _ = reply.send(self.list_offset(&topic, partition, timestamp).await);
            }
            ShardMessage::CreateTopics { topics, reply } => {
                let _ = reply.send(self.create_topics(topics).await);
            }
            ShardMessage::DeleteTopics { names, reply } => {
                let _ = reply.send(self.delete_topics(names).await);
            }
            ShardMessage::ApplyMetadata {
                metadata,
                deleted,
                reply,
            } => {
                match self.apply_metadata(metadata, deleted).await {
                    Ok(()) => drop(reply.send(())),
                    // Dropping the reply tells shard 0 that this shard failed.
                    Err(error) => {
                        tracing::error!(%error, shard = self.id, "applying topic metadata")
                    }
                }
            }
        }
    }
}

fn unknown_topic(topic: &str) -> Status {
    Status::error(
        ErrorCode::UnknownTopicOrPartition,
        format!("topic {topic} does not exist"),
    )
}

pub(crate) fn produce_failed(partition: u32, status: Status) -> ProducePartitionResponse {
    ProducePartitionResponse {
        partition,
        status,
        base_offset: -1,
        log_end_offset: -1,
    }
}

fn fetch_failed(partition: u32, status: Status) -> FetchPartitionResponse<FetchPayload> {
    FetchPartitionResponse {
        partition,
        status,
        high_watermark: -1,
        log_start_offset: -1,
        records: FetchPayload::Local(Vec::new()),
    }
}

fn offsets_failed(partition: u32, status: Status) -> ListOffsetsPartitionResponse {
    ListOffsetsPartitionResponse {
        partition,
        status,
        offset: -1,
    }
}

fn all_failed(names: &[String], reason: &str) -> Vec<TopicStatus> {
    names
        .iter()
        .map(|name| TopicStatus {
            name: name.clone(),
            status: Status::error(ErrorCode::StorageError, reason),
        })
        .collect()
}
