//! A shard's part in a cluster: topic changes go through the controller (the metadata
//! Raft group's leader, `cluster::node`), and the cluster metadata the node applies is
//! made real here. Shard 0 follows every change: it hands each shard the new view (which
//! partitions the node holds and leads), each opens the partitions it now holds, then the
//! topics are saved in `metadata.bin` and applied as on a broker on its own (deleted
//! topics' partitions are closed and removed).

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::shard::{Opening, Shard, ShardMessage, Span, unknown_topic};
use crate::broker::metadata::{ClusterMetadata, TopicRecord};
use crate::broker::view::ClusterView;
use crate::cluster::{ClusterState, Command, CommandReply};
use crate::group::offsets::{
    OFFSETS_PARTITIONS, OFFSETS_TOPIC, OffsetsWriter, offsets_topic_configs,
};
use crate::protocol::{Acks, ErrorCode, NewPartitions, NewTopic, Status, TopicStatus};

/// How long a topic change waits, once the controller has committed it, for this node to
/// have applied it (so that a produce right after a creation finds the topic here).
const APPLIED_WAIT: Duration = Duration::from_secs(10);

/// Copies of each `__consumer_offsets` partition (Kafka's
/// `offsets.topic.replication.factor`), or as many as there are live nodes when fewer.
const OFFSETS_REPLICATION_FACTOR: usize = 3;

/// How often shard 0 tries again to open what the cluster placed here, after a failure.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

impl Shard {
    /// Shard 0 of a cluster node, for as long as the broker runs: makes every change the
    /// node applies real on this node.
    pub async fn follow_cluster(self: Rc<Self>) {
        let Some(mut handle) = self.cluster.clone() else {
            return;
        };
        let mut retry = false;
        while !self.stopping.is_set() {
            retry = match self.reconcile(retry).await {
                Ok(()) => false,
                Err(status) => {
                    tracing::warn!(%status, "cannot open the partitions the cluster placed here; trying again");
                    true
                }
            };
            let wait = async {
                if retry {
                    glommio::timer::sleep(RETRY_INTERVAL).await;
                } else if !handle.changed().await {
                    // The node stopped: nothing more will change.
                    std::future::pending::<()>().await;
                }
            };
            futures_lite::future::or(wait, self.stopping.wait()).await;
        }
    }

    /// Brings this node in line with the cluster metadata it has applied (unless nothing
    /// changed since the last time, and `force` is not set).
    async fn reconcile(self: &Rc<Self>, force: bool) -> Result<(), Status> {
        let handle = self.cluster.as_ref().expect("a cluster node");
        let _turn = self.admin.acquire_permit(1).await;
        let state = handle.state();
        if !force && self.view.borrow().state == state {
            return Ok(());
        }
        let old = self.metadata.borrow().clone();
        let topics: Vec<TopicRecord> = state
            .topics
            .iter()
            .map(|(name, topic)| TopicRecord {
                name: name.clone(),
                partitions: topic.partitions.len() as u32,
                configs: topic.configs.clone(),
            })
            .collect();
        let deleted: Vec<TopicRecord> = old
            .topics
            .iter()
            .filter(|topic| !state.topics.contains_key(&topic.name))
            .cloned()
            .collect();
        let spans = Span::whole(&topics);
        for peer in (0..self.count).filter(|&peer| peer != self.id) {
            let (state, spans) = (state.clone(), spans.clone());
            self.ask(peer, |reply| ShardMessage::TakeView {
                state,
                spans,
                reply,
            })
            .await??;
        }
        self.take_view(state, &spans).await?;
        if topics != old.topics {
            let metadata = ClusterMetadata {
                generation: old.generation + 1,
                topics,
            };
            self.save_metadata(&metadata)
                .await
                .map_err(|error| Status::error(ErrorCode::StorageError, error.to_string()))?;
            self.apply_everywhere(metadata, deleted).await;
        }
        Ok(())
    }

    /// Takes the cluster as the node now has it and opens the partitions of `spans` that
    /// this shard owns and the node now holds.
    pub(super) async fn take_view(
        self: &Rc<Self>,
        state: ClusterState,
        spans: &[Span],
    ) -> Result<(), Status> {
        let (node_id, incarnation) = {
            let view = self.view.borrow();
            (view.node_id, view.incarnation)
        };
        *self.view.borrow_mut() = Rc::new(ClusterView {
            node_id,
            incarnation,
            state,
        });
        let opened = self.open_partitions(spans, Opening::Existing).await;
        self.follow_view().await;
        opened
    }

    /// Proposes one topic change to the controller; `Ok` once committed.
    async fn propose(&self, command: Command) -> Result<(), Status> {
        let handle = self.cluster.as_ref().expect("a cluster node");
        match handle.write(command).await {
            Ok(CommandReply::Done) => Ok(()),
            Ok(CommandReply::TopicExists) => Err(Status::error(
                ErrorCode::TopicAlreadyExists,
                "the topic exists in the cluster",
            )),
            Ok(CommandReply::Refused(reason)) => {
                Err(Status::error(ErrorCode::InvalidRequest, reason))
            }
            Err(reason) => Err(Status::error(ErrorCode::Timeout, reason)),
        }
    }

    /// Waits until this node has made real what `done` looks for (at most
    /// `APPLIED_WAIT`); `false` if it has not by then.
    async fn applied(&self, done: impl Fn(&ClusterMetadata) -> bool) -> bool {
        let deadline = Instant::now() + APPLIED_WAIT;
        while !done(&self.metadata.borrow()) {
            if Instant::now() > deadline || self.stopping.is_set() {
                return false;
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Creates topics through the controller, each checked here first against the
    /// cluster as this node knows it.
    pub(super) async fn cluster_create_topics(&self, topics: Vec<NewTopic>) -> Vec<TopicStatus> {
        let mut statuses = Vec::with_capacity(topics.len());
        for topic in topics {
            let status = match self.check_replicated_topic(&topic) {
                Err(status) => status,
                Ok(record) => match self
                    .propose(Command::CreateTopic {
                        name: record.name.clone(),
                        partitions: record.partitions,
                        replication_factor: topic.replication_factor,
                        configs: record.configs,
                    })
                    .await
                {
                    // Created here, or by another client meanwhile: either way, answered
                    // once this node has it (an auto-creating produce goes on with it).
                    Err(status) if status.code == ErrorCode::TopicAlreadyExists => {
                        self.applied(|metadata| metadata.topic(&topic.name).is_some())
                            .await;
                        status
                    }
                    Err(status) => status,
                    Ok(()) => self.settled(
                        self.applied(|metadata| metadata.topic(&topic.name).is_some())
                            .await,
                        &topic.name,
                    ),
                },
            };
            statuses.push(TopicStatus {
                name: topic.name,
                status,
            });
        }
        statuses
    }

    /// A new topic's checks: those of a broker on its own, and enough live brokers for
    /// its replicas.
    fn check_replicated_topic(&self, topic: &NewTopic) -> Result<TopicRecord, Status> {
        if topic.name == OFFSETS_TOPIC {
            return Err(internal_topic());
        }
        let record = self.metadata.borrow().check_new_topic(topic)?;
        self.check_limits(&record)?;
        let live = self.view.borrow().live_brokers().count();
        if topic.replication_factor == 0 || usize::from(topic.replication_factor) > live {
            return Err(Status::error(
                ErrorCode::InvalidReplicationFactor,
                format!(
                    "replication factor {} needs as many live brokers; the cluster has {live}",
                    topic.replication_factor
                ),
            ));
        }
        Ok(record)
    }

    pub(super) async fn cluster_create_partitions(
        &self,
        requests: Vec<NewPartitions>,
    ) -> Vec<TopicStatus> {
        let mut statuses = Vec::with_capacity(requests.len());
        for request in requests {
            let checked = if request.name == OFFSETS_TOPIC {
                Err(internal_topic())
            } else {
                self.metadata
                    .borrow()
                    .check_new_partitions(&request.name, request.count)
            };
            let status = match checked {
                Err(status) => status,
                Ok(_) => match self
                    .propose(Command::AddPartitions {
                        name: request.name.clone(),
                        count: request.count,
                    })
                    .await
                {
                    Err(status) => status,
                    Ok(()) => {
                        let count = request.count;
                        let grown = self
                            .applied(|metadata| {
                                metadata
                                    .topic(&request.name)
                                    .is_some_and(|topic| topic.partitions >= count)
                            })
                            .await;
                        self.settled(grown, &request.name)
                    }
                },
            };
            statuses.push(TopicStatus {
                name: request.name,
                status,
            });
        }
        statuses
    }

    pub(super) async fn cluster_delete_topics(&self, names: Vec<String>) -> Vec<TopicStatus> {
        let mut statuses = Vec::with_capacity(names.len());
        for name in names {
            let exists = self.metadata.borrow().topic(&name).is_some();
            let status = if name == OFFSETS_TOPIC {
                internal_topic()
            } else if !exists {
                unknown_topic(&name)
            } else {
                match self
                    .propose(Command::DeleteTopic { name: name.clone() })
                    .await
                {
                    Err(status) => status,
                    Ok(()) => self.settled(
                        self.applied(|metadata| metadata.topic(&name).is_none())
                            .await,
                        &name,
                    ),
                }
            };
            statuses.push(TopicStatus { name, status });
        }
        statuses
    }

    /// The status of a committed change: ok once applied here; else a retriable timeout
    /// that says the change itself was made.
    fn settled(&self, applied: bool, name: &str) -> Status {
        if applied {
            Status::ok()
        } else {
            Status::error(
                ErrorCode::Timeout,
                format!(
                    "the cluster committed the change to topic {name}, but this node has not applied it yet"
                ),
            )
        }
    }
}

fn internal_topic() -> Status {
    Status::error(
        ErrorCode::InvalidRequest,
        format!(
            "{OFFSETS_TOPIC} is the cluster's internal topic of committed offsets: it is created and kept by the brokers"
        ),
    )
}

/// A cluster node's group coordinator writes committed offsets through this: an acks=all
/// produce to the `__consumer_offsets` partition the shard leads.
pub(super) struct ReplicatedOffsets(pub(super) std::rc::Weak<Shard>);

impl OffsetsWriter for ReplicatedOffsets {
    fn append<'a>(
        &'a self,
        partition: u32,
        batch: bytes::BytesMut,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Status>> + 'a>> {
        Box::pin(async move {
            let Some(shard) = self.0.upgrade() else {
                return Err(Status::error(
                    ErrorCode::ShuttingDown,
                    "the broker is shutting down",
                ));
            };
            let answer = shard
                .produce_local(OFFSETS_TOPIC, partition, batch.freeze(), Acks::All)
                .await;
            match answer.status.code {
                ErrorCode::None => Ok(()),
                // The leadership moved: so does the group's coordinator.
                ErrorCode::NotOwner | ErrorCode::FencedLeaderEpoch => Err(Status::error(
                    ErrorCode::NotCoordinator,
                    format!(
                        "the coordinator moved while the commit was written ({}): commit again with the new one",
                        answer.status.message
                    ),
                )),
                _ => Err(answer.status),
            }
        })
    }
}

impl Shard {
    /// Creates `__consumer_offsets` through the controller the first time a group needs
    /// it (as Kafka does), and waits until this node has it.
    pub(crate) async fn ensure_offsets_topic(&self) -> Result<(), Status> {
        if self.view.borrow().partition(OFFSETS_TOPIC, 0).is_some() {
            return Ok(());
        }
        // As many copies as Kafka's default asks, or every node of a smaller cluster: not
        // fewer because only some nodes have registered yet (the factor is kept for good).
        let voters = self
            .config
            .cluster
            .as_ref()
            .map_or(1, |cluster| cluster.voters.len());
        let wanted = voters.clamp(1, OFFSETS_REPLICATION_FACTOR);
        let live = self.view.borrow().live_brokers().count();
        if live < wanted {
            return Err(Status::error(
                ErrorCode::NotCoordinator,
                format!(
                    "{OFFSETS_TOPIC} is created with {wanted} replicas once as many nodes are up ({live} are)"
                ),
            ));
        }
        let replication_factor = wanted as u16;
        let created = self
            .propose(Command::CreateTopic {
                name: OFFSETS_TOPIC.to_string(),
                partitions: OFFSETS_PARTITIONS,
                replication_factor,
                configs: offsets_topic_configs(),
            })
            .await;
        match created {
            Ok(()) => tracing::info!(replication_factor, "created {OFFSETS_TOPIC}"),
            Err(status) if status.code == ErrorCode::TopicAlreadyExists => {}
            Err(status) => return Err(status),
        }
        let deadline = Instant::now() + APPLIED_WAIT;
        while self.view.borrow().partition(OFFSETS_TOPIC, 0).is_none() {
            if Instant::now() > deadline || self.stopping.is_set() {
                return Err(Status::error(
                    ErrorCode::NotCoordinator,
                    format!("{OFFSETS_TOPIC} was created, but this node has not applied it yet"),
                ));
            }
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}
