//! A consumer that reads as a member of a consumer group: it joins the group, reads the
//! partitions the coordinator assigns it from the group's committed offsets (else from
//! the earliest or latest offset, as `auto.offset.reset`), heartbeats on a background
//! thread, commits its position at an interval or on request, hands its partitions back
//! when the group rebalances (revoke and assign callbacks), and leaves on close.
//!
//! Delivery is at least once: a position is committed only after `poll` has returned the
//! records before it, so a member that dies before committing has its last records read
//! again by the member that takes its partitions over.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ClientError, Connection, ShardRouter};
use crate::limits::FETCH_PARTITIONS_MAX;
use crate::protocol::{
    ErrorCode, FetchPartition, FetchTopic, JoinGroupRequest, OFFSET_EARLIEST, OFFSET_LATEST,
    OffsetCommitPartition, OffsetCommitRequest, OffsetCommitTopic, Status, TopicPartitions,
};
use crate::record::{Record, decode_records, split_batches};

/// Where a partition with no committed offset starts (Kafka's `auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
    /// Fail instead.
    None,
}

/// How a group member behaves. `GroupConsumerConfig::new` gives Kafka-like defaults.
#[derive(Debug, Clone)]
pub struct GroupConsumerConfig {
    pub group_id: String,
    pub topics: Vec<String>,
    pub client_id: String,
    /// The coordinator removes a member it has not heard from for this long.
    pub session_timeout: Duration,
    /// How long the coordinator waits for members to rejoin during a rebalance.
    pub rebalance_timeout: Duration,
    /// How long the coordinator may hold each heartbeat (it answers at once when a
    /// rebalance begins, so this does not delay rebalances).
    pub heartbeat_interval: Duration,
    /// Assignment strategies this member accepts, preferred first.
    pub assignors: Vec<String>,
    pub auto_offset_reset: OffsetReset,
    /// Commit the position every this often (inside `poll`), before a rebalance and on
    /// close; `None` commits only on `commit`.
    pub auto_commit_interval: Option<Duration>,
    /// Most bytes read per partition per fetch.
    pub fetch_max_bytes: u32,
    /// Longest a fetch waits for records (a long poll). Short, because the member acts
    /// on a rebalance only between fetches: the whole group's rebalance waits for its
    /// slowest member's long poll.
    pub fetch_max_wait: Duration,
}

impl GroupConsumerConfig {
    pub fn new(group_id: &str, topics: &[&str]) -> GroupConsumerConfig {
        GroupConsumerConfig {
            group_id: group_id.to_string(),
            topics: topics.iter().map(|topic| topic.to_string()).collect(),
            client_id: "spate-consumer".to_string(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(3),
            assignors: vec!["sticky".into(), "range".into(), "roundrobin".into()],
            auto_offset_reset: OffsetReset::Latest,
            auto_commit_interval: Some(Duration::from_secs(5)),
            fetch_max_bytes: 1 << 20,
            fetch_max_wait: Duration::from_millis(25),
        }
    }
}

/// Told when the member's partitions change. `on_revoked` runs before the partitions are
/// handed over (after the automatic commit, if any), `on_assigned` once the new ones are
/// known and positioned.
pub trait RebalanceListener: Send {
    fn on_revoked(&mut self, _partitions: &[(String, u32)]) {}
    fn on_assigned(&mut self, _partitions: &[(String, u32)]) {}
}

/// A record and where it came from.
#[derive(Debug, Clone)]
pub struct GroupRecord {
    pub topic: String,
    pub partition: u32,
    pub record: Record,
}

/// What the heartbeat thread and the consumer share.
#[derive(Default)]
struct Membership {
    member_id: String,
    generation: i32,
    /// Set by the heartbeat thread when the coordinator says to join again.
    rejoin: Option<ErrorCode>,
    stop: bool,
}

struct Shared {
    state: Mutex<Membership>,
    changed: Condvar,
    /// Where group requests may go: the bootstrap address first, then every shard the
    /// topics' metadata named. Any broker of a cluster forwards a group request to its
    /// group's coordinator, so when the bootstrap node goes away another takes its place.
    addresses: Mutex<Vec<String>>,
}

impl Shared {
    /// A connection to the first address that answers, in order.
    fn connect_any(
        &self,
        client_id: &str,
        timeout: Option<Duration>,
    ) -> Result<Connection, ClientError> {
        let addresses = self.addresses.lock().expect("not poisoned").clone();
        let mut last = ClientError::Unexpected;
        for address in addresses {
            let connected = match timeout {
                Some(timeout) => Connection::connect_with_timeout(&address, client_id, timeout),
                None => Connection::connect(&address, client_id),
            };
            match connected {
                Ok(connection) => return Ok(connection),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    fn learn(&self, more: impl IntoIterator<Item = String>) {
        let mut addresses = self.addresses.lock().expect("not poisoned");
        for address in more {
            if !addresses.contains(&address) {
                addresses.push(address);
            }
        }
    }
}

pub struct GroupConsumer {
    config: GroupConsumerConfig,
    coordinator: Connection,
    routers: HashMap<String, ShardRouter>,
    shared: Arc<Shared>,
    heartbeat: Option<JoinHandle<()>>,
    /// The partitions assigned in this generation, with the next offset to read.
    positions: BTreeMap<(String, u32), i64>,
    /// What the group has committed for them, as far as this member knows.
    committed: BTreeMap<(String, u32), i64>,
    listener: Option<Box<dyn RebalanceListener>>,
    last_commit: Instant,
    joined: bool,
}

/// Whether an answer means this member's generation is over and it must join again.
fn asks_to_rejoin(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::RebalanceInProgress | ErrorCode::IllegalGeneration | ErrorCode::UnknownMemberId
    )
}

fn broker_error(code: ErrorCode, message: String) -> ClientError {
    ClientError::Broker(Status::error(code, message))
}

impl GroupConsumer {
    /// Connects to the broker at `address`; the group is joined at the first `poll`.
    pub fn new(address: &str, config: GroupConsumerConfig) -> Result<GroupConsumer, ClientError> {
        let coordinator = Connection::connect(address, &config.client_id)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(Membership::default()),
            changed: Condvar::new(),
            addresses: Mutex::new(vec![address.to_string()]),
        });
        let heartbeat = {
            let shared = shared.clone();
            let config = config.clone();
            std::thread::Builder::new()
                .name("spate-heartbeat".into())
                .spawn(move || heartbeat_loop(&config, &shared))
                .map_err(ClientError::Io)?
        };
        Ok(GroupConsumer {
            config,
            coordinator,
            routers: HashMap::new(),
            shared,
            heartbeat: Some(heartbeat),
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            listener: None,
            last_commit: Instant::now(),
            joined: false,
        })
    }

    pub fn set_listener(&mut self, listener: Box<dyn RebalanceListener>) {
        self.listener = Some(listener);
    }

    /// The partitions this member holds now.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.positions.keys().cloned().collect()
    }

    pub fn member_id(&self) -> String {
        self.shared
            .state
            .lock()
            .expect("not poisoned")
            .member_id
            .clone()
    }

    pub fn generation(&self) -> i32 {
        self.shared.state.lock().expect("not poisoned").generation
    }

    /// The next offset this member will read from a partition it holds.
    pub fn position(&self, topic: &str, partition: u32) -> Option<i64> {
        self.positions.get(&(topic.to_string(), partition)).copied()
    }

    /// Moves the position of a partition this member holds (the next `poll` reads from
    /// `offset`, and the next commit commits it).
    pub fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<(), ClientError> {
        match self.positions.get_mut(&(topic.to_string(), partition)) {
            Some(position) => {
                *position = offset;
                Ok(())
            }
            None => Err(broker_error(
                ErrorCode::NotAssigned,
                format!("{topic}-{partition} is not assigned to this member"),
            )),
        }
    }

    /// Records from the assigned partitions, waiting up to `timeout` for some. Joins the
    /// group first if needed, takes part in any rebalance, and commits on the interval.
    /// A lost connection (an idle one the broker closed, a broker restart) is opened
    /// again and the member rejoins, a few times before the error is returned.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<GroupRecord>, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut failures = 0;
        loop {
            match self.poll_step(deadline) {
                Ok(Some(records)) => return Ok(records),
                Ok(None) => {}
                Err(error) => {
                    failures += 1;
                    let connection_lost = matches!(
                        error,
                        ClientError::Io(_)
                            | ClientError::TimedOut
                            | ClientError::Unexpected
                            | ClientError::Protocol(_)
                            | ClientError::Unreachable { .. }
                    );
                    if !connection_lost || failures > 3 {
                        return Err(error);
                    }
                    std::thread::sleep(Duration::from_millis(100 * failures));
                    self.reconnect()?;
                }
            }
        }
    }

    /// One round of `poll`: `Some` when it has records or the deadline has passed.
    fn poll_step(&mut self, deadline: Instant) -> Result<Option<Vec<GroupRecord>>, ClientError> {
        self.ensure_member()?;
        if let Some(interval) = self.config.auto_commit_interval
            && self.last_commit.elapsed() >= interval
        {
            self.commit_or_rejoin()?;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let records = self.fetch_round(remaining)?;
        Ok((!records.is_empty() || Instant::now() >= deadline).then_some(records))
    }

    /// Opens the connections again and has the member rejoin: its partitions may have
    /// moved while it was cut off, and it reads them from the committed offsets.
    fn reconnect(&mut self) -> Result<(), ClientError> {
        self.routers.clear();
        self.coordinator = self.shared.connect_any(&self.config.client_id, None)?;
        let mut state = self.shared.state.lock().expect("not poisoned");
        state.rejoin.get_or_insert(ErrorCode::RebalanceInProgress);
        Ok(())
    }

    /// Commits the position of every assigned partition that moved since the last commit.
    pub fn commit(&mut self) -> Result<(), ClientError> {
        self.last_commit = Instant::now();
        let (member_id, generation) = {
            let state = self.shared.state.lock().expect("not poisoned");
            (state.member_id.clone(), state.generation)
        };
        if !self.joined {
            return Ok(());
        }
        let mut topics: BTreeMap<&str, Vec<OffsetCommitPartition>> = BTreeMap::new();
        for ((topic, partition), &offset) in &self.positions {
            if self.committed.get(&(topic.clone(), *partition)) != Some(&offset) {
                topics
                    .entry(topic)
                    .or_default()
                    .push(OffsetCommitPartition {
                        partition: *partition,
                        offset,
                        metadata: String::new(),
                    });
            }
        }
        if topics.is_empty() {
            return Ok(());
        }
        let request = OffsetCommitRequest {
            group_id: self.config.group_id.clone(),
            generation,
            member_id,
            topics: topics
                .into_iter()
                .map(|(name, partitions)| OffsetCommitTopic {
                    name: name.to_string(),
                    partitions,
                })
                .collect(),
        };
        let answer = self.coordinator.commit_offsets(request.clone())?;
        for topic in answer {
            for partition in topic.partitions {
                if !partition.status.is_ok() {
                    return Err(ClientError::Broker(partition.status));
                }
            }
        }
        for topic in request.topics {
            for partition in topic.partitions {
                self.committed
                    .insert((topic.name.clone(), partition.partition), partition.offset);
            }
        }
        Ok(())
    }

    /// Commits (if auto-commit is on) and leaves the group, so the others take its
    /// partitions at once instead of after the session timeout.
    pub fn close(mut self) -> Result<(), ClientError> {
        let committed = if self.config.auto_commit_interval.is_some() {
            self.commit()
        } else {
            Ok(())
        };
        let left = self.leave();
        committed.and(left)
    }

    fn leave(&mut self) -> Result<(), ClientError> {
        let member_id = {
            let mut state = self.shared.state.lock().expect("not poisoned");
            state.stop = true;
            self.shared.changed.notify_all();
            std::mem::take(&mut state.member_id)
        };
        let left = if self.joined && !member_id.is_empty() {
            match self
                .coordinator
                .leave_group(&self.config.group_id, &member_id)
            {
                Err(ClientError::Broker(status)) if status.code == ErrorCode::UnknownMemberId => {
                    Ok(())
                }
                other => other,
            }
        } else {
            Ok(())
        };
        self.joined = false;
        if let Some(heartbeat) = self.heartbeat.take() {
            let _ = heartbeat.join();
        }
        left
    }

    /// Commits, treating "the generation is over" as a reason to rejoin, not a failure
    /// (the records since the last commit will then be read again: at least once).
    fn commit_or_rejoin(&mut self) -> Result<(), ClientError> {
        match self.commit() {
            Err(ClientError::Broker(status))
                if asks_to_rejoin(status.code) || status.code == ErrorCode::NotAssigned =>
            {
                let mut state = self.shared.state.lock().expect("not poisoned");
                state.rejoin.get_or_insert(status.code);
                Ok(())
            }
            other => other,
        }
    }

    /// Joins the group if this member is not in it, or the coordinator asked it to join
    /// again: hands over its partitions, joins, syncs and positions the new ones.
    fn ensure_member(&mut self) -> Result<(), ClientError> {
        let rejoin = self.shared.state.lock().expect("not poisoned").rejoin;
        if self.joined && rejoin.is_none() {
            return Ok(());
        }
        if self.joined {
            if self.config.auto_commit_interval.is_some() {
                // During the rebalance the generation is still valid: this commit is
                // what lets the next owner start where this one stopped.
                let _ = self.commit();
            }
            let revoked = self.assignment();
            if let Some(listener) = &mut self.listener {
                listener.on_revoked(&revoked);
            }
            self.positions.clear();
            self.joined = false;
        }
        let assignment = loop {
            let member_id = {
                let mut state = self.shared.state.lock().expect("not poisoned");
                if state.rejoin == Some(ErrorCode::UnknownMemberId) {
                    state.member_id.clear();
                }
                state.member_id.clone()
            };
            let request = JoinGroupRequest {
                group_id: self.config.group_id.clone(),
                member_id,
                client_id: self.config.client_id.clone(),
                session_timeout_ms: self.config.session_timeout.as_millis() as u32,
                rebalance_timeout_ms: self.config.rebalance_timeout.as_millis() as u32,
                topics: self.config.topics.clone(),
                assignors: self.config.assignors.clone(),
            };
            let joined = match self.coordinator.join_group(request) {
                Ok(joined) => joined,
                Err(ClientError::Broker(status)) if status.code == ErrorCode::UnknownMemberId => {
                    let mut state = self.shared.state.lock().expect("not poisoned");
                    state.member_id.clear();
                    continue;
                }
                Err(ClientError::Broker(status))
                    if status.code == ErrorCode::RebalanceInProgress =>
                {
                    continue;
                }
                Err(error) => return Err(error),
            };
            {
                let mut state = self.shared.state.lock().expect("not poisoned");
                state.member_id = joined.member_id.clone();
                state.generation = joined.generation;
                state.rejoin = None;
                self.shared.changed.notify_all();
            }
            match self.coordinator.sync_group(
                &self.config.group_id,
                joined.generation,
                &joined.member_id,
            ) {
                Ok(assignment) => break assignment,
                Err(ClientError::Broker(status)) if asks_to_rejoin(status.code) => {
                    let mut state = self.shared.state.lock().expect("not poisoned");
                    if status.code == ErrorCode::UnknownMemberId {
                        state.member_id.clear();
                    }
                    continue;
                }
                Err(error) => return Err(error),
            }
        };
        self.start_positions(&assignment)?;
        self.joined = true;
        self.last_commit = Instant::now();
        let assigned = self.assignment();
        if let Some(listener) = &mut self.listener {
            listener.on_assigned(&assigned);
        }
        Ok(())
    }

    /// Positions each assigned partition at the group's committed offset, else by
    /// `auto_offset_reset`.
    fn start_positions(&mut self, assignment: &[TopicPartitions]) -> Result<(), ClientError> {
        self.positions.clear();
        self.committed.clear();
        let fetched = self
            .coordinator
            .fetch_offsets(&self.config.group_id, assignment.to_vec())?;
        for topic in fetched {
            for partition in topic.partitions {
                let key = (topic.name.clone(), partition.partition);
                let offset = if partition.status.is_ok() && partition.offset >= 0 {
                    self.committed.insert(key.clone(), partition.offset);
                    partition.offset
                } else {
                    self.reset_offset(&topic.name, partition.partition)?
                };
                self.positions.insert(key, offset);
            }
        }
        Ok(())
    }

    fn reset_offset(&mut self, topic: &str, partition: u32) -> Result<i64, ClientError> {
        let timestamp = match self.config.auto_offset_reset {
            OffsetReset::Earliest => OFFSET_EARLIEST,
            OffsetReset::Latest => OFFSET_LATEST,
            OffsetReset::None => {
                return Err(broker_error(
                    ErrorCode::OffsetOutOfRange,
                    format!(
                        "group {} has no valid offset for {topic}-{partition} and auto.offset.reset is none",
                        self.config.group_id
                    ),
                ));
            }
        };
        self.router(topic)?
            .connection_for(partition)?
            .list_offset(topic, partition, timestamp)
    }

    fn router(&mut self, topic: &str) -> Result<&mut ShardRouter, ClientError> {
        if !self.routers.contains_key(topic) {
            let bootstrap = self.shared.connect_any(&self.config.client_id, None)?;
            let router = ShardRouter::new(bootstrap, topic, &self.config.client_id)?;
            self.shared.learn(router.shard_addresses());
            self.routers.insert(topic.to_string(), router);
        }
        Ok(self.routers.get_mut(topic).expect("inserted above"))
    }

    /// One fetch per shard that owns assigned partitions, each for all of them.
    fn fetch_round(&mut self, remaining: Duration) -> Result<Vec<GroupRecord>, ClientError> {
        if self.positions.is_empty() {
            // Nothing assigned (more members than partitions): wait, heartbeating.
            let state = self.shared.state.lock().expect("not poisoned");
            let wait = remaining.min(Duration::from_millis(100));
            let _ = self
                .shared
                .changed
                .wait_timeout_while(state, wait, |state| state.rejoin.is_none())
                .expect("not poisoned");
            return Ok(Vec::new());
        }
        let mut requests: BTreeMap<(String, u16), Vec<FetchPartition>> = BTreeMap::new();
        let fetch_bytes = self.config.fetch_max_bytes;
        let positions: Vec<((String, u32), i64)> = self
            .positions
            .iter()
            .map(|(key, &offset)| (key.clone(), offset))
            .collect();
        for ((topic, partition), offset) in positions {
            let shard = self.router(&topic)?.owner(partition).unwrap_or(0);
            requests
                .entry((topic.clone(), shard))
                .or_default()
                .push(FetchPartition {
                    partition,
                    offset,
                    max_bytes: fetch_bytes,
                });
        }
        // One long poll when a single request covers everything; short ones otherwise.
        // Capped, so that a rebalance (which this thread acts on between fetches) waits
        // for no long poll.
        let cap = if requests.len() == 1 {
            self.config.fetch_max_wait
        } else {
            self.config.fetch_max_wait.min(Duration::from_millis(10))
        };
        let wait_ms = remaining.min(cap).as_millis() as u32;
        let mut records = Vec::new();
        for ((topic, _), partitions) in requests {
            for partitions in partitions.chunks(FETCH_PARTITIONS_MAX) {
                // A position moves only with the records this poll returns: on an error
                // the records already read are returned and the rest read again later.
                match self.fetch_partitions(&topic, partitions.to_vec(), wait_ms) {
                    Ok((read, moved)) => {
                        records.extend(read);
                        self.positions.extend(moved);
                    }
                    // A leader that moved or went down: the topic's metadata is asked
                    // again (from scratch, the next fetch) and the positions stay.
                    Err(error) if error.is_retriable() => {
                        self.routers.remove(&topic);
                        std::thread::sleep(Duration::from_millis(100));
                        return Ok(records);
                    }
                    Err(error) if records.is_empty() => return Err(error),
                    Err(_) => return Ok(records),
                }
            }
        }
        Ok(records)
    }

    /// One fetch for some partitions of `topic` on one shard: the records past each
    /// position, and the positions after them.
    #[allow(clippy::type_complexity)]
    fn fetch_partitions(
        &mut self,
        topic: &str,
        partitions: Vec<FetchPartition>,
        wait_ms: u32,
    ) -> Result<(Vec<GroupRecord>, Vec<((String, u32), i64)>), ClientError> {
        let fetch_bytes = self.config.fetch_max_bytes;
        let first = partitions[0].partition;
        let max_bytes = fetch_bytes.saturating_mul(partitions.len() as u32);
        let response = self.router(topic)?.connection_for(first)?.fetch_many(
            vec![FetchTopic {
                name: topic.to_string(),
                partitions,
            }],
            max_bytes,
            wait_ms,
        )?;
        let mut records = Vec::new();
        let mut moved = Vec::new();
        for answer in response
            .topics
            .into_iter()
            .flat_map(|topic| topic.partitions)
        {
            let key = (topic.to_string(), answer.partition);
            let Some(&position) = self.positions.get(&key) else {
                continue;
            };
            if answer.status.code == ErrorCode::OffsetOutOfRange {
                let reset = self.reset_offset(topic, answer.partition)?;
                moved.push((key, reset));
                continue;
            }
            if !answer.status.is_ok() {
                // The topic changed under the group: the coordinator will rebalance.
                continue;
            }
            let mut next = position;
            let mut read = Vec::new();
            for batch in split_batches(&answer.records) {
                let (_, range) = batch.map_err(|_| ClientError::Unexpected)?;
                let batch: Bytes = answer.records.slice(range);
                for record in decode_records(&batch).map_err(|_| ClientError::Unexpected)? {
                    if record.offset >= next {
                        next = record.offset + 1;
                        read.push(GroupRecord {
                            topic: topic.to_string(),
                            partition: answer.partition,
                            record,
                        });
                    }
                }
            }
            records.extend(read);
            moved.push((key, next));
        }
        Ok((records, moved))
    }
}

impl Drop for GroupConsumer {
    /// A consumer dropped without `close` still leaves the group (without committing).
    fn drop(&mut self) {
        if self.heartbeat.is_some() {
            let _ = self.leave();
        }
    }
}

/// The background heartbeat: while the member belongs to a generation, one heartbeat at
/// a time, each held by the coordinator for up to the interval. An answer that says the
/// generation is over tells the consumer to rejoin; until it has, heartbeats go on (one
/// per interval) so the member is not expired while it finishes its work, up to the
/// rebalance timeout.
fn heartbeat_loop(config: &GroupConsumerConfig, shared: &Shared) {
    let interval_ms = config
        .heartbeat_interval
        .as_millis()
        .min(u128::from(u32::MAX)) as u32;
    let pause = config
        .heartbeat_interval
        .min(config.session_timeout / 3)
        .max(Duration::from_millis(10));
    let timeout = config.heartbeat_interval + Duration::from_secs(10);
    let mut connection: Option<Connection> = None;
    loop {
        let (member_id, generation, rejoining) = {
            let state = shared.state.lock().expect("not poisoned");
            let state = shared
                .changed
                .wait_while(state, |state| {
                    !state.stop && (state.member_id.is_empty() || state.generation <= 0)
                })
                .expect("not poisoned");
            if state.stop {
                return;
            }
            (
                state.member_id.clone(),
                state.generation,
                state.rejoin.is_some(),
            )
        };
        if connection.is_none() {
            match shared.connect_any(&config.client_id, Some(timeout)) {
                Ok(connected) => connection = Some(connected),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
        }
        let sent = Instant::now();
        let answer = connection.as_mut().expect("connected").heartbeat(
            &config.group_id,
            generation,
            &member_id,
            if rejoining { 0 } else { interval_ms },
        );
        let mut wait = Duration::ZERO;
        match answer {
            Ok(()) if rejoining => wait = pause,
            Ok(()) => {
                if sent.elapsed() < Duration::from_millis(5) {
                    wait = Duration::from_millis(5);
                }
            }
            Err(ClientError::Broker(status)) if asks_to_rejoin(status.code) => {
                let mut state = shared.state.lock().expect("not poisoned");
                if state.generation == generation && state.member_id == member_id {
                    match state.rejoin {
                        // Removed from the group: the join must ask for a new id.
                        Some(_) if status.code == ErrorCode::UnknownMemberId => {
                            state.rejoin = Some(status.code)
                        }
                        Some(_) => {}
                        None => state.rejoin = Some(status.code),
                    }
                    shared.changed.notify_all();
                }
                if rejoining {
                    wait = pause;
                }
            }
            Err(ClientError::Broker(_)) => wait = Duration::from_millis(200),
            Err(_) => {
                connection = None;
                wait = Duration::from_millis(200);
            }
        }
        if !wait.is_zero() {
            // Woken early by a new generation or a stop.
            let state = shared.state.lock().expect("not poisoned");
            let _ = shared
                .changed
                .wait_timeout_while(state, wait, |state| {
                    !state.stop && state.generation == generation
                })
                .expect("not poisoned");
        }
    }
}
