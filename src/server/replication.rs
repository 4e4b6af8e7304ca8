//! Partition replication between the nodes of a cluster (Kafka's design, KIP-101 and
//! KIP-320 for divergence):
//!
//! - The leader stamps its leader epoch into every batch it appends, and each replica
//!   keeps, per partition, where each epoch starts in its log (`Epochs`, the file
//!   `.leader-epochs` beside the segments).
//! - Followers fetch from the leader (`ReplicaFetch`, one fetcher task per shard and
//!   leader node, batching the partitions it follows there, long-polling). They append
//!   the leader's batches as they are (same offsets, same epochs) and report their log end
//!   in their next fetch.
//! - The leader's high watermark is the lowest log end among its in-sync replicas (ISR,
//!   the leader's own included). acks=all completes once the high watermark passes the
//!   batch; consumers read below it only.
//! - A follower tells the leader the epoch of its last batch; where the leader's log
//!   disagrees (that epoch ends earlier there, or the leader never had it), the answer
//!   says where the follower's log diverged and the follower truncates there first.
//! - Fetches carry the leader epoch the follower believes current; a leader refuses any
//!   other (`FencedLeaderEpoch`), so a deposed leader (paused, cut off) takes no part.
//! - A follower that has not caught up for `replica_lag_time_max_ms` is taken out of the
//!   ISR, and one that catches up is put back, through the controller.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::shard::{Shard, ShardMessage, WaitFor};
use crate::broker::metadata::{partition_dir, shard_for};
use crate::cluster::{Command, NodeId};
use crate::group::offsets::OFFSETS_TOPIC;
use crate::protocol::{
    ErrorCode, ReplicaFetchPartition, ReplicaFetchPartitionResponse, ReplicaFetchRequest, Request,
    Response, Status, quoted,
};
use crate::record::BatchHeader;
use crate::semaphore::FifoSemaphore;
use crate::storage::{AppendOrigin, Log};
use crate::wake::Event;

/// How long a leader holds a replica fetch that finds nothing new.
const FETCH_MAX_WAIT_MS: u32 = 500;
/// Most record bytes a replica fetch asks for per partition, and in all.
const FETCH_PARTITION_BYTES_MAX: u32 = 1 << 20;
const FETCH_RESPONSE_BYTES_MAX: usize = 16 << 20;
/// A fetcher whose leader does not answer within this gives up the connection.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A fetcher's pause after a failure (the leader is down, or the views disagree for a
/// moment around a leader change).
const FETCH_RETRY: Duration = Duration::from_millis(100);
/// How often a leader looks for followers that fell out of, or came back into, sync.
const ISR_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Where each leader epoch starts in a partition's log, ascending by epoch and offset.
/// Kept in the file `.leader-epochs` in the partition's directory (one `epoch offset` line
/// each), replaced whole whenever it changes: it changes once per leadership, and at a
/// truncation.
pub(crate) struct Epochs {
    path: PathBuf,
    entries: Vec<(i32, i64)>,
}

impl Epochs {
    fn load(path: PathBuf) -> Epochs {
        let entries = std::fs::read_to_string(&path)
            .map(|text| {
                text.lines()
                    .filter_map(|line| {
                        let (epoch, offset) = line.split_once(' ')?;
                        Some((epoch.parse().ok()?, offset.parse().ok()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Epochs { path, entries }
    }

    /// The epoch of the log's last batch, -1 for none.
    pub fn last_epoch(&self) -> i32 {
        self.entries.last().map_or(-1, |(epoch, _)| *epoch)
    }

    /// Notes that `epoch` starts at `offset` (a later epoch than the last).
    fn assign(&mut self, epoch: i32, offset: i64) -> bool {
        if epoch <= self.last_epoch() {
            return false;
        }
        self.entries.push((epoch, offset));
        true
    }

    /// The largest epoch at or below `epoch`, and where it ends in a log ending at
    /// `log_end` (where the next epoch starts, or the log end for the last one). `(-1,
    /// first start)` when every epoch here is later.
    pub fn end_of(&self, epoch: i32, log_end: i64) -> (i32, i64) {
        match self.entries.iter().rposition(|(known, _)| *known <= epoch) {
            None => (
                -1,
                self.entries.first().map_or(log_end, |(_, start)| *start),
            ),
            Some(index) => {
                let end = self
                    .entries
                    .get(index + 1)
                    .map_or(log_end, |(_, start)| *start);
                (self.entries[index].0, end)
            }
        }
    }

    /// Forgets the epochs that start at or after `offset` (the log was cut there).
    fn truncate(&mut self, offset: i64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(_, start)| *start < offset);
        self.entries.len() != before
    }

    /// Writes the file (temporary, fsync, rename) on the blocking-thread pool; the future
    /// holds no borrow of the cache.
    fn save(&self) -> impl std::future::Future<Output = Result<(), Status>> + 'static {
        let text: String = self
            .entries
            .iter()
            .map(|(epoch, offset)| format!("{epoch} {offset}\n"))
            .collect();
        let path = self.path.clone();
        async move { save_epochs(path, text).await }
    }
}

async fn save_epochs(path: PathBuf, text: String) -> Result<(), Status> {
    let shown = path.display().to_string();
    let saved = glommio::executor()
        .spawn_blocking(move || -> std::io::Result<()> {
            let temporary = path.with_extension("tmp");
            std::fs::write(&temporary, text)?;
            std::fs::File::open(&temporary)?.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })
        .await;
    saved.map_err(|error| {
        Status::error(
            ErrorCode::StorageError,
            format!("cannot save {shown}: {error}"),
        )
    })
}

/// What a leader knows of one follower.
struct Progress {
    log_end: i64,
    /// The leader's log end when it last answered this follower: a follower whose next
    /// fetch starts there has caught up (Kafka's rule; "at the log end now" would never
    /// hold under steady load, a round trip behind).
    answered_end: i64,
    /// When its fetch last reached the leader's log end.
    caught_up_at: Instant,
}

/// One partition's replication state on this node.
pub(crate) struct Replica {
    pub epochs: RefCell<Epochs>,
    /// Leading: the lowest log end among the ISR. Following: the leader's, as last heard
    /// (no more than this log's end), kept in case this node leads next.
    pub high_watermark: Cell<i64>,
    /// Woken when the high watermark moves, or the leadership changes.
    pub moved: Event,
    /// The leader epoch this node leads the partition in; `None` while following.
    led_epoch: Cell<Option<u32>>,
    /// When this node began leading (a follower not heard from since is given a session).
    led_since: Cell<Instant>,
    followers: RefCell<BTreeMap<NodeId, Progress>>,
    /// An ISR change proposed and not yet applied, so that it is not proposed again.
    isr_change_pending: Cell<bool>,
    /// One change of this replica's log and epochs at a time: a follower's append or
    /// truncation, taking up the leadership.
    turn: Rc<FifoSemaphore>,
    /// A follower whose joining the ISR is proposed: counted in the high watermark from
    /// the moment it is proposed (Kafka's "maximal ISR"), so nothing is acknowledged that
    /// an ISR with it could lack once the change commits.
    joining: Cell<Option<NodeId>>,
    /// Following: the leader's log start this copy last deleted up to.
    leader_log_start: Cell<i64>,
}

impl Replica {
    fn open(dir: &std::path::Path) -> Replica {
        Replica {
            epochs: RefCell::new(Epochs::load(dir.join(".leader-epochs"))),
            high_watermark: Cell::new(0),
            moved: Event::default(),
            led_epoch: Cell::new(None),
            led_since: Cell::new(Instant::now()),
            followers: RefCell::new(BTreeMap::new()),
            isr_change_pending: Cell::new(false),
            turn: Rc::new(FifoSemaphore::new(1)),
            joining: Cell::new(None),
            leader_log_start: Cell::new(0),
        }
    }

    pub fn led_epoch(&self) -> Option<u32> {
        self.led_epoch.get()
    }

    fn raise_high_watermark(&self, to: i64) {
        if to > self.high_watermark.get() {
            self.high_watermark.set(to);
            self.moved.notify_all();
        }
    }
}

impl Shard {
    /// The replication state of a partition this shard holds (made on first use).
    pub(crate) fn replica(&self, topic: &str, partition: u32) -> Rc<Replica> {
        let key = (topic.to_string(), partition);
        if let Some(replica) = self.replicas.borrow().get(&key) {
            return replica.clone();
        }
        let dir = partition_dir(&self.config.data_dir, topic, partition);
        let replica = Rc::new(Replica::open(&dir));
        self.replicas.borrow_mut().insert(key, replica.clone());
        replica
    }

    /// Forgets a partition's replication state (its log is closed and removed).
    pub(crate) fn forget_replica(&self, topic: &str, partition: u32) {
        if let Some(replica) = self
            .replicas
            .borrow_mut()
            .remove(&(topic.to_string(), partition))
        {
            replica.led_epoch.set(None);
            replica.moved.notify_all();
        }
    }

    /// After the view changed: takes up or gives up the leadership of this shard's
    /// partitions as it says, and starts a fetcher for each leader node this shard now
    /// follows partitions of.
    pub(crate) async fn follow_view(self: &Rc<Self>) {
        let Some(node) = self.view.borrow().node_id else {
            return;
        };
        // One at a time (start-up's and each TakeView's), each partition judged by the
        // view as it is when its turn comes, not as it was when this call began.
        let Ok(_turn) = self.view_turn.acquire(1).await else {
            return;
        };
        let logs = self.open_logs();
        let mut leaders = std::collections::BTreeSet::new();
        for ((topic, partition), log) in logs {
            let view = self.view.borrow().clone();
            let Some(state) = view.partition(&topic, partition) else {
                continue;
            };
            let replica = self.replica(&topic, partition);
            let offsets = topic == OFFSETS_TOPIC;
            if view.leads(&topic, partition) {
                if replica.led_epoch.get() != Some(state.leader_epoch) {
                    self.take_leadership(&topic, partition, &replica, &log, state.leader_epoch)
                        .await;
                    if offsets {
                        // A new epoch: whatever was loaded is replayed again.
                        self.groups.unload(partition);
                    }
                }
                // The groups of an offsets partition are coordinated by its leader (loaded
                // again at the next view change if a load failed).
                if offsets
                    && replica.led_epoch.get() == Some(state.leader_epoch)
                    && !self.groups.is_loaded(partition)
                {
                    let exists = |topic: &str, partition: u32| {
                        topic != OFFSETS_TOPIC && view.partition(topic, partition).is_some()
                    };
                    self.groups.load(partition, log.clone(), exists).await;
                }
                self.advance_high_watermark(&topic, partition, &replica, &log);
            } else if state.leader == Some(node) {
                // Named leader by a state from before this process registered: it waits.
                if replica.led_epoch.replace(None).is_some() {
                    replica.moved.notify_all();
                }
                if offsets {
                    self.groups.unload(partition);
                }
            } else {
                if replica.led_epoch.replace(None).is_some() {
                    tracing::info!(topic, partition, leader = ?state.leader, "no longer leading");
                    replica.moved.notify_all();
                }
                if offsets {
                    self.groups.unload(partition);
                }
                if let Some(leader) = state.leader {
                    leaders.insert(leader);
                }
            }
            replica.isr_change_pending.set(false);
            replica.joining.set(None);
        }
        for leader in leaders {
            if self.fetchers.borrow_mut().insert(leader) {
                glommio::spawn_local(self.clone().fetch_from(leader)).detach();
            }
        }
    }

    async fn take_leadership(
        &self,
        topic: &str,
        partition: u32,
        replica: &Replica,
        log: &Log,
        epoch: u32,
    ) {
        // After any append or truncation a fetch answer had begun.
        let Ok(_turn) = replica.turn.acquire(1).await else {
            return;
        };
        let log_end = log.log_end_offset();
        // The new epoch starts at this log's end: what followers hold past it diverged.
        let assigned = replica.epochs.borrow_mut().assign(epoch as i32, log_end);
        if assigned {
            let saved = replica.epochs.borrow().save();
            if let Err(status) = saved.await {
                tracing::warn!(%status, "saving a leader epoch");
            }
        }
        replica.followers.borrow_mut().clear();
        replica.led_since.set(Instant::now());
        replica.led_epoch.set(Some(epoch));
        replica.moved.notify_all();
        tracing::info!(topic, partition, epoch, log_end, "leading");
    }

    /// Leading: moves the high watermark up to the lowest log end of the ISR, as far as
    /// this node knows them (a member not heard from yet in this epoch holds it back).
    pub(crate) fn advance_high_watermark(
        &self,
        topic: &str,
        partition: u32,
        replica: &Replica,
        log: &Log,
    ) {
        let Some(node) = self.view.borrow().node_id else {
            return;
        };
        let isr = match self.view.borrow().partition(topic, partition) {
            Some(state) => state.isr.clone(),
            None => return,
        };
        let followers = replica.followers.borrow();
        let mut lowest = log.log_end_offset();
        let joining = replica.joining.get().filter(|member| !isr.contains(member));
        for member in isr
            .iter()
            .chain(joining.iter())
            .filter(|member| **member != node)
        {
            match followers.get(member) {
                Some(progress) => lowest = lowest.min(progress.log_end),
                None => return,
            }
        }
        drop(followers);
        replica.raise_high_watermark(lowest);
    }

    /// The high watermark a consumer may read below: the log end on a broker on its own.
    pub(crate) fn readable_end(&self, topic: &str, partition: u32, log: &Log) -> i64 {
        if self.view.borrow().clustered() {
            self.replica(topic, partition)
                .high_watermark
                .get()
                .min(log.log_end_offset())
        } else {
            log.log_end_offset()
        }
    }

    /// Before a leader's append: the ISR must hold `min.insync.replicas`.
    pub(crate) fn check_in_sync(
        &self,
        topic: &str,
        partition: u32,
        log: &Log,
    ) -> Result<(), Status> {
        let view = self.view.borrow();
        let Some(state) = view.partition(topic, partition) else {
            return Ok(());
        };
        let needed = usize::from(log.config().min_insync_replicas);
        if state.isr.len() < needed {
            return Err(Status::error(
                ErrorCode::NotEnoughReplicas,
                format!(
                    "{}-{partition} has {} in-sync replicas ({:?}); min.insync.replicas is {needed}",
                    quoted(topic),
                    state.isr.len(),
                    state.isr
                ),
            ));
        }
        Ok(())
    }

    /// acks=all in a cluster: waits until the high watermark passes `last_offset` while
    /// this node still leads in `epoch`, and then at least `min.insync.replicas` are in
    /// sync (all of the ISR hold what is below the high watermark).
    pub(crate) async fn wait_replicated(
        &self,
        topic: &str,
        partition: u32,
        replica: &Replica,
        epoch: u32,
        last_offset: i64,
        min_insync: u16,
    ) -> Result<(), Status> {
        let moved = replica.moved.wait_until(|| {
            replica.high_watermark.get() > last_offset || replica.led_epoch.get() != Some(epoch)
        });
        futures_lite::future::or(moved, self.stopping.wait()).await;
        if replica.high_watermark.get() <= last_offset {
            return Err(Status::error(
                ErrorCode::NotOwner,
                format!(
                    "node {:?} stopped leading {}-{partition} before offset {last_offset} was replicated: it may or may not be kept",
                    self.view.borrow().node_id,
                    quoted(topic)
                ),
            ));
        }
        let in_sync = self
            .view
            .borrow()
            .partition(topic, partition)
            .map_or(0, |state| state.isr.len());
        if in_sync < usize::from(min_insync) {
            return Err(Status::error(
                ErrorCode::NotEnoughReplicasAfterAppend,
                format!(
                    "{}-{partition} up to offset {last_offset} is held by the {in_sync} in-sync replicas only; min.insync.replicas is {min_insync}",
                    quoted(topic)
                ),
            ));
        }
        Ok(())
    }

    /// Leading: answers one partition of a follower's fetch.
    pub(crate) async fn replica_fetch_local(
        &self,
        replica_id: NodeId,
        request: ReplicaFetchPartition,
        max_bytes: u32,
    ) -> ReplicaFetchPartitionResponse {
        let (topic, partition) = (request.topic.clone(), request.partition);
        let failed = |status: Status| refused(topic.clone(), partition, status);
        let log = match self.led_log(&topic, partition) {
            Ok(log) => log,
            Err(status) => return failed(status),
        };
        let replica = self.replica(&topic, partition);
        let Some(epoch) = replica.led_epoch.get() else {
            return failed(Status::error(
                ErrorCode::NotOwner,
                "this node is taking up the leadership: try again",
            ));
        };
        let is_replica = self
            .view
            .borrow()
            .partition(&topic, partition)
            .is_some_and(|state| state.replicas.contains(&replica_id));
        if !is_replica {
            return failed(Status::error(
                ErrorCode::InvalidRequest,
                format!(
                    "node {replica_id} holds no replica of {}-{partition}",
                    quoted(&topic)
                ),
            ));
        }
        if request.leader_epoch != epoch {
            return failed(Status::error(
                ErrorCode::FencedLeaderEpoch,
                format!(
                    "{}-{partition} is led in epoch {epoch}, not {}",
                    quoted(&topic),
                    request.leader_epoch
                ),
            ));
        }
        let log_end = log.log_end_offset();
        let log_start = log.log_start_offset();
        if request.fetch_offset < log_start {
            // Deleted here (retention, an offsets log's compaction) while the follower was
            // away: it starts over at this log's start.
            return ReplicaFetchPartitionResponse {
                high_watermark: replica.high_watermark.get(),
                log_start_offset: log_start,
                ..failed(Status::error(
                    ErrorCode::OffsetOutOfRange,
                    format!(
                        "{}-{partition} starts at offset {log_start} on its leader, after {}",
                        quoted(&topic),
                        request.fetch_offset
                    ),
                ))
            };
        }
        let diverged = |(epoch, end): (i32, i64)| ReplicaFetchPartitionResponse {
            diverging_epoch: epoch,
            diverging_end_offset: end,
            status: Status::ok(),
            high_watermark: replica.high_watermark.get(),
            log_start_offset: log.log_start_offset(),
            ..failed(Status::ok())
        };
        if request.last_fetched_epoch >= 0 {
            let (known, end) = replica
                .epochs
                .borrow()
                .end_of(request.last_fetched_epoch, log_end);
            if known != request.last_fetched_epoch || end < request.fetch_offset {
                return diverged((known, end));
            }
        }
        if request.fetch_offset > log_end {
            let last = replica.epochs.borrow().last_epoch();
            return diverged((last, log_end));
        }
        {
            let mut followers = replica.followers.borrow_mut();
            let now = Instant::now();
            let progress = followers.entry(replica_id).or_insert(Progress {
                log_end: request.fetch_offset,
                answered_end: i64::MAX,
                caught_up_at: replica.led_since.get(),
            });
            progress.log_end = request.fetch_offset;
            if request.fetch_offset >= log_end.min(progress.answered_end) {
                progress.caught_up_at = now;
            }
            progress.answered_end = log_end;
        }
        self.advance_high_watermark(&topic, partition, &replica, &log);
        self.maybe_expand_isr(
            &topic,
            partition,
            &replica,
            replica_id,
            request.fetch_offset,
        );
        let records = if request.fetch_offset < log_end {
            match log.read(request.fetch_offset, max_bytes as usize).await {
                Ok(outcome) => {
                    let mut bytes = BytesMut::with_capacity(outcome.bytes_len());
                    for chunk in &outcome.chunks {
                        bytes.extend_from_slice(chunk);
                    }
                    bytes.freeze()
                }
                Err(error) => return failed(crate::broker::storage_status(&error)),
            }
        } else {
            Bytes::new()
        };
        ReplicaFetchPartitionResponse {
            topic,
            partition,
            status: Status::ok(),
            high_watermark: replica.high_watermark.get(),
            log_start_offset: log.log_start_offset(),
            diverging_epoch: -1,
            diverging_end_offset: -1,
            records,
        }
    }

    /// A follower outside the ISR that has reached the high watermark goes back in.
    fn maybe_expand_isr(
        &self,
        topic: &str,
        partition: u32,
        replica: &Replica,
        follower: NodeId,
        follower_end: i64,
    ) {
        let view = self.view.borrow().clone();
        let Some(state) = view.partition(topic, partition) else {
            return;
        };
        // It must hold what this leader's epoch started with too: a new leader's high
        // watermark may lag what the old one acknowledged.
        let epoch_start = replica
            .epochs
            .borrow()
            .entries
            .last()
            .map_or(0, |(_, start)| *start);
        if state.isr.contains(&follower)
            || follower_end < replica.high_watermark.get()
            || follower_end < epoch_start
            || replica.isr_change_pending.get()
        {
            return;
        }
        replica.isr_change_pending.set(true);
        replica.joining.set(Some(follower));
        self.propose_isr_change(
            Command::ExpandIsr {
                topic: topic.to_string(),
                partition,
                leader_epoch: state.leader_epoch,
                replica: follower,
            },
            self.replica(topic, partition),
        );
    }

    /// Proposes an ISR change; one not made (refused, or no controller in time) may be
    /// proposed again at the next check.
    fn propose_isr_change(&self, command: Command, replica: Rc<Replica>) {
        let Some(handle) = self.cluster.clone() else {
            return;
        };
        glommio::spawn_local(async move {
            match handle.write(command.clone()).await {
                Ok(crate::cluster::CommandReply::Done) => {
                    tracing::info!(?command, "in-sync replicas changed")
                }
                outcome => {
                    tracing::debug!(?command, ?outcome, "an ISR change not made");
                    replica.isr_change_pending.set(false);
                    replica.joining.set(None);
                }
            }
        })
        .detach();
    }

    /// Every `ISR_CHECK_INTERVAL`, for as long as the broker runs: takes followers that
    /// have not caught up for `replica_lag_time_max_ms` out of the ISR of the partitions
    /// this shard leads.
    pub(crate) async fn check_isr(self: Rc<Self>) {
        let lag_max = Duration::from_millis(self.config.replica_lag_time_max_ms);
        while !self.stopping.is_set() {
            glommio::timer::sleep(ISR_CHECK_INTERVAL).await;
            let view = self.view.borrow().clone();
            let Some(node) = view.node_id else {
                return;
            };
            let replicas: Vec<((String, u32), Rc<Replica>)> = self
                .replicas
                .borrow()
                .iter()
                .map(|(key, replica)| (key.clone(), replica.clone()))
                .collect();
            let now = Instant::now();
            for ((topic, partition), replica) in replicas {
                let Some(epoch) = replica.led_epoch.get() else {
                    continue;
                };
                let Some(state) = view.partition(&topic, partition) else {
                    continue;
                };
                if state.leader_epoch != epoch || replica.isr_change_pending.get() {
                    continue;
                }
                let lagging = {
                    let followers = replica.followers.borrow();
                    state.isr.iter().copied().find(|member| {
                        *member != node
                            && now.duration_since(
                                followers
                                    .get(member)
                                    .map_or(replica.led_since.get(), |progress| {
                                        progress.caught_up_at
                                    }),
                            ) > lag_max
                    })
                };
                if let Some(member) = lagging {
                    tracing::warn!(
                        topic,
                        partition,
                        member,
                        "a follower fell behind: taking it out of the ISR"
                    );
                    replica.isr_change_pending.set(true);
                    self.propose_isr_change(
                        Command::ShrinkIsr {
                            topic,
                            partition,
                            leader_epoch: epoch,
                            replica: member,
                        },
                        replica.clone(),
                    );
                }
            }
        }
    }

    /// Following: fetches from `leader` the partitions this shard follows there, for as
    /// long as there are any.
    async fn fetch_from(self: Rc<Self>, leader: NodeId) {
        let mut connection: Option<glommio::net::TcpStream> = None;
        let mut correlation_id = 0u32;
        while !self.stopping.is_set() {
            let (node, followed, address) = {
                let view = self.view.borrow();
                let Some(node) = view.node_id else { break };
                let followed: Vec<(String, u32, u32)> = self
                    .logs
                    .borrow()
                    .keys()
                    .filter_map(|(topic, partition)| {
                        let state = view.partition(topic, *partition)?;
                        (state.leader == Some(leader))
                            .then(|| (topic.clone(), *partition, state.leader_epoch))
                    })
                    .collect();
                let address = view.state.brokers.get(&leader).and_then(|broker| {
                    let bootstrap: std::net::SocketAddr = broker.info.address.parse().ok()?;
                    // This node's --cluster may route to the leader another way (another
                    // interface, or a fault proxy in tests): then through that address's
                    // listener, which hands each partition to its owner shard.
                    if let Some(routed) = self.route_to(leader, bootstrap) {
                        return Some(routed);
                    }
                    let shards = usize::from(broker.info.shards.max(1));
                    let shard = followed.first().map_or(0, |(topic, partition, _)| {
                        shard_for(topic, *partition, shards)
                    });
                    let port = bootstrap
                        .port()
                        .checked_add(1 + u16::try_from(shard).ok()?)?;
                    Some(std::net::SocketAddr::new(bootstrap.ip(), port))
                });
                (node, followed, address)
            };
            if followed.is_empty() {
                break;
            }
            let Some(address) = address else {
                glommio::timer::sleep(FETCH_RETRY).await;
                continue;
            };
            let partitions: Vec<ReplicaFetchPartition> = followed
                .iter()
                .filter_map(|(topic, partition, epoch)| {
                    let log = self.log(topic, *partition).ok()?;
                    let replica = self.replica(topic, *partition);
                    let last_fetched_epoch = replica.epochs.borrow().last_epoch();
                    Some(ReplicaFetchPartition {
                        topic: topic.clone(),
                        partition: *partition,
                        leader_epoch: *epoch,
                        fetch_offset: log.log_end_offset(),
                        last_fetched_epoch,
                    })
                })
                .collect();
            correlation_id = correlation_id.wrapping_add(1);
            let request = Request::ReplicaFetch(ReplicaFetchRequest {
                replica: node,
                max_wait_ms: FETCH_MAX_WAIT_MS,
                max_bytes: FETCH_PARTITION_BYTES_MAX,
                partitions,
            });
            let exchange = async {
                if connection.is_none() {
                    let stream = glommio::net::TcpStream::connect(address).await?;
                    stream.set_nodelay(true)?;
                    connection = Some(stream);
                }
                let stream = connection.as_mut().expect("connected");
                super::peer::exchange(stream, &request, correlation_id).await
            };
            let answer = futures_lite::future::or(async { Some(exchange.await) }, async {
                glommio::timer::sleep(FETCH_TIMEOUT).await;
                None
            })
            .await;
            let partitions = match answer {
                Some(Ok(Response::ReplicaFetch(partitions))) => partitions,
                Some(Ok(Response::Failed(status))) => {
                    tracing::debug!(leader, %status, "a replica fetch was refused");
                    glommio::timer::sleep(FETCH_RETRY).await;
                    continue;
                }
                failure => {
                    tracing::debug!(leader, ?failure, "a replica fetch failed");
                    connection = None;
                    glommio::timer::sleep(FETCH_RETRY).await;
                    continue;
                }
            };
            let mut pause = false;
            for answer in partitions {
                if let Err(status) = self.take_fetched(leader, answer).await {
                    tracing::debug!(leader, %status, "a replica fetch answer not taken");
                    pause = true;
                }
            }
            if pause {
                glommio::timer::sleep(FETCH_RETRY).await;
            }
        }
        self.fetchers.borrow_mut().remove(&leader);
        // A partition followed from `leader` again meanwhile needs this fetcher back.
        if !self.stopping.is_set() {
            let still = self.logs.borrow().keys().any(|(topic, partition)| {
                self.view
                    .borrow()
                    .partition(topic, *partition)
                    .is_some_and(|state| state.leader == Some(leader))
            });
            if still && self.fetchers.borrow_mut().insert(leader) {
                glommio::spawn_local(self.clone().fetch_from(leader)).detach();
            }
        }
    }

    /// Following: appends what the leader sent, or truncates where it says the logs
    /// diverged.
    async fn take_fetched(
        &self,
        leader: NodeId,
        answer: ReplicaFetchPartitionResponse,
    ) -> Result<(), Status> {
        let (topic, partition) = (answer.topic.as_str(), answer.partition);
        let log = self.log(topic, partition)?;
        let replica = self.replica(topic, partition);
        let Ok(_turn) = replica.turn.acquire(1).await else {
            return Ok(());
        };
        // An answer from a leader this node no longer follows (it leads now, or another
        // node does) is dropped: the next fetch goes where the view says.
        let still_following = replica.led_epoch().is_none()
            && self
                .view
                .borrow()
                .partition(topic, partition)
                .is_some_and(|state| state.leader == Some(leader));
        if !still_following {
            return Ok(());
        }
        if answer.status.code == ErrorCode::OffsetOutOfRange
            && answer.log_start_offset > log.log_end_offset()
        {
            return self
                .start_over_at(topic, partition, &log, &replica, answer.log_start_offset)
                .await;
        }
        if !answer.status.is_ok() {
            return Err(answer.status);
        }
        if answer.diverging_epoch >= 0 || answer.diverging_end_offset >= 0 {
            // Cut where the leader's copy of that epoch ends, or where this log's does if
            // that is earlier.
            let (_, own_end) = replica
                .epochs
                .borrow()
                .end_of(answer.diverging_epoch, log.log_end_offset());
            let cut = answer.diverging_end_offset.min(own_end).max(0);
            let new_end = log
                .truncate(cut)
                .await
                .map_err(|error| crate::broker::storage_status(&error))?;
            let changed = replica.epochs.borrow_mut().truncate(new_end);
            if changed {
                let saved = replica.epochs.borrow().save();
                saved.await?;
            }
            tracing::warn!(
                topic,
                partition,
                cut = new_end,
                "truncated a diverged replica"
            );
            return Ok(());
        }
        if !answer.records.is_empty() {
            // New epochs in what arrived start where their first batch does.
            let mut new_epochs = Vec::new();
            let mut position = 0;
            while position + crate::limits::BATCH_HEADER_BYTES <= answer.records.len() {
                let header = BatchHeader::parse(&answer.records[position..])
                    .map_err(|error| Status::error(ErrorCode::CorruptBatch, error.to_string()))?;
                new_epochs.push((header.partition_leader_epoch, header.base_offset));
                position += header.total_bytes();
            }
            let records = BytesMut::from(&answer.records[..]);
            // Out of step with the log end (`ReplicaOffsetMismatch`) or failed: the next
            // fetch asks again from the log end.
            log.append_as(records, AppendOrigin::Replica)
                .await
                .map_err(|error| crate::broker::storage_status(&error))?;
            let mut changed = false;
            for (epoch, start) in new_epochs {
                changed |= replica.epochs.borrow_mut().assign(epoch, start);
            }
            if changed {
                let saved = replica.epochs.borrow().save();
                saved.await?;
            }
        }
        let known = answer.high_watermark.min(log.log_end_offset());
        if known > replica.high_watermark.get() {
            replica.high_watermark.set(known);
        }
        // The leader's log start (retention, compaction) moves this copy's: its whole
        // segments below it go, never past the high watermark.
        let start = answer.log_start_offset.min(replica.high_watermark.get());
        if start > log.log_start_offset() && start > replica.leader_log_start.get() {
            replica.leader_log_start.set(start);
            log.delete_before(start)
                .await
                .map_err(|error| crate::broker::storage_status(&error))?;
        }
        Ok(())
    }

    /// Following: the leader's log starts after this copy's end (it deleted what this
    /// copy needs next while this node was away), so this copy starts over, empty, at the
    /// leader's log start, and fetches from there (Kafka's truncate-fully-and-start-at).
    async fn start_over_at(
        &self,
        topic: &str,
        partition: u32,
        log: &Log,
        replica: &Replica,
        start: i64,
    ) -> Result<(), Status> {
        let storage = |error: crate::storage::StorageError| crate::broker::storage_status(&error);
        let key = (topic.to_string(), partition);
        let dir = log.dir().to_path_buf();
        let config = log.config().clone();
        tracing::warn!(
            topic,
            partition,
            log_end = log.log_end_offset(),
            start,
            "the leader's log starts past this copy's end: starting over there"
        );
        // The epochs first: a crash after this and before the log is emptied starts over
        // again; the other order could leave epochs above an emptied log.
        if replica.epochs.borrow_mut().truncate(i64::MIN) {
            let saved = replica.epochs.borrow().save();
            saved.await?;
        }
        // The map keeps the (closed) log meanwhile, so a view change sees the partition.
        let _ = log.close().await;
        let reopened = async {
            Log::start_empty_at(&dir, start).await?;
            Log::open_under_lock(dir.clone(), config).await
        }
        .await;
        let fresh = match reopened {
            Ok(fresh) => fresh,
            Err(error) => {
                tracing::error!(%error, dir = %dir.display(), "cannot start a replica over; it stays closed");
                return Err(storage(error));
            }
        };
        let replaced = match self.logs.borrow_mut().get_mut(&key) {
            Some(entry) => {
                *entry = fresh.clone();
                true
            }
            None => false,
        };
        if !replaced {
            // The topic was deleted meanwhile: its directory goes again.
            let _ = fresh.close().await;
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(());
        }
        replica.high_watermark.set(start);
        replica.leader_log_start.set(start);
        Ok(())
    }
}

/// Leading: a follower's fetch, each partition answered by its owner shard; held for up
/// to `max_wait_ms` while none has anything new.
pub(crate) async fn replica_fetch(shard: &Rc<Shard>, request: ReplicaFetchRequest) -> Response {
    if !shard.view.borrow().clustered() {
        return Response::Failed(Status::error(
            ErrorCode::InvalidRequest,
            "this broker runs on its own (no --cluster): it has no followers",
        ));
    }
    let deadline = Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms.min(5000)));
    let max_bytes = request.max_bytes.min(FETCH_PARTITION_BYTES_MAX);
    loop {
        let mut answers = Vec::with_capacity(request.partitions.len());
        let mut total = 0usize;
        for partition in &request.partitions {
            let budget = if total >= FETCH_RESPONSE_BYTES_MAX {
                0
            } else {
                max_bytes
            };
            let answer = shard
                .replica_fetch(request.replica, partition.clone(), budget)
                .await;
            total += answer.records.len();
            answers.push(answer);
        }
        let worth_answering = answers.iter().any(|answer| {
            !answer.status.is_ok() || !answer.records.is_empty() || answer.diverging_epoch >= 0
        });
        let now = Instant::now();
        if worth_answering || now >= deadline || shard.stopping.is_set() {
            return Response::ReplicaFetch(answers);
        }
        // Nothing new: wait for any partition's log end to pass the follower's, or for
        // the high watermark to move (the follower learns it from the next answer).
        let waits: Vec<_> = request
            .partitions
            .iter()
            .map(|partition| {
                let shard = shard.clone();
                let (topic, index, offset) = (
                    partition.topic.clone(),
                    partition.partition,
                    partition.fetch_offset,
                );
                let wait_ms = (deadline - now).as_millis() as u32;
                glommio::spawn_local(async move {
                    shard
                        .wait_for_data(&topic, index, offset, wait_ms, WaitFor::Appended)
                        .await
                })
            })
            .collect();
        let any = crate::wake::first_of(waits);
        futures_lite::future::or(any, glommio::timer::sleep(deadline - now)).await;
    }
}

impl Shard {
    /// One partition of a replica fetch, here or on its owner shard.
    async fn replica_fetch(
        self: &Rc<Self>,
        replica: NodeId,
        partition: ReplicaFetchPartition,
        max_bytes: u32,
    ) -> ReplicaFetchPartitionResponse {
        let (topic, index) = (partition.topic.clone(), partition.partition);
        match self.owner(&topic, index) {
            Ok(owner) if owner == self.id => {
                self.replica_fetch_local(replica, partition, max_bytes)
                    .await
            }
            Ok(owner) => {
                self.metrics.forwarded_requests.inc();
                let answer = self
                    .ask(owner, |reply| ShardMessage::ReplicaFetch {
                        replica,
                        partition,
                        max_bytes,
                        reply,
                    })
                    .await;
                answer.unwrap_or_else(|status| refused(topic, index, status))
            }
            Err(status) => refused(topic, index, status),
        }
    }
}

fn refused(topic: String, partition: u32, status: Status) -> ReplicaFetchPartitionResponse {
    ReplicaFetchPartitionResponse {
        topic,
        partition,
        status,
        high_watermark: -1,
        log_start_offset: -1,
        diverging_epoch: -1,
        diverging_end_offset: -1,
        records: Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epochs(entries: &[(i32, i64)]) -> Epochs {
        Epochs {
            path: PathBuf::new(),
            entries: entries.to_vec(),
        }
    }

    #[test]
    fn an_epoch_ends_where_the_next_starts_or_at_the_log_end() {
        let cache = epochs(&[(0, 0), (2, 10), (5, 30)]);
        assert_eq!(cache.end_of(0, 50), (0, 10));
        // Epoch 1 was never led here: the largest below it is 0, ending at 10.
        assert_eq!(cache.end_of(1, 50), (0, 10));
        assert_eq!(cache.end_of(2, 50), (2, 30));
        assert_eq!(cache.end_of(5, 50), (5, 50));
        assert_eq!(cache.end_of(9, 50), (5, 50));
        assert_eq!(epochs(&[(3, 7)]).end_of(1, 20), (-1, 7));
        assert_eq!(epochs(&[]).end_of(1, 20), (-1, 20));
    }

    #[test]
    fn epochs_are_assigned_in_order_and_cut_with_the_log() {
        let mut cache = epochs(&[(0, 0)]);
        assert!(cache.assign(3, 12));
        assert!(!cache.assign(3, 20), "an epoch starts once");
        assert!(!cache.assign(2, 20), "epochs only grow");
        assert!(cache.assign(4, 20));
        assert!(cache.truncate(15));
        assert_eq!(cache.entries, vec![(0, 0), (3, 12)]);
        assert_eq!(cache.last_epoch(), 3);
        assert!(!cache.truncate(15));
    }
}
