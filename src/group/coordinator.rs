//! The group coordinator of one shard: the membership of the groups it owns (join, sync,
//! heartbeat, leave, with generations), their assignments, and their committed offsets.
//!
//! A rebalance is stop-the-world (Kafka's eager protocol): when a member joins, leaves or
//! expires, or a subscribed topic changes, the group enters `PreparingRebalance`; every
//! member learns it from its heartbeat (which the coordinator holds open, so it answers
//! the moment a rebalance begins), gives up its partitions and joins again. Once all have
//! joined (or the rebalance timeout has passed) the coordinator computes the assignment,
//! bumps the generation and answers every join; each member then fetches its share with a
//! sync. Membership is in memory only: after a coordinator restart members get
//! `UnknownMemberId` and join again. Committed offsets are durable (`offsets.rs`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use glommio::sync::Semaphore;

use super::assignor::{self, Assignment, Strategy, Subscription};
use super::offsets::{
    Committed, Entry, GroupOffsets, OFFSETS_PARTITIONS, OffsetStore, OffsetsWriter, offsets_dir,
    offsets_partition,
};
use crate::broker::metadata::ClusterMetadata;
use crate::limits::{
    GROUP_MEMBERS_MAX, GROUP_NAME_BYTES_MAX, GROUP_REBALANCE_TIMEOUT_MAX_MS, GROUP_TOPICS_MAX,
    OFFSET_METADATA_BYTES_MAX,
};
use crate::protocol::{
    ErrorCode, GENERATION_NONE, GroupDescription, GroupIdRequest, GroupListing,
    GroupMemberDescription, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, OffsetCommitRequest, OffsetCommitTopicResponse, OffsetFetchPartition,
    OffsetFetchRequest, OffsetFetchTopic, PartitionStatus, Request, Response, Status,
    SyncGroupRequest, TopicPartitions,
};
use crate::storage::Log;
use crate::wake::{Event, Latch};

/// How often `tick` should run: session expiry and rebalance deadlines are this precise.
pub const TICK: Duration = Duration::from_millis(50);

/// Subscribed topics are compared with the metadata every this many ticks (a second): a
/// created or deleted topic rebalances its groups within about a second.
const TOPIC_CHECK_TICKS: u64 = 20;

/// The broker settings the coordinator uses.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub data_dir: std::path::PathBuf,
    /// Range of session timeouts members may ask for (Kafka's
    /// `group.min.session.timeout.ms` and `group.max.session.timeout.ms`).
    pub session_timeout_min_ms: u32,
    pub session_timeout_max_ms: u32,
    /// An offsets log is compacted once it is larger than this (and than twice its size
    /// after the last compaction).
    pub offsets_compact_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

/// The protocol type Spate's native members take part in (Kafka's consumer protocol type).
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// A group request, from either door.
#[derive(Clone)]
pub enum GroupCall {
    Native(Request),
    /// A Kafka member's join. `request.topics` are the topics its subscription names
    /// (empty if its metadata is not Kafka's consumer protocol) and `request.assignors`
    /// its protocol names.
    KafkaJoin {
        request: JoinGroupRequest,
        protocol_type: String,
        /// (protocol name, opaque metadata), preferred first.
        protocols: Vec<(String, Bytes)>,
    },
    /// A Kafka member's sync; the leader's carries every member's assignment.
    KafkaSync {
        request: SyncGroupRequest,
        assignments: Vec<ClientAssignment>,
    },
    /// What Kafka's DescribeGroups tells about a group.
    KafkaDescribe {
        group_id: String,
    },
}

impl GroupCall {
    pub fn group_id(&self) -> &str {
        match self {
            GroupCall::Native(request) => request
                .group_id()
                .expect("only group requests reach the coordinator"),
            GroupCall::KafkaJoin { request, .. } => &request.group_id,
            GroupCall::KafkaSync { request, .. } => &request.group_id,
            GroupCall::KafkaDescribe { group_id } => group_id,
        }
    }
}

pub enum GroupAnswer {
    Native(Response),
    Joined(Result<Joined, Status>),
    /// The member's assignment: the leader's bytes for a Kafka member.
    Synced(Result<Bytes, Status>),
    Described(Result<KafkaGroup, Status>),
}

/// One member's assignment as a Kafka group leader sent it: opaque bytes, and the
/// partitions they name when they are Kafka's consumer protocol.
#[derive(Debug, Clone)]
pub struct ClientAssignment {
    pub member_id: String,
    pub bytes: Bytes,
    pub partitions: Option<BTreeMap<String, Vec<u32>>>,
}

/// A member's subscription as the group leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberMetadata {
    /// A Kafka member's metadata for the chosen protocol, as it sent it.
    Kafka(Bytes),
    /// A native member: its topics (the Kafka door encodes them as a subscription).
    Native { topics: Vec<String> },
}

/// A completed join.
#[derive(Debug, Clone)]
pub struct Joined {
    pub response: JoinGroupResponse,
    /// Every member's subscription, for a Kafka leader that assigns the partitions;
    /// empty for everyone else.
    pub members: Vec<(String, MemberMetadata)>,
}

/// What Kafka's DescribeGroups answers.
#[derive(Debug, Clone)]
pub struct KafkaGroup {
    pub state: &'static str,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<KafkaGroupMember>,
}

#[derive(Debug, Clone)]
pub struct KafkaGroupMember {
    pub member_id: String,
    pub client_id: String,
    pub metadata: MemberMetadata,
    /// Bytes a Kafka leader assigned, or the partitions the coordinator assigned.
    pub assignment: Result<Bytes, Vec<TopicPartitions>>,
}

type JoinReply = oneshot::Sender<Result<Joined, Status>>;

struct Member {
    client_id: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    topics: Vec<String>,
    /// Protocol names the member accepts, preferred first: all a Kafka member sent, a
    /// native member's assignors.
    protocols: Vec<String>,
    /// A Kafka member's metadata per protocol; `None` for a native member.
    kafka: Option<Vec<(String, Bytes)>>,
    /// The bytes a Kafka leader assigned this member in the current generation.
    assigned_bytes: Option<Bytes>,
    /// The last time the member was heard from (a request, or a held heartbeat answered).
    last_seen: Instant,
    /// Heartbeats of this member the coordinator is holding: the member is alive.
    held: u32,
    /// Its join, waiting for the rebalance to complete.
    join: Option<JoinReply>,
    assignment: BTreeMap<String, Vec<u32>>,
    synced: bool,
}

struct Group {
    state: State,
    generation: i32,
    strategy: Option<Strategy>,
    /// The protocol type of its members ("consumer" for Spate's own) and the protocol
    /// chosen for the generation.
    protocol_type: String,
    protocol: String,
    /// The generation's partitions are assigned by a Kafka leader, not the coordinator
    /// (whenever a Kafka member is in the group).
    client_assigned: bool,
    /// The generation's assignment is known (the coordinator's, or the leader's sync).
    assignments_ready: bool,
    /// The assignment names partitions the coordinator can read (to refuse commits for
    /// partitions a member does not hold); false when a Kafka leader's bytes are not
    /// Kafka's consumer protocol.
    assignment_known: bool,
    leader: String,
    /// By member id: assignors see members in id order.
    members: BTreeMap<String, Member>,
    offsets: GroupOffsets,
    /// Partition counts the current assignment was made for: a change rebalances.
    assigned_for: BTreeMap<String, u32>,
    /// When a rebalance in progress gives up on members that have not joined.
    rebalance_deadline: Option<Instant>,
    /// Bumped when a rebalance starts; held heartbeats watch it.
    round: u64,
    changed: Rc<Event>,
}

impl Group {
    fn new() -> Group {
        Group {
            state: State::Empty,
            generation: 0,
            strategy: None,
            protocol_type: String::new(),
            protocol: String::new(),
            client_assigned: false,
            assignments_ready: false,
            assignment_known: true,
            leader: String::new(),
            members: BTreeMap::new(),
            offsets: GroupOffsets::new(),
            assigned_for: BTreeMap::new(),
            rebalance_deadline: None,
            round: 0,
            changed: Rc::new(Event::default()),
        }
    }

    /// Whether the group holds nothing worth keeping.
    fn is_dead(&self) -> bool {
        self.members.is_empty() && self.offsets.is_empty()
    }

    fn owns(&self, member_id: &str, topic: &str, partition: u32) -> bool {
        if !self.assignment_known {
            return self.members.contains_key(member_id);
        }
        self.members.get(member_id).is_some_and(|member| {
            member
                .assignment
                .get(topic)
                .is_some_and(|partitions| partitions.contains(&partition))
        })
    }
}

/// The groups one shard coordinates, and their offsets logs.
pub struct Coordinator {
    config: GroupConfig,
    shard: usize,
    shards: usize,
    metadata: Rc<RefCell<ClusterMetadata>>,
    groups: RefCell<HashMap<String, Group>>,
    stores: RefCell<HashMap<u32, Rc<OffsetStore>>>,
    /// In a cluster: where commits go (the replicated `__consumer_offsets`). This shard
    /// then coordinates the groups of the offsets partitions it leads, loaded when it
    /// takes up their leadership (`load`) and dropped when it gives it up (`unload`).
    writer: RefCell<Option<Rc<dyn OffsetsWriter>>>,
    /// One store opens at a time (a lazy open must not race another for the same one).
    opening: Semaphore,
    compacting: RefCell<std::collections::HashSet<u32>>,
    next_member: Cell<u64>,
    ticks: Cell<u64>,
    closed: Cell<bool>,
}

fn check_name(what: &str, value: &str, allow_empty: bool) -> Result<(), Status> {
    if value.is_empty() && !allow_empty {
        return Err(Status::error(
            ErrorCode::InvalidRequest,
            format!("the {what} is empty"),
        ));
    }
    if value.len() > GROUP_NAME_BYTES_MAX {
        return Err(Status::error(
            ErrorCode::InvalidRequest,
            format!(
                "the {what} is {} bytes long; the limit is {GROUP_NAME_BYTES_MAX}",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Writes the tombstones `Coordinator::adopt` found needed; a failure is logged, and they
/// are found needed again at the next open or load.
async fn drop_stale(store: &OffsetStore, partition: u32, stale: &[Entry]) {
    let turn = store.exclusive_turn().await;
    match store.append(&turn, stale).await {
        Ok(()) => tracing::info!(
            partition,
            offsets = stale.len(),
            "dropped the committed offsets of deleted topics"
        ),
        Err(error) => tracing::warn!(
            %error,
            partition,
            "recording the offsets of deleted topics failed; they are dropped again at the next open or load"
        ),
    }
}

fn not_coordinator(group_id: &str) -> Status {
    Status::error(
        ErrorCode::NotCoordinator,
        format!(
            "this node does not coordinate group {} (now): find its coordinator again",
            crate::protocol::quoted(group_id)
        ),
    )
}

fn to_topic_partitions(assignment: &BTreeMap<String, Vec<u32>>) -> Vec<TopicPartitions> {
    assignment
        .iter()
        .map(|(name, partitions)| TopicPartitions {
            name: name.clone(),
            partitions: partitions.clone(),
        })
        .collect()
}

impl Coordinator {
    /// A coordinator for shard `shard` of `shards`; `open_existing` loads its offsets.
    pub fn new(
        config: GroupConfig,
        shard: usize,
        shards: usize,
        metadata: Rc<RefCell<ClusterMetadata>>,
    ) -> Coordinator {
        Coordinator {
            config,
            shard,
            shards,
            metadata,
            groups: RefCell::new(HashMap::new()),
            stores: RefCell::new(HashMap::new()),
            writer: RefCell::new(None),
            opening: Semaphore::new(1),
            compacting: RefCell::new(Default::default()),
            next_member: Cell::new(0),
            ticks: Cell::new(0),
            closed: Cell::new(false),
        }
    }

    /// The offsets partitions this shard coordinates.
    fn owned_partitions(&self) -> impl Iterator<Item = u32> + '_ {
        (0..OFFSETS_PARTITIONS).filter(|partition| *partition as usize % self.shards == self.shard)
    }

    /// Makes this a cluster node's coordinator: commits go through `writer`, and groups
    /// are served only once their offsets partition is loaded here (`load`).
    pub fn replicate_through(&self, writer: Rc<dyn OffsetsWriter>) {
        *self.writer.borrow_mut() = Some(writer);
    }

    fn clustered(&self) -> bool {
        self.writer.borrow().is_some()
    }

    /// Opens the offsets logs of this shard that exist on disk, so that every group with
    /// committed offsets is known (listed, described) from the start. (In a cluster they
    /// are loaded as their partitions' leadership comes here.)
    pub async fn open_existing(&self) -> Result<(), String> {
        if self.clustered() {
            return Ok(());
        }
        for partition in self.owned_partitions().collect::<Vec<_>>() {
            if offsets_dir(&self.config.data_dir, partition).exists() {
                self.store(partition)
                    .await
                    .map_err(|status| status.message)?;
            }
        }
        Ok(())
    }

    /// In a cluster: this node has taken up the leadership of offsets partition
    /// `partition`, whose replica is `log`. Replays it to its end (everything any earlier
    /// coordinator wrote and replicated) and coordinates its groups from now on. Offsets
    /// of topics `exists` does not know are left out (their deletion's tombstones may not
    /// have been written).
    pub async fn load(&self, partition: u32, log: Log, exists: impl Fn(&str, u32) -> bool) {
        let Some(writer) = self.writer.borrow().clone() else {
            return;
        };
        let _turn = self.opening.acquire_permit(1).await;
        if self.closed.get() {
            return;
        }
        self.drop_partition(partition);
        let (store, loaded) = match OffsetStore::replicated(log, partition, writer).await {
            Ok(opened) => opened,
            Err(error) => {
                tracing::warn!(%error, partition, "cannot load an offsets partition: its groups have no coordinator");
                return;
            }
        };
        let store = Rc::new(store);
        let count = loaded.len();
        let stale = self.adopt(loaded, exists);
        self.stores.borrow_mut().insert(partition, store.clone());
        tracing::info!(
            partition,
            groups = count,
            "coordinating the groups of an offsets partition"
        );
        if !stale.is_empty() {
            // Written beside the view change this runs in (an acks=all append waits for
            // the followers).
            glommio::spawn_local(async move { drop_stale(&store, partition, &stale).await })
                .detach();
        }
    }

    /// Takes the groups' offsets replayed from an offsets log, leaving out those of
    /// topics `exists` does not know, and returns the tombstones those need: their
    /// deletion's were not written (a crash after the deletion was saved, a failed write,
    /// a deletion while the partition had no leader), and they must be before a topic
    /// created again under the name could read from them.
    fn adopt(
        &self,
        loaded: BTreeMap<String, GroupOffsets>,
        exists: impl Fn(&str, u32) -> bool,
    ) -> Vec<Entry> {
        let mut stale = Vec::new();
        let mut groups = self.groups.borrow_mut();
        for (id, mut offsets) in loaded {
            offsets.retain(|(topic, partition), _| {
                let kept = exists(topic, *partition);
                if !kept {
                    stale.push(Entry::OffsetDeleted {
                        group: id.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                    });
                }
                kept
            });
            groups.entry(id).or_insert_with(Group::new).offsets = offsets;
        }
        groups.retain(|_, group| !group.is_dead());
        stale
    }

    /// In a cluster: whether offsets partition `partition` is loaded here.
    pub fn is_loaded(&self, partition: u32) -> bool {
        self.stores.borrow().contains_key(&partition)
    }

    /// In a cluster: this node no longer leads offsets partition `partition`. Its groups
    /// are dropped here; their members' waiting calls end with `NotCoordinator` and they
    /// find the new coordinator.
    pub fn unload(&self, partition: u32) {
        if self.stores.borrow_mut().remove(&partition).is_some() {
            tracing::info!(
                partition,
                "no longer coordinating the groups of an offsets partition"
            );
        }
        self.drop_partition(partition);
    }

    fn drop_partition(&self, partition: u32) {
        let mut groups = self.groups.borrow_mut();
        groups.retain(|group_id, group| {
            if offsets_partition(group_id) != partition {
                return true;
            }
            for member in group.members.values_mut() {
                if let Some(join) = member.join.take() {
                    let _ = join.send(Err(not_coordinator(group_id)));
                }
            }
            group.members.clear();
            group.changed.notify_all();
            false
        });
    }

    /// Whether this shard serves `group_id` now: always on a broker on its own; in a
    /// cluster, once the group's offsets partition is loaded here.
    fn check_coordinating(&self, group_id: &str) -> Result<(), Status> {
        if self.clustered()
            && !self
                .stores
                .borrow()
                .contains_key(&offsets_partition(group_id))
        {
            return Err(not_coordinator(group_id));
        }
        Ok(())
    }

    /// The open store of an offsets partition, opened (and replayed) on first use.
    async fn store(&self, partition: u32) -> Result<Rc<OffsetStore>, Status> {
        if let Some(store) = self.stores.borrow().get(&partition) {
            return Ok(store.clone());
        }
        if self.clustered() {
            return Err(Status::error(
                ErrorCode::NotCoordinator,
                format!("offsets partition {partition} is not led here (any more)"),
            ));
        }
        let _turn = self.opening.acquire_permit(1).await;
        if let Some(store) = self.stores.borrow().get(&partition) {
            return Ok(store.clone());
        }
        let stopping = || Status::error(ErrorCode::ShuttingDown, "the broker is shutting down");
        if self.closed.get() {
            return Err(stopping());
        }
        // `Log::open` creates `<data>/groups/offsets-<n>` and any missing directory above
        // it, making each one's entry durable in its parent.
        let dir = offsets_dir(&self.config.data_dir, partition);
        let (store, loaded) = OffsetStore::open(dir.clone()).await.map_err(|error| {
            Status::error(
                ErrorCode::StorageError,
                format!("cannot open the offsets log {}: {error}", dir.display()),
            )
        })?;
        if self.closed.get() {
            store.close().await;
            return Err(stopping());
        }
        let stale = {
            let metadata = self.metadata.borrow();
            self.adopt(loaded, |topic, partition| {
                metadata
                    .topic(topic)
                    .is_some_and(|record| partition < record.partitions)
            })
        };
        let store = Rc::new(store);
        if !stale.is_empty() {
            drop_stale(&store, partition, &stale).await;
        }
        self.stores.borrow_mut().insert(partition, store.clone());
        Ok(store)
    }

    /// Closes the offsets logs; joins and held heartbeats end with `ShuttingDown`.
    pub async fn close(&self) {
        self.closed.set(true);
        let _turn = self.opening.acquire_permit(1).await;
        for group in self.groups.borrow_mut().values_mut() {
            for member in group.members.values_mut() {
                member.join = None;
            }
            group.changed.notify_all();
        }
        let stores: Vec<Rc<OffsetStore>> = self
            .stores
            .borrow_mut()
            .drain()
            .map(|(_, store)| store)
            .collect();
        for store in stores {
            store.close().await;
        }
    }

    /// Serves one group call of either door (other than ListGroups, which spans the
    /// shards).
    pub async fn call(self: &Rc<Self>, call: GroupCall, stopping: &Latch) -> GroupAnswer {
        let checked = check_name("group id", call.group_id(), false)
            .and_then(|()| self.check_coordinating(call.group_id()));
        if let Err(status) = checked {
            return match call {
                GroupCall::Native(_) => GroupAnswer::Native(Response::Failed(status)),
                GroupCall::KafkaJoin { .. } => GroupAnswer::Joined(Err(status)),
                GroupCall::KafkaSync { .. } => GroupAnswer::Synced(Err(status)),
                GroupCall::KafkaDescribe { .. } => GroupAnswer::Described(Err(status)),
            };
        }
        match call {
            GroupCall::Native(request) => GroupAnswer::Native(self.handle(request, stopping).await),
            GroupCall::KafkaJoin {
                request,
                protocol_type,
                protocols,
            } => GroupAnswer::Joined(
                self.join(request, Some((protocol_type, protocols)), stopping)
                    .await,
            ),
            GroupCall::KafkaSync {
                request,
                assignments,
            } => GroupAnswer::Synced(
                self.sync(request, Some(assignments), stopping)
                    .await
                    .map(|(_, bytes)| bytes.unwrap_or_default()),
            ),
            GroupCall::KafkaDescribe { group_id } => {
                GroupAnswer::Described(self.describe_kafka(&group_id))
            }
        }
    }

    /// Serves one native group request (other than ListGroups, which spans the shards).
    pub async fn handle(self: &Rc<Self>, request: Request, stopping: &Latch) -> Response {
        let group_id = request
            .group_id()
            .expect("only group requests reach the coordinator");
        let checked = check_name("group id", group_id, false)
            .and_then(|()| self.check_coordinating(group_id));
        if let Err(status) = checked {
            return Response::Failed(status);
        }
        // No store is opened here: every offsets log on disk was opened at start, and a
        // commit or deletion opens (creating) its own, so a refused or read-only request
        // creates nothing.
        let outcome = match request {
            Request::JoinGroup(request) => self
                .join(request, None, stopping)
                .await
                .map(|joined| Response::JoinGroup(joined.response)),
            Request::SyncGroup(request) => self
                .sync(request, None, stopping)
                .await
                .map(|(assignment, _)| Response::SyncGroup(assignment)),
            Request::Heartbeat(request) => self.heartbeat(request, stopping).await,
            Request::LeaveGroup(request) => self.leave(request),
            Request::OffsetCommit(request) => self.commit(request).await,
            Request::OffsetFetch(request) => Ok(self.fetch_offsets(request)),
            Request::DescribeGroup(request) => self.describe(request),
            Request::DeleteGroup(request) => self.delete(request).await,
            _ => unreachable!("checked above"),
        };
        outcome.unwrap_or_else(Response::Failed)
    }

    // ---- membership ---------------------------------------------------------------------

    /// A member joins (or rejoins) and waits for the rebalance to complete. `kafka` is a
    /// Kafka member's protocol type and protocols.
    async fn join(
        self: &Rc<Self>,
        request: JoinGroupRequest,
        kafka: Option<(String, Vec<(String, Bytes)>)>,
        stopping: &Latch,
    ) -> Result<Joined, Status> {
        check_name("member id", &request.member_id, true)?;
        check_name("client id", &request.client_id, true)?;
        let (min, max) = (
            self.config.session_timeout_min_ms,
            self.config.session_timeout_max_ms,
        );
        if !(min..=max).contains(&request.session_timeout_ms) {
            return Err(Status::error(
                ErrorCode::InvalidRequest,
                format!(
                    "session timeout {} ms is outside the broker's range of {min} to {max} ms",
                    request.session_timeout_ms
                ),
            ));
        }
        let topics_min = usize::from(kafka.is_none());
        if request.topics.len() < topics_min || request.topics.len() > GROUP_TOPICS_MAX {
            return Err(Status::error(
                ErrorCode::InvalidRequest,
                format!(
                    "a member subscribes to 1 to {GROUP_TOPICS_MAX} topics, not {}",
                    request.topics.len()
                ),
            ));
        }
        for topic in &request.topics {
            check_name("topic name", topic, false)?;
        }
        let assignors: Vec<Strategy> = request
            .assignors
            .iter()
            .filter_map(|name| Strategy::parse(name))
            .collect();
        let (protocol_type, protocols, kafka) = match kafka {
            Some((protocol_type, protocols)) => {
                if protocols.is_empty() {
                    return Err(Status::error(
                        ErrorCode::InconsistentGroupProtocol,
                        "a Kafka member must name at least one protocol",
                    ));
                }
                let names: Vec<String> = protocols.iter().map(|(name, _)| name.clone()).collect();
                (protocol_type, names, Some(protocols))
            }
            None => {
                let names = assignors.iter().map(|strategy| strategy.name().to_string());
                (CONSUMER_PROTOCOL_TYPE.to_string(), names.collect(), None)
            }
        };
        if assignors.is_empty() && kafka.is_none() {
            return Err(Status::error(
                ErrorCode::InconsistentGroupProtocol,
                format!(
                    "none of the assignors {:?} is known (this broker has {})",
                    request.assignors,
                    Strategy::ALL.map(Strategy::name).join(", ")
                ),
            ));
        }
        let answer = {
            let mut groups = self.groups.borrow_mut();
            let known = groups
                .get(&request.group_id)
                .is_some_and(|group| group.members.contains_key(&request.member_id));
            if !request.member_id.is_empty() && !known {
                // Checked before the group is looked up for writing, so that a refused
                // join leaves no trace.
                return Err(Status::error(
                    ErrorCode::UnknownMemberId,
                    format!(
                        "{} is not a member of group {}: join with an empty member id",
                        request.member_id, request.group_id
                    ),
                ));
            }
            let group = groups
                .entry(request.group_id.clone())
                .or_insert_with(Group::new);
            if !known && group.members.len() >= GROUP_MEMBERS_MAX {
                return Err(Status::error(
                    ErrorCode::ResourceLimit,
                    format!(
                        "group {} has the most members allowed ({GROUP_MEMBERS_MAX})",
                        request.group_id
                    ),
                ));
            }
            let others = || {
                group
                    .members
                    .iter()
                    .filter(|(id, _)| **id != request.member_id)
                    .map(|(_, member)| member)
            };
            if others().next().is_some() && group.protocol_type != protocol_type {
                return Err(Status::error(
                    ErrorCode::InconsistentGroupProtocol,
                    format!(
                        "group {} has members of protocol type {:?}, not {protocol_type:?}",
                        request.group_id, group.protocol_type
                    ),
                ));
            }
            let common = protocols
                .iter()
                .any(|name| others().all(|member| member.protocols.contains(name)));
            if !common {
                let native = others().any(|member| member.kafka.is_none());
                return Err(Status::error(
                    ErrorCode::InconsistentGroupProtocol,
                    format!(
                        "group {} uses assignors that {:?} does not include{}",
                        request.group_id,
                        protocols,
                        if native {
                            " (its Spate members accept range, roundrobin and sticky)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            group.protocol_type = protocol_type;
            let member_id = if known {
                request.member_id.clone()
            } else {
                self.new_member_id(&request.client_id)
            };
            let (reply, answer) = oneshot::channel();
            let now = Instant::now();
            let previous = group.members.remove(&member_id);
            let member = Member {
                client_id: request.client_id.clone(),
                session_timeout: Duration::from_millis(request.session_timeout_ms.into()),
                rebalance_timeout: Duration::from_millis(
                    request
                        .rebalance_timeout_ms
                        .max(request.session_timeout_ms)
                        .min(GROUP_REBALANCE_TIMEOUT_MAX_MS)
                        .into(),
                ),
                topics: request.topics.clone(),
                protocols,
                kafka,
                assigned_bytes: None,
                last_seen: now,
                held: previous.as_ref().map_or(0, |member| member.held),
                join: Some(reply),
                assignment: previous.map(|member| member.assignment).unwrap_or_default(),
                synced: false,
            };
            group.members.insert(member_id, member);
            if group.state != State::PreparingRebalance {
                start_rebalance(group, now);
            }
            self.try_complete_join(&request.group_id, group);
            answer
        };
        let answer = futures_lite::future::or(async { answer.await.ok() }, async {
            stopping.wait().await;
            None
        })
        .await;
        match answer {
            Some(Ok(joined)) => Ok(joined),
            Some(Err(status)) => Err(status),
            None if stopping.is_set() || self.closed.get() => Err(Status::error(
                ErrorCode::ShuttingDown,
                "the broker is shutting down",
            )),
            None => Err(Status::error(
                ErrorCode::RebalanceInProgress,
                "this join was replaced by a newer join of the same member; join again",
            )),
        }
    }

    fn new_member_id(&self, client_id: &str) -> String {
        let count = self.next_member.get();
        self.next_member.set(count + 1);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        let prefix = if client_id.is_empty() {
            "member"
        } else {
            client_id
        };
        let mut prefix = prefix.to_string();
        // Keep the id under the name limit whatever the client id.
        while prefix.len() > GROUP_NAME_BYTES_MAX - 40 {
            prefix.pop();
        }
        format!("{prefix}-{}-{count}-{nanos:x}", self.shard)
    }

    /// Completes the join phase once every member has joined, or `force`d at the
    /// rebalance deadline: members that did not join are removed, the assignment is
    /// computed, the generation bumped, and every join answered.
    fn try_complete_join(&self, group_id: &str, group: &mut Group) {
        self.complete_join(group_id, group, false)
    }

    fn complete_join(&self, group_id: &str, group: &mut Group, force: bool) {
        if group.state != State::PreparingRebalance {
            return;
        }
        let all_joined = group.members.values().all(|member| member.join.is_some());
        if !all_joined && !force {
            return;
        }
        let before = group.members.len();
        group.members.retain(|_, member| member.join.is_some());
        if group.members.len() < before {
            tracing::info!(
                group = group_id,
                removed = before - group.members.len(),
                "members that did not rejoin in time were removed"
            );
        }
        group.rebalance_deadline = None;
        group.generation += 1;
        if group.members.is_empty() {
            group.state = State::Empty;
            group.strategy = None;
            group.protocol.clear();
            group.protocol_type.clear();
            group.client_assigned = false;
            group.leader.clear();
            group.assigned_for.clear();
            group.changed.notify_all();
            return;
        }
        let client_assigned = group.members.values().any(|member| member.kafka.is_some());
        // A Kafka leader assigns when Kafka members are present: the leader must be one.
        let leader_fits = |member: &Member| !client_assigned || member.kafka.is_some();
        if !group.members.get(&group.leader).is_some_and(leader_fits) {
            group.leader = group
                .members
                .iter()
                .find(|(_, member)| leader_fits(member))
                .map(|(id, _)| id.clone())
                .expect("not empty, and a Kafka member when one is needed");
        }
        let protocol = choose_protocol(group);
        let partitions = self.subscribed_partitions(group);
        group.assigned_for = partitions.clone();
        group.state = State::CompletingRebalance;
        group.protocol = protocol.clone();
        group.client_assigned = client_assigned;
        let mut assignment = if client_assigned {
            group.strategy = Strategy::parse(&protocol);
            group.assignments_ready = false;
            group.assignment_known = true;
            Assignment::new()
        } else {
            let strategy =
                Strategy::parse(&protocol).expect("native members name known strategies");
            let previous: Assignment = group
                .members
                .iter()
                .map(|(id, member)| (id.clone(), member.assignment.clone()))
                .collect();
            let subscriptions: Vec<Subscription<'_>> = group
                .members
                .iter()
                .map(|(id, member)| Subscription {
                    member_id: id,
                    topics: &member.topics,
                })
                .collect();
            group.strategy = Some(strategy);
            group.assignments_ready = true;
            group.assignment_known = true;
            assignor::assign(strategy, &subscriptions, &partitions, &previous)
        };
        // The leader of a Kafka-assigned generation learns every member's subscription.
        let subscriptions: Vec<(String, MemberMetadata)> = if client_assigned {
            group
                .members
                .iter()
                .map(|(id, member)| (id.clone(), member_metadata(member, &protocol)))
                .collect()
        } else {
            Vec::new()
        };
        let now = Instant::now();
        let members = group.members.len() as u32;
        for (id, member) in group.members.iter_mut() {
            member.assignment = assignment.remove(id).unwrap_or_default();
            member.assigned_bytes = None;
            member.synced = false;
            member.last_seen = now;
            if let Some(reply) = member.join.take() {
                let is_leader = *id == group.leader;
                let _ = reply.send(Ok(Joined {
                    response: JoinGroupResponse {
                        generation: group.generation,
                        member_id: id.clone(),
                        leader_id: group.leader.clone(),
                        assignor: protocol.clone(),
                        members,
                    },
                    members: if is_leader {
                        subscriptions.clone()
                    } else {
                        Vec::new()
                    },
                }));
            }
        }
        tracing::debug!(
            group = group_id,
            generation = group.generation,
            members,
            protocol,
            client_assigned,
            "rebalance complete"
        );
        group.changed.notify_all();
    }

    /// The partition count of every existing topic the group's members subscribe to.
    fn subscribed_partitions(&self, group: &Group) -> BTreeMap<String, u32> {
        let metadata = self.metadata.borrow();
        group
            .members
            .values()
            .flat_map(|member| member.topics.iter())
            .filter_map(|topic| {
                metadata
                    .topic(topic)
                    .map(|record| (topic.clone(), record.partitions))
            })
            .collect()
    }

    /// Checks a member and its generation: the common start of sync, heartbeat and a
    /// member's commit.
    fn check_member(
        group_id: &str,
        group: Option<&Group>,
        member_id: &str,
        generation: i32,
    ) -> Result<(), Status> {
        let Some(group) = group.filter(|group| group.members.contains_key(member_id)) else {
            return Err(Status::error(
                ErrorCode::UnknownMemberId,
                format!("{member_id} is not a member of group {group_id}: join again"),
            ));
        };
        if generation != group.generation {
            return Err(Status::error(
                ErrorCode::IllegalGeneration,
                format!(
                    "generation {generation} of group {group_id} is over; it is at {}: join again",
                    group.generation
                ),
            ));
        }
        Ok(())
    }

    /// A member collects its assignment. In a generation a Kafka leader assigns, the
    /// leader's sync brings every member's assignment and the others wait for it.
    async fn sync(
        &self,
        request: SyncGroupRequest,
        assignments: Option<Vec<ClientAssignment>>,
        stopping: &Latch,
    ) -> Result<(Vec<TopicPartitions>, Option<Bytes>), Status> {
        let (round, changed) = {
            let mut groups = self.groups.borrow_mut();
            let group = groups.get_mut(&request.group_id);
            if let Some(group) = &group
                && group.state == State::PreparingRebalance
                && group.members.contains_key(&request.member_id)
            {
                return Err(rebalancing(&request.group_id));
            }
            Self::check_member(
                &request.group_id,
                group.as_deref(),
                &request.member_id,
                request.generation,
            )?;
            let group = group.expect("checked");
            group
                .members
                .get_mut(&request.member_id)
                .expect("checked")
                .last_seen = Instant::now();
            if group.client_assigned
                && !group.assignments_ready
                && request.member_id == group.leader
                && let Some(assignments) = assignments
            {
                let mut by_member: HashMap<String, ClientAssignment> = assignments
                    .into_iter()
                    .map(|assignment| (assignment.member_id.clone(), assignment))
                    .collect();
                let mut known = true;
                for (id, member) in group.members.iter_mut() {
                    let given = by_member.remove(id);
                    known &= given
                        .as_ref()
                        .is_none_or(|given| given.partitions.is_some());
                    member.assignment = given
                        .as_ref()
                        .and_then(|given| given.partitions.clone())
                        .unwrap_or_default();
                    member.assigned_bytes =
                        Some(given.map(|given| given.bytes).unwrap_or_default());
                }
                group.assignment_known = known;
                group.assignments_ready = true;
                group.changed.notify_all();
            }
            (group.round, group.changed.clone())
        };
        // Wait for the leader's assignment (at once when it is known).
        let ready = || {
            let groups = self.groups.borrow();
            let group = groups.get(&request.group_id);
            let current = group.is_some_and(|group| {
                group.round == round
                    && group.generation == request.generation
                    && group.members.contains_key(&request.member_id)
            });
            !current || group.is_some_and(|group| group.assignments_ready) || self.closed.get()
        };
        futures_lite::future::or(changed.wait_until(ready), stopping.wait()).await;
        if self.closed.get() || stopping.is_set() {
            return Err(Status::error(
                ErrorCode::ShuttingDown,
                "the broker is shutting down",
            ));
        }
        let mut groups = self.groups.borrow_mut();
        let group = groups.get_mut(&request.group_id);
        if let Some(group) = &group
            && group.round != round
            && group.members.contains_key(&request.member_id)
        {
            return Err(rebalancing(&request.group_id));
        }
        Self::check_member(
            &request.group_id,
            group.as_deref(),
            &request.member_id,
            request.generation,
        )?;
        let group = group.expect("checked");
        let member = group.members.get_mut(&request.member_id).expect("checked");
        member.synced = true;
        member.last_seen = Instant::now();
        let answer = (
            to_topic_partitions(&member.assignment),
            member.assigned_bytes.clone(),
        );
        if group.members.values().all(|member| member.synced) {
            group.state = State::Stable;
        }
        Ok(answer)
    }

    async fn heartbeat(
        &self,
        request: HeartbeatRequest,
        stopping: &Latch,
    ) -> Result<Response, Status> {
        let (round, changed, hold) = {
            let mut groups = self.groups.borrow_mut();
            if let Some(group) = groups.get_mut(&request.group_id)
                && group.state == State::PreparingRebalance
                && let Some(member) = group.members.get_mut(&request.member_id)
            {
                // Still alive: it will join; until then its session counts from now.
                member.last_seen = Instant::now();
                return Err(rebalancing(&request.group_id));
            }
            let group = groups.get_mut(&request.group_id);
            Self::check_member(
                &request.group_id,
                group.as_deref(),
                &request.member_id,
                request.generation,
            )?;
            let group = group.expect("checked");
            let member = group.members.get_mut(&request.member_id).expect("checked");
            member.last_seen = Instant::now();
            // Held at most a third of the session, so that a member whose connection
            // died is noticed soon after its session ends.
            let hold =
                Duration::from_millis(request.max_wait_ms.into()).min(member.session_timeout / 3);
            if hold.is_zero() {
                return Ok(Response::Heartbeat);
            }
            member.held += 1;
            (group.round, group.changed.clone(), hold)
        };
        let still = || {
            let groups = self.groups.borrow();
            groups.get(&request.group_id).is_some_and(|group| {
                group.round == round && group.members.contains_key(&request.member_id)
            }) && !self.closed.get()
        };
        futures_lite::future::or(
            changed.wait_until(|| !still()),
            futures_lite::future::or(glommio::timer::sleep(hold), stopping.wait()),
        )
        .await;
        let mut groups = self.groups.borrow_mut();
        let member = groups
            .get_mut(&request.group_id)
            .and_then(|group| group.members.get_mut(&request.member_id));
        match member {
            Some(member) => {
                member.held -= 1;
                member.last_seen = Instant::now();
            }
            None => {
                return Err(Status::error(
                    ErrorCode::UnknownMemberId,
                    format!(
                        "{} was removed from group {}: join again",
                        request.member_id, request.group_id
                    ),
                ));
            }
        }
        let group = groups.get(&request.group_id).expect("member found");
        if group.round != round {
            return Err(rebalancing(&request.group_id));
        }
        if self.closed.get() || stopping.is_set() {
            return Err(Status::error(
                ErrorCode::ShuttingDown,
                "the broker is shutting down",
            ));
        }
        Ok(Response::Heartbeat)
    }

    fn leave(&self, request: LeaveGroupRequest) -> Result<Response, Status> {
        let mut groups = self.groups.borrow_mut();
        let Some(group) = groups
            .get_mut(&request.group_id)
            .filter(|group| group.members.contains_key(&request.member_id))
        else {
            return Err(Status::error(
                ErrorCode::UnknownMemberId,
                format!(
                    "{} is not a member of group {}",
                    request.member_id, request.group_id
                ),
            ));
        };
        group.members.remove(&request.member_id);
        tracing::debug!(
            group = request.group_id,
            member = request.member_id,
            "member left"
        );
        self.members_gone(&request.group_id, group);
        if group.is_dead() {
            groups.remove(&request.group_id);
        }
        Ok(Response::LeaveGroup)
    }

    /// After members were removed: rebalance the rest (or finish the rebalance under way).
    fn members_gone(&self, group_id: &str, group: &mut Group) {
        if group.state != State::PreparingRebalance {
            start_rebalance(group, Instant::now());
        }
        self.try_complete_join(group_id, group);
    }

    /// Expires members whose session ended, gives up on members that did not rejoin by
    /// the rebalance deadline, and rebalances groups whose subscribed topics changed.
    /// Called every `TICK`; topics are compared every `TOPIC_CHECK_TICKS` ticks.
    pub fn tick(&self) {
        let now = Instant::now();
        let ticks = self.ticks.get().wrapping_add(1);
        self.ticks.set(ticks);
        let check_topics = ticks.is_multiple_of(TOPIC_CHECK_TICKS);
        let mut groups = self.groups.borrow_mut();
        let mut dead = Vec::new();
        for (group_id, group) in groups.iter_mut() {
            let before = group.members.len();
            group.members.retain(|member_id, member| {
                let expired = member.join.is_none()
                    && member.held == 0
                    && now.duration_since(member.last_seen) > member.session_timeout;
                if expired {
                    tracing::info!(
                        group = group_id.as_str(),
                        member = member_id.as_str(),
                        session_timeout_ms = member.session_timeout.as_millis() as u64,
                        "member session expired"
                    );
                }
                !expired
            });
            if group.members.len() < before {
                self.members_gone(group_id, group);
            }
            if group.state == State::PreparingRebalance
                && group
                    .rebalance_deadline
                    .is_some_and(|deadline| now >= deadline)
            {
                self.complete_join(group_id, group, true);
            }
            if check_topics && matches!(group.state, State::Stable | State::CompletingRebalance) {
                let current = self.subscribed_partitions(group);
                if current != group.assigned_for {
                    tracing::info!(
                        group = group_id.as_str(),
                        "subscribed topics changed; rebalancing"
                    );
                    start_rebalance(group, now);
                    self.try_complete_join(group_id, group);
                }
            }
            if group.is_dead() {
                dead.push(group_id.clone());
            }
        }
        for group_id in dead {
            groups.remove(&group_id);
        }
    }

    // ---- offsets ------------------------------------------------------------------------

    /// Checks a commit against the group and the topics (synchronously) and appends what
    /// passes. The check runs twice: once before anything is opened, so that a refused
    /// commit creates nothing, and again under the store's turn, which is what makes it
    /// hold: a topic deletion changes the metadata and then waits for the exclusive turn,
    /// so a commit either checked its topic before the deletion and is applied before the
    /// deletion's tombstones are written, or checks after it and finds the topic gone.
    /// The same goes for the membership: a rebalance in between fences the commit.
    async fn commit(self: &Rc<Self>, request: OffsetCommitRequest) -> Result<Response, Status> {
        let partition_of_group = offsets_partition(&request.group_id);
        let (statuses, entries) = self.check_commit(&request)?;
        if entries.is_empty() {
            return Ok(Response::OffsetCommit(statuses));
        }
        let store = self.store(partition_of_group).await?;
        let turn = store.turn().await;
        let (mut statuses, entries) = self.check_commit(&request)?;
        if entries.is_empty() {
            return Ok(Response::OffsetCommit(statuses));
        }
        let written = store.append(&turn, &entries).await;
        // In a cluster the partition may have moved while the commit was replicated: it
        // is in the log the new coordinator replays, and not for this shard to apply.
        let still_here = self
            .stores
            .borrow()
            .get(&partition_of_group)
            .is_some_and(|current| Rc::ptr_eq(current, &store));
        match written {
            Ok(()) if !still_here => return Ok(Response::OffsetCommit(statuses)),
            Ok(()) => {
                let mut groups = self.groups.borrow_mut();
                let group = groups
                    .entry(request.group_id.clone())
                    .or_insert_with(Group::new);
                for entry in entries {
                    if let Entry::Offset {
                        topic,
                        partition,
                        committed,
                        ..
                    } = entry
                    {
                        group.offsets.insert((topic, partition), committed);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, group = request.group_id, "offset commit failed");
                let status = error;
                for topic in &mut statuses {
                    for partition in &mut topic.partitions {
                        if partition.status.is_ok() {
                            partition.status = status.clone();
                        }
                    }
                }
            }
        }
        drop(turn);
        self.maybe_compact(partition_of_group, &store);
        Ok(Response::OffsetCommit(statuses))
    }

    /// The commit's answer per partition, and the entries to write for those that pass;
    /// or the whole commit's refusal (not a member, a stale generation, a rebalance).
    fn check_commit(
        &self,
        request: &OffsetCommitRequest,
    ) -> Result<(Vec<OffsetCommitTopicResponse>, Vec<Entry>), Status> {
        let mut statuses: Vec<OffsetCommitTopicResponse> = Vec::new();
        let mut entries = Vec::new();
        {
            let groups = self.groups.borrow();
            let group = groups.get(&request.group_id);
            let from_member =
                !(request.generation == GENERATION_NONE && request.member_id.is_empty());
            if from_member {
                if let Some(group) = group
                    && group.state == State::PreparingRebalance
                    && group.members.contains_key(&request.member_id)
                    && request.generation != group.generation
                {
                    return Err(rebalancing(&request.group_id));
                }
                Self::check_member(
                    &request.group_id,
                    group,
                    &request.member_id,
                    request.generation,
                )?;
            } else if let Some(group) = group
                && !group.members.is_empty()
            {
                return Err(Status::error(
                    ErrorCode::GroupNotEmpty,
                    format!(
                        "group {} has {} active members: only they commit its offsets; stop them first",
                        request.group_id,
                        group.members.len()
                    ),
                ));
            }
            let metadata = self.metadata.borrow();
            let now_ms = crate::clock::now_ms();
            for topic in &request.topics {
                let record = metadata.topic(&topic.name);
                let mut partitions = Vec::new();
                for partition in &topic.partitions {
                    let status = if record
                        .is_none_or(|record| partition.partition >= record.partitions)
                    {
                        Status::error(
                            ErrorCode::UnknownTopicOrPartition,
                            format!(
                                "no partition {}-{}",
                                crate::protocol::quoted(&topic.name),
                                partition.partition
                            ),
                        )
                    } else if partition.metadata.len() > OFFSET_METADATA_BYTES_MAX {
                        Status::error(
                            ErrorCode::OffsetMetadataTooLarge,
                            format!(
                                "offset metadata of {} bytes; the limit is {OFFSET_METADATA_BYTES_MAX}",
                                partition.metadata.len()
                            ),
                        )
                    } else if partition.offset < 0 {
                        Status::error(
                            ErrorCode::InvalidRequest,
                            format!("offset {} is negative", partition.offset),
                        )
                    } else if from_member
                        && !group.is_some_and(|group| {
                            group.owns(&request.member_id, &topic.name, partition.partition)
                        })
                    {
                        Status::error(
                            ErrorCode::NotAssigned,
                            format!(
                                "{}-{} is not assigned to {} in generation {}",
                                topic.name,
                                partition.partition,
                                request.member_id,
                                request.generation
                            ),
                        )
                    } else {
                        entries.push(Entry::Offset {
                            group: request.group_id.clone(),
                            topic: topic.name.clone(),
                            partition: partition.partition,
                            committed: Committed {
                                offset: partition.offset,
                                metadata: partition.metadata.clone(),
                                commit_ms: now_ms,
                            },
                        });
                        Status::ok()
                    };
                    partitions.push(PartitionStatus {
                        partition: partition.partition,
                        status,
                    });
                }
                statuses.push(OffsetCommitTopicResponse {
                    name: topic.name.clone(),
                    partitions,
                });
            }
        }
        Ok((statuses, entries))
    }

    /// Starts compacting an offsets log that has grown enough (one at a time per log).
    fn maybe_compact(self: &Rc<Self>, partition: u32, store: &Rc<OffsetStore>) {
        if !store.wants_compaction(self.config.offsets_compact_bytes)
            || !self.compacting.borrow_mut().insert(partition)
        {
            return;
        }
        let coordinator = self.clone();
        let store = store.clone();
        glommio::spawn_local(async move {
            let live = || coordinator.live_entries(partition);
            if let Err(error) = store.compact(live).await {
                tracing::warn!(%error, partition, "compacting an offsets log failed");
            }
            coordinator.compacting.borrow_mut().remove(&partition);
        })
        .detach();
    }

    /// Every committed offset of the groups this shard coordinates (for `/metrics`).
    pub fn committed_offsets(&self) -> Vec<crate::metrics::GroupSample> {
        let groups = self.groups.borrow();
        let mut samples = Vec::new();
        for (group_id, group) in groups.iter() {
            for ((topic, partition), committed) in &group.offsets {
                samples.push(crate::metrics::GroupSample {
                    group: group_id.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    committed_offset: committed.offset,
                });
            }
        }
        samples
    }

    /// Every committed offset of the groups in offsets partition `partition`.
    fn live_entries(&self, partition: u32) -> Vec<Entry> {
        let groups = self.groups.borrow();
        let mut entries = Vec::new();
        for (group_id, group) in groups.iter() {
            if offsets_partition(group_id) != partition {
                continue;
            }
            for ((topic, partition), committed) in &group.offsets {
                entries.push(Entry::Offset {
                    group: group_id.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    committed: committed.clone(),
                });
            }
        }
        entries
    }

    fn fetch_offsets(&self, request: OffsetFetchRequest) -> Response {
        let groups = self.groups.borrow();
        let offsets = groups.get(&request.group_id).map(|group| &group.offsets);
        let answer = |topic: &str, partition: u32| {
            let committed =
                offsets.and_then(|offsets| offsets.get(&(topic.to_string(), partition)));
            OffsetFetchPartition {
                partition,
                status: Status::ok(),
                offset: committed.map_or(-1, |committed| committed.offset),
                metadata: committed.map(|c| c.metadata.clone()).unwrap_or_default(),
            }
        };
        let topics = if request.topics.is_empty() {
            let mut by_topic: BTreeMap<&str, Vec<OffsetFetchPartition>> = BTreeMap::new();
            for (topic, partition) in offsets.into_iter().flat_map(|offsets| offsets.keys()) {
                by_topic
                    .entry(topic)
                    .or_default()
                    .push(answer(topic, *partition));
            }
            by_topic
                .into_iter()
                .map(|(name, partitions)| OffsetFetchTopic {
                    name: name.to_string(),
                    partitions,
                })
                .collect()
        } else {
            request
                .topics
                .iter()
                .map(|topic| OffsetFetchTopic {
                    name: topic.name.clone(),
                    partitions: topic
                        .partitions
                        .iter()
                        .map(|&partition| answer(&topic.name, partition))
                        .collect(),
                })
                .collect()
        };
        Response::OffsetFetch(topics)
    }

    /// Forgets the committed offsets of deleted topics, durably, so that a topic created
    /// later under the same name is not read from the old topic's offsets. Called on
    /// every shard before a deletion is answered.
    ///
    /// The shard's metadata no longer has the topics when this runs. Each offsets log is
    /// handled under its exclusive turn: every commit that checked its topic before the
    /// deletion has applied its offset by then (and gets a tombstone with the rest), and
    /// every commit after it checks again under its own turn and finds the topic gone
    /// (see `commit`). A log opened meanwhile by a commit has no offsets of the topics.
    pub async fn topics_deleted(&self, topics: &[String]) {
        let topics: std::collections::HashSet<&str> = topics.iter().map(String::as_str).collect();
        let stores: Vec<(u32, Rc<OffsetStore>)> = self
            .stores
            .borrow()
            .iter()
            .map(|(partition, store)| (*partition, store.clone()))
            .collect();
        for (partition, store) in stores {
            let turn = store.exclusive_turn().await;
            let mut entries = Vec::new();
            {
                let mut groups = self.groups.borrow_mut();
                let in_store = |group_id: &String| offsets_partition(group_id) == partition;
                for (group_id, group) in groups.iter_mut().filter(|(id, _)| in_store(id)) {
                    let gone: Vec<(String, u32)> = group
                        .offsets
                        .keys()
                        .filter(|(topic, _)| topics.contains(topic.as_str()))
                        .cloned()
                        .collect();
                    for key in gone {
                        group.offsets.remove(&key);
                        entries.push(Entry::OffsetDeleted {
                            group: group_id.clone(),
                            topic: key.0,
                            partition: key.1,
                        });
                    }
                }
                groups.retain(|_, group| !group.is_dead());
            }
            if let Err(error) = store.append(&turn, &entries).await {
                tracing::warn!(%error, partition, "recording the offsets of deleted topics failed");
            }
        }
    }

    // ---- administration -----------------------------------------------------------------

    /// The groups this shard coordinates.
    pub fn list(&self) -> Vec<GroupListing> {
        let groups = self.groups.borrow();
        let mut listings: Vec<GroupListing> = groups
            .iter()
            .filter(|(_, group)| !group.is_dead())
            .map(|(id, group)| GroupListing {
                group_id: id.clone(),
                state: group.state.name().to_string(),
                members: group.members.len() as u32,
            })
            .collect();
        listings.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        listings
    }

    fn describe(&self, request: GroupIdRequest) -> Result<Response, Status> {
        let groups = self.groups.borrow();
        let group = groups
            .get(&request.group_id)
            .filter(|group| !group.is_dead())
            .ok_or_else(|| unknown_group(&request.group_id))?;
        Ok(Response::DescribeGroup(GroupDescription {
            group_id: request.group_id.clone(),
            state: group.state.name().to_string(),
            generation: group.generation,
            assignor: group.protocol.clone(),
            leader_id: group.leader.clone(),
            members: group
                .members
                .iter()
                .map(|(id, member)| GroupMemberDescription {
                    member_id: id.clone(),
                    client_id: member.client_id.clone(),
                    session_timeout_ms: member.session_timeout.as_millis() as u32,
                    topics: member.topics.clone(),
                    assignment: to_topic_partitions(&member.assignment),
                })
                .collect(),
        }))
    }

    /// A group as Kafka's DescribeGroups shows it. A group that has only committed
    /// offsets is described as `Empty` with no members, as Kafka does.
    fn describe_kafka(&self, group_id: &str) -> Result<KafkaGroup, Status> {
        let groups = self.groups.borrow();
        let group = groups
            .get(group_id)
            .filter(|group| !group.is_dead())
            .ok_or_else(|| unknown_group(group_id))?;
        Ok(KafkaGroup {
            state: group.state.name(),
            protocol_type: group.protocol_type.clone(),
            protocol: group.protocol.clone(),
            members: group
                .members
                .iter()
                .map(|(id, member)| KafkaGroupMember {
                    member_id: id.clone(),
                    client_id: member.client_id.clone(),
                    metadata: member_metadata(member, &group.protocol),
                    assignment: match &member.assigned_bytes {
                        Some(bytes) => Ok(bytes.clone()),
                        None => Err(to_topic_partitions(&member.assignment)),
                    },
                })
                .collect(),
        })
    }

    async fn delete(&self, request: GroupIdRequest) -> Result<Response, Status> {
        {
            let groups = self.groups.borrow();
            let group = groups
                .get(&request.group_id)
                .filter(|group| !group.is_dead())
                .ok_or_else(|| unknown_group(&request.group_id))?;
            if !group.members.is_empty() {
                return Err(Status::error(
                    ErrorCode::GroupNotEmpty,
                    format!(
                        "group {} has {} active members; stop them first",
                        request.group_id,
                        group.members.len()
                    ),
                ));
            }
        }
        let store = self.store(offsets_partition(&request.group_id)).await?;
        // Commits admitted before apply first; the deletion's record follows theirs.
        let turn = store.exclusive_turn().await;
        let entry = Entry::GroupDeleted {
            group: request.group_id.clone(),
        };
        store.append(&turn, &[entry]).await?;
        let mut groups = self.groups.borrow_mut();
        // A member may have joined while the deletion was written: it keeps the group,
        // which now has no offsets.
        if let Some(group) = groups.get_mut(&request.group_id) {
            group.offsets.clear();
            if group.is_dead() {
                groups.remove(&request.group_id);
            }
        }
        Ok(Response::DeleteGroup)
    }
}

/// The protocol of a generation, chosen as Kafka chooses it: among the protocols every
/// member accepts, the one most members prefer most (ties: the leader's preference).
fn choose_protocol(group: &Group) -> String {
    let shared = |name: &String| {
        group
            .members
            .values()
            .all(|member| member.protocols.contains(name))
    };
    let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
    for member in group.members.values() {
        if let Some(name) = member.protocols.iter().find(|name| shared(name)) {
            *votes.entry(name.as_str()).or_default() += 1;
        }
    }
    let leader = &group.members[&group.leader];
    let most = votes.values().copied().max().unwrap_or(0);
    leader
        .protocols
        .iter()
        .find(|name| shared(name) && votes.get(name.as_str()) == Some(&most))
        .or_else(|| leader.protocols.iter().find(|name| shared(name)))
        .expect("joins are refused unless every member shares a protocol")
        .clone()
}

/// A member's subscription under `protocol`, as its group's leader sees it.
fn member_metadata(member: &Member, protocol: &str) -> MemberMetadata {
    match &member.kafka {
        Some(protocols) => MemberMetadata::Kafka(
            protocols
                .iter()
                .find(|(name, _)| name == protocol)
                .map(|(_, metadata)| metadata.clone())
                .unwrap_or_default(),
        ),
        None => MemberMetadata::Native {
            topics: member.topics.clone(),
        },
    }
}

fn start_rebalance(group: &mut Group, now: Instant) {
    group.state = State::PreparingRebalance;
    group.round += 1;
    let timeout = group
        .members
        .values()
        .map(|member| member.rebalance_timeout)
        .max()
        .unwrap_or_default();
    group.rebalance_deadline = Some(now + timeout);
    group.changed.notify_all();
}

fn rebalancing(group_id: &str) -> Status {
    Status::error(
        ErrorCode::RebalanceInProgress,
        format!("group {group_id} is rebalancing: join again"),
    )
}

fn unknown_group(group_id: &str) -> Status {
    Status::error(
        ErrorCode::UnknownGroup,
        format!("no group {group_id} (it has no members and no committed offsets)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{NewTopic, OffsetCommitPartition, OffsetCommitTopic};

    fn commit(offset: i64) -> Request {
        Request::OffsetCommit(OffsetCommitRequest {
            group_id: "g".into(),
            generation: GENERATION_NONE,
            member_id: String::new(),
            topics: vec![OffsetCommitTopic {
                name: "t".into(),
                partitions: vec![OffsetCommitPartition {
                    partition: 0,
                    offset,
                    metadata: String::new(),
                }],
            }],
        })
    }

    /// The group's committed offset of t-0, as OffsetFetch answers it.
    fn committed(coordinator: &Coordinator) -> i64 {
        let Response::OffsetFetch(topics) = coordinator.fetch_offsets(OffsetFetchRequest {
            group_id: "g".into(),
            topics: vec![TopicPartitions {
                name: "t".into(),
                partitions: vec![0],
            }],
        }) else {
            panic!("offsets")
        };
        topics[0].partitions[0].offset
    }

    fn coordinator(
        dir: &std::path::Path,
        metadata: Rc<RefCell<ClusterMetadata>>,
    ) -> Rc<Coordinator> {
        let config = GroupConfig {
            data_dir: dir.to_path_buf(),
            session_timeout_min_ms: 1,
            session_timeout_max_ms: 100_000,
            offsets_compact_bytes: 1 << 30,
        };
        Rc::new(Coordinator::new(config, 0, 1, metadata))
    }

    #[test]
    fn a_commit_in_flight_when_its_topic_is_deleted_leaves_no_offset_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move {
                let topic = NewTopic {
                    name: "t".into(),
                    partitions: 1,
                    configs: Vec::new(),
                    replication_factor: 1,
                };
                let mut with_topic = ClusterMetadata::default();
                with_topic.create_topic(&topic).unwrap();
                let metadata = Rc::new(RefCell::new(with_topic.clone()));
                let coordinator = coordinator(&path, metadata.clone());
                let stopping = Rc::new(Latch::default());
                crate::storage::faults::record_directory_syncs();
                coordinator.handle(commit(5), &stopping).await;
                assert_eq!(committed(&coordinator), 5);
                // The first commit created <data>/groups/offsets-<n>: both new entries
                // were made durable in their parents.
                let synced = crate::storage::faults::take_directory_syncs();
                let groups = path.join("groups");
                assert!(
                    synced.contains(&path) && synced.contains(&groups),
                    "{synced:?}"
                );

                // A second commit is checked and on its way to the disk when the topic is
                // deleted (the shard applies the new metadata, then tells the coordinator).
                let mut in_flight = Box::pin(coordinator.handle(commit(7), &stopping));
                assert!(
                    futures_lite::future::poll_once(&mut in_flight)
                        .await
                        .is_none(),
                    "the commit waits for its append to be durable"
                );
                let mut without_topic = with_topic.clone();
                without_topic.delete_topic("t").unwrap();
                *metadata.borrow_mut() = without_topic.clone();
                // The deletion waits for the commit to apply (it holds a turn), so both go
                // on together.
                let deleted = ["t".to_string()];
                futures_lite::future::zip(in_flight, coordinator.topics_deleted(&deleted)).await;
                assert_eq!(
                    committed(&coordinator),
                    -1,
                    "the deleted topic's offsets are gone"
                );

                // The topic is created again: its group starts from nothing, in memory and
                // after the offsets log is replayed.
                *metadata.borrow_mut() = with_topic.clone();
                assert_eq!(committed(&coordinator), -1);
                coordinator.close().await;
                let reopened = coordinator_for_replay(&path, with_topic.clone()).await;
                assert_eq!(
                    committed(&reopened),
                    -1,
                    "nothing stale comes back on replay"
                );

                // Offsets whose deletion never reached the log (a crash between the saved
                // deletion and its tombstones) are dropped when the log opens without
                // the topic, for good.
                reopened.handle(commit(9), &stopping).await;
                assert_eq!(committed(&reopened), 9);
                reopened.close().await;
                let without = coordinator_for_replay(&path, without_topic).await;
                without.close().await;
                let again = coordinator_for_replay(&path, with_topic).await;
                assert_eq!(
                    committed(&again),
                    -1,
                    "the topic created again starts afresh"
                );
                again.close().await;
            })
            .unwrap()
            .join()
            .unwrap();
    }

    async fn coordinator_for_replay(
        dir: &std::path::Path,
        metadata: ClusterMetadata,
    ) -> Rc<Coordinator> {
        let coordinator = coordinator(dir, Rc::new(RefCell::new(metadata)));
        coordinator.open_existing().await.unwrap();
        coordinator
    }
}
