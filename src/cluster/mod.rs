//! The cluster (issue 14, in progress): cluster metadata as a replicated state machine on
//! Raft (openraft 0.9, pinned), run on a thread of its own outside the data shards.
//!
//! So far: `store`, the durable Raft log and the metadata state machine (checked against
//! openraft's storage conformance suite), and `node`, one voter with its thread and its
//! TCP transport. The brokers' heartbeats and fencing, partition replication and the
//! wiring into `spate serve` are still to come: the broker does not use this module yet.

pub mod node;
pub mod state;
pub mod store;

use crate::broker::metadata::{ClusterMetadata, TopicRecord};

/// A broker's node id in the cluster.
pub type NodeId = u64;

/// A change to the cluster metadata, as the Raft log carries it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Command {
    /// Topics checked by the controller (names distinct and free).
    CreateTopics(Vec<TopicRecord>),
    DeleteTopics(Vec<String>),
    /// Existing topics with more partitions.
    GrowTopics(Vec<TopicRecord>),
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CommandReply {
    Done,
    /// The command no longer fits the metadata it met (it was checked against an older
    /// copy): nothing changed.
    Refused(String),
}

openraft::declare_raft_types!(
    /// openraft's types for the cluster metadata.
    pub TypeConfig:
        D = Command,
        R = CommandReply,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

impl ClusterMetadata {
    /// Applies a command of the Raft log: every node's copy goes through the same steps.
    pub fn apply(&mut self, command: Command) -> CommandReply {
        match command {
            Command::CreateTopics(records) => {
                if let Some(taken) = records
                    .iter()
                    .find(|record| self.topic(&record.name).is_some())
                {
                    return CommandReply::Refused(format!("topic {} exists", taken.name));
                }
                self.add_topics(records);
            }
            Command::DeleteTopics(names) => {
                let names: std::collections::HashSet<&str> =
                    names.iter().map(String::as_str).collect();
                self.remove_topics(&names);
            }
            Command::GrowTopics(records) => {
                let shrinks = records.iter().find(|record| {
                    self.topic(&record.name)
                        .is_none_or(|topic| topic.partitions >= record.partitions)
                });
                if let Some(record) = shrinks {
                    return CommandReply::Refused(format!(
                        "topic {} is gone or has {} partitions already",
                        record.name, record.partitions
                    ));
                }
                self.grow_topics(&records);
            }
        }
        CommandReply::Done
    }
}
