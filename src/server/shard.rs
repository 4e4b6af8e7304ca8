//! One shard: the partitions it owns, its copy of the topic metadata, and the messages
//! shards send each other. Lives on one pinned glommio executor; nothing here is shared
//! with another core except through the mesh of glommio channels.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use glommio::sync::Semaphore;

use super::ServerConfig;
use super::probe::{Connections, ShardProbe};
use super::replication::Replica;
use crate::broker::metadata::{
    ClusterMetadata, TopicRecord, partition_dir, partitions_per_shard, shard_for,
};
use crate::broker::producer_ids::{self, ProducerIds};
use crate::broker::view::ClusterView;
use crate::cluster::node::ClusterHandle;
use crate::group::coordinator::{Coordinator, GroupAnswer, GroupCall, GroupConfig};
use crate::protocol::{
    Acks, ErrorCode, FetchPartitionResponse, GroupListing, ListOffsetsPartitionResponse,
    NewPartitions, NewTopic, OFFSET_EARLIEST, OFFSET_LATEST, Payload, ProducePartitionResponse,
    ShardDescription, Status, TopicStatus, quoted,
};
use crate::semaphore::FifoSemaphore;
use crate::storage::{Chunk, Log, StorageError};
use crate::wake::Latch;

/// Everything one shard asks of another. Closed: a new cross-shard interaction is a new
/// variant here. Replies travel on the oneshot channel inside the message.
pub(crate) enum ShardMessage {
    Produce {
        topic: String,
        partition: u32,
        records: Bytes,
        acks: Acks,
        reply: oneshot::Sender<ProducePartitionResponse>,
    },
    Fetch {
        topic: String,
        partition: u32,
        offset: i64,
        max_bytes: u32,
        at_least_one_batch: bool,
        reply: oneshot::Sender<FetchPartitionResponse>,
    },
    WaitForData {
        topic: String,
        partition: u32,
        offset: i64,
        max_wait_ms: u32,
        until: WaitFor,
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
    CreatePartitions {
        topics: Vec<NewPartitions>,
        reply: oneshot::Sender<Vec<TopicStatus>>,
    },
    /// From shard 0 to every shard, before new topics or partitions are saved: open
    /// (creating) the partitions of `spans` that this shard owns; on failure, none stay
    /// open.
    OpenPartitions {
        spans: Vec<Span>,
        reply: oneshot::Sender<Result<(), Status>>,
    },
    /// From shard 0: close and remove the partitions of `spans` (a creation rolled back).
    DropPartitions {
        spans: Vec<Span>,
        reply: oneshot::Sender<()>,
    },
    /// A group request of either door, to the shard that coordinates the group.
    Group {
        call: GroupCall,
        reply: oneshot::Sender<GroupAnswer>,
    },
    /// The groups a shard coordinates.
    ListGroups {
        reply: oneshot::Sender<Vec<GroupListing>>,
    },
    /// To shard 0, which hands out Kafka producer ids.
    InitProducerId {
        reply: oneshot::Sender<Result<i64, Status>>,
    },
    /// What a shard holds and is doing.
    Describe {
        reply: oneshot::Sender<ShardDescription>,
    },
    /// From shard 0 to every shard, once saved: the new metadata, and the topics it no
    /// longer has (whose partitions are closed and removed).
    ApplyMetadata {
        metadata: ClusterMetadata,
        deleted: Vec<TopicRecord>,
        reply: oneshot::Sender<()>,
    },
    /// From shard 0 of a cluster node, for every change the node applies: the cluster as
    /// it now is. The shard takes it (leadership moves with it) and opens the partitions
    /// of `spans` it now holds.
    TakeView {
        state: crate::cluster::ClusterState,
        spans: Vec<Span>,
        reply: oneshot::Sender<Result<(), Status>>,
    },
    /// One partition of a follower's fetch, for its owner shard.
    ReplicaFetch {
        replica: u64,
        partition: crate::protocol::ReplicaFetchPartition,
        max_bytes: u32,
        reply: oneshot::Sender<crate::protocol::ReplicaFetchPartitionResponse>,
    },
}

/// What a long poll waits for: a consumer for records below the high watermark (the log
/// end, on a broker on its own), a follower for records appended to the leader's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitFor {
    Readable,
    Appended,
}

/// Records a fetch returns: views of this shard's log (no copy), or bytes another shard
/// copied out of its log. The default is no records.
pub(crate) enum FetchPayload {
    Local(Vec<Chunk>),
    Remote(Bytes),
}

impl Default for FetchPayload {
    fn default() -> FetchPayload {
        FetchPayload::Local(Vec::new())
    }
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
    /// Shared with the group coordinator, which reads partition counts.
    pub metadata: Rc<RefCell<ClusterMetadata>>,
    /// The consumer groups this shard coordinates.
    pub groups: Rc<Coordinator>,
    pub(super) logs: RefCell<HashMap<(String, u32), Log>>,
    peers: Senders<ShardMessage>,
    /// One turn per peer for sending to it: when its channel is full, glommio wakes the
    /// waiting senders newest first, which would let a later produce to a partition on
    /// that peer overtake an earlier one. Senders take their turn first come, first served.
    send_turns: Vec<Rc<FifoSemaphore>>,
    /// Shard 0 applies one metadata change at a time.
    pub(super) admin: Semaphore,
    /// Shard 0's block of Kafka producer ids, and its turn for reserving the next block.
    producer_ids: RefCell<ProducerIds>,
    producer_ids_turn: Semaphore,
    /// Set once when the broker begins to stop: new requests are refused, waits end.
    pub stopping: Latch,
    pub connections: Connections,
    pub probe: ShardProbe,
    /// What this shard counts for `/metrics` (installed on its thread before it opens).
    pub metrics: std::sync::Arc<crate::metrics::ShardMetrics>,
    /// Bytes of requests in flight on all of this shard's connections, bounded by the
    /// part of its memory share the tail caches do not take (`request_bytes_max`).
    pub request_bytes: Rc<Semaphore>,
    pub request_bytes_max: u64,
    /// Partitions this shard opens at once (at start-up, and for a new topic): an open
    /// mostly waits on the disk, and holds a few descriptors meanwhile.
    partitions_opening_max: usize,
    /// This node's part in its cluster; `None` for a broker on its own.
    pub cluster: Option<ClusterHandle>,
    /// Which partitions this node holds and leads (all, on a broker on its own).
    pub view: RefCell<Rc<ClusterView>>,
    /// In a cluster: the replication state of the partitions this shard holds.
    pub(super) replicas: RefCell<HashMap<(String, u32), Rc<Replica>>>,
    /// The leader nodes this shard has a fetcher running for.
    pub(super) fetchers: RefCell<HashSet<u64>>,
    /// One `follow_view` at a time.
    pub(super) view_turn: Rc<FifoSemaphore>,
    /// In a cluster: idle connections to other nodes for forwarded group requests, with
    /// the address each was opened to.
    pub(super) group_links:
        RefCell<HashMap<u64, Vec<(std::net::SocketAddr, glommio::net::TcpStream)>>>,
    forward_ids: Cell<u32>,
}

impl Shard {
    /// Opens the partitions this shard owns.
    pub async fn open(
        id: usize,
        config: Rc<ServerConfig>,
        metadata: ClusterMetadata,
        producer_ids_start: i64,
        peers: Senders<ShardMessage>,
        partitions_opening_max: usize,
        cluster: Option<ClusterHandle>,
    ) -> Result<Rc<Shard>, String> {
        let view = match &cluster {
            Some(handle) => ClusterView {
                node_id: Some(handle.id),
                incarnation: handle.incarnation,
                state: handle.state(),
            },
            None => ClusterView::single(),
        };
        let shared_metadata = Rc::new(RefCell::new(ClusterMetadata::default()));
        let groups = Rc::new(Coordinator::new(
            GroupConfig {
                data_dir: config.data_dir.clone(),
                session_timeout_min_ms: config.group_min_session_timeout_ms,
                session_timeout_max_ms: config.group_max_session_timeout_ms,
                offsets_compact_bytes: config.offsets_compact_bytes,
            },
            id,
            config.shards,
            shared_metadata.clone(),
        ));
        let send_turns = (0..config.shards)
            .map(|_| Rc::new(FifoSemaphore::new(1)))
            .collect();
        let request_bytes_max = config.request_budget_per_shard();
        let shard = Rc::new(Shard {
            id,
            count: config.shards,
            config,
            metadata: shared_metadata,
            groups,
            logs: RefCell::new(HashMap::new()),
            send_turns,
            peers,
            admin: Semaphore::new(1),
            producer_ids: RefCell::new(ProducerIds::starting_at(producer_ids_start)),
            producer_ids_turn: Semaphore::new(1),
            stopping: Latch::default(),
            connections: Connections::default(),
            probe: ShardProbe::default(),
            metrics: crate::metrics::current(),
            request_bytes: Rc::new(Semaphore::new(request_bytes_max)),
            request_bytes_max,
            partitions_opening_max,
            cluster,
            view: RefCell::new(Rc::new(view)),
            replicas: RefCell::new(HashMap::new()),
            fetchers: RefCell::new(HashSet::new()),
            view_turn: Rc::new(FifoSemaphore::new(1)),
            group_links: RefCell::new(HashMap::new()),
            forward_ids: Cell::new(0),
        });
        shard
            .open_partitions(&Span::whole(&metadata.topics), Opening::Existing)
            .await
            .map_err(|status| status.message)?;
        *shard.metadata.borrow_mut() = metadata;
        if shard.cluster.is_some() {
            shard
                .groups
                .replicate_through(Rc::new(super::cluster::ReplicatedOffsets(Rc::downgrade(
                    &shard,
                ))));
        }
        if let Err(error) = shard.groups.open_existing().await {
            shard.close().await;
            return Err(error);
        }
        Ok(shard)
    }

    /// Closes every log (each finishes its queued appends and syncs), the offsets logs
    /// included.
    pub async fn close(&self) {
        self.groups.close().await;
        let logs: Vec<Log> = self.logs.borrow_mut().drain().map(|(_, log)| log).collect();
        for log in logs {
            if let Err(error) = log.close().await {
                tracing::warn!(%error, dir = %log.dir().display(), "closing a partition log");
            }
        }
    }

    /// Every partition log open on this shard, with its key, taken out of the map so
    /// that no borrow of it is held across an await.
    pub(super) fn open_logs(&self) -> Vec<((String, u32), Log)> {
        self.logs
            .borrow()
            .iter()
            .map(|(key, log)| (key.clone(), log.clone()))
            .collect()
    }

    /// Applies retention to every partition this shard owns (deleting expired or excess
    /// segments), judged against the wall clock. In a cluster, leaders apply it below
    /// their high watermark, and followers follow their leader's log start instead
    /// (`replication`), so every copy deletes the same records.
    pub async fn enforce_retention(&self) {
        let now_ms = crate::clock::now_ms();
        let logs = self.open_logs();
        let clustered = self.view.borrow().clustered();
        for ((topic, partition), log) in logs {
            let limit = if clustered {
                let replica = self.replica(&topic, partition);
                if replica.led_epoch().is_none() {
                    continue;
                }
                replica.high_watermark.get()
            } else {
                i64::MAX
            };
            match log.enforce_retention_below(now_ms, limit).await {
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

    /// The log config a topic's partitions open with: its own, with `tail.cache.bytes`
    /// held to this broker's `tail-cache-bytes-max` (a topic created with more under an
    /// older limit, or none, gets the limit).
    pub fn log_config(&self, topic: &TopicRecord) -> crate::storage::LogConfig {
        let mut config = topic.log_config();
        config.tail_cache_bytes = config
            .tail_cache_bytes
            .min(self.config.tail_cache_bytes_max);
        config
    }

    /// What this shard holds and is doing, for `DescribeBroker`.
    pub fn describe(&self) -> ShardDescription {
        let cache = crate::storage::shard_usage();
        let files = crate::storage::segment_files();
        ShardDescription {
            shard_id: self.id as u16,
            partitions: self.logs.borrow().len() as u32,
            connections: self.connections.open.get() as u32,
            long_poll_waits: self.probe.long_poll_waits(),
            forwarded_requests: self.metrics.forwarded_requests.get(),
            memory_budget_bytes: self.config.memory_per_shard(),
            tail_cache_bytes: cache.bytes,
            tail_cache_budget_bytes: cache.budget.unwrap_or(u64::MAX),
            tail_cache_evicted_batches: cache.evicted_batches,
            segment_files_open: files.open as u32,
            segment_files_max: files.max as u32,
            request_bytes: self.request_bytes_max - self.request_bytes.available(),
            request_budget_bytes: self.request_bytes_max,
            read_ahead_bytes: cache.read_ahead_bytes,
            read_ahead_budget_bytes: cache.read_ahead_budget.unwrap_or(u64::MAX),
        }
    }

    /// Copies this shard's gauges into its metrics' snapshot (`crate::metrics`), for the
    /// metrics thread to read without asking the shard.
    pub fn snapshot_metrics(&self) {
        use crate::metrics::PartitionSample;
        let view = self.view.borrow().clone();
        let clustered = view.clustered();
        let partitions = {
            let logs = self.logs.borrow();
            let replicas = self.replicas.borrow();
            logs.iter()
                .map(|(key, log)| {
                    let (topic, partition) = (&key.0, key.1);
                    let log_end_offset = log.log_end_offset();
                    // In a cluster, a replica with no replication state yet knows no high
                    // watermark: 0, as `readable_end` would answer.
                    let high_watermark = match replicas.get(key) {
                        Some(replica) if clustered => {
                            replica.high_watermark.get().min(log_end_offset)
                        }
                        None if clustered => 0,
                        _ => log_end_offset,
                    };
                    let (replicas, in_sync_replicas) =
                        view.partition(topic, partition).map_or((1, 1), |state| {
                            (state.replicas.len() as u32, state.isr.len() as u32)
                        });
                    PartitionSample {
                        topic: topic.clone(),
                        partition,
                        log_start_offset: log.log_start_offset(),
                        log_end_offset,
                        high_watermark,
                        size_bytes: log.size_bytes(),
                        leader: view.check_leader(topic, partition).is_ok(),
                        replicas,
                        in_sync_replicas,
                    }
                })
                .collect()
        };
        let groups = self.groups.committed_offsets();
        let description = self.describe();
        let snapshot = crate::metrics::Snapshot {
            partitions,
            groups,
            memory: vec![
                (
                    "tail_cache",
                    description.tail_cache_bytes,
                    description.tail_cache_budget_bytes,
                ),
                (
                    "read_ahead",
                    description.read_ahead_bytes,
                    description.read_ahead_budget_bytes,
                ),
                (
                    "requests",
                    description.request_bytes,
                    description.request_budget_bytes,
                ),
            ],
            segment_files_open: u64::from(description.segment_files_open),
            segment_files_max: u64::from(description.segment_files_max),
            long_poll_waits: u64::from(description.long_poll_waits),
        };
        let snapshot = std::sync::Arc::new(snapshot);
        // The old one is dropped after the lock is released.
        let _old = self
            .metrics
            .snapshot
            .lock()
            .map(|mut shared| std::mem::replace(&mut *shared, snapshot));
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
    pub(super) fn log(&self, topic: &str, partition: u32) -> Result<Log, Status> {
        if let Some(log) = self.logs.borrow().get(&(topic.to_string(), partition)) {
            return Ok(log.clone());
        }
        Err(self.no_log(topic, partition))
    }

    /// The open log of a partition this shard owns and this node leads (clients read and
    /// write leaders only), or why there is none.
    pub(super) fn led_log(&self, topic: &str, partition: u32) -> Result<Log, Status> {
        self.view.borrow().check_leader(topic, partition)?;
        self.log(topic, partition)
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
                format!(
                    "shard {} does not own {}-{partition}",
                    self.id,
                    quoted(topic)
                ),
            ),
        }
    }

    /// The answer for a storage error; a log closed under a request (its topic deleted)
    /// answers as the missing partition does.
    fn storage_status(&self, topic: &str, partition: u32, error: &StorageError) -> Status {
        match error {
            StorageError::Closed => self.no_log(topic, partition),
            error => crate::broker::storage_status(error),
        }
    }

    /// Sends `message` to shard `peer` (never this one).
    pub async fn send(&self, peer: usize, message: ShardMessage) -> Result<(), Status> {
        assert_ne!(peer, self.id, "local work is done in place");
        let stopped =
            || Status::error(ErrorCode::ShuttingDown, format!("shard {peer} is stopping"));
        let _turn = self.send_turns[peer]
            .acquire(1)
            .await
            .map_err(|_| stopped())?;
        self.peers.send_to(peer, message).await.map_err(|_| {
            Status::error(ErrorCode::ShuttingDown, format!("shard {peer} is stopping"))
        })
    }

    /// Sends shard `peer` the message `make` builds around a reply channel and waits for
    /// the answer; a shard that stops first answers `ShuttingDown`.
    pub(crate) async fn ask<T>(
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

    /// A correlation id for a request forwarded to another node.
    pub(super) fn next_forward_id(&self) -> u32 {
        let id = self.forward_ids.get().wrapping_add(1);
        self.forward_ids.set(id);
        id
    }

    /// Appends to a partition, here or on its owner.
    pub async fn produce(
        self: &Rc<Self>,
        topic: &str,
        partition: u32,
        records: Bytes,
        acks: Acks,
    ) -> ProducePartitionResponse {
        if topic == crate::group::offsets::OFFSETS_TOPIC && self.view.borrow().clustered() {
            // Written by the group coordinators only: what a client wrote there would be
            // replayed as committed offsets.
            return produce_failed(
                partition,
                Status::error(
                    ErrorCode::InvalidRequest,
                    format!(
                        "{} is the cluster's internal topic of committed offsets: commit offsets through a consumer group instead",
                        crate::group::offsets::OFFSETS_TOPIC
                    ),
                ),
            );
        }
        let answer = match self.owner(topic, partition) {
            Ok(owner) if owner == self.id => {
                return self.produce_local(topic, partition, records, acks).await;
            }
            Ok(owner) => {
                self.metrics.forwarded_requests.inc();
                let topic = topic.to_string();
                self.ask(owner, |reply| ShardMessage::Produce {
                    topic,
                    partition,
                    records,
                    acks,
                    reply,
                })
                .await
            }
            Err(status) => Err(status),
        };
        answer.unwrap_or_else(|status| produce_failed(partition, status))
    }

    /// Appends to a partition this shard owns. In a cluster, only the leader appends (its
    /// epoch stamped into the batches), and acks=all waits for the in-sync replicas.
    pub(super) async fn produce_local(
        &self,
        topic: &str,
        partition: u32,
        records: Bytes,
        acks: Acks,
    ) -> ProducePartitionResponse {
        let log = match self.led_log(topic, partition) {
            Ok(log) => log,
            Err(status) => return produce_failed(partition, status),
        };
        // In a cluster: this node's replica state, looked up once, and the epoch it leads in.
        let leading = if self.view.borrow().clustered() {
            let replica = self.replica(topic, partition);
            let Some(epoch) = replica.led_epoch() else {
                return produce_failed(
                    partition,
                    Status::error(
                        ErrorCode::NotOwner,
                        "this node is taking up the leadership: try again",
                    ),
                );
            };
            if acks == Acks::All
                && let Err(status) = self.check_in_sync(topic, partition, &log)
            {
                return produce_failed(partition, status);
            }
            Some((replica, epoch))
        } else {
            None
        };
        // The log patches base offsets in place. The produce handler made sure the batches
        // own their buffer (see `own_or_copy`), so this takes it without a copy.
        let records = records
            .try_into_mut()
            .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
        let origin = crate::storage::AppendOrigin::Client {
            leader_epoch: leading.as_ref().map(|(_, epoch)| *epoch as i32),
        };
        let info = match log.append_as(records, origin).await {
            Ok(info) => info,
            Err(error) => {
                return produce_failed(partition, self.storage_status(topic, partition, &error));
            }
        };
        let mut readable_end = log.log_end_offset();
        if let Some((replica, epoch)) = &leading {
            // An ISR of the leader alone moves the high watermark with the leader's log.
            self.advance_high_watermark(topic, partition, replica, &log);
            if acks == Acks::All
                && let Err(status) = self
                    .wait_replicated(
                        topic,
                        partition,
                        replica,
                        *epoch,
                        info.last_offset,
                        log.config().min_insync_replicas,
                    )
                    .await
            {
                return produce_failed(partition, status);
            }
            readable_end = readable_end.min(replica.high_watermark.get());
        }
        ProducePartitionResponse {
            partition,
            status: Status::ok(),
            base_offset: info.base_offset,
            log_end_offset: readable_end,
        }
    }

    /// Reads a partition here (views of the log) or on its owner (a copy): whole batches
    /// up to `max_bytes`, and at least one if `at_least_one_batch` (else none when the
    /// first is larger).
    pub async fn fetch(
        self: &Rc<Self>,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: u32,
        at_least_one_batch: bool,
    ) -> FetchPartitionResponse<FetchPayload> {
        let answer = match self.owner(topic, partition) {
            Ok(owner) if owner == self.id => {
                return self
                    .fetch_local(topic, partition, offset, max_bytes, at_least_one_batch)
                    .await;
            }
            Ok(owner) => {
                self.metrics.forwarded_requests.inc();
                let topic = topic.to_string();
                self.ask(owner, |reply| ShardMessage::Fetch {
                    topic,
                    partition,
                    offset,
                    max_bytes,
                    at_least_one_batch,
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
        at_least_one_batch: bool,
    ) -> FetchPartitionResponse<FetchPayload> {
        let log = match self.led_log(topic, partition) {
            Ok(log) => log,
            Err(status) => return fetch_failed(partition, status),
        };
        // With the response's byte budget spent (max_bytes 0), or on a read error: offsets
        // only, no records.
        let status = if max_bytes == 0 {
            Status::ok()
        } else {
            // Consumers read what the in-sync replicas hold: below the high watermark.
            let readable_end = self.readable_end(topic, partition, &log);
            let read = if offset >= readable_end && offset <= log.log_end_offset() {
                Ok(None)
            } else if at_least_one_batch {
                log.read(offset, max_bytes as usize).await.map(Some)
            } else {
                log.read_within(offset, max_bytes as usize).await.map(Some)
            };
            match read {
                Ok(outcome) => {
                    let chunks = outcome
                        .map_or_else(Vec::new, |outcome| below(outcome.chunks, readable_end));
                    return FetchPartitionResponse {
                        partition,
                        status: Status::ok(),
                        high_watermark: readable_end,
                        log_start_offset: log.log_start_offset(),
                        records: FetchPayload::Local(chunks),
                    };
                }
                Err(error) => self.storage_status(topic, partition, &error),
            }
        };
        FetchPartitionResponse {
            partition,
            status,
            high_watermark: self.readable_end(topic, partition, &log),
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
        until: WaitFor,
    ) {
        match self.owner(topic, partition) {
            Ok(owner) if owner == self.id => {
                if let Ok(log) = self.log(topic, partition) {
                    let _counted = self.probe.long_poll_wait();
                    let wait = std::time::Duration::from_millis(u64::from(max_wait_ms));
                    let give_up =
                        futures_lite::future::or(glommio::timer::sleep(wait), self.stopping.wait());
                    if until == WaitFor::Readable && self.view.borrow().clustered() {
                        // Consumers read below the high watermark: they wait for it to
                        // pass their offset, or for the leadership to change (not spin
                        // while this node is taking it up).
                        let replica = self.replica(topic, partition);
                        let led = replica.led_epoch();
                        let moved = replica.moved.wait_until(|| {
                            replica.high_watermark.get() > offset || replica.led_epoch() != led
                        });
                        futures_lite::future::or(moved, give_up).await;
                    } else {
                        futures_lite::future::or(log.wait_for_data(offset), give_up).await;
                    }
                }
            }
            Ok(owner) => {
                self.metrics.forwarded_requests.inc();
                let topic = topic.to_string();
                let _ = self
                    .ask(owner, |reply| ShardMessage::WaitForData {
                        topic,
                        partition,
                        offset,
                        max_wait_ms,
                        until,
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
            Ok(owner) if owner == self.id => match self.led_log(topic, partition) {
                Ok(log) => log,
                Err(status) => return offsets_failed(partition, status),
            },
            Ok(owner) => {
                self.metrics.forwarded_requests.inc();
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
            OFFSET_LATEST => Ok(Some(self.readable_end(topic, partition, &log))),
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

    /// A new Kafka producer id (shard 0 hands them out; other shards ask it), unique for
    /// the life of the data directory.
    pub async fn init_producer_id(self: &Rc<Self>) -> Result<i64, Status> {
        let local = self.local_producer_id().await?;
        // In a cluster every node hands out ids from its own blocks: its node id in the
        // high bits keeps them apart (a node gives at most 2^40 ids).
        Ok(match &self.cluster {
            Some(handle) => ((handle.id as i64) << 40) | local,
            None => local,
        })
    }

    async fn local_producer_id(self: &Rc<Self>) -> Result<i64, Status> {
        if self.id != 0 {
            return self
                .ask(0, |reply| ShardMessage::InitProducerId { reply })
                .await?;
        }
        let _turn = self
            .producer_ids_turn
            .acquire_permit(1)
            .await
            .map_err(|_| Status::error(ErrorCode::ShuttingDown, "the broker is shutting down"))?;
        if let Some(id) = self.producer_ids.borrow_mut().take() {
            return Ok(id);
        }
        let end = self.producer_ids.borrow().next_block_end();
        let data_dir = self.config.data_dir.clone();
        off_reactor(move || producer_ids::reserve(&data_dir, end))
            .await
            .map_err(|error| {
                Status::error(
                    ErrorCode::StorageError,
                    format!(
                        "cannot reserve producer ids in {}: {error}",
                        self.config.data_dir.display()
                    ),
                )
            })?;
        let mut ids = self.producer_ids.borrow_mut();
        ids.end = end;
        Ok(ids.take().expect("a new block has ids"))
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
        if self.cluster.is_some() {
            return self.cluster_create_topics(topics).await;
        }
        let names: Vec<String> = topics.iter().map(|topic| topic.name.clone()).collect();
        if self.id != 0 {
            return self
                .ask_coordinator(names, |reply| ShardMessage::CreateTopics { topics, reply })
                .await;
        }
        let _turn = self.admin.acquire_permit(1).await;
        let mut metadata = self.metadata.borrow().clone();
        let mut budget = Budget::new(&self.config, &metadata);
        let (statuses, spans) = check_each(
            &topics,
            |topic| &topic.name,
            |topic| {
                if topic.replication_factor != 1 {
                    return Err(Status::error(
                        ErrorCode::InvalidReplicationFactor,
                        format!(
                            "replication factor {} is not available: this broker runs on its own (no --cluster) and keeps one copy of each partition",
                            topic.replication_factor
                        ),
                    ));
                }
                let record = metadata.check_new_topic(topic)?;
                self.check_limits(&record)?;
                let span = Span {
                    topic: record,
                    from: 0,
                };
                budget.take(&span)?;
                Ok(span)
            },
        );
        metadata.add_topics(spans.iter().map(|span| span.topic.clone()).collect());
        self.commit_new_partitions(metadata, spans, statuses).await
    }

    /// Adds partitions to topics (shard 0 does it; other shards forward). As for a
    /// creation, the new partitions are opened on their owners before the grown topics
    /// are saved, and dropped again if that fails. Groups subscribed to a grown topic
    /// rebalance at their next topic check (within about a second).
    pub async fn create_partitions(
        self: &Rc<Self>,
        requests: Vec<NewPartitions>,
    ) -> Vec<TopicStatus> {
        if self.cluster.is_some() {
            return self.cluster_create_partitions(requests).await;
        }
        let names: Vec<String> = requests.iter().map(|topic| topic.name.clone()).collect();
        if self.id != 0 {
            return self
                .ask_coordinator(names, |reply| ShardMessage::CreatePartitions {
                    topics: requests,
                    reply,
                })
                .await;
        }
        let _turn = self.admin.acquire_permit(1).await;
        let mut metadata = self.metadata.borrow().clone();
        let mut budget = Budget::new(&self.config, &metadata);
        let (statuses, spans) = check_each(
            &requests,
            |request| &request.name,
            |request| {
                let record = metadata.check_new_partitions(&request.name, request.count)?;
                let from = metadata.topic(&record.name).map_or(0, |old| old.partitions);
                let span = Span {
                    topic: record,
                    from,
                };
                budget.take(&span)?;
                Ok(span)
            },
        );
        let grown: Vec<TopicRecord> = spans.iter().map(|span| span.topic.clone()).collect();
        metadata.grow_topics(&grown);
        self.commit_new_partitions(metadata, spans, statuses).await
    }

    /// Makes new partitions (of new or grown topics, already in `metadata`) real.
    /// Directories first, metadata last: every shard opens its partitions of `spans`, then
    /// `metadata` is saved, then every shard applies it. A topic is saved only once every
    /// shard holds its partitions open, so a saved topic always opens again on restart.
    /// Anything that fails before the save is rolled back, and the statuses of the spans'
    /// topics carry its error; a crash leaves stray directories, which the next start
    /// removes.
    async fn commit_new_partitions(
        &self,
        metadata: ClusterMetadata,
        spans: Vec<Span>,
        mut statuses: Vec<TopicStatus>,
    ) -> Vec<TopicStatus> {
        if spans.is_empty() {
            return statuses;
        }
        let outcome = match self.open_everywhere(&spans).await {
            Ok(()) => self
                .save_metadata(&metadata)
                .await
                .map_err(|error| Status::error(ErrorCode::StorageError, error.to_string())),
            Err(status) => Err(status),
        };
        if let Err(status) = outcome {
            self.drop_everywhere(&spans).await;
            let names: HashSet<&str> = spans.iter().map(|span| span.topic.name.as_str()).collect();
            for topic in &mut statuses {
                if names.contains(topic.name.as_str()) {
                    topic.status = status.clone();
                }
            }
            return statuses;
        }
        self.apply_everywhere(metadata, Vec::new()).await;
        statuses
    }

    /// Deletes topics and their data (shard 0 does it; other shards forward).
    pub async fn delete_topics(self: &Rc<Self>, names: Vec<String>) -> Vec<TopicStatus> {
        if self.cluster.is_some() {
            return self.cluster_delete_topics(names).await;
        }
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
        // A name given again is answered as a topic that no longer exists, as when it is
        // deleted twice in a row; all are removed in one pass.
        let mut doomed: HashSet<&str> = HashSet::new();
        let statuses: Vec<TopicStatus> = names
            .iter()
            .map(|name| {
                let status = if metadata.topic(name).is_some() && doomed.insert(name) {
                    Status::ok()
                } else {
                    unknown_topic(name)
                };
                TopicStatus {
                    name: name.clone(),
                    status,
                }
            })
            .collect();
        if doomed.is_empty() {
            return statuses;
        }
        let deleted = metadata.remove_topics(&doomed);
        if let Err(error) = self.save_metadata(&metadata).await {
            return all_failed(&names, &error.to_string());
        }
        self.apply_everywhere(metadata, deleted).await;
        statuses
    }

    /// The broker's own limits on a new topic's configs (checked in themselves by
    /// `ClusterMetadata::check_new_topic`).
    pub(super) fn check_limits(&self, topic: &TopicRecord) -> Result<(), Status> {
        let limit = self.config.tail_cache_bytes_max;
        match topic.log_config().tail_cache_bytes {
            bytes if bytes > limit => Err(Status::error(
                ErrorCode::InvalidConfig,
                format!(
                    "tail.cache.bytes={bytes} is over this broker's limit of {limit} bytes per partition (spate serve --tail-cache-bytes-max)"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Saves `metadata` (write, fsync, rename, directory fsync) on the blocking-thread
    /// pool: a slow or stalled disk must not stop this shard serving its partitions.
    pub(super) async fn save_metadata(
        &self,
        metadata: &ClusterMetadata,
    ) -> Result<(), crate::broker::metadata::MetadataError> {
        let (metadata, data_dir) = (metadata.clone(), self.config.data_dir.clone());
        off_reactor(move || metadata.save(&data_dir)).await
    }

    /// Has every shard open the partitions it owns of `spans`; the first failure is
    /// returned (the caller rolls back with `drop_everywhere`).
    async fn open_everywhere(&self, spans: &[Span]) -> Result<(), Status> {
        for peer in (0..self.count).filter(|&peer| peer != self.id) {
            let spans = spans.to_vec();
            self.ask(peer, |reply| ShardMessage::OpenPartitions { spans, reply })
                .await??;
        }
        self.open_partitions(spans, Opening::Fresh).await
    }

    /// Has every shard close and remove its partitions of `spans`.
    async fn drop_everywhere(&self, spans: &[Span]) {
        for peer in (0..self.count).filter(|&peer| peer != self.id) {
            let spans = spans.to_vec();
            let _ = self
                .ask(peer, |reply| ShardMessage::DropPartitions { spans, reply })
                .await;
        }
        self.drop_partitions(spans).await;
    }

    /// Has every shard take the saved metadata before answering. The save is the commit
    /// point, so this cannot fail: this shard applies first, and a peer that cannot take
    /// it is stopping (stops are broker-wide) and reads the saved file when it starts
    /// again; partitions it did not drop are then strays, which start-up sets aside.
    pub(super) async fn apply_everywhere(
        &self,
        metadata: ClusterMetadata,
        deleted: Vec<TopicRecord>,
    ) {
        self.apply_metadata(metadata.clone(), deleted.clone()).await;
        for peer in (0..self.count).filter(|&peer| peer != self.id) {
            let (metadata, deleted) = (metadata.clone(), deleted.clone());
            let applied = self
                .ask(peer, |reply| ShardMessage::ApplyMetadata {
                    metadata,
                    deleted,
                    reply,
                })
                .await;
            if let Err(status) = applied {
                tracing::info!(peer, %status, "a stopping shard did not take a metadata change; it is saved");
            }
        }
    }

    /// The partitions of `span` this shard owns.
    fn owned(&self, span: &Span) -> impl Iterator<Item = u32> {
        let (name, id, count) = (span.topic.name.clone(), self.id, self.count);
        (span.from..span.topic.partitions)
            .filter(move |&partition| shard_for(&name, partition, count) == id)
    }

    /// Opens the partitions this shard owns of `topics` (those this node holds, in a
    /// cluster), `partitions_opening_max` at a time. `Fresh` partitions (of a topic being
    /// created) start empty: a log or directory already there is a leftover (of a failed
    /// creation, or of a deletion this shard missed while stopping) and is removed. A
    /// stopping shard opens no fresh partitions, since its logs are about to close. If one
    /// fails, those opened by this call are dropped again (fresh ones) or left to the
    /// caller, which fails the start (existing ones).
    pub(super) async fn open_partitions(
        &self,
        spans: &[Span],
        opening: Opening,
    ) -> Result<(), Status> {
        type Pending = glommio::Task<Result<Log, String>>;
        let mut opened: Vec<(String, u32)> = Vec::new();
        let mut under_way: VecDeque<((String, u32), Pending)> = VecDeque::new();
        let mut failure = None;
        let view = self.view.borrow().clone();
        'topics: for span in spans {
            let topic = &span.topic;
            for partition in self
                .owned(span)
                .filter(|&partition| view.hosts(&topic.name, partition))
            {
                if under_way.len() >= self.partitions_opening_max {
                    let (key, task) = under_way.pop_front().expect("full");
                    if let Err(status) = self.adopt(key, task.await, opening, &mut opened).await {
                        failure = Some(status);
                        break 'topics;
                    }
                }
                if opening == Opening::Fresh && self.stopping.is_set() {
                    failure = Some(Status::error(
                        ErrorCode::ShuttingDown,
                        format!("shard {} is stopping", self.id),
                    ));
                    break 'topics;
                }
                let key = (topic.name.clone(), partition);
                if opening == Opening::Existing && self.logs.borrow().contains_key(&key) {
                    continue;
                }
                let dir = partition_dir(&self.config.data_dir, &topic.name, partition);
                if opening == Opening::Fresh && self.logs.borrow().contains_key(&key) {
                    tracing::warn!(dir = %dir.display(), "removing a stale log in the way of a new topic");
                    self.drop_partition(&topic.name, partition).await;
                }
                let cleared = match opening {
                    Opening::Fresh => remove_dir(&dir).await.map_err(|error| error.to_string()),
                    Opening::Existing => Ok(()),
                };
                let config = self.log_config(topic);
                let task = glommio::spawn_local(async move {
                    match cleared {
                        Ok(()) => Log::open_under_lock(dir, config)
                            .await
                            .map_err(|error| error.to_string()),
                        Err(error) => Err(format!("cannot clear {}: {error}", dir.display())),
                    }
                });
                under_way.push_back((key, task));
            }
        }
        while let Some((key, task)) = under_way.pop_front() {
            let result = task.await;
            if failure.is_none() {
                if let Err(status) = self.adopt(key, result, opening, &mut opened).await {
                    failure = Some(status);
                }
            } else if let Ok(log) = result {
                let _ = log.close().await;
                if opening == Opening::Fresh {
                    let _ = remove_dir(log.dir()).await;
                }
            }
        }
        match failure {
            None => Ok(()),
            Some(status) => {
                if opening == Opening::Fresh {
                    for (name, partition) in opened {
                        self.drop_partition(&name, partition).await;
                    }
                }
                Err(status)
            }
        }
    }

    /// Takes a partition whose open finished into the shard's logs, or says why it failed.
    async fn adopt(
        &self,
        key: (String, u32),
        result: Result<Log, String>,
        opening: Opening,
        opened: &mut Vec<(String, u32)>,
    ) -> Result<(), Status> {
        // A stop that began during the open may already have closed this shard's logs: a
        // log added now would never be closed.
        let log = match result {
            Ok(log) if opening == Opening::Fresh && self.stopping.is_set() => {
                let _ = log.close().await;
                let _ = remove_dir(log.dir()).await;
                Err(format!("shard {} is stopping", self.id))
            }
            log => log,
        };
        match log {
            Ok(log) => {
                self.logs.borrow_mut().insert(key.clone(), log);
                opened.push(key);
                Ok(())
            }
            Err(error) => Err(Status::error(
                ErrorCode::StorageError,
                format!(
                    "shard {} cannot open partition {}-{}: {error}",
                    self.id, key.0, key.1
                ),
            )),
        }
    }

    /// Closes and removes this shard's partitions of `spans`.
    async fn drop_partitions(&self, spans: &[Span]) {
        for span in spans {
            for partition in self.owned(span) {
                self.drop_partition(&span.topic.name, partition).await;
            }
        }
    }

    async fn drop_partition(&self, topic: &str, partition: u32) {
        self.forget_replica(topic, partition);
        let log = self
            .logs
            .borrow_mut()
            .remove(&(topic.to_string(), partition));
        if let Some(log) = log {
            let _ = log.close().await;
        }
        let dir = partition_dir(&self.config.data_dir, topic, partition);
        if let Err(error) = remove_dir(&dir).await {
            tracing::warn!(%error, dir = %dir.display(), "removing a partition directory");
        }
    }

    /// Takes a new copy of the metadata (its new partitions are already open), then closes
    /// and removes the partitions of deleted topics.
    pub async fn apply_metadata(&self, metadata: ClusterMetadata, deleted: Vec<TopicRecord>) {
        *self.metadata.borrow_mut() = metadata;
        if !deleted.is_empty() {
            let names: Vec<String> = deleted.iter().map(|topic| topic.name.clone()).collect();
            if self.view.borrow().clustered() {
                // Their tombstones go through the replicated offsets partitions, and an
                // acks=all append may wait for an ISR change that only this path (shard
                // 0's `reconcile`) applies: written beside it, not awaited. Each offsets
                // log's exclusive turn still orders them before any later commit.
                let groups = self.groups.clone();
                glommio::spawn_local(async move { groups.topics_deleted(&names).await }).detach();
            } else {
                self.groups.topics_deleted(&names).await;
            }
        }
        self.drop_partitions(&Span::whole(&deleted)).await;
    }

    /// Serves a message from another shard.
    pub async fn handle_message(self: Rc<Self>, message: ShardMessage) {
        match message {
            ShardMessage::Produce {
                topic,
                partition,
                records,
                acks,
                reply,
            } => {
                let _ = reply.send(self.produce_local(&topic, partition, records, acks).await);
            }
            ShardMessage::Fetch {
                topic,
                partition,
                offset,
                max_bytes,
                at_least_one_batch,
                reply,
            } => {
                let response = self
                    .fetch_local(&topic, partition, offset, max_bytes, at_least_one_batch)
                    .await;
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
                until,
                mut reply,
            } => {
                // The asking fetch stops listening once any of its partitions has data,
                // its deadline passes or its connection closes: the wait ends with it,
                // rather than holding on here for the rest of `max_wait_ms`.
                let asker_gone = reply.cancellation();
                let waited = self.wait_for_data(&topic, partition, offset, max_wait_ms, until);
                futures_lite::future::or(waited, asker_gone).await;
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
            ShardMessage::CreatePartitions { topics, reply } => {
                let _ = reply.send(self.create_partitions(topics).await);
            }
            ShardMessage::Group { call, reply } => {
                let _ = reply.send(self.groups.call(call, &self.stopping).await);
            }
            ShardMessage::ListGroups { reply } => {
                let _ = reply.send(self.groups.list());
            }
            ShardMessage::InitProducerId { reply } => {
                let _ = reply.send(self.local_producer_id().await);
            }
            ShardMessage::Describe { reply } => {
                let _ = reply.send(self.describe());
            }
            ShardMessage::OpenPartitions { spans, reply } => {
                let _ = reply.send(self.open_partitions(&spans, Opening::Fresh).await);
            }
            ShardMessage::DropPartitions { spans, reply } => {
                self.drop_partitions(&spans).await;
                let _ = reply.send(());
            }
            ShardMessage::ApplyMetadata {
                metadata,
                deleted,
                reply,
            } => {
                self.apply_metadata(metadata, deleted).await;
                let _ = reply.send(());
            }
            ShardMessage::TakeView {
                state,
                spans,
                reply,
            } => {
                let _ = reply.send(self.take_view(state, &spans).await);
            }
            ShardMessage::ReplicaFetch {
                replica,
                partition,
                max_bytes,
                reply,
            } => {
                let _ = reply.send(
                    self.replica_fetch_local(replica, partition, max_bytes)
                        .await,
                );
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Opening {
    /// Partitions of a topic being created.
    Fresh,
    /// Partitions of a saved topic (at start-up), or that the cluster placed on this node:
    /// their logs are opened as they are, created if missing; those open already stay.
    Existing,
}

/// The chunks' batches that start below `end` (a read cut at the high watermark). Reads
/// return whole batches, so the cut falls between two; the last chunk kept is sliced
/// there.
fn below(chunks: Vec<Chunk>, end: i64) -> Vec<Chunk> {
    let mut kept = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let mut position = 0;
        while position + crate::limits::BATCH_HEADER_BYTES <= chunk.len() {
            let Ok(header) = crate::record::BatchHeader::parse(&chunk[position..]) else {
                break;
            };
            if header.base_offset >= end {
                break;
            }
            position += header.total_bytes();
        }
        let position = position.min(chunk.len());
        if position == chunk.len() {
            kept.push(chunk);
            continue;
        }
        if position > 0 {
            kept.push(match chunk {
                Chunk::Cached(bytes) => Chunk::Cached(bytes.slice(..position)),
                Chunk::Disk(read) => match glommio::io::ReadResult::slice(&read, 0, position) {
                    Some(slice) => Chunk::Disk(slice),
                    None => break,
                },
            });
        }
        break;
    }
    kept
}

/// Runs blocking work (std file I/O) on the shard's blocking-thread pool, not on its
/// reactor, which keeps serving meanwhile.
async fn off_reactor<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    glommio::executor().spawn_blocking(work).await
}

/// Removes a partition directory if it is there (off the reactor: a large directory, or
/// a stalled disk, must not stop the shard).
async fn remove_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    off_reactor(move || match std::fs::remove_dir_all(&dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    })
    .await
}

/// One status per request, in request order, and the spans of those accepted. As Kafka
/// does, a topic named twice in one request is refused everywhere it appears (which of
/// the two was meant cannot be known); the others are as `check` says.
fn check_each<R>(
    requests: &[R],
    name: impl Fn(&R) -> &String,
    mut check: impl FnMut(&R) -> Result<Span, Status>,
) -> (Vec<TopicStatus>, Vec<Span>) {
    let mut times_named: HashMap<&str, usize> = HashMap::new();
    for request in requests {
        *times_named.entry(name(request).as_str()).or_default() += 1;
    }
    let mut spans = Vec::new();
    let statuses = requests
        .iter()
        .map(|request| {
            let topic = name(request);
            let checked = if times_named[topic.as_str()] > 1 {
                Err(Status::error(
                    ErrorCode::InvalidRequest,
                    format!(
                        "topic {} is named more than once in this request",
                        quoted(topic)
                    ),
                ))
            } else {
                check(request)
            };
            let status = match checked {
                Err(status) => status,
                Ok(span) => {
                    spans.push(span);
                    Status::ok()
                }
            };
            TopicStatus {
                name: topic.clone(),
                status,
            }
        })
        .collect();
    (statuses, spans)
}

/// Partitions `from..topic.partitions` of a topic: all of a new or deleted topic's, or
/// those a topic grows by.
#[derive(Debug, Clone)]
pub struct Span {
    pub topic: TopicRecord,
    pub from: u32,
}

impl Span {
    pub(super) fn whole(topics: &[TopicRecord]) -> Vec<Span> {
        topics
            .iter()
            .map(|topic| Span {
                topic: topic.clone(),
                from: 0,
            })
            .collect()
    }
}

/// What new partitions may still take: each shard's partition limit. (File descriptors
/// do not limit them: a shard keeps at most its cap of segment files open, `files.rs`.)
struct Budget {
    per_shard: Vec<u32>,
    max_per_shard: u32,
}

impl Budget {
    fn new(config: &ServerConfig, metadata: &ClusterMetadata) -> Budget {
        Budget {
            per_shard: partitions_per_shard(&metadata.topics, config.shards),
            max_per_shard: config.partitions_max_per_shard,
        }
    }

    /// Counts `span`'s partitions against the budget, or says why they do not fit.
    fn take(&mut self, span: &Span) -> Result<(), Status> {
        let topic = &span.topic;
        let mut added = partitions_per_shard(std::slice::from_ref(topic), self.per_shard.len());
        if span.from > 0 {
            let before = TopicRecord {
                partitions: span.from,
                ..topic.clone()
            };
            let had = partitions_per_shard(std::slice::from_ref(&before), added.len());
            for (count, had) in added.iter_mut().zip(had) {
                *count -= had;
            }
        }
        let mut per_shard = self.per_shard.clone();
        for (shard, count) in added.into_iter().enumerate() {
            per_shard[shard] += count;
            if per_shard[shard] > self.max_per_shard {
                return Err(Status::error(
                    ErrorCode::ResourceLimit,
                    format!(
                        "topic {} would give shard {shard} {} partitions; the limit is {} (partitions-max-per-shard)",
                        topic.name, per_shard[shard], self.max_per_shard
                    ),
                ));
            }
        }
        self.per_shard = per_shard;
        Ok(())
    }
}

pub(super) fn unknown_topic(topic: &str) -> Status {
    Status::error(
        ErrorCode::UnknownTopicOrPartition,
        format!("topic {} does not exist", quoted(topic)),
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
