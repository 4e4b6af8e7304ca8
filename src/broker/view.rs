//! Where each partition lives and who leads it, as one shard sees it. A broker on its own
//! holds and leads every partition; a node of a cluster holds the partitions whose
//! replicas name it and leads those whose leader it is, as the cluster metadata it has
//! applied says (`cluster::ClusterState`). Shards keep a copy each; shard 0 hands out a
//! new one whenever the node applies a change.

use crate::broker::metadata::shard_for;
use crate::cluster::state::{BrokerState, PartitionState};
use crate::cluster::{ClusterState, NodeId};
use crate::protocol::{ErrorCode, Status, quoted};

/// Shards per node that metadata can name: a shard's id in metadata (`global_shard_id`)
/// is its node's id times this, plus its index on the node.
pub const SHARDS_PER_NODE_MAX: u64 = 256;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// This node's id; `None` for a broker on its own.
    pub node_id: Option<NodeId>,
    /// This process's incarnation (`BrokerInfo::incarnation`): the node leads only once
    /// the cluster has registered this incarnation, not a previous one.
    pub incarnation: u64,
    pub state: ClusterState,
}

impl ClusterView {
    /// A broker on its own.
    pub fn single() -> ClusterView {
        ClusterView::default()
    }

    pub fn clustered(&self) -> bool {
        self.node_id.is_some()
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionState> {
        self.state
            .topics
            .get(topic)
            .and_then(|topic| topic.partitions.get(partition as usize))
    }

    /// Whether this node keeps a copy of the partition.
    pub fn hosts(&self, topic: &str, partition: u32) -> bool {
        match self.node_id {
            None => true,
            Some(node) => self
                .partition(topic, partition)
                .is_some_and(|state| state.replicas.contains(&node)),
        }
    }

    /// Whether the cluster has registered this process (its incarnation), unfenced: until
    /// then the node leads nothing, whatever an older state says.
    pub fn registered(&self) -> bool {
        let Some(node) = self.node_id else {
            return true;
        };
        self.state
            .brokers
            .get(&node)
            .is_some_and(|broker| !broker.fenced && broker.info.incarnation == self.incarnation)
    }

    /// Whether this node leads the partition now.
    pub fn leads(&self, topic: &str, partition: u32) -> bool {
        match self.node_id {
            None => true,
            Some(node) => {
                self.registered()
                    && self
                        .partition(topic, partition)
                        .is_some_and(|state| state.leader == Some(node))
            }
        }
    }

    /// `Ok` when this node leads the partition (takes its appends, serves its reads);
    /// otherwise the retriable error that sends a client back to metadata.
    pub fn check_leader(&self, topic: &str, partition: u32) -> Result<(), Status> {
        let Some(node) = self.node_id else {
            return Ok(());
        };
        if !self.registered() {
            return Err(Status::error(
                ErrorCode::NotOwner,
                format!(
                    "node {node} has started again and is not registered yet: it leads nothing until it is"
                ),
            ));
        }
        match self.partition(topic, partition) {
            Some(state) if state.leader == Some(node) => Ok(()),
            Some(state) => Err(Status::error(
                ErrorCode::NotOwner,
                match state.leader {
                    Some(leader) => format!(
                        "node {node} does not lead {}-{partition}: node {leader} does (leader epoch {})",
                        quoted(topic),
                        state.leader_epoch
                    ),
                    None => format!(
                        "{}-{partition} has no leader now (its in-sync replicas are down)",
                        quoted(topic)
                    ),
                },
            )),
            // Created, but not yet applied here: the client retries.
            None => Err(Status::error(
                ErrorCode::NotOwner,
                format!(
                    "node {node} does not know {}-{partition} yet",
                    quoted(topic)
                ),
            )),
        }
    }

    /// The live brokers, by id.
    pub fn live_brokers(&self) -> impl Iterator<Item = (NodeId, &BrokerState)> {
        self.state
            .brokers
            .iter()
            .filter(|(_, broker)| !broker.fenced)
            .map(|(id, broker)| (*id, broker))
    }

    /// The id metadata gives shard `shard` of node `node` (each shard is a broker to
    /// clients: they reach the partition's owner core directly).
    pub fn global_shard_id(node: NodeId, shard: usize) -> u64 {
        node * SHARDS_PER_NODE_MAX + shard as u64
    }

    /// The shard of node `node` that owns the partition there, by its metadata id; `None`
    /// when the node is unknown.
    pub fn replica_shard(&self, node: NodeId, topic: &str, partition: u32) -> Option<u64> {
        let broker = self.state.brokers.get(&node)?;
        let shards = usize::from(broker.info.shards.max(1));
        Some(ClusterView::global_shard_id(
            node,
            shard_for(topic, partition, shards),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::state::{BrokerInfo, ClusterCommand};

    fn three_brokers_one_topic() -> ClusterState {
        let mut state = ClusterState::default();
        for id in 1..=3 {
            state
                .apply(ClusterCommand::RegisterBroker {
                    id,
                    info: BrokerInfo {
                        address: format!("127.0.0.{id}:7070"),
                        kafka_address: String::new(),
                        shards: 2,
                        incarnation: 7,
                    },
                })
                .unwrap();
        }
        state
            .apply(ClusterCommand::CreateTopic {
                name: "orders".into(),
                partitions: 3,
                replication_factor: 2,
                configs: Vec::new(),
            })
            .unwrap();
        state
    }

    #[test]
    fn a_single_broker_hosts_and_leads_everything() {
        let view = ClusterView::single();
        assert!(view.hosts("anything", 7));
        assert!(view.check_leader("anything", 7).is_ok());
    }

    #[test]
    fn a_node_hosts_its_replicas_and_leads_only_its_own() {
        let state = three_brokers_one_topic();
        for node in 1..=3 {
            let view = ClusterView {
                node_id: Some(node),
                incarnation: 7,
                state: state.clone(),
            };
            for partition in 0..3 {
                let placed = &state.topics["orders"].partitions[partition as usize];
                assert_eq!(
                    view.hosts("orders", partition),
                    placed.replicas.contains(&node)
                );
                let led = view.check_leader("orders", partition);
                if placed.leader == Some(node) {
                    assert!(led.is_ok());
                } else {
                    let status = led.unwrap_err();
                    assert_eq!(status.code, ErrorCode::NotOwner);
                    assert!(status.message.contains("does not lead"), "{status}");
                }
            }
            assert!(!view.hosts("unknown", 0));
            assert!(view.check_leader("unknown", 0).is_err());
        }
    }

    #[test]
    fn a_node_started_again_leads_nothing_until_its_new_incarnation_is_registered() {
        let view = ClusterView {
            node_id: Some(1),
            incarnation: 8,
            state: three_brokers_one_topic(),
        };
        assert!(!view.registered());
        assert!(!view.leads("orders", 0));
        let status = view.check_leader("orders", 0).unwrap_err();
        assert!(status.message.contains("not registered yet"), "{status}");
    }

    #[test]
    fn replica_shards_follow_each_nodes_shard_count() {
        let view = ClusterView {
            node_id: Some(1),
            incarnation: 7,
            state: three_brokers_one_topic(),
        };
        let id = view.replica_shard(2, "orders", 1).unwrap();
        assert_eq!(id / SHARDS_PER_NODE_MAX, 2);
        assert_eq!(id % SHARDS_PER_NODE_MAX, shard_for("orders", 1, 2) as u64);
        assert_eq!(view.replica_shard(9, "orders", 1), None);
    }
}
