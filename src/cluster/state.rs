//! The cluster's partition state machine (issue 14, in progress; not wired yet): brokers,
//! and each partition's replicas, leader, leader epoch and in-sync replicas, changed only
//! by commands that the Raft log orders, so every node computes the same state.
//!
//! Rules (Kafka's, with no unclean election):
//! - A partition's leader is always in its in-sync replicas (ISR), and the ISR is always a
//!   subset of its replicas.
//! - Every change of leader bumps the partition's leader epoch; an ISR change from a
//!   leader carries the epoch it leads in and is refused when that epoch is stale.
//! - Fencing a broker (it missed its session, or registered again from a new process)
//!   takes it out of every ISR that has someone else, and gives each partition it led the
//!   first other live ISR member as leader. Where it
//!   was the last ISR member, the partition keeps it in its ISR with no leader: nothing
//!   acknowledged may be lost, so only that broker may lead it again (when it registers).
//! - A new topic's replicas are placed round-robin over the live brokers, each partition
//!   starting one broker further on, the first replica leading.

use std::collections::BTreeMap;

use super::NodeId;

/// What a broker tells the controller about itself in its heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrokerInfo {
    /// Its native bootstrap address; shard `i` listens on the port `1 + i` after it.
    pub address: String,
    /// Its Kafka bootstrap address (shard `i` on the port `1 + i` after it); empty when
    /// it has no Kafka door.
    pub kafka_address: String,
    pub shards: u16,
    /// Differs at every start of the broker's process: a broker registering with a new
    /// one lost whatever it had not synced, so it gives up what it led (see
    /// `RegisterBroker`).
    #[serde(default)]
    pub incarnation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrokerState {
    pub info: BrokerInfo,
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionState {
    pub replicas: Vec<NodeId>,
    pub leader: Option<NodeId>,
    pub leader_epoch: u32,
    pub isr: Vec<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicState {
    pub configs: Vec<(String, String)>,
    pub partitions: Vec<PartitionState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClusterState {
    pub brokers: BTreeMap<NodeId, BrokerState>,
    pub topics: BTreeMap<String, TopicState>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ClusterCommand {
    /// A broker (re)joins: unfenced, and it leads the partitions waiting for it.
    RegisterBroker {
        id: NodeId,
        info: BrokerInfo,
    },
    /// A broker missed its session.
    FenceBroker {
        id: NodeId,
    },
    CreateTopic {
        name: String,
        partitions: u32,
        replication_factor: u16,
        configs: Vec<(String, String)>,
    },
    DeleteTopic {
        name: String,
    },
    /// More partitions for a topic (`count` in all), placed as a new topic's would be,
    /// continuing its round-robin.
    AddPartitions {
        name: String,
        count: u32,
    },
    /// From a partition's leader: a follower fell behind.
    ShrinkIsr {
        topic: String,
        partition: u32,
        leader_epoch: u32,
        replica: NodeId,
    },
    /// From a partition's leader: a follower caught up.
    ExpandIsr {
        topic: String,
        partition: u32,
        leader_epoch: u32,
        replica: NodeId,
    },
}

impl ClusterState {
    fn live(&self) -> Vec<NodeId> {
        self.brokers
            .iter()
            .filter(|(_, broker)| !broker.fenced)
            .map(|(id, _)| *id)
            .collect()
    }

    fn is_live(&self, id: NodeId) -> bool {
        self.brokers.get(&id).is_some_and(|broker| !broker.fenced)
    }

    /// Applies `command`; `Err` says why it was refused (nothing changed).
    pub fn apply(&mut self, command: ClusterCommand) -> Result<(), String> {
        match command {
            ClusterCommand::RegisterBroker { id, info } => {
                // A live broker that started again: fenced first, as if its session had
                // expired, so that none of its partitions stays led by a copy that may
                // have lost its unsynced tail; it catches up as a follower.
                let restarted = self.brokers.get(&id).is_some_and(|known| {
                    !known.fenced && known.info.incarnation != info.incarnation
                });
                if restarted {
                    self.apply(ClusterCommand::FenceBroker { id })?;
                }
                self.brokers.insert(
                    id,
                    BrokerState {
                        info,
                        fenced: false,
                    },
                );
                for partition in self.partitions_mut() {
                    if partition.leader.is_none() && partition.isr.contains(&id) {
                        partition.leader = Some(id);
                        partition.leader_epoch += 1;
                    }
                }
                Ok(())
            }
            ClusterCommand::FenceBroker { id } => {
                let Some(broker) = self.brokers.get_mut(&id) else {
                    return Err(format!("broker {id} is not registered"));
                };
                broker.fenced = true;
                let live: Vec<NodeId> = self.live();
                for partition in self.partitions_mut() {
                    if partition.isr.len() > 1 && partition.isr.contains(&id) {
                        partition.isr.retain(|replica| *replica != id);
                    }
                    if partition.leader == Some(id) {
                        partition.leader = partition
                            .isr
                            .iter()
                            .copied()
                            .find(|replica| *replica != id && live.contains(replica));
                        partition.leader_epoch += 1;
                    }
                }
                Ok(())
            }
            ClusterCommand::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
            } => {
                if self.topics.contains_key(&name) {
                    return Err(format!("topic {name} exists"));
                }
                let live = self.live();
                let factor = usize::from(replication_factor);
                if factor == 0 || factor > live.len() {
                    return Err(format!(
                        "replication factor {replication_factor} needs as many live brokers; {} are live",
                        live.len()
                    ));
                }
                let partitions = (0..partitions as usize)
                    .map(|partition| placed(&live, factor, partition))
                    .collect();
                self.topics.insert(
                    name,
                    TopicState {
                        configs,
                        partitions,
                    },
                );
                Ok(())
            }
            ClusterCommand::AddPartitions { name, count } => {
                let live = self.live();
                let topic = self
                    .topics
                    .get_mut(&name)
                    .ok_or_else(|| format!("topic {name} does not exist"))?;
                let have = topic.partitions.len();
                if count as usize <= have {
                    return Err(format!("topic {name} has {have} partitions already"));
                }
                let factor = topic.partitions[0].replicas.len();
                if factor > live.len() {
                    return Err(format!(
                        "replication factor {factor} needs as many live brokers; {} are live",
                        live.len()
                    ));
                }
                topic.partitions.extend(
                    (have..count as usize).map(|partition| placed(&live, factor, partition)),
                );
                Ok(())
            }
            ClusterCommand::DeleteTopic { name } => self
                .topics
                .remove(&name)
                .map(|_| ())
                .ok_or_else(|| format!("topic {name} does not exist")),
            ClusterCommand::ShrinkIsr {
                topic,
                partition,
                leader_epoch,
                replica,
            } => {
                let state = self.led_partition(&topic, partition, leader_epoch)?;
                if state.leader == Some(replica) {
                    return Err("a leader does not leave its own ISR".into());
                }
                state.isr.retain(|member| *member != replica);
                Ok(())
            }
            ClusterCommand::ExpandIsr {
                topic,
                partition,
                leader_epoch,
                replica,
            } => {
                let live = self.is_live(replica);
                let state = self.led_partition(&topic, partition, leader_epoch)?;
                if !state.replicas.contains(&replica) {
                    return Err(format!(
                        "broker {replica} is no replica of {topic}-{partition}"
                    ));
                }
                if !live {
                    return Err(format!("broker {replica} is fenced"));
                }
                if !state.isr.contains(&replica) {
                    state.isr.push(replica);
                }
                Ok(())
            }
        }
    }

    fn partitions_mut(&mut self) -> impl Iterator<Item = &mut PartitionState> {
        self.topics
            .values_mut()
            .flat_map(|topic| topic.partitions.iter_mut())
    }

    /// The partition, if `leader_epoch` is its current one and it has a leader (an ISR
    /// change from an older leader is refused: fencing).
    fn led_partition(
        &mut self,
        topic: &str,
        partition: u32,
        leader_epoch: u32,
    ) -> Result<&mut PartitionState, String> {
        let state = self
            .topics
            .get_mut(topic)
            .and_then(|topic| topic.partitions.get_mut(partition as usize))
            .ok_or_else(|| format!("no partition {topic}-{partition}"))?;
        if state.leader_epoch != leader_epoch {
            return Err(format!(
                "leader epoch {leader_epoch} is stale: {topic}-{partition} is at {}",
                state.leader_epoch
            ));
        }
        if state.leader.is_none() {
            return Err(format!(
                "{topic}-{partition} has no leader to change its ISR"
            ));
        }
        Ok(state)
    }
}

/// Partition `partition`'s replicas: `factor` live brokers round-robin from its own
/// offset, the first leading.
fn placed(live: &[NodeId], factor: usize, partition: usize) -> PartitionState {
    let replicas: Vec<NodeId> = (0..factor)
        .map(|step| live[(partition + step) % live.len()])
        .collect();
    PartitionState {
        leader: Some(replicas[0]),
        leader_epoch: 0,
        isr: replicas.clone(),
        replicas,
    }
}

impl ClusterState {
    /// Applies `command` and says what it did.
    pub fn apply_command(&mut self, command: ClusterCommand) -> super::CommandReply {
        if let ClusterCommand::CreateTopic { name, .. } = &command
            && self.topics.contains_key(name)
        {
            return super::CommandReply::TopicExists;
        }
        match self.apply(command) {
            Ok(()) => super::CommandReply::Done,
            Err(reason) => super::CommandReply::Refused(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn register(state: &mut ClusterState, id: NodeId) {
        state
            .apply(ClusterCommand::RegisterBroker {
                id,
                info: BrokerInfo {
                    address: format!("127.0.0.{id}:7070"),
                    ..BrokerInfo::default()
                },
            })
            .unwrap();
    }

    fn three_brokers_and_a_topic() -> ClusterState {
        let mut state = ClusterState::default();
        for id in 1..=3 {
            register(&mut state, id);
        }
        state
            .apply(ClusterCommand::CreateTopic {
                name: "orders".into(),
                partitions: 3,
                replication_factor: 3,
                configs: Vec::new(),
            })
            .unwrap();
        state
    }

    fn partition(state: &ClusterState, index: usize) -> &PartitionState {
        &state.topics["orders"].partitions[index]
    }

    #[test]
    fn a_broker_registering_from_a_new_process_gives_up_what_it_led() {
        let mut state = three_brokers_and_a_topic();
        // The same process again (a heartbeat after a pause): nothing moves.
        register(&mut state, 1);
        assert_eq!(partition(&state, 0).leader, Some(1));
        assert_eq!(partition(&state, 0).leader_epoch, 0);
        state
            .apply(ClusterCommand::RegisterBroker {
                id: 1,
                info: BrokerInfo {
                    address: "127.0.0.1:7070".into(),
                    incarnation: 2,
                    ..BrokerInfo::default()
                },
            })
            .unwrap();
        let moved = partition(&state, 0);
        assert_eq!(moved.leader, Some(2), "the next ISR member leads");
        assert_eq!(moved.leader_epoch, 1);
        assert!(
            !moved.isr.contains(&1),
            "it catches up before it is in sync again"
        );
        assert!(!state.brokers[&1].fenced, "and it is registered, unfenced");
        assert_eq!(state.brokers[&1].info.incarnation, 2);
    }

    #[test]
    fn replicas_are_spread_and_the_first_leads() {
        let state = three_brokers_and_a_topic();
        let leaders: Vec<Option<NodeId>> = (0..3).map(|p| partition(&state, p).leader).collect();
        assert_eq!(leaders, [Some(1), Some(2), Some(3)]);
        assert_eq!(partition(&state, 1).replicas, [2, 3, 1]);
        let mut too_wide = state.clone();
        assert!(
            too_wide
                .apply(ClusterCommand::CreateTopic {
                    name: "wide".into(),
                    partitions: 1,
                    replication_factor: 4,
                    configs: Vec::new(),
                })
                .is_err()
        );
        assert_eq!(too_wide, state, "a refused command changes nothing");
    }

    #[test]
    fn fencing_a_leader_moves_leadership_within_the_isr_with_a_new_epoch() {
        let mut state = three_brokers_and_a_topic();
        state.apply(ClusterCommand::FenceBroker { id: 1 }).unwrap();
        let first = partition(&state, 0);
        assert_eq!((first.leader, first.leader_epoch), (Some(2), 1));
        assert_eq!(first.isr, [2, 3]);
        // Partitions it did not lead keep their leader and epoch.
        assert_eq!(partition(&state, 1).leader_epoch, 0);
        // The old leader's ISR change, from its stale epoch, is refused.
        let stale = ClusterCommand::ShrinkIsr {
            topic: "orders".into(),
            partition: 0,
            leader_epoch: 0,
            replica: 3,
        };
        assert!(state.apply(stale).is_err());
        // It comes back as a follower and rejoins the ISR through the new leader.
        register(&mut state, 1);
        assert_eq!(partition(&state, 0).leader, Some(2));
        let rejoin = ClusterCommand::ExpandIsr {
            topic: "orders".into(),
            partition: 0,
            leader_epoch: 1,
            replica: 1,
        };
        state.apply(rejoin).unwrap();
        assert_eq!(partition(&state, 0).isr, [2, 3, 1]);
    }

    #[test]
    fn the_last_isr_member_is_kept_and_only_it_may_lead_again() {
        let mut state = three_brokers_and_a_topic();
        for replica in [2, 3] {
            let shrink = ClusterCommand::ShrinkIsr {
                topic: "orders".into(),
                partition: 0,
                leader_epoch: 0,
                replica,
            };
            state.apply(shrink).unwrap();
        }
        state.apply(ClusterCommand::FenceBroker { id: 1 }).unwrap();
        let waiting = partition(&state, 0);
        assert_eq!((waiting.leader, waiting.isr.clone()), (None, vec![1]));
        // With no leader, nobody may change the ISR, even at the current epoch.
        let emptied = ClusterCommand::ShrinkIsr {
            topic: "orders".into(),
            partition: 0,
            leader_epoch: waiting.leader_epoch,
            replica: 1,
        };
        assert!(state.apply(emptied).is_err());
        // Live replicas outside the ISR may not take over (no unclean election).
        register(&mut state, 2);
        assert_eq!(partition(&state, 0).leader, None);
        register(&mut state, 1);
        let back = partition(&state, 0);
        assert_eq!((back.leader, back.leader_epoch), (Some(1), 2));
    }

    /// Few names, partitions, epochs and brokers, so that commands meet each other's
    /// partitions often.
    fn command() -> impl Strategy<Value = ClusterCommand> {
        let id = 1u64..=3;
        prop_oneof![
            (id.clone(), 0u64..2).prop_map(|(id, incarnation)| ClusterCommand::RegisterBroker {
                id,
                info: BrokerInfo {
                    incarnation,
                    ..BrokerInfo::default()
                },
            }),
            id.clone().prop_map(|id| ClusterCommand::FenceBroker { id }),
            (0u8..2, 1u32..3, 1u16..4).prop_map(|(name, partitions, replication_factor)| {
                ClusterCommand::CreateTopic {
                    name: format!("t{name}"),
                    partitions,
                    replication_factor,
                    configs: Vec::new(),
                }
            }),
            (0u8..2).prop_map(|name| ClusterCommand::DeleteTopic {
                name: format!("t{name}")
            }),
            (0u8..2, 1u32..4).prop_map(|(name, count)| ClusterCommand::AddPartitions {
                name: format!("t{name}"),
                count,
            }),
            (0u8..2, 0u32..2, 0u32..3, id.clone()).prop_map(|(name, partition, epoch, replica)| {
                ClusterCommand::ShrinkIsr {
                    topic: format!("t{name}"),
                    partition,
                    leader_epoch: epoch,
                    replica,
                }
            }),
            (0u8..2, 0u32..2, 0u32..3, id).prop_map(|(name, partition, epoch, replica)| {
                ClusterCommand::ExpandIsr {
                    topic: format!("t{name}"),
                    partition,
                    leader_epoch: epoch,
                    replica,
                }
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Whatever commands come, in whatever order: the ISR stays within the replicas
        /// and never empties, a leader is a live ISR member, epochs only grow (and do at
        /// every change of leader), and a refused command changes nothing.
        #[test]
        fn partition_invariants_hold_under_any_commands(
            commands in prop::collection::vec(command(), 1..80)
        ) {
            let mut state = ClusterState::default();
            for command in commands {
                let before = state.clone();
                match state.apply(command) {
                    Err(_) => prop_assert_eq!(&state, &before),
                    Ok(()) => {
                        for (name, topic) in &state.topics {
                            for (index, partition) in topic.partitions.iter().enumerate() {
                                prop_assert!(!partition.isr.is_empty());
                                prop_assert!(partition.isr.iter().all(|r| partition.replicas.contains(r)));
                                if let Some(leader) = partition.leader {
                                    prop_assert!(partition.isr.contains(&leader));
                                    prop_assert!(state.is_live(leader));
                                }
                                if let Some(old) = before.topics.get(name).and_then(|t| t.partitions.get(index)) {
                                    let grew = partition.leader_epoch - old.leader_epoch;
                                    prop_assert!(partition.leader_epoch >= old.leader_epoch);
                                    if partition.leader != old.leader {
                                        prop_assert!(grew > 0);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
